//! The shim's `start` driven as containerd drives it: the flags, environment, working
//! directory and stdin each daemon version sends, and the answer read back the way
//! that daemon reads it. Written from containerd's sources (1.7's and 2.2's
//! `runtime/v2/shim/util.go` and `binary.go`, 2.3's `pkg/shim/util.go`,
//! `core/runtime/v2/shim.go` and `api/runtime/bootstrap/v1/bootstrap.proto`),
//! independently of the shim's own decoder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream, Message};
use containerd_shim_protos::shim::oci::Options as RuncOptions;

use crate::paths::shim_dir;

/// Which daemon's side of `start` to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// containerd 1.7 (and 1.6): options as a bare `Any` on stdin, when there are any;
    /// the answer is JSON `{"version":2,...}` or the address itself, version 2 only.
    V1_7,
    /// containerd 2.0–2.2: the same stdin; JSON or plain address, version 2 or 3.
    V2_2,
    /// containerd 2.3+: `BootstrapParams` on stdin; the answer decodes as a
    /// `BootstrapResult` first.
    V2_3,
}

/// What `start` answered, as the daemon read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub version: i32,
    pub address: String,
    pub protocol: String,
    /// Whether it was a `BootstrapResult` (else the plain or JSON form).
    pub bootstrap_result: bool,
}

/// runc's options naming a shim cgroup, as an `Any` the way clients send them.
pub fn runc_options(shim_cgroup: &str) -> Any {
    let mut o = RuncOptions::new();
    o.shim_cgroup = shim_cgroup.into();
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: o.write_to_bytes().expect("encode runc options"),
        ..Default::default()
    }
}

/// `BootstrapParams` as containerd 2.3's `pkg/shim.Command` marshals it.
pub fn bootstrap_params(
    id: &str,
    namespace: &str,
    containerd: &Path,
    options: Option<&Any>,
    socket_dir: Option<&Path>,
) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        let mut put = || -> containerd_shim_protos::protobuf::Result<()> {
            os.write_string(1, id)?;
            os.write_string(2, namespace)?;
            os.write_int32(3, -4)?; // LOG_LEVEL_DEBUG
            os.write_string(4, "v2.3.0")?;
            os.write_string(5, &format!("{}.ttrpc", containerd.display()))?;
            os.write_string(6, &containerd.display().to_string())?;
            os.write_string(7, "/usr/bin/containerd")?;
            if let Some(a) = options {
                let mut ext = Vec::new();
                {
                    let mut e = CodedOutputStream::vec(&mut ext);
                    e.write_bytes(1, &a.write_to_bytes()?)?;
                    e.flush()?;
                }
                os.write_bytes(8, &ext)?;
            }
            if let Some(d) = socket_dir {
                os.write_string(9, &d.display().to_string())?;
            }
            os.flush()
        };
        put().expect("encode bootstrap params");
    }
    buf
}

/// Run `shim start` for container `id` in `bundle` as `daemon` runs it against the
/// containerd at `socket` (its gRPC socket; ttrpc beside it), with `stdin`.
/// Returns the answer as that daemon reads it. containerd reads stdout and stderr
/// together: anything on stderr is part of the answer, and a failure.
pub fn drive_start(
    daemon: Daemon,
    bundle: &Path,
    socket: &Path,
    namespace: &str,
    id: &str,
    stdin: &[u8],
) -> Result<Answer> {
    let shim = shim_dir()?.join("containerd-shim-stockade-v2");
    let ttrpc = format!("{}.ttrpc", socket.display());
    let mut cmd = Command::new(&shim);
    cmd.args(["-namespace", namespace, "-address"])
        .arg(socket)
        .args([
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            id,
            "-debug",
            "start",
        ])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", &ttrpc)
        .env("GRPC_ADDRESS", socket)
        .env("NAMESPACE", namespace)
        .env("MAX_SHIM_VERSION", "2")
        .env("GOMAXPROCS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawn shim start")?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin)?;
    }
    let out = child.wait_with_output()?;
    let mut combined = out.stdout.clone();
    combined.extend_from_slice(&out.stderr);
    ensure!(
        out.status.success(),
        "start failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&combined)
    );
    ensure!(
        out.stderr.is_empty(),
        "start wrote to stderr, which containerd reads as part of its answer: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_answer(daemon, combined.trim_ascii())
}

/// The answer as `daemon` parses it.
pub fn read_answer(daemon: Daemon, data: &[u8]) -> Result<Answer> {
    if daemon == Daemon::V2_3
        && let Ok(a) = decode_result(data)
    {
        ensure!(
            a.version == 2 || a.version == 3,
            "containerd 2.3 refuses a result of version {}",
            a.version
        );
        return Ok(a);
    }
    let text = String::from_utf8(data.to_vec()).context("a plain answer that is not text")?;
    let (version, address, protocol) = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v["version"].as_i64().unwrap_or(0) >= 2 => (
            v["version"].as_i64().unwrap_or(0) as i32,
            v["address"].as_str().unwrap_or_default().to_string(),
            v["protocol"].as_str().unwrap_or_default().to_string(),
        ),
        _ => (2, text.clone(), "ttrpc".to_string()),
    };
    let max = if daemon == Daemon::V1_7 { 2 } else { 3 };
    ensure!(version <= max, "{daemon:?} refuses version {version}");
    if !protocol.eq_ignore_ascii_case("ttrpc") {
        bail!("{daemon:?}: unsupported protocol {protocol:?} (address {address:?})");
    }
    // What the daemon dials: a protobuf answer misread as an address fails here.
    let Some(path) = address.strip_prefix("unix://") else {
        bail!("{daemon:?} cannot dial {address:?}");
    };
    ensure!(
        path.starts_with('/') && !path.chars().any(char::is_control),
        "{daemon:?} cannot dial {address:?}"
    );
    Ok(Answer {
        version,
        address,
        protocol,
        bootstrap_result: false,
    })
}

/// A `BootstrapResult`, strictly: every byte must belong to one of its fields.
fn decode_result(data: &[u8]) -> Result<Answer> {
    let mut a = Answer {
        version: 0,
        address: String::new(),
        protocol: String::new(),
        bootstrap_result: true,
    };
    let mut is = CodedInputStream::from_bytes(data);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            8 => a.version = is.read_int32()?,
            18 => a.address = is.read_string()?,
            26 => a.protocol = is.read_string()?,
            34 | 42 => {
                is.read_bytes()?;
            }
            32 => {
                is.read_int32()?;
            }
            t => bail!("not a BootstrapResult: tag {t}"),
        }
    }
    Ok(a)
}

/// The Unix socket path of a `unix://` address.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}
