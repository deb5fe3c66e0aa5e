//! What Stockade adds to the OCI spec containerd or Docker passed, before libcontainer
//! sees it. Every rule is switchable in `[container]` of configuration.toml.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, Process,
    Spec,
};

use crate::config::ContainerConfig;
use crate::error::{Error, Result};
use crate::linux::confine::lend_sys_admin;
use crate::linux::seccomp::{self, Filters};
use crate::mounts::kernel_supports;

/// Capabilities that give the host away from a container that shares its kernel.
const HOST_CAPABILITIES: &[Capability] = &[
    Capability::SysAdmin,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysBoot,
    Capability::SysTime,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Bpf,
    Capability::Perfmon,
];

/// `CAP_SYS_ADMIN`, as the spec and the kernel spell it.
pub fn cap_name(c: Capability) -> String {
    serde_json::to_string(&c)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|_| format!("{c:?}"))
}

/// Every capability named in any of the five sets.
fn all_caps(caps: &LinuxCapabilities) -> HashSet<Capability> {
    [
        caps.bounding(),
        caps.effective(),
        caps.permitted(),
        caps.inheritable(),
        caps.ambient(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|s| s.iter().copied())
    .collect()
}

/// Whose namespaces a container shares where its spec asks for none of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The host's (the shim's container backend).
    Host,
    /// The pod VM's (the guest agent): the host checked the spec's namespaces first.
    Guest,
}

impl Kernel {
    /// The setting that allows privileged containers on this kernel: the container
    /// backend's on the host, VM mode's in a guest.
    pub fn allow_privileged_setting(self) -> &'static str {
        match self {
            Kernel::Host => "[container] allow_privileged",
            Kernel::Guest => "[hypervisor] allow_privileged",
        }
    }
}

/// Why the spec is privileged, one reason per capability that gives the host away:
/// the [`HOST_CAPABILITIES`], CAP_SYS_PTRACE in the host's PID namespace, CAP_NET_ADMIN
/// in the host's network. `kernel` says whose namespaces a container without its own
/// shares (in a guest, the VM's: the host checked the spec's first). Empty for an
/// ordinary container.
pub fn privileged_reasons(spec: &Spec, kernel: Kernel) -> Vec<String> {
    let Some(process) = spec.process() else {
        return vec![];
    };
    let Some(caps) = process.capabilities() else {
        return vec!["no capability sets (the process would keep every capability)".into()];
    };
    let all = all_caps(caps);
    let own = |t: LinuxNamespaceType| {
        kernel == Kernel::Guest
            || spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_ref())
                .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    let mut out: Vec<String> = HOST_CAPABILITIES
        .iter()
        .filter(|c| all.contains(c))
        .map(|c| cap_name(*c))
        .collect();
    if all.contains(&Capability::SysPtrace) && !own(LinuxNamespaceType::Pid) {
        out.push("CAP_SYS_PTRACE with the host's PID namespace".into());
    }
    if all.contains(&Capability::NetAdmin) && !own(LinuxNamespaceType::Network) {
        out.push("CAP_NET_ADMIN in the host's network namespace".into());
    }
    out
}

/// The refusal of a spec privileged for `reasons` (see [`privileged_reasons`]);
/// `setting` names the switch that allows it.
pub fn refuse_privileged(reasons: &[String], setting: &str) -> Result<()> {
    if reasons.is_empty() {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "privileged containers are refused by stockade: the spec asks for {}; set {setting} = true to allow them",
        reasons.join(", ")
    )))
}

/// What Create decided for the container's processes.
#[derive(Debug, Default)]
pub struct Hardened {
    /// Loaded by the init and by every exec (see [`crate::linux::confine`]).
    pub filters: Filters,
    /// The init runs without no-new-privileges: CAP_SYS_ADMIN is lent to load `filters`.
    pub drop_sys_admin: bool,
}

