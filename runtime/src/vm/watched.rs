//! Helper processes (qemu, the vsock backend) watched through pidfds.
//!
//! The shim's reaper may reap them before we look (it owns `waitpid(-1)`), so exits are
//! observed on a pidfd, which turns readable when the process dies whoever reaps it,
//! and signals go through `pidfd_send_signal`, which cannot hit a recycled pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

pub struct Watched {
    pub name: &'static str,
    pid: u32,
    /// Absent for a process another process spawned and handed over (the warm pool's):
    /// its parent reaps it.
    child: Option<Child>,
    pidfd: AsyncFd<OwnedFd>,
}

impl Watched {
    pub fn new(name: &'static str, child: Child) -> Result<Watched> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if fd < 0 {
            return Err(Error::io(format!("pidfd_open {name}"))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let pid = child.id();
        Ok(Watched {
            name,
            pid,
            child: Some(child),
            pidfd: register(pidfd)?,
        })
    }

    /// A process known by a pidfd another process handed over (it stays that one's
    /// child, and is reaped there).
    pub fn from_pidfd(name: &'static str, pidfd: OwnedFd) -> Result<Watched> {
        let pid = pidfd_pid(&pidfd)
            .ok_or_else(|| Error::Backend(format!("{name}: not a pidfd of a live process")))?;
        Ok(Watched {
            name,
            pid,
            child: None,
            pidfd: register(pidfd)?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A duplicate of the pidfd, to hand the process over to another process.
    pub fn pidfd(&self) -> Result<OwnedFd> {
        self.pidfd
            .get_ref()
            .try_clone()
            .map_err(Error::io("dup pidfd"))
    }

    /// Give the process up without stopping it (it was handed over): once it exits it
    /// is reaped here, as its parent must.
    pub fn release(self) {
        let Watched {
            child, mut pidfd, ..
        } = self;
        let Some(mut child) = child else { return };
        tokio::spawn(async move {
            loop {
                match pidfd.readable_mut().await {
                    Ok(mut g) => g.clear_ready(),
                    Err(_) => break,
                }
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
            }
        });
    }

    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd with a zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    /// Wait until the process has exited, at most `limit`. True if it has.
    pub async fn exited_within(&mut self, limit: Duration) -> bool {
        let done = tokio::time::timeout(limit, self.pidfd.readable()).await;
        if let Ok(Ok(mut guard)) = done {
            guard.retain_ready();
            // Reap it if nobody else did (no reaper outside the shim).
            if let Some(c) = self.child.as_mut() {
                let _ = c.try_wait();
            }
            return true;
        }
        false
    }

    /// A future that resolves when the process exits (on a duplicate of the pidfd, so
    /// it outlives borrows of `self`).
    pub fn exit_future(&self) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
        let dup = self
            .pidfd
            .get_ref()
            .try_clone()
            .map_err(Error::io("dup pidfd"))?;
        // SAFETY: the duplicate is owned by the AsyncFd alone, as in `new`.
        let fd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::io("watch pidfd")(e.into()))?;
        Ok(async move {
            if let Ok(mut g) = fd.readable().await {
                g.retain_ready();
            }
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: pidfd_send_signal on our pidfd with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// SIGKILL, without waiting.
    pub fn signal_kill(&self) {
        if !self.has_exited() {
            self.signal(libc::SIGKILL);
        }
    }

    /// SIGKILL and wait for the exit.
    pub async fn kill(&mut self) {
        self.signal_kill();
        self.exited_within(Duration::from_secs(5)).await;
    }
}

fn register(pidfd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd, which owns it until drop;
    // nothing else closes or reuses the descriptor while it is registered.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watch pidfd")(e.into()))
}

/// The pid a pidfd refers to (`Pid:` of its fdinfo; -1 once the process is gone).
fn pidfd_pid(fd: &OwnedFd) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|p| *p > 0)
        .map(|p| p as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handed_over_process_is_watched_by_its_pidfd() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let parent = Watched::new("sleep", child).unwrap();
        let mut adopted = Watched::from_pidfd("sleep", parent.pidfd().unwrap()).unwrap();
        assert_eq!(adopted.pid(), pid);
        assert!(!adopted.has_exited());
        parent.release();
        adopted.kill().await;
        assert!(adopted.has_exited());
        // Reaped by the releasing side: no zombie left.
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{pid} was not reaped");
    }
}
