//! Debugging subcommands of the shim binary (run by an operator, not by containerd):
//!
//! ```text
//! containerd-shim-stockade-v2 check                what this node runs: KVM probe, backend
//! containerd-shim-stockade-v2 sandboxes            list running VM sandboxes
//! containerd-shim-stockade-v2 console <id>         the guest's serial console log
//! containerd-shim-stockade-v2 agent-log <id>       only the agent's lines of it
//! ```
//!
//! `<id>` is the sandbox's id (the pod sandbox, or a standalone container's id), or a
//! unique prefix of it. The state dir comes from the configuration (`STOCKADE_CONFIG`,
//! `/etc/stockade/configuration.toml`, ...) or `--state-dir <dir>`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use stockade_runtime::Config;
use stockade_runtime::vm::console;
use stockade_runtime::vm::sandbox::{SandboxInfo, list};

pub const COMMANDS: [&str; 4] = ["check", "sandboxes", "console", "agent-log"];

fn state_dir(args: &mut Vec<String>) -> Result<PathBuf> {
    if let Some(i) = args.iter().position(|a| a == "--state-dir") {
        let dir = args
            .get(i + 1)
            .context("--state-dir needs a directory")?
            .clone();
        args.drain(i..=i + 1);
        return Ok(PathBuf::from(dir));
    }
    Ok(Config::load(&Default::default())?.runtime.state_dir)
}

fn find(all: &[SandboxInfo], id: &str) -> Result<SandboxInfo> {
    let matches: Vec<&SandboxInfo> = all.iter().filter(|s| s.id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no running VM sandbox {id:?} (see `sandboxes`)"),
        _ => bail!("{id:?} matches several sandboxes; give more of the id"),
    }
}

/// The KVM probe, the backend this node's configuration selects, and the VM assets.
fn check() -> Result<()> {
    use stockade_runtime::probe::{RealHost, probe_kvm};
    use stockade_runtime::select::{Backend, select};
    let config = Config::load(&Default::default())?;
    let probe = probe_kvm(&RealHost);
    println!(
        "kvm: {}",
        if probe.is_usable() {
            "usable".to_string()
        } else {
            probe.to_string()
        }
    );
    println!("mode: {}", config.runtime.mode);
    match select(&config, &Default::default(), &[], || probe.clone()) {
        Ok(sel) => {
            let backend = match sel.backend {
                Backend::Container => "container (shares the host kernel: the weaker tier)".into(),
                Backend::Vm { accel } => format!("vm ({accel:?})"),
            };
            println!("backend: {backend}\nreason: {}", sel.reason);
        }
        Err(e) => println!("backend: none: {e}"),
    }
    let hv = &config.hypervisor;
    for (what, path) in [
        ("qemu", &hv.qemu),
        ("kernel", &hv.kernel),
        ("initrd", &hv.initrd),
        ("virtiofsd", &hv.virtiofsd),
        ("vsock backend", &hv.vsock_backend),
    ] {
        let state = if path.exists() { "ok" } else { "MISSING" };
        println!("{what}: {} ({state})", path.display());
    }
    let release = hv
        .kernel
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("guest-kernel-release")).ok())
        .map(|r| format!(" {}", r.trim()))
        .unwrap_or_default();
    let kernel = match hv.kernel_kind().as_deref() {
        Some("stockade") => format!("the Stockade kernel{release} (built in, no modules)"),
        Some("cloud") => format!("Debian's cloud kernel{release}"),
        Some(other) => format!("{other}{release}"),
        None => "not from Stockade's guest build (no guest-kernel file beside it)".into(),
    };
    println!(
        "guest kernel: {kernel}; ACPI {}",
        if hv.acpi_enabled() { "on" } else { "off" }
    );
    Ok(())
}

/// Run one debugging command; `args` are the words after the binary's name.
pub fn main(mut args: Vec<String>) -> Result<()> {
    let dir = state_dir(&mut args)?;
    let all = list(&dir);
    match args.first().map(String::as_str) {
        Some("check") => check(),
        Some("sandboxes") => {
            println!("{:<12} {:<64} DIR", "NAMESPACE", "SANDBOX");
            for s in &all {
                println!("{:<12} {:<64} {}", s.namespace, s.id, s.dir.display());
            }
            Ok(())
        }
        Some(cmd @ ("console" | "agent-log")) => {
            let id = args.get(1).context("which sandbox? give its id")?;
            let sb = find(&all, id)?;
            let path = sb.console_log();
            let dir = path.parent().context("console log path")?;
            let text = console::read_all(dir);
            let text = String::from_utf8_lossy(&text);
            // The guest wrote every byte of it: its control characters are shown, not
            // sent to the operator's terminal.
            for line in text.lines() {
                let line = line.trim_end_matches('\r');
                if cmd == "console" || line.starts_with("stockade-agent:") {
                    println!("{}", console::printable(line));
                }
            }
            Ok(())
        }
        _ => bail!(
            "usage: containerd-shim-stockade-v2 [--state-dir DIR] sandboxes | console <id> | agent-log <id>"
        ),
    }
}
