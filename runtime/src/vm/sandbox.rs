//! One pod's VM on the host: the microVM and its helpers, the share, the agent, and
//! the event pump that turns guest exits and OOM kills into host events.

use std::hash::{Hash, Hasher};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use stockade_agent_protocol::asynchronous::agent::guest_event::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::vm::agent::AgentClient;
use crate::vm::cgroup::PodCgroup;
use crate::vm::forward::PortForwarder;
use crate::vm::hypervisor::Nic;
use crate::vm::microvm::MicroVm;
use crate::vm::network::{self, PodNetwork};
use crate::vm::share::{Share, unmount_under};

/// The exit code of every process of a VM that died.
pub const VM_DIED_EXIT: i32 = 255;
const PIDS_FILE: &str = "pids";
/// `<namespace>\n<sandbox id>\n`: lets the debugging CLI find a sandbox by its id.
const ID_FILE: &str = "id";

pub struct Sandbox {
    id: String,
    dir: PathBuf,
    share: Share,
    agent: Arc<AgentClient>,
    /// Exit codes by guest pid, fed by the event pump.
    exits: Exits,
    vm: tokio::sync::Mutex<Option<MicroVm>>,
    /// The host cgroup the VM's processes are in, removed at teardown.
    cgroup: Option<PodCgroup>,
    /// The pod network wired to the VM, and the registry its `ip`/`tc` exits go to.
    network: Option<(PodNetwork, Exits)>,
    /// Port forwarding from the pod's network namespace (CRI pods).
    forwarder: Mutex<Option<PortForwarder>>,
    dead: watch::Sender<bool>,
    pump: Mutex<Option<JoinHandle<()>>>,
    /// The process asleep in a [`NetRequest::Fresh`] namespace, and its pid.
    holder: tokio::sync::Mutex<Option<crate::vm::watched::Watched>>,
    holder_pid: Option<u32>,
    /// The guest pid the holder stands for (the container's init).
    guest_init: Mutex<Option<u32>>,
    /// The network wired at start ([`Sandbox::wire_late`]), for teardown.
    late: Mutex<Option<network::NetConfig>>,
    /// A claimed VM's tap on its way into the pod's network ([`Sandbox::wired`]).
    wiring: tokio::sync::Mutex<Wiring>,
}

/// A claimed warm-pool VM's tap being moved into the pod's network namespace and
/// mirrored onto the pod's interface: host work (two `ip`/`tc` runs) that goes on while
/// the guest creates the sandbox. Nothing in the pod starts before it is done
/// ([`Sandbox::wired`]), and teardown waits for it before undoing it.
enum Wiring {
    Pending(tokio::task::JoinHandle<Result<()>>),
    Done,
    Failed(String),
}

impl Wiring {
    /// Wait until it is done or failed (a caller that gives up leaves it pending).
    async fn finish(&mut self) {
        if let Wiring::Pending(h) = self {
            *self = match h.await {
                Ok(Ok(())) => Wiring::Done,
                Ok(Err(e)) => Wiring::Failed(e.to_string()),
                Err(e) => Wiring::Failed(e.to_string()),
            };
        }
    }
}

/// How a sandbox gets its network.
pub enum NetRequest {
    /// No network namespace of its own to wire (only loopback in the guest).
    None,
    /// A new namespace and nothing (yet) to configure it: `ctr run`, or Docker 28 and
    /// later, which configure the namespace of the task's pid between create and start.
    /// Stockade makes the namespace with the VM's tap in it, reports a process asleep
    /// in it as the container's pid ([`Sandbox::host_pid`]), and wires whatever the
    /// namespace holds at start ([`Sandbox::wire_late`]).
    Fresh,
    /// Join this namespace (CNI's, or one Docker made), whose interface the VM takes over.
    Join(PathBuf),
    /// A new namespace that the spec's hooks configure (Docker's libnetwork-setkey):
    /// Stockade makes it, runs QEMU in it, runs the hooks on the host, then wires it.
    Hooks {
        hooks: Vec<oci_spec::runtime::Hook>,
        bundle: PathBuf,
    },
}

/// Where the pod's VM sits on the host: its network, and the cgroup its processes join.
pub struct PodHost {
    pub network: NetRequest,
    pub cgroup: Option<PodCgroup>,
}

