//! Reaching a guest vsock port from the host.
//!
//! Hybrid vsock (vhost-user vsock, the Firecracker / Cloud Hypervisor convention): connect
//! to the backend's Unix socket, write `CONNECT <port>\n`, read `OK <host port>\n`; the
//! stream then carries the guest connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// How the host reaches a guest's vsock ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// vhost-user vsock: the backend's hybrid Unix socket.
    Hybrid { uds: PathBuf },
    /// Kernel vhost-vsock: AF_VSOCK to the guest's CID.
    Kernel { cid: u32 },
}

/// A connected guest stream, whatever the transport.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Duplex for T {}
pub type GuestStream = Box<dyn Duplex>;

impl Transport {
    pub async fn connect(&self, port: u32, limit: Duration) -> Result<GuestStream> {
        match self {
            Transport::Hybrid { uds } => Ok(Box::new(connect_hybrid(uds, port, limit).await?)),
            Transport::Kernel { cid } => {
                let addr = tokio_vsock::VsockAddr::new(*cid, port);
                let s = tokio::time::timeout(limit, tokio_vsock::VsockStream::connect(addr))
                    .await
                    .map_err(|_| {
                        Error::Backend(format!("vsock {cid}:{port}: no answer within {limit:?}"))
                    })?
                    .map_err(Error::io(format!("vsock connect {cid}:{port}")))?;
                Ok(Box::new(s))
            }
        }
    }
}

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
        let line = match read_line(&mut s, MAX_ACK).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(Error::Backend(format!(
                    "vsock port {port}: connection refused by the guest"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::Backend(
                    "vsock backend sent an oversized acknowledgement".into(),
                ));
            }
            Err(e) => return Err(Error::io("hybrid vsock ack")(e)),
        };
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

/// One line from `s` without its newline, read a byte at a time so nothing after it is
/// consumed: None at end of file before a newline; `InvalidData` past `max` bytes.
pub async fn read_line(
    s: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        if s.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(Some(line));
        }
        line.push(byte[0]);
        if line.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
    }
}
