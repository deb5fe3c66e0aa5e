//! QEMU `microvm` as the [`Hypervisor`]: one guest, its vsock backend, virtiofsd, its
//! console log.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Accel, HypervisorConfig, VsockMode};
use crate::error::{Error, Result};
use crate::vm::console::ConsoleLogger;
use crate::vm::hypervisor::{BootSpec, ExitFuture, Handover, Hypervisor};
use crate::vm::jail::{self, Jail};
use crate::vm::vsock::Transport;
use crate::vm::watched::Watched;
use std::os::unix::process::CommandExt as _;
use stockade_agent_protocol::SHARE_TAG;

/// The guest CID; each VM has its own vsock backend, so every guest can use the same.
const GUEST_CID: u32 = 3;
/// TCG translation-cache size (MiB).
const TCG_TB_MIB: u32 = 256;

pub struct Qemu {
    dir: PathBuf,
    qemu: Watched,
    /// The vhost-user vsock backend (absent with kernel vhost-vsock) and virtiofsd.
    helpers: Vec<Watched>,
    transport: Transport,
    console: Option<ConsoleLogger>,
}

/// The names a VM's host processes go by (the VMM first).
const PROCESS_NAMES: [&str; 3] = ["qemu", "vhost-device-vsock", "virtiofsd"];

impl Qemu {
    /// Take over a VM another process booted (see [`Handover`]), its state now in `dir`.
    pub fn adopt(dir: &Path, h: Handover) -> Result<Qemu> {
        let mut processes = h.processes.into_iter();
        let (name, fd) = processes
            .next()
            .filter(|(n, _)| *n == PROCESS_NAMES[0])
            .ok_or_else(|| Error::Backend("a handed-over VM without its VMM".into()))?;
        let qemu = Watched::from_pidfd(name, fd)?;
        let helpers = processes
            .map(|(n, fd)| Watched::from_pidfd(n, fd))
            .collect::<Result<Vec<_>>>()?;
        let console = match h.console {
            Some(fd) => Some(crate::vm::console::spawn_logger(dir, fd)?),
            None => None,
        };
        Ok(Qemu {
            dir: dir.to_path_buf(),
            qemu,
            helpers,
            transport: h.transport,
            console,
        })
    }
}

/// A process name as handed over, as one of [`PROCESS_NAMES`].
pub fn process_name(name: &str) -> Option<&'static str> {
    PROCESS_NAMES.into_iter().find(|n| *n == name)
}

/// SIGKILL every one, then wait for each.
async fn kill_all(helpers: &mut [Watched]) {
    for h in helpers.iter() {
        h.signal_kill();
    }
    for h in helpers.iter_mut() {
        h.kill().await;
    }
}

/// Which vsock transport a VM uses: kernel vhost-vsock where the host has it (and the
/// config allows), else the vhost-user backend.
pub fn choose_transport(cfg: &HypervisorConfig, dir: &Path, have_vhost_vsock: bool) -> Transport {
    let kernel = match cfg.vsock {
        VsockMode::Kernel => true,
        VsockMode::VhostUser => false,
        VsockMode::Auto => have_vhost_vsock,
    };
    if kernel {
        Transport::Kernel { cid: random_cid() }
    } else {
        Transport::Hybrid {
            uds: hybrid_socket(dir),
        }
    }
}

/// The hybrid vsock socket of the VM whose state dir is `dir`.
pub fn hybrid_socket(dir: &Path) -> PathBuf {
    vsock_dir(dir).join("vsock.sock")
}

/// The vhost-user vsock backend's own dir (its sockets), owned by its uid.
fn vsock_dir(dir: &Path) -> PathBuf {
    dir.join("vsock")
}

/// The empty dir QEMU chroots into once it has opened everything it needs.
fn jail_dir(dir: &Path) -> PathBuf {
    dir.join("jail")
}

/// The host uids (= gids) a VM's helpers run as: a pair per VM out of
/// [`HELPER_IDS`](crate::config::HELPER_IDS) from `[hypervisor] helper_id_base`, chosen
/// by the VM's state dir, so no two running VMs are likely to share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelperIds {
    pub qemu: u32,
    pub vsock: u32,
}

