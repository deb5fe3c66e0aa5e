//! The VM backend (in progress): a QEMU microVM per sandbox, the Stockade agent as the
//! guest's PID 1, reached over vsock.
//!
//! What exists: booting the guest assets under KVM or TCG with a vhost-user vsock
//! backend, the hybrid-vsock transport, and the agent client with the version
//! handshake. Containers in the guest, virtio-fs and networking come next; until
//! then selection refuses to run a VM sandbox (see `select`).

pub mod agent;
pub mod process;
pub mod qemu;
pub mod vsock;

pub use agent::AgentClient;
pub use qemu::MicroVm;
