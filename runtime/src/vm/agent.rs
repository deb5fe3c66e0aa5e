//! The host's client of the guest agent. The guest is untrusted: every call has a
//! deadline, ttrpc bounds message sizes (4 MiB), and every reply is checked before use.

use std::time::Duration;

use stockade_agent_protocol::asynchronous::agent::{
    ContainerRef, CreateContainerRequest, CreateSandboxRequest, Empty, EventsRequest, ExecRequest,
    ExitResponse, GuestDetailsResponse, GuestEvent, PauseRequest, ProcessRef, ResizeRequest,
    SignalRequest, StatsResponse, Stdio, UpdateRequest, VersionRequest, VersionResponse,
};
use stockade_agent_protocol::asynchronous::agent_ttrpc::AgentClient as RawClient;
use stockade_agent_protocol::{
    AGENT_PORT, AUTH_METADATA, FORWARD_PORT, MAX_FORWARD_ANSWER, PROTOCOL_VERSION, STDIO_PORT,
    forward_header, stdio_header,
};
use tokio::io::AsyncWriteExt;
use ttrpc::asynchronous::Client;
use ttrpc::asynchronous::transport::Socket;

use crate::error::{Error, Result};
use crate::vm::vsock::{GuestStream, Transport, read_line};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Creating a container or an exec runs libcontainer in the guest: slower under TCG.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may hold an Events poll open, and our margin on top.
const EVENTS_WAIT: Duration = Duration::from_secs(20);
const EVENTS_MARGIN: Duration = Duration::from_secs(10);
const MAX_EVENTS: usize = 256;

pub struct AgentClient {
    raw: RawClient,
    transport: Transport,
    /// The VM's secret, sent with every call and stdio stream.
    secret: String,
    pub version: VersionResponse,
}

