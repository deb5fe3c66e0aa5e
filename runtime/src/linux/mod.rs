//! The hardened container backend: youki's libcontainer, driven through helper processes.

pub mod backend;
pub mod bpf;
pub mod confine;
pub mod guest;
pub mod hardening;
pub mod helper;
pub mod oom;
pub mod pause;
pub mod sealed;
pub mod seccomp;
pub mod spare;
pub mod stats;
pub mod trace;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::exits::Exits;
pub use helper::Confinement;
use helper::{HelperExe, Request};
use sealed::SealedExe;
use spare::Spare;

/// Where one container's backend state lives: `<state_dir>/<namespace>/<id>/`.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub state: PathBuf,
    /// libcontainer's root (it keeps `<lc_root>/<id>/state.json`).
    pub lc_root: PathBuf,
    /// The bundle libcontainer reads: the hardened config.json.
    pub bundle: PathBuf,
    /// The seccomp filters every process of the container loads.
    pub filters: PathBuf,
}

impl ContainerDirs {
    pub fn new(state_dir: &Path, namespace: &str, id: &str) -> ContainerDirs {
        let state = state_dir.join(namespace).join(id);
        ContainerDirs {
            lc_root: state.join("lc"),
            bundle: state.join("bundle"),
            filters: state.join("seccomp.json"),
            state,
        }
    }
}

pub struct LinuxBackend {
    exits: Exits,
    seal_exe: bool,
    /// The helper started ahead for the next create or exec (`spare.rs`); None where
    /// none is kept.
    spare: Option<Arc<Mutex<Option<Spare>>>>,
}

/// How long after a spare helper is used the next one starts: its start-up would
/// otherwise compete for the guest's CPU with the container's start that usually
/// follows a create.
const SPARE_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

impl LinuxBackend {
    /// `seal_exe`: run container-entering helpers from a sealed memfd copy. Only a
    /// binary on a read-only filesystem (the guest agent's) may skip it. `keep_spare`:
    /// keep one helper started ahead of its request (the guest agent; never with
    /// `seal_exe`).
    pub fn new(exits: Exits, seal_exe: bool, keep_spare: bool) -> LinuxBackend {
        let spare = (keep_spare && !seal_exe).then(|| {
            // Started beside the caller (a booting guest's agent answers first); a
            // create that comes before it is ready starts a helper as usual.
            let slot = Arc::new(Mutex::new(None));
            let first = slot.clone();
            std::thread::spawn(
                move || match Spare::spawn(&PathBuf::from("/proc/self/exe")) {
                    Ok(s) => *first.lock().expect("spare lock") = Some(s),
                    Err(e) => log::debug!(error:% = e; "no spare helper"),
                },
            );
            slot
        });
        LinuxBackend {
            exits,
            seal_exe,
            spare,
        }
    }

