//! VM config helpers: the guest assets and the hypervisor config VM tests boot with.

use std::path::PathBuf;

/// Where the guest assets live (`$STOCKADE_GUEST_DIR`, else setup.sh's install dir).
pub fn guest_assets() -> PathBuf {
    std::env::var_os("STOCKADE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/stockade"))
}

/// The `[hypervisor]` table of a Stockade config for [`guest_config`].
pub fn hypervisor_toml(cfg: &stockade_runtime::config::HypervisorConfig) -> String {
    format!(
        "[hypervisor]\naccel = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\nboot_timeout_secs = {}\n",
        match cfg.accel {
            stockade_runtime::config::Accel::Kvm => "kvm",
            stockade_runtime::config::Accel::Tcg => "tcg",
        },
        cfg.kernel.display(),
        cfg.initrd.display(),
        cfg.boot_timeout_secs
    )
}

/// The hypervisor config the VM tests and benchmarks boot with: the installed guest
/// assets, KVM where the probe passes, TCG elsewhere.
pub fn guest_config() -> stockade_runtime::config::HypervisorConfig {
    use stockade_runtime::config::{Accel, HypervisorConfig};
    use stockade_runtime::probe::{RealHost, probe_kvm};
    let assets = guest_assets();
    HypervisorConfig {
        accel: if probe_kvm(&RealHost).is_usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        },
        kernel: assets.join("vmlinuz"),
        initrd: assets.join("initrd.img"),
        boot_timeout_secs: 60,
        ..Default::default()
    }
}
