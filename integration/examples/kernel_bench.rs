//! Benchmark (not a test) of the guest kernel: a boot to the agent's first answer with
//! Debian's cloud kernel against the same boot with the Stockade kernel
//! (`packaging/guest/kernel/`), interleaved N times in one run under the same accel, each
//! with its own initramfs (the cloud kernel's carries the modules it loads). The ratio is
//! Stockade median / cloud median (target <= 0.33).
//!
//!   sudo cargo run --release -p stockade-integration --example kernel_bench -- [N]
//!   (after packaging/setup.sh, which builds both: /usr/share/stockade and its cloud/)

use anyhow::{Result, bail};
use stockade_integration::bench::{median, rounds, timed_boot};
use stockade_integration::{cloud_guest_assets, guest_assets, guest_config_at};

fn main() -> Result<()> {
    let n = rounds();
    let (stockade_assets, cloud_assets) = (guest_assets(), cloud_guest_assets());
    let (stockade_cfg, cloud_cfg) = (
        guest_config_at(&stockade_assets),
        guest_config_at(&cloud_assets),
    );
    if stockade_cfg.kernel_kind().as_deref() != Some("stockade")
        || cloud_cfg.kernel_kind().as_deref() != Some("cloud")
    {
        bail!(
            "need the Stockade kernel in {} and the cloud kernel in {} (packaging/setup.sh)",
            stockade_assets.display(),
            cloud_assets.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("stockade-kernel-bench-")
        .tempdir_in("/tmp")?;
    let boot = |cfg, name: String| timed_boot(&rt, cfg, &dir.path().join(name));
    let (mut cloud, mut stockade) = (Vec::new(), Vec::new());
    // One of each first, to warm the page cache.
    for i in 0..=n {
        let c = boot(&cloud_cfg, format!("cloud{i}"))?;
        let s = boot(&stockade_cfg, format!("stockade{i}"))?;
        if i > 0 {
            cloud.push(c);
            stockade.push(s);
        }
    }
    let (mc, ms) = (median(&mut cloud), median(&mut stockade));
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) / 1024;
    println!(
        "accel: {:?}, {n} interleaved boots of each, to the agent's first answer",
        stockade_cfg.accel
    );
    println!(
        "  Debian cloud kernel: median {mc:.0} ms (kernel {} KiB, initramfs {} KiB)",
        size(&cloud_cfg.kernel),
        size(&cloud_cfg.initrd)
    );
    println!(
        "  Stockade kernel:     median {ms:.0} ms (kernel {} KiB, initramfs {} KiB)",
        size(&stockade_cfg.kernel),
        size(&stockade_cfg.initrd)
    );
    println!("  ratio Stockade / cloud: {:.2} (target <= 0.33)", ms / mc);
    Ok(())
}