pub fn helper_ids(cfg: &HypervisorConfig, dir: &Path) -> Result<HelperIds> {
    use std::hash::{Hash, Hasher};
    let pairs = crate::config::HELPER_IDS / 2;
    if cfg.helper_id_base == 0 || cfg.helper_id_base > u32::MAX - crate::config::HELPER_IDS {
        return Err(Error::InvalidArgument(format!(
            "[hypervisor] helper_id_base {}: needs 1 to {}",
            cfg.helper_id_base,
            u32::MAX - crate::config::HELPER_IDS
        )));
    }
    let mut h = std::hash::DefaultHasher::new();
    dir.hash(&mut h);
    let qemu = cfg.helper_id_base + 2 * (h.finish() % pairs as u64) as u32;
    Ok(HelperIds {
        qemu,
        vsock: qemu + 1,
    })
}

/// A guest CID for kernel vhost-vsock: unique on the host, so random over the valid
/// range (3 to 2^32 - 2); QEMU refuses one already in use and the boot fails clearly.
fn random_cid() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    cid_from(u32::from_ne_bytes(b))
}

fn cid_from(r: u32) -> u32 {
    3 + r % (u32::MAX - 4)
}

/// The fd numbers QEMU finds the tap and the console pipe's write end at.
const TAP_FD: i32 = 3;
const CONSOLE_FD: i32 = 4;

/// Where QEMU finds the VM's secret at start (see `BootSpec::secret`).
fn secret_file(dir: &Path) -> PathBuf {
    dir.join("agent.secret")
}

fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    crate::private::write_new(path, secret.as_bytes()).map_err(Error::io("write the VM secret"))
}

/// The virtio-fs socket QEMU connects to (virtiofsd serves it).
fn virtiofs_socket(dir: &Path) -> PathBuf {
    dir.join("virtiofs.sock")
}

/// How a helper is confined: with `user`, it runs as that uid and gid, with no
/// supplementary group, no capability and no-new-privileges; with `jail`, in that jail
/// (entered as root first). With `die_with_parent`, PR_SET_PDEATHSIG kills it when the
/// spawning thread exits (these are spawned from the runtime's long-lived worker
/// threads); the warm pool's helpers outlive the pool service instead.
struct Confine {
    user: Option<u32>,
    jail: Option<Jail>,
    die_with_parent: bool,
}

fn spawn_helper(cmd: &mut Command, what: &str, confine: Confine) -> Result<std::process::Child> {
    spawn_helper_with_fds(cmd, what, [None, None], None, confine)
}

