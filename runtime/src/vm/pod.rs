//! The VM backend: the pod's containers run in one QEMU microVM (`sandbox.rs`), booted
//! by the pod's first Create and torn down when its last container is deleted. Each
//! container's spec is rewritten for the guest ([`guest_spec`]), its rootfs and volumes
//! join the pod's virtio-fs share, and every verb is an agent call over vsock; the
//! guest runs the container backend's code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess, Spec};

use crate::backend::{Backend, Created, Host, NewContainer, Started};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::linux::ContainerDirs;
use crate::linux::backend::is_systemd_cgroup_path;
use crate::linux::hardening::{self, ExecPolicy, Kernel};
use crate::linux::stats::{CgroupVersion, Metrics};
use crate::process::{Container, Process};
use crate::runtime::CreateRequest;
use crate::stdio::{ChildIo, ProcessIo, StdioPaths};
use crate::vm::agent::stdio_msg;
use crate::vm::sandbox::{NetRequest, Sandbox};

/// Marks the container whose Create booted the pod's VM (its content: the sandbox dir).
const SANDBOX_MARK: &str = "vm-sandbox";

pub(crate) struct VmPod {
    host: Host,
    /// Booted by the pod's first Create.
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
}

impl VmPod {
    pub(crate) fn new(host: Host) -> VmPod {
        VmPod {
            host,
            sandbox: tokio::sync::Mutex::new(None),
        }
    }

    /// The pod's VM: the one already running, or a new one booted for `req`.
    async fn sandbox_for(
        &self,
        req: &CreateRequest,
        config: &Config,
        spec: &Spec,
        network: NetRequest,
        dirs: &ContainerDirs,
    ) -> Result<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sb) = slot.as_ref() {
            if sb.is_dead() {
                return Err(Error::FailedPrecondition(format!(
                    "the pod's VM has died (console: {})",
                    sb.console_log().display()
                )));
            }
            return Ok(sb.clone());
        }
        let id = req.id.as_str();
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
        // The VM's host processes go where the sandbox container would have gone.
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|path| crate::vm::cgroup::PodCgroup {
                systemd: req.systemd_cgroup || is_systemd_cgroup_path(&path),
                path,
                id: id.to_string(),
            });
        let oom = self.host.oom.clone();
        let sb = Sandbox::boot(
            &config,
            &self.host.namespace,
            id,
            &hostname,
            crate::vm::sandbox::PodHost { network, cgroup },
            &self.host.exits,
            move |id| {
                log::warn!(id = id.as_str(); "OOM kill in container (guest)");
                oom(id);
            },
        )
        .await?;
        std::fs::write(
            dirs.state.join(SANDBOX_MARK),
            sb.dir().to_string_lossy().as_bytes(),
        )
        .map_err(Error::io("record the sandbox dir"))?;
        *slot = Some(sb.clone());
        Ok(sb)
    }

    /// The pod's running VM.
    async fn vm(&self) -> Result<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("the pod's VM is gone".into()))
    }

    async fn create_in(
        &self,
        sandbox: &Sandbox,
        req: &CreateRequest,
        config: &Config,
        spec: &Spec,
        dirs: &ContainerDirs,
    ) -> Result<Created> {
        let own_pid_ns = crate::linux::hardening::spec_namespace(spec, LinuxNamespaceType::Pid)
            .is_some_and(|n| n.path().is_none());
        let json = serde_json::to_vec(&spec).map_err(|e| Error::Backend(e.to_string()))?;
        let (io, fds, streams) = vm_process_io(&req.stdio, &dirs.state, "init")?;
        let asked = std::time::Instant::now();
        let pid = sandbox
            .agent()
            .create_container(&req.id, json, streams)
            .await;
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
            let _ = sandbox.agent().delete(&req.id, "").await;
            return Err(e);
        }
        // The guest holds every exec to the same policy; the host checks first.
        let exec_policy = ExecPolicy {
            allow_privileged: config.hypervisor.allow_privileged,
            setting: Kernel::Guest.allow_privileged_setting(),
            no_new_privileges: config.container.no_new_privileges,
            ..ExecPolicy::of(spec)
        };
        sandbox.note_guest_init(pid);
        Ok(Created {
            // Reported to containerd and its clients, who look the pid up on the host.
            pid: sandbox.reported_pid(pid),
            io,
            exit: sandbox.subscribe_exit(pid),
            exec_policy,
            own_pid_ns,
            cgroup: None,
        })
    }
}

