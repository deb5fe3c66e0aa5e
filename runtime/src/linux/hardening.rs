//! What Stockade adds to the OCI spec containerd or Docker passed, before libcontainer
//! sees it. Every rule is switchable in `[container]` of configuration.toml.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxPidsBuilder, LinuxResources, Spec};

use crate::config::ContainerConfig;
use crate::error::{Error, Result};
use crate::linux::seccomp;
use crate::mounts::kernel_supports;

pub fn is_privileged(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin))
}

/// Validate and harden `spec` in place. `bundle` resolves a relative root path.
pub fn harden(spec: &mut Spec, bundle: &Path, cfg: &ContainerConfig) -> Result<()> {
    check_root(spec, bundle)?;
    check_mounts(spec)?;

    let privileged = is_privileged(spec);
    if privileged && !cfg.allow_privileged {
        return Err(Error::InvalidArgument(
            "privileged containers (CAP_SYS_ADMIN) are refused by stockade; set [container] allow_privileged = true to allow them".into(),
        ));
    }

    if let (true, Some(process)) = (cfg.no_new_privileges, spec.process_mut()) {
        process.set_no_new_privileges(Some(true));
    }

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    if let Some(profile) = linux.seccomp_mut() {
        seccomp::to_libcontainer_encoding(profile);
    }
    if linux.seccomp().is_none() && cfg.default_seccomp && !privileged {
        linux.set_seccomp(Some(seccomp::default_profile()?));
    }
    if let (true, Some(profile)) = (cfg.extra_seccomp_deny && !privileged, linux.seccomp_mut()) {
        seccomp::apply_extra_deny(profile)?;
    }

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
    Ok(())
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

    fn spec_with_root(dir: &Path) -> Spec {
        let mut spec = Spec::default();
        let mut root = oci_spec::runtime::Root::default();
        root.set_path(dir.to_path_buf());
        spec.set_root(Some(root));
        spec
    }

    #[test]
    fn default_spec_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with_root(dir.path());
        harden(&mut spec, dir.path(), &ContainerConfig::default()).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        let linux = spec.linux().as_ref().unwrap();
        let sc = linux.seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
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
        harden(&mut spec, dir.path(), &cfg).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
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
        let err = harden(&mut spec, dir.path(), &ContainerConfig::default()).unwrap_err();
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
        let err = harden(&mut spec, dir.path(), &ContainerConfig::default()).unwrap_err();
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
        assert!(harden(&mut spec.clone(), dir.path(), &ContainerConfig::default()).is_err());
        let cfg = ContainerConfig {
            allow_privileged: true,
            ..Default::default()
        };
        harden(&mut spec, dir.path(), &cfg).unwrap();
    }
}