/// As [`spawn_helper`], with each `(fd, number)` of `fds` (open in the parent until
/// spawn returns) given to the child as that number, and in network namespace `netns`.
fn spawn_helper_with_fds(
    cmd: &mut Command,
    what: &str,
    fds: [Option<(std::os::fd::RawFd, i32)>; 2],
    netns: Option<std::os::fd::RawFd>,
    confine: Confine,
) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let Confine {
        user,
        jail,
        die_with_parent,
    } = confine;
    let mut moved = [-1; 2];
    // SAFETY: prctl, fcntl, dup2, setns, setgroups, setgid and setuid are
    // async-signal-safe and touch only the child; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(jail) = &jail {
                jail.enter()?;
            }
            if let Some(id) = user {
                // Leaving root drops every capability (no keep-caps, no ambient set).
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After the uid change, which clears it.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Out of the way of the target numbers first, then into place (dup2
            // clears close-on-exec on the new number).
            for (i, fd) in fds.iter().enumerate() {
                if let Some((fd, _)) = fd {
                    moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            for (i, fd) in fds.iter().enumerate() {
                if let Some((_, number)) = fd
                    && libc::dup2(moved[i], *number) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(ns) = netns
                && libc::setns(ns, libc::CLONE_NEWNET) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(Error::io(format!("spawn {what}")))
}

/// Under TCG the guest's TSC ticks at the host's rate, but the kernel's calibration
/// against the emulated PIT fails now and then ("could not calculate TSC khz"), and the
/// guest then hangs before its first console line. Telling it the rate avoids that.
///
/// Also under TCG, which has no TSC-deadline timer: `no_timer_check` spares the kernel
/// its IO-APIC timer test, and, without ACPI (the Stockade kernel), `nolapic_timer` its
/// local APIC timer calibration (about 260 ms of waiting on emulated timers; under KVM
/// the TSC-deadline timer skips it anyway), the PIT then driving the clock events. With
/// ACPI (Debian's cloud kernel) `nolapic_timer` made the agent's first answer about six
/// times slower when measured, so that kernel keeps its APIC timer. `noreplace-smp`: a
/// one-vCPU guest would rewrite every `lock` prefix of its text at boot, and under TCG
/// writing to code that is being translated costs about 45 ms of the boot (8 %); under
/// KVM the rewrite is free and makes the guest's atomics cheaper, so it stays there.
///
/// `dummy.numdummies=0`: a kernel with the dummy driver built in (the Stockade kernel)
/// would otherwise make a `dummy0` in the pod's network.
///
/// `reboot=t`: the agent ends its VM with a reboot, which QEMU's `-no-reboot` turns into
/// the VMM's exit (microvm without ACPI has no power-off, so a powered-off guest would
/// only halt and leave QEMU running), and the reset comes straight from a triple fault:
/// the kernel's default order tries ACPI, then the keyboard controller that microvm
/// lacks, polling it for more than a second. A guest kernel's panic ends the same way.
///
/// `rcupdate.rcu_expedited=1`: every container create waits for RCU grace periods
/// (moving a process into a cgroup, attaching the device program, unmounting the old
/// root), each a few timer ticks long at the guest's HZ=100: about 25 ms apiece under
/// TCG. Expedited, a grace period on a VM's few vCPUs is one round of IPIs.
fn kernel_cmdline(accel: Accel, acpi: bool) -> String {
    let mut cmdline = String::from(
        "console=ttyS0 quiet panic=-1 reboot=t dummy.numdummies=0 rcupdate.rcu_expedited=1",
    );
    if accel == Accel::Tcg {
        cmdline.push_str(" no_timer_check noreplace-smp");
        if !acpi {
            cmdline.push_str(" nolapic_timer");
        }
        if let Some(khz) =
            host_tsc_khz(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
        {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    cmdline
}

fn host_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

pub fn qemu_args(
    cfg: &HypervisorConfig,
    dir: &Path,
    share: bool,
    transport: &Transport,
    mac: Option<&str>,
    ids: HelperIds,
) -> Vec<String> {
    // TCG's translation cache defaults to 1 GiB of host memory, most of it touched
    // over time: cap it, it is host overhead outside the guest's RAM.
    let acpi = cfg.acpi_enabled();
    let accel = match cfg.accel {
        Accel::Kvm => "kvm".to_string(),
        Accel::Tcg => format!("tcg,tb-size={TCG_TB_MIB}"),
    };
    let mem = format!("{}M", cfg.memory_mib);
    let mut a: Vec<String> = vec![
        // Without ACPI, QEMU names the virtio-mmio devices on the kernel's command line
        // and the CPUs in an MP table (the Stockade kernel; see AcpiMode).
        "-M".into(),
        format!(
            "microvm,memory-backend=mem,acpi={}",
            if acpi { "on" } else { "off" }
        ),
        "-accel".into(),
        accel,
        "-m".into(),
        mem.clone(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-smp".into(),
        cfg.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // set*id stays allowed: QEMU drops to its own uid (-runas below) after the
        // filter is in, and with no capability left those calls elevate nothing.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
        // A pipe the shim drains into a capped console.log (console.rs).
        "-serial".into(),
        format!("file:/proc/self/fd/{CONSOLE_FD}"),
        "-kernel".into(),
        cfg.kernel.display().to_string(),
        "-initrd".into(),
        cfg.initrd.display().to_string(),
        "-append".into(),
        kernel_cmdline(cfg.accel, acpi),
        "-fw_cfg".into(),
        format!(
            "name={},file={}",
            stockade_agent_protocol::SECRET_FW_CFG,
            secret_file(dir).display()
        ),
        // Once everything is open: an empty root, its own uid, no capability.
        "-chroot".into(),
        jail_dir(dir).display().to_string(),
        "-runas".into(),
        format!("{}:{}", ids.qemu, ids.qemu),
    ];
    match transport {
        Transport::Kernel { cid } => a.extend([
            "-device".into(),
            format!("vhost-vsock-device,guest-cid={cid}"),
        ]),
        Transport::Hybrid { .. } => a.extend([
            "-chardev".into(),
            format!(
                "socket,id=vsock0,path={}",
                vsock_dir(dir).join("vsock.vhost").display()
            ),
            "-device".into(),
            "vhost-user-vsock-device,chardev=vsock0".into(),
        ]),
    }
    if let Some(mac) = mac {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net0,fd={TAP_FD},vhost=off"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]);
    }
    if share {
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs0,path={}", virtiofs_socket(dir).display()),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs0,tag={SHARE_TAG}"),
        ]);
    }
    if cfg.accel == Accel::Kvm {
        a.extend(["-cpu".into(), "host".into()]);
    } else {
        a.extend(["-cpu".into(), "max".into()]);
    }
    a
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    async fn boot(spec: &BootSpec<'_>) -> Result<Qemu> {
        let BootSpec {
            config: cfg,
            dir,
            share,
            nic,
            deadline,
            secret,
            die_with_parent,
        } = *spec;
        if !cfg.qemu.exists() {
            return Err(Error::FailedPrecondition(format!(
                "VM qemu {} does not exist (run packaging/setup.sh)",
                cfg.qemu.display()
            )));
        }
        let transport = choose_transport(cfg, dir, Path::new("/dev/vhost-vsock").exists());
        let ids = helper_ids(cfg, dir)?;
        std::fs::create_dir_all(jail_dir(dir)).map_err(Error::io("create QEMU's jail"))?;
        let mut helpers = Vec::new();
        if let Transport::Hybrid { uds } = &transport {
            let own = vsock_dir(dir);
            std::fs::create_dir_all(&own)
                .and_then(|()| std::os::unix::fs::chown(&own, Some(ids.vsock), Some(ids.vsock)))
                .map_err(Error::io("create the vsock backend's dir"))?;
            if !cfg.vsock_backend.exists() {
                return Err(Error::FailedPrecondition(format!(
                    "VM vsock backend {} does not exist (run packaging/setup.sh)",
                    cfg.vsock_backend.display()
                )));
            }
            let vhost = vsock_dir(dir).join("vsock.vhost");
            helpers.push(
                start_helper(
                    "vhost-device-vsock",
                    // In a jail holding its binary, its libraries and its sockets' dir
                    // (at /work), as its own uid; argv[0] names the VM's dir, so it is
                    // found as one of the VM's helpers.
                    Command::new(jail::BINARY)
                        .arg0(own.join("vhost-device-vsock"))
                        .arg("--guest-cid")
                        .arg(GUEST_CID.to_string())
                        .arg("--socket")
                        .arg(vhost.file_name().expect("a file name"))
                        .arg("--uds-path")
                        .arg(uds.file_name().expect("a file name")),
                    &dir.join("vsock.log"),
                    &vhost,
                    deadline,
                    Confine {
                        user: Some(ids.vsock),
                        jail: Some(Jail::new(
                            &dir.join("vsock-jail"),
                            &cfg.vsock_backend,
                            &own,
                        )?),
                        die_with_parent,
                    },
                )
                .await?,
            );
        }
        if let Some(share) = share {
            let sock = virtiofs_socket(dir);
            let started = start_helper(
                "virtiofsd",
                Command::new(&cfg.virtiofsd)
                    .arg("--socket-path")
                    .arg(&sock)
                    .arg("--shared-dir")
                    .arg(share)
                    // Its own mount, pid and network namespaces; seccomp stays on (default).
                    .args(["--sandbox", "namespace", "--cache", "auto"])
                    // No device nodes made for the guest: a node it made would open the
                    // host's device through virtiofsd.
                    .arg("--modcaps=-mknod:-setfcap")
                    .args(["--log-level", "warn"]),
                &dir.join("virtiofsd.log"),
                &sock,
                deadline,
                Confine {
                    user: None,
                    jail: None,
                    die_with_parent,
                },
            )
            .await;
            match started {
                Ok(w) => helpers.push(w),
                Err(e) => {
                    kill_all(&mut helpers).await;
                    return Err(e);
                }
            }
        }
        // QEMU reads the secret's file when it starts (a fw_cfg file for the agent);
        // root-only, and removed once the guest has answered.
        if let Err(e) = write_secret(&secret_file(dir), secret) {
            kill_all(&mut helpers).await;
            return Err(e);
        }
        let qemu_log = std::fs::File::create(dir.join("qemu.log")).map_err(Error::io("qemu log"));
        let console = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Backend(format!("console pipe: {e}")))
            .and_then(|(r, w)| crate::vm::console::spawn_logger(dir, r).map(|l| (l, w)));
        let mut logger = None;
        let child =
            qemu_log
                .and_then(|log| console.map(|c| (log, c)))
                .and_then(|(log, (l, console))| {
                    logger = Some(l);
                    use std::os::fd::AsRawFd;
                    spawn_helper_with_fds(
                        Command::new(&cfg.qemu)
                            .args(qemu_args(
                                cfg,
                                dir,
                                share.is_some(),
                                &transport,
                                nic.map(|n| n.mac.as_str()),
                                ids,
                            ))
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(log),
                        &cfg.qemu.display().to_string(),
                        [
                            nic.map(|n| (n.fd, TAP_FD)),
                            Some((console.as_raw_fd(), CONSOLE_FD)),
                        ],
                        nic.and_then(|n| n.netns),
                        Confine {
                            user: None,
                            jail: None,
                            die_with_parent,
                        },
                    )
                });
        let qemu = child.and_then(|c| Watched::new("qemu", c));
        match qemu {
            Ok(qemu) => Ok(Qemu {
                dir: dir.to_path_buf(),
                qemu,
                helpers,
                transport,
                console: logger,
            }),
            Err(e) => {
                kill_all(&mut helpers).await;
                Err(e)
            }
        }
    }

    fn guest_answered(&mut self) {
        let _ = std::fs::remove_file(secret_file(&self.dir));
    }

    fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut out = vec![(self.qemu.name, self.qemu.pid())];
        out.extend(self.helpers.iter().map(|h| (h.name, h.pid())));
        out
    }

    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn exited(&self) -> Result<ExitFuture> {
        Ok(Box::pin(self.qemu.exit_future()?))
    }

    fn has_exited(&self) -> bool {
        self.qemu.has_exited()
    }

    async fn exited_within(&mut self, limit: Duration) -> bool {
        self.qemu.exited_within(limit).await
    }

    async fn kill(&mut self) {
        // Every process at once: QEMU's exit (unmapping the guest's memory) and the
        // backends' overlap.
        self.qemu.signal_kill();
        kill_all(&mut self.helpers).await;
        self.qemu.kill().await;
    }

    fn console_logged(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.console.as_ref().map(ConsoleLogger::logged)
    }

    fn logs(&self) -> String {
        let log = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- qemu ---\n{}\n--- vsock backend ---\n{}",
            log("qemu.log").trim(),
            log("vsock.log").trim()
        )
    }

    async fn hand_over(self: Box<Self>) -> Result<Handover> {
        let Qemu {
            qemu,
            helpers,
            transport,
            console,
            ..
        } = *self;
        let mut processes = Vec::new();
        for w in std::iter::once(qemu).chain(helpers) {
            processes.push((w.name, w.pidfd()?));
            w.release();
        }
        let console = match console {
            Some(c) => c.take().await,
            None => None,
        };
        Ok(Handover {
            processes,
            console,
            transport,
        })
    }
}

/// Spawn a helper that serves a socket and wait until the socket exists.
async fn start_helper(
    name: &'static str,
    cmd: &mut Command,
    log: &Path,
    socket: &Path,
    deadline: Instant,
    confine: Confine,
) -> Result<Watched> {
    let log_file = std::fs::File::create(log).map_err(Error::io(format!("{name} log")))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let mut w = Watched::new(name, spawn_helper(cmd, name, confine)?)?;
    while !socket.exists() {
        if w.has_exited() || Instant::now() > deadline {
            w.kill().await;
            return Err(Error::Backend(format!(
                "{name} did not come up: {}",
                std::fs::read_to_string(log).unwrap_or_default().trim()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_vhost_vsock_when_the_host_has_it() {
        let mut cfg = HypervisorConfig::default();
        let dir = Path::new("/x");
        let t = choose_transport(&cfg, dir, true);
        let Transport::Kernel { cid } = t else {
            panic!("auto with /dev/vhost-vsock must pick the kernel transport")
        };
        assert!((3..u32::MAX - 1).contains(&cid));
        let ids = helper_ids(&cfg, dir).unwrap();
        let args = qemu_args(&cfg, dir, false, &t, None, ids);
        assert!(args.contains(&format!("vhost-vsock-device,guest-cid={cid}")));
        assert!(!args.iter().any(|a| a.contains("vhost-user-vsock")));
        assert!(matches!(
            choose_transport(&cfg, dir, false),
            Transport::Hybrid { .. }
        ));
        cfg.vsock = VsockMode::VhostUser;
        assert!(matches!(
            choose_transport(&cfg, dir, true),
            Transport::Hybrid { .. }
        ));
        cfg.vsock = VsockMode::Kernel;
        assert!(matches!(
            choose_transport(&cfg, dir, false),
            Transport::Kernel { .. }
        ));
    }

    #[test]
    fn helpers_get_ids_of_their_own_in_the_range() {
        let cfg = HypervisorConfig::default();
        let a = helper_ids(&cfg, Path::new("/run/stockade/vm/a")).unwrap();
        let b = helper_ids(&cfg, Path::new("/run/stockade/vm/b")).unwrap();
        assert_ne!(a, b);
        for ids in [a, b] {
            assert_eq!(ids.vsock, ids.qemu + 1);
            assert!(ids.qemu >= cfg.helper_id_base);
            assert!(ids.vsock < cfg.helper_id_base + crate::config::HELPER_IDS);
        }
        let t = choose_transport(&cfg, Path::new("/x"), false);
        let args = qemu_args(&cfg, Path::new("/x"), false, &t, None, a);
        let runas = args.iter().position(|x| x == "-runas").unwrap();
        assert_eq!(args[runas + 1], format!("{}:{}", a.qemu, a.qemu));
        assert!(args.iter().any(|x| x == "/x/jail"));
        for bad in [0, u32::MAX - 5] {
            let cfg = HypervisorConfig {
                helper_id_base: bad,
                ..HypervisorConfig::default()
            };
            assert!(helper_ids(&cfg, Path::new("/x")).is_err());
        }
    }

    #[test]
    fn cids_stay_in_the_valid_range() {
        for r in [0, 1, 2, u32::MAX, u32::MAX - 1, u32::MAX - 4, 12345] {
            let c = cid_from(r);
            assert!((3..=u32::MAX - 2).contains(&c), "{r} -> {c}");
        }
    }

    #[test]
    fn tsc_rate_comes_from_cpuinfo() {
        assert_eq!(
            host_tsc_khz("processor : 0\ncpu MHz\t\t: 2445.426\n"),
            Some(2_445_426)
        );
        assert_eq!(host_tsc_khz("processor : 0\n"), None);
    }

    #[test]
    fn only_tcg_gets_a_tsc_rate_and_only_without_acpi_loses_the_apic_timer() {
        for acpi in [true, false] {
            let kvm = kernel_cmdline(Accel::Kvm, acpi);
            assert!(!kvm.contains("tsc_early_khz") && !kvm.contains("nolapic_timer"));
        }
        assert!(kernel_cmdline(Accel::Tcg, false).contains("nolapic_timer"));
        for accel in [Accel::Tcg, Accel::Kvm] {
            assert!(kernel_cmdline(accel, false).contains(" reboot=t "));
        }
        assert!(kernel_cmdline(Accel::Tcg, true).contains("noreplace-smp"));
        assert!(!kernel_cmdline(Accel::Kvm, true).contains("noreplace-smp"));
        assert!(!kernel_cmdline(Accel::Tcg, true).contains("nolapic_timer"));
        let hybrid = Transport::Hybrid {
            uds: "/x/vsock.sock".into(),
        };
        let args = qemu_args(
            &HypervisorConfig::default(),
            Path::new("/x"),
            true,
            &hybrid,
            Some("02:00:00:00:00:01"),
            helper_ids(&HypervisorConfig::default(), Path::new("/x")).unwrap(),
        );
        assert!(
            args.iter()
                .any(|a| a == "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01")
        );
        assert!(
            args.iter()
                .any(|a| a == "vhost-user-vsock-device,chardev=vsock0")
        );
        assert!(args.iter().any(|a| a.starts_with("vhost-user-fs-device")));
        assert!(args.iter().any(|a| a == "-nodefaults"));
        assert!(args.iter().any(|a| a.starts_with("on,obsolete=deny")));
    }
}
