//! The seam between a pod's sandbox and the VMM that runs its guest. QEMU's `microvm`
//! (`qemu.rs`) is the one implementation today; Cloud Hypervisor or Firecracker would
//! each be one more. The agent handshake is not the VMM's business (`microvm.rs`).

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::HypervisorConfig;
use crate::error::Result;
use crate::vm::vsock::Transport;

/// Resolves when the VMM process exits, whoever reaps it.
pub type ExitFuture = Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// The guest's NIC: a tap queue fd and the MAC it takes over.
pub struct Nic {
    pub fd: std::os::fd::RawFd,
    pub mac: String,
    /// A network namespace the VMM runs in (one Stockade made for hooks to configure).
    pub netns: Option<std::os::fd::RawFd>,
}

/// What to boot.
pub struct BootSpec<'a> {
    pub config: &'a HypervisorConfig,
    /// The VM's state dir. Every VMM writes the guest's serial console to
    /// `console.log` there (see [`console_tail`]).
    pub dir: &'a Path,
    /// Exported to the guest over virtio-fs when given.
    pub share: Option<&'a Path>,
    pub nic: Option<&'a Nic>,
    /// When the VMM and its device backends must be up.
    pub deadline: Instant,
    /// The VM's secret (`stockade_agent_protocol::AUTH_METADATA`): the VMM hands it to
    /// the guest where no other local user can read it (never on its command line).
    pub secret: &'a str,
    /// Whether the VM's processes die with the process that spawns them (a shim's VM);
    /// the warm pool's outlive it, because they are handed over to shims.
    pub die_with_parent: bool,
}

/// A booted VM given up by the process that runs it, for another to take over (the
/// warm pool's claim): nothing was stopped.
pub struct Handover {
    /// pidfds of the VM's host processes, named, the VMM first.
    pub processes: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// The console pipe's read end, unless the VMM closed it.
    pub console: Option<std::os::fd::OwnedFd>,
    pub transport: Transport,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Start the VMM and its device backends; the guest boots. On failure nothing is
    /// left running.
    async fn boot(spec: &BootSpec<'_>) -> Result<Self>
    where
        Self: Sized;

    /// The agent answered: drop what only the boot needed (the secret's file).
    fn guest_answered(&mut self) {}

    /// The host processes the VM runs, named: the VMM first, then its device backends.
    fn processes(&self) -> Vec<(&'static str, u32)>;

    /// How the host reaches the guest's vsock.
    fn transport(&self) -> &Transport;

    /// Resolves when the VMM exits.
    fn exited(&self) -> Result<ExitFuture>;

    /// Whether the VMM has exited already.
    fn has_exited(&self) -> bool;

    /// Wait up to `limit` for the VMM to stop by itself (the guest powered off).
    async fn exited_within(&mut self, limit: Duration) -> bool;

    /// Kill every process of the VM at once.
    async fn kill(&mut self);

    /// The VMM's and its backends' own logs, for an error message.
    fn logs(&self) -> String;

    /// Changes whenever the guest's console log grows, where the console is drained
    /// by this process (see [`ConsoleLogger::logged`](crate::vm::console::ConsoleLogger::logged)).
    fn console_logged(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Give the VM up without stopping it: see [`Handover`].
    async fn hand_over(self: Box<Self>) -> Result<Handover>;
}

const CONSOLE_TAIL_LINES: usize = 25;
/// Characters kept of each tail line: the guest chooses how long its lines are.
const CONSOLE_TAIL_WIDTH: usize = 240;

/// The last lines of the guest console in `dir`, for error messages (printable: the
/// guest wrote them).
pub fn console_tail(dir: &Path) -> String {
    let text = crate::vm::console::read_all(dir);
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail: Vec<String> = lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..]
        .iter()
        .map(|l| match l.char_indices().nth(CONSOLE_TAIL_WIDTH) {
            Some((at, _)) => format!("{}[...]", &l[..at]),
            None => l.to_string(),
        })
        .collect();
    crate::vm::console::printable(&tail.join("\n"))
}
