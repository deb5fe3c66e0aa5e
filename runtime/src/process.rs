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
    /// The host cgroup its processes are in (container backend).
    pub(crate) cgroup: Option<crate::backend::HostCgroup>,
    pub(crate) own_pid_ns: bool,
    pub(crate) paused: Mutex<bool>,
    /// What an exec is held to (capabilities, no-new-privileges, seccomp).
    pub(crate) exec_policy: crate::linux::hardening::ExecPolicy,
}

/// The state checks of the verbs, in one place: each answers FailedPrecondition (or
/// NotFound, which containerd reads as "already gone") when the process is not in a
/// state the verb accepts.
impl Process {
    fn name(&self, id: &str) -> String {
        if self.exec_id.is_empty() {
            format!("container {id}")
        } else {
            format!("exec {}", self.exec_id)
        }
    }

    /// Start: only a created process.
    pub(crate) fn check_startable(&self, id: &str) -> Result<()> {
        match self.state() {
            ProcState::Created => Ok(()),
            _ => Err(Error::FailedPrecondition(format!(
                "process {id}/{} is not in the created state",
                self.exec_id
            ))),
        }
    }

    /// Kill: not a process that has exited; not an exec that was never started (a
    /// created init may be killed: it is waiting for Start).
    pub(crate) fn check_signalable(&self, id: &str) -> Result<()> {
        match self.state() {
            ProcState::Stopped(_) => Err(Error::NotFound(format!(
                "process {id}/{}: already finished",
                self.exec_id
            ))),
            ProcState::Created if !self.exec_id.is_empty() => Err(Error::FailedPrecondition(
                format!("exec {} was not started", self.exec_id),
            )),
            _ => Ok(()),
        }
    }

    /// Delete: not a running process. Returns its exit, or `None` if it never started.
    pub(crate) fn check_deletable(&self, id: &str) -> Result<Option<ExitInfo>> {
        match self.state() {
            ProcState::Running => Err(Error::FailedPrecondition(format!(
                "{} is still running",
                self.name(id)
            ))),
            ProcState::Stopped(info) => Ok(Some(info)),
            ProcState::Created => Ok(None),
        }
    }
}

impl Container {
    /// Exec, pause and resume need a running init.
    pub(crate) fn check_running(&self) -> Result<()> {
        match self.init.state() {
            ProcState::Running => Ok(()),
            _ => Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                self.id
            ))),
        }
    }

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