/// The pod's network as the guest receives it.
fn network_message(
    n: &crate::vm::network::NetConfig,
) -> stockade_agent_protocol::asynchronous::agent::Network {
    use stockade_agent_protocol::asynchronous::agent::{Network, Route};
    Network {
        mac: n.interface.mac.clone(),
        mtu: n.interface.mtu,
        addresses: n.interface.addresses.clone(),
        routes: n
            .routes
            .iter()
            .map(|r| Route {
                dest: r.dest.clone(),
                gateway: r.gateway.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// 32 bytes of the host's randomness for the guest's pool.
fn random_seed() -> Result<Vec<u8>> {
    use std::io::Read;
    let mut seed = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(Error::io("read /dev/urandom"))?;
    Ok(seed)
}

/// On top of a call's own deadline: ttrpc's client waits without one to queue a request
/// behind a guest that stopped reading, so every call is also bounded here.
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// A call's context: its deadline, and the VM's secret the agent checks first.
fn ctx(limit: Duration, secret: &str) -> ttrpc::context::Context {
    let mut c = ttrpc::context::with_timeout(limit.as_nanos() as i64);
    c.add(AUTH_METADATA.to_string(), secret.to_string());
    c
}

/// One agent call, `limit` for the guest's answer and a hard bound on the whole call
/// (sending included).
async fn call<T, F>(
    name: &str,
    limit: Duration,
    secret: &str,
    f: impl FnOnce(ttrpc::context::Context) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = ttrpc::Result<T>>,
{
    match tokio::time::timeout(limit + DEADLINE_SLACK, f(ctx(limit, secret))).await {
        Ok(r) => r.map_err(rpc_err(name)),
        Err(_) => Err(Error::Backend(format!("agent {name}: no answer in time"))),
    }
}

/// The guest's status codes back into runtime errors (`Error::from_code`); the message
/// is the guest's and says so.
fn rpc_err(call: &str) -> impl FnOnce(ttrpc::Error) -> Error + '_ {
    move |e| match e {
        ttrpc::Error::RpcStatus(s) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => {
            Error::Backend(format!("agent {call}: no answer in time"))
        }
        ttrpc::Error::RpcStatus(s) => {
            Error::from_code(s.code(), format!("guest: {}", s.message()), |msg| {
                Error::Backend(format!("agent {call}: {msg}"))
            })
        }
        other => Error::Backend(format!("agent {call}: {other}")),
    }
}

fn process_ref(id: &str, exec_id: &str) -> ProcessRef {
    ProcessRef {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

pub fn stdio_msg(want: [bool; 3], terminal: bool) -> Stdio {
    Stdio {
        stdin: want[0],
        stdout: want[1],
        stderr: want[2],
        terminal,
        ..Default::default()
    }
}

impl AgentClient {
    /// Connect to the agent's port and negotiate the protocol version.
    pub async fn connect(
        transport: &Transport,
        secret: &str,
        limit: Duration,
    ) -> Result<AgentClient> {
        let stream = transport.connect(AGENT_PORT, limit).await?;
        let raw = RawClient::new(Client::new(Socket::new(stream)));
        let req = VersionRequest {
            host_protocol: PROTOCOL_VERSION,
            ..Default::default()
        };
        let version = call("version", limit, secret, |c| raw.version(c, &req)).await?;
        if version.protocol != PROTOCOL_VERSION {
            return Err(Error::Backend(format!(
                "agent speaks protocol {}, host speaks {PROTOCOL_VERSION}",
                version.protocol
            )));
        }
        Ok(AgentClient {
            raw,
            transport: transport.clone(),
            secret: secret.to_string(),
            version,
        })
    }

    pub async fn health(&self) -> Result<bool> {
        let req = Empty::default();
        Ok(call("health", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.health(c, &req)
        })
        .await?
        .serving)
    }

    pub async fn guest_details(&self) -> Result<GuestDetailsResponse> {
        let req = Empty::default();
        call("guest details", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.guest_details(c, &req)
        })
        .await
    }

    pub async fn shutdown(&self) -> Result<()> {
        let req = Empty::default();
        call("shutdown", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.shutdown(c, &req)
        })
        .await?;
        Ok(())
    }

    /// `mount_share`: mount the VM's virtio-fs share (once per VM: a warm-pool VM has
    /// it mounted before it is claimed, and its claim's call leaves it).
    pub async fn create_sandbox(
        &self,
        id: &str,
        hostname: &str,
        config_toml: String,
        net: Option<&crate::vm::network::NetConfig>,
        mount_share: bool,
    ) -> Result<()> {
        let network = net.map(network_message);
        let req = CreateSandboxRequest {
            sandbox_id: id.into(),
            hostname: hostname.into(),
            share_tag: if mount_share {
                stockade_agent_protocol::SHARE_TAG.into()
            } else {
                String::new()
            },
            container_config: config_toml,
            network: network.into(),
            random_seed: random_seed()?,
            ..Default::default()
        };
        call("create sandbox", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.create_sandbox(c, &req)
        })
        .await?;
        Ok(())
    }

    /// The pod's network, configured on the host after [`create_sandbox`](Self::create_sandbox).
    pub async fn configure_network(&self, net: &crate::vm::network::NetConfig) -> Result<()> {
        let req = network_message(net);
        call("configure network", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.configure_network(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        stdio: Stdio,
    ) -> Result<u32> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            spec_json,
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        Ok(call("create container", CREATE_TIMEOUT, &self.secret, |c| {
            self.raw.create_container(c, &req)
        })
        .await?
        .pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = process_ref(id, exec_id);
        Ok(call("start", CREATE_TIMEOUT, &self.secret, |c| {
            self.raw.start_process(c, &req)
        })
        .await?
        .pid)
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: Stdio,
    ) -> Result<()> {
        let req = ExecRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json,
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        call("exec", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.exec(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = SignalRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        call("signal", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.signal(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<ExitResponse> {
        let req = process_ref(id, exec_id);
        call("delete", CREATE_TIMEOUT, &self.secret, |c| {
            self.raw.delete(c, &req)
        })
        .await
    }

    pub async fn stats(&self, id: &str) -> Result<StatsResponse> {
        let req = ContainerRef {
            container_id: id.into(),
            ..Default::default()
        };
        call("stats", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.stats(c, &req)
        })
        .await
    }

    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let req = UpdateRequest {
            container_id: id.into(),
            resources_json,
            ..Default::default()
        };
        call("update", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.update_resources(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let req = PauseRequest {
            container_id: id.into(),
            paused,
            ..Default::default()
        };
        call("pause", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.set_paused(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = ResizeRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
            ..Default::default()
        };
        call("resize", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.resize_tty(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = process_ref(id, exec_id);
        call("close stdin", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.close_stdin(c, &req)
        })
        .await?;
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        let req = ContainerRef {
            container_id: id.into(),
            ..Default::default()
        };
        let list = call("list processes", CALL_TIMEOUT, &self.secret, |c| {
            self.raw.list_processes(c, &req)
        })
        .await?;
        Ok(list
            .processes
            .into_iter()
            .map(|p| (p.pid, (!p.exec_id.is_empty()).then_some(p.exec_id)))
            .collect())
    }

    /// One long poll: the events after `acked`, at most [`MAX_EVENTS`] of them.
    pub async fn events(&self, acked: u64) -> Result<Vec<GuestEvent>> {
        self.events_within(acked, EVENTS_WAIT).await
    }

    /// [`events`](Self::events), waiting at most `wait` for one.
    pub async fn events_within(&self, acked: u64, wait: Duration) -> Result<Vec<GuestEvent>> {
        let wait = wait.min(EVENTS_WAIT);
        let req = EventsRequest {
            acked,
            wait_millis: wait.as_millis() as u32,
            ..Default::default()
        };
        let mut events = call("events", wait + EVENTS_MARGIN, &self.secret, |c| {
            self.raw.events(c, &req)
        })
        .await?
        .events;
        events.truncate(MAX_EVENTS);
        Ok(events)
    }

    /// Open one stdio stream of a process and name it; the stream then carries its bytes.
    pub async fn stdio_stream(&self, id: &str, exec_id: &str, stream: &str) -> Result<GuestStream> {
        let mut s = self.transport.connect(STDIO_PORT, CALL_TIMEOUT).await?;
        let header = stdio_header(&self.secret, id, exec_id, stream);
        tokio::time::timeout(CALL_TIMEOUT, s.write_all(header.as_bytes()))
            .await
            .map_err(|_| Error::Backend("agent stdio: no answer in time".into()))?
            .map_err(Error::io("stdio header"))?;
        Ok(s)
    }

    /// Open a stream to TCP `port` on the guest's loopback (port forwarding). Once the
    /// agent has connected, the stream carries forward frames (see
    /// [`FORWARD_PORT`](stockade_agent_protocol::FORWARD_PORT)).
    pub async fn forward_stream(&self, port: u16) -> Result<GuestStream> {
        let mut s = self.transport.connect(FORWARD_PORT, CALL_TIMEOUT).await?;
        let header = forward_header(&self.secret, port);
        let answer = async {
            s.write_all(header.as_bytes())
                .await
                .map_err(Error::io("forward header"))?;
            // The agent's answer line, newline included, fits MAX_FORWARD_ANSWER.
            match read_line(&mut s, MAX_FORWARD_ANSWER - 1).await {
                Ok(Some(line)) => Ok(line),
                Ok(None) => Err(Error::Backend(format!(
                    "guest port {port}: no answer from the agent"
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::Backend(
                    format!("guest port {port}: no answer from the agent"),
                )),
                Err(e) => Err(Error::io("forward answer")(e)),
            }
        };
        let line = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| Error::Backend(format!("guest port {port}: no answer in time")))??;
        match line.strip_prefix(b"ERR ") {
            _ if line == b"OK" => Ok(s),
            Some(why) => Err(Error::Backend(format!(
                "guest port {port}: {}",
                crate::vm::console::printable(&String::from_utf8_lossy(why))
            ))),
            None => Err(Error::Backend(format!(
                "guest port {port}: unexpected answer from the agent"
            ))),
        }
    }
}
