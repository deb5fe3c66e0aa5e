//! What containerd writes to `start`'s stdin and reads from its stdout.
//!
//! containerd 2.3 and later write a `containerd.runtime.bootstrap.v1.BootstrapParams`
//! message (binary protobuf, read to EOF) and read a `BootstrapResult` back, falling back
//! to the older forms when the answer does not decode. Earlier daemons (1.6, 1.7,
//! 2.0–2.2) write the runtime options as a bare `google.protobuf.Any` (or nothing) and
//! read the shim's address as plain text: a protobuf answer is misread by them as an
//! address. Nothing in the flags or the environment tells the two apart, and an `Any`
//! (`type_url` = 1, `value` = 2) decodes as `BootstrapParams` (`instance_id` = 1,
//! `namespace` = 2), so the new protocol is recognised the way containerd's own shim
//! recognises it: the input decodes as `BootstrapParams` naming the `-id` and the
//! `-namespace` the shim was started with.

use containerd_shim_protos::protobuf::rt::skip_field_for_tag;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream, Message};

/// The task API version Stockade serves (containerd's `task.v2`).
const TASK_API_VERSION: i32 = 2;

/// The fields of `BootstrapParams` the shim uses (containerd's
/// `api/runtime/bootstrap/v1/bootstrap.proto`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BootstrapParams {
    pub instance_id: String,
    pub namespace: String,
    pub log_level: i32,
    pub containerd_version: String,
    pub containerd_ttrpc_address: String,
    pub containerd_grpc_address: String,
    pub containerd_binary: String,
    /// `Extension.value` of each extension: the runtime options among them.
    pub extensions: Vec<Any>,
    pub socket_dir: Option<String>,
}

/// How the daemon that ran `start` talks.
#[derive(Debug, PartialEq)]
pub enum Input {
    /// containerd 2.3 or later.
    Bootstrap(Box<BootstrapParams>),
    /// An older daemon: its runtime options, if it sent any.
    Legacy(Option<Any>),
}

impl Input {
    /// What `start` read from stdin, for a shim started with `-id id -namespace ns`.
    pub fn read(data: &[u8], id: &str, namespace: &str) -> Input {
        if !data.is_empty()
            && let Ok(p) = BootstrapParams::decode(data)
            && p.instance_id == id
            && p.namespace == namespace
        {
            return Input::Bootstrap(Box::new(p));
        }
        if data.is_empty() {
            return Input::Legacy(None);
        }
        Input::Legacy(Any::parse_from_bytes(data).ok())
    }

    /// The runtime options the daemon sent (an extension of the new protocol).
    pub fn options(&self) -> Option<&Any> {
        match self {
            Input::Bootstrap(p) => p
                .extensions
                .iter()
                .find(|a| crate::options::is_known(&a.type_url)),
            Input::Legacy(a) => a.as_ref(),
        }
    }

    /// The answer to write to stdout for a shim serving at `address` (`unix://...`).
    pub fn answer(&self, address: &str) -> Vec<u8> {
        match self {
            Input::Bootstrap(_) => encode_result(address),
            Input::Legacy(_) => address.as_bytes().to_vec(),
        }
    }
}

impl BootstrapParams {
    pub fn decode(data: &[u8]) -> Result<BootstrapParams, containerd_shim_protos::protobuf::Error> {
        let mut p = BootstrapParams::default();
        let mut is = CodedInputStream::from_bytes(data);
        while let Some(tag) = is.read_raw_tag_or_eof()? {
            match tag {
                10 => p.instance_id = is.read_string()?,
                18 => p.namespace = is.read_string()?,
                24 => p.log_level = is.read_int32()?,
                34 => p.containerd_version = is.read_string()?,
                42 => p.containerd_ttrpc_address = is.read_string()?,
                50 => p.containerd_grpc_address = is.read_string()?,
                58 => p.containerd_binary = is.read_string()?,
                66 => {
                    let ext = is.read_bytes()?;
                    p.extensions.push(extension_value(&ext)?);
                }
                74 => p.socket_dir = Some(is.read_string()?),
                other => skip_field_for_tag(other, &mut is)?,
            }
        }
        Ok(p)
    }