/// `<state_dir>/vm/<16 hex>`: short, because QEMU, virtiofsd and the vsock backend put
/// Unix sockets in it (108 bytes at most), and a function of (namespace, sandbox id)
/// alone, so the shim's `delete` finds it after a crash.
pub fn sandbox_dir(state_dir: &Path, namespace: &str, id: &str) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    (namespace, id).hash(&mut h);
    state_dir.join("vm").join(format!("{:016x}", h.finish()))
}

impl Sandbox {
    /// Boot the pod's VM, export the share, prepare the guest. `on_oom` receives the id
    /// of every container the guest reports OOM-killed.
    /// `host`: the pod's network and cgroup (see [`PodHost`]); `host_exits`: the
    /// process's exit registry (for `ip`, `tc` and hooks).
    pub async fn boot(
        config: &Config,
        namespace: &str,
        id: &str,
        hostname: &str,
        host: PodHost,
        host_exits: &Exits,
        on_oom: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<Arc<Sandbox>> {
        let dir = sandbox_dir(&config.runtime.state_dir, namespace, id);
        if dir.exists() {
            // A crashed shim's leftovers: nothing in it is trusted or reused.
            cleanup_dir(&dir)?;
        }
        let PodHost {
            network: network_req,
            cgroup,
        } = host;
        let booting = std::time::Instant::now();
        let claimed = match &network_req {
            NetRequest::Join(_) | NetRequest::None | NetRequest::Fresh => {
                claim_from_pool(config, id, &dir).await
            }
            NetRequest::Hooks { .. } => {
                // The hooks find the namespace to configure through QEMU's pid, and a
                // pool VM's QEMU sits in the pool's namespace for good.
                log::info!(sandbox = id; "no VM from the warm pool: the spec's network hooks need a VM started in their namespace: booting one");
                None
            }
        };
        let from_pool = claimed.is_some();
        let fresh = matches!(network_req, NetRequest::Fresh);
        let mut net: Option<PodNetwork> = None;
        let mut wiring = None;
        let (share, started) = match claimed {
            Some(c) => {
                let share = Share::adopt(&dir.join("share"));
                let started = Self::take_claimed(*c, &dir, network_req, host_exits, &mut net)
                    .await
                    .map(|(vm, w)| {
                        wiring = w;
                        vm
                    });
                (share, started)
            }
            None => {
                let share = new_vm_dir(&dir)?;
                let started =
                    Self::start_vm(config, id, &dir, &share, network_req, host_exits, &mut net)
                        .await;
                (share, started)
            }
        };
        let _ = std::fs::write(dir.join(ID_FILE), format!("{namespace}\n{id}\n"));
        let mut holder = None;
        let started = match started {
            Ok(mut vm) if fresh => match net.as_ref().map(|n| network::spawn_holder(&n.netns)) {
                Some(Err(e)) => {
                    vm.kill().await;
                    Err(e)
                }
                Some(Ok(h)) => {
                    holder = Some(h);
                    Ok(vm)
                }
                None => Ok(vm),
            },
            other => other,
        };
        let holder_pid = holder.as_ref().map(crate::vm::watched::Watched::pid);
        let started = match (started, &cgroup) {
            (Ok(mut vm), Some(cg)) => match cg.place(&dir, &with(vm.helper_pids(), holder_pid)) {
                Ok(()) => Ok(vm),
                Err(e) => {
                    vm.kill().await;
                    Err(e)
                }
            },
            (started, _) => started,
        };
        let vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                if let Some(mut h) = holder.take() {
                    h.kill().await;
                }
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                if let Some(w) = wiring.as_mut() {
                    w.finish().await;
                }
                if let Some(n) = &net {
                    network::detach(n, host_exits);
                }
                let _ = share.destroy();
                let _ = cleanup_dir(&dir);
                return Err(e);
            }
        };
        log::debug!(sandbox = id, ms = booting.elapsed().as_millis() as u64, from_pool; "VM booted, agent answered");
        record_pids(&dir, &with(vm.helper_pids(), holder_pid));
        let agent = vm.agent.clone();
        let qemu_exit = vm.qemu_exit();
        let sandbox = Arc::new(Sandbox {
            id: id.into(),
            dir: dir.clone(),
            share,
            agent: agent.clone(),
            exits: Exits::default(),
            vm: tokio::sync::Mutex::new(Some(vm)),
            cgroup,
            network: net.map(|n| (n, host_exits.clone())),
            forwarder: Mutex::new(None),
            dead: watch::channel(false).0,
            pump: Mutex::new(None),
            holder: tokio::sync::Mutex::new(holder),
            holder_pid,
            guest_init: Mutex::new(None),
            late: Mutex::new(None),
            wiring: tokio::sync::Mutex::new(wiring.unwrap_or(Wiring::Done)),
        });
        let guest_config = guest_config(config)?;
        let creating = async {
            match qemu_exit {
                Ok(exit) => agent
                    .create_sandbox(
                        id,
                        hostname,
                        guest_config,
                        sandbox
                            .network
                            .as_ref()
                            .and_then(|(n, _)| n.config.as_ref()),
                        !from_pool,
                    )
                    .await
                    .map(|_| exit),
                Err(e) => Err(e),
            }
        };
        // A namespace the spec names (CNI's) is where containerd dials for PortForward.
        // Without the forwarder the pod still runs; only port-forward is refused. Its
        // listener (host work) is made while the guest creates the sandbox.
        let forwarding = async {
            match sandbox.network.as_ref().filter(|(n, _)| !n.owned) {
                Some((net, exits)) => {
                    Some(PortForwarder::start(id, &net.netns, agent.clone(), exits).await)
                }
                None => None,
            }
        };
        let (ready, forwarder) = tokio::join!(creating, forwarding);
        match forwarder {
            Some(Ok(f)) => *sandbox.forwarder.lock().expect("forwarder lock") = Some(f),
            Some(Err(e)) => {
                log::warn!(sandbox = id, error:% = e; "no port forwarding into this pod")
            }
            None => {}
        }
        let qemu_exit = match ready {
            Ok(exit) => exit,
            Err(e) => {
                let _ = sandbox.teardown().await;
                return Err(e);
            }
        };
        let pump = tokio::spawn(pump(Arc::downgrade(&sandbox), qemu_exit, on_oom));
        *sandbox.pump.lock().expect("pump lock") = Some(pump);
        log::info!(sandbox = id, dir:% = dir.display(); "VM sandbox ready");
        Ok(sandbox)
    }

    /// A warm-pool VM, handed over and its state dir renamed to `dir`: the shim's from
    /// now on (its processes leave the pool service's cgroups for the shim's), its tap
    /// moved into the pod's namespace and wired as [`start_vm`](Self::start_vm) wires one.
    async fn take_claimed(
        claimed: crate::vm::pool::Claimed,
        dir: &Path,
        network_req: NetRequest,
        host_exits: &Exits,
        net: &mut Option<PodNetwork>,
    ) -> Result<(MicroVm, Option<Wiring>)> {
        let crate::vm::pool::Claimed {
            vm,
            tap,
            pool_netns,
        } = claimed;
        // The agent's handshake (guest work) overlaps reading the pod's network (host
        // work); moving and mirroring the tap goes on in the background (see
        // [`Wiring`]). A failure of either undoes both (the caller detaches `net`).
        let vm_dir = dir.join("vm");
        let adopting = MicroVm::adopt(&vm_dir, vm, crate::vm::pool::ADOPT_TIMEOUT);
        let networking = async {
            let ex = host_exits.clone();
            match network_req {
                NetRequest::Join(path) => {
                    let (ns, ex2) = (path.clone(), ex.clone());
                    let config =
                        tokio::task::spawn_blocking(move || network::read_config(&ns, &ex2))
                            .await
                            .map_err(|e| Error::Backend(e.to_string()))??;
                    *net = Some(PodNetwork {
                        netns: path.clone(),
                        owned: false,
                        config: config.clone(),
                    });
                    Ok(Some(tokio::task::spawn_blocking(move || {
                        let mtu = config.as_ref().map(|c| c.interface.mtu);
                        network::claim_tap(&pool_netns, &tap, &path, mtu, &ex)?;
                        match &config {
                            Some(c) => network::mirror(&path, &c.interface, false, &ex),
                            None => Ok(()),
                        }
                    })))
                }
                NetRequest::Fresh => {
                    // Wired at start, once whoever made the namespace configured it.
                    let path = own_netns(dir, net)?;
                    Ok(Some(tokio::task::spawn_blocking(move || {
                        network::claim_tap(&pool_netns, &tap, &path, None, &ex)
                    })))
                }
                NetRequest::None => {
                    // Only loopback in the guest: its NIC loses its backend for good.
                    tokio::task::spawn_blocking(move || {
                        network::drop_parked_tap(&pool_netns, &tap, &ex)
                    })
                    .await
                    .map_err(|e| Error::Backend(e.to_string()))??;
                    Ok(None)
                }
                NetRequest::Hooks { .. } => Err(Error::Backend(
                    "a claimed VM cannot serve network hooks".into(),
                )),
            }
        };
        let (adopted, networked) = tokio::join!(adopting, networking);
        let wiring = match networked {
            Ok(w) => w.map(Wiring::Pending),
            Err(e) => {
                if let Ok(mut vm) = adopted {
                    vm.kill().await;
                }
                return Err(e);
            }
        };
        match adopted {
            Ok(vm) => {
                crate::vm::cgroup::join_own(&vm.helper_pids());
                Ok((vm, wiring))
            }
            Err(e) => {
                if let Some(mut w) = wiring {
                    w.finish().await;
                }
                Err(e)
            }
        }
    }

    /// The network side and the VM: everything [`boot`](Self::boot) undoes when it fails
    /// (`net` is set as soon as there is a network to undo).
    async fn start_vm(
        config: &Config,
        id: &str,
        dir: &Path,
        share: &Share,
        network_req: NetRequest,
        host_exits: &Exits,
        net: &mut Option<PodNetwork>,
    ) -> Result<MicroVm> {
        let mut hooks = None;
        match network_req {
            NetRequest::None => {}
            NetRequest::Fresh => {
                own_netns(dir, net)?;
            }
            NetRequest::Join(path) => {
                *net = Some(PodNetwork {
                    netns: path,
                    owned: false,
                    config: None,
                })
            }
            NetRequest::Hooks { hooks: h, bundle } => {
                own_netns(dir, net)?;
                hooks = Some((h, bundle));
            }
        }
        // The tap exists before QEMU (which gets its fd); a namespace given by the spec
        // already has the pod's interface: its MAC (the NIC's) is read now, and the tap is
        // mirrored onto it while the VM boots.
        let mut tap = None;
        let mut netns_file = None;
        let mut mirroring = None;
        if let Some(n) = net.as_mut() {
            let (ns, ex) = (n.netns.clone(), host_exits.clone());
            let owned = n.owned;
            let (t, c, f) = tokio::task::spawn_blocking(move || {
                let (tap, config) = if owned {
                    (network::create_tap(&ns, &ex)?, None)
                } else {
                    let tap = network::create_tap_down(&ns, network::TAP_NAME)?;
                    (tap, network::read_config(&ns, &ex)?)
                };
                let file = std::fs::File::open(&ns).map_err(Error::io("open netns"))?;
                Ok::<_, Error>((tap, config, file))
            })
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
            if let Some(c) = &c {
                let (ns, ex, interface) =
                    (n.netns.clone(), host_exits.clone(), c.interface.clone());
                mirroring = Some(tokio::task::spawn_blocking(move || {
                    network::mirror(&ns, &interface, true, &ex)
                }));
            }
            tap = Some(t);
            n.config = c;
            netns_file = Some(f);
        }
        let nic = tap.as_ref().map(|t| {
            use std::os::fd::AsRawFd;
            let owned = net.as_ref().is_some_and(|n| n.owned);
            Nic {
                fd: t.as_raw_fd(),
                mac: net
                    .as_ref()
                    .and_then(|n| n.config.as_ref())
                    .map(|c| c.interface.mac.clone())
                    .unwrap_or_else(|| "02:00:00:00:00:01".into()),
                netns: netns_file.as_ref().filter(|_| owned).map(|f| f.as_raw_fd()),
            }
        });
        let booted = MicroVm::boot(
            &config.hypervisor,
            &dir.join("vm"),
            Some(share.path()),
            nic.as_ref(),
        )
        .await;
        // QEMU holds the tap now (or failed): the tap lives exactly as long as QEMU.
        drop(tap);
        drop(netns_file);
        // Done before anything is undone (the caller detaches the network on failure).
        let mirrored = match mirroring {
            Some(m) => m
                .await
                .map_err(|e| Error::Backend(e.to_string()))
                .and_then(|r| r),
            None => Ok(()),
        };
        let mut vm = booted?;
        if let Err(e) = mirrored {
            vm.kill().await;
            return Err(e);
        }
        // Hooks (Docker's libnetwork) configure the namespace QEMU sits in; then wire it.
        if let (Some((hooks, bundle)), Some(n)) = (hooks, net.as_mut()) {
            let state = serde_json::json!({
                "ociVersion": "1.0.2",
                "id": id,
                "status": "created",
                "pid": vm.qemu_pid(),
                "bundle": bundle.display().to_string(),
            })
            .to_string();
            let (ns, ex) = (n.netns.clone(), host_exits.clone());
            let wired = tokio::task::spawn_blocking(move || {
                network::run_hooks(&hooks, &state, &ex)?;
                network::wire(&ns, &ex)
            })
            .await
            .map_err(|e| Error::Backend(e.to_string()))
            .and_then(|r| r);
            match wired {
                Ok(c) => n.config = c,
                Err(e) => {
                    vm.kill().await;
                    return Err(e);
                }
            }
        }
        Ok(vm)
    }

    /// Wait for a claimed VM's tap to be in the pod's network and mirrored ([`Wiring`]);
    /// its error, then and at every later call.
    async fn wired(&self) -> Result<()> {
        let mut wiring = self.wiring.lock().await;
        wiring.finish().await;
        match &*wiring {
            Wiring::Failed(e) => Err(Error::Backend(format!(
                "the pod's network for the VM from the warm pool: {e}"
            ))),
            _ => Ok(()),
        }
    }

    /// Record the guest pid of the sandbox's container's init: with a
    /// [`NetRequest::Fresh`] namespace, the host process asleep there stands for it.
    pub fn note_guest_init(&self, pid: u32) {
        if self.holder_pid.is_some() {
            *self.guest_init.lock().expect("guest init lock") = Some(pid);
        }
    }

    /// The pid to report for guest process `pid`: the holder's for the init it stands
    /// for (containerd's clients look it up on the host), else the guest's.
    pub fn reported_pid(&self, pid: u32) -> u32 {
        match (
            self.holder_pid,
            *self.guest_init.lock().expect("guest init lock"),
        ) {
            (Some(host), Some(init)) if init == pid => host,
            _ => pid,
        }
    }

    /// Wire a [`NetRequest::Fresh`] namespace that was configured after the VM booted
    /// (Docker 28 and later configure it between create and start), and give the guest
    /// its network. Nothing to do when the namespace holds no configured interface
    /// (`ctr run`), or when it was wired before.
    pub async fn wire_late(&self) -> Result<()> {
        self.wired().await?;
        let Some((net, exits)) = self.network.as_ref().filter(|_| self.holder_pid.is_some()) else {
            return Ok(());
        };
        if self.late.lock().expect("late lock").is_some() {
            return Ok(());
        }
        let (ns, ex) = (net.netns.clone(), exits.clone());
        let wired = tokio::task::spawn_blocking(move || network::wire(&ns, &ex))
            .await
            .map_err(|e| Error::Backend(e.to_string()))??;
        let Some(config) = wired else {
            return Ok(());
        };
        *self.late.lock().expect("late lock") = Some(config.clone());
        self.agent.configure_network(&config).await?;
        log::info!(sandbox = self.id.as_str(), addresses:? = config.interface.addresses; "network configured after create: wired to the VM");
        Ok(())
    }

    /// The sandbox's state dir (`<state_dir>/vm/<hash>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace the VM is wired to, if any.
    pub fn netns(&self) -> Option<&Path> {
        self.network.as_ref().map(|(n, _)| n.netns.as_path())
    }

    /// The agent in the guest.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The exit code of guest process `pid`, once the guest reports it.
    pub fn subscribe_exit(&self, pid: u32) -> tokio::sync::oneshot::Receiver<i32> {
        self.exits.subscribe(pid as i32)
    }

    /// Bring a container's rootfs and volumes into the share, rewriting `spec` to the
    /// guest's paths (see [`Share::add_container`]).
    pub fn add_container(
        &self,
        id: &str,
        spec: &mut oci_spec::runtime::Spec,
        bundle: &Path,
    ) -> Result<()> {
        self.share.add_container(id, spec, bundle)
    }

    /// Take a container's rootfs and volumes out of the share.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.share.remove_container(id)
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("vm").join("console.log")
    }

    /// The guest cannot be trusted to stop what it runs (it ignored SIGKILL, failed a
    /// Delete, or stopped answering): kill the VM. Every process of the pod is reported
    /// exited with [`VM_DIED_EXIT`] at once; the state stays for
    /// [`teardown`](Self::teardown).
    pub async fn stop_guest(&self, why: &str) {
        log::error!(sandbox = self.id.as_str(), why; "stopping the VM: the guest did not cooperate");
        self.mark_dead().await;
    }

    /// The VM is gone or must go: mark it dead, kill what is left of it, and report
    /// every process of the pod exited with [`VM_DIED_EXIT`].
    async fn mark_dead(&self) {
        self.dead.send_replace(true);
        if let Some(vm) = self.vm.lock().await.as_mut() {
            vm.kill().await;
        }
        self.exits.close(VM_DIED_EXIT);
    }

    /// Stop the guest and every helper, unmount and remove everything.
    pub async fn teardown(&self) -> Result<()> {
        if let Some(p) = self.pump.lock().expect("pump lock").take() {
            p.abort();
        }
        // No container is left and the guest keeps nothing the host needs (container
        // writes went to the share), so there is nothing to flush: stop it outright.
        if let Some(mut vm) = self.vm.lock().await.take() {
            vm.kill().await;
        }
        if let Some(mut h) = self.holder.lock().await.take() {
            h.kill().await;
        }
        if let Some(cg) = self.cgroup.clone() {
            let removed = tokio::task::spawn_blocking(move || cg.remove()).await;
            if let Ok(Err(e)) = removed {
                log::warn!(sandbox = self.id.as_str(), error:% = e; "VM cgroup left");
            }
        }
        // Undone below only once done (the VM is gone: a tap still to move is gone too).
        let _ = self.wired().await;
        if let Some((net, exits)) = &self.network {
            if let Some(f) = self.forwarder.lock().expect("forwarder lock").take() {
                f.stop(exits);
            }
            let late = self.late.lock().expect("late lock").take();
            match late {
                Some(config) => network::detach(
                    &PodNetwork {
                        netns: net.netns.clone(),
                        owned: net.owned,
                        config: Some(config),
                    },
                    exits,
                ),
                None => network::detach(net, exits),
            }
        }
        self.exits.close(VM_DIED_EXIT);
        log::debug!(sandbox = self.id.as_str(), console:% = crate::vm::hypervisor::console_tail(&self.dir.join("vm")); "guest console at teardown");
        self.share.destroy()?;
        std::fs::remove_dir_all(&self.dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(Error::io(format!("remove {}", self.dir.display())))?;
        log::info!(sandbox = self.id.as_str(); "VM sandbox removed");
        Ok(())
    }

    /// Connect a process's stdio: one vsock stream per pipe end the host side holds.
    /// `fds` are the process's ends of the host pipes (stdin's read end, the outputs'
    /// write ends), as the container backend would hand them to the process.
    pub async fn attach_stdio(
        &self,
        id: &str,
        exec_id: &str,
        fds: [Option<OwnedFd>; 3],
    ) -> Result<()> {
        for (i, fd) in fds.into_iter().enumerate() {
            let Some(fd) = fd else { continue };
            let name = ["stdin", "stdout", "stderr"][i];
            let stream = self.agent.stdio_stream(id, exec_id, name).await?;
            let (mut rd, mut wr) = tokio::io::split(stream);
            if i == 0 {
                let mut src = pipe::Receiver::from_owned_fd(fd).map_err(Error::io("stdin pipe"))?;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = src.read(&mut buf).await {
                        if n == 0 || wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // The guest reads this half-close as the process's end of file.
                    let _ = wr.shutdown().await;
                    drop(rd);
                });
            } else {
                let mut dst = pipe::Sender::from_owned_fd(fd).map_err(Error::io("output pipe"))?;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 || dst.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    drop(wr);
                });
            }
        }
        Ok(())
    }
}

