//! The seam between the runtime's state machine (`runtime.rs`) and the place a pod's
//! containers run.
//!
//! A pod picks its backend once, at its first Create ([`for_pod`]), and keeps it until
//! its last container is deleted. The runtime owns the registry of containers and
//! processes, the state checks and the events; a backend does the work of each verb
//! and returns values. It never publishes an event or touches the registry: exits come
//! back as the receivers it returns, OOM kills through the [`OomSink`] it was built
//! with. Adding a backend is one module implementing [`Backend`] and one line in
//! [`for_pod`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::Result;
use crate::exits::Exits;
use crate::linux::hardening::{ExecPolicy, Kernel};
use crate::linux::stats::{CgroupVersion, Metrics};
use crate::linux::{ContainerDirs, LinuxBackend};
use crate::process::{Container, Process};
use crate::runtime::CreateRequest;
use crate::stdio::{ChildIo, ProcessIo, StdioPaths};

/// Where a backend reports an OOM kill in one of its containers (by container id).
pub(crate) type OomSink = Arc<dyn Fn(String) + Send + Sync>;

/// What Create hands a backend. The rootfs is already mounted; the container's state
/// dir exists (0700).
pub(crate) struct NewContainer<'a> {
    pub req: &'a CreateRequest,
    pub config: &'a Config,
    pub spec: &'a mut Spec,
    pub dirs: &'a ContainerDirs,
    /// The init pids of the pod's containers created before this one.
    #[cfg_attr(not(feature = "vm"), allow(dead_code))]
    pub pod_pids: Vec<u32>,
}

/// A container the backend created; its init waits for Start.
pub(crate) struct Created {
    pub pid: u32,
    pub io: ProcessIo,
    /// The init's exit code, once it exits.
    pub exit: oneshot::Receiver<i32>,
    pub exec_policy: ExecPolicy,
    /// The container has a PID namespace of its own (its other processes die with the
    /// init).
    pub own_pid_ns: bool,
    /// The host cgroup the container's processes are in (container backend).
    pub cgroup: Option<HostCgroup>,
}

/// A container's cgroup on the host.
#[derive(Debug, Clone)]
pub(crate) struct HostCgroup {
    pub path: PathBuf,
    pub systemd: bool,
}

/// An exec the backend started.
pub(crate) struct Started {
    pub pid: u32,
    pub exit: oneshot::Receiver<i32>,
}

/// The verbs a backend does for the runtime. Each acts on one container of the pod
/// (`c`), or on one of its processes (`p`); the runtime has checked the state first.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// For logs: "container", "vm".
    fn name(&self) -> &'static str;

    /// Create a container whose init waits for [`start`](Self::start). On failure the
    /// backend undoes its own part; the runtime unmounts the rootfs and removes the
    /// state dir.
    async fn create(&self, new: NewContainer<'_>) -> Result<Created>;

    /// Let the init run.
    async fn start(&self, c: &Container) -> Result<()>;

    /// Prepare an exec (checked against the container's policy already): its host-side
    /// stdio, and what [`start_exec`](Self::start_exec) hands the process.
    async fn exec(
        &self,
        c: &Container,
        exec_id: &str,
        process: &OciProcess,
        stdio: &StdioPaths,
    ) -> Result<(ProcessIo, Option<ChildIo>)>;

    /// Run a prepared exec. On failure the backend forgets it.
    async fn start_exec(&self, c: &Container, p: &Process) -> Result<Started>;

    /// Signal a process; `all` with the init: every process of the container.
    async fn signal(&self, c: &Container, p: &Process, signal: u32, all: bool) -> Result<()>;

    /// Forget an exec that is done or never started.
    async fn delete_exec(&self, c: &Container, exec_id: &str);

    /// Remove the container: its processes die with it, its resources in the backend
    /// go. Deleting a container that is already gone succeeds.
    async fn delete(&self, c: &Container) -> Result<()>;

    /// The container's processes: (pid, exec id if the pid is an exec's).
    async fn pids(&self, c: &Container) -> Result<Vec<(u32, Option<String>)>>;

    async fn set_paused(&self, c: &Container, paused: bool) -> Result<()>;

    async fn stats(&self, c: &Container) -> Result<(CgroupVersion, Metrics)>;

    async fn update(&self, c: &Container, resources: &LinuxResources) -> Result<()>;

    /// A process's terminal size.
    async fn resize(&self, c: &Container, p: &Process, width: u32, height: u32) -> Result<()>;

    /// The pod's last container is gone: release what the pod held (the VM).
    async fn release(&self) -> Result<()>;

    /// A process outlived SIGKILL by the grace period, or the backend could not deliver
    /// it: stop the pod's processes by force, without anybody's cooperation (the VM
    /// backend kills the VM, and every process of the pod exits). False when the
    /// backend has nothing stronger than SIGKILL (the host kernel delivers it).
    async fn force_stop(&self, _why: &str) -> bool {
        false
    }
}

