//! cgroup metrics in the message types containerd expects (`ctr task metrics`, `docker stats`).

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::MessageDyn;
use stockade_runtime::linux::stats::{CgroupVersion, Metrics};

pub fn to_message(version: CgroupVersion, m: &Metrics) -> Box<dyn MessageDyn> {
    match version {
        CgroupVersion::V1 => Box::new(to_v1(m)),
        CgroupVersion::V2 => Box::new(to_v2(m)),
    }
}

fn stat(m: &Metrics, key: &str) -> u64 {
    m.mem_stat.get(key).copied().unwrap_or(0)
}

fn to_v1(m: &Metrics) -> v1::Metrics {
    let blk = |v: &Vec<(u64, u64, String, u64)>| {
        v.iter()
            .map(|(major, minor, op, value)| v1::BlkIOEntry {
                major: *major,
                minor: *minor,
                op: op.clone(),
                value: *value,
                ..Default::default()
            })
            .collect()
    };
    let entry = |usage, max, limit, failcnt| {
        Some(v1::MemoryEntry {
            usage,
            max,
            limit,
            failcnt,
            ..Default::default()
        })
        .into()
    };
    v1::Metrics {
        pids: Some(v1::PidsStat {
            current: m.pids_current,
            limit: m.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v1::CPUStat {
            usage: Some(v1::CPUUsage {
                total: m.cpu_total_ns,
                user: m.cpu_user_ns,
                kernel: m.cpu_kernel_ns,
                per_cpu: m.per_cpu_ns.clone(),
                ..Default::default()
            })
            .into(),
            throttling: Some(v1::Throttle {
                periods: m.throttle_periods,
                throttled_periods: m.throttled_periods,
                throttled_time: m.throttled_ns,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(v1::MemoryStat {
            cache: m.mem_cache.max(stat(m, "cache")),
            rss: stat(m, "rss"),
            rss_huge: stat(m, "rss_huge"),
            mapped_file: stat(m, "mapped_file"),
            dirty: stat(m, "dirty"),
            writeback: stat(m, "writeback"),
            pg_pg_in: stat(m, "pgpgin"),
            pg_pg_out: stat(m, "pgpgout"),
            pg_fault: stat(m, "pgfault"),
            pg_maj_fault: stat(m, "pgmajfault"),
            inactive_anon: stat(m, "inactive_anon"),
            active_anon: stat(m, "active_anon"),
            inactive_file: stat(m, "inactive_file"),
            active_file: stat(m, "active_file"),
            unevictable: stat(m, "unevictable"),
            hierarchical_memory_limit: stat(m, "hierarchical_memory_limit"),
            hierarchical_swap_limit: stat(m, "hierarchical_memsw_limit"),
            total_cache: stat(m, "total_cache"),
            total_rss: stat(m, "total_rss"),
            total_rss_huge: stat(m, "total_rss_huge"),
            total_mapped_file: stat(m, "total_mapped_file"),
            total_dirty: stat(m, "total_dirty"),
            total_writeback: stat(m, "total_writeback"),
            total_pg_pg_in: stat(m, "total_pgpgin"),
            total_pg_pg_out: stat(m, "total_pgpgout"),
            total_pg_fault: stat(m, "total_pgfault"),
            total_pg_maj_fault: stat(m, "total_pgmajfault"),
            total_inactive_anon: stat(m, "total_inactive_anon"),
            total_active_anon: stat(m, "total_active_anon"),
            total_inactive_file: stat(m, "total_inactive_file"),
            total_active_file: stat(m, "total_active_file"),
            total_unevictable: stat(m, "total_unevictable"),
            usage: entry(m.mem_usage, m.mem_max_usage, m.mem_limit, m.mem_failcnt),
            swap: entry(m.swap_usage, 0, m.swap_limit, 0),
            ..Default::default()
        })
        .into(),
        blkio: Some(v1::BlkIOStat {
            io_service_bytes_recursive: blk(&m.io_service_bytes),
            io_serviced_recursive: blk(&m.io_serviced),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn to_v2(m: &Metrics) -> v2::Metrics {
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: m.pids_current,
            limit: m.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v2::CPUStat {
            usage_usec: m.cpu_total_ns / 1000,
            user_usec: m.cpu_user_ns / 1000,
            system_usec: m.cpu_kernel_ns / 1000,
            nr_periods: m.throttle_periods,
            nr_throttled: m.throttled_periods,
            throttled_usec: m.throttled_ns / 1000,
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: stat(m, "anon"),
            file: stat(m, "file"),
            kernel_stack: stat(m, "kernel_stack"),
            slab: stat(m, "slab"),
            sock: stat(m, "sock"),
            shmem: stat(m, "shmem"),
            file_mapped: stat(m, "file_mapped"),
            file_dirty: stat(m, "file_dirty"),
            file_writeback: stat(m, "file_writeback"),
            inactive_anon: stat(m, "inactive_anon"),
            active_anon: stat(m, "active_anon"),
            inactive_file: stat(m, "inactive_file"),
            active_file: stat(m, "active_file"),
            unevictable: stat(m, "unevictable"),
            pgfault: stat(m, "pgfault"),
            pgmajfault: stat(m, "pgmajfault"),
            usage: m.mem_usage,
            usage_limit: m.mem_limit,
            swap_usage: m.swap_usage,
            swap_limit: m.swap_limit,
            max_usage: m.mem_max_usage,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_are_the_ones_containerd_decodes() {
        let m = Metrics::default();
        assert_eq!(
            to_message(CgroupVersion::V1, &m)
                .descriptor_dyn()
                .full_name(),
            "io.containerd.cgroups.v1.Metrics"
        );
        assert_eq!(
            to_message(CgroupVersion::V2, &m)
                .descriptor_dyn()
                .full_name(),
            "io.containerd.cgroups.v2.Metrics"
        );
    }
}
