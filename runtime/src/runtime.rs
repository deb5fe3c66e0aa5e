//! The runtime the shim drives: containers, their processes and the events they emit.
//!
//! Every event goes through one ordered channel. A process's exit is published only
//! after its start was (a gate per process), after its output is copied, and for an
//! init after the other processes of its container are gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec};
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource};
use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::linux::hardening::{self, ExecPolicy, Kernel};
use crate::linux::{Confinement, ContainerDirs, LinuxBackend, oom, stats};
use crate::mounts::{self, Mount};
use crate::probe::{RealHost, probe_kvm};
use crate::process::{Container, ProcState, Process};
pub use crate::process::{ExitInfo, Status, TaskState};
use crate::select::{Backend, select};
use crate::stdio::{ProcessIo, StdioPaths};
use crate::vm::Sandbox;
use crate::vm::agent::stdio_msg;

const OUTPUT_GRACE: Duration = Duration::from_secs(5);
const EXIT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum Event {
    Create {
        id: String,
        bundle: PathBuf,
        pid: u32,
        rootfs: Vec<Mount>,
        stdio: StdioPaths,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Exit {
        id: String,
        exec_id: String,
        info: ExitInfo,
    },
    Delete {
        id: String,
        info: ExitInfo,
    },
    Oom {
        id: String,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
}

pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<Mount>,
    pub stdio: StdioPaths,
    pub config: ConfigSource,
    pub systemd_cgroup: bool,
}

/// An exec's process as containerd sends it (the OCI `process` JSON).
pub struct ProcessSpec {
    pub json: Vec<u8>,
}

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    /// Whose namespaces a container without its own shares.
    kernel: Kernel,
    namespace: String,
    exits: Exits,
    events: mpsc::UnboundedSender<Event>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    linux: LinuxBackend,
    /// The pod's VM (VM backend), booted by the first container's Create.
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
}

impl Runtime {
    pub fn new(namespace: &str, exits: Exits) -> (Runtime, mpsc::UnboundedReceiver<Event>) {
        Self::build(namespace, exits, true, Kernel::Host)
    }

    /// The guest agent's runtime: its containers share the VM's kernel and namespaces,
    /// never the host's. `seal_exe = false` is for a binary that cannot be overwritten
    /// (the agent, on a read-only root), where the sealed copy made for every
    /// container-entering call would only cost time.
    pub fn for_guest(
        namespace: &str,
        exits: Exits,
        seal_exe: bool,
    ) -> (Runtime, mpsc::UnboundedReceiver<Event>) {
        Self::build(namespace, exits, seal_exe, Kernel::Guest)
    }