/// What the guest runs containers with: the host's `[container]` hardening, alone (the
/// host's other sections mean nothing in the guest and may be newer than its agent),
/// with VM mode's privileged policy (`[hypervisor] allow_privileged`) in place of
/// container mode's.
pub(crate) fn guest_config(config: &Config) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Guest {
        container: crate::config::ContainerConfig,
    }
    let container = crate::config::ContainerConfig {
        allow_privileged: config.hypervisor.allow_privileged,
        ..config.container.clone()
    };
    toml::to_string(&Guest { container }).map_err(|e| Error::Backend(format!("guest config: {e}")))
}

/// Guest exits and OOM kills into host events; when qemu dies, every process of the
/// VM exits with [`VM_DIED_EXIT`] and the helpers are stopped.
async fn pump(
    sandbox: Weak<Sandbox>,
    qemu_exit: impl std::future::Future<Output = ()> + Send + 'static,
    on_oom: impl Fn(String) + Send + Sync + 'static,
) {
    tokio::pin!(qemu_exit);
    let mut acked = 0u64;
    loop {
        let Some(sb) = sandbox.upgrade() else { return };
        let agent = sb.agent.clone();
        drop(sb);
        tokio::select! {
            _ = &mut qemu_exit => break,
            got = agent.events(acked) => match got {
                Ok(events) => {
                    let Some(sb) = sandbox.upgrade() else { return };
                    for e in events {
                        if e.seq <= acked {
                            continue;
                        }
                        acked = e.seq;
                        match e.kind.enum_value() {
                            Ok(Kind::EXIT) => sb.exits.notify(e.pid as i32, e.exit_code as i32),
                            Ok(Kind::OOM) => on_oom(e.container_id),
                            Err(_) => log::warn!(sandbox = sb.id.as_str(); "unknown guest event"),
                        }
                    }
                }
                Err(e) => {
                    log::debug!(error:% = e; "agent events");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    let Some(sb) = sandbox.upgrade() else { return };
    log::error!(sandbox = sb.id.as_str(), console:% = sb.console_log().display(); "the VM died; every process of the sandbox is reported exited");
    sb.mark_dead().await;
}

/// A running sandbox as the debugging CLI lists it.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub namespace: String,
    pub id: String,
    pub dir: PathBuf,
}

impl SandboxInfo {
    /// The guest's serial console; the agent's log lines are in it, prefixed
    /// `stockade-agent:`.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("vm").join("console.log")
    }
}

/// Every sandbox under `state_dir`.
pub fn list(state_dir: &Path) -> Vec<SandboxInfo> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("vm")) else {
        return Vec::new();
    };
    let mut out: Vec<SandboxInfo> = entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join(ID_FILE)).ok()?;
            let mut lines = text.lines();
            Some(SandboxInfo {
                namespace: lines.next()?.to_string(),
                id: lines.next()?.to_string(),
                dir: e.path(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    out
}

/// Ask the warm pool for a VM of this sandbox's size and boot config, moved to `dir`.
/// None: boot one (the log line says why).
async fn claim_from_pool(
    config: &Config,
    id: &str,
    dir: &Path,
) -> Option<Box<crate::vm::pool::Claimed>> {
    use crate::vm::pool::{ClaimOutcome, claim};
    let (state, hv, to) = (
        config.runtime.state_dir.clone(),
        config.hypervisor.clone(),
        dir.to_path_buf(),
    );
    let asked = tokio::task::spawn_blocking(move || claim(&state, &hv, &to)).await;
    let why = match asked {
        Ok(Ok(ClaimOutcome::Claimed(c))) => {
            log::info!(sandbox = id; "VM from the warm pool");
            return Some(c);
        }
        Ok(Ok(ClaimOutcome::Miss(why))) => why,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    log::info!(sandbox = id, vcpus = config.hypervisor.vcpus, memory_mib = config.hypervisor.memory_mib, why = why.as_str(); "no VM from the warm pool: booting one");
    None
}

/// A new VM's state dir at `dir`, root's only, with its share in it (nothing is left
/// when the share cannot be made).
pub(crate) fn new_vm_dir(dir: &Path) -> Result<Share> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    crate::private::restrict_dir(dir);
    Share::create(&dir.join("share")).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(dir);
    })
}

