//! The VM backend: a QEMU microVM per pod, the Stockade agent as the guest's PID 1,
//! reached over vsock; container rootfs and bind-mount sources reach the guest through
//! one sandboxed virtiofsd per pod.
//!
//! The guest runs each container with the same runtime the host's container backend
//! uses; the host keeps each process's state and events (`runtime.rs`), the pod's
//! backend (`pod.rs`) forwards the calls to the agent ([`AgentClient`]) and copies
//! stdio between containerd's FIFOs and one vsock stream per process stream. The
//! sandbox (`sandbox.rs`) boots a [`MicroVm`]: a [`hypervisor::Hypervisor`] (QEMU,
//! `qemu.rs`) plus the agent's handshake.

pub mod agent;
pub mod cgroup;
pub mod console;
pub mod forward;
pub mod hypervisor;
pub mod jail;
pub mod microvm;
pub mod network;
pub mod pod;
pub mod pool;
pub mod qemu;
pub mod sandbox;
pub mod share;
pub mod sizing;
pub mod vsock;
pub mod watched;

pub use agent::AgentClient;
pub use microvm::MicroVm;
pub use sandbox::Sandbox;
