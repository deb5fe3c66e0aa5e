//! The guest's serial console on the host: a pipe the VMM writes and the shim drains
//! into `console.log`, bounded. The guest is untrusted, so its console is too:
//! - the log is capped: at [`MAX_FILE`] bytes `console.log` becomes `console.log.1`
//!   (replacing the previous one) and a new `console.log` starts, so a guest writing
//!   `yes > /dev/ttyS0` holds at most twice that on the host's /run;
//! - it is drained at most at [`MAX_RATE`] bytes a second: past that the pipe fills and
//!   the guest's serial port stalls, so a flood costs the guest, not the shim;
//! - every text taken from it for a person (error messages, logs, the operator CLI)
//!   goes through [`printable`], so the guest cannot drive the operator's terminal.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};

pub const FILE: &str = "console.log";
pub const ROTATED: &str = "console.log.1";
pub const MAX_FILE: u64 = 1 << 20;
pub const MAX_RATE: usize = 1 << 20;

/// The task draining a console pipe; [`take`](Self::take) stops it and hands the
/// pipe's read end back (a warm-pool VM changing hands).
pub struct ConsoleLogger {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Option<OwnedFd>>,
    logged: tokio::sync::watch::Receiver<u64>,
}

impl ConsoleLogger {
    /// Bytes logged so far, changing as soon as they are in `console.log`: a boot
    /// waiting for a console line wakes on it instead of polling the file.
    pub fn logged(&self) -> tokio::sync::watch::Receiver<u64> {
        self.logged.clone()
    }

    /// Stop draining; the read end, unless the VMM closed the pipe already.
    pub async fn take(mut self) -> Option<OwnedFd> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.ok().flatten()
    }
}

/// Drain the console pipe's read end into `dir`'s console log until the VMM closes it
/// (appending, for a pipe taken over from another logger).
pub fn spawn_logger(dir: &Path, read_end: OwnedFd) -> Result<ConsoleLogger> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)
        .map_err(Error::io("console pipe"))?;
    let mut log = ConsoleLog::open(dir)?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (logged_tx, logged) = tokio::sync::watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut window = (Instant::now(), 0usize);
        loop {
            let n = tokio::select! {
                _ = &mut stopped => return rx.into_nonblocking_fd().ok(),
                r = rx.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => n,
                },
            };
            log.write(&buf[..n]);
            logged_tx.send_modify(|total| *total += n as u64);
            window.1 += n;
            if window.1 >= MAX_RATE {
                let left = Duration::from_secs(1).saturating_sub(window.0.elapsed());
                tokio::time::sleep(left).await;
                window = (Instant::now(), 0);
            } else if window.0.elapsed() >= Duration::from_secs(1) {
                window = (Instant::now(), 0);
            }
        }
    });
    Ok(ConsoleLogger {
        stop: Some(stop),
        task,
        logged,
    })
}

/// `console.log` with its one rotated predecessor.
struct ConsoleLog {
    dir: PathBuf,
    file: std::fs::File,
    written: u64,
}

impl ConsoleLog {
    fn open(dir: &Path) -> Result<ConsoleLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(FILE))
            .map_err(Error::io("console log"))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ConsoleLog {
            dir: dir.to_path_buf(),
            file,
            written,
        })
    }

    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.written >= MAX_FILE {
                let _ = std::fs::rename(self.dir.join(FILE), self.dir.join(ROTATED));
                match std::fs::File::create(self.dir.join(FILE)) {
                    Ok(f) => self.file = f,
                    Err(_) => return,
                }
                self.written = 0;
            }
            let room = (MAX_FILE - self.written) as usize;
            let (now, later) = bytes.split_at(bytes.len().min(room));
            if self.file.write_all(now).is_err() {
                return;
            }
            self.written += now.len() as u64;
            bytes = later;
        }
    }
}

/// A console line as a person may see it: control characters (but tabs) and the C1
/// range shown as `\xNN`, so escape sequences from the guest do nothing on a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\t' && c != '\n') || c == '\u{7f}' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The whole console log of `dir`, oldest first (the rotated part, then the current).
pub fn read_all(dir: &Path) -> Vec<u8> {
    let mut all = std::fs::read(dir.join(ROTATED)).unwrap_or_default();
    all.extend(std::fs::read(dir.join(FILE)).unwrap_or_default());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_capped_at_two_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = ConsoleLog::open(tmp.path()).unwrap();
        let chunk = vec![b'y'; 300 * 1024];
        for _ in 0..20 {
            log.write(&chunk);
        }
        log.write(b"last\n");
        let size = |f| std::fs::metadata(tmp.path().join(f)).unwrap().len();
        assert_eq!(size(ROTATED), MAX_FILE);
        assert!(size(FILE) <= MAX_FILE);
        assert!(read_all(tmp.path()).ends_with(b"last\n"));
    }

    #[tokio::test]
    async fn a_waiter_wakes_once_the_output_is_in_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let logger = spawn_logger(tmp.path(), r).unwrap();
        let mut logged = logger.logged();
        let mut w = std::fs::File::from(w);
        w.write_all(b"msg=\"serving\"\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), logged.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(*logged.borrow_and_update(), 14);
        assert_eq!(read_all(tmp.path()), b"msg=\"serving\"\n");
        // The VMM gone: the drain ends, and a waiter learns it instead of waiting on.
        drop(w);
        let ended = tokio::time::timeout(Duration::from_secs(5), logged.changed()).await;
        assert!(ended.expect("told").is_err());
        assert!(logger.take().await.is_none());
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(
            printable("ok\t\x1b[2J\x07\u{9b}31m\r\x7f"),
            "ok\t\\x1b[2J\\x07\\x9b31m\\x0d\\x7f"
        );
        assert_eq!(printable("a\nb"), "a\nb");
    }
}
