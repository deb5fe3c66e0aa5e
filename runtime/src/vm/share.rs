//! The pod's share: the host directory one virtiofsd exports to the guest.
//!
//! Layout: `<sandbox>/share/<container>/rootfs` (a bind of the container's rootfs) and
//! `<sandbox>/share/<container>/mounts/<n>` (a bind of the spec's n-th bind mount
//! source). The guest sees the share at [`GUEST_SHARE_DIR`] and the host rewrites the
//! spec to those guest paths.
//!
//! The guest can write into the share (a rootfs is writable), so the host never follows
//! a path component inside it: every directory is opened with `O_NOFOLLOW` relative to
//! its parent's fd and mounts go onto `/proc/self/fd/<fd>`; unmounts use
//! `UMOUNT_NOFOLLOW`; nothing is removed while anything under it is still mounted.
//! The share is a shared mount, so binds added after virtiofsd started (its sandbox
//! keeps a slave copy of the host's mounts) reach it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;
use stockade_agent_protocol::GUEST_SHARE_DIR;

use crate::error::{Error, Result};

pub struct Share {
    root: PathBuf,
}

fn open_dir_at(parent: &OwnedFd, name: &str, create: bool) -> Result<OwnedFd> {
    if create {
        match nix::sys::stat::mkdirat(
            Some(parent.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(Error::Backend(format!("share: mkdir {name}: {e}"))),
        }
    }
    let fd = nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Backend(format!("share: open {name} (no symlinks followed): {e}")))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_file_at(parent: &OwnedFd, name: &str) -> Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        name,
        OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| Error::Backend(format!("share: create {name}: {e}")))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Bind `source` onto `parent/name` (already created and open as `target`); read-only
/// if asked, keeping the source's nosuid, nodev and noexec.
fn bind(
    source: &Path,
    parent: &OwnedFd,
    name: &str,
    target: &OwnedFd,
    readonly: bool,
) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    nix::mount::mount(
        Some(source),
        &fd_path(target),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| Error::InvalidArgument(format!("share {}: {e}", source.display())))?;
    if readonly {
        // `target` still names the directory under the new mount: the remount needs
        // the mount's root, which a fresh lookup of the name reaches.
        let fd = nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Backend(format!("share: reopen {name}: {e}")))?;
        // SAFETY: openat returned a new fd that nothing else owns.
        let mounted = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut locked = MsFlags::empty();
        if let Ok(st) = nix::sys::statvfs::statvfs(source) {
            use nix::sys::statvfs::FsFlags;
            for (f, m) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if st.flags().contains(f) {
                    locked |= m;
                }
            }
        }
        nix::mount::mount(
            None::<&str>,
            &fd_path(&mounted),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            None::<&str>,
        )
        .map_err(|e| Error::Backend(format!("read-only share {}: {e}", source.display())))?;
    }
    Ok(())
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmount everything at or under `dir` without following symlinks; fail if anything
/// stays mounted (removing the directory then would delete the mounted files).
pub fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..4 {
        let left = mounts_under(dir);
        if left.is_empty() {
            return Ok(());
        }
        for m in left {
            let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "still mounted under {}: {left:?}",
            dir.display()
        )))
    }
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

impl Share {
    /// Create `root` as a private-to-Stockade shared mount point.
    pub fn create(root: &Path) -> Result<Share> {
        std::fs::create_dir_all(root).map_err(Error::io(format!("create {}", root.display())))?;
        let share = Share {
            root: root.to_path_buf(),
        };
        nix::mount::mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::Backend(format!("bind share {}: {e}", root.display())))?;
        let shared = nix::mount::mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        );
        if let Err(e) = shared {
            let _ = share.destroy();
            return Err(Error::Backend(format!("make share shared: {e}")));
        }
        Ok(share)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn root_fd(&self) -> Result<OwnedFd> {
        let f = File::open(&self.root).map_err(Error::io("open share"))?;
        Ok(f.into())
    }

    /// Put a container's rootfs and bind-mount sources into the share and rewrite
    /// `spec` to the guest's paths. `bundle` resolves a relative root path.
    pub fn add_container(&self, id: &str, spec: &mut Spec, bundle: &Path) -> Result<()> {
        let res = self.add_container_in(id, spec, bundle);
        if res.is_err() {
            let _ = self.remove_container(id);
        }
        res
    }

    fn add_container_in(&self, id: &str, spec: &mut Spec, bundle: &Path) -> Result<()> {
        let root = self.root_fd()?;
        // A leftover of the same name (from the guest or a crash) goes first.
        self.remove_container(id)?;
        let dir = open_dir_at(&root, id, true)?;
        let guest_dir = Path::new(GUEST_SHARE_DIR).join(id);

        let oci_root = spec
            .root_mut()
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("config.json has no root".into()))?;
        let source = if oci_root.path().is_absolute() {
            oci_root.path().clone()
        } else {
            bundle.join(oci_root.path())
        };
        if !source.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "rootfs {} is not a directory",
                source.display()
            )));
        }
        let target = open_dir_at(&dir, "rootfs", true)?;
        // The guest applies root.readonly itself; the share stays writable for it.
        bind(&source, &dir, "rootfs", &target, false)?;
        oci_root.set_path(guest_dir.join("rootfs"));

        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let mut mounts_dir = None;
        for (n, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let Some(src) = m.source().clone() else {
                continue;
            };
            if !src.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "bind mount source {} is not absolute",
                    src.display()
                )));
            }
            let meta = std::fs::metadata(&src).map_err(|e| {
                Error::InvalidArgument(format!("bind mount source {}: {e}", src.display()))
            })?;
            if mounts_dir.is_none() {
                mounts_dir = Some(open_dir_at(&dir, "mounts", true)?);
            }
            let parent = mounts_dir.as_ref().expect("just set");
            let name = n.to_string();
            let target = if meta.is_dir() {
                open_dir_at(parent, &name, true)?
            } else {
                create_file_at(parent, &name)?
            };
            let readonly = m
                .options()
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o == "ro"));
            bind(&src, parent, &name, &target, readonly)?;
            m.set_source(Some(guest_dir.join("mounts").join(&name)));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Unmount and remove a container's part of the share.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let dir = self.root.join(id);
        unmount_under(&dir)?;
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("remove {}", dir.display()))),
            Ok(_) => std::fs::remove_file(&dir).map_err(Error::io("remove share entry")),
            Err(_) => Ok(()),
        }
    }

    /// Unmount everything and remove the share.
    pub fn destroy(&self) -> Result<()> {
        unmount_under(&self.root)?;
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", self.root.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_is_deepest_first() {
        // Runs against the real mount table: "/" contains everything, deepest first.
        let all = mounts_under(Path::new("/"));
        assert!(!all.is_empty());
        let depths: Vec<usize> = all.iter().map(|p| p.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] >= w[1]));
    }
}
