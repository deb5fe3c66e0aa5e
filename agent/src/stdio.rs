//! Process stdio, guest side: one vsock stream per process stream.
//!
//! The host connects to [`STDIO_PORT`](stockade_agent_protocol::STDIO_PORT) and names
//! the stream with a header line. Each process's streams are FIFOs under
//! `/run/stockade/io/<container>/<exec or init>/`, made before the process is created;
//! the runtime copies between them and the process exactly as it does with
//! containerd's FIFOs on a host. A thread per stream copies between the FIFO and the
//! vsock stream; they are few and mostly blocked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr, accept4, bind, shutdown,
    socket,
};
use stockade_agent_protocol::{MAX_STDIO_HEADER, parse_stdio_header};
use stockade_runtime::StdioPaths;

pub const IO_DIR: &str = "/run/stockade/io";

/// Where one process's FIFOs live.
pub fn process_dir(container_id: &str, exec_id: &str) -> PathBuf {
    let name = if exec_id.is_empty() { "init" } else { exec_id };
    Path::new(IO_DIR).join(container_id).join(name)
}

/// Make the FIFOs a process asked for; the paths the runtime should use.
pub fn make_fifos(
    container_id: &str,
    exec_id: &str,
    want: [bool; 3],
    terminal: bool,
) -> std::io::Result<StdioPaths> {
    let dir = process_dir(container_id, exec_id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut paths = ["", "", ""].map(String::from);
    for (i, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        // A TTY has one output stream.
        if !want[i] || (terminal && i == 2) {
            continue;
        }
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        paths[i] = p.to_string_lossy().into_owned();
    }
    let [stdin, stdout, stderr] = paths;
    Ok(StdioPaths {
        stdin,
        stdout,
        stderr,
        terminal,
    })
}

/// Release the FIFOs of a process: unblock copiers stuck opening them, remove them.
pub fn remove_fifos(container_id: &str, exec_id: &str) {
    let dir = process_dir(container_id, exec_id);
    for name in ["stdin", "stdout", "stderr"] {
        // A non-blocking open of either side answers a peer blocked in open(2).
        let p = dir.join(name);
        let _ = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&p);
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn remove_container(container_id: &str) {
    let _ = std::fs::remove_dir_all(Path::new(IO_DIR).join(container_id));
}

/// Listen on a vsock stream port (stdio, port forwarding); a thread accepts and one
/// thread per stream runs `serve` on it.
pub fn listen(
    port: u32,
    secret: std::sync::Arc<[u8]>,
    serve: fn(OwnedFd, &[u8]),
) -> nix::Result<()> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    nix::sys::socket::listen(&fd, Backlog::new(64)?)?;
    std::thread::spawn(move || {
        loop {
            match accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(conn) => {
                    // SAFETY: accept4 returned a new fd that nothing else owns.
                    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                    let secret = secret.clone();
                    std::thread::spawn(move || serve(conn, &secret));
                }
                Err(e) => {
                    log::warn!(port, error:% = e; "vsock accept failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    });
    Ok(())
}

/// The stream's header line, read within a bounded time: whoever connected has a moment
/// to name the stream and prove who it is.
pub fn read_header(conn: &mut File) -> Option<String> {
    let limit = nix::sys::time::TimeVal::new(10, 0);
    let _ = nix::sys::socket::setsockopt(&*conn, nix::sys::socket::sockopt::ReceiveTimeout, &limit);
    let header = read_line(conn);
    let _ = nix::sys::socket::setsockopt(
        &*conn,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    );
    header
}

fn read_line(conn: &mut File) -> Option<String> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while line.len() <= MAX_STDIO_HEADER {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    None
}

pub fn serve_stream(conn: OwnedFd, secret: &[u8]) {
    let raw = conn.as_raw_fd();
    let mut conn = File::from(conn);
    let header = read_header(&mut conn);
    let Some((id, exec, stream)) = header.and_then(|h| parse_stdio_header(&h, secret)) else {
        log::warn!("stdio stream with a bad header or a wrong secret; closed");
        return;
    };
    let fifo = process_dir(&id, &exec).join(&stream);
    let input = stream == "stdin";
    // Blocks until the runtime opens the other side (it does as soon as the process
    // exists); remove_fifos releases it if the process goes away first.
    let opened = OpenOptions::new()
        .read(!input)
        .write(input)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&fifo);
    let mut fifo_file = match opened {
        Ok(f) => f,
        Err(e) => {
            log::warn!(id = id.as_str(), exec = exec.as_str(), stream = stream.as_str(), error:% = e; "no such process stream");
            return;
        }
    };
    if input {
        let _ = copy(&mut conn, &mut fifo_file);
        // Dropping the FIFO's writer is the process's end of file.
    } else {
        let _ = copy(&mut fifo_file, &mut conn);
        let _ = shutdown(raw, Shutdown::Write);
    }
}

fn copy(src: &mut File, dst: &mut File) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
    }
}
