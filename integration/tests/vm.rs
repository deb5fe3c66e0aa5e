//! The VM backend's first slice, against a real QEMU guest (TCG on hosts without usable
//! KVM): boot the guest assets, complete the agent handshake over hybrid vsock, read the
//! guest's details, shut it down, and leave nothing behind; a guest whose agent never
//! answers fails within the boot timeout with the console's tail.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use stockade_integration::{cloud_guest_assets, guest_assets, guest_config, guest_config_at};
use stockade_runtime::config::HypervisorConfig;
use stockade_runtime::vm::MicroVm;

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

async fn boots_and_answers(state: &Path) -> Result<()> {
    boots_and_answers_with(state, &guest_assets()).await
}

/// Debian's cloud kernel, which setup builds beside the Stockade kernel (and guest
/// assets fall back to when it cannot be built), keeps working.
async fn cloud_kernel_boots_and_answers(state: &Path) -> Result<()> {
    let assets = cloud_guest_assets();
    ensure!(
        assets.join("vmlinuz").exists(),
        "no cloud kernel assets in {} (packaging/setup.sh builds them)",
        assets.display()
    );
    boots_and_answers_with(state, &assets).await
}

async fn boots_and_answers_with(state: &Path, assets: &Path) -> Result<()> {
    let cfg = guest_config_at(assets);
    let dir = state.join("vm1");
    let start = Instant::now();
    let vm = MicroVm::boot(&cfg, &dir, None, None).await?;
    let boot = start.elapsed();
    let (qemu, vsock) = (vm.qemu_pid(), vm.vsock_pid());
    ensure!(vm.agent.version.protocol == stockade_agent_protocol::PROTOCOL_VERSION);
    ensure!(vm.agent.health().await?, "agent not serving");
    let details = vm.agent.guest_details().await?;
    let host = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let expected = std::fs::read_to_string(assets.join("guest-kernel-release")).unwrap_or_default();
    ensure!(
        details.kernel_release != host,
        "guest kernel {} is the host's",
        details.kernel_release
    );
    ensure!(
        details.kernel_release == expected.trim(),
        "guest kernel {} != {}",
        details.kernel_release,
        expected.trim()
    );
    ensure!(
        details.hostname == "stockade",
        "hostname {}",
        details.hostname
    );
    // Debian's cloud kernel loads the vsock, virtio-fs and overlay modules at boot; the
    // Stockade kernel has them built in and loads nothing.
    let kind = cfg.kernel_kind().unwrap_or_default();
    if kind == "stockade" {
        ensure!(
            details.loaded_modules.is_empty(),
            "the Stockade kernel loaded modules: {:?}",
            details.loaded_modules
        );
    } else {
        for m in ["vmw_vsock_virtio_transport", "virtiofs", "overlay"] {
            ensure!(
                details.loaded_modules.iter().any(|x| x == m),
                "module {m} not loaded: {:?}",
                details.loaded_modules
            );
        }
    }
    println!(
        "  {} kernel booted to the agent's answer in {:.2}s ({:?})",
        kind,
        boot.as_secs_f64(),
        cfg.accel
    );
    // The agent ends the VM and QEMU exits by itself, well before the 10 s after which
    // shutdown kills it (a guest that only halted would leave QEMU running until then).
    let exited = vm.qemu_exit()?;
    let watcher = tokio::spawn(async move {
        exited.await;
        Instant::now()
    });
    let asked = Instant::now();
    vm.shutdown().await?;
    let took = watcher.await?.saturating_duration_since(asked);
    ensure!(
        took < Duration::from_secs(5),
        "QEMU exited {took:?} after the agent was asked to end the VM: killed, not ended by the guest"
    );
    ensure!(
        !alive(qemu) && !vsock.is_some_and(alive),
        "qemu or the vsock backend survived shutdown"
    );
    ensure!(!dir.exists(), "state dir left behind");
    Ok(())
}

/// A one-file newc cpio archive: `/init` with `data`.
fn newc_with_init(data: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, 1, 0o100755, "init", data);
    entry(&mut out, 2, 0o40755, "dev", &[]);
    entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

