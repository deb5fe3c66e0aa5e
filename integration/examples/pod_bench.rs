//! Pod start benchmark (not a test): RunPodSandbox → the first container running, as
//! kubelet drives it through containerd's CRI, for runc's shim (handler `runc`) and
//! Stockade's two backends (handler `stockade`; the VM pods ask for it with the
//! `io.stockade.mode = vm` pod annotation), interleaved on one containerd in one run.
//! Then the same with the warm pool service running (one VM kept): runc's pods and VM
//! pods that claim the pool's VM, each round starting with the pool full and idle (its
//! refill after a claim runs while the pod's container starts, as on a node).
//! Prints medians and the ratios to runc's, each against runc's in the same phase.
//!
//!   sudo cargo run --release -p stockade-integration --example pod_bench [-- N]
//!
//! VMs run under TCG where KVM is unusable (as on the test machines): the VM numbers
//! are then software emulation's, and the probe says so in the output.

use std::time::{Duration, Instant};

use anyhow::Result;
use stockade_integration::bench::{median, rounds};
use stockade_integration::cri::{CriEnv, HANDLER};
use stockade_integration::pool::TestPool;
use stockade_integration::{guest_config, hypervisor_toml};
use stockade_runtime::config::Accel;

/// The sorted runs' fastest and slowest (under TCG a VM pod's start varies a lot from
/// one pod to the next: the README's Benchmark section says why).
fn spread(sorted: &[Duration]) -> String {
    match (sorted.first(), sorted.last()) {
        (Some(a), Some(b)) => format!(
            "range {:.0}-{:.0} ms",
            a.as_secs_f64() * 1000.0,
            b.as_secs_f64() * 1000.0
        ),
        _ => String::new(),
    }
}

fn main() -> Result<()> {
    let n = rounds();
    let hv = guest_config();
    let accel = match hv.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg (software emulation: KVM unusable here)",
    };
    // mode = "container": Stockade's default here; a pod annotation asks for the VM.
    let env = CriEnv::start("container", &hypervisor_toml(&hv))?;
    let kinds: [(&str, &str, bool); 3] = [
        ("runc (io.containerd.runc.v2)", "runc", false),
        ("stockade, container backend", HANDLER, false),
        ("stockade, VM backend", HANDLER, true),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for i in 0..=n {
        for (k, (_, handler, vm)) in kinds.iter().enumerate() {
            let mut pc = env.pod_config(&format!("bench-{k}-{i}"), None);
            if *vm {
                pc.annotations
                    .insert("io.stockade.mode".into(), "vm".into());
            }
            let t = Instant::now();
            let pod = env.run_pod(&pc, handler)?;
            env.start_container(&pod, &pc, env.container_config("c", &["sleep", "600"]))?;
            let took = t.elapsed();
            env.remove_pod(&pod)?;
            // The first round warms caches (image, snapshots, page cache): not counted.
            if i > 0 {
                times[k].push(took);
            }
        }
    }
    println!("pod start (RunPodSandbox → first container running), N={n}, VM accel: {accel}");
    let base = median(&mut times[0]);
    for (k, (name, _, _)) in kinds.iter().enumerate() {
        let m = median(&mut times[k]);
        println!(
            "  {name:<34} median {:>7.1} ms   ratio to runc {:.2}   {}",
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() / base.as_secs_f64(),
            spread(&times[k])
        );
    }

    // The warm pool: one VM of the default shape kept booted.
    let pool = TestPool::start(&env.ctd.config, "size = 1")?;
    let full = || {
        pool.wait_until(Duration::from_secs(120), "full and idle", |s| {
            s.ready.len() == 1 && s.booting == 0
        })
    };
    let warm: [(&str, &str, bool); 2] = [
        ("runc (io.containerd.runc.v2)", "runc", false),
        ("stockade, VM backend, warm pool", HANDLER, true),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); warm.len()];
    for i in 0..=n {
        for (k, (_, handler, vm)) in warm.iter().enumerate() {
            full()?;
            let mut pc = env.pod_config(&format!("warm-{k}-{i}"), None);
            if *vm {
                pc.annotations
                    .insert("io.stockade.mode".into(), "vm".into());
            }
            let t = Instant::now();
            let pod = env.run_pod(&pc, handler)?;
            env.start_container(&pod, &pc, env.container_config("c", &["sleep", "600"]))?;
            let took = t.elapsed();
            env.remove_pod(&pod)?;
            if i > 0 {
                times[k].push(took);
            }
        }
    }
    let claimed = pool.status()?.claimed;
    drop(pool);
    println!("with the warm pool (claims: {claimed}), N={n}:");
    let base = median(&mut times[0]);
    for (k, (name, _, _)) in warm.iter().enumerate() {
        let m = median(&mut times[k]);
        println!(
            "  {name:<34} median {:>7.1} ms   ratio to runc {:.2}   {}",
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() / base.as_secs_f64(),
            spread(&times[k])
        );
    }

    // Host memory of one running VM pod (two containers), as the RuntimeClass overhead.
    let mut pc = env.pod_config("bench-memory", None);
    pc.annotations
        .insert("io.stockade.mode".into(), "vm".into());
    let pod = env.run_pod(&pc, HANDLER)?;
    env.start_container(&pod, &pc, env.container_config("a", &["sleep", "600"]))?;
    env.start_container(&pod, &pc, env.container_config("b", &["sleep", "600"]))?;
    std::thread::sleep(Duration::from_secs(2));
    println!("one VM pod with two containers:");
    stockade_integration::report_sandbox_memory(
        &env.ctd.stockade_state.display().to_string(),
        &format!(
            "containerd-shim-stockade-v2.*-id {pod} .*{}",
            env.ctd.socket.display()
        ),
        hv.memory_mib,
    );
    env.remove_pod(&pod)?;
    Ok(())
}
