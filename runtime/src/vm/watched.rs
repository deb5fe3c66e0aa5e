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
    child: Child,
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
        // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd, which owns it until drop;
        // nothing else closes or reuses the descriptor while it is registered.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| Error::io("watch pidfd")(e.into()))?;
        Ok(Watched { name, child, pidfd })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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
            let _ = self.child.try_wait();
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

    /// SIGKILL and wait for the exit.
    pub async fn kill(&mut self) {
        if !self.has_exited() {
            self.signal(libc::SIGKILL);
        }
        self.exited_within(Duration::from_secs(5)).await;
    }
}
