//! Port forwarding, guest side (the CRI's PortForward in VM mode).
//!
//! The host's forwarder opens one vsock stream per connection that containerd dials in the
//! pod's network namespace, and names the TCP port in a header. The agent connects to
//! that port on the guest's loopback (the guest's network is the pod's), answers, then
//! copies framed bytes both ways (see
//! [`FORWARD_PORT`](stockade_agent_protocol::FORWARD_PORT)): a thread per direction.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use stockade_agent_protocol::{
    MAX_FORWARD_ANSWER, MAX_FORWARD_FRAME, forward_frame_header, forward_frame_len,
    parse_forward_header,
};

use crate::stdio::read_header;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn serve(conn: OwnedFd, secret: &[u8]) {
    let mut conn = File::from(conn);
    let Some(port) = read_header(&mut conn).and_then(|h| parse_forward_header(&h, secret)) else {
        log::warn!("forward stream with a bad header or a wrong secret; closed");
        return;
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let tcp = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(t) => t,
        Err(e) => {
            log::info!(port, error:% = e; "port forward: nothing answers");
            let mut answer = format!("ERR {e}");
            answer.truncate(MAX_FORWARD_ANSWER - 1);
            answer.push('\n');
            let _ = conn.write_all(answer.as_bytes());
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    let (Ok(conn_out), Ok(tcp_in)) = (conn.try_clone(), tcp.try_clone()) else {
        return;
    };
    // Guest to host: the server's bytes, then an end frame when it half-closes.
    let up = std::thread::spawn(move || send_frames(tcp_in, conn_out));
    // Host to guest: frames to the server; the end frame is its end of file. A host that
    // goes away ends the connection both ways, which also ends the other thread.
    match receive_frames(&mut conn, &tcp) {
        Ok(()) => {
            let _ = tcp.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
    let _ = up.join();
    // Dropping both ends closes the vsock stream fully: the host's cue that it is over.
}

fn send_frames(mut tcp: TcpStream, mut conn: File) {
    let mut buf = vec![0u8; 4 + MAX_FORWARD_FRAME];
    loop {
        let n = match tcp.read(&mut buf[4..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        buf[..4].copy_from_slice(&forward_frame_header(n));
        if conn.write_all(&buf[..4 + n]).is_err() || n == 0 {
            return;
        }
    }
}

fn receive_frames(conn: &mut File, mut tcp: &TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_FORWARD_FRAME];
    loop {
        let mut header = [0u8; 4];
        conn.read_exact(&mut header)?;
        let len = forward_frame_len(header).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "oversized frame")
        })?;
        if len == 0 {
            return Ok(());
        }
        conn.read_exact(&mut buf[..len])?;
        tcp.write_all(&buf[..len])?;
    }
}
