//! The hostile-guest suite: a VM pod whose guest is compromised (the test-only hostile
//! agent, `agent/src/hostile.rs`, built into its own initramfs by
//! `packaging/guest/build.sh --hostile`) attacks the host through every channel it has,
//! and each case checks the host's side of the promise in SECURITY.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{IMAGE, RUNTIME};
use crate::{TestContainerd, guest_config, hypervisor_toml, run, workspace_root};

/// Where `integration/test.sh` builds the hostile guest's initramfs.
pub fn hostile_initrd() -> PathBuf {
    std::env::var_os("STOCKADE_HOSTILE_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/guest-hostile/initrd.img"))
}

/// A Stockade config whose VMs boot the hostile agent; written once per containerd.
pub fn hostile_config(ctd: &TestContainerd) -> Result<PathBuf> {
    let initrd = hostile_initrd();
    ensure!(
        initrd.exists(),
        "no hostile initramfs at {} (run: packaging/guest/build.sh --hostile target/guest-hostile)",
        initrd.display()
    );
    let mut hv = guest_config();
    hv.initrd = initrd;
    let cfg = ctd.dir.path().join("hostile.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nmode = \"vm\"\nstate_dir = \"{}\"\n{}",
            ctd.stockade_state.display(),
            hypervisor_toml(&hv)
        ),
    )?;
    Ok(cfg)
}

/// `ctr run -d` a `sleep` in a hostile guest told to do `commands`; `extra` goes before
/// the image (mounts).
pub fn run_hostile(ctd: &TestContainerd, id: &str, commands: &str, extra: &[&str]) -> Result<()> {
    let cfg = hostile_config(ctd)?;
    let env = format!("STOCKADE_HOSTILE={commands}");
    let cfg = cfg.display().to_string();
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        "--env",
        &env,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, id, "sleep", "1000"]);
    let out = ctd.ctr(&args);
    ensure!(
        out.ok(),
        "ctr run {id} (hostile: {commands}): {}",
        out.stderr
    );
    Ok(())
}

/// The STATUS column of `ctr task ls` for `id`.
pub fn task_status(ctd: &TestContainerd, id: &str) -> Option<String> {
    ctd.ctr(&["task", "ls"])
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(String::from)
}

/// Wait until `id`'s task is STOPPED; how long that took.
pub fn wait_stopped(ctd: &TestContainerd, id: &str, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if task_status(ctd, id).as_deref() == Some("STOPPED") {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{id} not stopped within {limit:?}: {:?}",
        task_status(ctd, id)
    )
}

/// The one sandbox dir under the containerd's Stockade state (`<state>/vm/<hash>`).
pub fn sandbox_dir(ctd: &TestContainerd) -> Result<PathBuf> {
    let vm = ctd.stockade_state.join("vm");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&vm)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(dirs.len() == 1, "expected one sandbox, found {dirs:?}");
    Ok(dirs.remove(0))
}

/// The resident set of the shim serving `id`, in KiB.
pub fn shim_rss_kib(ctd: &TestContainerd, id: &str) -> Result<u64> {
    let shim = ctd
        .shims()
        .into_iter()
        .find(|l| l.contains(&format!("-id {id}")))
        .with_context(|| format!("no shim for {id}: {:?}", ctd.shims()))?;
    let pid = shim.split_whitespace().next().context("shim pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// Kill, delete, and check `ctr` reports both done within `limit` (a hostile guest may
/// cooperate with neither).
pub fn remove_within(ctd: &TestContainerd, id: &str, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let _ = ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    wait_stopped(ctd, id, limit)?;
    let del = ctd.ctr(&["task", "delete", id]);
    ensure!(del.ok(), "task delete {id}: {}", del.stderr);
    let del = ctd.ctr(&["container", "delete", id]);
    ensure!(del.ok(), "container delete {id}: {}", del.stderr);
    let took = start.elapsed();
    ensure!(
        took < limit,
        "removing {id} took {took:?} (limit {limit:?})"
    );
    Ok(took)
}

/// Mount points whose path contains `needle` (mountinfo's escapes decoded enough for
/// the names the tests use).
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A host directory with a file in it, for a volume the guest attacks.
pub fn host_volume(ctd: &TestContainerd, name: &str) -> Result<PathBuf> {
    let dir = ctd.dir.path().join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("host-file"), "host data\n")?;
    Ok(dir)
}

/// Everything under `dir`, as relative paths (sorted), for before/after comparisons.
pub fn listing(dir: &Path) -> Vec<String> {
    let o = run(Command::new("find").arg(dir).arg("-mindepth").arg("1"));
    let mut v: Vec<String> = o
        .stdout
        .lines()
        .map(|l| l.trim_start_matches(&dir.display().to_string()).to_string())
        .collect();
    v.sort();
    v
}
