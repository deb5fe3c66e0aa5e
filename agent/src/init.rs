//! What a guest init does before it can serve: mounts, modules, hostname, reaping.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use stockade_runtime::exits::Exits;

/// Print to the console and end the VM: a guest whose agent cannot serve is useless,
/// and the host sees the reason in the console log.
pub fn fatal(msg: &str) -> ! {
    eprintln!("stockade-agent: fatal: {msg}");
    end_vm();
    std::process::exit(1)
}

/// End the VM, its writes synced: a reboot, which the host's VMM (QEMU with
/// `-no-reboot`) takes as its exit. A power-off would only halt a guest without ACPI
/// (microvm's default) and leave the VMM running.
pub fn end_vm() {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
}

/// Stockade's seccomp profiles as the guest's build compiled them (see `main.rs`).
pub const PRECOMPILED_FILTERS: &str = "/lib/stockade/seccomp-filters";

/// The initramfs is the kernel's `rootfs`, the one mount without a parent, which
/// pivot_root(2) cannot leave, and libcontainer pivots into every container's root. So
/// the agent binds the rootfs onto `/newroot`, makes it read-only, moves the bind over
/// `/` and chroots into it: the same files on a mount that has a parent. Nothing is
/// copied and the agent is not re-executed (the two together took about 44 ms of a
/// boot under TCG).
pub fn leave_rootfs() {
    if let Err(e) = leave_rootfs_inner() {
        fatal(&format!("cannot move the root off the initramfs: {e}"));
    }
}

fn leave_rootfs_inner() -> std::io::Result<()> {
    let new = Path::new("/newroot");
    std::fs::create_dir_all(new)?;
    mount(Some("/"), new, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    // The superblock read-only, so every mount of it: nothing on the root is written
    // after this (/run, /tmp and /dev are mounts of their own). The agent's binary
    // (/init, every helper's /proc/self/exe) stays on it, so no container can overwrite
    // it through /proc/<pid>/exe (CVE-2019-5736), nor plant files the agent would trust.
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | ro,
        None::<&str>,
    )?;
    nix::unistd::chdir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    // The bind's own flags (a bind mount keeps its own, apart from the superblock's).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro,
        None::<&str>,
    )?;
    Ok(())
}

/// Whether `/` is mounted read-only (after the switch it is).
pub fn root_is_readonly() -> bool {
    nix::sys::statvfs::statvfs("/")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

pub fn early_mounts() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666"),
        ),
    ];
    for (src, target, fstype, flags, data) in mounts {
        // The directories exist (made before the root went read-only).
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
            eprintln!("stockade-agent: mount {target}: {e}");
        }
    }
}

/// A module's parameters from the kernel command line (`<module>.<param>=<value>`), as
/// modprobe passes them: the kernel applies them only to what is built in. QEMU's microvm
/// names its virtio-mmio devices this way (`virtio_mmio.device=…`).
pub fn module_params(cmdline: &str, module: &str) -> String {
    let module = module.replace('-', "_");
    cmdline
        .split_whitespace()
        .filter_map(|arg| {
            let (m, param) = arg.split_once('.')?;
            (m.replace('-', "_") == module && param.contains('=')).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Load every module `dir/order` lists, in that order. Returns the names loaded.
pub fn load_modules(dir: &Path) -> Vec<String> {
    let Ok(order) = std::fs::read_to_string(dir.join("order")) else {
        return Vec::new();
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut loaded = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let params =
            CString::new(module_params(&cmdline, name.trim_end_matches(".ko"))).unwrap_or_default();
        let path = dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("stockade-agent: module {}: {e}", path.display());
                continue;
            }
        };
        // SAFETY: finit_module with an open module fd and a NUL-terminated params string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        if rc == 0 || err.raw_os_error() == Some(libc::EEXIST) {
            loaded.push(name.trim_end_matches(".ko").to_string());
        } else {
            eprintln!("stockade-agent: module {name}: {err}");
        }
    }
    loaded
}

pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        eprintln!("stockade-agent: sethostname: {e}");
    }
}

/// The guest's cgroups, ready for containers (`stockade_runtime::linux::guest`).
pub fn prepare_cgroups() {
    let root = Path::new(stockade_runtime::linux::guest::CGROUP_ROOT);
    for (what, e) in stockade_runtime::linux::guest::prepare_cgroups(root) {
        log::warn!(cgroup = what.as_str(), error:% = e; "cannot prepare the containers' cgroup");
    }
}

/// PID 1 inherits every orphan: reap them all, forever, and hand each exit status to
/// whoever waits for that pid (runc's convention: the status, or 128 + the signal).
pub fn spawn_reaper(exits: Exits) {
    use nix::sys::wait::{WaitStatus, waitpid};
    std::thread::spawn(move || {
        loop {
            match waitpid(None, None) {
                Ok(WaitStatus::Exited(pid, code)) => exits.notify(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    exits.notify(pid.as_raw(), 128 + sig as i32)
                }
                Ok(_) => {}
                Err(nix::Error::ECHILD) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(_) => {}
            }
        }
    });
}

pub fn meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Mount the pod's virtio-fs share. Nothing on it is executable as a device, and no
/// set-uid bit counts; containers get their rootfs from it through bind mounts.
pub fn mount_share(tag: &str, target: &Path) -> stockade_runtime::Result<()> {
    use stockade_runtime::Error;
    if target.join(".").exists() && is_mountpoint(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(Error::io("create share dir"))?;
    mount(
        Some(tag),
        target,
        Some("virtiofs"),
        MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| {
        Error::Backend(format!(
            "mount virtio-fs {tag} on {}: {e}",
            target.display()
        ))
    })
}

fn is_mountpoint(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_parameters_come_from_the_command_line_as_modprobe_reads_them() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                       virtio-mmio.device=512@0xfeb00c00:11 virtio_mmiox.device=1 vsock.x";
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(module_params(cmdline, "overlay"), "");
    }
}
