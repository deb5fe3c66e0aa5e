//! What the benchmarks under `examples/` share.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The number of rounds the benchmark's first argument asks for, else 10.
pub fn rounds() -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10)
}

/// The median of `v` (sorted in place; the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// `A_DIR B_DIR [N]`, an A/B benchmark's arguments: the two guest builds it compares
/// (each dir as `packaging/guest/build.sh` writes it) and its rounds (10 unless given).
pub fn ab_args(name: &str) -> anyhow::Result<(PathBuf, PathBuf, usize)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: {name} A_DIR B_DIR [N]");
    };
    let n = match args.get(2) {
        Some(n) => n.parse().context("N")?,
        None => 10,
    };
    let (a, b) = (PathBuf::from(a), PathBuf::from(b));
    for dir in [&a, &b] {
        anyhow::ensure!(
            dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(),
            "no guest assets in {}",
            dir.display()
        );
    }
    Ok((a, b, n))
}

/// `a` and `b` run in turns, each returning its milliseconds for the round it is given:
/// one of each first, to warm the page cache (not counted), then `n` rounds, each
/// starting with the side that went second in the last, so that the host's drift falls
/// on both alike. Each side's times.
pub fn alternate(
    n: usize,
    mut a: impl FnMut(usize) -> anyhow::Result<f64>,
    mut b: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut ta, mut tb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..=n {
        let (x, y) = if i % 2 == 0 {
            let x = a(i)?;
            (x, b(i)?)
        } else {
            let y = b(i)?;
            (a(i)?, y)
        };
        if i > 0 {
            ta.push(x);
            tb.push(y);
        }
    }
    Ok((ta, tb))
}

/// Each side's median and B / A, as the A/B benchmarks print them.
pub fn report_ab(a: &Path, b: &Path, ta: &mut [f64], tb: &mut [f64]) {
    let (ma, mb) = (median(ta), median(tb));
    println!("  A {}: median {ma:.0} ms", a.display());
    println!("  B {}: median {mb:.0} ms", b.display());
    println!("  B / A: {:.3}", mb / ma);
}

/// Milliseconds of a bare boot of `cfg`, its state in `dir`, to the agent's first
/// answer; the VM is shut down after.
pub fn timed_boot(
    rt: &tokio::runtime::Runtime,
    cfg: &stockade_runtime::config::HypervisorConfig,
    dir: &Path,
) -> anyhow::Result<f64> {
    let start = std::time::Instant::now();
    let vm = rt.block_on(stockade_runtime::vm::MicroVm::boot(cfg, dir, None, None))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    rt.block_on(vm.shutdown())?;
    Ok(ms)
}
