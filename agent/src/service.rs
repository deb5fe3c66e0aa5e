//! The agent protocol's service, guest side.

use stockade_agent_protocol::sync::agent::{
    Empty, GuestDetailsResponse, HealthResponse, VersionRequest, VersionResponse,
};
use stockade_agent_protocol::sync::agent_ttrpc::Agent;
use stockade_agent_protocol::{PROTOCOL_VERSION, capabilities};
use ttrpc::TtrpcContext;

pub struct AgentService {
    modules: Vec<String>,
}

impl AgentService {
    pub fn new(modules: Vec<String>) -> AgentService {
        AgentService { modules }
    }
}

fn meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

impl Agent for AgentService {
    fn version(&self, _ctx: &TtrpcContext, req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        if req.host_protocol != PROTOCOL_VERSION {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!(
                    "host speaks protocol {}, agent speaks {PROTOCOL_VERSION}",
                    req.host_protocol
                ),
            )));
        }
        Ok(VersionResponse {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: [
                capabilities::HEALTH,
                capabilities::GUEST_DETAILS,
                capabilities::SHUTDOWN,
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
    }

    fn health(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            serving: true,
            ..Default::default()
        })
    }

    fn guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: Empty,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        let uts = nix::sys::utsname::uname().map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        Ok(GuestDetailsResponse {
            kernel_release: uts.release().to_string_lossy().into_owned(),
            hostname: uts.nodename().to_string_lossy().into_owned(),
            memory_total_bytes: meminfo_total(),
            online_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            loaded_modules: self.modules.clone(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        // Answer first; power off a moment later so the reply reaches the host.
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            nix::unistd::sync();
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        });
        Ok(Empty::default())
    }
}
