//! Backend selection: which backend runs a sandbox, and why.

use std::collections::HashMap;

use crate::config::{Accel, Config, Mode};
use crate::error::{Error, Result};
use crate::probe::KvmProbe;

/// A pod annotation may ask for a stronger mode, never a weaker one.
pub const MODE_ANNOTATION: &str = "io.stockade.mode";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Container,
    Vm { accel: Accel },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub backend: Backend,
    pub reason: String,
}

pub fn select(
    config: &Config,
    annotations: &HashMap<String, String>,
    probe: impl FnOnce() -> KvmProbe,
) -> Result<Selection> {
    let mut mode = config.runtime.mode;
    if let Some(asked) = annotations.get(MODE_ANNOTATION) {
        let asked: Mode = asked
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("annotation {MODE_ANNOTATION}: {e}")))?;
        if asked < mode || (mode == Mode::Vm && asked != Mode::Vm) {
            return Err(Error::InvalidArgument(format!(
                "annotation {MODE_ANNOTATION}={asked} would weaken the configured mode {mode}"
            )));
        }
        mode = asked;
    }
    let accel = config.hypervisor.accel;
    match mode {
        Mode::Container => Ok(Selection {
            backend: Backend::Container,
            reason: "mode = \"container\"".into(),
        }),
        Mode::Vm => match (accel, probe()) {
            (Accel::Tcg, _) => Ok(Selection {
                backend: Backend::Vm { accel },
                reason: "mode = \"vm\" with accel = \"tcg\" (software emulation)".into(),
            }),
            (Accel::Kvm, KvmProbe::Usable) => Ok(Selection {
                backend: Backend::Vm { accel },
                reason: "mode = \"vm\", KVM usable".into(),
            }),
            (Accel::Kvm, KvmProbe::Unusable(why)) => Err(Error::FailedPrecondition(format!(
                "mode = \"vm\" but {why}; set [hypervisor] accel = \"tcg\" for software emulation (test machines only)"
            ))),
        },
        Mode::Auto => match probe() {
            KvmProbe::Usable => Ok(Selection {
                backend: Backend::Vm { accel: Accel::Kvm },
                reason: "mode = \"auto\", KVM usable".into(),
            }),
            KvmProbe::Unusable(why) => Ok(Selection {
                backend: Backend::Container,
                reason: format!("mode = \"auto\" and {why}: using the hardened container backend"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: Mode, accel: Accel) -> Config {
        let mut c = Config::default();
        c.runtime.mode = mode;
        c.hypervisor.accel = accel;
        c
    }

    fn none() -> HashMap<String, String> {
        HashMap::new()
    }

    #[test]
    fn auto_falls_back_only_without_kvm() {
        let c = cfg(Mode::Auto, Accel::Kvm);
        let s = select(&c, &none(), || KvmProbe::Unusable("PVM".into())).unwrap();
        assert_eq!(s.backend, Backend::Container);
        assert!(s.reason.contains("PVM"));
        let s = select(&c, &none(), || KvmProbe::Usable).unwrap();
        assert_eq!(s.backend, Backend::Vm { accel: Accel::Kvm });
    }

    #[test]
    fn vm_without_kvm_fails_closed_unless_tcg() {
        let err = select(&cfg(Mode::Vm, Accel::Kvm), &none(), || {
            KvmProbe::Unusable("no kvm".into())
        })
        .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)));
        let s = select(&cfg(Mode::Vm, Accel::Tcg), &none(), || {
            KvmProbe::Unusable("no kvm".into())
        })
        .unwrap();
        assert_eq!(s.backend, Backend::Vm { accel: Accel::Tcg });
    }

    #[test]
    fn annotation_may_strengthen_never_weaken() {
        let mut ann = none();
        ann.insert(MODE_ANNOTATION.into(), "container".into());
        assert!(select(&cfg(Mode::Vm, Accel::Tcg), &ann, || KvmProbe::Usable).is_err());
        assert!(select(&cfg(Mode::Auto, Accel::Kvm), &ann, || KvmProbe::Usable).is_err());
        ann.insert(MODE_ANNOTATION.into(), "vm".into());
        let s = select(&cfg(Mode::Container, Accel::Tcg), &ann, || KvmProbe::Usable).unwrap();
        assert!(matches!(s.backend, Backend::Vm { .. }));
        ann.insert(MODE_ANNOTATION.into(), "bogus".into());
        assert!(select(&cfg(Mode::Auto, Accel::Kvm), &ann, || KvmProbe::Usable).is_err());
    }
}