    fn build(
        namespace: &str,
        exits: Exits,
        seal_exe: bool,
        kernel: Kernel,
    ) -> (Runtime, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            kernel,
            namespace: namespace.into(),
            linux: LinuxBackend::new(exits.clone(), seal_exe),
            exits,
            events: tx,
            containers: Mutex::new(HashMap::new()),
            sandbox: tokio::sync::Mutex::new(None),
        };
        (
            Runtime {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    fn emit(&self, e: Event) {
        let _ = self.inner.events.send(e);
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    pub fn is_empty(&self) -> bool {
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .is_empty()
    }

    pub async fn create(&self, req: CreateRequest) -> Result<u32> {
        if self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&req.id)
        {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let config = Config::load(&req.config)?;
        let spec_path = req.bundle.join("config.json");
        let mut spec = Spec::load(&spec_path).map_err(|e| {
            Error::InvalidArgument(format!("invalid bundle {}: {e}", spec_path.display()))
        })?;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let mut selection = select(&config, &annotations, || probe_kvm(&RealHost))?;
        // The pod's first container picked the backend for the whole pod.
        let pod_backend = if self.inner.sandbox.lock().await.is_some() {
            Some(Backend::Vm {
                accel: config.hypervisor.accel,
            })
        } else if !self.is_empty() {
            Some(Backend::Container)
        } else {
            None
        };
        if let Some(b) = pod_backend
            && b != selection.backend
        {
            selection.backend = b;
            selection.reason = "the pod's sandbox runs there".into();
        }
        log::info!(id = req.id.as_str(), backend:? = selection.backend, reason = selection.reason.as_str(); "backend selected");
        let dirs = ContainerDirs::new(&config.runtime.state_dir, &self.inner.namespace, &req.id);
        if dirs.state.exists() {
            // Left by a shim that died: nothing in it is trusted or reused.
            let _ = self.inner.linux.delete(&dirs, &req.id).await;
            let _ = std::fs::remove_dir_all(&dirs.state);
        }
        std::fs::create_dir_all(&dirs.bundle)
            .map_err(Error::io(format!("create {}", dirs.bundle.display())))?;
        set_mode(&dirs.state, 0o700);

        let mut mounted = None;
        let result = match selection.backend {
            Backend::Vm { .. } => {
                self.create_vm(&req, &config, &mut spec, &dirs, &mut mounted)
                    .await
            }
            Backend::Container => {
                self.create_in(&req, &config, &mut spec, &dirs, &mut mounted)
                    .await
            }
        };
        match result {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = self.inner.linux.delete(&dirs, &req.id).await;
                if let Some(target) = &mounted {
                    let _ = mounts::unmount_all(target);
                }
                let _ = std::fs::remove_dir_all(&dirs.state);
                Err(e)
            }
        }
    }

    /// The pod's VM: the one already running, or a new one.
    async fn vm_sandbox(
        &self,
        id: &str,
        config: &Config,
        spec: &Spec,
        network: crate::vm::sandbox::NetRequest,
        systemd_cgroup: bool,
    ) -> Result<Arc<Sandbox>> {
        let mut slot = self.inner.sandbox.lock().await;
        if let Some(sb) = slot.as_ref() {
            if sb.is_dead() {
                return Err(Error::FailedPrecondition(format!(
                    "the pod's VM has died (console: {})",
                    sb.console_log().display()
                )));
            }
            return Ok(sb.clone());
        }
        let events = self.inner.events.clone();
        let hostname = spec.hostname().clone().unwrap_or_default();
        let size = crate::vm::sizing::pod_size(
            &config.hypervisor,
            spec.annotations().as_ref().unwrap_or(&HashMap::new()),
            spec.linux().as_ref().and_then(|l| l.resources().as_ref()),
            crate::vm::sizing::HostLimits::of_this_host(),
        );
        log::info!(sandbox = id, vcpus = size.vcpus, memory_mib = size.memory_mib; "pod VM size");
        let mut config = config.clone();
        config.hypervisor.vcpus = size.vcpus;
        config.hypervisor.memory_mib = size.memory_mib;
        let config = &config;
        // The VM's host processes go where the sandbox container would have gone.
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|path| crate::vm::cgroup::PodCgroup {
                systemd: systemd_cgroup || is_systemd_cgroup_path(&path),
                path,
                id: id.to_string(),
            });
        let sb = Sandbox::boot(
            config,
            &self.inner.namespace,
            id,
            &hostname,
            crate::vm::sandbox::PodHost { network, cgroup },
            &self.inner.exits,
            move |id| {
                log::warn!(id = id.as_str(); "OOM kill in container (guest)");
                let _ = events.send(Event::Oom { id });
            },
        )
        .await?;
        std::fs::write(
            ContainerDirs::new(&config.runtime.state_dir, &self.inner.namespace, id)
                .state
                .join(SANDBOX_MARK),
            sb.dir.to_string_lossy().as_bytes(),
        )
        .map_err(Error::io("record the sandbox dir"))?;
        *slot = Some(sb.clone());
        Ok(sb)
    }

    /// Tear the pod's VM down once no container uses it.
    async fn release_sandbox_if_unused(&self) -> Result<()> {
        let in_use = self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .values()
            .any(|c| c.vm.is_some());
        if in_use {
            return Ok(());
        }
        let sb = self.inner.sandbox.lock().await.take();
        match sb {
            Some(sb) => sb.teardown().await,
            None => Ok(()),
        }
    }

    async fn create_vm(
        &self,
        req: &CreateRequest,
        config: &Config,
        spec: &mut Spec,
        dirs: &ContainerDirs,
        mounted: &mut Option<PathBuf>,
    ) -> Result<u32> {
        // Refused before a VM boots for it; allowed, it keeps no host device.
        if !config.hypervisor.allow_privileged {
            hardening::refuse_privileged(spec, "[hypervisor] allow_privileged")?;
        }
        let privileged = hardening::is_privileged(spec);
        let network = net_request(spec, &req.bundle);
        // A container that joins the pod's network shares the guest's, which is wired to it.
        let shares_guest_net = !matches!(network, crate::vm::sandbox::NetRequest::None);
        let sandbox = self
            .vm_sandbox(&req.id, config, spec, network, req.systemd_cgroup)
            .await?;
        let pod_pids: Vec<u32> = self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .values()
            .filter(|c| c.vm.is_some())
            .map(|c| c.init.pid())
            .collect();
        guest_spec(
            spec,
            &req.id,
            GuestSpec {
                terminal: req.stdio.terminal,
                shares_guest_net,
                privileged,
            },
            &pod_pids,
        );
        let res = self
            .create_vm_in(&sandbox, req, config, spec, dirs, mounted)
            .await;
        if res.is_err() {
            let _ = sandbox.share.remove_container(&req.id);
            let _ = self.release_sandbox_if_unused().await;
        }
        res
    }

    async fn create_vm_in(
        &self,
        sandbox: &Arc<Sandbox>,
        req: &CreateRequest,
        config: &Config,
        spec: &mut Spec,
        dirs: &ContainerDirs,
        mounted: &mut Option<PathBuf>,
    ) -> Result<u32> {
        mount_rootfs(req, mounted)?;
        sandbox.share.add_container(&req.id, spec, &req.bundle)?;
        let json = serde_json::to_vec(&spec).map_err(|e| Error::Backend(e.to_string()))?;
        let own_pid_ns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
            });

