//! What a guest init does before it can serve: mounts, modules, hostname, reaping.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Print to the console and power off: a guest whose agent cannot serve is useless,
/// and the host sees the reason in the console log.
pub fn fatal(msg: &str) -> ! {
    eprintln!("stockade-agent: fatal: {msg}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(1)
}

pub fn early_mounts() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
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
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
            eprintln!("stockade-agent: mount {target}: {e}");
        }
    }
}

/// Load every module `dir/order` lists, in that order. Returns the names loaded.
pub fn load_modules(dir: &Path) -> Vec<String> {
    let Ok(order) = std::fs::read_to_string(dir.join("order")) else {
        return Vec::new();
    };
    let params = CString::default();
    let mut loaded = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
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

/// PID 1 inherits every orphan: reap them all, forever.
pub fn spawn_reaper() {
    std::thread::spawn(|| {
        loop {
            match nix::sys::wait::waitpid(None, None) {
                Ok(_) => {}
                Err(nix::Error::ECHILD) => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(_) => {}
            }
        }
    });
}
