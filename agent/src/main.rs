//! `stockade-agent`: the guest's PID 1 in the VM backend.
//!
//! The VM backend is not implemented yet (see the VM backend issue); until it is, this
//! binary refuses to run rather than pretend to be an agent.

fn main() {
    eprintln!(
        "stockade-agent {}: the VM backend is not implemented yet; this binary only reserves \
         the agent's place in the workspace (protocol version {})",
        env!("CARGO_PKG_VERSION"),
        stockade_agent_protocol::PROTOCOL_VERSION
    );
    std::process::exit(78); // EX_CONFIG
}