/// The sandbox's own network namespace, `dir/netns`, made and recorded in `net` (owned:
/// removed with the sandbox).
fn own_netns(dir: &Path, net: &mut Option<PodNetwork>) -> Result<PathBuf> {
    let path = dir.join("netns");
    network::create_netns(&path)?;
    *net = Some(PodNetwork {
        netns: path.clone(),
        owned: true,
        config: None,
    });
    Ok(path)
}

/// `pids` and `more`, if any.
fn with(mut pids: Vec<u32>, more: Option<u32>) -> Vec<u32> {
    pids.extend(more);
    pids
}

/// Record the pids of `dir`'s helpers with their start times, for [`cleanup_dir`].
pub(crate) fn record_pids(dir: &Path, pids: &[u32]) {
    let lines: Vec<String> = pids
        .iter()
        .map(|p| format!("{p} {}", start_time(*p as i32).unwrap_or(0)))
        .collect();
    let _ = std::fs::write(dir.join(PIDS_FILE), lines.join("\n"));
}

/// When process `pid` started (clock ticks after boot, `/proc/<pid>/stat` field 22).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` is one of `dir`'s helpers: the process recorded (same start
/// time), or, without a start time, one that names the dir on its command line or
/// works in it (the vsock backend, which names its sockets relative to its own dir).
/// So a recycled pid is never taken for a helper.
fn works_in(pid: i32, started: u64, dir: &Path) -> bool {
    if started != 0 {
        return start_time(pid) == Some(started);
    }
    let needle = dir.to_string_lossy();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(needle.as_ref())
        || std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
}

