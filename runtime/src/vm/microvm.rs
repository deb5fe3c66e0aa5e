//! One guest with its agent: a [`Hypervisor`] booted, then the agent's version
//! handshake over vsock within the boot timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::HypervisorConfig;
use crate::error::{Error, Result};
use crate::vm::agent::AgentClient;
use crate::vm::hypervisor::{BootSpec, ExitFuture, Handover, Hypervisor, Nic, console_tail};
use crate::vm::qemu::Qemu;

pub struct MicroVm {
    pub dir: PathBuf,
    pub agent: Arc<AgentClient>,
    vmm: Box<dyn Hypervisor>,
    secret: String,
}

/// A booted VM as it changes hands (the warm pool's claim): its processes and console
/// ([`Handover`]), and the secret its agent demands.
pub struct HandedOver {
    pub vmm: Handover,
    pub secret: String,
}

impl MicroVm {
    /// Boot a guest with its state in `dir` and complete the agent handshake within
    /// `boot_timeout_secs`. On any failure nothing is left running and `dir` is removed.
    /// With `share`, the VMM exports that directory to the guest over virtio-fs.
    pub async fn boot(
        cfg: &HypervisorConfig,
        dir: &Path,
        share: Option<&Path>,
        nic: Option<&Nic>,
    ) -> Result<MicroVm> {
        Self::boot_with_parent(cfg, dir, share, nic, true).await
    }

