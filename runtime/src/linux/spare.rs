//! A libcontainer helper started ahead of its request, inside a guest.
//!
//! Every create and exec runs one helper process ([`super::helper`]). In a VM guest,
//! under TCG especially, forking the multithreaded agent and executing its binary is a
//! visible part of a container's create. The guest's runtime therefore keeps one helper
//! started and waiting: `<binary> __stockade-linux-helper --spare` blocks reading its
//! socket ([`SPARE_FD`]) until the runtime sends it the request's and the response's
//! paths with the container's stdio (`SCM_RIGHTS`), then works as a helper started for
//! that request would. The runtime starts the next one a little later (`SPARE_AFTER`).
//!
//! Only the guest agent keeps a spare: its binary is on the guest's read-only initramfs
//! (no sealed copy is needed), and the guest holds one pod. A host shim never does.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::error::{Error, Result};
use crate::linux::helper::{HELPER_ARG, STDIO_FD, place_fds};

/// The word after [`HELPER_ARG`] that makes a helper wait for its request.
pub const SPARE_ARG: &str = "--spare";
/// The spare's end of its socket.
const SPARE_FD: RawFd = 6;

/// A helper process waiting for one request.
pub struct Spare {
    pid: i32,
    sock: OwnedFd,
}

impl Spare {
    /// Start one from `exe`.
    pub fn spawn(exe: &Path) -> Result<Spare> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Backend(format!("spare helper socket: {e}")))?;
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.arg(HELPER_ARG)
            .arg(SPARE_ARG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: place_fds only calls fcntl, dup2 and close (async-signal-safe), on an
        // fd open until spawn returns.
        unsafe {
            cmd.pre_exec(move || place_fds(&[(raw, SPARE_FD)], false));
        }
        let child = cmd.spawn().map_err(Error::io("start a spare helper"))?;
        drop(theirs);
        Ok(Spare {
            pid: child.id() as i32,
            sock: ours,
        })
    }

    /// Give it its request (the files [`super::helper::run`] made) and the container's
    /// stdio; its pid, to wait for. An error means it is gone: start a helper instead.
    pub fn hand(self, req: &Path, resp: &Path, stdio: &[Option<OwnedFd>; 3]) -> Result<i32> {
        let mask: String = stdio
            .iter()
            .map(|f| if f.is_some() { '1' } else { '0' })
            .collect();
        let msg = format!("{}\0{}\0{mask}", req.display(), resp.display());
        let fds: Vec<RawFd> = stdio.iter().flatten().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(msg.as_bytes())],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| Error::Backend(format!("hand the spare helper its request: {e}")))?;
        Ok(self.pid)
    }
}

/// The spare's side (`HELPER_ARG --spare`): wait for the request, put the stdio where a
/// helper expects it, and run it as [`super::helper::main`] would. Returns the exit code.
pub fn main() -> i32 {
    // While nothing is asked of it, at the lowest priority (a VM still booting its pod
    // comes first): what its request will run first (its own pages). Then back to the
    // priority it was started with.
    // SAFETY: getpriority and setpriority on this process only.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    // SAFETY: as above.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    crate::linux::guest::warm_up_parsing();
    // SAFETY: as above.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    match receive() {
        Ok(Some((req, resp))) => super::helper::main(&[req, resp]),
        // The runtime went away without a request for it.
        Ok(None) => 0,
        Err(e) => {
            eprintln!("stockade spare helper: {e}");
            2
        }
    }
}

fn receive() -> std::result::Result<Option<(String, String)>, String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            SPARE_FD,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("read the request: {e}"))?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| format!("control message: {e}"))? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: closing our own socket fd, used no more.
    unsafe { libc::close(SPARE_FD) };
    if len == 0 {
        return Ok(None);
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|e| e.to_string())?;
    let mut parts = text.split('\0');
    let (Some(req), Some(resp), Some(mask)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request {text:?}"));
    };
    let present: Vec<bool> = mask.chars().map(|c| c == '1').collect();
    if present.len() != 3 || present.iter().filter(|p| **p).count() != fds.len() {
        return Err(format!("{} fds for stdio mask {mask}", fds.len()));
    }
    // The received fds may sit anywhere, 3 to 5 included.
    let mut received = fds.into_iter();
    let mut moves = [(-1, -1); 3];
    for (i, p) in present.iter().enumerate() {
        if *p {
            moves[i] = (
                received.next().expect("counted above"),
                STDIO_FD + i as RawFd,
            );
        }
    }
    place_fds(&moves, true).map_err(|e| format!("stdio: {e}"))?;
    Ok(Some((req.to_string(), resp.to_string())))
}
