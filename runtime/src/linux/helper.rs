//! libcontainer runs in a short-lived helper process, never in the multithreaded shim.
//!
//! libcontainer forks, changes the cwd and waits for hook processes; none of that is
//! safe beside tokio's threads and the shim's `waitpid(-1)` reaper. The shim runs
//! `<sealed copy of itself> __stockade-linux-helper <request json> <response file>`;
//! the helper does one libcontainer call and writes a [`Response`]. The container's
//! stdio arrive as fds 3, 4 and 5.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::linux::confine::Confined;
use crate::linux::sealed::SealedExe;
use crate::linux::seccomp::Filters;

pub const HELPER_ARG: &str = "__stockade-linux-helper";

/// The seccomp filters a process loads before its program runs (see
/// [`crate::linux::confine`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    /// A [`Filters`] file; `None` runs the process unfiltered.
    pub filters: Option<PathBuf>,
    /// CAP_SYS_ADMIN was lent in the process's permitted set for the load.
    pub drop_sys_admin: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Create {
        id: String,
        bundle: PathBuf,
        root: PathBuf,
        systemd: bool,
        console_socket: Option<PathBuf>,
        stdio: [bool; 3],
        confinement: Confinement,
    },
    Start {
        id: String,
        root: PathBuf,
    },
    Exec {
        id: String,
        root: PathBuf,
        process: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: [bool; 3],
        confinement: Confinement,
    },
    Kill {
        id: String,
        root: PathBuf,
        signal: i32,
        all: bool,
    },
    Delete {
        id: String,
        root: PathBuf,
        force: bool,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub pid: Option<i32>,
    pub error: Option<String>,
}

/// Which binary a helper runs from.
pub enum HelperExe {
    /// A sealed memfd copy: for calls that run code inside the container.
    Sealed(SealedExe),
    /// The shim's own binary: for calls that act from the host side only.
    Host,
}

impl HelperExe {
    fn path(&self) -> PathBuf {
        match self {
            HelperExe::Sealed(s) => s.path(),
            HelperExe::Host => PathBuf::from("/proc/self/exe"),
        }
    }
}

/// Run one request in a helper process (shim side). A `spare` helper, started ahead (see `spare.rs`), takes the request if it is still
/// there; otherwise one is started for it.
pub async fn run(
    exe: &HelperExe,
    exits: &Exits,
    scratch: &Path,
    req: &Request,
    stdio: [Option<OwnedFd>; 3],
    spare: Option<crate::linux::spare::Spare>,
) -> Result<Response> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "helper-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let resp_path = scratch.join(format!("{name}.json"));
    // The request (a spec or a process, environment included) goes through a file only
    // root can read, never the command line every local user can.
    let req_path = scratch.join(format!("{name}.req.json"));
    let json = serde_json::to_vec(req).map_err(|e| Error::Backend(e.to_string()))?;
    crate::private::write_new(&req_path, &json).map_err(Error::io("write the helper request"))?;
    let handed = spare.and_then(|s| {
        s.hand(&req_path, &resp_path, &stdio)
            .inspect_err(|e| log::debug!(error:% = e; "spare helper gone: starting one"))
            .ok()
    });
    let pid = match handed {
        Some(pid) => pid,
        None => spawn(exe, &req_path, &resp_path, &stdio)?,
    };
    // Our copies of the container's stdio must close, or readers never see EOF.
    drop(stdio);
    let code = exits.wait(pid).await;
    let text = std::fs::read_to_string(&resp_path).unwrap_or_default();
    let _ = std::fs::remove_file(&resp_path);
    let _ = std::fs::remove_file(&req_path);
    let _ = std::fs::remove_file(scratch.join(format!("{name}.json.trace")));
    let resp: Response = serde_json::from_str(&text).unwrap_or_else(|_| Response {
        pid: None,
        error: Some(format!(
            "libcontainer helper exited with status {code} and no answer"
        )),
    });
    if let Some(err) = resp.error {
        return Err(Error::Backend(err));
    }
    Ok(resp)
}

/// Where a helper finds the container's stdio: this fd and the two after it.
pub(crate) const STDIO_FD: RawFd = 3;

