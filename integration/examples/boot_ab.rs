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

use anyhow::Result;
use stockade_integration::bench::{ab_args, alternate, report_ab, timed_boot};
use stockade_integration::guest_config_at;

fn main() -> Result<()> {
    let (a, b, n) = ab_args("boot_ab")?;
    let (cfg_a, cfg_b) = (guest_config_at(&a), guest_config_at(&b));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("stockade-boot-ab-")
        .tempdir_in("/tmp")?;
    let (mut ta, mut tb) = alternate(
        n,
        |i| timed_boot(&rt, &cfg_a, &dir.path().join(format!("a{i}"))),
        |i| timed_boot(&rt, &cfg_b, &dir.path().join(format!("b{i}"))),
    )?;
    println!(
        "accel: {:?}, {n} alternated bare boots of each, to the agent's first answer",
        cfg_a.accel
    );
    report_ab(&a, &b, &mut ta, &mut tb);
    Ok(())
}
