//! The pod's share: the host directory one virtiofsd exports to the guest.
//!
//! Layout: `<sandbox>/share/<container>/rootfs` (the container's rootfs) and
//! `<sandbox>/share/<container>/mounts/<n>` (the spec's n-th bind mount source). The
//! guest sees the share at [`GUEST_SHARE_DIR`] and the host rewrites the spec to those
//! guest paths.
//!
//! The guest can write anywhere in the share (through virtiofs, as root), so the host
//! treats every name in it as hostile:
//! - every lookup below the share root is `openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` and `O_PATH`, so
//!   it neither leaves the share nor follows a link nor opens (and so blocks on) a FIFO;
//! - a mount is made detached (`open_tree`), given its flags (`mount_setattr`, read-only,
//!   nosuid and nodev, recursively: a read-only volume is read-only before anything can
//!   see it, submounts included) and only then attached onto the target's fd
//!   (`move_mount`);
//! - the host keeps an fd of every mount it made and unmounts through it, so a guest
//!   that renames directories (names with tabs or newlines included) can neither keep a
//!   mount alive past its container nor make Delete fail;
//! - nothing is removed while mountinfo shows a mount under it (guest junk left then is
//!   removed with the whole share at teardown, after the share is detached whole).
//!
//! The share is a shared mount, so mounts added after virtiofsd started (its sandbox
//! keeps a slave copy of the host's mounts) reach it.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::Spec;
use stockade_agent_protocol::GUEST_SHARE_DIR;

use crate::error::{Error, Result};

pub struct Share {
    root: PathBuf,
    /// The mounts each container has in the share (fds of their roots), by id.
    mounts: Mutex<HashMap<String, Vec<OwnedFd>>>,
}

// The new mount API (linux/mount.h); the libc crate does not export these for glibc.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct open_how` (linux/openat2.h); libc's is non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} has a NUL byte", p.display())))
}

fn last_os(what: String) -> Error {
    Error::Backend(format!(
        "share: {what}: {}",
        std::io::Error::last_os_error()
    ))
}