/// Put each fd `from` at `to` (pairs whose `from` is negative are skipped), the copies
/// not close-on-exec, whatever the numbers: a `from` may already be some pair's `to`,
/// its own included (where `dup2` alone would keep close-on-exec or clobber another).
/// With `close_sources`, the `from` fds are closed. Async-signal-safe: it may run
/// between fork and exec.
pub(crate) fn place_fds(moves: &[(RawFd, RawFd)], close_sources: bool) -> std::io::Result<()> {
    const MAX: usize = 4;
    if moves.len() > MAX {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // First out of the way of every target, then to the targets.
    let mut high = [-1; MAX];
    for (i, &(from, _)) in moves.iter().enumerate() {
        if from >= 0 {
            // SAFETY: fcntl on an fd the caller owns.
            high[i] = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10) };
            if high[i] < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    if close_sources {
        for &(from, _) in moves.iter().filter(|(from, _)| *from >= 0) {
            // SAFETY: closing an fd the caller gave up; its copy is in `high`.
            unsafe { libc::close(from) };
        }
    }
    for (i, &(_, to)) in moves.iter().enumerate() {
        if high[i] < 0 {
            continue;
        }
        // SAFETY: dup2 and close on fds this call made.
        unsafe {
            if libc::dup2(high[i], to) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(high[i]);
        }
    }
    Ok(())
}

/// Start a helper for the request in `req_path`, the container's stdio at fds 3 to 5.
fn spawn(
    exe: &HelperExe,
    req_path: &Path,
    resp_path: &Path,
    stdio: &[Option<OwnedFd>; 3],
) -> Result<i32> {
    let raw: [i32; 3] = [0, 1, 2].map(|i| stdio[i].as_ref().map_or(-1, |f| f.as_raw_fd()));
    let mut cmd = Command::new(exe.path());
    cmd.arg(HELPER_ARG)
        .arg(req_path)
        .arg(resp_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let moves = [0, 1, 2].map(|i| (raw[i], STDIO_FD + i as i32));
    // SAFETY: place_fds only calls fcntl, dup2 and close (async-signal-safe), on fds
    // that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || place_fds(&moves, false));
    }
    match cmd.spawn() {
        Ok(c) => Ok(c.id() as i32),
        Err(e) => {
            let _ = std::fs::remove_file(req_path);
            Err(Error::io("spawn libcontainer helper")(e))
        }
    }
}

/// The helper's own `main` (helper side). Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    if args.first().map(String::as_str) == Some(crate::linux::spare::SPARE_ARG) {
        return crate::linux::spare::main();
    }
    let (Some(req_path), Some(resp_path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: {HELPER_ARG} <request-file> <response-file>");
        return 2;
    };
    let json = std::fs::read(req_path).unwrap_or_default();
    let trace = PathBuf::from(format!("{resp_path}.trace"));
    crate::linux::trace::catch(&trace);
    let resp = match serde_json::from_slice::<Request>(&json) {
        Ok(req) => match handle(req) {
            Ok(pid) => Response { pid, error: None },
            Err(e) => Response {
                pid: None,
                error: Some(crate::linux::trace::explain(e, &trace)),
            },
        },
        Err(e) => Response {
            pid: None,
            error: Some(format!("bad helper request: {e}")),
        },
    };
    let _ = std::fs::remove_file(&trace);
    let ok = resp.error.is_none();
    let text = serde_json::to_string(&resp).unwrap_or_default();
    if std::fs::write(resp_path, text).is_err() {
        return 3;
    }
    if ok { 0 } else { 1 }
}

fn builder(
    id: &str,
    root: &Path,
    console_socket: Option<PathBuf>,
    stdio: [bool; 3],
    confinement: &Confinement,
) -> std::result::Result<ContainerBuilder, String> {
    let tty = console_socket.is_some();
    let filters = match &confinement.filters {
        Some(path) => Filters::load(path).map_err(|e| e.to_string())?,
        None => Filters::default(),
    };
    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| e.to_string())?
        .with_console_socket(console_socket)
        .with_executor(Confined::new(filters, confinement.drop_sys_admin));
    if !tty {
        let fds = stdio_fds(stdio)?;
        let [i, o, e] = fds;
        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    Ok(b)
}

/// fds 3/4/5 when the shim passed them, /dev/null otherwise: never the helper's own.
fn stdio_fds(present: [bool; 3]) -> std::result::Result<[OwnedFd; 3], String> {
    use std::os::fd::FromRawFd;
    let mut out = Vec::with_capacity(3);
    for (i, p) in present.iter().enumerate() {
        if *p {
            // SAFETY: the shim put an open fd at STDIO_FD + i before exec; taken over once.
            out.push(unsafe { OwnedFd::from_raw_fd(STDIO_FD + i as i32) });
        } else {
            let f = std::fs::OpenOptions::new()
                .read(i == 0)
                .write(i != 0)
                .open("/dev/null")
                .map_err(|e| format!("open /dev/null: {e}"))?;
            out.push(f.into());
        }
    }
    let [a, b, c]: [OwnedFd; 3] = out.try_into().map_err(|_| "stdio".to_string())?;
    Ok([a, b, c])
}

