//! The VM backend: a QEMU microVM per pod, the Stockade agent as the guest's PID 1,
//! reached over vsock; container rootfs and bind-mount sources reach the guest through
//! one sandboxed virtiofsd per pod.
//!
//! The guest runs each container with the same runtime the host's container backend
//! uses; the host keeps each process's state and events (`runtime.rs`), forwards the
//! calls to the agent ([`AgentClient`]) and copies stdio between containerd's FIFOs and
//! one vsock stream per process stream.

pub mod agent;
pub mod cgroup;
pub mod network;
pub mod pod;
pub mod qemu;
pub mod sandbox;
pub mod share;
pub mod sizing;
pub mod vsock;
pub mod watched;

pub use agent::AgentClient;
pub use qemu::MicroVm;
pub use sandbox::Sandbox;
