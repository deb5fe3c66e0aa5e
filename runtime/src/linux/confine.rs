//! The last step inside a container process before its program runs: load the
//! container's seccomp filters (see [`Filters`]).
//!
//! libcontainer applies the spec's profile to a container's init, but its tenant
//! builder (exec) rebuilds the spec without it, so execs would run unfiltered. Stockade
//! therefore loads the filters itself, for the init and for every exec alike, through
//! libcontainer's `Executor` hook: `validate` runs in the container process after its
//! namespaces, cgroup, user and capabilities are set and before it waits for Start, the
//! same point where libcontainer loads a profile.
//!
//! Loading a filter needs no-new-privileges or CAP_SYS_ADMIN. When the process runs
//! without no-new-privileges (the config allows that), Create and Exec leave
//! CAP_SYS_ADMIN in the process's permitted set only ([`lend_sys_admin`]); the executor
//! raises it, loads the filters and drops it from every set before the program runs.

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{Capability, LinuxCapabilities, Process, Spec};

use crate::linux::seccomp::Filters;

#[derive(Clone)]
pub struct Confined {
    filters: Filters,
    /// CAP_SYS_ADMIN was lent for the load and must be dropped afterwards.
    drop_sys_admin: bool,
}

impl Confined {
    pub fn new(filters: Filters, drop_sys_admin: bool) -> Confined {
        Confined {
            filters,
            drop_sys_admin,
        }
    }

    fn load(&self) -> Result<(), String> {
        use caps::{CapSet, Capability as Cap};
        if self.drop_sys_admin {
            caps::raise(None, CapSet::Effective, Cap::CAP_SYS_ADMIN)
                .map_err(|e| format!("raise CAP_SYS_ADMIN to load seccomp: {e}"))?;
        }
        let compiled = self.filters.programs()?;
        if compiled.is_empty() {
            for filter in self.filters.iter() {
                match libcontainer::seccomp::initialize_seccomp(filter) {
                    Ok(None) => {}
                    Ok(Some(_)) => return Err("seccomp: unexpected notify fd".into()),
                    Err(e) => return Err(format!("load seccomp filter: {e}")),
                }
            }
        }
        for program in &compiled {
            crate::linux::bpf::load(program).map_err(|e| format!("load seccomp filter: {e}"))?;
        }
        if self.drop_sys_admin {
            for set in [CapSet::Effective, CapSet::Permitted] {
                caps::drop(None, set, Cap::CAP_SYS_ADMIN)
                    .map_err(|e| format!("drop CAP_SYS_ADMIN after seccomp: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Executor for Confined {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)?;
        self.load().map_err(|e| {
            // The init's error reaches the shim only through the helper's log; say it
            // where the container's owner looks too.
            eprintln!("stockade: {e}");
            ExecutorValidationError::ArgValidationError(format!("stockade: {e}"))
        })
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

/// Prepare `process` for [`Confined`] (`confined`: the container loads filters): when it will run without no-new-privileges and
/// without CAP_SYS_ADMIN, lend CAP_SYS_ADMIN in its permitted set only (never
/// effective, bounding or inheritable, so it cannot survive `execve`). Returns whether
/// the executor must drop it.
pub fn lend_sys_admin(process: &mut Process, confined: bool) -> bool {
    if !confined || process.no_new_privileges() == Some(true) {
        return false;
    }
    let mut caps: LinuxCapabilities = process.capabilities().clone().unwrap_or_default();
    if caps
        .effective()
        .as_ref()
        .is_some_and(|e| e.contains(&Capability::SysAdmin))
    {
        return false;
    }
    let mut permitted = caps.permitted().clone().unwrap_or_default();
    if !permitted.insert(Capability::SysAdmin) {
        // Already permitted (not effective): the process may raise it itself.
        return false;
    }
    caps.set_permitted(Some(permitted));
    process.set_capabilities(Some(caps));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_with(effective: &[Capability], nnp: Option<bool>) -> Process {
        let mut p = Process::default();
        let mut caps = LinuxCapabilities::default();
        caps.set_effective(Some(effective.iter().copied().collect()));
        caps.set_permitted(Some(effective.iter().copied().collect()));
        caps.set_bounding(Some(effective.iter().copied().collect()));
        p.set_capabilities(Some(caps));
        p.set_no_new_privileges(nnp);
        p
    }

    #[test]
    fn nothing_is_lent_under_no_new_privileges() {
        let mut p = process_with(&[Capability::Chown], Some(true));
        let before = p.clone();
        assert!(!lend_sys_admin(&mut p, true));
        assert_eq!(p, before);
    }

    #[test]
    fn without_nnp_sys_admin_is_lent_in_permitted_only() {
        let mut p = process_with(&[Capability::Chown], None);
        assert!(lend_sys_admin(&mut p, true));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(
            caps.permitted()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        for set in [caps.effective(), caps.bounding()] {
            assert!(!set.as_ref().unwrap().contains(&Capability::SysAdmin));
        }
    }

    #[test]
    fn nothing_is_lent_without_filters_or_to_an_admin() {
        let mut p = process_with(&[Capability::Chown], None);
        assert!(!lend_sys_admin(&mut p, false));
        let mut admin = process_with(&[Capability::SysAdmin], None);
        assert!(!lend_sys_admin(&mut admin, true));
    }
}