        let (io, fds, streams) = vm_process_io(&req.stdio, &dirs.state, "init")?;
        let asked = std::time::Instant::now();
        let pid = sandbox.agent.create_container(&req.id, json, streams).await;
        log::debug!(id = req.id.as_str(), ms = asked.elapsed().as_millis() as u64; "guest create");
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => {
                io.shutdown();
                return Err(e);
            }
        };
        if let Err(e) = sandbox.attach_stdio(&req.id, "", fds).await {
            io.shutdown();
            let _ = sandbox.agent.delete(&req.id, "").await;
            return Err(e);
        }
        let init = Process::new("", req.stdio.clone(), io, pid);
        // The guest holds every exec to the same policy; the host checks first.
        let exec_policy = ExecPolicy {
            allow_privileged: config.hypervisor.allow_privileged,
            setting: "[hypervisor] allow_privileged",
            no_new_privileges: config.container.no_new_privileges,
            ..ExecPolicy::of(spec)
        };
        let container = Arc::new(Container {
            vm: Some(sandbox.clone()),
            exec_policy,
            ..new_container(req, dirs, mounted, init.clone(), own_pid_ns)
        });
        let exit = sandbox.exits.subscribe(pid as i32);
        self.register(req, container, init, pid, exit);
        Ok(pid)
    }

    async fn create_in(
        &self,
        req: &CreateRequest,
        config: &Config,
        spec: &mut Spec,
        dirs: &ContainerDirs,
        mounted: &mut Option<PathBuf>,
    ) -> Result<u32> {
        mount_rootfs(req, mounted)?;
        let hardened = hardening::harden(spec, &req.bundle, &config.container, self.inner.kernel)?;
        let confinement = Confinement {
            filters: (!hardened.filters.is_empty()).then(|| dirs.filters.clone()),
            drop_sys_admin: hardened.drop_sys_admin,
        };
        if confinement.filters.is_some() {
            hardened.filters.save(&dirs.filters)?;
        }
        let terminal = spec
            .process()
            .as_ref()
            .is_some_and(|p| p.terminal().unwrap_or(false));
        if terminal != req.stdio.terminal {
            log::warn!(id = req.id.as_str(); "spec terminal and request terminal differ; using the request's");
        }
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(req.stdio.terminal));
        }
        spec.save(dirs.bundle.join("config.json"))
            .map_err(|e| Error::Backend(format!("write hardened spec: {e}")))?;

        let linux = spec.linux().as_ref();
        let cgroup_path = linux
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| PathBuf::from(format!("/stockade/{}", req.id)));
        // Docker and CRI with the systemd cgroup driver send "slice:prefix:name" but
        // runc-only options; the path's form says which driver the node uses.
        let systemd = req.systemd_cgroup || is_systemd_cgroup_path(&cgroup_path);
        let own_pid_ns = linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
            });

        let (io, mut child) = ProcessIo::new(&req.stdio, &dirs.state, "init")?;
        let console = io.attach_console(&mut child, &req.stdio);
        let created = self
            .inner
            .linux
            .create(
                dirs,
                &req.id,
                systemd,
                child.console_socket.clone(),
                std::mem::take(&mut child.fds),
                confinement.clone(),
            )
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                io.shutdown();
                if let Some(c) = console {
                    c.abort();
                }
                return Err(e);
            }
        };
        if let Some(c) = console {
            let res = c
                .await
                .map_err(|e| Error::Backend(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = res {
                io.shutdown();
                return Err(e);
            }
        }

        let init = Process::new("", req.stdio.clone(), io, pid as u32);
        let exec_policy = ExecPolicy {
            allow_privileged: config.container.allow_privileged,
            setting: "[container] allow_privileged",
            no_new_privileges: config.container.no_new_privileges,
            confined: confinement.filters.is_some(),
            ..ExecPolicy::of(spec)
        };
        let container = Arc::new(Container {
            cgroup_path,
            systemd,
            exec_policy,
            ..new_container(req, dirs, mounted, init.clone(), own_pid_ns)
        });
        let exit = self.inner.exits.subscribe(pid);
        self.register(req, container.clone(), init, pid as u32, exit);
        let events = self.inner.events.clone();
        let id = req.id.clone();
        oom::watch(&container.cgroup_path, move || {
            log::warn!(id = id.as_str(); "OOM kill in container");
            let _ = events.send(Event::Oom { id: id.clone() });
        });
        Ok(pid as u32)
    }

    /// Make a created container known (either backend): record it, watch its init's
    /// exit, publish TaskCreate.
    fn register(
        &self,
        req: &CreateRequest,
        container: Arc<Container>,
        init: Arc<Process>,
        pid: u32,
        exit: tokio::sync::oneshot::Receiver<i32>,
    ) {
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .insert(req.id.clone(), container.clone());
        self.spawn_exit_watch(container, init, pid as i32, exit);
        self.emit(Event::Create {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid,
            rootfs: req.rootfs.clone(),
            stdio: req.stdio.clone(),
        });
    }

    fn spawn_exit_watch(
        &self,
        container: Arc<Container>,
        proc: Arc<Process>,
        pid: i32,
        exit: tokio::sync::oneshot::Receiver<i32>,
    ) {
        let rt = self.clone();
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(255);
            let at = SystemTime::now();
            proc.io.wait_output(OUTPUT_GRACE).await;
            let _ = proc.gate.subscribe().wait_for(|open| *open).await;
            if proc.exec_id.is_empty() {
                rt.settle_execs(&container).await;
            }
            let info = ExitInfo {
                pid: pid as u32,
                code: code as u32,
                at,
            };
            {
                let mut state = proc.state.lock().expect("state lock");
                *state = ProcState::Stopped(info);
                rt.emit(Event::Exit {
                    id: container.id.clone(),
                    exec_id: proc.exec_id.clone(),
                    info,
                });
            }
            log::info!(id = container.id.as_str(), exec = proc.exec_id.as_str(), pid, code; "process exited");
            proc.exited.send_replace(Some(info));
        });
    }

    /// After the init died: without a pid namespace of its own the other processes
    /// survive it, so kill them; then wait for their exits to be published first.
    async fn settle_execs(&self, c: &Container) {
        let running: Vec<Arc<Process>> = c
            .execs
            .lock()
            .expect("execs lock")
            .values()
            .filter(|p| p.state() == ProcState::Running)
            .cloned()
            .collect();
        if running.is_empty() {
            return;
        }
        if !c.own_pid_ns {
            let _ = self.kill_all(c, libc::SIGKILL).await;
        }
        for p in running {
            let _ = tokio::time::timeout(EXIT_GRACE, p.wait_exit()).await;
        }
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if p.state() != ProcState::Created {
            return Err(Error::FailedPrecondition(format!(
                "process {id}/{exec_id} is not in the created state"
            )));
        }
        if let Some(vm) = &c.vm {
            return self.start_vm(vm, &c, &p, id, exec_id).await;
        }
        if exec_id.is_empty() {
            let res = self.inner.linux.start(&c.dirs, id).await;
            if let Err(e) = res {
                p.open_gate();
                return Err(e);
            }
            *p.state.lock().expect("state lock") = ProcState::Running;
            self.emit(Event::Start {
                id: id.into(),
                pid: p.pid(),
            });
            p.open_gate();
            return Ok(p.pid());
        }
        if c.init.state() != ProcState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let spec_file = c.dirs.state.join(format!("exec-{exec_id}.json"));
        let mut child = p.child.lock().expect("child lock").take().ok_or_else(|| {
            Error::FailedPrecondition(format!("exec {exec_id} was already started"))
        })?;
        let console = p.io.attach_console(&mut child, &p.stdio);
        let started = self
            .inner
            .linux
            .exec(
                &c.dirs,
                id,
                &spec_file,
                child.console_socket.clone(),
                std::mem::take(&mut child.fds),
                Confinement {
                    filters: c.exec_policy.confined.then(|| c.dirs.filters.clone()),
                    drop_sys_admin: p.lent_sys_admin.load(std::sync::atomic::Ordering::Relaxed),
                },
            )
            .await;
        let _ = std::fs::remove_file(&spec_file);
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(h) = console {
                    h.abort();
                }
                p.io.shutdown();
                c.execs.lock().expect("execs lock").remove(exec_id);
                return Err(e);
            }
        };
        if let Some(h) = console {
            let _ = h.await;
        }
        *p.pid.lock().expect("pid lock") = pid as u32;
        *p.state.lock().expect("state lock") = ProcState::Running;
        let exit = self.inner.exits.subscribe(pid);
        self.spawn_exit_watch(c.clone(), p.clone(), pid, exit);
        self.emit(Event::ExecStarted {
            id: id.into(),
            exec_id: exec_id.into(),
            pid: pid as u32,
        });
        p.open_gate();
        Ok(pid as u32)
    }

    async fn start_vm(
        &self,
        vm: &Arc<Sandbox>,
        c: &Arc<Container>,
        p: &Arc<Process>,
        id: &str,
        exec_id: &str,
    ) -> Result<u32> {
        if !exec_id.is_empty() && c.init.state() != ProcState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let pid = match vm.agent.start(id, exec_id).await {
            Ok(pid) => pid,
            Err(e) => {
                if exec_id.is_empty() {
                    p.open_gate();
                } else {
                    p.io.shutdown();
                    c.execs.lock().expect("execs lock").remove(exec_id);
                    let _ = vm.agent.delete(id, exec_id).await;
                }
                return Err(e);
            }
        };
        *p.pid.lock().expect("pid lock") = pid;
        *p.state.lock().expect("state lock") = ProcState::Running;
        if exec_id.is_empty() {
            self.emit(Event::Start { id: id.into(), pid });
        } else {
            let exit = vm.exits.subscribe(pid as i32);
            self.spawn_exit_watch(c.clone(), p.clone(), pid as i32, exit);
            self.emit(Event::ExecStarted {
                id: id.into(),
                exec_id: exec_id.into(),
                pid,
            });
        }
        p.open_gate();
        Ok(pid)
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec: ProcessSpec,
        stdio: StdioPaths,
    ) -> Result<()> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id must not be empty".into()));
        }
        if c.init.state() != ProcState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if c.execs.lock().expect("execs lock").contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id}")));
        }
        let mut process: OciProcess = serde_json::from_slice(&spec.json)
            .map_err(|e| Error::InvalidArgument(format!("invalid exec process spec: {e}")))?;
        let lent_sys_admin = c.exec_policy.apply(id, exec_id, &mut process)?;
        let mut stdio = stdio;
        stdio.terminal = process.terminal().unwrap_or(false) || stdio.terminal;
        process.set_terminal(Some(stdio.terminal));
        let name = format!("exec-{exec_id}");
        let (io, child) = match &c.vm {
            Some(vm) => {
                let json =
                    serde_json::to_vec(&process).map_err(|e| Error::Backend(e.to_string()))?;
                let (io, fds, streams) = vm_process_io(&stdio, &c.dirs.state, &name)?;
                if let Err(e) = vm.agent.exec(id, exec_id, json, streams).await {
                    io.shutdown();
                    return Err(e);
                }
                if let Err(e) = vm.attach_stdio(id, exec_id, fds).await {
                    io.shutdown();
                    let _ = vm.agent.delete(id, exec_id).await;
                    return Err(e);
                }
                (io, None)
            }
            None => {
                let spec_file = c.dirs.state.join(format!("{name}.json"));
                std::fs::write(
                    &spec_file,
                    serde_json::to_vec(&process).map_err(|e| Error::Backend(e.to_string()))?,
                )
                .map_err(Error::io("write exec spec"))?;
                let (io, child) = ProcessIo::new(&stdio, &c.dirs.state, &name)?;
                (io, Some(child))
            }
        };
        let p = Process::new(exec_id, stdio, io, 0);
        *p.child.lock().expect("child lock") = child;
        p.lent_sys_admin
            .store(lent_sys_admin, std::sync::atomic::Ordering::Relaxed);
        c.execs
            .lock()
            .expect("execs lock")
            .insert(exec_id.into(), p);
        self.emit(Event::ExecAdded {
            id: id.into(),
            exec_id: exec_id.into(),
        });
        Ok(())
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        match p.state() {
            ProcState::Stopped(_) => {
                return Err(Error::NotFound(format!(
                    "process {id}/{exec_id}: already finished"
                )));
            }
            ProcState::Created if !exec_id.is_empty() => {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id} was not started"
                )));
            }
            _ => {}
        }
        p.open_gate();
        if let Some(vm) = &c.vm {
            return vm.agent.signal(id, exec_id, signal, all).await;
        }
        if all && exec_id.is_empty() {
            return self.kill_all(&c, signal as i32).await;
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(Error::Backend(format!("kill {}: {e}", p.pid()))),
        }
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let p = self.container(id)?.process(exec_id)?;
        Ok(p.wait_exit().await)
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if !exec_id.is_empty() {
            let info = match p.state() {
                ProcState::Running => {
                    return Err(Error::FailedPrecondition(format!(
                        "exec {exec_id} is still running"
                    )));
                }
                ProcState::Stopped(info) => info,
                ProcState::Created => ExitInfo {
                    pid: 0,
                    code: 0,
                    at: SystemTime::now(),
                },
            };
            p.io.shutdown();
            c.execs.lock().expect("execs lock").remove(exec_id);
            if let Some(vm) = &c.vm
                && !vm.is_dead()
            {
                let _ = vm.agent.delete(id, exec_id).await;
            }
            return Ok(info);
        }
        let info = match p.state() {
            ProcState::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is still running"
                )));
            }
            ProcState::Stopped(info) => info,
            ProcState::Created => {
                // Never started: libcontainer kills the waiting init; report its exit.
                p.open_gate();
                self.remove_container(&c).await?;
                tokio::time::timeout(EXIT_GRACE, p.wait_exit())
                    .await
                    .unwrap_or(ExitInfo {
                        pid: p.pid(),
                        code: 137,
                        at: SystemTime::now(),
                    })
            }
        };
        for e in c.execs.lock().expect("execs lock").drain() {
            e.1.io.shutdown();
        }
        self.remove_container(&c).await?;
        p.io.shutdown();
        if let Some(vm) = &c.vm {
            vm.share.remove_container(id)?;
        }
        if let Some(target) = &c.mounted_rootfs {
            mounts::unmount_all(target)?;
        }
        let _ = std::fs::remove_dir_all(&c.dirs.state);
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .remove(id);
        if c.vm.is_some()
            && let Err(e) = self.release_sandbox_if_unused().await
        {
            log::warn!(id, error:% = e; "VM teardown incomplete");
        }
        self.emit(Event::Delete {
            id: id.into(),
            info,
        });
        Ok(info)
    }

    /// Remove the backend's container (its processes die with it).
    async fn remove_container(&self, c: &Container) -> Result<()> {
        match &c.vm {
            Some(vm) if vm.is_dead() => Ok(()),
            Some(vm) => match vm.agent.delete(&c.id, "").await {
                Ok(_) | Err(Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            },
            None => self.inner.linux.delete(&c.dirs, &c.id).await,
        }
    }

    async fn kill_all(&self, c: &Container, signal: i32) -> Result<()> {
        match &c.vm {
            Some(vm) => vm.agent.signal(&c.id, "", signal as u32, true).await,
            None => self.inner.linux.kill_all(&c.dirs, &c.id, signal).await,
        }
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<TaskState> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let (status, exit) = match p.state() {
            ProcState::Created => (Status::Created, None),
            ProcState::Running if *c.paused.lock().expect("paused lock") => (Status::Paused, None),
            ProcState::Running => (Status::Running, None),
            ProcState::Stopped(info) => (Status::Stopped, Some(info)),
        };
        Ok(TaskState {
            id: id.into(),
            exec_id: exec_id.into(),
            bundle: c.bundle.clone(),
            pid: p.pid(),
            status,
            stdio: p.stdio.clone(),
            exit,
        })
    }

    /// The container's processes: (pid, exec id if the pid is an exec's).
    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        use libcgroups::common::CgroupManager;
        let c = self.container(id)?;
        if let Some(vm) = &c.vm {
            return vm.agent.pids(id).await;
        }
        let pids = in_cgroup(&c, |path, systemd, id| {
            stats::manager(path, systemd, id)?
                .get_all_pids()
                .map_err(|e| Error::Backend(format!("list pids: {e}")))
        })
        .await?;
        let execs: HashMap<u32, String> = c
            .execs
            .lock()
            .expect("execs lock")
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|p| {
                let pid = p.as_raw() as u32;
                (pid, execs.get(&pid).cloned())
            })
            .collect())
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let c = self.container(id)?;
        if c.init.state() != ProcState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        match &c.vm {
            Some(vm) => vm.agent.set_paused(id, paused).await?,
            None => self.inner.linux.set_paused(&c.dirs, id, paused).await?,
        }
        *c.paused.lock().expect("paused lock") = paused;
        self.emit(if paused {
            Event::Paused { id: id.into() }
        } else {
            Event::Resumed { id: id.into() }
        });
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<(stats::CgroupVersion, stats::Metrics)> {
        let c = self.container(id)?;
        if let Some(vm) = &c.vm {
            let r = vm.agent.stats(id).await?;
            let m: stats::Metrics = serde_json::from_slice(&r.metrics_json)
                .map_err(|e| Error::Backend(format!("guest sent unreadable stats: {e}")))?;
            let v = if r.cgroup_v2 {
                stats::CgroupVersion::V2
            } else {
                stats::CgroupVersion::V1
            };
            return Ok((v, m));
        }
        let m = in_cgroup(&c, stats::collect).await?;
        Ok((stats::cgroup_version(), m))
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        let c = self.container(id)?;
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| Error::InvalidArgument(format!("invalid resources: {e}")))?;
        if let Some(vm) = &c.vm {
            let json = serde_json::to_vec(&resources).map_err(|e| Error::Backend(e.to_string()))?;
            return vm.agent.update(id, json).await;
        }
        in_cgroup(&c, move |path, systemd, id| {
            let opt = ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            stats::manager(path, systemd, id)?
                .apply(&opt)
                .map_err(|e| Error::InvalidArgument(format!("update resources: {e}")))
        })
        .await
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        match &c.vm {
            Some(vm) => vm.agent.resize(id, exec_id, width, height).await,
            None => p.io.resize(width, height),
        }
    }

    /// Close a process's stdin once what containerd wrote so far is delivered. In a VM
    /// the host's copier ends, and its half-close of the vsock stream reaches the guest
    /// as the end of file.
    pub fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        self.container(id)?.process(exec_id)?.io.close_stdin();
        Ok(())
    }

    /// The shim's `delete` subcommand: clean up after a shim that died, from disk alone.
    pub async fn cleanup(&self, id: &str, bundle: &Path, config: &Config) -> Result<()> {
        let dirs = ContainerDirs::new(&config.runtime.state_dir, &self.inner.namespace, id);
        // The VM this container's shim booted, with its helpers and share.
        let vm_dir =
            crate::vm::sandbox::sandbox_dir(&config.runtime.state_dir, &self.inner.namespace, id);
        if dirs.state.join(SANDBOX_MARK).exists() || vm_dir.exists() {
            let dir = vm_dir.clone();
            tokio::task::spawn_blocking(move || crate::vm::sandbox::cleanup_dir(&dir))
                .await
                .map_err(|e| Error::Backend(e.to_string()))??;
        }
        if dirs.state.exists() {
            self.inner.linux.delete(&dirs, id).await?;
        }
        mounts::unmount_all(&bundle.join("rootfs"))?;
        if dirs.state.exists() {
            std::fs::remove_dir_all(&dirs.state)
                .map_err(Error::io(format!("remove {}", dirs.state.display())))?;
        }
        Ok(())
    }
}