/// `name` (one component) under `parent`, resolved beneath it without following any
/// link or crossing a mount, as an `O_PATH` fd (which opens no FIFO, so never blocks).
fn open_beneath(parent: &OwnedFd, name: &str, directory: bool) -> Result<OwnedFd> {
    let c = c_path(Path::new(name))?;
    let mut flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV,
    };
    // SAFETY: openat2 reads a NUL-terminated path and an open_how of the size given;
    // both live across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            parent.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(last_os(format!("open {name} (beneath, no links)")));
    }
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A new, empty directory `name` under `parent`, open. Anything the guest put at that
/// name first makes this fail (the caller moves leftovers aside beforehand).
fn new_dir(parent: &OwnedFd, name: &str) -> Result<OwnedFd> {
    nix::sys::stat::mkdirat(
        Some(parent.as_raw_fd()),
        name,
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .map_err(|e| Error::Backend(format!("share: mkdir {name}: {e}")))?;
    open_beneath(parent, name, true)
}

/// A new, empty regular file `name` under `parent` (a mount target for a file volume),
/// open `O_PATH`: made with mknod, never opened for reading or writing.
fn new_file(parent: &OwnedFd, name: &str) -> Result<OwnedFd> {
    nix::sys::stat::mknodat(
        Some(parent.as_raw_fd()),
        name,
        nix::sys::stat::SFlag::S_IFREG,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .map_err(|e| Error::Backend(format!("share: create {name}: {e}")))?;
    open_beneath(parent, name, false)
}

/// What one mount in the share looks like on the host side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountFlags {
    readonly: bool,
    nosuid: bool,
    nodev: bool,
}

impl MountFlags {
    /// A bind mount's host-side flags from its OCI options: read-only with `ro`; nosuid
    /// and nodev unless the spec asks for `suid` or `dev`.
    fn of_options(options: &[String]) -> MountFlags {
        let has = |o: &str| options.iter().any(|x| x == o);
        MountFlags {
            readonly: has("ro"),
            nosuid: !has("suid"),
            nodev: !has("dev"),
        }
    }

    fn attr(self) -> u64 {
        let mut a = 0;
        if self.readonly {
            a |= MOUNT_ATTR_RDONLY;
        }
        if self.nosuid {
            a |= MOUNT_ATTR_NOSUID;
        }
        if self.nodev {
            a |= MOUNT_ATTR_NODEV;
        }
        a
    }
}

/// Clone the tree at `source` (recursively), give it `flags` on every mount of it while
/// it is still detached, then attach it onto `target`. Returns the new mount's fd.
fn attach(source: &Path, target: &OwnedFd, flags: MountFlags) -> Result<OwnedFd> {
    let src = c_path(source)?;
    // SAFETY: open_tree reads a NUL-terminated path; it returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(Error::InvalidArgument(format!(
            "share {}: {}",
            source.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: flags.attr(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads an empty path and a mount_attr of the size given.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set < 0 {
        return Err(last_os(format!("set flags on {}", source.display())));
    }
    // SAFETY: move_mount reads two empty paths; both fds are ours and open.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(last_os(format!("attach {}", source.display())));
    }
    Ok(tree)
}

/// Detach the mount whose root `mount` is open on, wherever the guest moved it.
fn detach(mount: &OwnedFd) -> Result<()> {
    // The magic link names the mount itself, not a path the guest can rename.
    let path = format!("/proc/self/fd/{}", mount.as_raw_fd());
    nix::mount::umount2(path.as_str(), MntFlags::MNT_DETACH)
        .map_err(|e| Error::Backend(format!("share: unmount: {e}")))
}

/// A mountinfo path field: `\ooo` octal escapes (space, tab, newline, backslash) decoded.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmount everything at or under `dir` without following symlinks; fail if anything
/// stays mounted (removing the directory then would delete the mounted files).
pub fn unmount_under(dir: &Path) -> Result<()> {
    // One detach of the top takes every mount below it along, whatever their names.
    let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
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

pub(crate) fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Where a leftover entry named `id` goes before a new one is made: a name no
/// container id can take (ids are `[A-Za-z0-9_.-]`, never starting with `.`), removed
/// with the share at teardown.
fn stale_name(id: &str, n: u32) -> String {
    format!(".stale-{n}-{id}")
}

impl Share {
    /// Create `root` as a private-to-Stockade shared mount point (nosuid, nodev).
    pub fn create(root: &Path) -> Result<Share> {
        std::fs::create_dir_all(root).map_err(Error::io(format!("create {}", root.display())))?;
        let share = Share {
            root: root.to_path_buf(),
            mounts: Mutex::new(HashMap::new()),
        };
        // A bind of itself, then nosuid and nodev on it, then shared.
        let made = [
            (Some(root), MsFlags::MS_BIND),
            (
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            ),
            (None, MsFlags::MS_SHARED),
        ]
        .into_iter()
        .try_for_each(|(source, flags)| {
            nix::mount::mount(source, root, None::<&str>, flags, None::<&str>)
        });
        if let Err(e) = made {
            let _ = share.destroy();
            return Err(Error::Backend(format!("share {}: {e}", root.display())));
        }
        Ok(share)
    }

    /// The share a warm-pool VM was booted with, made by [`create`](Self::create) in
    /// another process and holding no container yet, now at `root`.
    pub fn adopt(root: &Path) -> Share {
        Share {
            root: root.to_path_buf(),
            mounts: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    fn root_fd(&self) -> Result<OwnedFd> {
        let f = std::fs::File::open(&self.root).map_err(Error::io("open share"))?;
        Ok(f.into())
    }

    /// Put a container's rootfs and bind-mount sources into the share and rewrite
    /// `spec` to the guest's paths. `bundle` resolves a relative root path.
    pub fn add_container(&self, id: &str, spec: &mut Spec, bundle: &Path) -> Result<()> {
        let mut made = Vec::new();
        let res = self.add_container_in(id, spec, bundle, &mut made);
        self.mounts
            .lock()
            .expect("share lock")
            .insert(id.to_string(), made);
        if res.is_err() {
            let _ = self.remove_container(id);
        }
        res
    }

    fn add_container_in(
        &self,
        id: &str,
        spec: &mut Spec,
        bundle: &Path,
        made: &mut Vec<OwnedFd>,
    ) -> Result<()> {
        if !stockade_agent_protocol::valid_id(id) {
            return Err(Error::InvalidArgument(format!("container id {id:?}")));
        }
        // A leftover of the same name (from the guest or a crash) goes first.
        self.remove_container(id)?;
        let root = self.root_fd()?;
        let dir = match new_dir(&root, id) {
            Ok(d) => d,
            Err(_) => {
                // The guest put something there in between: move it aside, once.
                self.move_aside(&root, id)?;
                new_dir(&root, id)?
            }
        };
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
        let target = new_dir(&dir, "rootfs")?;
        // The guest applies root.readonly itself; the share stays writable for it.
        let flags = MountFlags::of_options(&[]);
        made.push(attach(&source, &target, flags)?);
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
                mounts_dir = Some(new_dir(&dir, "mounts")?);
            }
            let parent = mounts_dir.as_ref().expect("just set");
            let name = n.to_string();
            let target = if meta.is_dir() {
                new_dir(parent, &name)?
            } else {
                new_file(parent, &name)?
            };
            let flags = MountFlags::of_options(m.options().as_deref().unwrap_or_default());
            made.push(attach(&src, &target, flags)?);
            m.set_source(Some(guest_dir.join("mounts").join(&name)));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Rename the entry `id` under the share root out of the way (to a name no
    /// container can have), without following it.
    fn move_aside(&self, root: &OwnedFd, id: &str) -> Result<()> {
        for n in 0..1000 {
            let to = stale_name(id, n);
            match nix::fcntl::renameat2(
                Some(root.as_raw_fd()),
                id,
                Some(root.as_raw_fd()),
                to.as_str(),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(()),
                Err(nix::Error::ENOENT) => return Ok(()),
                Err(nix::Error::EEXIST) => continue,
                Err(e) => return Err(Error::Backend(format!("share: move {id} aside: {e}"))),
            }
        }
        Err(Error::Backend(format!(
            "share: move {id} aside: no free name"
        )))
    }

    /// Unmount a container's part of the share by the mounts made for it, then remove
    /// what is left at its name. Never fails on what the guest did to the share: what
    /// cannot be removed now is moved aside and goes with the share.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let made = self
            .mounts
            .lock()
            .expect("share lock")
            .remove(id)
            .unwrap_or_default();
        for m in made.iter().rev() {
            if let Err(e) = detach(m) {
                // The mount is still attached: keep its fd so the share's teardown
                // (which detaches the whole share) is the last word, and say so.
                log::warn!(id, error:% = e; "share mount not detached");
                return Err(e);
            }
        }
        let dir = self.root.join(id);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(());
        }
        let removed = if mounts_under(&dir).is_empty() {
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir),
                _ => std::fs::remove_file(&dir),
            }
        } else {
            Err(std::io::Error::other("a mount the guest moved is under it"))
        };
        if let Err(e) = removed {
            log::info!(id, error:% = e; "share entry moved aside until teardown");
            self.move_aside(&self.root_fd()?, id)?;
        }
        Ok(())
    }

    /// Unmount everything and remove the share.
    pub fn destroy(&self) -> Result<()> {
        self.mounts.lock().expect("share lock").clear();
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

    fn spec_with(root: &Path, volumes: &[(&Path, &[&str])]) -> Spec {
        let mounts: Vec<serde_json::Value> = volumes
            .iter()
            .enumerate()
            .map(|(n, (src, opts))| {
                let mut o: Vec<&str> = vec!["rbind"];
                o.extend(opts.iter());
                serde_json::json!({"destination": format!("/v{n}"), "type": "bind",
                    "source": src, "options": o})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "root": {"path": root}, "mounts": mounts}))
        .unwrap()
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        share: Share,
        rootfs: PathBuf,
        volume: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let share = Share::create(&tmp.path().join("share")).unwrap();
        let rootfs = tmp.path().join("rootfs");
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("host-file"), "host").unwrap();
        Fixture {
            _tmp: tmp,
            share,
            rootfs,
            volume,
        }
    }

    fn only_the_share_is_mounted(f: &Fixture) {
        assert_eq!(
            mounts_under(f.share.path()),
            vec![f.share.path().to_path_buf()]
        );
    }

    #[test]
    fn read_only_volumes_are_read_only_down_to_their_submounts_and_nothing_is_suid_or_dev() {
        let f = fixture();
        // A submount in the volume: read-only must reach it too.
        let sub = f.volume.join("sub");
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mut spec = spec_with(&f.rootfs, &[(&f.volume, &["ro"]), (&f.volume, &[])]);
        f.share
            .add_container("c1", &mut spec, Path::new("/"))
            .unwrap();
        let ro = f.share.path().join("c1/mounts/0");
        let rw = f.share.path().join("c1/mounts/1");
        for p in [ro.join("x"), ro.join("sub/x")] {
            let e = std::fs::write(&p, "guest").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{}", p.display());
        }
        std::fs::write(rw.join("sub/x"), "guest").unwrap();
        use nix::sys::statvfs::{FsFlags, statvfs};
        for p in [&ro, &rw, &ro.join("sub"), &f.share.path().join("c1/rootfs")] {
            let fl = statvfs(p).unwrap().flags();
            assert!(
                fl.contains(FsFlags::ST_NOSUID) && fl.contains(FsFlags::ST_NODEV),
                "{}",
                p.display()
            );
        }
        f.share.remove_container("c1").unwrap();
        only_the_share_is_mounted(&f);
        nix::mount::umount2(&sub, MntFlags::MNT_DETACH).unwrap();
        f.share.destroy().unwrap();
    }

    #[test]
    fn mounts_go_with_their_container_whatever_the_guest_renamed() {
        let f = fixture();
        let mut spec = spec_with(&f.rootfs, &[(&f.volume, &[])]);
        f.share
            .add_container("c1", &mut spec, Path::new("/"))
            .unwrap();
        // The guest renames the container's dir to a name mountinfo must escape.
        let evil = f.share.path().join("evil \t\n\\name");
        std::fs::rename(f.share.path().join("c1"), &evil).unwrap();
        f.share.remove_container("c1").unwrap();
        only_the_share_is_mounted(&f);
        assert_eq!(
            std::fs::read_to_string(f.volume.join("host-file")).unwrap(),
            "host"
        );
        assert!(evil.join("mounts/0").exists() && !evil.join("mounts/0/host-file").exists());
        f.share.destroy().unwrap();
        assert!(!f.share.path().exists());
        assert!(f.volume.join("host-file").exists());
    }

    #[test]
    fn planted_links_and_fifos_are_moved_aside_never_followed_or_opened() {
        let f = fixture();
        let outside = f._tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // A link where the container's dir goes, then a FIFO.
        for plant in [0, 1] {
            let at = f.share.path().join("c1");
            if plant == 0 {
                std::os::unix::fs::symlink(&outside, &at).unwrap();
            } else {
                nix::unistd::mkfifo(&at, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            }
            let mut spec = spec_with(&f.rootfs, &[(&f.volume, &[])]);
            f.share
                .add_container("c1", &mut spec, Path::new("/"))
                .unwrap();
            assert!(std::fs::symlink_metadata(&at).unwrap().is_dir());
            assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
            f.share.remove_container("c1").unwrap();
            only_the_share_is_mounted(&f);
        }
        // Lookups never follow a link, even one pointing inside the share.
        let root = f.share.root_fd().unwrap();
        std::os::unix::fs::symlink(".", f.share.path().join("loop")).unwrap();
        assert!(open_beneath(&root, "loop", true).is_err());
        assert!(open_beneath(&root, "..", true).is_err());
        f.share.destroy().unwrap();
        assert!(outside.exists());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\011c\012d\134e"),
            PathBuf::from("/a b\tc\nd\\e")
        );
        assert_eq!(unescape_mountinfo(r"/a\04"), PathBuf::from(r"/a\04"));
    }

    #[test]
    fn host_side_flags_follow_the_spec() {
        let of = |o: &[&str]| {
            MountFlags::of_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            of(&["rbind", "ro"]),
            MountFlags {
                readonly: true,
                nosuid: true,
                nodev: true
            }
        );
        assert_eq!(
            of(&["suid", "dev"]),
            MountFlags {
                readonly: false,
                nosuid: false,
                nodev: false
            }
        );
    }
}
