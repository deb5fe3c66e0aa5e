//! Port forwarding into a VM pod (the CRI's PortForward, `kubectl port-forward`).
//!
//! containerd serves PortForward by dialing `localhost:<port>` inside the pod's network
//! namespace on the host. In VM mode nothing listens there: the pod's processes are in
//! the guest. So Stockade puts one listener on 127.0.0.1 in that namespace and one NAT
//! rule that redirects every TCP connection to 127.0.0.1 there to it
//! ([`network::listen_loopback`]); the listener reads the port that was dialed
//! (`SO_ORIGINAL_DST`), opens a vsock stream to the agent for that port
//! ([`AgentClient::forward_stream`]), and copies frames both ways. Nothing in containerd
//! changes, and any port works without knowing in advance which ones the pod serves.
//!
//! Only containerd (root, in that namespace) can reach the listener: nothing else of the
//! pod runs on the host, and 127.0.0.1 is not routable from outside the namespace.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stockade_agent_protocol::{MAX_FORWARD_FRAME, forward_frame_header, forward_frame_len};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::vm::agent::AgentClient;
use crate::vm::network;
use crate::vm::vsock::GuestStream;

/// Connections forwarded at once per pod; more wait for a slot.
const MAX_CONNECTIONS: usize = 256;

pub struct PortForwarder {
    netns: PathBuf,
    port: u16,
    task: JoinHandle<()>,
}

impl PortForwarder {
    /// Listen in the pod's network namespace at `netns` and forward to the guest.
    pub async fn start(
        sandbox: &str,
        netns: &Path,
        agent: Arc<AgentClient>,
        exits: &Exits,
    ) -> Result<PortForwarder> {
        let (ns, ex) = (netns.to_path_buf(), exits.clone());
        let listener = tokio::task::spawn_blocking(move || network::listen_loopback(&ns, &ex))
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
        let port = listener
            .local_addr()
            .map_err(Error::io("port forwarder address"))?
            .port();
        let undo = |e| {
            network::remove_loopback_redirect(netns, port, exits);
            e
        };
        listener
            .set_nonblocking(true)
            .map_err(Error::io("port forwarder"))
            .map_err(undo)?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(Error::io("port forwarder"))
            .map_err(undo)?;
        let task = tokio::spawn(accept(sandbox.to_string(), listener, port, agent));
        log::debug!(sandbox, port; "port forwarder listening");
        Ok(PortForwarder {
            netns: netns.to_path_buf(),
            port,
            task,
        })
    }

    /// Stop forwarding: every forwarded connection closes, the rule goes.
    pub fn stop(self, exits: &Exits) {
        self.task.abort();
        network::remove_loopback_redirect(&self.netns, self.port, exits);
    }
}

async fn accept(
    sandbox: String,
    listener: tokio::net::TcpListener,
    own_port: u16,
    agent: Arc<AgentClient>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped with this task: aborting it ends every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                log::warn!(sandbox = sandbox.as_str(), error:% = e; "port forwarder accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // A direct connection to the listener's own port was not redirected: it asked
        // for that port.
        let port = original_port(&tcp).unwrap_or(own_port);
        let agent = agent.clone();
        let sandbox = sandbox.clone();
        connections.spawn(async move {
            let _slot = slot;
            let guest = match agent.forward_stream(port).await {
                Ok(g) => g,
                Err(e) => {
                    log::info!(sandbox = sandbox.as_str(), port, error:% = e; "port forward refused");
                    // A reset, as a dial of a closed port gives.
                    let _ = tcp.set_zero_linger();
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            if let Err(e) = splice(tcp, guest).await {
                log::debug!(sandbox = sandbox.as_str(), port, error:% = e; "port forward ended");
            }
        });
    }
}

/// The destination port the connection was dialed to, before the redirect.
fn original_port(tcp: &TcpStream) -> Option<u16> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the fd is a live TCP socket; addr and len describe a writable
    // sockaddr_in of the size given.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| u16::from_be(addr.sin_port))
}

/// Copy a forwarded connection both ways until both directions end (a half-close is
/// passed on as an end frame) or either fails.
async fn splice(tcp: TcpStream, guest: GuestStream) -> std::io::Result<()> {
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let (mut guest_rd, mut guest_wr) = tokio::io::split(guest);
    let up = async move {
        let mut buf = vec![0u8; 4 + MAX_FORWARD_FRAME];
        loop {
            let n = tcp_rd.read(&mut buf[4..]).await?;
            buf[..4].copy_from_slice(&forward_frame_header(n));
            guest_wr.write_all(&buf[..4 + n]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(guest_wr);
            }
        }
    };
    let down = async move {
        // The guest is untrusted: a frame is bounded before anything is read into it.
        let mut buf = vec![0u8; MAX_FORWARD_FRAME];
        loop {
            let mut header = [0u8; 4];
            guest_rd.read_exact(&mut header).await?;
            let len = forward_frame_len(header).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "oversized frame")
            })?;
            if len == 0 {
                tcp_wr.shutdown().await?;
                return Ok::<_, std::io::Error>(());
            }
            guest_rd.read_exact(&mut buf[..len]).await?;
            tcp_wr.write_all(&buf[..len]).await?;
        }
    };
    // Both ended: dropping the guest's stream closes it, the agent's cue to close too.
    let (_guest_wr, ()) = tokio::try_join!(up, down)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected TCP pair on the loopback: (the forwarder's side, the client's side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn bytes_and_half_closes_cross_both_ways() {
        let (ours, mut client) = tcp_pair().await;
        let (host_end, mut guest) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(splice(ours, Box::new(host_end)));
        // The client sends and half-closes: one data frame, then an end frame.
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut header = [0u8; 4];
        loop {
            guest.read_exact(&mut header).await.unwrap();
            let len = forward_frame_len(header).unwrap();
            if len == 0 {
                break;
            }
            let mut b = vec![0u8; len];
            guest.read_exact(&mut b).await.unwrap();
            got.extend(b);
        }
        assert_eq!(got, b"ping");
        // The guest still answers after the client's half-close, then ends too.
        guest.write_all(&forward_frame_header(4)).await.unwrap();
        guest.write_all(b"pong").await.unwrap();
        guest.write_all(&forward_frame_header(0)).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_oversized_frame_from_the_guest_ends_the_connection() {
        let (ours, mut client) = tcp_pair().await;
        let (host_end, mut guest) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(splice(ours, Box::new(host_end)));
        guest
            .write_all(&((MAX_FORWARD_FRAME as u32 + 1).to_be_bytes()))
            .await
            .unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // The client sees the connection end, and nothing of the frame.
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        assert!(answer.is_empty());
    }
}
