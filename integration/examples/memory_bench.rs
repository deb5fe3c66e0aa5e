//! Host memory per idle VM pod (not a test): 1, then 10 idle pods through containerd's
//! CRI (a pause and one `sleep` container each), the PSS of their host processes
//! (qemu, virtiofsd, the vsock backend, the shim) divided among them, outside guest
//! RAM and outside QEMU's TCG translation cache (absent under KVM). The baseline in the
//! same run: runc's pods (its shim and the pods' processes on the host), the same way.
//!
//!   sudo cargo run --release -p stockade-integration --example memory_bench [-- N]
//!
//! N (default 10) is the larger pod count. The per-pod figure is what
//! `configs/runtimeclass.yaml` charges as the RuntimeClass's overhead.

use std::time::Duration;

use anyhow::Result;
use stockade_integration::cri::{CriEnv, HANDLER};
use stockade_integration::{guest_config, hypervisor_toml, pids, pss_kib, sandbox_memory};
use stockade_runtime::config::Accel;

fn mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

/// runc's per-pod host memory: its shims and everything they run (pause, sleep).
fn runc_kib(socket: &str) -> u64 {
    let mut kib = 0;
    for shim in pids(&format!("containerd-shim-runc-v2.*{socket}")) {
        kib += pss_kib(&shim).0;
        let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .unwrap_or_default();
        for c in children.split_whitespace() {
            kib += pss_kib(c).0;
        }
    }
    kib
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let hv = guest_config();
    let accel = match hv.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg (software emulation: KVM unusable here)",
    };
    let env = CriEnv::start("vm", &hypervisor_toml(&hv))?;
    let state = env.ctd.stockade_state.display().to_string();
    let socket = env.ctd.socket.display().to_string();
    let shims = format!("containerd-shim-stockade-v2.*{socket}");
    println!(
        "host memory per idle pod (PSS), {} MiB guests, VM accel: {accel}",
        hv.memory_mib
    );
    println!(
        "  {:>4}  {:>8} {:>9} {:>8} {:>8}  {:>12}  {:>10}  {:>9}  {:>8}",
        "pods",
        "qemu",
        "virtiofsd",
        "vsock",
        "shim",
        "overhead/pod",
        "guest RAM",
        "TCG cache",
        "runc/pod"
    );
    let mut pods = Vec::new();
    let mut runc_pods = Vec::new();
    for count in [1, n] {
        while pods.len() < count {
            let i = pods.len();
            for (handler, list) in [(HANDLER, &mut pods), ("runc", &mut runc_pods)] {
                let pc = env.pod_config(&format!("mem-{handler}-{i}"), None);
                let pod = env.run_pod(&pc, handler)?;
                env.start_container(&pod, &pc, env.container_config("c", &["sleep", "3600"]))?;
                list.push(pod);
            }
        }
        // Idle: boot work done, nothing running but sleep.
        std::thread::sleep(Duration::from_secs(5));
        let m = sandbox_memory(&state, &shims);
        let per = |k: u64| mib(k) / count as f64;
        println!(
            "  {count:>4}  {:>8.1} {:>9.1} {:>8.1} {:>8.1}  {:>12.1}  {:>10.1}  {:>9.1}  {:>8.1}",
            per(m.qemu - m.guest_ram - m.tcg_cache),
            per(m.virtiofsd),
            per(m.vsock),
            per(m.shim),
            per(m.overhead()),
            per(m.guest_ram),
            per(m.tcg_cache),
            per(runc_kib(&socket)),
        );
    }
    println!("  (MiB per pod; qemu without guest RAM and TCG cache; target: overhead/pod <= 40)");
    for pod in pods.iter().chain(&runc_pods) {
        env.remove_pod(pod)?;
    }
    Ok(())
}
