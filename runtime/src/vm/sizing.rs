//! A pod's VM size: the configured base plus the pod's limits.
//!
//! Kubernetes sends the pod's size on the sandbox's spec as containerd's sizing
//! annotations (the sum of the pod's container limits, and the pod overhead, as kubelet
//! computed them). Outside Kubernetes a pod is one container, whose own limits count.
//! The guest is sized once, at boot: containers created later share what it has, and
//! their own limits are enforced by the guest's cgroups.

use std::collections::HashMap;

use oci_spec::runtime::LinuxResources;

use crate::config::HypervisorConfig;

pub const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// What the host can give a guest at most.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: u32,
}

impl HostLimits {
    pub fn of_this_host() -> HostLimits {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| (kb / 1024) as u32)
            .unwrap_or(u32::MAX);
        HostLimits { cpus, memory_mib }
    }
}

fn annotation(annotations: &HashMap<String, String>, key: &str) -> Option<i64> {
    annotations.get(key).and_then(|v| v.trim().parse().ok())
}

/// CPUs a quota over a period stands for, rounded up; 0 without a (positive) quota.
fn cpus_of(quota: Option<i64>, period: Option<u64>) -> u32 {
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p).min(u32::MAX as u64) as u32,
        _ => 0,
    }
}

fn mib_of(bytes: Option<i64>) -> u32 {
    match bytes {
        Some(b) if b > 0 => (b as u64).div_ceil(MIB).min(u32::MAX as u64) as u32,
        _ => 0,
    }
}

/// The VM size for a pod whose sandbox spec carries `annotations` and `resources`.
pub fn pod_size(
    hv: &HypervisorConfig,
    annotations: &HashMap<String, String>,
    resources: Option<&LinuxResources>,
    host: HostLimits,
) -> VmSize {
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let from_annotations = cpus_of(
        annotation(annotations, CPU_QUOTA),
        annotation(annotations, CPU_PERIOD).map(|p| p.max(0) as u64),
    );
    let extra_cpus = if from_annotations > 0 {
        from_annotations
    } else {
        cpus_of(cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period()))
    };
    let extra_mib = match mib_of(annotation(annotations, MEMORY)) {
        0 => mib_of(
            resources
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit()),
        ),
        n => n,
    };
    let max_vcpus = if hv.max_vcpus == 0 {
        host.cpus
    } else {
        hv.max_vcpus
    };
    let max_mib = if hv.max_memory_mib == 0 {
        host.memory_mib
    } else {
        hv.max_memory_mib
    };
    VmSize {
        vcpus: hv.vcpus.saturating_add(extra_cpus).min(max_vcpus.max(1)),
        memory_mib: hv
            .memory_mib
            .saturating_add(extra_mib)
            .min(max_mib.max(hv.memory_mib)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    const HOST: HostLimits = HostLimits {
        cpus: 8,
        memory_mib: 16384,
    };

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_limits_get_the_base() {
        let hv = HypervisorConfig::default();
        let size = pod_size(&hv, &HashMap::new(), None, HOST);
        assert_eq!(
            size,
            VmSize {
                vcpus: hv.vcpus,
                memory_mib: hv.memory_mib
            }
        );
    }

    #[test]
    fn sizing_annotations_add_to_the_base() {
        let hv = HypervisorConfig::default();
        let a = ann(&[
            (CPU_QUOTA, "250000"),
            (CPU_PERIOD, "100000"),
            (MEMORY, &(384 * MIB + 1).to_string()),
        ]);
        let size = pod_size(&hv, &a, None, HOST);
        // 2.5 CPUs round up to 3; 384 MiB and a byte round up to 385.
        assert_eq!(size.vcpus, hv.vcpus + 3);
        assert_eq!(size.memory_mib, hv.memory_mib + 385);
    }

    #[test]
    fn a_lone_containers_limits_count_without_annotations() {
        let hv = HypervisorConfig::default();
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(200_000i64)
                    .period(100_000u64)
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(512 * MIB as i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let size = pod_size(&hv, &HashMap::new(), Some(&r), HOST);
        assert_eq!(size.vcpus, hv.vcpus + 2);
        assert_eq!(size.memory_mib, hv.memory_mib + 512);
        // Annotations win over the sandbox container's own limits.
        let a = ann(&[(MEMORY, &(64 * MIB).to_string())]);
        assert_eq!(
            pod_size(&hv, &a, Some(&r), HOST).memory_mib,
            hv.memory_mib + 64
        );
    }

    #[test]
    fn sizes_are_capped_by_the_host_and_the_config() {
        let mut hv = HypervisorConfig::default();
        let a = ann(&[
            (CPU_QUOTA, "6400000"),
            (CPU_PERIOD, "100000"),
            (MEMORY, &(1u64 << 40).to_string()),
            ("garbage", "x"),
        ]);
        let size = pod_size(&hv, &a, None, HOST);
        assert_eq!(size.vcpus, HOST.cpus);
        assert_eq!(size.memory_mib, HOST.memory_mib);
        hv.max_vcpus = 4;
        hv.max_memory_mib = 2048;
        let size = pod_size(&hv, &a, None, HOST);
        assert_eq!((size.vcpus, size.memory_mib), (4, 2048));
        // Negative or malformed values are no limit.
        let bad = ann(&[(CPU_QUOTA, "-1"), (CPU_PERIOD, "100000"), (MEMORY, "lots")]);
        assert_eq!(pod_size(&hv, &bad, None, HOST).vcpus, hv.vcpus);
        assert_eq!(pod_size(&hv, &bad, None, HOST).memory_mib, hv.memory_mib);
    }
}
