//! The protocol between the Stockade runtime (host) and its guest agent.
//!
//! Placeholder until the VM backend: only the version the first call will negotiate.

/// Negotiated by the first call on every connection; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
