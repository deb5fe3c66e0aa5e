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
/// 3: every call and every stdio stream carries the VM's secret.
pub const PROTOCOL_VERSION: u32 = 3;

/// The per-VM secret that proves a caller is the host that booted the VM (any local
/// user can reach a guest's vsock ports over kernel vhost-vsock). The host hands it to
/// the guest out of other users' sight (QEMU: a fw_cfg file, read by the agent through
/// the fw_cfg I/O ports; the command line shows only a root-only path) and sends it
/// with every call, as this ttrpc metadata key, and in every stdio header.
pub const AUTH_METADATA: &str = "stockade-auth";

/// The fw_cfg file name of the secret.
pub const SECRET_FW_CFG: &str = "opt/io.stockade/agent-secret";

/// The secret's length: 32 random bytes as lowercase hex.
pub const SECRET_LEN: usize = 64;

/// Compare a presented secret with the VM's, in time independent of where they differ.
pub fn secret_matches(presented: &[u8], secret: &[u8]) -> bool {
    if presented.len() != secret.len() || secret.len() != SECRET_LEN {
        return false;
    }
    presented
        .iter()
        .zip(secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The vsock port for process stdio. The host opens one stream per process stream and
/// first writes one header line:
/// `STDIO <secret> <container-id> <exec-id or -> <stdin|stdout|stderr>\n`.
/// The rest of the stream is the raw bytes; for stdin, the host's end of file (a
/// half-close) is the process's end of file.
pub const STDIO_PORT: u32 = 1025;

/// The longest header line the agent reads.
pub const MAX_STDIO_HEADER: usize = 512;

/// The virtio-fs tag of a pod's share and where the agent mounts it.
pub const SHARE_TAG: &str = "stockade-share";
pub const GUEST_SHARE_DIR: &str = "/run/stockade/share";

/// The stdio header line for one stream.
pub fn stdio_header(secret: &str, container_id: &str, exec_id: &str, stream: &str) -> String {
    let exec = if exec_id.is_empty() { "-" } else { exec_id };
    format!("STDIO {secret} {container_id} {exec} {stream}\n")
}

/// Parse a header line (without its newline) against the VM's secret: (container id,
/// exec id, stream). None for a malformed line or a wrong secret.
pub fn parse_stdio_header(line: &str, secret: &[u8]) -> Option<(String, String, String)> {
    let mut parts = line.split(' ');
    if parts.next()? != "STDIO" || !secret_matches(parts.next()?.as_bytes(), secret) {
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

    const S: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn stdio_headers_round_trip() {
        let h = stdio_header(S, "c1", "", "stdout");
        assert_eq!(
            parse_stdio_header(h.trim_end(), S.as_bytes()),
            Some(("c1".into(), "".into(), "stdout".into()))
        );
        let h = stdio_header(S, "c1", "e-2", "stdin");
        assert_eq!(
            parse_stdio_header(h.trim_end(), S.as_bytes()).unwrap().1,
            "e-2".to_string()
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let wrong = S.replace('0', "1");
        for bad in [
            format!("STDIO {S} ../x - stdout"),
            format!("STDIO {S} c1 - /etc/passwd"),
            format!("STDIO {S} c1 a/b stdin"),
            format!("STDIO {S} c1 - stdout extra"),
            format!("HELLO {S} c1 - stdout"),
            format!("STDIO {S}  - stdout"),
            format!("STDIO {wrong} c1 - stdout"),
            "STDIO c1 - stdout".to_string(),
            "STDIO  c1 - stdout".to_string(),
        ] {
            assert_eq!(parse_stdio_header(&bad, S.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn secrets_match_only_in_full() {
        assert!(secret_matches(S.as_bytes(), S.as_bytes()));
        assert!(!secret_matches(&S.as_bytes()[..63], S.as_bytes()));
        assert!(!secret_matches(b"", b""));
        assert!(!secret_matches(
            S.replace('f', "e").as_bytes(),
            S.as_bytes()
        ));
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
