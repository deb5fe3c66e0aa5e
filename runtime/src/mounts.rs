//! Mounting the rootfs containerd hands us (overlay, bind, ...) and unmounting it again.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// One mount as containerd describes it (type, source, options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

fn flag_for(option: &str) -> Option<(bool, MsFlags)> {
    // (clear?, flag)
    Some(match option {
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "bind" => (false, MsFlags::MS_BIND),
        "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "suid" => (true, MsFlags::MS_NOSUID),
        "nodev" => (false, MsFlags::MS_NODEV),
        "dev" => (true, MsFlags::MS_NODEV),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        "remount" => (false, MsFlags::MS_REMOUNT),
        "defaults" => (true, MsFlags::empty()),
        _ => return None,
    })
}

/// Split options into mount flags and the filesystem's data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match flag_for(opt) {
            Some((true, f)) => flags.remove(f),
            Some((false, f)) => flags.insert(f),
            None => data.push(opt.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Whether the kernel knows this filesystem type (bind mounts aside).
pub fn kernel_supports(kind: &str) -> bool {
    if matches!(kind, "bind" | "rbind" | "none" | "") {
        return true;
    }
    std::fs::read_to_string("/proc/filesystems")
        .map(|fs| {
            fs.lines()
                .any(|l| l.split_whitespace().last() == Some(kind))
        })
        .unwrap_or(false)
}

pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            // Leave nothing half-mounted behind.
            for _ in 0..i {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    if !kernel_supports(&m.kind) {
        return Err(Error::InvalidArgument(format!(
            "rootfs mount type {:?} is not supported by this kernel",
            m.kind
        )));
    }
    let (mut flags, data) = parse_options(&m.options);
    if m.kind == "bind" || m.kind == "rbind" {
        flags.insert(MsFlags::MS_BIND);
    }
    let kind =
        (!m.kind.is_empty() && m.kind != "bind" && m.kind != "rbind").then_some(m.kind.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    // A read-only bind needs a remount to take effect.
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(Some(m.source.as_str()), target, kind, flags, data).map_err(|e| {
        Error::InvalidArgument(format!(
            "mount {} ({}) on {}: {e}",
            m.source,
            m.kind,
            target.display()
        ))
    })?;
    if ro_bind {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| Error::Backend(format!("remount {} read-only: {e}", target.display())))?;
    }
    Ok(())
}

/// Unmount everything stacked on `target`; a path that is not mounted is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..16 {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(Error::Backend(format!("unmount {}: {e}", target.display())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "lowerdir=/a", "upperdir=/b"]
            .map(String::from)
            .to_vec();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "lowerdir=/a,upperdir=/b");
    }

    #[test]
    fn unknown_filesystem_is_refused() {
        assert!(!kernel_supports("definitely-not-a-fs"));
        assert!(kernel_supports("bind"));
    }
}