#[async_trait]
impl Backend for VmPod {
    fn name(&self) -> &'static str {
        "vm"
    }

    async fn create(&self, new: NewContainer<'_>) -> Result<Created> {
        let NewContainer {
            req,
            config,
            spec,
            dirs,
            pod_pids,
        } = new;
        // Refused before a VM boots for it; allowed, it keeps no host device. The
        // spec's namespaces are checked against the host's; the guest's setting decides.
        let reasons = hardening::privileged_reasons(spec, Kernel::Host);
        if !config.hypervisor.allow_privileged {
            hardening::refuse_privileged(&reasons, Kernel::Guest.allow_privileged_setting())?;
        }
        let privileged = !reasons.is_empty();
        let pod_netns = self
            .sandbox
            .lock()
            .await
            .as_ref()
            .map(|sb| sb.netns().map(Path::to_path_buf));
        check_namespace_paths(spec, pod_netns.as_ref().map(Option::as_deref), &pod_pids)?;
        let network = net_request(spec, &req.bundle);
        // A container that joins the pod's network shares the guest's, which is wired to it.
        let shares_guest_net = !matches!(network, NetRequest::None);
        let sandbox = self.sandbox_for(req, config, spec, network, dirs).await?;
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
        let res = match sandbox.add_container(&req.id, spec, &req.bundle) {
            Ok(()) => self.create_in(&sandbox, req, config, spec, dirs).await,
            Err(e) => Err(e),
        };
        if res.is_err() {
            let _ = sandbox.remove_container(&req.id);
        }
        res
    }

    async fn start(&self, c: &Container) -> Result<()> {
        let vm = self.vm().await?;
        vm.wire_late().await?;
        vm.agent().start(&c.id, "").await.map(|_| ())
    }

    async fn exec(
        &self,
        c: &Container,
        exec_id: &str,
        process: &OciProcess,
        stdio: &StdioPaths,
    ) -> Result<(ProcessIo, Option<ChildIo>)> {
        let vm = self.vm().await?;
        let json = serde_json::to_vec(process).map_err(|e| Error::Backend(e.to_string()))?;
        let (io, fds, streams) = vm_process_io(stdio, &c.dirs.state, &format!("exec-{exec_id}"))?;
        if let Err(e) = vm.agent().exec(&c.id, exec_id, json, streams).await {
            io.shutdown();
            return Err(e);
        }
        if let Err(e) = vm.attach_stdio(&c.id, exec_id, fds).await {
            io.shutdown();
            let _ = vm.agent().delete(&c.id, exec_id).await;
            return Err(e);
        }
        Ok((io, None))
    }

    async fn start_exec(&self, c: &Container, p: &Process) -> Result<Started> {
        let vm = self.vm().await?;
        match vm.agent().start(&c.id, &p.exec_id).await {
            Ok(pid) => Ok(Started {
                pid,
                exit: vm.subscribe_exit(pid),
            }),
            Err(e) => {
                let _ = vm.agent().delete(&c.id, &p.exec_id).await;
                Err(e)
            }
        }
    }

    async fn signal(&self, c: &Container, p: &Process, signal: u32, all: bool) -> Result<()> {
        self.vm()
            .await?
            .agent()
            .signal(&c.id, &p.exec_id, signal, all)
            .await
    }

    async fn delete_exec(&self, c: &Container, exec_id: &str) {
        if let Ok(vm) = self.vm().await
            && !vm.is_dead()
        {
            let _ = vm.agent().delete(&c.id, exec_id).await;
        }
    }

    async fn delete(&self, c: &Container) -> Result<()> {
        let Ok(vm) = self.vm().await else {
            return Ok(());
        };
        if !vm.is_dead() {
            match vm.agent().delete(&c.id, "").await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                // Delete never depends on the guest: one that fails it is stopped.
                Err(e) => {
                    vm.stop_guest(&format!("the guest failed to delete {}: {e}", c.id))
                        .await
                }
            }
        }
        vm.remove_container(&c.id)
    }

    async fn pids(&self, c: &Container) -> Result<Vec<(u32, Option<String>)>> {
        let vm = self.vm().await?;
        let pids = vm.agent().pids(&c.id).await?;
        Ok(pids
            .into_iter()
            .map(|(pid, info)| (vm.reported_pid(pid), info))
            .collect())
    }

    async fn set_paused(&self, c: &Container, paused: bool) -> Result<()> {
        self.vm().await?.agent().set_paused(&c.id, paused).await
    }

    async fn stats(&self, c: &Container) -> Result<(CgroupVersion, Metrics)> {
        let r = self.vm().await?.agent().stats(&c.id).await?;
        let m: Metrics = serde_json::from_slice(&r.metrics_json)
            .map_err(|e| Error::Backend(format!("guest sent unreadable stats: {e}")))?;
        let v = if r.cgroup_v2 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        Ok((v, m))
    }

    async fn update(&self, c: &Container, resources: &LinuxResources) -> Result<()> {
        let json = serde_json::to_vec(resources).map_err(|e| Error::Backend(e.to_string()))?;
        self.vm().await?.agent().update(&c.id, json).await
    }

    async fn resize(&self, c: &Container, p: &Process, width: u32, height: u32) -> Result<()> {
        self.vm()
            .await?
            .agent()
            .resize(&c.id, &p.exec_id, width, height)
            .await
    }

    async fn force_stop(&self, why: &str) -> bool {
        match self.sandbox.lock().await.clone() {
            Some(vm) => {
                vm.stop_guest(why).await;
                true
            }
            None => false,
        }
    }

    async fn release(&self) -> Result<()> {
        let sb = self.sandbox.lock().await.take();
        match sb {
            Some(sb) => sb.teardown().await,
            None => Ok(()),
        }
    }
}