/// A container as Create records it, on the host with no cgroup yet; each backend fills
/// in where it runs.
fn new_container(
    req: &CreateRequest,
    dirs: &ContainerDirs,
    mounted: &Option<PathBuf>,
    init: Arc<Process>,
    own_pid_ns: bool,
) -> Container {
    Container {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        dirs: dirs.clone(),
        mounted_rootfs: mounted.clone(),
        init,
        execs: Mutex::new(HashMap::new()),
        cgroup_path: PathBuf::new(),
        systemd: false,
        own_pid_ns,
        paused: Mutex::new(false),
        exec_policy: ExecPolicy::default(),
        vm: None,
    }
}

/// Mount the rootfs containerd sent (if any; Docker's is already in place) at
/// `<bundle>/rootfs`, recording it in `mounted` for the caller's cleanup.
fn mount_rootfs(req: &CreateRequest, mounted: &mut Option<PathBuf>) -> Result<()> {
    if req.rootfs.is_empty() {
        return Ok(());
    }
    let target = req.bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(Error::io(format!("create {}", target.display())))?;
    mounts::mount_all(&req.rootfs, &target)?;
    *mounted = Some(target);
    Ok(())
}

/// Marks the container whose Create booted the pod's VM.
const SANDBOX_MARK: &str = "vm-sandbox";

