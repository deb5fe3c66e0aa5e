//! `configuration.toml`: every key is documented in `configs/configuration.toml`.
//!
//! Lookup order: the runtime options' `ConfigBody`, then `ConfigPath`, then
//! `$STOCKADE_CONFIG`, then `/etc/stockade/configuration.toml`, then
//! `/usr/share/stockade/configuration.toml`, then built-in defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const ETC_CONFIG: &str = "/etc/stockade/configuration.toml";
pub const SHARE_CONFIG: &str = "/usr/share/stockade/configuration.toml";
pub const CONFIG_ENV: &str = "STOCKADE_CONFIG";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub hypervisor: HypervisorConfig,
    pub container: ContainerConfig,
    pub pool: PoolConfig,
}

/// The warm pool (`containerd-shim-stockade-v2 pool`): VMs booted ahead of the pods
/// that claim them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// VMs kept booted and ready, per shape; 0: the service keeps none.
    pub size: u32,
    /// The VM shapes kept; none: `[hypervisor]`'s base `vcpus` and `memory_mib` (a pod
    /// without limits).
    pub shapes: Vec<PoolShape>,
}

/// One VM shape of the pool: what a pod's VM size must equal to claim from it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolShape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Weakest first: the ordering is "isolation strength".
    Container,
    Auto,
    Vm,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Container => "container",
            Mode::Auto => "auto",
            Mode::Vm => "vm",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "container" => Ok(Mode::Container),
            "auto" => Ok(Mode::Auto),
            "vm" => Ok(Mode::Vm),
            other => Err(format!(
                "unknown mode {other:?} (expected auto, vm or container)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub mode: Mode,
    /// Where per-sandbox state (libcontainer state, console sockets, hardened specs) lives.
    pub state_dir: PathBuf,
    /// error | warn | info | debug | trace
    pub log_level: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            mode: Mode::Auto,
            state_dir: PathBuf::from("/run/stockade"),
            log_level: "info".into(),
        }
    }
}

/// What VM mode does with a pod that asks for one of the host's namespaces (network,
/// IPC, PID, UTS: Kubernetes' hostNetwork, hostIPC, hostPID; Docker's `--network host`,
/// `--ipc host`, `--pid host`, `--uts host`), which a VM cannot give it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HostNamespacePods {
    /// Refuse it at RunPodSandbox / Create, naming the field.
    Refuse,
    /// Run it with the container backend (shares the host kernel: the weaker tier),
    /// with a log line saying why.
    Container,
}

/// The host side of the guest's vsock device.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VsockMode {
    /// Kernel vhost-vsock when `/dev/vhost-vsock` exists, else vhost-user.
    Auto,
    /// Kernel vhost-vsock (`/dev/vhost-vsock`), the host connecting with AF_VSOCK.
    Kernel,
    /// vhost-user vsock through `vsock_backend` (hybrid vsock Unix socket).
    VhostUser,
}

/// Whether the guest gets ACPI tables (QEMU microvm's `acpi=`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AcpiMode {
    /// Off for the Stockade kernel (the assets' `guest-kernel` file next to `kernel`
    /// says `stockade`): it takes its devices from the command line and its CPUs from
    /// an MP table, and boots faster without ACPI. On for any other kernel.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    pub accel: Accel,
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// ACPI for the guest; see [`AcpiMode`] and [`HypervisorConfig::acpi_enabled`].
    pub acpi: AcpiMode,
    pub vsock: VsockMode,
    /// vhost-user vsock backend, used when the kernel transport is not.
    pub vsock_backend: PathBuf,
    /// virtio-fs daemon, one per pod, run with `--sandbox namespace`.
    pub virtiofsd: PathBuf,
    /// The guest's base vCPUs: a pod without CPU limits gets these; a pod with limits
    /// gets these plus its limits (see `vm::sizing`).
    pub vcpus: u32,
    /// The guest's base memory, as `vcpus`.
    pub memory_mib: u32,
    /// Upper bound of a pod's vCPUs; 0: the host's CPU count.
    pub max_vcpus: u32,
    /// Upper bound of a pod's memory; 0: the host's RAM.
    pub max_memory_mib: u32,
    pub boot_timeout_secs: u64,
    /// VM mode's policy for privileged containers (those `[container]
    /// allow_privileged` governs in container mode): when true, such a container runs
    /// with what it asked for inside its pod's own VM, with no host device and no host
    /// namespace; when false, Create and Exec refuse it. `[container] allow_privileged`
    /// does not apply in VM mode.
    pub allow_privileged: bool,
    /// The first of the host uids (and gids) the VMs' helpers run as: QEMU and the
    /// vsock backend of each VM get a pair of their own from
    /// [`HELPER_IDS`](crate::config::HELPER_IDS) ids starting here, none of them a
    /// user of the host. Pick a range no host user or subuid range uses.
    pub helper_id_base: u32,
    /// Pods asking for the host's network, IPC, PID or UTS namespace: refused, or run
    /// with the container backend. Never given the VM's namespaces silently.
    pub host_namespace_pods: HostNamespacePods,
}

