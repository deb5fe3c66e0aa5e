//! The `start` subcommand: one shim per pod, a socket named the way containerd names it.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use containerd_shim::{Flags, socket_address};

use crate::bootstrap::Input;

const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The id that names the shim serving this container: its pod's sandbox id for a
/// CRI container, else its own id.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let Ok(text) = std::fs::read_to_string(bundle.join("config.json")) else {
        return id.to_string();
    };
    let Ok(spec) = serde_json::from_str::<serde_json::Value>(&text) else {
        return id.to_string();
    };
    let ann = &spec["annotations"];
    match (ann[CONTAINER_TYPE].as_str(), ann[SANDBOX_ID].as_str()) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

/// The `start` action as containerd runs it (flags, stdin, the bundle as the working
/// directory): spawn the shim server (or find the pod's running one), and return what
/// goes on stdout, in the form the daemon reads (see [`crate::bootstrap`]).
///
/// containerd merges this process's stderr into the answer: nothing is written there
/// on success. Log lines go to containerd's shim log (the bundle's `log` fifo).
pub fn start(flags: &Flags) -> Result<Vec<u8>> {
    let cwd = std::env::current_dir().context("current dir")?;
    init_log(&cwd, flags.debug);
    let mut data = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut data) {
        log::warn!(error:% = e; "start: stdin unreadable: no runtime options");
    }
    let input = Input::read(&data, &flags.id, &flags.namespace);
    if let Input::Bootstrap(p) = &input {
        log::debug!(containerd = p.containerd_version.as_str(); "start: containerd's bootstrap protocol");
    }
    let runtime_options = crate::options::parse(input.options()).unwrap_or_else(|e| {
        log::warn!(error = e.as_str(); "start: runtime options unreadable: ignored");
        Default::default()
    });

    let group = grouping(&cwd, &flags.id);
    let mut address = socket_address(&flags.address, &flags.namespace, &group);
    if let Input::Bootstrap(p) = &input
        && let Some(dir) = p.socket_dir.as_deref().filter(|d| !d.is_empty())
    {
        // The daemon's socket dir (2.3+): the same name, in the dir it asks for.
        let name = address.rsplit('/').next().unwrap_or_default().to_string();
        std::fs::create_dir_all(dir).with_context(|| format!("create socket dir {dir}"))?;
        address = format!("unix://{}/{name}", dir.trim_end_matches('/'));
    }

    let exe = std::env::current_exe().context("current exe")?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
        ])
        .args(["-socket", &address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().context("spawn shim server")?;
    let pid = child.id();
    if !runtime_options.shim_cgroup.is_empty() {
        let procs = Path::new("/sys/fs/cgroup")
            .join(runtime_options.shim_cgroup.trim_start_matches('/'))
            .join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, pid.to_string()) {
            log::warn!(cgroup:% = procs.display(), error:% = e; "start: the shim stays out of its shim_cgroup");
        }
    }
    adjust_oom_score(pid);
    // The server closes its stdout once it serves (or found the pod's shim serving).
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    // A server that exits at once found the pod's shim already serving.
    let _ = child.try_wait();
    // Only root may talk to the shim (the crate binds it with the default umask).
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        log::warn!(socket = path, error:% = e; "start: the shim's socket keeps its mode");
    }
    std::fs::write(cwd.join("address"), &address).context("write address file")?;
    Ok(input.answer(&address))
}

/// `start`'s log lines into containerd's shim log: the bundle's `log` fifo, which the
/// daemon reads from before it runs `start`. Without a reader, they are dropped.
fn init_log(bundle: &Path, debug: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"));
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    if let Ok(f) = fifo {
        stockade_runtime::logfmt::init_writer("", level, Box::new(f));
    }
}

/// The shim should be killed before containerd under memory pressure: parent's score + 1.
/// Where that is not permitted (no CAP_SYS_RESOURCE) the score stays as it is.
fn adjust_oom_score(pid: u32) {
    let parent = std::os::unix::process::parent_id();
    let Ok(score) = std::fs::read_to_string(format!("/proc/{parent}/oom_score_adj")) else {
        return;
    };
    let Ok(score) = score.trim().parse::<i64>() else {
        return;
    };
    if score < 1000 {
        let _ = std::fs::write(
            format!("/proc/{pid}/oom_score_adj"),
            (score + 1).to_string(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_containers_group_under_their_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "c1"), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(grouping(dir.path(), "pod1"), "pod1");
        assert_eq!(grouping(Path::new("/nonexistent"), "c2"), "c2");
    }
}