async fn silent_guest_times_out_cleanly(state: &Path) -> Result<()> {
    // A guest whose init is busybox's, not the agent: it boots and never answers.
    let dir = state.join("vm2");
    let silent = state.join("no-agent.img");
    std::fs::write(&silent, newc_with_init(&std::fs::read("/bin/busybox")?))?;
    let mut cfg = guest_config();
    cfg.initrd = silent;
    cfg.boot_timeout_secs = 8;
    let start = Instant::now();
    let err = match MicroVm::boot(&cfg, &dir, None, None).await {
        Ok(vm) => {
            let _ = vm.shutdown().await;
            bail!("a guest without an agent booted")
        }
        Err(e) => e.to_string(),
    };
    let took = start.elapsed();
    ensure!(
        took < Duration::from_secs(8 + 7),
        "took {took:?} for an 8s timeout"
    );
    ensure!(err.contains("did not answer within 8s"), "{err}");
    ensure!(took >= Duration::from_secs(8), "gave up early: {took:?}");
    ensure!(err.contains("guest console"), "no console tail: {err}");
    ensure!(!dir.exists(), "state dir left behind");
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()?;
    ensure!(
        ps.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    Ok(())
}

/// Another local user reaching the guest's vsock ports (with kernel vhost-vsock, any
/// user can; here through the hybrid socket, as root): without the VM's secret every
/// call and every stdio stream is refused. The secret is on no command line and its
/// file is gone once the guest answered.
async fn agent_demands_the_secret(state: &Path) -> Result<()> {
    use stockade_agent_protocol::asynchronous::agent::Empty;
    use stockade_agent_protocol::asynchronous::agent_ttrpc::AgentClient as Raw;
    use stockade_agent_protocol::{AGENT_PORT, AUTH_METADATA, STDIO_PORT, stdio_header};
    use stockade_runtime::vm::vsock::Transport;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = guest_config();
    let dir = state.join("vm3");
    let vm = MicroVm::boot(&cfg, &dir, None, None).await?;
    let result = async {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", vm.qemu_pid()))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        ensure!(args.iter().any(|a| a == "-fw_cfg"), "no fw_cfg: {args:?}");
        let hex_run = |a: &str| {
            a.as_bytes()
                .split(|b| !b.is_ascii_hexdigit())
                .any(|w| w.len() >= 32)
        };
        ensure!(
            !args.iter().any(|a| hex_run(a)),
            "a secret on the command line: {args:?}"
        );
        ensure!(
            !dir.join("agent.secret").exists(),
            "the secret's file outlived the boot"
        );
        let transport = Transport::Hybrid {
            uds: dir.join("vsock/vsock.sock"),
        };
        let limit = Duration::from_secs(10);
        let wrong = "a".repeat(64);
        for presented in [None, Some(wrong.as_str())] {
            let stream = transport.connect(AGENT_PORT, limit).await?;
            let raw = Raw::new(ttrpc::asynchronous::Client::new(
                ttrpc::asynchronous::transport::Socket::new(stream),
            ));
            let mut ctx = ttrpc::context::with_timeout(limit.as_nanos() as i64);
            if let Some(p) = presented {
                ctx.add(AUTH_METADATA.to_string(), p.to_string());
            }
            match raw.health(ctx, &Empty::default()).await {
                Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::PERMISSION_DENIED => {}
                other => bail!("a call with secret {presented:?} got {other:?}"),
            }
        }
        let mut s = transport.connect(STDIO_PORT, limit).await?;
        s.write_all(stdio_header(&wrong, "c1", "", "stdout").as_bytes())
            .await?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(limit, s.read(&mut buf)).await??;
        ensure!(n == 0, "a stdio stream with a wrong secret was served");
        ensure!(
            vm.agent.health().await?,
            "the host's own calls stopped working"
        );
        Ok(())
    }
    .await;
    vm.shutdown().await?;
    result
}

/// One async test case over the suite's state dir.
type Case = fn(&Path) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + '_>>;

fn main() {
    let a = guest_assets();
    let missing: Vec<_> = ["vmlinuz", "initrd.img"]
        .iter()
        .filter(|f| !a.join(f).exists())
        .collect();
    let cfg = HypervisorConfig::default();
    if !missing.is_empty() || !cfg.qemu.exists() || !cfg.vsock_backend.exists() {
        println!(
            "SKIPPED vm: guest assets in {} or qemu/vhost-device-vsock missing: run packaging/setup.sh --deps",
            a.display()
        );
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("stockade-vm-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cases: [(&str, Case); 4] = [
        ("vm_agent_demands_the_secret", |p| {
            Box::pin(agent_demands_the_secret(p))
        }),
        ("vm_boots_and_agent_answers", |p| {
            Box::pin(boots_and_answers(p))
        }),
        ("vm_cloud_kernel_boots_and_agent_answers", |p| {
            Box::pin(cloud_kernel_boots_and_answers(p))
        }),
        ("vm_silent_guest_times_out_cleanly", |p| {
            Box::pin(silent_guest_times_out_cleanly(p))
        }),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        match rt.block_on(case(state.path())) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e:#}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
