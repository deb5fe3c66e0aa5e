//! Benchmark (not a test) of the VM backend, both sides under the same accel in one run:
//!
//! 1. `ctr run --rm IMAGE true` through Stockade in VM mode against a bare boot of the
//!    same kernel + initramfs to the agent's first vsock answer, interleaved N times;
//!    Stockade's added time = (ctr run median - bare boot median) / bare boot median.
//!    runc's own `ctr run --rm IMAGE true` on the same containerd, interleaved with
//!    both, is printed beside it as a share of the bare boot: what a container's
//!    lifecycle costs through containerd with no VM at all, a floor under Stockade's
//!    added time.
//! 2. The same `ctr run`, each served by the warm pool (`[pool] size = 1`), against
//!    the same bare boot.
//! 3. Host memory of one running VM sandbox: PSS of qemu, virtiofsd, the vsock backend
//!    and the shim, and the part of it outside guest RAM (qemu's PSS without its
//!    guest-memory mapping).
//!
//!   sudo cargo run --release -p stockade-integration --example vm_bench -- [N]
//!   (after `cargo build --release`; uses the installed guest assets)

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use stockade_integration::bench::{median, rounds, timed_boot};
use stockade_integration::pool::TestPool;
use stockade_integration::{IMAGE, TestContainerd, build_image, guest_config, hypervisor_toml};

/// runc's shim, the baseline every runtime is compared with.
const RUNC: &str = "io.containerd.runc.v2";

fn main() -> Result<()> {
    let n = rounds();
    let hv = guest_config();
    let ctd = TestContainerd::start_with("vm", &hypervisor_toml(&hv))?;
    let tar = ctd.dir.path().join("busybox.tar");
    build_image(&tar)?;
    ctd.import_image(&tar)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bare_dir = ctd.dir.path().join("bare");
    // Milliseconds of one `ctr run --rm IMAGE true` as container `id`, through
    // Stockade or (`runc`) through runc's shim.
    let timed = |id: String, runc: bool| -> Result<f64> {
        let start = Instant::now();
        let out = if runc {
            ctd.ctr(&["run", "--rm", "--runtime", RUNC, IMAGE, &id, "true"])
        } else {
            ctd.run_rm(&id, &["true"])
        };
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !out.ok() {
            bail!("ctr run {id}: {}", out.stderr);
        }
        Ok(ms)
    };
    let timed_run = |id: String| timed(id, false);

    let (mut bare, mut stockade, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    // One of each to warm the page cache.
    for i in 0..=n {
        let t = timed_boot(&rt, &hv, &bare_dir.join(i.to_string()))?;
        let s = timed_run(format!("bench{i}"))?;
        let r = timed(format!("runc{i}"), true)?;
        if i > 0 {
            bare.push(t);
            stockade.push(s);
            runc.push(r);
        }
    }
    let (mb, ms, mr) = (median(&mut bare), median(&mut stockade), median(&mut runc));
    println!("accel: {:?}, {n} interleaved runs each", hv.accel);
    println!("  bare boot to the agent's first answer: median {mb:.0} ms");
    println!("  ctr run --rm {IMAGE} true (VM mode):  median {ms:.0} ms");
    println!(
        "  Stockade's added time: {:.0} ms = {:.1} % of the bare boot (target <= 15 %)",
        ms - mb,
        (ms - mb) / mb * 100.0
    );
    println!(
        "  runc's ctr run --rm {IMAGE} true, no VM: median {mr:.0} ms = {:.1} % of the bare boot (the floor under the added time)",
        mr / mb * 100.0
    );

    // The same `ctr run`, each served by the warm pool (one VM kept, full and idle at
    // the start of each run), against the bare boot measured above.
    let pool = TestPool::start(&ctd.config, "size = 1")?;
    let mut pooled = Vec::new();
    for i in 0..=n {
        pool.wait_until(Duration::from_secs(120), "full and idle", |s| {
            s.ready.len() == 1 && s.booting == 0
        })?;
        let t = timed_run(format!("pooled{i}"))?;
        if i > 0 {
            pooled.push(t);
        }
    }
    let claimed = pool.status()?.claimed;
    drop(pool);
    let mp = median(&mut pooled);
    println!(
        "  ctr run --rm {IMAGE} true from the warm pool (claims: {claimed}): median {mp:.0} ms"
    );
    println!(
        "  = {:.1} % of the bare boot; {:.2}x the cold ctr run",
        mp / mb * 100.0,
        mp / ms
    );

    // Memory of one running sandbox.
    let id = "bench-idle";
    ctd.run_detached(id, &["sleep", "1000"])?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    let state = ctd.stockade_state.display().to_string();
    let sock = ctd.socket.display().to_string();
    stockade_integration::report_sandbox_memory(
        &state,
        &format!("containerd-shim-stockade-v2.*-id {id} .*{sock}"),
        hv.memory_mib,
    );
    let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = ctd.ctr(&["task", "delete", id]);
    let _ = ctd.ctr(&["container", "delete", id]);
    let left = ctd.vm_leaks();
    if !left.is_empty() {
        bail!("the benchmark left VM state behind: {left:?}");
    }
    drop(ctd);
    Ok(())
}
