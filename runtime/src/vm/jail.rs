//! A jail for a helper that needs no more of the host than its binary, its libraries and
//! one working dir: a private mount namespace whose root is a read-only tmpfs holding
//! `/usr` (read-only), the `/lib` and `/lib64` links (or read-only binds where they are
//! directories), `/etc/ld.so.cache`, the binary at `/helper` and the working dir at
//! `/work`. Entered in the child between fork and exec, as root, before the child
//! drops to its own uid ([`Jail::enter`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the jailed binary is, inside the jail.
pub const BINARY: &str = "/helper";
/// Where the working dir is, inside the jail.
pub const WORKDIR: &str = "/work";

pub struct Jail {
    root: CString,
    dirs: Vec<CString>,
    files: Vec<CString>,
    links: Vec<(CString, CString)>,
    /// (source, target, read-only)
    binds: Vec<(CString, CString, bool)>,
    cwd: CString,
}

fn c(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {} has a NUL byte", p.display())))
}

impl Jail {
    /// A jail at `root` (an empty dir, made here) for `binary`, working in `workdir`.
    pub fn new(root: &Path, binary: &Path, workdir: &Path) -> Result<Jail> {
        std::fs::create_dir_all(root).map_err(Error::io(format!("create {}", root.display())))?;
        let inside = |p: &str| root.join(p.trim_start_matches('/'));
        let mut dirs = vec![c(&inside("usr"))?, c(&inside("etc"))?, c(&inside(WORKDIR))?];
        let mut files = vec![c(&inside(BINARY))?];
        let mut links = Vec::new();
        let mut binds = vec![
            (c(Path::new("/usr"))?, c(&inside("usr"))?, true),
            (c(binary)?, c(&inside(BINARY))?, true),
            (c(workdir)?, c(&inside(WORKDIR))?, false),
        ];
        for lib in ["/lib", "/lib64"] {
            match std::fs::read_link(lib) {
                Ok(target) => links.push((c(&target)?, c(&inside(lib))?)),
                Err(_) if Path::new(lib).is_dir() => {
                    dirs.push(c(&inside(lib))?);
                    binds.push((c(Path::new(lib))?, c(&inside(lib))?, true));
                }
                Err(_) => {}
            }
        }
        let cache = PathBuf::from("/etc/ld.so.cache");
        if cache.exists() {
            files.push(c(&inside("etc/ld.so.cache"))?);
            binds.push((c(&cache)?, c(&inside("etc/ld.so.cache"))?, true));
        }
        Ok(Jail {
            root: c(root)?,
            dirs,
            files,
            links,
            binds,
            cwd: c(Path::new(WORKDIR))?,
        })
    }

    /// Enter the jail: in the child after fork, as root, before exec and before the uid
    /// change. Nothing is allocated.
    ///
    /// # Safety
    /// Only between fork and exec (it changes the process's mount namespace and root).
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let err = || Err(std::io::Error::last_os_error());
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: plain syscalls (async-signal-safe) on NUL-terminated paths prepared
        // before the fork, alive for the child's life; no memory is written.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return err();
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                c"mode=0755,size=64k".as_ptr().cast(),
            ) != 0
            {
                return err();
            }
            for d in &self.dirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 {
                    return err();
                }
            }
            for f in &self.files {
                if libc::mknod(f.as_ptr(), libc::S_IFREG | 0o644, 0) != 0 {
                    return err();
                }
            }
            for (target, at) in &self.links {
                if libc::symlink(target.as_ptr(), at.as_ptr()) != 0 {
                    return err();
                }
            }
            for (src, dst, ro) in &self.binds {
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return err();
                }
                let again = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | flags
                    | if *ro { libc::MS_RDONLY } else { 0 };
                if libc::mount(null, dst.as_ptr(), null, again, std::ptr::null()) != 0 {
                    return err();
                }
            }
            if libc::mount(
                null,
                self.root.as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                std::ptr::null(),
            ) != 0
                || libc::chroot(self.root.as_ptr()) != 0
                || libc::chdir(self.cwd.as_ptr()) != 0
            {
                return err();
            }
        }
        Ok(())
    }
}
