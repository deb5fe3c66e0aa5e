//! Process stdio: containerd's FIFOs on one side, the container process on the other.
//!
//! Without a TTY the process gets pipes and the shim copies between them and the FIFOs,
//! so output is complete before the exit is reported and stdin can be closed on
//! `CloseIO`. With a TTY the process's PTY master arrives over a console socket and
//! the shim copies between it and the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The FIFO paths containerd gives for one process (empty = not wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's side of a process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    output: Arc<Mutex<Vec<JoinHandle<()>>>>,
    other: Mutex<Vec<JoinHandle<()>>>,
    stdin_close: Arc<Notify>,
    stdin_path: Option<PathBuf>,
    master: Arc<Mutex<Option<OwnedFd>>>,
}

/// What the container process is handed: pipe ends, or a console socket to send its PTY to.
pub struct ChildIo {
    pub fds: [Option<OwnedFd>; 3],
    pub console_socket: Option<PathBuf>,
    console: Option<UnixListener>,
}

fn os_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::from)
}

async fn open_fifo(path: PathBuf, write: bool) -> std::io::Result<File> {
    tokio::task::spawn_blocking(move || {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
    })
    .await
    .map_err(std::io::Error::other)?
}

impl ProcessIo {
    /// Build both sides. `scratch` holds the console socket for a TTY process.
    pub fn new(paths: &StdioPaths, scratch: &Path, name: &str) -> Result<(ProcessIo, ChildIo)> {
        let io = ProcessIo {
            stdin_path: (!paths.stdin.is_empty()).then(|| PathBuf::from(&paths.stdin)),
            ..Default::default()
        };
        if paths.terminal {
            let sock = scratch.join(format!("{name}.console"));
            let _ = std::fs::remove_file(&sock);
            let listener = bind_long(scratch, &format!("{name}.console"))
                .map_err(Error::io(format!("bind console socket {}", sock.display())))?;
            return Ok((
                io,
                ChildIo {
                    fds: [None, None, None],
                    console_socket: Some(sock),
                    console: Some(listener),
                },
            ));
        }
        let mut fds: [Option<OwnedFd>; 3] = [None, None, None];
        if let Some(stdin) = io.stdin_path.clone() {
            let (r, w) = os_pipe()?;
            fds[0] = Some(r);
            let close = io.stdin_close.clone();
            let task = tokio::spawn(async move {
                let Ok(fifo) = open_fifo(stdin, false).await else {
                    return;
                };
                let (Ok(src), Ok(dst)) = (
                    pipe::Receiver::from_file(fifo),
                    pipe::Sender::from_owned_fd(w),
                ) else {
                    return;
                };
                copy_until_closed(src, dst, close).await;
            });
            io.other.lock().expect("io lock").push(task);
        }
        for (i, path) in [(1, &paths.stdout), (2, &paths.stderr)] {
            if path.is_empty() {
                continue;
            }
            let (r, w) = os_pipe()?;
            fds[i] = Some(w);
            let path = PathBuf::from(path);
            let task = tokio::spawn(async move {
                let Ok(src) = pipe::Receiver::from_owned_fd(r) else {
                    return;
                };
                match open_fifo(path, true).await {
                    Ok(fifo) => match pipe::Sender::from_file(fifo) {
                        Ok(dst) => copy_all(src, dst).await,
                        Err(_) => drain(src).await,
                    },
                    Err(e) => {
                        log::warn!(error:% = e; "cannot open output fifo; discarding output");
                        drain(src).await
                    }
                }
            });
            io.output.lock().expect("io lock").push(task);
        }
        Ok((
            io,
            ChildIo {
                fds,
                console_socket: None,
                console: None,
            },
        ))
    }

