//! Benchmark (not a test) for comparing two builds of the guest: a bare boot to the
//! agent's first answer with the guest assets in dir A, then with those in dir B,
//! alternated N times in one run under the same accel, so that the host's drift (which
//! under TCG on a shared machine reaches 20–30 % within an hour) falls on both alike.
//! Prints each side's median and the ratio B / A.
//!
//!   sudo cargo run --release -p stockade-integration --example boot_ab -- A_DIR B_DIR [N]
//!   (each dir as packaging/guest/build.sh writes it: vmlinuz, initrd.img, guest-kernel)
//!
//! Run it first with one build in two dirs: that null comparison is the noise floor
//! (on the development machine, under TCG, B / A came out 1.085 at N=20), and a
//! difference below it means nothing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use stockade_integration::bench::median;
use stockade_integration::guest_config_at;
use stockade_runtime::vm::MicroVm;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("usage: boot_ab A_DIR B_DIR [N]");
    };
    let n: usize = match args.get(2) {
        Some(n) => n.parse().context("N")?,
        None => 10,
    };
    let (a, b) = (PathBuf::from(a), PathBuf::from(b));
    let (cfg_a, cfg_b) = (guest_config_at(&a), guest_config_at(&b));
    for cfg in [&cfg_a, &cfg_b] {
        if !cfg.kernel.exists() || !cfg.initrd.exists() {
            bail!("no guest assets at {}", cfg.kernel.display());
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("stockade-boot-ab-")
        .tempdir_in("/tmp")?;
    let boot = |cfg, name: String| -> Result<f64> {
        let start = Instant::now();
        let vm = rt.block_on(MicroVm::boot(cfg, &dir.path().join(name), None, None))?;
        let t = start.elapsed().as_secs_f64() * 1000.0;
        rt.block_on(vm.shutdown())?;
        Ok(t)
    };
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    // One of each first, to warm the page cache; then A and B in turns, each round
    // starting with the side that went second in the last.
    for i in 0..=n {
        let (first, second) = if i % 2 == 0 {
            (&cfg_a, &cfg_b)
        } else {
            (&cfg_b, &cfg_a)
        };
        let x = boot(first, format!("first{i}"))?;
        let y = boot(second, format!("second{i}"))?;
        if i > 0 {
            let (ra, rb) = if i % 2 == 0 { (x, y) } else { (y, x) };
            ta.push(ra);
            tb.push(rb);
        }
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!(
        "accel: {:?}, {n} alternated bare boots of each, to the agent's first answer",
        cfg_a.accel
    );
    println!("  A {}: median {ma:.0} ms", a.display());
    println!("  B {}: median {mb:.0} ms", b.display());
    println!("  B / A: {:.3}", mb / ma);
    Ok(())
}
