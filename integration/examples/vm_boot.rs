//! Benchmark (not a test): boot the guest assets N times to the agent's first answer
//! over vsock, and measure the host memory of one running guest (PSS of qemu and the
//! vsock backend). This is the bare-boot baseline that the VM backend's `ctr run`
//! will be measured against.
//!
//!   sudo cargo run --release -p stockade-integration --example vm_boot -- [N]

use std::time::Instant;

use stockade_runtime::vm::MicroVm;

fn pss_kib(pid: u32) -> u64 {
    stockade_integration::pss_kib(&pid.to_string()).0
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let cfg = stockade_integration::guest_config();
    let state = tempfile::Builder::new()
        .prefix("stockade-bench-vm-")
        .tempdir_in("/tmp")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::with_capacity(n);
    let mut memory = None;
    for i in 0..n {
        let dir = state.path().join(format!("vm{i}"));
        let start = Instant::now();
        let vm = rt.block_on(MicroVm::boot(&cfg, &dir, None, None))?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if memory.is_none() {
            memory = Some((pss_kib(vm.qemu_pid()), vm.vsock_pid().map_or(0, pss_kib)));
        }
        rt.block_on(vm.shutdown())?;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "bare boot to the agent's first vsock answer ({:?}), {n} boots: median {median:.0} ms, min {:.0} ms, max {:.0} ms",
        cfg.accel,
        times[0],
        times[n - 1]
    );
    if let Some((qemu, vsock)) = memory {
        println!(
            "host memory of one idle guest ({} MiB guest RAM): qemu PSS {:.1} MiB, vhost-device-vsock PSS {:.1} MiB",
            cfg.memory_mib,
            qemu as f64 / 1024.0,
            vsock as f64 / 1024.0
        );
    }
    Ok(())
}
