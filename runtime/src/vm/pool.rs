//! The warm pool: VMs booted ahead of the pods that claim them.
//!
//! `containerd-shim-stockade-v2 pool` runs [`serve`]: it keeps `[pool] size` VMs of each
//! shape booted, each with its agent answering, its share mounted in the guest and its
//! tap parked (down) in a network namespace of the pool's own. A shim booting a pod's
//! VM first asks the service over `<state_dir>/pool/pool.sock` (root only) for one of
//! the pod's shape ([`claim`]). The service renames the VM's state dir to the
//! sandbox's, stops draining its console and hands over pidfds of its processes and the
//! console pipe (SCM_RIGHTS); from then on the shim runs the VM as one it booted: it
//! moves the tap into the pod's namespace, wires it, moves the processes into its own
//! cgroups and the pod's, and sets the pod's identity (hostname, MAC, addresses) with
//! CreateSandbox. The service keeps nothing of a claimed VM (it only reaps its
//! processes when they exit, as their parent) and boots a replacement.
//!
//! A pool VM that dies is removed and replaced. On SIGTERM or SIGINT the service kills
//! every VM it still holds and removes their state, its namespace and its socket.
//! Claimed VMs are the shims' and are left alone.
//!
//! A VM matches a claim when its [`fingerprint`] equals the claim's: the boot-relevant
//! `[hypervisor]` keys (shape included) and the identity of the kernel, initrd and QEMU
//! binaries, so a pool booted with another kernel is never handed to a pod.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{Config, HypervisorConfig, PoolShape};
use crate::error::{Error, Result};
use crate::vm::agent::stdio_msg;
use crate::vm::hypervisor::{Handover, Nic};
use crate::vm::microvm::{HandedOver, MicroVm};
use crate::vm::network;
use crate::vm::qemu::{hybrid_socket, process_name};
use crate::vm::share::Share;
use crate::vm::vsock::Transport;

/// A pool VM's state dir is `<state_dir>/vm/<POOL_PREFIX><12 hex>`: as long as a
/// sandbox's (`sandbox_dir`), so the Unix socket paths in it fit once renamed.
pub const POOL_PREFIX: &str = "pool";
const SOCKET: &str = "pool.sock";
const NETNS: &str = "netns";
/// The guest NIC's MAC until a claim sets the pod's.
const PARKED_MAC: &str = "02:00:00:00:00:01";
/// How long a claimed VM's agent has to answer the shim.
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_MESSAGE: usize = 64 * 1024;
/// The throwaway container a new pool VM creates and deletes ([`warm_up`]).
const WARM_UP_ID: &str = "warm-up";
/// How long [`warm_up`] waits for the guest to report its container's exit.
const WARM_UP_EXIT_WAIT: Duration = Duration::from_secs(3);
/// Pause between failed boots of a shape, so a broken config does not spin.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The pool's own dir: its socket and network namespace.
pub fn pool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pool")
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    pool_dir(state_dir).join(SOCKET)
}