/// What a dead shim's VM left for container `id`: the VM it booted, with its helpers
/// and share.
pub(crate) async fn cleanup_from_disk(
    state_dir: &Path,
    namespace: &str,
    id: &str,
    dirs: &ContainerDirs,
) -> Result<()> {
    let vm_dir = crate::vm::sandbox::sandbox_dir(state_dir, namespace, id);
    if dirs.state.join(SANDBOX_MARK).exists() || vm_dir.exists() {
        tokio::task::spawn_blocking(move || crate::vm::sandbox::cleanup_dir(&vm_dir))
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
    }
    Ok(())
}

/// The pod's network as the VM takes it over: the namespace the spec joins (CNI's), a
/// new one its hooks configure (Docker 26's libnetwork hook), a new one configured
/// between create and start (Docker 28 and later) or never (`ctr run`), or none (the
/// host's, refused in VM mode).
fn net_request(spec: &Spec, bundle: &Path) -> NetRequest {
    let Some(ns) = crate::linux::hardening::spec_namespace(spec, LinuxNamespaceType::Network)
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
        NetRequest::Fresh
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
        linux.set_cgroups_path(Some(
            Path::new("/")
                .join(crate::linux::guest::CGROUP_PARENT)
                .join(id),
        ));
        if privileged {
            linux.set_devices(None);
        }
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(terminal));
    }
}

/// The spec of the throwaway container a warm-pool VM creates and deletes before it is
/// offered (`pool.rs`): runc's default spec (new namespaces, the usual mounts, masked
/// and read-only paths) with what containerd adds for a pod's container (a deny-all
/// device rule, a memory and CPU limit, a file bind-mounted from `hostname`), for
/// `program` in `rootfs`; rewritten for the guest as a pod's container is.
pub(crate) fn warm_up_spec(id: &str, rootfs: &Path, program: &str, hostname: &Path) -> Spec {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
        MountBuilder, RootBuilder,
    };
    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .expect("a root with a path"),
    ));
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(vec![program.to_string()]));
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/etc/hostname")
            .typ("bind")
            .source(hostname)
            .options(vec!["rbind".into(), "ro".into()])
            .build()
            .expect("a bind mount"),
    );
    spec.set_mounts(Some(mounts));
    if let Some(linux) = spec.linux_mut() {
        // containerd's default: every device denied, then the spec's own devices
        // allowed (libcontainer attaches the device program either way).
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .expect("a device rule");
        let limited = LinuxResourcesBuilder::default()
            .devices(vec![deny_all])
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .expect("a memory limit"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .build()
                    .expect("cpu shares"),
            )
            .build()
            .expect("resources");
        linux.set_resources(Some(limited));
    }
    guest_spec(
        &mut spec,
        id,
        GuestSpec {
            shares_guest_net: true,
            ..GuestSpec::default()
        },
        &[],
    );
    spec
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

/// Namespace paths in VM mode. `/proc/<pid>/ns/<type>` with a pid of this pod names a
/// guest process (the pids the host reports are the guest's) and is joined in the
/// guest; the network namespace the pod's first container names (CNI's, or one Docker
/// made) is the one the VM is wired to, and later containers may name it again. Any
/// other path names something the VM cannot join: another VM's process, a host
/// process, the host's own namespaces. Refused, never wired to the tap.
/// `pod_netns`: None while the pod has no VM; then the network namespace the VM took.
fn check_namespace_paths(
    spec: &Spec,
    pod_netns: Option<Option<&Path>>,
    pod_pids: &[u32],
) -> Result<()> {
    let Some(namespaces) = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) else {
        return Ok(());
    };
    for ns in namespaces {
        let Some(path) = ns.path() else { continue };
        let typ = ns.typ();
        let refuse = |why: &str| {
            Err(Error::InvalidArgument(format!(
                "{typ:?} namespace {}: {why}",
                path.display()
            )))
        };
        if let Some(pid) = proc_ns_pid(path) {
            if pod_pids.contains(&pid) {
                continue;
            }
            return refuse(
                "names a process outside this pod; a VM pod joins only its own containers' \
                 namespaces (`--network container:X` and the like cannot reach into another \
                 VM: run them in one pod, or with the container backend)",
            );
        }
        if is_host_namespace(typ, path) {
            return refuse("is the host's; a VM pod never joins the host's namespaces");
        }
        let joins_pod_net = typ == LinuxNamespaceType::Network
            && match pod_netns {
                None => true,
                Some(Some(own)) => same_file(path, own),
                Some(None) => false,
            };
        if !joins_pod_net {
            return refuse("is not one of this pod's namespaces; a VM pod cannot join it");
        }
    }
    Ok(())
}