    /// With a TTY: accept the PTY master the container sends and start copying.
    /// Call while (or after) the helper creates the process.
    pub fn attach_console(
        &self,
        child: &mut ChildIo,
        paths: &StdioPaths,
    ) -> Option<JoinHandle<Result<()>>> {
        let listener = child.console.take()?;
        let master_slot = self.master.clone();
        let close = self.stdin_close.clone();
        let stdin = self.stdin_path.clone();
        let stdout = (!paths.stdout.is_empty()).then(|| PathBuf::from(&paths.stdout));
        let output = self.output.clone();
        let task = tokio::spawn(async move {
            let (stream, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
                .await
                .map_err(|_| {
                    Error::Backend("timed out waiting for the container's console".into())
                })?
                .map_err(Error::io("accept console"))?;
            let stream = stream.into_std().map_err(Error::io("console stream"))?;
            stream
                .set_nonblocking(false)
                .map_err(Error::io("console stream"))?;
            let master = tokio::task::spawn_blocking(move || receive_fd(stream.as_raw_fd()))
                .await
                .map_err(|e| Error::Backend(e.to_string()))??;
            let reader = File::from(master.try_clone().map_err(Error::io("dup pty master"))?);
            let writer = File::from(master.try_clone().map_err(Error::io("dup pty master"))?);
            *master_slot.lock().expect("master lock") = Some(master);
            if let Some(stdin) = stdin {
                tokio::spawn(async move {
                    let Ok(fifo) = open_fifo(stdin, false).await else {
                        return;
                    };
                    let Ok(src) = pipe::Receiver::from_file(fifo) else {
                        return;
                    };
                    copy_until_closed(src, tokio::fs::File::from_std(writer), close).await;
                });
            }
            let out = tokio::spawn(async move {
                let mut reader = tokio::fs::File::from_std(reader);
                let dst = match stdout {
                    Some(p) => open_fifo(p, true).await.ok().map(tokio::fs::File::from_std),
                    None => None,
                };
                let mut dst = dst;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    // EIO once the last slave fd closes: that is the PTY's end of file.
                    let n = match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Some(d) = dst.as_mut()
                        && d.write_all(&buf[..n]).await.is_err()
                    {
                        dst = None;
                    }
                }
                if let Some(mut d) = dst {
                    let _ = d.flush().await;
                }
            });
            output.lock().expect("io lock").push(out);
            Ok(())
        });
        Some(task)
    }

    /// Wait until the process's output is fully copied, at most `limit`.
    pub async fn wait_output(&self, limit: Duration) {
        let handles: Vec<_> = std::mem::take(&mut *self.output.lock().expect("io lock"));
        let all = futures_join(handles);
        let _ = tokio::time::timeout(limit, all).await;
    }

    pub fn close_stdin(&self) {
        self.stdin_close.notify_one();
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let guard = self.master.lock().expect("master lock");
        let Some(master) = guard.as_ref() else {
            return Err(Error::FailedPrecondition("process has no terminal".into()));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::io("resize pty")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Stop every copier; release a stdin FIFO open that no writer ever answered.
    pub fn shutdown(&self) {
        self.stdin_close.notify_one();
        if let Some(stdin) = &self.stdin_path {
            // Opening the write side unblocks a reader stuck in open(2).
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(stdin);
        }
        for h in self.output.lock().expect("io lock").drain(..) {
            h.abort();
        }
        for h in self.other.lock().expect("io lock").drain(..) {
            h.abort();
        }
        self.master.lock().expect("master lock").take();
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

async fn copy_all(mut src: pipe::Receiver, mut dst: pipe::Sender) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dst.write_all(&buf[..n]).await.is_err() {
            // The reader went away; keep draining so the process never blocks on a full pipe.
            return drain(src).await;
        }
    }
}

async fn drain(mut src: pipe::Receiver) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = src.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

async fn copy_until_closed<W: tokio::io::AsyncWrite + Unpin>(
    mut src: pipe::Receiver,
    mut dst: W,
    close: Arc<Notify>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            biased;
            r = src.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if dst.write_all(&buf[..n]).await.is_err() { break },
            },
            _ = close.notified() => {
                // Deliver what is already buffered, then close.
                while let Ok(n) = src.try_read(&mut buf) {
                    if n == 0 || dst.write_all(&buf[..n]).await.is_err() { break }
                }
                break;
            }
        }
    }
    let _ = dst.shutdown().await;
}

/// Bind a Unix socket in `dir` even when the full path exceeds sun_path (108 bytes):
/// bind through `/proc/self/fd/<dirfd>/<name>`, which is short and names the same file.
fn bind_long(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let full = dir.join(name);
    if full.as_os_str().len() < 100 {
        return UnixListener::bind(&full);
    }
    let dirfd = File::open(dir)?;
    let short = format!("/proc/self/fd/{}/{name}", dirfd.as_raw_fd());
    UnixListener::bind(short)
}

fn receive_fd(sock: i32) -> Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([i32; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs().map_err(Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(Error::Backend(
        "console socket carried no PTY master".into(),
    ))
}