    /// The message as containerd 2.3 writes it.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut os = CodedOutputStream::vec(&mut buf);
        let mut put = || -> Result<(), containerd_shim_protos::protobuf::Error> {
            for (n, s) in [
                (1, &self.instance_id),
                (2, &self.namespace),
                (4, &self.containerd_version),
                (5, &self.containerd_ttrpc_address),
                (6, &self.containerd_grpc_address),
                (7, &self.containerd_binary),
            ] {
                if !s.is_empty() {
                    os.write_string(n, s)?;
                }
            }
            if self.log_level != 0 {
                os.write_int32(3, self.log_level)?;
            }
            for a in &self.extensions {
                let mut ext = Vec::new();
                {
                    let mut e = CodedOutputStream::vec(&mut ext);
                    e.write_bytes(1, &a.write_to_bytes()?)?;
                    e.flush()?;
                }
                os.write_bytes(8, &ext)?;
            }
            if let Some(d) = &self.socket_dir {
                os.write_string(9, d)?;
            }
            os.flush()
        };
        put().expect("encoding into a Vec cannot fail");
        drop(os);
        buf
    }
}

/// `Extension { google.protobuf.Any value = 1; }`'s value.
fn extension_value(data: &[u8]) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    let mut any = Any::new();
    let mut is = CodedInputStream::from_bytes(data);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            10 => any = is.read_message()?,
            other => skip_field_for_tag(other, &mut is)?,
        }
    }
    Ok(any)
}

/// `BootstrapResult { version = 2, address, protocol = "ttrpc" }`. Its first byte is
/// the version's tag and its last one the protocol's `c`: containerd 2.3.0–2.3.4 trim
/// white space off the answer before decoding it, and neither end is white space.
pub fn encode_result(address: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        let put = |os: &mut CodedOutputStream<'_>| {
            os.write_int32(1, TASK_API_VERSION)?;
            os.write_string(2, address)?;
            os.write_string(3, "ttrpc")?;
            os.flush()
        };
        put(&mut os).expect("encoding into a Vec cannot fail");
    }
    buf
}

/// A `BootstrapResult` as containerd 2.3 reads it: (version, address, protocol).
#[cfg(test)]
pub fn decode_result(
    data: &[u8],
) -> Result<(i32, String, String), containerd_shim_protos::protobuf::Error> {
    let (mut version, mut address, mut protocol) = (0, String::new(), String::new());
    let mut is = CodedInputStream::from_bytes(data);
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        match tag {
            8 => version = is.read_int32()?,
            18 => address = is.read_string()?,
            26 => protocol = is.read_string()?,
            other => skip_field_for_tag(other, &mut is)?,
        }
    }
    Ok((version, address, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_any() -> Any {
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x0b/etc/x.toml".to_vec(),
            ..Default::default()
        }
    }

    fn params() -> BootstrapParams {
        BootstrapParams {
            instance_id: "c1".into(),
            namespace: "k8s.io".into(),
            log_level: -4,
            containerd_version: "v2.3.0".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_binary: "/usr/bin/containerd".into(),
            extensions: vec![options_any()],
            socket_dir: Some("/run/containerd/s".into()),
        }
    }

    #[test]
    fn params_round_trip() {
        let p = params();
        assert_eq!(BootstrapParams::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn the_new_protocol_is_recognised_by_the_id_and_namespace() {
        let data = params().encode();
        let input = Input::read(&data, "c1", "k8s.io");
        assert!(matches!(input, Input::Bootstrap(_)));
        assert_eq!(input.options(), Some(&options_any()));
        // Another id: the bytes are an old daemon's (an `Any` decodes as params too).
        assert!(matches!(
            Input::read(&data, "c2", "k8s.io"),
            Input::Legacy(_)
        ));
    }

    #[test]
    fn an_old_daemons_options_are_not_the_new_protocol() {
        let data = options_any().write_to_bytes().unwrap();
        let input = Input::read(&data, "c1", "k8s.io");
        assert_eq!(input, Input::Legacy(Some(options_any())));
        assert_eq!(input.answer("unix:///s/x"), b"unix:///s/x");
        assert_eq!(Input::read(b"", "c1", "k8s.io"), Input::Legacy(None));
    }

    #[test]
    fn the_result_decodes_and_survives_trimming() {
        let address = format!("unix:///run/containerd/s/{}", "a".repeat(64));
        let answer = Input::Bootstrap(Box::new(params())).answer(&address);
        assert_eq!(answer.trim_ascii(), &answer[..]);
        let (version, addr, protocol) = decode_result(&answer).unwrap();
        assert_eq!(
            (version, addr.as_str(), protocol.as_str()),
            (2, address.as_str(), "ttrpc")
        );
    }
}
