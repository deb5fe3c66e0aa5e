//! cgroup metrics for a container, independent of containerd's message types.

use std::path::Path;

use libcgroups::common::{CgroupManager, CgroupSetup};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    pub cpu_total_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_kernel_ns: u64,
    pub per_cpu_ns: Vec<u64>,
    pub throttle_periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
    pub mem_usage: u64,
    pub mem_max_usage: u64,
    pub mem_limit: u64,
    pub mem_failcnt: u64,
    pub mem_cache: u64,
    pub mem_stat: std::collections::HashMap<String, u64>,
    pub swap_usage: u64,
    pub swap_limit: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    /// (major, minor, op, value)
    pub io_service_bytes: Vec<(u64, u64, String, u64)>,
    pub io_serviced: Vec<(u64, u64, String, u64)>,
}

pub fn cgroup_version() -> CgroupVersion {
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Unified) => CgroupVersion::V2,
        _ => CgroupVersion::V1,
    }
}

pub fn manager(
    cgroup_path: &Path,
    systemd: bool,
    id: &str,
) -> Result<libcgroups::common::AnyCgroupManager> {
    libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: cgroup_path.to_path_buf(),
        systemd_cgroup: systemd,
        container_name: id.to_string(),
    })
    .map_err(|e| Error::Backend(format!("cgroup {}: {e}", cgroup_path.display())))
}

pub fn collect(cgroup_path: &Path, systemd: bool, id: &str) -> Result<Metrics> {
    let stats = manager(cgroup_path, systemd, id)?
        .stats()
        .map_err(|e| Error::Backend(format!("cgroup stats {}: {e}", cgroup_path.display())))?;
    let io = |v: &Vec<libcgroups::stats::BlkioDeviceStat>| {
        v.iter()
            .map(|s| {
                (
                    s.major,
                    s.minor,
                    s.op_type.clone().unwrap_or_default(),
                    s.value,
                )
            })
            .collect()
    };
    Ok(Metrics {
        cpu_total_ns: stats.cpu.usage.usage_total,
        cpu_user_ns: stats.cpu.usage.usage_user,
        cpu_kernel_ns: stats.cpu.usage.usage_kernel,
        per_cpu_ns: stats.cpu.usage.per_core_usage_total.clone(),
        throttle_periods: stats.cpu.throttling.periods,
        throttled_periods: stats.cpu.throttling.throttled_periods,
        throttled_ns: stats.cpu.throttling.throttled_time,
        mem_usage: stats.memory.memory.usage,
        mem_max_usage: stats.memory.memory.max_usage,
        mem_limit: stats.memory.memory.limit,
        mem_failcnt: stats.memory.memory.fail_count,
        mem_cache: stats.memory.cache,
        mem_stat: stats.memory.stats.clone(),
        swap_usage: stats.memory.memswap.usage,
        swap_limit: stats.memory.memswap.limit,
        pids_current: stats.pids.current,
        pids_limit: stats.pids.limit,
        io_service_bytes: io(&stats.blkio.service_bytes),
        io_serviced: io(&stats.blkio.serviced),
    })
}