    /// The spare helper for a container-entering call, if one is waiting; the next one
    /// starts [`SPARE_AFTER`] later. (An empty slot already has its refill on the way.)
    fn take_spare(&self) -> Option<Spare> {
        let slot = self.spare.as_ref()?;
        let taken = slot.lock().expect("spare lock").take()?;
        let refill = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_AFTER).await;
            let started =
                tokio::task::spawn_blocking(|| Spare::spawn(&PathBuf::from("/proc/self/exe")))
                    .await;
            if let Ok(Ok(s)) = started {
                let mut slot = refill.lock().expect("spare lock");
                *slot = Some(s);
            }
        });
        Some(taken)
    }

    /// The binary the runtime runs as (the guest's pause process re-executes it).
    pub fn exe_path(&self) -> PathBuf {
        PathBuf::from("/proc/self/exe")
    }

    /// Create and Exec run libcontainer's init inside the container: they run from a
    /// sealed copy, made for the call and freed when the helper exits, so a shim keeps
    /// no copy of its binary in memory. Start, Kill and Delete act from the host side only.
    async fn run(
        &self,
        dirs: &ContainerDirs,
        req: Request,
        stdio: [Option<OwnedFd>; 3],
    ) -> Result<Option<i32>> {
        let enters_container = matches!(req, Request::Create { .. } | Request::Exec { .. });
        let exe = if enters_container && self.seal_exe {
            HelperExe::Sealed(SealedExe::new()?)
        } else {
            HelperExe::Host
        };
        let spare = if enters_container {
            self.take_spare()
        } else {
            None
        };
        Ok(
            helper::run(&exe, &self.exits, &dirs.state, &req, stdio, spare)
                .await?
                .pid,
        )
    }

    pub async fn create(
        &self,
        dirs: &ContainerDirs,
        id: &str,
        systemd: bool,
        console_socket: Option<PathBuf>,
        stdio: [Option<OwnedFd>; 3],
        confinement: Confinement,
    ) -> Result<i32> {
        let present = [0, 1, 2].map(|i| stdio[i].is_some());
        let req = Request::Create {
            id: id.into(),
            bundle: dirs.bundle.clone(),
            root: dirs.lc_root.clone(),
            systemd,
            console_socket,
            stdio: present,
            confinement,
        };
        self.run(dirs, req, stdio)
            .await?
            .ok_or_else(|| Error::Backend("libcontainer returned no init pid".into()))
    }

    /// Let a created container's init run. Done in this process (a connect and a state
    /// file) unless the container has poststart hooks, which a helper runs.
    pub async fn start(&self, dirs: &ContainerDirs, id: &str) -> Result<()> {
        let root = dirs.lc_root.join(id);
        let started = tokio::task::spawn_blocking(move || helper::start_in_process(&root))
            .await
            .map_err(|e| Error::Backend(e.to_string()))?
            .map_err(|e| Error::Backend(format!("start container {id}: {e}")))?;
        if started {
            return Ok(());
        }
        let req = Request::Start {
            id: id.into(),
            root: dirs.lc_root.clone(),
        };
        self.run(dirs, req, [None, None, None]).await.map(|_| ())
    }

    pub async fn exec(
        &self,
        dirs: &ContainerDirs,
        id: &str,
        process: &Path,
        console_socket: Option<PathBuf>,
        stdio: [Option<OwnedFd>; 3],
        confinement: Confinement,
    ) -> Result<i32> {
        let present = [0, 1, 2].map(|i| stdio[i].is_some());
        let req = Request::Exec {
            id: id.into(),
            root: dirs.lc_root.clone(),
            process: process.to_path_buf(),
            console_socket,
            stdio: present,
            confinement,
        };
        self.run(dirs, req, stdio)
            .await?
            .ok_or_else(|| Error::Backend("libcontainer returned no exec pid".into()))
    }

    pub async fn kill_all(&self, dirs: &ContainerDirs, id: &str, signal: i32) -> Result<()> {
        let req = Request::Kill {
            id: id.into(),
            root: dirs.lc_root.clone(),
            signal,
            all: true,
        };
        self.run(dirs, req, [None, None, None]).await.map(|_| ())
    }

    /// Remove libcontainer's state and the container's cgroup, killing what is left.
    pub async fn delete(&self, dirs: &ContainerDirs, id: &str) -> Result<()> {
        if !dirs.lc_root.join(id).exists() {
            return Ok(());
        }
        let req = Request::Delete {
            id: id.into(),
            root: dirs.lc_root.clone(),
            force: true,
        };
        self.run(dirs, req, [None, None, None]).await.map(|_| ())
    }

    /// Freeze or thaw; touches only the freezer cgroup, so it runs in-process.
    pub async fn set_paused(&self, dirs: &ContainerDirs, id: &str, paused: bool) -> Result<()> {
        let dir = dirs.lc_root.join(id);
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let mut c = libcontainer::container::Container::load(dir)
                .map_err(|e| Error::Backend(format!("load container {id}: {e}")))?;
            if paused { c.pause() } else { c.resume() }
                .map_err(|e| Error::FailedPrecondition(format!("container {id}: {e}")))
        })
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
    }
}
