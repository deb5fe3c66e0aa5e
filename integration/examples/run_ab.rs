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

use std::time::Instant;

use anyhow::{Result, ensure};
use stockade_integration::bench::{ab_args, alternate, report_ab};
use stockade_integration::{TestContainerd, build_image, guest_config_at, hypervisor_toml};

fn main() -> Result<()> {
    let (a, b, n) = ab_args("run_ab")?;
    let (toml_a, toml_b) = (
        hypervisor_toml(&guest_config_at(&a)),
        hypervisor_toml(&guest_config_at(&b)),
    );
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
    let (mut ta, mut tb) = alternate(
        n,
        |i| run(&config_a, format!("a{i}")),
        |i| run(&config_b, format!("b{i}")),
    )?;
    println!("cold `ctr run --rm true` in VM mode, {n} alternated runs of each");
    report_ab(&a, &b, &mut ta, &mut tb);
    Ok(())
}
