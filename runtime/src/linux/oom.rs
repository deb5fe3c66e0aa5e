//! OOM-kill notifications from the container's memory cgroup.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control`. cgroup v2: inotify on
//! `memory.events`, reporting each increase of `oom_kill`. Both run on a blocking
//! thread that ends when the cgroup goes away.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::linux::stats::{CgroupVersion, cgroup_version};

/// Start watching; `on_oom` runs once per OOM kill. Returns false when the cgroup
/// cannot be watched (for example a systemd-style path on cgroup v1).
pub fn watch(cgroup_path: &Path, on_oom: impl Fn() + Send + 'static) -> bool {
    if !cgroup_path.is_absolute() {
        return false;
    }
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    match cgroup_version() {
        CgroupVersion::V1 => {
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            match register_v1(&dir) {
                Ok(efd) => {
                    std::thread::spawn(move || watch_v1(efd, dir, on_oom));
                    true
                }
                Err(e) => {
                    log::debug!(cgroup:% = dir.display(), error:% = e; "no OOM watch");
                    false
                }
            }
        }
        CgroupVersion::V2 => {
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            if !dir.join("memory.events").exists() {
                return false;
            }
            std::thread::spawn(move || watch_v2(dir, on_oom));
            true
        }
    }
}

fn register_v1(dir: &Path) -> std::io::Result<OwnedFd> {
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd returns a new fd or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )?;
    Ok(efd)
}

fn watch_v1(efd: OwnedFd, dir: PathBuf, on_oom: impl Fn()) {
    let mut f = std::fs::File::from(efd);
    let mut buf = [0u8; 8];
    while f.read_exact(&mut buf).is_ok() {
        // The eventfd also fires when the cgroup is removed.
        if !dir.exists() {
            return;
        }
        on_oom();
    }
}

fn oom_kills(events: &Path) -> Option<u64> {
    std::fs::read_to_string(events).ok()?.lines().find_map(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn watch_v2(dir: PathBuf, on_oom: impl Fn()) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events = dir.join("memory.events");
    let Ok(inotify) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return;
    };
    if inotify
        .add_watch(&events, AddWatchFlags::IN_MODIFY)
        .is_err()
    {
        return;
    }
    let mut seen = oom_kills(&events).unwrap_or(0);
    while inotify.read_events().is_ok() {
        let Some(now) = oom_kills(&events) else {
            return;
        };
        for _ in seen..now {
            on_oom();
        }
        seen = now;
    }
}