/// What makes two VMs interchangeable for a pod: every `[hypervisor]` key that shapes
/// the boot, and the identity (size, mtime) of the binaries it boots.
pub fn fingerprint(hv: &HypervisorConfig) -> String {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let file = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
            .unwrap_or_default()
    };
    let mut h = std::hash::DefaultHasher::new();
    let text = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {} {}",
        hv.accel,
        hv.qemu,
        hv.kernel,
        hv.initrd,
        hv.acpi_enabled(),
        hv.vsock,
        hv.vsock_backend,
        hv.virtiofsd,
        hv.vcpus,
        hv.memory_mib,
        hv.helper_id_base,
        hv.boot_timeout_secs,
    );
    text.hash(&mut h);
    for p in [&hv.qemu, &hv.kernel, &hv.initrd] {
        file(p).hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Request {
    /// Hand over a ready VM of this fingerprint, its state dir renamed to `dir`.
    Claim {
        fingerprint: String,
        dir: PathBuf,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
enum Reply {
    /// pidfds of `processes` follow in order, then the console's read end if `console`.
    Claimed {
        secret: String,
        processes: Vec<String>,
        console: bool,
        /// The guest's CID with kernel vhost-vsock; None: hybrid vsock in the dir.
        kernel_cid: Option<u32>,
        /// The parked tap's name in the pool's namespace.
        tap: String,
    },
    Miss {
        why: String,
    },
    Status(PoolStatus),
    Error {
        message: String,
    },
}

/// What the pool holds (`containerd-shim-stockade-v2 pool status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStatus {
    pub ready: Vec<ReadyVm>,
    /// VMs booting now.
    pub booting: u32,
    /// VMs claimed since the service started.
    pub claimed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadyVm {
    pub dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub qemu_pid: u32,
}

/// A claimed VM, as the shim takes it over.
pub struct Claimed {
    pub vm: HandedOver,
    /// Its tap, parked in `pool_netns` until the shim moves it into the pod's.
    pub tap: String,
    pub pool_netns: PathBuf,
}

/// What a claim got: a VM, or why not (the caller boots one).
pub enum ClaimOutcome {
    Claimed(Box<Claimed>),
    Miss(String),
}

/// Ask the pool for a VM of `hv`'s shape and boot config, its state moved to `dir`
/// (which must not exist). Blocking. No service → a miss saying so.
pub fn claim(state_dir: &Path, hv: &HypervisorConfig, dir: &Path) -> Result<ClaimOutcome> {
    let sock = socket_path(state_dir);
    let mut stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(e) => {
            return Ok(ClaimOutcome::Miss(format!(
                "no pool service at {} ({e})",
                sock.display()
            )));
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    send(
        &stream,
        &Request::Claim {
            fingerprint: fingerprint(hv),
            dir: dir.to_path_buf(),
        },
        &[],
    )?;
    let (reply, fds) = receive::<Reply>(&mut stream)?;
    let mut fds = fds.into_iter();
    match reply {
        Reply::Claimed {
            secret,
            processes,
            console,
            kernel_cid,
            tap,
        } => {
            let mut named = Vec::new();
            for p in processes {
                let name = process_name(&p)
                    .ok_or_else(|| Error::Backend(format!("pool: unknown process {p:?}")))?;
                let fd = fds
                    .next()
                    .ok_or_else(|| Error::Backend("pool: a pidfd is missing".into()))?;
                named.push((name, fd));
            }
            let console = if console { fds.next() } else { None };
            let transport = match kernel_cid {
                Some(cid) => Transport::Kernel { cid },
                None => Transport::Hybrid {
                    uds: hybrid_socket(&dir.join("vm")),
                },
            };
            Ok(ClaimOutcome::Claimed(Box::new(Claimed {
                vm: HandedOver {
                    vmm: Handover {
                        processes: named,
                        console,
                        transport,
                    },
                    secret,
                },
                tap,
                pool_netns: pool_dir(state_dir).join(NETNS),
            })))
        }
        Reply::Miss { why } => Ok(ClaimOutcome::Miss(why)),
        Reply::Error { message } => Err(Error::Backend(format!("pool: {message}"))),
        Reply::Status(_) => Err(Error::Backend("pool: unexpected reply".into())),
    }
}

/// What the pool service at `state_dir` holds.
pub fn status(state_dir: &Path) -> Result<PoolStatus> {
    let sock = socket_path(state_dir);
    let mut stream =
        UnixStream::connect(&sock).map_err(Error::io(format!("connect to {}", sock.display())))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    send(&stream, &Request::Status, &[])?;
    match receive::<Reply>(&mut stream)?.0 {
        Reply::Status(s) => Ok(s),
        Reply::Error { message } => Err(Error::Backend(format!("pool: {message}"))),
        _ => Err(Error::Backend("pool: unexpected reply".into())),
    }
}

/// One JSON line, with `fds` attached to it.
fn send<T: Serialize>(stream: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let mut line = serde_json::to_vec(msg).map_err(|e| Error::Backend(e.to_string()))?;
    line.push(b'\n');
    let iov = [std::io::IoSlice::new(&line)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map_err(|e| Error::Backend(format!("pool socket: send: {e}")))?;
    // The fds went with the first byte; the rest of a long line follows plainly.
    if sent < line.len() {
        let mut s = stream;
        s.write_all(&line[sent..])
            .map_err(Error::io("pool socket: send"))?;
    }
    Ok(())
}

/// One JSON line and the fds that came with it.
fn receive<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> Result<(T, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut fds = Vec::new();
    let mut got = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 8]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::Backend(format!("pool socket: receive: {e}")))?;
        for c in msg.cmsgs().map_err(|e| Error::Backend(e.to_string()))? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        msg.bytes
    };
    while got == 0 || buf[got - 1] != b'\n' {
        if got == 0 && fds.is_empty() {
            return Err(Error::Backend(
                "pool socket: closed without an answer".into(),
            ));
        }
        if got >= buf.len() {
            return Err(Error::Backend("pool socket: message too long".into()));
        }
        let n = stream
            .read(&mut buf[got..])
            .map_err(Error::io("pool socket: receive"))?;
        if n == 0 {
            return Err(Error::Backend("pool socket: message cut short".into()));
        }
        got += n;
    }
    let msg = serde_json::from_slice(&buf[..got])
        .map_err(|e| Error::Backend(format!("pool socket: {e}")))?;
    Ok((msg, fds))
}

/// A booted VM the pool holds.
struct PoolVm {
    vm: MicroVm,
    share: Share,
    dir: PathBuf,
    tap: String,
    shape: PoolShape,
    fingerprint: String,
}

impl PoolVm {
    /// Kill it and remove its state.
    async fn destroy(mut self) {
        self.vm.kill().await;
        let _ = self.share.destroy();
        let _ = crate::vm::sandbox::cleanup_dir(&self.dir);
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<PoolVm>,
    booting: u32,
    claimed: u64,
    stopping: bool,
}

struct Service {
    config: Config,
    shapes: Vec<(PoolShape, String)>,
    state: Mutex<State>,
    /// A VM was claimed or died: the refill loop looks again.
    changed: Notify,
    netns: PathBuf,
    next: std::sync::atomic::AtomicU64,
}

/// Run the pool service until SIGTERM or SIGINT, then remove every VM it holds.
pub async fn serve(config: Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let state_dir = config.runtime.state_dir.clone();
    let dir = pool_dir(&state_dir);
    clean_leftovers(&state_dir);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    crate::private::restrict_dir(&dir);
    std::fs::create_dir_all(state_dir.join("vm")).map_err(Error::io("create the VM dir"))?;
    let netns = dir.join(NETNS);
    network::create_netns(&netns)?;
    let sock = socket_path(&state_dir);
    let listener = match tokio::net::UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            network::remove_netns(&netns);
            return Err(Error::io(format!("listen on {}", sock.display()))(e));
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
    }
    let shapes: Vec<PoolShape> = if config.pool.shapes.is_empty() {
        vec![PoolShape {
            vcpus: config.hypervisor.vcpus,
            memory_mib: config.hypervisor.memory_mib,
        }]
    } else {
        config.pool.shapes.clone()
    };
    let shapes = shapes
        .into_iter()
        .map(|s| (s, fingerprint(&shaped(&config.hypervisor, s))))
        .collect();
    let svc = Arc::new(Service {
        config,
        shapes,
        state: Mutex::new(State::default()),
        changed: Notify::new(),
        netns: netns.clone(),
        next: std::sync::atomic::AtomicU64::new(1),
    });
    log::info!(socket:% = sock.display(), size = svc.config.pool.size, shapes:? = svc.shapes.iter().map(|s| s.0).collect::<Vec<_>>(); "pool service up");
    let refill = tokio::spawn(refill(svc.clone()));
    let mut term = signal(SignalKind::terminate()).map_err(Error::io("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::io("SIGINT handler"))?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let svc = svc.clone();
                    tokio::spawn(async move { svc.answer(stream).await });
                }
                Err(e) => log::warn!(error:% = e; "pool socket accept"),
            },
        }
    }
    log::info!("pool service stopping: removing its VMs");
    let _ = std::fs::remove_file(&sock);
    svc.state.lock().expect("pool lock").stopping = true;
    svc.changed.notify_one();
    // The boot in progress, if any, ends (bounded by the boot timeout) and is removed.
    let _ = refill.await;
    let held: Vec<PoolVm> = svc
        .state
        .lock()
        .expect("pool lock")
        .ready
        .drain(..)
        .collect();
    for vm in held {
        vm.destroy().await;
    }
    network::remove_netns(&netns);
    let _ = std::fs::remove_dir(&dir);
    log::info!("pool service stopped");
    Ok(())
}

