//! CVE-2019-5736: container init code never runs from the host's shim binary.
//!
//! The shim copies its own executable once into a sealed memfd and runs every
//! libcontainer helper from that copy, so a container process that reaches
//! `/proc/<pid>/exe` sees an anonymous, immutable file, not the host binary.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Error, Result};

pub struct SealedExe {
    fd: OwnedFd,
}

impl SealedExe {
    pub fn new() -> Result<SealedExe> {
        let name = c"stockade-shim";
        // SAFETY: memfd_create with a valid NUL-terminated name; returns a new fd or -1.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(Error::io("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut out = File::from(fd);
        let mut exe = File::open("/proc/self/exe").map_err(Error::io("open /proc/self/exe"))?;
        std::io::copy(&mut exe, &mut out).map_err(Error::io("copy shim binary to memfd"))?;
        out.seek(SeekFrom::Start(0))
            .map_err(Error::io("seek memfd"))?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: F_ADD_SEALS on a memfd we own, with valid seal flags.
        if unsafe { libc::fcntl(out.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(Error::io("seal memfd")(std::io::Error::last_os_error()));
        }
        Ok(SealedExe { fd: out.into() })
    }

    /// A path that `execve` accepts. The fd is close-on-exec; execve resolves the
    /// path before closing it, so the child runs the sealed copy.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_a_sealed_memfd_with_the_same_bytes() {
        let sealed = SealedExe::new().unwrap();
        let link = std::fs::read_link(sealed.path()).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:stockade-shim"),
            "{link:?}"
        );
        // SAFETY: F_GET_SEALS on an fd we own.
        let seals = unsafe { libc::fcntl(sealed.fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        assert_eq!(seals & libc::F_SEAL_SEAL, libc::F_SEAL_SEAL);
        let ours = std::fs::read("/proc/self/exe").unwrap();
        let copy = std::fs::read(sealed.path()).unwrap();
        assert_eq!(ours, copy);
        // Writing through any path must fail.
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .open(sealed.path())
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(b"x")
                })
                .is_err()
        );
    }
}
