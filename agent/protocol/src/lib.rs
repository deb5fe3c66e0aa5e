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
/// 4: port forwarding ([`FORWARD_PORT`]).
/// 5: the host's random seed at CreateSandbox; ConfigureNetwork.
pub const PROTOCOL_VERSION: u32 = 5;

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

/// The vsock port for port forwarding (the CRI's PortForward): the host opens one stream
/// per forwarded connection and first writes `FORWARD <secret> <tcp port>\n`; the agent
/// connects to `127.0.0.1:<tcp port>` in the guest (the pod's network) and answers
/// `OK\n`, or `ERR <reason>\n` and closes. The rest of the stream is the connection's
/// bytes both ways, in frames: a 4-byte big-endian length, then that many bytes (at most
/// [`MAX_FORWARD_FRAME`]); a frame of length 0 ends that direction (a TCP half-close).
/// Frames, because a hybrid vsock backend turns a half-close into a full one.
/// The stream closes when both directions have ended, or at once on an error.
pub const FORWARD_PORT: u32 = 1026;

/// The largest forward frame's payload.
pub const MAX_FORWARD_FRAME: usize = 64 * 1024;

/// A forward frame's header for `len` bytes of payload (0: end of this direction).
pub fn forward_frame_header(len: usize) -> [u8; 4] {
    debug_assert!(len <= MAX_FORWARD_FRAME);
    (len as u32).to_be_bytes()
}

/// The payload length a frame header announces; None past [`MAX_FORWARD_FRAME`].
pub fn forward_frame_len(header: [u8; 4]) -> Option<usize> {
    let len = u32::from_be_bytes(header) as usize;
    (len <= MAX_FORWARD_FRAME).then_some(len)
}

/// The longest answer line to a FORWARD header.
pub const MAX_FORWARD_ANSWER: usize = 128;

/// The longest header line the agent reads.
pub const MAX_STDIO_HEADER: usize = 512;

/// The virtio-fs tag of a pod's share and where the agent mounts it.
pub const SHARE_TAG: &str = "stockade-share";
pub const GUEST_SHARE_DIR: &str = "/run/stockade/share";

/// A header line's words after `<kind> <secret>`, when it is of that kind and carries
/// the VM's secret.
fn authenticated<'a>(
    line: &'a str,
    kind: &str,
    secret: &[u8],
) -> Option<std::str::Split<'a, char>> {
    let mut parts = line.split(' ');
    if parts.next()? != kind || !secret_matches(parts.next()?.as_bytes(), secret) {
        return None;
    }
    Some(parts)
}

/// The stdio header line for one stream.
pub fn stdio_header(secret: &str, container_id: &str, exec_id: &str, stream: &str) -> String {
    let exec = if exec_id.is_empty() { "-" } else { exec_id };
    format!("STDIO {secret} {container_id} {exec} {stream}\n")
}

/// Parse a header line (without its newline) against the VM's secret: (container id,
/// exec id, stream). None for a malformed line or a wrong secret.
pub fn parse_stdio_header(line: &str, secret: &[u8]) -> Option<(String, String, String)> {
    let mut parts = authenticated(line, "STDIO", secret)?;
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

/// The forward header line for one connection.
pub fn forward_header(secret: &str, port: u16) -> String {
    format!("FORWARD {secret} {port}\n")
}

/// Parse a forward header line (without its newline) against the VM's secret: the TCP
/// port. None for a malformed line, port 0 or a wrong secret.
pub fn parse_forward_header(line: &str, secret: &[u8]) -> Option<u16> {
    let mut parts = authenticated(line, "FORWARD", secret)?;
    let port = parts.next()?;
    if parts.next().is_some() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
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
    pub const PORT_FORWARD: &str = "port-forward";
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
    fn forward_headers_round_trip_and_refuse_the_rest() {
        let h = forward_header(S, 8080);
        assert_eq!(parse_forward_header(h.trim_end(), S.as_bytes()), Some(8080));
        let wrong = S.replace('0', "1");
        for bad in [
            format!("FORWARD {S} 0"),
            format!("FORWARD {S} 65536"),
            format!("FORWARD {S} +80"),
            format!("FORWARD {S} 80 x"),
            format!("FORWARD {S}"),
            format!("FORWARD {wrong} 80"),
            format!("STDIO {S} 80"),
        ] {
            assert_eq!(parse_forward_header(&bad, S.as_bytes()), None, "{bad}");
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