/// Validate and harden `spec` in place. `bundle` resolves a relative root path. The
/// seccomp profile leaves the spec: the container's processes load it themselves,
/// after Stockade's guard (see [`Filters`]).
pub fn harden(
    spec: &mut Spec,
    bundle: &Path,
    cfg: &ContainerConfig,
    kernel: Kernel,
) -> Result<Hardened> {
    check_root(spec, bundle)?;
    check_mounts(spec)?;
    let v1 = crate::linux::stats::cgroup_version() == crate::linux::stats::CgroupVersion::V1;
    if drop_v1_cgroup_mount_in_joined_pid_ns(spec, v1) {
        log::debug!("cgroup v1 and a joined PID namespace: no cgroup mount in the container");
    }

    let reasons = privileged_reasons(spec, kernel);
    if !cfg.allow_privileged {
        refuse_privileged(&reasons, kernel.allow_privileged_setting())?;
    }
    let privileged = !reasons.is_empty();

    if let (true, Some(process)) = (cfg.no_new_privileges, spec.process_mut()) {
        process.set_no_new_privileges(Some(true));
    }

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let profile = match linux.seccomp_mut().take() {
        Some(mut p) => {
            seccomp::check_spec_profile(&p)?;
            seccomp::to_libcontainer_encoding(&mut p);
            Some(p)
        }
        None if cfg.default_seccomp && !privileged => Some(seccomp::default_profile()?),
        None => None,
    };
    let guard = if cfg.extra_seccomp_deny && !privileged {
        Some(seccomp::guard_profile()?)
    } else {
        None
    };
    let filters = Filters {
        guard,
        profile,
        bpf: Vec::new(),
    };

    if !privileged {
        let masked = with_extra(linux.masked_paths(), &cfg.extra_masked_paths);
        linux.set_masked_paths(Some(masked));
        let readonly = with_extra(linux.readonly_paths(), &cfg.extra_readonly_paths);
        linux.set_readonly_paths(Some(readonly));
    }

    if cfg.default_pids_limit > 0 {
        let resources = linux
            .resources_mut()
            .get_or_insert_with(LinuxResources::default);
        if resources.pids().is_none() {
            let pids = LinuxPidsBuilder::default()
                .limit(cfg.default_pids_limit)
                .build()
                .map_err(|e| Error::Backend(format!("pids limit: {e}")))?;
            resources.set_pids(Some(pids));
        }
    }
    let drop_sys_admin = spec
        .process_mut()
        .as_mut()
        .is_some_and(|p| lend_sys_admin(p, !filters.is_empty()));
    Ok(Hardened {
        filters,
        drop_sys_admin,
    })
}

/// The spec's namespace of type `typ`, if it asks for one (with a path: joined).
pub fn spec_namespace(
    spec: &Spec,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> Option<&oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == typ)
}

/// On a cgroup v1 (or hybrid) host, libcontainer 0.7 builds a container's `cgroup` mount
/// from `/proc/<its own pid>`, read as a pid of the host's procfs. In a PID namespace the
/// container joins (a pod sharing its process namespace) that pid is the namespace's, so
/// the mount fails when no host process has that number, or takes another process's
/// cgroups when one does. Such a container gets no cgroup mount: on hosts with the v2
/// hierarchy beside v1 libcontainer mounts an empty one anyway (README, Known gaps).
/// Returns whether a mount was dropped.
pub fn drop_v1_cgroup_mount_in_joined_pid_ns(spec: &mut Spec, cgroup_v1: bool) -> bool {
    let joins_pid_ns = spec_namespace(spec, oci_spec::runtime::LinuxNamespaceType::Pid)
        .is_some_and(|n| n.path().is_some());
    if !cgroup_v1 || !joins_pid_ns {
        return false;
    }
    let Some(mounts) = spec.mounts_mut() else {
        return false;
    };
    let before = mounts.len();
    mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
    mounts.len() != before
}

/// A private time namespace (Docker 29.5 puts one in every spec) where the kernel has
/// none (`CONFIG_TIME_NS`, Linux 5.6 and later; `supported`): dropped with its clock
/// offsets, so the container runs on the kernel's clocks rather than failing to start.
/// Returns whether it was dropped.
pub fn drop_unsupported_time_namespace(spec: &mut Spec, supported: bool) -> bool {
    if supported || spec_namespace(spec, oci_spec::runtime::LinuxNamespaceType::Time).is_none() {
        return false;
    }
    let Some(linux) = spec.linux_mut() else {
        return false;
    };
    if let Some(namespaces) = linux.namespaces_mut() {
        namespaces.retain(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Time);
    }
    linux.set_time_offsets(None);
    true
}

/// Whether this kernel has time namespaces.
pub fn kernel_has_time_namespaces() -> bool {
    std::path::Path::new("/proc/self/ns/time").exists()
}

