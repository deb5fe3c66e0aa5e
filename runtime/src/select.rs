//! Backend selection: which backend runs a sandbox, and why.

use std::collections::HashMap;

use crate::config::{Accel, Config, HostNamespacePods, Mode};
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

/// A namespace a spec shares with the host, named as users ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostNamespace {
    Network,
    Ipc,
    Pid,
    Uts,
}

impl HostNamespace {
    /// How Kubernetes and Docker users ask for it.
    pub fn asked_as(self) -> &'static str {
        match self {
            HostNamespace::Network => "hostNetwork (Docker: --network host)",
            HostNamespace::Ipc => "hostIPC (Docker: --ipc host)",
            HostNamespace::Pid => "hostPID (Docker: --pid host)",
            HostNamespace::Uts => "the host's UTS namespace (Docker: --uts host)",
        }
    }
}

/// The host namespaces a spec shares: the types among network, IPC, PID and UTS it has
/// no namespace entry for.
pub fn host_namespaces(spec: &oci_spec::runtime::Spec) -> Vec<HostNamespace> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let own: Vec<T> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|ns| ns.iter().map(|n| n.typ()).collect())
        .unwrap_or_default();
    [
        (T::Network, HostNamespace::Network),
        (T::Ipc, HostNamespace::Ipc),
        (T::Pid, HostNamespace::Pid),
        (T::Uts, HostNamespace::Uts),
    ]
    .into_iter()
    .filter(|(t, _)| !own.contains(t))
    .map(|(_, h)| h)
    .collect()
}

/// The pod's backend. `host_ns`: the host namespaces its first container asks for
/// ([`host_namespaces`]), which a VM cannot give: refused, or the container backend,
/// as `[hypervisor] host_namespace_pods` says.
pub fn select(
    config: &Config,
    annotations: &HashMap<String, String>,
    host_ns: &[HostNamespace],
    probe: impl FnOnce() -> KvmProbe,
) -> Result<Selection> {
    let chosen = select_mode(config, annotations, probe)?;
    if !matches!(chosen.backend, Backend::Vm { .. }) || host_ns.is_empty() {
        return Ok(chosen);
    }
    let asked: Vec<&str> = host_ns.iter().map(|h| h.asked_as()).collect();
    let asked = asked.join(", ");
    let annotated = annotations.get(MODE_ANNOTATION).is_some_and(|m| m == "vm");
    match config.hypervisor.host_namespace_pods {
        HostNamespacePods::Container if !annotated => Ok(Selection {
            backend: Backend::Container,
            reason: format!(
                "the pod asks for {asked}, which a VM cannot give: the container backend \
                 ([hypervisor] host_namespace_pods = \"container\")"
            ),
        }),
        _ => Err(Error::InvalidArgument(format!(
            "the pod asks for {asked}: a VM pod has its own namespaces and cannot share the \
             host's. Drop it from the pod, or let such pods run with the container backend \
             ([hypervisor] host_namespace_pods = \"container\")"
        ))),
    }
}

fn select_mode(
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
        let s = select(&c, &none(), &[], || KvmProbe::Unusable("PVM".into())).unwrap();
        assert_eq!(s.backend, Backend::Container);
        assert!(s.reason.contains("PVM"));
        let s = select(&c, &none(), &[], || KvmProbe::Usable).unwrap();
        assert_eq!(s.backend, Backend::Vm { accel: Accel::Kvm });
    }

    #[test]
    fn vm_without_kvm_fails_closed_unless_tcg() {
        let err = select(&cfg(Mode::Vm, Accel::Kvm), &none(), &[], || {
            KvmProbe::Unusable("no kvm".into())
        })
        .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)));
        let s = select(&cfg(Mode::Vm, Accel::Tcg), &none(), &[], || {
            KvmProbe::Unusable("no kvm".into())
        })
        .unwrap();
        assert_eq!(s.backend, Backend::Vm { accel: Accel::Tcg });
    }

    #[test]
    fn host_namespace_pods_are_refused_or_given_the_container_backend_never_a_vm() {
        let spec: oci_spec::runtime::Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"namespaces":[
                {"type":"pid"},{"type":"mount"},{"type":"uts"}]}}"#,
        )
        .unwrap();
        let host = host_namespaces(&spec);
        assert_eq!(host, vec![HostNamespace::Network, HostNamespace::Ipc]);
        let vm = cfg(Mode::Vm, Accel::Tcg);
        let e = select(&vm, &none(), &host, || KvmProbe::Usable).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let text = e.to_string();
        assert!(
            text.contains("hostNetwork") && text.contains("hostIPC"),
            "{text}"
        );
        // Container mode gives them what they ask; VM mode only when configured so.
        let c = select(&cfg(Mode::Container, Accel::Tcg), &none(), &host, || {
            KvmProbe::Usable
        });
        assert_eq!(c.unwrap().backend, Backend::Container);
        let mut lenient = vm.clone();
        lenient.hypervisor.host_namespace_pods = HostNamespacePods::Container;
        let s = select(&lenient, &none(), &host, || KvmProbe::Usable).unwrap();
        assert_eq!(s.backend, Backend::Container);
        assert!(s.reason.contains("hostNetwork"), "{}", s.reason);
        // A pod that asked for a VM by name is refused, not weakened.
        let mut ann = none();
        ann.insert(MODE_ANNOTATION.into(), "vm".into());
        assert!(select(&lenient, &ann, &host, || KvmProbe::Usable).is_err());
        // Nothing asked: a VM as before.
        let s = select(&vm, &none(), &[], || KvmProbe::Usable).unwrap();
        assert!(matches!(s.backend, Backend::Vm { .. }));
    }

    #[test]
    fn annotation_may_strengthen_never_weaken() {
        let mut ann = none();
        ann.insert(MODE_ANNOTATION.into(), "container".into());
        assert!(select(&cfg(Mode::Vm, Accel::Tcg), &ann, &[], || KvmProbe::Usable).is_err());
        assert!(select(&cfg(Mode::Auto, Accel::Kvm), &ann, &[], || KvmProbe::Usable).is_err());
        ann.insert(MODE_ANNOTATION.into(), "vm".into());
        let s = select(&cfg(Mode::Container, Accel::Tcg), &ann, &[], || {
            KvmProbe::Usable
        })
        .unwrap();
        assert!(matches!(s.backend, Backend::Vm { .. }));
        ann.insert(MODE_ANNOTATION.into(), "bogus".into());
        assert!(select(&cfg(Mode::Auto, Accel::Kvm), &ann, &[], || KvmProbe::Usable).is_err());
    }
}
