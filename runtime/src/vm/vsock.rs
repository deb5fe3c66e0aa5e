//! Reaching a guest vsock port from the host.
//!
//! Hybrid vsock (vhost-user vsock, the Firecracker / Cloud Hypervisor convention): connect
//! to the backend's Unix socket, write `CONNECT <port>\n`, read `OK <host port>\n`; the
//! stream then carries the guest connection.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// The acknowledgement line is short; anything longer is a misbehaving backend.
const MAX_ACK: usize = 64;

pub async fn connect_hybrid(uds: &Path, port: u32, limit: Duration) -> Result<UnixStream> {
    let attempt = async {
        let mut s = UnixStream::connect(uds)
            .await
            .map_err(Error::io(format!("connect {}", uds.display())))?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(Error::io("hybrid vsock CONNECT"))?;
        let mut line = Vec::with_capacity(16);
        let mut byte = [0u8; 1];
        loop {
            let n = s
                .read(&mut byte)
                .await
                .map_err(Error::io("hybrid vsock ack"))?;
            if n == 0 {
                return Err(Error::Backend(format!(
                    "vsock port {port}: connection refused by the guest"
                )));
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
            if line.len() > MAX_ACK {
                return Err(Error::Backend(
                    "vsock backend sent an oversized acknowledgement".into(),
                ));
            }
        }
        if !line.starts_with(b"OK ") {
            return Err(Error::Backend(format!(
                "vsock port {port}: unexpected answer {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(s)
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| Error::Backend(format!("vsock port {port}: no answer within {limit:?}")))?
}
