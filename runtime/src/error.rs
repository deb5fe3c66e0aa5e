//! The runtime's error type. The shim maps each variant to one ttrpc code, in one place.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A request the security policy refuses (a privileged container or exec).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0} is not implemented by stockade")]
    Unimplemented(&'static str),
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Backend(String),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl Error {
    /// The one mapping of runtime errors to ttrpc status codes: the shim's answers to
    /// containerd and the agent's answers to the host both use it, and
    /// [`from_code`](Self::from_code) reverses it on the host.
    pub fn ttrpc_code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Config { .. } => Code::INVALID_ARGUMENT,
            Error::PermissionDenied(_) => Code::PERMISSION_DENIED,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Io { .. } | Error::Backend(_) => Code::UNKNOWN,
        }
    }

    /// The message with its whole source chain, once (`context: cause: cause`): what
    /// containerd shows the user, and what the agent sends the host.
    pub fn chain(&self) -> String {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        msg
    }

    /// The ttrpc status the shim answers containerd with and the agent answers the host
    /// with: [`ttrpc_code`](Self::ttrpc_code) and [`chain`](Self::chain).
    pub fn to_status(&self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.ttrpc_code(), self.chain()))
    }

    /// A status code from the guest back into an error carrying `msg`; codes the
    /// mapping does not produce become [`Error::Backend`] with `other`.
    pub fn from_code(code: ttrpc::Code, msg: String, other: impl FnOnce(String) -> Error) -> Error {
        use ttrpc::Code;
        match code {
            Code::NOT_FOUND => Error::NotFound(msg),
            Code::ALREADY_EXISTS => Error::AlreadyExists(msg),
            Code::FAILED_PRECONDITION => Error::FailedPrecondition(msg),
            Code::INVALID_ARGUMENT => Error::InvalidArgument(msg),
            Code::PERMISSION_DENIED => Error::PermissionDenied(msg),
            Code::UNIMPLEMENTED => Error::Unimplemented("this call in the guest"),
            _ => other(msg),
        }
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io {
            context: "system call failed".into(),
            source: std::io::Error::from(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            Error::NotFound("x".into()),
            Error::AlreadyExists("x".into()),
            Error::FailedPrecondition("x".into()),
            Error::InvalidArgument("x".into()),
            Error::PermissionDenied("x".into()),
        ] {
            let back = Error::from_code(e.ttrpc_code(), "x".into(), Error::Backend);
            assert_eq!(back.ttrpc_code(), e.ttrpc_code());
        }
        let other = Error::from_code(ttrpc::Code::INTERNAL, "x".into(), Error::Backend);
        assert!(matches!(other, Error::Backend(_)));
    }

    #[test]
    fn the_status_carries_the_whole_chain() {
        let e = Error::io("open /x")(std::io::Error::from_raw_os_error(libc::ENOENT));
        match e.to_status() {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::UNKNOWN);
                assert!(s.message().starts_with("open /x: "), "{}", s.message());
                assert!(s.message().contains("No such file"), "{}", s.message());
            }
            other => panic!("not a status: {other:?}"),
        }
    }
}