/// The pod's network as the VM takes it over: the namespace the spec joins (CNI's, or
/// Docker's), or a new one its hooks configure (Docker's libnetwork hook), or none.
fn net_request(spec: &Spec, bundle: &Path) -> crate::vm::sandbox::NetRequest {
    use crate::vm::sandbox::NetRequest;
    let Some(ns) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
    else {
        return NetRequest::None;
    };
    if let Some(path) = ns.path() {
        return NetRequest::Join(path.clone());
    }
    let hooks: Vec<_> = spec
        .hooks()
        .as_ref()
        .map(|h| {
            #[allow(deprecated)]
            let prestart = h.prestart().clone().unwrap_or_default();
            let create = h.create_runtime().clone().unwrap_or_default();
            prestart.into_iter().chain(create).collect()
        })
        .unwrap_or_default();
    if hooks.is_empty() {
        NetRequest::None
    } else {
        NetRequest::Hooks {
            hooks,
            bundle: bundle.to_path_buf(),
        }
    }
}

/// The spec as the guest runs it. Hooks are host programs: the sandbox ran the
/// network hooks on the host (`net_request`), none run in the guest. The network
/// namespace goes when `shares_guest_net` (the container shares the guest's, which is
/// wired to the pod's). A namespace path that names another container of the pod
/// (`/proc/<pid>/ns/<type>` with `pid` in `pod_pids`: the pids the host reports are the
/// guest's, so CRI's paths to the pause container are guest paths) is joined in the
/// guest; any other path names a host namespace, and the guest creates a new one. The
/// cgroup is the guest's. A privileged container (allowed by `[hypervisor]
/// allow_privileged`) keeps no device of the spec's list: those name host devices
/// (`--privileged` lists them all), and the guest's numbers mean other devices.
fn guest_spec(spec: &mut Spec, id: &str, how: GuestSpec, pod_pids: &[u32]) {
    let GuestSpec {
        terminal,
        shares_guest_net,
        privileged,
    } = how;
    if spec.hooks().is_some() {
        log::info!("OCI hooks are host programs; not run inside the VM");
        spec.set_hooks(None);
    }
    // The host chose the VM; inside it the guest runs containers.
    if let Some(a) = spec.annotations_mut() {
        a.remove(crate::select::MODE_ANNOTATION);
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| !(shares_guest_net && n.typ() == LinuxNamespaceType::Network));
            for n in ns.iter_mut() {
                let in_pod = n
                    .path()
                    .as_deref()
                    .and_then(proc_ns_pid)
                    .is_some_and(|pid| pod_pids.contains(&pid));
                if !in_pod {
                    n.set_path(None);
                }
            }
            // The guest is cgroup v2 whatever the host is: a container sees its own
            // cgroup as the root of /sys/fs/cgroup, as on a v2 host.
            if !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup) {
                ns.push(
                    oci_spec::runtime::LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Cgroup)
                        .build()
                        .expect("a namespace without a path"),
                );
            }
        }
        linux.set_cgroups_path(Some(PathBuf::from(format!("/stockade/{id}"))));
        if privileged {
            linux.set_devices(None);
        }
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(terminal));
    }
}

