//! A container and its processes: state, exit publication gate, stdio.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::linux::ContainerDirs;
use crate::stdio::{ChildIo, ProcessIo, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    pub code: u32,
    pub at: SystemTime,
}

/// A process's state as containerd reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What containerd's State call answers for one process.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub id: String,
    pub exec_id: String,
    pub bundle: PathBuf,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<ExitInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcState {
    Created,
    Running,
    Stopped(ExitInfo),
}

pub(crate) struct Process {
    pub(crate) exec_id: String,
    pub(crate) stdio: StdioPaths,
    pub(crate) io: ProcessIo,
    /// An exec's side of its stdio, handed to the process at Start.
    pub(crate) child: Mutex<Option<ChildIo>>,
    pub(crate) pid: Mutex<u32>,
    pub(crate) state: Mutex<ProcState>,
    pub(crate) exited: watch::Sender<Option<ExitInfo>>,
    /// Opened by Start (or Kill/Delete of a process never started): the exit may be published.
    pub(crate) gate: watch::Sender<bool>,
    /// An exec lent CAP_SYS_ADMIN to load its seccomp filters (container backend).
    pub(crate) lent_sys_admin: std::sync::atomic::AtomicBool,
}

impl Process {
    pub(crate) fn new(exec_id: &str, stdio: StdioPaths, io: ProcessIo, pid: u32) -> Arc<Process> {
        Arc::new(Process {
            exec_id: exec_id.into(),
            stdio,
            io,
            child: Mutex::new(None),
            pid: Mutex::new(pid),
            state: Mutex::new(ProcState::Created),
            exited: watch::channel(None).0,
            gate: watch::channel(false).0,
            lent_sys_admin: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        *self.pid.lock().expect("pid lock")
    }

    pub(crate) fn state(&self) -> ProcState {
        *self.state.lock().expect("state lock")
    }

    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub(crate) async fn wait_exit(&self) -> ExitInfo {
        let mut rx = self.exited.subscribe();
        let got = rx.wait_for(|e| e.is_some()).await;
        got.map(|e| e.expect("checked")).unwrap_or(ExitInfo {
            pid: self.pid(),
            code: 255,
            at: SystemTime::now(),
        })
    }
}

pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) dirs: ContainerDirs,
    pub(crate) mounted_rootfs: Option<PathBuf>,
    pub(crate) init: Arc<Process>,
    pub(crate) execs: Mutex<HashMap<String, Arc<Process>>>,
    pub(crate) cgroup_path: PathBuf,
    pub(crate) systemd: bool,
    pub(crate) own_pid_ns: bool,
    pub(crate) paused: Mutex<bool>,
    /// What an exec is held to (capabilities, no-new-privileges, seccomp).
    pub(crate) exec_policy: crate::linux::hardening::ExecPolicy,
    /// The pod VM the container runs in (VM backend); None for the container backend.
    pub(crate) vm: Option<Arc<crate::vm::Sandbox>>,
}

impl Container {
    pub(crate) fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }
}
