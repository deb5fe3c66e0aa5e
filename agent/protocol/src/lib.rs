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
pub const PROTOCOL_VERSION: u32 = 2;

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The vsock port for process stdio. The host opens one stream per process stream and
/// first writes one header line: `STDIO <container-id> <exec-id or -> <stdin|stdout|stderr>\n`.
/// The rest of the stream is the raw bytes; for stdin, the host's end of file (a
/// half-close) is the process's end of file.
pub const STDIO_PORT: u32 = 1025;

/// The longest header line the agent reads.
pub const MAX_STDIO_HEADER: usize = 512;

/// The virtio-fs tag of a pod's share and where the agent mounts it.
pub const SHARE_TAG: &str = "stockade-share";
pub const GUEST_SHARE_DIR: &str = "/run/stockade/share";

/// The stdio header line for one stream.
pub fn stdio_header(container_id: &str, exec_id: &str, stream: &str) -> String {
    let exec = if exec_id.is_empty() { "-" } else { exec_id };
    format!("STDIO {container_id} {exec} {stream}\n")
}

/// Parse a header line (without its newline): (container id, exec id, stream).
pub fn parse_stdio_header(line: &str) -> Option<(String, String, String)> {
    let mut parts = line.split(' ');
    if parts.next()? != "STDIO" {
        return None;
    }
    let (id, exec, stream) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !valid_id(id) || !(exec == "-" || valid_id(exec)) {
        return None;
    }
    if !matches!(stream, "stdin" | "stdout" | "stderr") {
        return None;
    }
    let exec = if exec == "-" { "" } else { exec };
    Some((id.into(), exec.into(), stream.into()))
}

/// containerd's id rule: letters, digits, `_ . -`, at most 76 bytes, not starting
/// with a separator. Ids become path components on both sides, so both sides check.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 76
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Capabilities this protocol version can announce.
pub mod capabilities {
    pub const HEALTH: &str = "health";
    pub const GUEST_DETAILS: &str = "guest-details";
    pub const SHUTDOWN: &str = "shutdown";
    pub const CONTAINERS: &str = "containers";
    pub const VIRTIOFS: &str = "virtiofs";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_headers_round_trip() {
        let h = stdio_header("c1", "", "stdout");
        assert_eq!(
            parse_stdio_header(h.trim_end()),
            Some(("c1".into(), "".into(), "stdout".into()))
        );
        let h = stdio_header("c1", "e-2", "stdin");
        assert_eq!(
            parse_stdio_header(h.trim_end()).unwrap().1,
            "e-2".to_string()
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        for bad in [
            "STDIO ../x - stdout",
            "STDIO c1 - /etc/passwd",
            "STDIO c1 a/b stdin",
            "STDIO c1 - stdout extra",
            "HELLO c1 - stdout",
            "STDIO  - stdout",
        ] {
            assert_eq!(parse_stdio_header(bad), None, "{bad}");
        }
    }
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
