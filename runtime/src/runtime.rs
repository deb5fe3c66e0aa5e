//! The runtime the shim drives: the state machine of a pod's containers and their
//! processes, and the events they emit, the same for every backend.
//!
//! The pod's first Create picks its backend ([`crate::backend`]); every verb checks the
//! process's state here, asks the backend to do the work, and records and publishes
//! the result. Every event goes through one ordered channel. A process's exit is
//! published only after its start was (a gate per process), after its output is
//! copied, and for an init after the other processes of its container are gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{self, Backend, Created, Host, NewContainer};
use crate::config::{Config, ConfigSource};
use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::linux::ContainerDirs;
use crate::linux::hardening::Kernel;
use crate::linux::stats::{CgroupVersion, Metrics};
use crate::mounts::{self, Mount};
use crate::probe::{RealHost, probe_kvm};
use crate::process::{Container, ProcState, Process};
pub use crate::process::{ExitInfo, Status, TaskState};
use crate::select::select;
use crate::stdio::StdioPaths;

const OUTPUT_GRACE: Duration = Duration::from_secs(5);
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// The shortest time between two OOM events of one container.
const OOM_EVERY: Duration = Duration::from_secs(1);

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
    host: Host,
    events: mpsc::UnboundedSender<Event>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// The pod's backend, picked by its first Create, dropped with its last container.
    pod: tokio::sync::Mutex<Option<Arc<dyn Backend>>>,
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
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<Inner>| {
            // An OOM kill is published only for a container of this pod: a guest may
            // name any id.
            // At most one a second per container: a flood of reports for its own
            // containers costs the guest, not containerd.
            let me = me.clone();
            let last: Mutex<HashMap<String, std::time::Instant>> = Mutex::default();
            let oom: backend::OomSink = Arc::new(move |id: String| {
                let Some(inner) = me.upgrade() else { return };
                let ours = inner
                    .containers
                    .lock()
                    .expect("containers lock")
                    .contains_key(&id);
                if !ours {
                    log::warn!(id = id.as_str(); "OOM report for a container not in this pod ignored");
                    return;
                }
                let now = std::time::Instant::now();
                let mut last = last.lock().expect("oom lock");
                if last
                    .get(&id)
                    .is_some_and(|at| now.duration_since(*at) < OOM_EVERY)
                {
                    return;
                }
                last.insert(id.clone(), now);
                let _ = inner.events.send(Event::Oom { id });
            });
            Inner {
                host: Host::new(namespace, exits, seal_exe, kernel, oom),
                events: tx,
                containers: Mutex::new(HashMap::new()),
                pod: tokio::sync::Mutex::new(None),
            }
        });
        (Runtime { inner }, rx)
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

    /// The pod's backend (it has one while it has containers).
    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.inner
            .pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("the pod has no backend".into()))
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
        let backend = self.pod_backend(&req.id, &config, &spec).await?;
        let dirs = ContainerDirs::new(
            &config.runtime.state_dir,
            &self.inner.host.namespace,
            &req.id,
        );
        if dirs.state.exists() {
            // Left by a shim that died: nothing in it is trusted or reused.
            let _ = backend::scrub(&self.inner.host, &dirs, &req.id).await;
        }
        let pod_pids: Vec<u32> = self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .values()
            .map(|c| c.init.pid())
            .collect();
        let mut mounted = None;
        let created = match prepare(&req, &dirs, &mut mounted) {
            Ok(()) => {
                backend
                    .create(NewContainer {
                        req: &req,
                        config: &config,
                        spec: &mut spec,
                        dirs: &dirs,
                        pod_pids,
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(created) => Ok(self.register(&req, dirs, mounted, created)),
            Err(e) => {
                if let Some(target) = &mounted {
                    let _ = mounts::unmount_all(target);
                }
                let _ = std::fs::remove_dir_all(&dirs.state);
                self.release_if_empty().await;
                Err(e)
            }
        }
    }

    /// The pod's backend; the first container picks it for the whole pod.
    async fn pod_backend(
        &self,
        id: &str,
        config: &Config,
        spec: &Spec,
    ) -> Result<Arc<dyn Backend>> {
        let mut slot = self.inner.pod.lock().await;
        if let Some(b) = slot.as_ref() {
            log::info!(id, backend = b.name(), reason = "the pod's sandbox runs there"; "backend selected");
            return Ok(b.clone());
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        let host_ns = crate::select::host_namespaces(spec);
        let selection = select(config, &annotations, &host_ns, || probe_kvm(&RealHost))?;
        log::info!(id, backend:? = selection.backend, reason = selection.reason.as_str(); "backend selected");
        let b = backend::for_pod(selection.backend, &self.inner.host)?;
        *slot = Some(b.clone());
        Ok(b)
    }

    /// Release the pod's backend (its VM) once no container is left.
    async fn release_if_empty(&self) {
        if !self.is_empty() {
            return;
        }
        let b = self.inner.pod.lock().await.take();
        if let Some(b) = b
            && let Err(e) = b.release().await
        {
            log::warn!(error:% = e; "pod teardown incomplete");
        }
    }

    /// Make a created container known: record it, watch its init's exit, publish
    /// TaskCreate.
    fn register(
        &self,
        req: &CreateRequest,
        dirs: ContainerDirs,
        mounted: Option<PathBuf>,
        created: Created,
    ) -> u32 {
        let Created {
            pid,
            io,
            exit,
            exec_policy,
            own_pid_ns,
            cgroup,
        } = created;
        let init = Process::new("", req.stdio.clone(), io, pid);
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            dirs,
            mounted_rootfs: mounted,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            cgroup,
            own_pid_ns,
            paused: Mutex::new(false),
            exec_policy,
        });
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .insert(req.id.clone(), container.clone());
        self.spawn_exit_watch(container, init, pid, exit);
        self.emit(Event::Create {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            pid,
            rootfs: req.rootfs.clone(),
            stdio: req.stdio.clone(),
        });
        pid
    }

    fn spawn_exit_watch(
        &self,
        container: Arc<Container>,
        proc: Arc<Process>,
        pid: u32,
        exit: oneshot::Receiver<i32>,
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
                pid,
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
        if !c.own_pid_ns
            && let Ok(b) = self.backend().await
        {
            let _ = b.signal(c, &c.init, libc::SIGKILL as u32, true).await;
        }
        for p in running {
            let _ = tokio::time::timeout(EXIT_GRACE, p.wait_exit()).await;
        }
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        p.check_startable(id)?;
        let backend = self.backend().await?;
        if exec_id.is_empty() {
            if let Err(e) = backend.start(&c).await {
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
        c.check_running()?;
        let started = match backend.start_exec(&c, &p).await {
            Ok(s) => s,
            Err(e) => {
                p.io.shutdown();
                c.execs.lock().expect("execs lock").remove(exec_id);
                return Err(e);
            }
        };
        *p.pid.lock().expect("pid lock") = started.pid;
        *p.state.lock().expect("state lock") = ProcState::Running;
        self.spawn_exit_watch(c.clone(), p.clone(), started.pid, started.exit);
        self.emit(Event::ExecStarted {
            id: id.into(),
            exec_id: exec_id.into(),
            pid: started.pid,
        });
        p.open_gate();
        Ok(started.pid)
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
        c.check_running()?;
        if c.execs.lock().expect("execs lock").contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("exec {exec_id}")));
        }
        let mut process: OciProcess = serde_json::from_slice(&spec.json)
            .map_err(|e| Error::InvalidArgument(format!("invalid exec process spec: {e}")))?;
        let lent_sys_admin = c.exec_policy.apply(id, exec_id, &mut process)?;
        let mut stdio = stdio;
        stdio.terminal = process.terminal().unwrap_or(false) || stdio.terminal;
        process.set_terminal(Some(stdio.terminal));
        let (io, child) = self
            .backend()
            .await?
            .exec(&c, exec_id, &process, &stdio)
            .await?;
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
        p.check_signalable(id)?;
        p.open_gate();
        let backend = self.backend().await?;
        let sent = backend.signal(&c, &p, signal, all).await;
        if signal != libc::SIGKILL as u32 {
            return sent;
        }
        // SIGKILL never depends on the backend's cooperation: undelivered, or not
        // followed by the exit within the grace period, the pod is stopped by force.
        if let Err(e) = sent {
            let why = format!("SIGKILL for {id} {exec_id} not delivered: {e}");
            return if backend.force_stop(&why).await {
                Ok(())
            } else {
                Err(e)
            };
        }
        let what = format!("{id} {exec_id}");
        tokio::spawn(async move {
            if tokio::time::timeout(EXIT_GRACE, p.wait_exit())
                .await
                .is_err()
            {
                let why = format!("{what}: no exit {}s after SIGKILL", EXIT_GRACE.as_secs());
                backend.force_stop(&why).await;
            }
        });
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let p = self.container(id)?.process(exec_id)?;
        Ok(p.wait_exit().await)
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let exited = p.check_deletable(id)?;
        let backend = self.backend().await?;
        if !exec_id.is_empty() {
            p.io.shutdown();
            c.execs.lock().expect("execs lock").remove(exec_id);
            backend.delete_exec(&c, exec_id).await;
            return Ok(exited.unwrap_or(ExitInfo {
                pid: 0,
                code: 0,
                at: SystemTime::now(),
            }));
        }
        let info = match exited {
            Some(info) => {
                for e in c.execs.lock().expect("execs lock").drain() {
                    e.1.io.shutdown();
                }
                backend.delete(&c).await?;
                info
            }
            None => {
                // Never started: removing the container kills the waiting init; report
                // its exit.
                p.open_gate();
                backend.delete(&c).await?;
                tokio::time::timeout(EXIT_GRACE, p.wait_exit())
                    .await
                    .unwrap_or(ExitInfo {
                        pid: p.pid(),
                        code: 137,
                        at: SystemTime::now(),
                    })
            }
        };
        p.io.shutdown();
        if let Some(target) = &c.mounted_rootfs {
            mounts::unmount_all(target)?;
        }
        let _ = std::fs::remove_dir_all(&c.dirs.state);
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .remove(id);
        self.release_if_empty().await;
        self.emit(Event::Delete {
            id: id.into(),
            info,
        });
        Ok(info)
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
        let c = self.container(id)?;
        self.backend().await?.pids(&c).await
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let c = self.container(id)?;
        c.check_running()?;
        self.backend().await?.set_paused(&c, paused).await?;
        *c.paused.lock().expect("paused lock") = paused;
        self.emit(if paused {
            Event::Paused { id: id.into() }
        } else {
            Event::Resumed { id: id.into() }
        });
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<(CgroupVersion, Metrics)> {
        let c = self.container(id)?;
        self.backend().await?.stats(&c).await
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.container(id)?;
        let resources: LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| Error::InvalidArgument(format!("invalid resources: {e}")))?;
        self.backend().await?.update(&c, &resources).await
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        self.backend().await?.resize(&c, &p, width, height).await
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
        backend::cleanup_from_disk(&self.inner.host, id, bundle, config).await
    }
}

/// The container's state dir (0700) and its rootfs: containerd's mounts (if any;
/// Docker's rootfs is already in place) at `<bundle>/rootfs`, recorded in `mounted`
/// for the caller's cleanup.
fn prepare(req: &CreateRequest, dirs: &ContainerDirs, mounted: &mut Option<PathBuf>) -> Result<()> {
    std::fs::create_dir_all(&dirs.bundle)
        .map_err(Error::io(format!("create {}", dirs.bundle.display())))?;
    // Root alone walks the state dirs (`<state_dir>/<namespace>/<id>`): what is in them
    // (specs, option files, sockets) is nobody else's business.
    for dir in dirs.state.ancestors().take(3) {
        crate::private::restrict_dir(dir);
    }
    if req.rootfs.is_empty() {
        return Ok(());
    }
    let target = req.bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(Error::io(format!("create {}", target.display())))?;
    mounts::mount_all(&req.rootfs, &target)?;
    *mounted = Some(target);
    Ok(())
}

/// The state machine and the order of events, through a fake backend.
#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