/// How [`guest_spec`] rewrites one container's spec.
#[derive(Debug, Clone, Copy, Default)]
struct GuestSpec {
    /// The request's TTY setting.
    terminal: bool,
    /// The container shares the guest's network, which is the pod's.
    shares_guest_net: bool,
    /// Allowed by `[hypervisor] allow_privileged`.
    privileged: bool,
}

/// The pid of a `/proc/<pid>/ns/<type>` path.
fn proc_ns_pid(path: &Path) -> Option<u32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.components();
    let pid = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    (parts.next()?.as_os_str() == "ns" && parts.next().is_some() && parts.next().is_none())
        .then_some(pid)
}

/// The host side of a VM process's stdio: the copier from and to containerd's FIFOs,
/// the process's ends of its pipes (for [`Sandbox::attach_stdio`]), and the streams to
/// ask the agent for.
fn vm_process_io(
    stdio: &StdioPaths,
    scratch: &Path,
    name: &str,
) -> Result<(
    ProcessIo,
    [Option<std::os::fd::OwnedFd>; 3],
    stockade_agent_protocol::asynchronous::agent::Stdio,
)> {
    let (io, mut child) = ProcessIo::new(&host_side(stdio), scratch, name)?;
    let fds = std::mem::take(&mut child.fds);
    let want = [0, 1, 2].map(|i| fds[i].is_some());
    Ok((io, fds, stdio_msg(want, stdio.terminal)))
}