/// The `/proc/<pid>/ns/` name of a namespace type.
fn proc_ns_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

/// Whether `path` is the host's namespace of its type (init's, or this process's).
fn is_host_namespace(typ: LinuxNamespaceType, path: &Path) -> bool {
    let name = proc_ns_name(typ);
    ["/proc/1/ns", "/proc/self/ns"]
        .iter()
        .any(|dir| same_file(path, &Path::new(dir).join(name)))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_paths_outside_the_pod_or_of_the_host_are_refused() {
        let spec = |typ: &str, path: &Path| -> Spec {
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "linux": {"namespaces": [{"type": typ, "path": path}]}}))
            .unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let cni = tmp.path().join("cni-1");
        let other = tmp.path().join("cni-2");
        std::fs::write(&cni, "").unwrap();
        std::fs::write(&other, "").unwrap();
        // A path that is not /proc/<pid> but leads to the host's namespace.
        let host = tmp.path().join("host");
        std::os::unix::fs::symlink("/proc/self/ns/net", &host).unwrap();
        let check = |typ, path: &str, pod: Option<Option<&Path>>, pids: &[u32]| {
            check_namespace_paths(&spec(typ, Path::new(path)), pod, pids)
        };
        let (cni_s, other_s, host_s) = (
            cni.to_str().unwrap(),
            other.to_str().unwrap(),
            host.to_str().unwrap(),
        );
        // The pod's first container: its network namespace is the one the VM takes.
        check("network", cni_s, None, &[]).unwrap();
        for path in ["/proc/1/ns/net", "/proc/4242/ns/net"] {
            let e = check("network", path, None, &[]).unwrap_err().to_string();
            assert!(e.contains("outside this pod"), "{e}");
        }
        let e = check("network", host_s, None, &[]).unwrap_err().to_string();
        assert!(e.contains("the host's"), "{e}");
        let e = check("ipc", "/proc/self/ns/ipc", None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the host's"), "{e}");
        // Later containers: the pod's own, by guest pid or by the VM's namespace.
        check("network", cni_s, Some(Some(&cni)), &[]).unwrap();
        check("network", "/proc/42/ns/net", Some(Some(&cni)), &[42]).unwrap();
        check("ipc", "/proc/42/ns/ipc", Some(None), &[42]).unwrap();
        assert!(check("network", other_s, Some(Some(&cni)), &[42]).is_err());
        assert!(check("network", cni_s, Some(None), &[]).is_err());
        assert!(check("ipc", cni_s, Some(Some(&cni)), &[]).is_err());
        assert!(check("pid", "/proc/43/ns/pid", Some(Some(&cni)), &[42]).is_err());
    }

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
    fn the_pool_warm_up_spec_is_a_pod_container_without_a_network_of_its_own() {
        let spec = warm_up_spec(
            "warm-up",
            Path::new("/x/rootfs"),
            "/warm-up",
            Path::new("/x/hostname"),
        );
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/x/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_deref(),
            Some(&["/warm-up".to_string()][..])
        );
        assert!(
            process
                .env()
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.starts_with("PATH=")),
            "libcontainer's create looks the program up in PATH"
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(
                Path::new("/")
                    .join(crate::linux::guest::CGROUP_PARENT)
                    .join("warm-up")
                    .as_path()
            )
        );
        let types: Vec<LinuxNamespaceType> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!types.contains(&LinuxNamespaceType::Network));
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(types.contains(&t), "{t:?} in {types:?}");
        }
        let resources = linux.resources().as_ref().unwrap();
        assert!(resources.memory().as_ref().unwrap().limit().is_some());
        assert!(!resources.devices().as_ref().unwrap().is_empty());
        let hostname = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/etc/hostname"))
            .unwrap();
        assert_eq!(hostname.source().as_deref(), Some(Path::new("/x/hostname")));
        assert!(
            crate::vm::share::is_bind(hostname),
            "brought into the share as a volume is"
        );
    }
}