/// A crashed service's VMs, namespace and socket.
fn clean_leftovers(state_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(state_dir.join("vm")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(POOL_PREFIX) {
                log::info!(dir:% = e.path().display(); "removing a pool VM left by an earlier run");
                let _ = crate::vm::sandbox::cleanup_dir(&e.path());
            }
        }
    }
    let dir = pool_dir(state_dir);
    let _ = std::fs::remove_file(dir.join(SOCKET));
    if dir.join(NETNS).exists() {
        network::remove_netns(&dir.join(NETNS));
    }
}

/// `hv` with the VM size of `shape`.
fn shaped(hv: &HypervisorConfig, shape: PoolShape) -> HypervisorConfig {
    HypervisorConfig {
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        ..hv.clone()
    }
}

/// Keep every shape at `[pool] size` ready VMs, one boot at a time (a boot is the
/// heaviest thing a node does; pods that missed the pool boot their own meanwhile).
async fn refill(svc: Arc<Service>) {
    loop {
        let missing = {
            let st = svc.state.lock().expect("pool lock");
            if st.stopping {
                return;
            }
            svc.shapes
                .iter()
                .find(|(_, fp)| {
                    (st.ready.iter().filter(|v| &v.fingerprint == fp).count() as u32)
                        < svc.config.pool.size
                })
                .cloned()
        };
        let Some((shape, fp)) = missing else {
            svc.changed.notified().await;
            continue;
        };
        svc.state.lock().expect("pool lock").booting += 1;
        let booted = svc.boot_one(shape, fp).await;
        let stopping = {
            let mut st = svc.state.lock().expect("pool lock");
            st.booting -= 1;
            st.stopping
        };
        match booted {
            Ok(vm) => {
                log::info!(dir:% = vm.dir.display(), vcpus = shape.vcpus, memory_mib = shape.memory_mib; "pool VM ready");
                svc.state.lock().expect("pool lock").ready.push_back(vm);
                if stopping {
                    return;
                }
            }
            Err(e) => {
                log::error!(vcpus = shape.vcpus, memory_mib = shape.memory_mib, error:% = e; "pool VM boot failed");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                    _ = svc.changed.notified() => {}
                }
            }
        }
    }
}