/// What every backend is built from.
#[derive(Clone)]
pub(crate) struct Host {
    pub namespace: String,
    pub exits: Exits,
    /// libcontainer, through helper processes.
    pub helpers: Arc<LinuxBackend>,
    /// Whose namespaces a container without its own shares.
    pub kernel: Kernel,
    pub oom: OomSink,
}

impl Host {
    /// `seal_exe`: libcontainer's helpers run from a sealed copy of the binary (see
    /// [`LinuxBackend::new`]).
    pub(crate) fn new(
        namespace: &str,
        exits: Exits,
        seal_exe: bool,
        kernel: Kernel,
        oom: OomSink,
    ) -> Host {
        Host {
            namespace: namespace.into(),
            helpers: Arc::new(LinuxBackend::new(
                exits.clone(),
                seal_exe,
                kernel == Kernel::Guest,
            )),
            exits,
            kernel,
            oom,
        }
    }
}

/// The backend for a pod whose first container selected `which`.
pub(crate) fn for_pod(which: crate::select::Backend, host: &Host) -> Result<Arc<dyn Backend>> {
    match which {
        crate::select::Backend::Container => Ok(Arc::new(
            crate::linux::backend::ContainerBackend::new(host.clone()),
        )),
        #[cfg(feature = "vm")]
        crate::select::Backend::Vm { .. } => Ok(Arc::new(crate::vm::pod::VmPod::new(host.clone()))),
        #[cfg(not(feature = "vm"))]
        crate::select::Backend::Vm { .. } => Err(crate::error::Error::FailedPrecondition(
            "this build of stockade has no VM backend (cargo feature `vm`)".into(),
        )),
    }
}

/// A state dir left by a shim that died: nothing in it is trusted or reused.
pub(crate) async fn scrub(host: &Host, dirs: &ContainerDirs, id: &str) -> Result<()> {
    crate::linux::backend::cleanup_from_disk(&host.helpers, dirs, id).await?;
    std::fs::remove_dir_all(&dirs.state).map_err(crate::error::Error::io(format!(
        "remove {}",
        dirs.state.display()
    )))
}

/// The shim's `delete` subcommand, from disk alone: whatever a dead shim's backends
/// left for container `id` (its VM, libcontainer state, rootfs mount, state dir).
pub(crate) async fn cleanup_from_disk(
    host: &Host,
    id: &str,
    bundle: &Path,
    config: &Config,
) -> Result<()> {
    let dirs = ContainerDirs::new(&config.runtime.state_dir, &host.namespace, id);
    #[cfg(feature = "vm")]
    crate::vm::pod::cleanup_from_disk(&config.runtime.state_dir, &host.namespace, id, &dirs)
        .await?;
    crate::linux::backend::cleanup_from_disk(&host.helpers, &dirs, id).await?;
    crate::mounts::unmount_all(&bundle.join("rootfs"))?;
    if dirs.state.exists() {
        std::fs::remove_dir_all(&dirs.state).map_err(crate::error::Error::io(format!(
            "remove {}",
            dirs.state.display()
        )))?;
    }
    Ok(())
}
