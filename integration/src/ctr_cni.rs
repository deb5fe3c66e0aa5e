//! `ctr run --cni`, the path nerdctl takes: ctr creates the task, runs CNI on the
//! task's `/proc/<pid>/ns/net`, then starts it. ctr reads CNI's config only from
//! `/etc/cni/net.d` and its plugins only from `/opt/cni/bin`, so it runs in a mount
//! namespace of its own where a private config and Debian's plugins are bound there;
//! the host's directories are untouched (made empty and removed again where missing).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};

use crate::command::{Out, expect_code, run};
use crate::containerd::TestContainerd;
use crate::daemons::daemons;
use crate::{IMAGE, NAMESPACE, RUNTIME};

pub const CTR_CNI_BRIDGE: &str = "stk-ctr0";
pub const CTR_CNI_SUBNET_PREFIX: &str = "10.88.78.";

/// `ctr run --rm --cni --runtime stockade IMAGE id args...` on a private bridge network.
pub fn run_rm_cni(ctd: &TestContainerd, id: &str, args: &[&str]) -> Result<Out> {
    let dir = ctd.dir.path().join("ctr-cni");
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&conf)?;
    let net = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "stockade-ctr",
        "plugins": [{
            "type": "bridge",
            "bridge": CTR_CNI_BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{CTR_CNI_SUBNET_PREFIX}0/24")}]],
                "dataDir": dir.join("ipam"),
            }
        }]
    });
    std::fs::write(conf.join("10-stockade-ctr.conflist"), net.to_string())?;
    let mut made = Vec::new();
    for d in ["/etc/cni", "/etc/cni/net.d", "/opt/cni", "/opt/cni/bin"] {
        if !Path::new(d).exists() {
            std::fs::create_dir(d)?;
            made.push(d);
        }
    }
    let script = format!(
        "mount --make-rprivate / && mount --bind {} /etc/cni/net.d && \
         mount --bind /usr/lib/cni /opt/cni/bin && exec \"$@\"",
        conf.display()
    );
    let out = run(Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .arg(&daemons().ctr)
        .arg("--address")
        .arg(&ctd.socket)
        .args([
            "--namespace",
            NAMESPACE,
            "run",
            "--rm",
            "--cni",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
        ])
        .args(args));
    for d in made.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    let _ = run(Command::new("ip").args(["link", "del", CTR_CNI_BRIDGE]));
    Ok(out)
}

/// The container's IPv4 addresses by interface, from `ip -4 -o addr show` output.
pub fn addresses(ip_output: &str) -> Vec<(String, String)> {
    ip_output
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let dev = w.next()?.to_string();
            let addr = w.nth(1)?.to_string();
            Some((dev, addr))
        })
        .collect()
}

/// `ctr run --cni` of `ip -4 -o addr show` as container `id`: it must have the address
/// CNI gave on an interface other than loopback.
pub fn check(ctd: &TestContainerd, id: &str) -> Result<()> {
    let out = run_rm_cni(ctd, id, &["ip", "-4", "-o", "addr", "show"])?;
    expect_code(&out, 0, "ctr run --cni")?;
    let found = addresses(&out.stdout);
    ensure!(
        found
            .iter()
            .any(|(dev, a)| dev != "lo" && a.starts_with(CTR_CNI_SUBNET_PREFIX)),
        "no CNI address in the container: {found:?}"
    );
    Ok(())
}