impl Service {
    async fn boot_one(self: &Arc<Self>, shape: PoolShape, fingerprint: String) -> Result<PoolVm> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .config
            .runtime
            .state_dir
            .join("vm")
            .join(format!("{POOL_PREFIX}{n:012x}"));
        if dir.exists() {
            crate::vm::sandbox::cleanup_dir(&dir)?;
        }
        let share = crate::vm::sandbox::new_vm_dir(&dir)?;
        let tap = format!("stk-p{n}");
        let booted = async {
            let (ns, name) = (self.netns.clone(), tap.clone());
            let tap_fd = tokio::task::spawn_blocking(move || network::create_tap_down(&ns, &name))
                .await
                .map_err(|e| Error::Backend(e.to_string()))??;
            let nic = Nic {
                fd: tap_fd.as_raw_fd(),
                mac: PARKED_MAC.into(),
                netns: None,
            };
            let hv = shaped(&self.config.hypervisor, shape);
            let vm = MicroVm::boot_with_parent(
                &hv,
                &dir.join("vm"),
                Some(share.path()),
                Some(&nic),
                false,
            )
            .await;
            // QEMU holds the tap now (or failed): it lives exactly as long as QEMU.
            drop(tap_fd);
            let mut vm = vm?;
            crate::vm::sandbox::record_pids(&dir, &vm.helper_pids());
            // Mounted now, so a claim has only the pod's identity left to set.
            let guest = crate::vm::sandbox::guest_config(&self.config)?;
            if let Err(e) = vm.agent.create_sandbox("pool", "", guest, None, true).await {
                vm.kill().await;
                return Err(e);
            }
            if let Err(e) = warm_up(&vm, &share, &dir).await {
                vm.kill().await;
                return Err(e);
            }
            Ok(vm)
        }
        .await;
        let vm = match booted {
            Ok(vm) => vm,
            Err(e) => {
                let _ = share.destroy();
                let _ = crate::vm::sandbox::cleanup_dir(&dir);
                return Err(e);
            }
        };
        // A VM that dies in the pool is removed, and replaced by the refill loop.
        let exited = vm.qemu_exit()?;
        let (svc, watch_dir) = (Arc::downgrade(self), dir.clone());
        tokio::spawn(async move {
            exited.await;
            let Some(svc) = svc.upgrade() else { return };
            let dead = {
                let mut st = svc.state.lock().expect("pool lock");
                let at = st.ready.iter().position(|v| v.dir == watch_dir);
                at.and_then(|i| st.ready.remove(i))
            };
            if let Some(vm) = dead {
                log::warn!(dir:% = watch_dir.display(); "a pool VM died; replacing it");
                vm.destroy().await;
                svc.changed.notify_one();
            }
        });
        Ok(PoolVm {
            vm,
            share,
            dir,
            tap,
            shape,
            fingerprint,
        })
    }

    async fn answer(self: Arc<Self>, stream: tokio::net::UnixStream) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        // Root only (the socket is 0600 in a 0700 dir; this holds if either is changed).
        let peer = nix::sys::socket::getsockopt(
            &stream.as_fd(),
            nix::sys::socket::sockopt::PeerCredentials,
        );
        if !peer.is_ok_and(|c| c.uid() == 0) {
            log::warn!("pool socket: a caller that is not root was refused");
            let _ = send(
                &stream,
                &Reply::Error {
                    message: "only root may use the pool".into(),
                },
                &[],
            );
            return;
        }
        let mut stream = stream;
        let request = tokio::task::block_in_place(|| receive::<Request>(&mut stream));
        let reply = match request {
            Ok((Request::Status, _)) => Ok((Reply::Status(self.status()), Vec::new())),
            Ok((Request::Claim { fingerprint, dir }, _)) => self.claim(&fingerprint, &dir).await,
            Err(e) => Err(e),
        };
        let (reply, fds) = reply.unwrap_or_else(|e| {
            (
                Reply::Error {
                    message: e.to_string(),
                },
                Vec::new(),
            )
        });
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if let Err(e) = send(&stream, &reply, &raw) {
            log::warn!(error:% = e; "pool socket: reply lost");
        }
    }

    fn status(&self) -> PoolStatus {
        let st = self.state.lock().expect("pool lock");
        PoolStatus {
            ready: st
                .ready
                .iter()
                .map(|v| ReadyVm {
                    dir: v.dir.clone(),
                    vcpus: v.shape.vcpus,
                    memory_mib: v.shape.memory_mib,
                    qemu_pid: v.vm.qemu_pid(),
                })
                .collect(),
            booting: st.booting,
            claimed: st.claimed,
        }
    }

    /// Hand over a ready VM of `fingerprint`, its dir renamed to `to`.
    async fn claim(&self, fingerprint: &str, to: &Path) -> Result<(Reply, Vec<OwnedFd>)> {
        check_target(&self.config.runtime.state_dir, to)?;
        let taken = {
            let mut st = self.state.lock().expect("pool lock");
            let at = st
                .ready
                .iter()
                .position(|v| v.fingerprint == fingerprint && !v.vm.has_exited());
            let vm = at.and_then(|i| st.ready.remove(i));
            if vm.is_some() {
                st.claimed += 1;
            }
            vm
        };
        let Some(vm) = taken else {
            let known = self.shapes.iter().any(|(_, fp)| fp == fingerprint);
            let why = if known {
                "the pool has no ready VM of this shape now (it is refilling)"
            } else {
                "the pool keeps no VM of this shape and boot config"
            };
            return Ok((Reply::Miss { why: why.into() }, Vec::new()));
        };
        self.changed.notify_one();
        let PoolVm { vm, dir, tap, .. } = vm;
        let handed = vm.hand_over().await?;
        let renamed = std::fs::rename(&dir, to).map_err(Error::io(format!(
            "rename {} to {}",
            dir.display(),
            to.display()
        )));
        let mut processes = Vec::new();
        let mut fds = Vec::new();
        for (name, fd) in handed.vmm.processes {
            processes.push(name.to_string());
            fds.push(fd);
        }
        if let Err(e) = renamed {
            // Not handed over after all: nothing may be left of it.
            for fd in &fds {
                pidfd_kill(fd);
            }
            let _ = crate::vm::sandbox::cleanup_dir(&dir);
            return Err(e);
        }
        let console = handed.vmm.console.is_some();
        fds.extend(handed.vmm.console);
        log::info!(from:% = dir.display(), to:% = to.display(); "pool VM claimed");
        Ok((
            Reply::Claimed {
                secret: handed.secret,
                processes,
                console,
                kernel_cid: match handed.vmm.transport {
                    Transport::Kernel { cid } => Some(cid),
                    Transport::Hybrid { .. } => None,
                },
                tap,
            },
            fds,
        ))
    }
}