/// Plain pipes even for a TTY (the PTY lives in the guest; its bytes arrive on one
/// vsock stream).
fn host_side(stdio: &StdioPaths) -> StdioPaths {
    StdioPaths {
        terminal: false,
        stderr: if stdio.terminal {
            String::new()
        } else {
            stdio.stderr.clone()
        },
        ..stdio.clone()
    }
}

/// Run `f` on the container's cgroup (path, systemd driver, id) off the async threads:
/// cgroupfs reads and writes block.
async fn in_cgroup<T: Send + 'static>(
    c: &Container,
    f: impl FnOnce(&Path, bool, &str) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (path, systemd, id) = (c.cgroup_path.clone(), c.systemd, c.id.clone());
    tokio::task::spawn_blocking(move || f(&path, systemd, &id))
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
}

/// `slice:prefix:name`, the systemd driver's cgroupsPath form (never an absolute path).
fn is_systemd_cgroup_path(path: &Path) -> bool {
    let s = path.to_string_lossy();
    !s.starts_with('/') && s.split(':').count() == 3
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pods_own_namespaces_are_joined_in_the_guest() {
        let mut spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"namespaces":[
                {"type":"network","path":"/proc/42/ns/net"},
                {"type":"ipc","path":"/proc/42/ns/ipc"},
                {"type":"uts","path":"/proc/42/ns/uts"},
                {"type":"pid","path":"/proc/7/ns/pid"},
                {"type":"mount"},
                {"type":"cgroup","path":"/var/run/netns/x"}]}}"#,
        )
        .unwrap();
        spec.set_annotations(Some(HashMap::from([(
            crate::select::MODE_ANNOTATION.to_string(),
            "vm".to_string(),
        )])));
        let how = GuestSpec {
            shares_guest_net: true,
            ..GuestSpec::default()
        };
        guest_spec(&mut spec, "c1", how, &[42]);
        assert!(spec.annotations().as_ref().unwrap().is_empty());
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let got: Vec<(String, Option<String>)> = ns
            .iter()
            .map(|n| {
                (
                    format!("{:?}", n.typ()),
                    n.path().as_ref().map(|p| p.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("Ipc".into(), Some("/proc/42/ns/ipc".into())),
                ("Uts".into(), Some("/proc/42/ns/uts".into())),
                ("Pid".into(), None),
                ("Mount".into(), None),
                ("Cgroup".into(), None),
            ]
        );
        assert_eq!(proc_ns_pid(Path::new("/proc/42/ns/ipc")), Some(42));
        assert_eq!(proc_ns_pid(Path::new("/proc/42/ns/ipc/x")), None);
        assert_eq!(proc_ns_pid(Path::new("/proc/self/ns/ipc")), None);
        assert_eq!(proc_ns_pid(Path::new("/run/netns/42")), None);
    }

    #[test]
    fn systemd_cgroup_paths_are_recognised() {
        assert!(is_systemd_cgroup_path(Path::new("system.slice:docker:abc")));
        assert!(is_systemd_cgroup_path(Path::new(
            "kubepods-besteffort.slice:cri-containerd:abc"
        )));
        assert!(!is_systemd_cgroup_path(Path::new("/default/abc")));
        assert!(!is_systemd_cgroup_path(Path::new("/docker/abc")));
    }
}