    /// As [`boot`](Self::boot); with `die_with_parent` false the VM's processes outlive
    /// this process (the warm pool's VMs, handed over to shims).
    pub async fn boot_with_parent(
        cfg: &HypervisorConfig,
        dir: &Path,
        share: Option<&Path>,
        nic: Option<&Nic>,
        die_with_parent: bool,
    ) -> Result<MicroVm> {
        let mut needed = vec![("kernel", &cfg.kernel), ("initrd", &cfg.initrd)];
        if share.is_some() {
            needed.push(("virtiofsd", &cfg.virtiofsd));
        }
        for (what, path) in needed {
            if !path.exists() {
                return Err(Error::FailedPrecondition(format!(
                    "VM {what} {} does not exist (run packaging/setup.sh)",
                    path.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let secret = new_secret()?;
        let spec = BootSpec {
            config: cfg,
            dir,
            share,
            nic,
            deadline: Instant::now() + Duration::from_secs(cfg.boot_timeout_secs),
            secret: &secret,
            die_with_parent,
        };
        let result = Self::boot_with::<Qemu>(&spec).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    async fn boot_with<H: Hypervisor + 'static>(spec: &BootSpec<'_>) -> Result<MicroVm> {
        let mut vmm = H::boot(spec).await?;
        match handshake(&mut vmm, spec).await {
            Ok(agent) => {
                vmm.guest_answered();
                Ok(MicroVm {
                    dir: spec.dir.to_path_buf(),
                    agent: Arc::new(agent),
                    vmm: Box::new(vmm),
                    secret: spec.secret.to_string(),
                })
            }
            Err(e) => {
                vmm.kill().await;
                Err(e)
            }
        }
    }

    /// Take over a VM another process booted, its state dir now `dir`: its agent must
    /// answer the version handshake within `limit`, or the VM is killed.
    pub async fn adopt(dir: &Path, given: HandedOver, limit: Duration) -> Result<MicroVm> {
        let mut vmm = Qemu::adopt(dir, given.vmm)?;
        let agent = if vmm.has_exited() {
            Err(Error::Backend("the handed-over VM has stopped".into()))
        } else {
            AgentClient::connect(vmm.transport(), &given.secret, limit).await
        };
        match agent {
            Ok(agent) => Ok(MicroVm {
                dir: dir.to_path_buf(),
                agent: Arc::new(agent),
                vmm: Box::new(vmm),
                secret: given.secret,
            }),
            Err(e) => {
                vmm.kill().await;
                Err(e)
            }
        }
    }

    /// Give the VM up without stopping it, for another process to
    /// [`adopt`](Self::adopt).
    pub async fn hand_over(self) -> Result<HandedOver> {
        Ok(HandedOver {
            vmm: self.vmm.hand_over().await?,
            secret: self.secret,
        })
    }

    /// Whether the VMM has exited.
    pub fn has_exited(&self) -> bool {
        self.vmm.has_exited()
    }

    /// The VMM's pid.
    pub fn qemu_pid(&self) -> u32 {
        self.vmm.processes().first().map_or(0, |p| p.1)
    }

    /// The pids of every host process this VM runs (the VMM and its device backends).
    pub fn helper_pids(&self) -> Vec<u32> {
        self.vmm.processes().into_iter().map(|p| p.1).collect()
    }

    /// The vhost-user vsock backend's pid (none with kernel vhost-vsock).
    pub fn vsock_pid(&self) -> Option<u32> {
        self.vmm
            .processes()
            .into_iter()
            .find(|p| p.0 == "vhost-device-vsock")
            .map(|p| p.1)
    }

    /// A future that resolves when the VMM exits, whoever reaps it.
    pub fn qemu_exit(&self) -> Result<ExitFuture> {
        self.vmm.exited()
    }

    /// Kill every process of the VM at once (the guest is gone or must go); keeps the
    /// state dir.
    pub async fn kill(&mut self) {
        self.vmm.kill().await;
    }

    /// Ask the agent to end the VM; kill what does not stop in time; remove the state dir.
    pub async fn shutdown(self) -> Result<()> {
        let dir = self.dir.clone();
        let asked = self.shutdown_keep_dir().await;
        std::fs::remove_dir_all(&dir).map_err(Error::io(format!("remove {}", dir.display())))?;
        asked
    }

    /// As [`shutdown`](Self::shutdown), but the state dir stays.
    pub async fn shutdown_keep_dir(mut self) -> Result<()> {
        let asked = self.agent.shutdown().await;
        if asked.is_ok() {
            self.vmm.exited_within(Duration::from_secs(10)).await;
        }
        // What did not stop by itself (the device backends always) is killed.
        self.vmm.kill().await;
        asked
    }
}

/// The agent's version handshake, by `spec.deadline`. The guest is untrusted: its
/// console's "serving" line only says when to try; the handshake is what counts.
async fn handshake(vmm: &mut impl Hypervisor, spec: &BootSpec<'_>) -> Result<AgentClient> {
    let mut logged = vmm.console_logged();
    loop {
        let left = spec.deadline.saturating_duration_since(Instant::now());
        if vmm.has_exited() || left.is_zero() {
            let why = if vmm.has_exited() {
                "the VMM exited".to_string()
            } else {
                format!(
                    "the agent did not answer within {}s",
                    spec.config.boot_timeout_secs
                )
            };
            return Err(Error::Backend(format!(
                "VM boot failed: {why}\n--- guest console (tail) ---\n{}\n{}",
                console_tail(spec.dir),
                vmm.logs()
            )));
        }
        // Connection attempts made while the guest boots pile up in the vsock device's
        // queue for a guest that cannot answer them yet: wait for the console's hint,
        // looked for again whenever the console grows (and at least every 20 ms).
        if !agent_announced(spec.dir) {
            let wait = Duration::from_millis(20);
            match logged.as_mut() {
                Some(rx) => {
                    if let Ok(Err(_)) = tokio::time::timeout(wait, rx.changed()).await {
                        // The console's drain has ended: polling is what is left.
                        logged = None;
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
            continue;
        }
        let limit = left.min(Duration::from_secs(2));
        match AgentClient::connect(vmm.transport(), spec.secret, limit).await {
            Ok(a) => return Ok(a),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A new VM secret: 32 random bytes as hex.
fn new_secret() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; stockade_agent_protocol::SECRET_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::io("read /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether the guest console shows the agent's "serving" line.
fn agent_announced(dir: &Path) -> bool {
    std::fs::read(dir.join("console.log"))
        .map(|c| {
            c.windows(AGENT_SERVING.len())
                .any(|w| w == AGENT_SERVING.as_bytes())
        })
        .unwrap_or(false)
}

/// What the agent prints once it listens (agent/src/main.rs).
const AGENT_SERVING: &str = "msg=\"serving\"";