fn handle(req: Request) -> std::result::Result<Option<i32>, String> {
    match req {
        Request::Create {
            id,
            bundle,
            root,
            systemd,
            console_socket,
            stdio,
            confinement,
        } => {
            let container = builder(&id, &root, console_socket, stdio, &confinement)?
                .validate_id()
                .map_err(|e| e.to_string())?
                .as_init(&bundle)
                .with_systemd(systemd)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create container {id}: {e}"))?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        Request::Start { id, root } => {
            let mut c = Container::load(root.join(&id)).map_err(|e| e.to_string())?;
            c.start()
                .map_err(|e| format!("start container {id}: {e}"))?;
            Ok(None)
        }
        Request::Exec {
            id,
            root,
            process,
            console_socket,
            stdio,
            confinement,
        } => {
            let pid = builder(&id, &root, console_socket, stdio, &confinement)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(|e| format!("exec in container {id}: {e}"))?;
            Ok(Some(pid.as_raw()))
        }
        Request::Kill {
            id,
            root,
            signal,
            all,
        } => {
            let mut c = Container::load(root.join(&id)).map_err(|e| e.to_string())?;
            let sig = Signal::try_from(signal).map_err(|e| e.to_string())?;
            c.kill(sig, all)
                .map_err(|e| format!("kill container {id}: {e}"))?;
            Ok(None)
        }
        Request::Delete { id, root, force } => {
            let dir = root.join(&id);
            if !dir.exists() {
                return Ok(None);
            }
            let mut c = Container::load(dir).map_err(|e| e.to_string())?;
            c.delete(force)
                .map_err(|e| format!("delete container {id}: {e}"))?;
            Ok(None)
        }
    }
}

/// libcontainer's start without a helper process: the container's init waits on its
/// notify socket for "start container", then the state says running. False (nothing
/// done) for a container with poststart hooks, which fork and wait: a helper runs those.
/// The socket is reached through its dir's fd, as its path may be longer than a Unix
/// socket's (libcontainer changes the process's cwd instead, which a threaded process
/// cannot).
pub fn start_in_process(root: &Path) -> std::result::Result<bool, String> {
    use libcontainer::container::ContainerStatus;
    use libcontainer::notify_socket::NOTIFY_FILE;
    use std::io::Write;
    let mut c = Container::load(root.to_path_buf()).map_err(|e| e.to_string())?;
    c.refresh_status().map_err(|e| e.to_string())?;
    if !c.can_start() {
        return Err(format!("cannot start a container that is {:?}", c.status()));
    }
    let config = libcontainer::config::YoukiConfig::load(root).map_err(|e| e.to_string())?;
    let hooks = config
        .hooks
        .as_ref()
        .and_then(|h| h.poststart().as_ref())
        .is_some_and(|p| !p.is_empty());
    if hooks {
        return Ok(false);
    }
    let dir = std::fs::File::open(root).map_err(|e| format!("open {}: {e}", root.display()))?;
    let socket = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dir.as_raw_fd());
    // Saved first: once told, the init execs the workload, which then competes with
    // anything left to do here (for a guest's only vCPU, say).
    c.set_status(ContainerStatus::Running)
        .save()
        .map_err(|e| e.to_string())?;
    let notified = std::os::unix::net::UnixStream::connect(&socket)
        .and_then(|mut s| s.write_all(b"start container"));
    if let Err(e) = notified {
        let _ = c.set_status(ContainerStatus::Created).save();
        return Err(format!("notify the container's init: {e}"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn inode(fd: RawFd) -> u64 {
        // SAFETY: fstat into a zeroed stat buffer of our own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            st.st_ino
        }
    }

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on an open fd.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    /// Two fds swapped, and one put onto itself: each lands where asked, none
    /// close-on-exec, though they were.
    #[test]
    fn place_fds_swaps_and_clears_close_on_exec() {
        let (a, _wa) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (b, _wb) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (c, _wc) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (a, b, c) = (a.into_raw_fd(), b.into_raw_fd(), c.into_raw_fd());
        let (ia, ib, ic) = (inode(a), inode(b), inode(c));
        assert!(cloexec(a) && cloexec(c));
        place_fds(&[(a, b), (b, a), (c, c), (-1, 99)], false).unwrap();
        assert_eq!((inode(b), inode(a), inode(c)), (ia, ib, ic));
        assert!(!cloexec(a) && !cloexec(b) && !cloexec(c));
        // SAFETY: closing fds this test made.
        unsafe {
            assert_eq!(
                libc::fcntl(99, libc::F_GETFD),
                -1,
                "a skipped pair made an fd"
            );
            libc::close(a);
            libc::close(b);
            libc::close(c);
        }
    }
}