/// A new pool VM creates one throwaway container and deletes it before it is offered,
/// so that the claiming pod's first container does not pay for what a VM's first
/// create costs once: the guest faulting in and (under TCG) translating the code of
/// libcontainer's create and of the kernel's namespace, mount, cgroup, device-program
/// and seccomp paths, and growing TCG's translation buffer on the host. Nothing of it
/// stays: its guest cgroup and bundle go with its delete, its share entry and host
/// files here, and its exit event is consumed here rather than by the pod's shim.
/// Its program is never started: a create only checks that it exists and may be run.
async fn warm_up(vm: &MicroVm, share: &Share, dir: &Path) -> Result<()> {
    let began = std::time::Instant::now();
    let base = dir.join(WARM_UP_ID);
    let made = (|| {
        let rootfs = base.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        let program = rootfs.join(WARM_UP_ID);
        std::fs::write(&program, b"")?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(base.join("hostname"), b"pool\n")?;
        Ok::<_, std::io::Error>(rootfs)
    })()
    .map_err(Error::io("pool warm-up: make its rootfs"));
    let res = async {
        let rootfs = made?;
        let mut spec = crate::vm::pod::warm_up_spec(
            WARM_UP_ID,
            &rootfs,
            &format!("/{WARM_UP_ID}"),
            &base.join("hostname"),
        );
        share.add_container(WARM_UP_ID, &mut spec, &base)?;
        let json = serde_json::to_vec(&spec).map_err(|e| Error::Backend(e.to_string()))?;
        let pid = vm
            .agent
            .create_container(WARM_UP_ID, json, stdio_msg([false; 3], false))
            .await?;
        vm.agent.delete(WARM_UP_ID, "").await?;
        Ok::<u32, Error>(pid)
    }
    .await;
    let removed = share.remove_container(WARM_UP_ID);
    let _ = std::fs::remove_dir_all(&base);
    let pid = res?;
    removed?;
    // Its exit, reported a moment after the delete, is acknowledged here.
    let deadline = tokio::time::Instant::now() + WARM_UP_EXIT_WAIT;
    let mut acked = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let events = vm.agent.events_within(acked, left).await?;
        let seen = events.iter().any(|e| e.pid == pid);
        acked = events
            .iter()
            .map(|e| e.seq)
            .max()
            .unwrap_or(acked)
            .max(acked);
        if seen || left.is_zero() {
            break;
        }
    }
    vm.agent.events_within(acked, Duration::ZERO).await?;
    log::debug!(dir:% = dir.display(), ms = began.elapsed().as_millis() as u64; "pool VM warmed up");
    Ok(())
}

