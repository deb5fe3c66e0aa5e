//! Runtime errors become containerd's ttrpc statuses here, logged once (the status:
//! `Error::to_status`, shared with the guest agent).

use containerd_shim_protos::ttrpc;
use stockade_runtime::Error;

pub fn to_ttrpc(e: Error) -> ttrpc::Error {
    log::warn!(code:? = e.ttrpc_code(); "{}", e.chain());
    e.to_status()
}

pub trait IntoTtrpc<T> {
    fn rpc(self) -> ttrpc::Result<T>;
}

impl<T> IntoTtrpc<T> for Result<T, Error> {
    fn rpc(self) -> ttrpc::Result<T> {
        self.map_err(to_ttrpc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

    fn code(e: Error) -> Code {
        match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            _ => panic!("not a status"),
        }
    }

    #[test]
    fn codes_follow_containerd_expectations() {
        assert_eq!(code(Error::NotFound("x".into())), Code::NOT_FOUND);
        assert_eq!(code(Error::AlreadyExists("x".into())), Code::ALREADY_EXISTS);
        assert_eq!(
            code(Error::Unimplemented("Checkpoint")),
            Code::UNIMPLEMENTED
        );
        assert_eq!(
            code(Error::FailedPrecondition("x".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code(Error::InvalidArgument("x".into())),
            Code::INVALID_ARGUMENT
        );
    }
}
