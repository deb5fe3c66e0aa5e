//! Runtime options containerd passes in CreateTaskRequest.options (and on `start`'s stdin).
//!
//! CRI and Docker send `runtimeoptions.v1.Options` (ConfigPath, ConfigBody) to non-runc
//! shims; some clients send runc's `Options` (SystemdCgroup, ShimCgroup). Anything else
//! is ignored with a log line.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::{CodedInputStream, Message, well_known_types::any::Any};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use stockade_runtime::config::ConfigSource;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub config: ConfigSource,
    pub systemd_cgroup: bool,
    pub shim_cgroup: String,
}

fn decode_runtimeoptions(bytes: &[u8]) -> Result<ConfigSource, String> {
    let mut out = ConfigSource::default();
    let mut is = CodedInputStream::from_bytes(bytes);
    while !is.eof().map_err(|e| e.to_string())? {
        let tag = is.read_raw_varint32().map_err(|e| e.to_string())?;
        let (field, wire) = (tag >> 3, tag & 7);
        if wire != 2 {
            return Err(format!("unexpected wire type {wire} for field {field}"));
        }
        let s = is.read_string().map_err(|e| e.to_string())?;
        match field {
            2 if !s.is_empty() => out.path = Some(PathBuf::from(s)),
            3 if !s.is_empty() => out.body = Some(s),
            _ => {}
        }
    }
    Ok(out)
}

fn is_runc(type_url: &str) -> bool {
    type_url.ends_with("runc.v1.Options") || type_url.ends_with("io.containerd.runc.v2.Options")
}

/// Whether `type_url` names options the shim reads.
pub fn is_known(type_url: &str) -> bool {
    type_url.ends_with("runtimeoptions.v1.Options") || is_runc(type_url)
}

pub fn parse(any: Option<&Any>) -> Result<RuntimeOptions, String> {
    let Some(any) = any else {
        return Ok(RuntimeOptions::default());
    };
    let url = any.type_url.as_str();
    if url.is_empty() && any.value.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    if url.ends_with("runtimeoptions.v1.Options") {
        return Ok(RuntimeOptions {
            config: decode_runtimeoptions(&any.value)?,
            ..Default::default()
        });
    }
    if is_runc(url) {
        let o = RuncOptions::parse_from_bytes(&any.value).map_err(|e| e.to_string())?;
        return Ok(RuntimeOptions {
            config: ConfigSource::default(),
            systemd_cgroup: o.systemd_cgroup,
            shim_cgroup: o.shim_cgroup,
        });
    }
    log::info!(type_url = url; "ignoring runtime options of an unknown type");
    Ok(RuntimeOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn runtimeoptions(path: &str, body: &str) -> Any {
        let mut buf = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut buf);
            os.write_string(1, "").unwrap();
            os.write_string(2, path).unwrap();
            os.write_string(3, body).unwrap();
            os.flush().unwrap();
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: buf,
            ..Default::default()
        }
    }

    #[test]
    fn reads_config_path_and_body() {
        let o = parse(Some(&runtimeoptions("/etc/x.toml", "[runtime]"))).unwrap();
        assert_eq!(
            o.config.path.as_deref(),
            Some(std::path::Path::new("/etc/x.toml"))
        );
        assert_eq!(o.config.body.as_deref(), Some("[runtime]"));
    }

    #[test]
    fn reads_runc_systemd_cgroup() {
        let mut r = RuncOptions::new();
        r.systemd_cgroup = true;
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: r.write_to_bytes().unwrap(),
            ..Default::default()
        };
        assert!(parse(Some(&any)).unwrap().systemd_cgroup);
    }

    #[test]
    fn none_and_unknown_are_defaults() {
        assert_eq!(parse(None).unwrap(), RuntimeOptions::default());
        let any = Any {
            type_url: "x.y.Z".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(parse(Some(&any)).unwrap(), RuntimeOptions::default());
    }
}