/// What every exec of a container is held to: no capability outside the init's
/// bounding set (unless privileged containers are allowed), no-new-privileges when the
/// config forces it, and the container's seccomp filters.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    /// The init's capabilities.
    pub capabilities: Option<LinuxCapabilities>,
    pub allow_privileged: bool,
    /// The setting that allows more (named in the refusal).
    pub setting: &'static str,
    pub no_new_privileges: bool,
    /// The container's processes load seccomp filters, so an exec needs them too.
    pub confined: bool,
}

impl ExecPolicy {
    pub fn of(spec: &Spec) -> ExecPolicy {
        ExecPolicy {
            capabilities: spec
                .process()
                .as_ref()
                .and_then(|p| p.capabilities().clone()),
            ..ExecPolicy::default()
        }
    }

    /// Check and complete an exec's `process`. Returns whether CAP_SYS_ADMIN was lent
    /// to it for loading the filters (see [`lend_sys_admin`]).
    pub fn apply(&self, id: &str, exec_id: &str, process: &mut Process) -> Result<bool> {
        if process.capabilities().is_none() {
            // Without sets, libcontainer would leave the exec every capability.
            process.set_capabilities(self.capabilities.clone());
        }
        let bounding: HashSet<Capability> = self
            .capabilities
            .as_ref()
            .and_then(|c| c.bounding().clone())
            .unwrap_or_default();
        let mut extra: Vec<String> = process
            .capabilities()
            .as_ref()
            .map(all_caps)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !bounding.contains(c))
            .map(cap_name)
            .collect();
        extra.sort();
        if !extra.is_empty() && !self.allow_privileged {
            return Err(Error::PermissionDenied(format!(
                "exec {exec_id} in container {id} asks for {}, outside the container's capabilities; refused by stockade (set {} = true to allow privileged execs)",
                extra.join(", "),
                self.setting
            )));
        }
        if self.no_new_privileges {
            process.set_no_new_privileges(Some(true));
        }
        Ok(lend_sys_admin(process, self.confined))
    }
}

/// The spec's list followed by the extras it does not already hold.
fn with_extra(spec: &Option<Vec<String>>, extra: &[String]) -> Vec<String> {
    let mut out = spec.clone().unwrap_or_default();
    for p in extra {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// The rootfs must exist and be a directory; a relative path is made absolute.
fn check_root(spec: &mut Spec, bundle: &Path) -> Result<()> {
    let root = spec
        .root_mut()
        .as_mut()
        .ok_or_else(|| Error::InvalidArgument("config.json has no root".into()))?;
    let path: PathBuf = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "rootfs {} is not a directory",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "rootfs {}: {e}",
                path.display()
            )));
        }
    }
    root.set_path(path);
    Ok(())
}

