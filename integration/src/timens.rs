//! A container with a private time namespace (Docker 29.5 puts one in every spec): the
//! spec's `time` namespace and `timeOffsets` through `ctr run --config`, a rootfs of the
//! host's static busybox, and the clocks seen inside.

use anyhow::{Context, Result, ensure};

use crate::command::expect_code;
use crate::containerd::TestContainerd;

/// A year, in seconds: the offset given to the container's monotonic and boot clocks.
const OFFSET: u64 = 365 * 24 * 3600;

/// Run `cat /proc/uptime` as container `id` with a time namespace whose boot clock is
/// a year ahead; the uptime seen inside must be a year more than its kernel's.
pub fn check(ctd: &TestContainerd, id: &str) -> Result<()> {
    let dir = ctd.dir.path().join(format!("timens-{id}"));
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("busybox-static")?;
    let base = ctd.ctr(&["oci", "spec"]);
    expect_code(&base, 0, "ctr oci spec")?;
    let mut spec: serde_json::Value = serde_json::from_str(&base.stdout)?;
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "cat", "/proc/uptime"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec["linux"]["namespaces"]
        .as_array_mut()
        .context("namespaces")?
        .push(serde_json::json!({"type": "time"}));
    spec["linux"]["timeOffsets"] = serde_json::json!({
        "monotonic": {"secs": OFFSET, "nanosecs": 0},
        "boottime": {"secs": OFFSET, "nanosecs": 0},
    });
    let path = dir.join("config.json");
    std::fs::write(&path, spec.to_string())?;
    let host_uptime = uptime(&std::fs::read_to_string("/proc/uptime")?)?;
    let out = ctd.run_rm_spec(&path, id);
    expect_code(&out, 0, "a container with a time namespace")?;
    let inside = uptime(&out.stdout)?;
    // The clock is the kernel's: the host's in container mode, the guest's (booted
    // moments ago) in a VM; either way the offset shows on top of it.
    let base = inside - OFFSET as f64;
    ensure!(
        (0.0..=host_uptime + 600.0).contains(&base),
        "uptime inside {inside} s, on the host {host_uptime} s: the offset {OFFSET} s did not apply"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn uptime(text: &str) -> Result<f64> {
    Ok(text
        .split_whitespace()
        .next()
        .context("no uptime")?
        .parse()?)
}
