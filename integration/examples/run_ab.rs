//! Benchmark (not a test) for comparing two builds of the guest: a cold
//! `ctr run --rm true` in VM mode (boot, create, start, exit, delete, teardown) with the
//! guest assets in dir A, then with those in dir B, alternated N times through one
//! containerd (each run's shim reads the Stockade config that names them afresh), so
//! that the host's drift falls on both alike. Prints each side's median and B / A.
//!
//!   sudo cargo run --release -p stockade-integration --example run_ab -- A_DIR B_DIR [N]
//!   (each dir as packaging/guest/build.sh writes it)
//!
//! Run it first with one build in two dirs: that null comparison is the noise floor
//! (on the development machine, under TCG, B / A came out 1.24 at N=6), and a
//! difference below it means nothing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use stockade_integration::bench::median;
use stockade_integration::{TestContainerd, build_image, guest_config_at, hypervisor_toml};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("usage: run_ab A_DIR B_DIR [N]");
    };
    let n: usize = match args.get(2) {
        Some(n) => n.parse().context("N")?,
        None => 10,
    };
    let (a, b) = (PathBuf::from(a), PathBuf::from(b));
    let (toml_a, toml_b) = (
        hypervisor_toml(&guest_config_at(&a)),
        hypervisor_toml(&guest_config_at(&b)),
    );
    for dir in [&a, &b] {
        ensure!(
            dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(),
            "no guest assets in {}",
            dir.display()
        );
    }
    let ctd = TestContainerd::start_with("vm", &toml_a)?;
    let config_a = std::fs::read_to_string(&ctd.config)?;
    ensure!(
        config_a.contains(&toml_a),
        "the test config has its own [hypervisor] table"
    );
    let config_b = config_a.replace(&toml_a, &toml_b);
    let tar = ctd.dir.path().join("busybox.tar");
    build_image(&tar)?;
    ctd.import_image(&tar)?;
    let run = |config: &str, id: String| -> Result<f64> {
        std::fs::write(&ctd.config, config)?;
        let start = Instant::now();
        let out = ctd.run_rm(&id, &["true"]);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        ensure!(out.ok(), "ctr run {id}: {out:?}");
        Ok(ms)
    };
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    // One of each first, to warm the page cache; then A and B in turns, each round
    // starting with the side that went second in the last.
    for i in 0..=n {
        let (x, y) = if i % 2 == 0 {
            let x = run(&config_a, format!("a{i}"))?;
            (x, run(&config_b, format!("b{i}"))?)
        } else {
            let y = run(&config_b, format!("b{i}"))?;
            (run(&config_a, format!("a{i}"))?, y)
        };
        if i > 0 {
            ta.push(x);
            tb.push(y);
        }
    }
    let (ma, mb) = (median(&mut ta), median(&mut tb));
    println!("cold `ctr run --rm true` in VM mode, {n} alternated runs of each");
    println!("  A {}: median {ma:.0} ms", a.display());
    println!("  B {}: median {mb:.0} ms", b.display());
    println!("  B / A: {:.3}", mb / ma);
    Ok(())
}