/// A claim's target must be a new sandbox dir of this state dir.
fn check_target(state_dir: &Path, to: &Path) -> Result<()> {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned());
    let ok = to.parent() == Some(state_dir.join("vm").as_path())
        && name.is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        && !to.exists();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "pool: {} is not a new sandbox dir under {}",
            to.display(),
            state_dir.join("vm").display()
        )))
    }
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd we hold, with no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_and_the_kernel_are_part_of_the_fingerprint() {
        let hv = HypervisorConfig::default();
        let same = fingerprint(&hv.clone());
        assert_eq!(fingerprint(&hv), same);
        let bigger = shaped(
            &hv,
            PoolShape {
                vcpus: 2,
                memory_mib: 256,
            },
        );
        assert_ne!(fingerprint(&bigger), same);
        let other_kernel = HypervisorConfig {
            kernel: "/other/vmlinuz".into(),
            ..hv.clone()
        };
        assert_ne!(fingerprint(&other_kernel), same);
        // Policy keys do not change what boots.
        let policy = HypervisorConfig {
            allow_privileged: true,
            ..hv
        };
        assert_eq!(fingerprint(&policy), same);
    }

    #[test]
    fn claims_go_only_to_new_sandbox_dirs_of_the_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        std::fs::create_dir_all(vm.join("00000000000000aa")).unwrap();
        assert!(check_target(tmp.path(), &vm.join("0123456789abcdef")).is_ok());
        for bad in [
            vm.join("00000000000000aa"),
            vm.join("../escape12345678"),
            tmp.path().join("0123456789abcdef"),
            vm.join("pool000000000001"),
            vm.join("0123456789abcdef/deeper"),
        ] {
            assert!(check_target(tmp.path(), &bad).is_err(), "{}", bad.display());
        }
    }

    #[test]
    fn messages_carry_their_fds() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(
            &a,
            &Reply::Miss {
                why: "x".repeat(100_000 / 2),
            },
            &[file.as_raw_fd()],
        )
        .unwrap();
        let (reply, fds) = receive::<Reply>(&mut b).unwrap();
        assert!(matches!(reply, Reply::Miss { why } if why.len() == 50_000));
        assert_eq!(fds.len(), 1);
    }
}