impl HypervisorConfig {
    /// Which guest kernel `kernel` is, from the `guest-kernel` file the guest assets'
    /// build writes next to it (`stockade` or `cloud`); None for a kernel from elsewhere.
    pub fn kernel_kind(&self) -> Option<String> {
        let marker = self.kernel.parent()?.join("guest-kernel");
        let kind = std::fs::read_to_string(marker).ok()?;
        Some(kind.trim().to_string()).filter(|k| !k.is_empty())
    }

    /// Whether the guest gets ACPI tables: `acpi`, or for `auto` off exactly for the
    /// Stockade kernel.
    pub fn acpi_enabled(&self) -> bool {
        match self.acpi {
            AcpiMode::On => true,
            AcpiMode::Off => false,
            AcpiMode::Auto => self.kernel_kind().as_deref() != Some("stockade"),
        }
    }
}

/// How many host ids VM helpers may take, from `[hypervisor] helper_id_base`.
pub const HELPER_IDS: u32 = 1 << 20;

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            accel: Accel::Kvm,
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            kernel: PathBuf::from("/usr/share/stockade/vmlinuz"),
            initrd: PathBuf::from("/usr/share/stockade/initrd.img"),
            acpi: AcpiMode::Auto,
            vsock: VsockMode::Auto,
            vsock_backend: PathBuf::from("/usr/local/bin/vhost-device-vsock"),
            virtiofsd: PathBuf::from("/usr/local/bin/virtiofsd"),
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 0,
            max_memory_mib: 0,
            boot_timeout_secs: 30,
            allow_privileged: false,
            helper_id_base: 1_900_000_000,
            host_namespace_pods: HostNamespacePods::Refuse,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    /// Force `process.noNewPrivileges = true` for the init and every exec.
    pub no_new_privileges: bool,
    /// Apply Stockade's default seccomp profile when the spec carries none.
    pub default_seccomp: bool,
    /// Deny the extra syscalls and socket families (see `linux::seccomp::EXTRA_DENY`)
    /// even when the spec brings its own profile.
    pub extra_seccomp_deny: bool,
    /// Allow privileged containers (CAP_SYS_ADMIN requested, or seccomp/AppArmor
    /// unconfined together with all capabilities). Refused when false.
    pub allow_privileged: bool,
    /// pids.max applied when the spec sets no pids limit; 0 disables.
    pub default_pids_limit: i64,
    /// Paths masked in addition to the spec's `maskedPaths`.
    pub extra_masked_paths: Vec<String>,
    /// Paths made read-only in addition to the spec's `readonlyPaths`.
    pub extra_readonly_paths: Vec<String>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            no_new_privileges: true,
            default_seccomp: true,
            extra_seccomp_deny: true,
            allow_privileged: false,
            default_pids_limit: 4096,
            extra_masked_paths: [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/proc/interrupts",
                "/proc/kallsyms",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
                "/sys/kernel/debug",
                "/sys/kernel/security",
            ]
            .map(String::from)
            .to_vec(),
            extra_readonly_paths: [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Where a configuration may come from besides the files on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// `ConfigBody` of containerd's `runtimeoptions.v1.Options`.
    pub body: Option<String>,
    /// `ConfigPath` of containerd's `runtimeoptions.v1.Options`.
    pub path: Option<PathBuf>,
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Resolve the configuration with the documented precedence.
    pub fn load(source: &ConfigSource) -> Result<Config> {
        if let Some(body) = source.body.as_deref().filter(|b| !b.trim().is_empty()) {
            return Self::parse(body, Path::new("<runtime options ConfigBody>"));
        }
        if let Some(path) = source.path.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            return Self::from_file(path);
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Self::from_file(Path::new(&path));
        }
        for candidate in [ETC_CONFIG, SHARE_CONFIG] {
            let path = Path::new(candidate);
            if path.exists() {
                return Self::from_file(path);
            }
        }
        Ok(Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_file() {
        let err = Config::parse("[runtime]\nmoed = \"vm\"\n", Path::new("/x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x.toml") && msg.contains("moed"), "{msg}");
    }

    #[test]
    fn body_wins_over_path() {
        let src = ConfigSource {
            body: Some("[runtime]\nmode = \"container\"\n".into()),
            path: Some("/nonexistent".into()),
        };
        assert_eq!(Config::load(&src).unwrap().runtime.mode, Mode::Container);
    }

    #[test]
    fn missing_config_path_is_an_error() {
        let src = ConfigSource {
            body: None,
            path: Some("/nonexistent/stockade.toml".into()),
        };
        assert!(Config::load(&src).is_err());
    }

    #[test]
    fn every_file_in_configs_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.starts_with("configuration") && name.ends_with(".toml") {
                Config::from_file(&path).unwrap();
                n += 1;
            } else if name.ends_with(".toml") {
                toml::from_str::<toml::Value>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else if name.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            } else if name.ends_with(".yaml") {
                let v: serde_yaml::Value =
                    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                if v["kind"] == "RuntimeClass" {
                    // The handler containerd-cri.toml configures.
                    assert_eq!(v["handler"], "stockade", "{name}");
                    assert!(v["overhead"]["podFixed"]["memory"].is_string(), "{name}");
                }
            }
        }
        assert!(n >= 1, "no configuration*.toml in {}", dir.display());
    }

    #[test]
    fn shipped_config_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/configuration.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }
}
