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