fn check_mounts(spec: &Spec) -> Result<()> {
    for m in spec.mounts().iter().flatten() {
        let kind = m.typ().as_deref().unwrap_or("");
        let is_bind = m
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind");
        if is_bind {
            continue;
        }
        if !kernel_supports(kind) {
            return Err(Error::InvalidArgument(format!(
                "mount {}: unknown mount type {kind:?}",
                m.destination().display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompAction, MountBuilder};

    use crate::error::Error;

    /// Harden for the host's kernel (the container backend).
    fn on_host(spec: &mut Spec, bundle: &Path, cfg: &ContainerConfig) -> Result<Hardened> {
        harden(spec, bundle, cfg, Kernel::Host)
    }

    fn spec_with_root(dir: &Path) -> Spec {
        let mut spec = Spec::default();
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(dir.to_path_buf());
        spec.set_root(Some(root));
        spec
    }

    #[test]
    fn a_time_namespace_is_dropped_only_where_the_kernel_has_none() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"time"}],
                "timeOffsets":{"monotonic":{"secs":10,"nanosecs":0}}}}"#,
        )
        .unwrap();
        let mut kept = spec.clone();
        assert!(!drop_unsupported_time_namespace(&mut kept, true));
        assert_eq!(kept, spec);
        let mut dropped = spec.clone();
        assert!(drop_unsupported_time_namespace(&mut dropped, false));
        let linux = dropped.linux().as_ref().unwrap();
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(types, [oci_spec::runtime::LinuxNamespaceType::Pid]);
        assert!(linux.time_offsets().is_none());
        let mut none = Spec::default();
        assert!(!drop_unsupported_time_namespace(&mut none, false));
    }

    #[test]
    fn a_joined_pid_namespace_on_cgroup_v1_gets_no_cgroup_mount() {
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};
        let with_pid_ns = |path: Option<&str>| {
            let mut spec = Spec::default();
            let mut ns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid);
            if let Some(p) = path {
                ns = ns.path(p);
            }
            let linux = LinuxBuilder::default()
                .namespaces(vec![ns.build().unwrap()])
                .build()
                .unwrap();
            spec.set_linux(Some(linux));
            spec
        };
        let cgroups = |spec: &Spec| {
            spec.mounts()
                .iter()
                .flatten()
                .filter(|m| m.typ().as_deref() == Some("cgroup"))
                .count()
        };
        let mut joined = with_pid_ns(Some("/proc/42/ns/pid"));
        assert_eq!(cgroups(&joined), 1, "the default spec has a cgroup mount");
        assert!(drop_v1_cgroup_mount_in_joined_pid_ns(&mut joined, true));
        assert_eq!(cgroups(&joined), 0);
        assert!(
            joined
                .mounts()
                .iter()
                .flatten()
                .any(|m| m.typ().as_deref() == Some("proc"))
        );
        // Its own PID namespace, or cgroup v2: libcontainer's mount is right; kept.
        for (path, v1) in [(None, true), (Some("/proc/42/ns/pid"), false)] {
            let mut spec = with_pid_ns(path);
            assert!(!drop_v1_cgroup_mount_in_joined_pid_ns(&mut spec, v1));
            assert_eq!(cgroups(&spec), 1);
        }
    }

    #[test]
    fn default_spec_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        let h = on_host(&mut spec, dir.path(), &ContainerConfig::default()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        let linux = spec.linux().as_ref().unwrap();
        // The processes load the filters themselves; libcontainer sees none.
        assert!(linux.seccomp().is_none());
        let sc = h.filters.profile.as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(h.filters.guard.is_some());
        assert!(!h.drop_sys_admin);
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .pids()
                .as_ref()
                .unwrap()
                .limit(),
            4096
        );
    }

    #[test]
    fn switches_turn_rules_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        let cfg = ContainerConfig {
            no_new_privileges: false,
            default_seccomp: false,
            extra_seccomp_deny: false,
            default_pids_limit: 0,
            extra_masked_paths: vec![],
            extra_readonly_paths: vec![],
            allow_privileged: false,
        };
        let h = on_host(&mut spec, dir.path(), &cfg).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none() && h.filters.is_empty());
        assert!(
            linux
                .resources()
                .as_ref()
                .and_then(|r| r.pids().as_ref())
                .is_none()
        );
    }

    #[test]
    fn missing_rootfs_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(&dir.path().join("nope"));
        let err = on_host(&mut spec, dir.path(), &ContainerConfig::default()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn unknown_mount_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        spec.set_mounts(Some(vec![
            MountBuilder::default()
                .destination("/x")
                .typ("nosuchfs")
                .source("/y")
                .build()
                .unwrap(),
        ]));
        let err = on_host(&mut spec, dir.path(), &ContainerConfig::default()).unwrap_err();
        assert!(err.to_string().contains("unknown mount type"), "{err}");
    }

    #[test]
    fn privileged_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        let mut caps = oci_spec::runtime::LinuxCapabilities::default();
        caps.set_bounding(Some([Capability::SysAdmin].into_iter().collect()));
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_capabilities(Some(caps));
        let err = on_host(&mut spec.clone(), dir.path(), &ContainerConfig::default()).unwrap_err();
        assert!(err.to_string().contains("CAP_SYS_ADMIN"), "{err}");
        let cfg = ContainerConfig {
            allow_privileged: true,
            ..Default::default()
        };
        on_host(&mut spec, dir.path(), &cfg).unwrap();
    }

    fn with_caps(spec: &mut Spec, caps: &[Capability]) {
        let set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
        let mut c = LinuxCapabilities::default();
        c.set_bounding(Some(set.clone()));
        c.set_effective(Some(set.clone()));
        c.set_permitted(Some(set));
        c.set_inheritable(Some(Default::default()));
        c.set_ambient(Some(Default::default()));
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_capabilities(Some(c));
    }

    #[test]
    fn every_host_capability_is_privileged_and_named() {
        let dir = tempfile::tempdir().unwrap();
        for cap in HOST_CAPABILITIES {
            let mut spec = spec_with_root(dir.path());
            with_caps(&mut spec, &[Capability::Chown, *cap]);
            let err = on_host(&mut spec, dir.path(), &ContainerConfig::default()).unwrap_err();
            assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
            assert!(err.to_string().contains(&cap_name(*cap)), "{err}");
        }
    }

    #[test]
    fn ptrace_and_net_admin_are_privileged_only_in_the_hosts_namespaces() {
        let mut spec = Spec::default();
        with_caps(&mut spec, &[Capability::SysPtrace, Capability::NetAdmin]);
        // Spec::default() has pid and network namespaces of its own.
        assert!(privileged_reasons(&spec, Kernel::Host).is_empty());
        let linux = spec.linux_mut().as_mut().unwrap();
        let ns = linux.namespaces().clone().unwrap();
        linux.set_namespaces(Some(
            ns.into_iter()
                .filter(|n| {
                    !matches!(
                        n.typ(),
                        LinuxNamespaceType::Pid | LinuxNamespaceType::Network
                    )
                })
                .collect(),
        ));
        let reasons = privileged_reasons(&spec, Kernel::Host);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("CAP_SYS_PTRACE") && reasons[1].contains("CAP_NET_ADMIN"));
        // In the guest, the namespaces shared are the VM's: the host checked those.
        assert!(privileged_reasons(&spec, Kernel::Guest).is_empty());
    }

    #[test]
    fn no_capability_sets_is_privileged() {
        let mut spec = Spec::default();
        spec.process_mut().as_mut().unwrap().set_capabilities(None);
        assert!(!privileged_reasons(&spec, Kernel::Host).is_empty());
    }

    #[test]
    fn without_forced_nnp_the_init_is_lent_sys_admin_for_seccomp() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_no_new_privileges(None);
        let cfg = ContainerConfig {
            no_new_privileges: false,
            ..Default::default()
        };
        let h = on_host(&mut spec, dir.path(), &cfg).unwrap();
        assert!(h.drop_sys_admin);
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(
            caps.permitted()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
    }

    fn policy(caps: &[Capability], allow: bool) -> ExecPolicy {
        let mut spec = Spec::default();
        with_caps(&mut spec, caps);
        ExecPolicy {
            allow_privileged: allow,
            setting: Kernel::Host.allow_privileged_setting(),
            no_new_privileges: true,
            confined: true,
            ..ExecPolicy::of(&spec)
        }
    }

    fn exec_process(caps: Option<&[Capability]>) -> Process {
        let mut spec = Spec::default();
        match caps {
            Some(c) => with_caps(&mut spec, c),
            None => {
                spec.process_mut().as_mut().unwrap().set_capabilities(None);
            }
        }
        spec.process().clone().unwrap()
    }

    #[test]
    fn an_exec_asking_for_more_capabilities_is_refused_and_named() {
        let p = policy(&[Capability::Chown, Capability::Kill], false);
        let mut proc = exec_process(Some(&[Capability::Chown, Capability::SysAdmin]));
        let err = p.apply("c1", "e1", &mut proc).unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("CAP_SYS_ADMIN") && !msg.contains("CAP_CHOWN"),
            "{msg}"
        );
        assert!(msg.contains("e1") && msg.contains("c1"), "{msg}");
        // The same exec passes where privileged containers are allowed.
        let mut proc = exec_process(Some(&[Capability::SysAdmin]));
        policy(&[Capability::Chown], true)
            .apply("c1", "e1", &mut proc)
            .unwrap();
    }

    #[test]
    fn an_exec_within_the_bounding_set_gets_nnp_and_the_containers_caps() {
        let p = policy(&[Capability::Chown, Capability::Kill], false);
        let mut proc = exec_process(Some(&[Capability::Kill]));
        assert!(!p.apply("c1", "e1", &mut proc).unwrap());
        assert_eq!(proc.no_new_privileges(), Some(true));
        // No sets at all: the container's, never the helper's full set.
        let mut proc = exec_process(None);
        p.apply("c1", "e2", &mut proc).unwrap();
        assert_eq!(proc.capabilities(), &p.capabilities);
    }
}