/// The shim's `delete` after a crash: kill the helpers a sandbox dir names (only if
/// they still work in that dir, so a recycled pid is safe), unmount its share, remove
/// it.
pub fn cleanup_dir(dir: &Path) -> Result<()> {
    let pids: Vec<(i32, u64)> = std::fs::read_to_string(dir.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pid = w.next()?.parse().ok()?;
            Some((pid, w.next().and_then(|s| s.parse().ok()).unwrap_or(0)))
        })
        .collect();
    for &(pid, started) in &pids {
        if works_in(pid, started, dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // Give the kernel a moment to tear the killed processes' mounts and fds down.
    for _ in 0..50 {
        if !pids.iter().any(|&(p, s)| works_in(p, s, dir)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(cg) = PodCgroup::load(dir) {
        let _ = cg.remove();
    }
    unmount_under(dir)?;
    std::fs::remove_dir_all(dir).map_err(Error::io(format!("remove {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_only_the_container_section() {
        let mut config = Config::default();
        config.container.default_pids_limit = 77;
        let text = guest_config(&config).unwrap();
        assert!(!text.contains("[hypervisor]") && !text.contains("[runtime]"));
        let parsed = Config::parse(&text, Path::new("guest")).unwrap();
        assert_eq!(parsed.container.default_pids_limit, 77);
    }

    #[test]
    fn sandbox_dirs_are_short_and_stable() {
        let a = sandbox_dir(Path::new("/run/stockade"), "k8s.io", &"f".repeat(64));
        assert_eq!(
            a,
            sandbox_dir(Path::new("/run/stockade"), "k8s.io", &"f".repeat(64))
        );
        assert_ne!(
            a,
            sandbox_dir(Path::new("/run/stockade"), "default", &"f".repeat(64))
        );
        // Room for "/vm/virtiofs.sock" inside sun_path's 108 bytes.
        assert!(a.as_os_str().len() + 20 < 100);
    }

    #[tokio::test]
    async fn the_wirings_outcome_stays_and_a_caller_that_gives_up_leaves_it_pending() {
        let mut failed =
            Wiring::Pending(tokio::spawn(async { Err(Error::Backend("no tap".into())) }));
        failed.finish().await;
        failed.finish().await;
        assert!(matches!(&failed, Wiring::Failed(e) if e.contains("no tap")));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut slow = Wiring::Pending(tokio::spawn(async move {
            let _ = rx.await;
            Ok(())
        }));
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), slow.finish()).await;
        assert!(gave_up.is_err() && matches!(slow, Wiring::Pending(_)));
        tx.send(()).unwrap();
        slow.finish().await;
        assert!(matches!(slow, Wiring::Done));
    }
}
