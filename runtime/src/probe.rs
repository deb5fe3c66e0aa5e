//! The honest KVM probe: /dev/kvm existing is not enough.
//!
//! KVM is usable for a stock guest kernel when /dev/kvm opens, reports API version 12,
//! `KVM_CREATE_VM` succeeds, the CPU has hardware virtualization (vmx/svm), and the
//! module is not PVM-only (`/sys/module/kvm_pvm`), which boots only specially built guests.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    Usable,
    Unusable(String),
}

impl KvmProbe {
    pub fn is_usable(&self) -> bool {
        matches!(self, KvmProbe::Usable)
    }
}

impl std::fmt::Display for KvmProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvmProbe::Usable => f.write_str("KVM usable"),
            KvmProbe::Unusable(why) => write!(f, "KVM not usable: {why}"),
        }
    }
}

/// The host facts the probe reads, behind a trait so tests can supply a fake host.
pub trait KvmHost {
    fn cpu_flags(&self) -> std::io::Result<String>;
    fn pvm_only(&self) -> bool;
    /// API version and whether KVM_CREATE_VM worked.
    fn kvm_ioctls(&self) -> std::io::Result<(i32, bool)>;
}

pub struct RealHost;

impl KvmHost for RealHost {
    fn cpu_flags(&self) -> std::io::Result<String> {
        let info = std::fs::read_to_string("/proc/cpuinfo")?;
        Ok(info
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or_default()
            .to_string())
    }

    fn pvm_only(&self) -> bool {
        Path::new("/sys/module/kvm_pvm").exists()
    }

    fn kvm_ioctls(&self) -> std::io::Result<(i32, bool)> {
        let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm")?;
        // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
        let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
        if version < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: KVM_CREATE_VM takes the machine type (0 = default) and returns a new fd.
        let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
        if vm >= 0 {
            // SAFETY: the ioctl returned a fresh fd that nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(vm) });
        }
        Ok((version, vm >= 0))
    }
}

pub fn probe_kvm(host: &dyn KvmHost) -> KvmProbe {
    let (version, created) = match host.kvm_ioctls() {
        Ok(v) => v,
        Err(e) => return KvmProbe::Unusable(format!("cannot open /dev/kvm: {e}")),
    };
    if version != KVM_API_VERSION {
        return KvmProbe::Unusable(format!(
            "KVM API version {version}, expected {KVM_API_VERSION}"
        ));
    }
    if !created {
        return KvmProbe::Unusable("KVM_CREATE_VM failed".into());
    }
    if host.pvm_only() {
        return KvmProbe::Unusable(
            "KVM here is PVM (/sys/module/kvm_pvm): stock guest kernels do not boot".into(),
        );
    }
    match host.cpu_flags() {
        Ok(flags) if flags.split_whitespace().any(|f| f == "vmx" || f == "svm") => KvmProbe::Usable,
        Ok(_) => KvmProbe::Unusable("the CPU has no vmx/svm virtualization extensions".into()),
        Err(e) => KvmProbe::Unusable(format!("cannot read /proc/cpuinfo: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        flags: &'static str,
        pvm: bool,
        ioctls: Option<(i32, bool)>,
    }

    impl KvmHost for Fake {
        fn cpu_flags(&self) -> std::io::Result<String> {
            Ok(self.flags.into())
        }
        fn pvm_only(&self) -> bool {
            self.pvm
        }
        fn kvm_ioctls(&self) -> std::io::Result<(i32, bool)> {
            self.ioctls
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
        }
    }

    #[test]
    fn usable_needs_everything() {
        let good = Fake {
            flags: "flags : fpu vmx sse",
            pvm: false,
            ioctls: Some((12, true)),
        };
        assert_eq!(probe_kvm(&good), KvmProbe::Usable);
    }

    #[test]
    fn pvm_is_not_usable() {
        let pvm = Fake {
            flags: "flags : vmx",
            pvm: true,
            ioctls: Some((12, true)),
        };
        assert!(probe_kvm(&pvm).to_string().contains("PVM"));
    }

    #[test]
    fn missing_device_wrong_api_or_no_vm_is_not_usable() {
        for fake in [
            Fake {
                flags: "vmx",
                pvm: false,
                ioctls: None,
            },
            Fake {
                flags: "vmx",
                pvm: false,
                ioctls: Some((11, true)),
            },
            Fake {
                flags: "vmx",
                pvm: false,
                ioctls: Some((12, false)),
            },
            Fake {
                flags: "flags : fpu",
                pvm: false,
                ioctls: Some((12, true)),
            },
        ] {
            assert!(!probe_kvm(&fake).is_usable());
        }
    }

    #[test]
    fn this_host_probe_is_consistent() {
        // On a PVM host (these CI machines) the probe must never claim usable KVM.
        let result = probe_kvm(&RealHost);
        if RealHost.pvm_only() {
            assert!(!result.is_usable(), "{result}");
        }
    }
}
