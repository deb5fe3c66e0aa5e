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

/// Debian's cloud kernel's guest assets, which setup builds beside the default ones (the
/// Stockade kernel's) for the tests and the kernel benchmark: `<guest assets>/cloud`.
pub fn cloud_guest_assets() -> PathBuf {
    guest_assets().join("cloud")
}

/// The hypervisor config the VM tests and benchmarks boot with: the installed guest
/// assets, KVM where the probe passes, TCG elsewhere.
pub fn guest_config() -> stockade_runtime::config::HypervisorConfig {
    guest_config_at(&guest_assets())
}

/// [`guest_config`] with the guest assets in `assets`.
pub fn guest_config_at(assets: &std::path::Path) -> stockade_runtime::config::HypervisorConfig {
    use stockade_runtime::config::{Accel, HypervisorConfig};
    use stockade_runtime::probe::{RealHost, probe_kvm};
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

/// The pids of processes named `name` (their command's file name) working in `dir` or
/// below it: their command line names it, or their current directory is in it.
pub fn helpers_working_in(dir: &std::path::Path, name: &str) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let exe = cmd.split(' ').next().unwrap_or("");
        if !exe.ends_with(name) {
            continue;
        }
        let cwd_in = std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir));
        if cmd.contains(&needle) || cwd_in {
            out.push(pid);
        }
    }
    out
}
