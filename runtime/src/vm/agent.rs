//! The host's client of the guest agent. The guest is untrusted: every call has a
//! deadline, and ttrpc bounds message sizes.

use std::path::Path;
use std::time::Duration;

use stockade_agent_protocol::asynchronous::agent::{
    Empty, GuestDetailsResponse, VersionRequest, VersionResponse,
};
use stockade_agent_protocol::asynchronous::agent_ttrpc::AgentClient as RawClient;
use stockade_agent_protocol::{AGENT_PORT, PROTOCOL_VERSION};
use ttrpc::asynchronous::Client;
use ttrpc::asynchronous::transport::Socket;

use crate::error::{Error, Result};
use crate::vm::vsock::connect_hybrid;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentClient {
    raw: RawClient,
    pub version: VersionResponse,
}

fn ctx(limit: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(limit.as_nanos() as i64)
}

fn rpc_err(call: &str) -> impl FnOnce(ttrpc::Error) -> Error + '_ {
    move |e| Error::Backend(format!("agent {call}: {e}"))
}

impl AgentClient {
    /// Connect through the hybrid vsock socket and negotiate the protocol version.
    pub async fn connect(uds: &Path, limit: Duration) -> Result<AgentClient> {
        let stream = connect_hybrid(uds, AGENT_PORT, limit).await?;
        let raw = RawClient::new(Client::new(Socket::new(stream)));
        let req = VersionRequest {
            host_protocol: PROTOCOL_VERSION,
            ..Default::default()
        };
        let version = raw
            .version(ctx(limit), &req)
            .await
            .map_err(rpc_err("version"))?;
        if version.protocol != PROTOCOL_VERSION {
            return Err(Error::Backend(format!(
                "agent speaks protocol {}, host speaks {PROTOCOL_VERSION}",
                version.protocol
            )));
        }
        Ok(AgentClient { raw, version })
    }

    pub async fn health(&self) -> Result<bool> {
        Ok(self
            .raw
            .health(ctx(CALL_TIMEOUT), &Empty::default())
            .await
            .map_err(rpc_err("health"))?
            .serving)
    }

    pub async fn guest_details(&self) -> Result<GuestDetailsResponse> {
        self.raw
            .guest_details(ctx(CALL_TIMEOUT), &Empty::default())
            .await
            .map_err(rpc_err("guest details"))
    }

    pub async fn shutdown(&self) -> Result<()> {
        self.raw
            .shutdown(ctx(CALL_TIMEOUT), &Empty::default())
            .await
            .map_err(rpc_err("shutdown"))?;
        Ok(())
    }
}
