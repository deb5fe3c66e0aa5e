//! The protocol between the Stockade runtime (host) and its guest agent: protobuf
//! messages and ttrpc services generated at build time from `proto/agent.proto`.

#![allow(
    clippy::all,
    rust_2018_idioms,
    unsafe_op_in_unsafe_fn,
    unused,
    nonstandard_style
)]

/// Negotiated by the first call on every connection; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// Capabilities this protocol version can announce.
pub mod capabilities {
    pub const HEALTH: &str = "health";
    pub const GUEST_DETAILS: &str = "guest-details";
    pub const SHUTDOWN: &str = "shutdown";
}

/// Messages (shared by both flavours) and the sync server/client (the agent's side).
pub mod sync {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/sync/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/sync/agent_ttrpc.rs"));
    }
}

/// The async client/server (the host's side).
#[cfg(feature = "async")]
pub mod asynchronous {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/async/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/async/agent_ttrpc.rs"));
    }
}
