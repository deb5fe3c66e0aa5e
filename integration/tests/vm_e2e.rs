//! End-to-end tests of the VM backend through a real containerd 1.7 and a real dockerd
//! 26, with every container in its own QEMU guest (TCG where KVM is unusable, as on
//! these test machines): output, exit codes, stdin, TTY, exec, kill, pause/resume,
//! metrics, bad input, the isolation boundary, and the faults (qemu killed, agent
//! silent). Every case checks that nothing is left behind.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use stockade_integration::{
    IMAGE, NAMESPACE, RUNTIME, TestContainerd, TestDocker, escape, expect_code, guest_assets,
    guest_config, hostile, hypervisor_toml, in_tty, run, run_with_stdin, skip_reason,
};

struct Suite {
    ctd: TestContainerd,
    docker: Option<TestDocker>,
    guest_release: String,
}

type Case = stockade_integration::Case<Suite>;

/// The escape suite inside the guest, through ctr: the same profiles, init and exec,
/// as in container mode; an exec asking for CAP_SYS_ADMIN is refused.
fn escape_ctr(s: &Suite) -> Result<()> {
    escape::ctr_escape(&s.ctd, "vm")?;
    for name in ["stockade-default", "containerd-default", "localhost-chmod"] {
        expect_clean(s, &format!("esc-vm-{name}"))?;
    }
    Ok(())
}

/// The escape suite inside the guest, through Docker.
fn escape_docker(s: &Suite) -> Result<()> {
    escape::docker_escape(&s.ctd, docker_of(s)?, "vm")?;
    expect_no_vm_leaks(s)
}

/// VM mode's privileged policy. By default a privileged container is refused before
/// any VM boots, naming the capability and `[hypervisor] allow_privileged`. With that
/// set, it runs inside its own VM with every capability and no seccomp there, in the
/// guest's kernel, and with none of the host's devices.
fn privileged_policy(s: &Suite) -> Result<()> {
    let wants = ["CAP_SYS_ADMIN", "[hypervisor] allow_privileged"];
    escape::ctr_privileged_refused(&s.ctd, "vpriv1", &wants)?;
    expect_clean(s, "vpriv1")?;

    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&s.ctd.config)?)?;
    cfg.entry("hypervisor")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .context("[hypervisor]")?
        .insert("allow_privileged".into(), toml::Value::Boolean(true));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("privileged.toml");
    std::fs::write(&path, toml::to_string(&cfg)?)?;
    let script = "grep -E '^(CapEff|Seccomp):' /proc/self/status; uname -r;         echo \"userns: $(probe userns)\"; echo \"devices: $(ls /dev | tr '\\n' ' ')\"";
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &path.display().to_string(),
        IMAGE,
        "vpriv2",
        "sh",
        "-c",
        script,
    ]);
    expect_code(&out, 0, "privileged container in the VM")?;
    let o = &out.stdout;
    // ctr --privileged asks for every capability ctr itself holds (these hosts lack
    // CAP_SYS_RESOURCE): the same set as this test's bounding set.
    let status = std::fs::read_to_string("/proc/self/status")?;
    let all = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .context("no CapBnd")?;
    ensure!(
        o.contains(&format!("CapEff:\t{all}")),
        "not every capability ({all}):\n{o}"
    );
    ensure!(o.contains("Seccomp:\t0"), "privileged, yet filtered:\n{o}");
    ensure!(o.contains(&s.guest_release), "not the guest kernel:\n{o}");
    ensure!(
        o.contains("userns: allowed"),
        "privileged, yet userns denied:\n{o}"
    );
    let devices = o
        .lines()
        .find_map(|l| l.strip_prefix("devices: "))
        .context("no device list")?;
    // The host's devices that --privileged lists (its disks, kvm, loop, …) are not there.
    for host_only in host_devices() {
        ensure!(
            !devices.split_whitespace().any(|d| d == host_only),
            "host device {host_only} in the guest container: {devices}"
        );
    }
    expect_clean(s, "vpriv2")
}

/// Device nodes of the host that a guest has no business showing: kvm, the host's
/// block devices, loop and vhost devices.
fn host_devices() -> Vec<String> {
    let mut out: Vec<String> = ["kvm", "vhost-net", "loop-control", "mem", "kmsg"]
        .into_iter()
        .filter(|d| std::path::Path::new("/dev").join(d).exists())
        .map(String::from)
        .collect();
    if let Ok(blocks) = std::fs::read_dir("/sys/block") {
        out.extend(
            blocks
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("loop") && !n.starts_with("ram")),
        );
    }
    out
}

fn expect_clean(s: &Suite, id: &str) -> Result<()> {
    for _ in 0..100 {
        let mut leaks = s.ctd.leaks(NAMESPACE, id);
        leaks.extend(s.ctd.vm_leaks());
        if leaks.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut leaks = s.ctd.leaks(NAMESPACE, id);
    leaks.extend(s.ctd.vm_leaks());
    bail!("{id} left behind: {leaks:?}")
}

/// Docker's containers have ids of its own: check the VM state alone.
fn expect_no_vm_leaks(s: &Suite) -> Result<()> {
    for _ in 0..100 {
        if s.ctd.vm_leaks().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("docker left VM state behind: {:?}", s.ctd.vm_leaks())
}

fn cleanup(s: &Suite, id: &str) {
    let _ = s.ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.ctd.ctr(&["task", "delete", "-f", id]);
    let _ = s.ctd.ctr(&["container", "delete", id]);
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn uname_is_the_guest_kernel(s: &Suite) -> Result<()> {
    let out = s.ctd.run_rm("vuname", &["uname", "-r"]);
    expect_code(&out, 0, "uname -r")?;
    let got = out.stdout.trim();
    ensure!(got != host_release(), "uname -r is the host's: {got}");
    ensure!(
        got == s.guest_release,
        "uname -r {got:?}, guest kernel {:?}",
        s.guest_release
    );
    expect_clean(s, "vuname")
}

fn no_host_path_is_visible(s: &Suite) -> Result<()> {
    // The container's mount table names the share, never a host path; the host's
    // snapshot and state directories do not exist inside.
    let host_dir = s.ctd.dir.path().display().to_string();
    let script = format!(
        "cat /proc/self/mountinfo; test -e {host_dir} && echo HOST-PATH-VISIBLE; ls /sys/class/net"
    );
    let out = s.ctd.run_rm("vpaths", &["sh", "-c", &script]);
    expect_code(&out, 0, "mountinfo")?;
    ensure!(
        !out.stdout.contains(&host_dir) && !out.stdout.contains("HOST-PATH-VISIBLE"),
        "host path visible inside the VM container:\n{}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("virtiofs") || out.stdout.contains("stockade-share"),
        "rootfs does not come from the share:\n{}",
        out.stdout
    );
    expect_clean(s, "vpaths")
}

/// SECURITY.md 16: inside the guest, containers are hardened as on the host (the
/// vsock probe is the agent's own transport: a container must not reach it), and the
/// guest kernel keeps bpf() and its log from unprivileged processes by default and
/// mitigates Spectre.
fn hardening_seen_from_inside(s: &Suite) -> Result<()> {
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
        for t in vsock alg userns netns clone-userns io_uring bpf keyctl userfaultfd perf; do echo \"$t: $(probe $t)\"; done; \
        echo \"kcore: $(wc -c < /proc/kcore 2>/dev/null || echo none)\"; \
        echo \"unprivileged_bpf_disabled: $(cat /proc/sys/kernel/unprivileged_bpf_disabled)\"; \
        echo \"dmesg_restrict: $(cat /proc/sys/kernel/dmesg_restrict)\"; \
        for v in spectre_v1 spectre_v2; do echo \"$v: $(cut -d: -f1 /sys/devices/system/cpu/vulnerabilities/$v)\"; done; \
        (echo x > /proc/sys/kernel/hostname) 2>&1 | grep -q 'Read-only' && echo 'procsys: ro'; \
        (echo x > /proc/sysrq-trigger) 2>&1 | grep -qE 'Read-only|nonexistent directory|No such file' && echo 'sysrq: ro or absent'; \
        echo \"fds: $(ls /proc/self/fd | wc -l)\"; \
        (mknod /tmp/vda b 254 0 && cat /tmp/vda) >/dev/null 2>&1 || echo 'disk: denied'";
    let out = s.ctd.run_rm("vhard", &["sh", "-c", script]);
    expect_code(&out, 0, "hardening probe")?;
    let o = &out.stdout;
    for want in [
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "vsock: denied",
        "alg: denied",
        "userns: denied",
        "netns: denied",
        "clone-userns: denied",
        "io_uring: denied",
        "bpf: denied",
        "keyctl: denied",
        "userfaultfd: denied",
        "perf: denied",
        "procsys: ro",
        "sysrq: ro or absent",
        "fds: 4",
        "disk: denied",
        // The guest kernel's own defaults (its fragment's hardening section).
        "unprivileged_bpf_disabled: 2",
        "dmesg_restrict: 1",
    ] {
        ensure!(o.contains(want), "missing {want:?} in:\n{o}");
    }
    ensure!(
        o.contains("kcore: 0") || o.contains("kcore: none"),
        "kcore readable:\n{o}"
    );
    // Software can always mitigate these two (retpolines, barriers): a kernel without
    // its mitigations reports them "Vulnerable" to any container.
    for v in ["spectre_v1", "spectre_v2"] {
        ensure!(
            o.contains(&format!("{v}: Mitigation")) || o.contains(&format!("{v}: Not affected")),
            "{v} unmitigated in the guest kernel:\n{o}"
        );
    }
    expect_clean(s, "vhard")
}

fn output_exit_codes_and_large_output(s: &Suite) -> Result<()> {
    let out = s.ctd.run_rm(
        "vout1",
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
    );
    expect_code(&out, 7, "exit 7")?;
    ensure!(out.stdout == "to-out\n", "stdout {:?}", out.stdout);
    ensure!(out.stderr.contains("to-err"), "stderr {:?}", out.stderr);
    let out = s.ctd.run_rm(
        "vout2",
        &["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' a"],
    );
    expect_code(&out, 0, "large output")?;
    ensure!(
        out.stdout.len() == 5_000_000 && out.stdout.bytes().all(|b| b == b'a'),
        "large output: {} bytes",
        out.stdout.len()
    );
    expect_clean(s, "vout1")?;
    expect_clean(s, "vout2")
}

fn stdin_reaches_the_guest(s: &Suite) -> Result<()> {
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = run_with_stdin(
        s.ctd.ctr_cmd().args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "vstdin",
            "sh",
            "-c",
            "wc -c; echo done",
        ]),
        &input,
    );
    expect_code(&out, 0, "stdin")?;
    ensure!(
        out.stdout.contains("200000") && out.stdout.contains("done"),
        "stdout {:?}",
        out.stdout
    );
    expect_clean(s, "vstdin")
}

fn tty(s: &Suite) -> Result<()> {
    let cmd = format!(
        "{} --address {} --namespace {NAMESPACE} run --rm -t --runtime {RUNTIME} {IMAGE} vtty sh -c 'tty; exit 5'",
        stockade_integration::daemons().ctr.display(),
        s.ctd.socket.display()
    );
    let out = in_tty(&cmd);
    expect_code(&out, 5, "tty")?;
    ensure!(out.stdout.contains("/dev/pts/"), "no pty: {:?}", out.stdout);
    expect_clean(s, "vtty")
}

fn exec_ps_metrics_pause_kill(s: &Suite) -> Result<()> {
    let id = "vlife";
    s.ctd.run_detached(id, &["sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let out = s.ctd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo exec-out; uname -r; exit 3",
        ]);
        expect_code(&out, 3, "exec")?;
        ensure!(
            out.stdout.contains("exec-out") && out.stdout.contains(&s.guest_release),
            "exec stdout {:?}",
            out.stdout
        );
        let cmd = format!(
            "{} --address {} --namespace {NAMESPACE} task exec -t --exec-id e2 {id} sh -c 'tty; exit 4'",
            stockade_integration::daemons().ctr.display(),
            s.ctd.socket.display()
        );
        let out = in_tty(&cmd);
        expect_code(&out, 4, "exec -t")?;
        ensure!(
            out.stdout.contains("/dev/pts/"),
            "exec tty {:?}",
            out.stdout
        );

        // The debugging CLI finds the sandbox and shows the guest console and agent log.
        let shim = stockade_integration::shim_dir()?.join("containerd-shim-stockade-v2");
        let state = s.ctd.stockade_state.display().to_string();
        let cli = |args: &[&str]| {
            run(Command::new(&shim)
                .arg("--state-dir")
                .arg(&state)
                .args(args))
        };
        let list = cli(&["sandboxes"]);
        expect_code(&list, 0, "sandboxes")?;
        ensure!(list.stdout.contains(id), "sandboxes: {}", list.stdout);
        let log = cli(&["agent-log", id]);
        expect_code(&log, 0, "agent-log")?;
        ensure!(
            log.stdout.contains("stockade-agent:") && log.stdout.contains("sandbox ready"),
            "agent-log: {}",
            log.stdout
        );
        let console = cli(&["console", id]);
        // The whole console: the agent's lines and whatever the kernel printed (the
        // Stockade kernel, booted `quiet` without ACPI, prints nothing of its own).
        expect_code(&console, 0, "console")?;
        ensure!(
            console.stdout.contains("sandbox ready")
                && console.stdout.lines().count() >= log.stdout.lines().count(),
            "console: {}",
            console.stdout
        );

        let ps = s.ctd.ctr(&["task", "ps", id]);
        expect_code(&ps, 0, "ps")?;
        let pid = s.ctd.task_pid(id)?.to_string();
        ensure!(
            ps.stdout.contains(&pid),
            "ps {:?} lacks init pid {pid}",
            ps.stdout
        );

        let m = s.ctd.ctr(&["task", "metrics", id]);
        expect_code(&m, 0, "metrics")?;
        ensure!(
            m.stdout.contains("pids.limit") && m.stdout.contains("4096"),
            "metrics from the guest cgroup: {}",
            m.stdout
        );

        expect_code(&s.ctd.ctr(&["task", "pause", id]), 0, "pause")?;
        ensure!(
            s.ctd.ctr(&["task", "ls"]).stdout.contains("PAUSED"),
            "not paused"
        );
        // A paused container runs nothing: an exec cannot complete until resumed.
        expect_code(&s.ctd.ctr(&["task", "resume", id]), 0, "resume")?;
        ensure!(
            s.ctd.ctr(&["task", "ls"]).stdout.contains("RUNNING"),
            "not resumed"
        );

        let mut sleeper = s
            .ctd
            .ctr_cmd()
            .args(["task", "exec", "--exec-id", "e3", id, "sleep", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut killed = false;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if s.ctd
                .ctr(&["task", "kill", "--exec-id", "e3", "--signal", "SIGTERM", id])
                .ok()
            {
                killed = true;
                break;
            }
        }
        ensure!(killed, "could not signal exec e3");
        let status = sleeper.wait()?;
        ensure!(
            status.code() == Some(143),
            "exec killed by SIGTERM: {status:?}"
        );
        Ok(())
    })();
    cleanup(s, id);
    result?;
    expect_clean(s, id)
}

/// Events of a VM container arrive in containerd's order, and an OOM kill inside the
/// guest (memory limit enforced by the guest's cgroup) is reported as TaskOOM.
fn events_are_ordered_and_oom_reported(s: &Suite) -> Result<()> {
    let events = s.ctd.events("vm-events.log")?;
    let out = s.ctd.run_rm("vev1", &["echo", "hi"]);
    let oom = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "33554432",
        IMAGE,
        "voom",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop()?;
    expect_code(&out, 0, "vev1")?;
    expect_code(&oom, 137, "OOM-killed container in the VM")?;
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"vev1\""))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    ensure!(
        topics
            == [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ],
        "events for vev1: {topics:?}"
    );
    ensure!(
        text.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"voom\"")),
        "no /tasks/oom for voom:\n{text}"
    );
    expect_clean(s, "vev1")?;
    expect_clean(s, "voom")
}

fn kill_reports_137(s: &Suite) -> Result<()> {
    let id = "vkill";
    let mut child = s
        .ctd
        .ctr_cmd()
        .args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1000",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let mut sent = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(100));
        if s.ctd.ctr(&["task", "ls"]).stdout.contains("RUNNING")
            && s.ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]).ok()
        {
            sent = true;
            break;
        }
    }
    let status = child.wait()?;
    ensure!(sent, "never saw {id} running");
    ensure!(
        status.code() == Some(137),
        "ctr run after SIGKILL: {status:?}"
    );
    expect_clean(s, id)
}

/// The qemu of a running sandbox, found by the state dir on its command line.
fn qemu_pid(s: &Suite) -> Result<i32> {
    let ps = run(Command::new("pgrep").args([
        "-f",
        &format!("qemu-system.*{}", s.ctd.stockade_state.display()),
    ]));
    ps.stdout
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("no qemu for the sandbox")
}

fn qemu_killed_exits_task_and_cleans_up(s: &Suite) -> Result<()> {
    let id = "vqemu9";
    s.ctd.run_detached(id, &["sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let pid = qemu_pid(s)?;
        // SECURITY.md 20 and 17: qemu and virtiofsd's serving process (the child of
        // its namespace supervisor) run under seccomp filters.
        let state = s.ctd.stockade_state.display().to_string();
        for name in ["qemu-system", "virtiofsd"] {
            let ps = run(Command::new("pgrep").args(["-f", &format!("{name}.*{state}")]));
            let pids: Vec<&str> = ps.stdout.split_whitespace().collect();
            let serving: Vec<&str> = pids
                .iter()
                .copied()
                .filter(|p| {
                    let st =
                        std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                    let ppid = st
                        .lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .map(str::trim)
                        .unwrap_or("");
                    name == "qemu-system" || pids.contains(&ppid)
                })
                .collect();
            ensure!(!serving.is_empty(), "no {name} process: {pids:?}");
            for p in serving {
                let status = std::fs::read_to_string(format!("/proc/{p}/status"))?;
                ensure!(
                    status.contains("Seccomp:\t2"),
                    "{name} ({p}) runs without seccomp:\n{status}"
                );
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let start = Instant::now();
        loop {
            let ls = s.ctd.ctr(&["task", "ls"]).stdout;
            if ls
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "task not stopped after qemu died: {ls}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        expect_code(&s.ctd.ctr(&["task", "delete", id]), 0, "task delete")?;
        Ok(())
    })();
    cleanup(s, id);
    result?;
    expect_clean(s, id)
}

/// A shim killed with SIGKILL takes its VM with it (the helpers die with their parent)
/// and containerd's `delete` removes the share, mounts and state.
fn shim_killed_is_cleaned_up(s: &Suite) -> Result<()> {
    let id = "vcrash";
    s.ctd.run_detached(id, &["sleep", "1000"])?;
    let qemu = qemu_pid(s)?;
    let shim = s
        .ctd
        .shims()
        .into_iter()
        .find(|l| l.contains(&format!("-id {id} ")))
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no shim for {id}: {:?}", s.ctd.shims()))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let mut gone = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if !std::path::Path::new(&format!("/proc/{qemu}")).exists() {
            gone = true;
            break;
        }
    }
    let _ = s.ctd.ctr(&["task", "delete", "--force", id]);
    let _ = s.ctd.ctr(&["container", "delete", id]);
    ensure!(gone, "qemu {qemu} survived its shim's death");
    expect_clean(s, id)
}

fn bad_input_and_silent_agent_fail_cleanly(s: &Suite) -> Result<()> {
    let dir = s.ctd.dir.path();
    // No kernel: a clear error, and no weaker container instead.
    let cfg = dir.join("nokernel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nmode = \"vm\"\nstate_dir = \"{}\"\n[hypervisor]\naccel = \"tcg\"\nkernel = \"/nonexistent/vmlinuz\"\n",
            s.ctd.stockade_state.display()
        ),
    )?;
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg.display().to_string(),
        IMAGE,
        "vbad1",
        "true",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("does not exist"),
        "missing kernel: {out:?}"
    );
    let _ = s.ctd.ctr(&["container", "delete", "vbad1"]);
    expect_clean(s, "vbad1")?;

    // An agent that never answers: an initramfs whose init sleeps forever. Create
    // fails within the configured boot timeout, with the console's tail in the error.
    let silent = dir.join("silent-initrd.img");
    let script = format!(
        "set -e; w=$(mktemp -d); cp /bin/busybox $w/busybox; printf '#!/busybox sh\\n/busybox sleep 1000\\n' > $w/init; chmod +x $w/init; (cd $w && printf 'init\\nbusybox\\n' | cpio -o -H newc --quiet) | gzip > {}; rm -rf $w",
        silent.display()
    );
    let o = run(Command::new("sh").arg("-c").arg(&script));
    ensure!(o.ok(), "build silent initrd: {}", o.stderr);
    let mut hv = guest_config();
    hv.initrd = silent;
    hv.boot_timeout_secs = 8;
    let cfg = dir.join("silent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nmode = \"vm\"\nstate_dir = \"{}\"\n{}",
            s.ctd.stockade_state.display(),
            hypervisor_toml(&hv)
        ),
    )?;
    let start = Instant::now();
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg.display().to_string(),
        IMAGE,
        "vbad2",
        "true",
    ]);
    let took = start.elapsed();
    ensure!(
        !out.ok() && out.stderr.contains("did not answer within 8s"),
        "silent agent: {out:?}"
    );
    ensure!(took < Duration::from_secs(30), "silent agent took {took:?}");
    ensure!(
        out.stderr.contains("guest console"),
        "no console tail in the error: {}",
        out.stderr
    );
    let _ = s.ctd.ctr(&["container", "delete", "vbad2"]);
    expect_clean(s, "vbad2")?;

    // An unknown mount type in the spec: refused, nothing left.
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        "type=nosuchfs,src=none,dst=/mnt,options=rw",
        IMAGE,
        "vbad3",
        "true",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("nosuchfs"),
        "unknown mount type: {out:?}"
    );
    let _ = s.ctd.ctr(&["container", "delete", "vbad3"]);
    expect_clean(s, "vbad3")
}

fn docker_of(s: &Suite) -> Result<&TestDocker> {
    s.docker
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("dockerd did not start"))
}

fn docker_runs_in_the_vm(s: &Suite) -> Result<()> {
    let d = docker_of(s)?;
    let out = d.docker(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "uname", "-r"]);
    expect_code(&out, 0, "docker run uname -r")?;
    ensure!(
        out.stdout.trim() == s.guest_release,
        "docker uname -r {:?}, guest {:?}",
        out.stdout.trim(),
        s.guest_release
    );
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "sh",
        "-c",
        "exit 9",
    ]);
    expect_code(&out, 9, "docker exit code")?;
    let name = "stockade-vm-d1";
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--runtime",
        RUNTIME,
        IMAGE,
        "sleep",
        "1000",
    ]);
    expect_code(&out, 0, "docker run -d")?;
    let result = (|| -> Result<()> {
        let out = d.docker(&["exec", name, "sh", "-c", "echo in-vm; cat /etc/hostname"]);
        expect_code(&out, 0, "docker exec")?;
        ensure!(out.stdout.contains("in-vm"), "docker exec {:?}", out.stdout);
        let out = d.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name]);
        expect_code(&out, 0, "docker stats")?;
        let out = d.docker(&["stop", "-t", "2", name]);
        expect_code(&out, 0, "docker stop")?;
        Ok(())
    })();
    let _ = d.docker(&["rm", "-f", name]);
    result?;
    expect_no_vm_leaks(s)
}

/// Docker's bridge network reaches the VM: the pod's veth is mirrored onto a tap the
/// guest's NIC sits on, with the same MAC, address, routes and MTU. A server in the
/// guest answers at the container's address and through a published port.
fn docker_bridge_network_and_published_port(s: &Suite) -> Result<()> {
    use std::io::{Read, Write};
    let d = docker_of(s)?;
    let port = 21000 + (std::process::id() % 10000) as u16;
    let publish = format!("127.0.0.1:{port}:8080");
    let name = "stockade-vm-web";
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--runtime",
        RUNTIME,
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "uname -r > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
    ]);
    expect_code(&out, 0, "docker run -p")?;
    let result = (|| -> Result<()> {
        let addr = d.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]);
        let ip = addr.stdout.trim().to_string();
        ensure!(ip.starts_with("172.31.254."), "container address {ip:?}");
        let get = |host: &str, port: u16| -> Result<String> {
            let mut body = String::new();
            let target: std::net::SocketAddr = format!("{host}:{port}").parse()?;
            for _ in 0..60 {
                if let Ok(mut c) =
                    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500))
                {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                    body.clear();
                    let _ = c.read_to_string(&mut body);
                    if body.contains(&s.guest_release) {
                        return Ok(body);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let inside = d.docker(&[
                "exec",
                name,
                "sh",
                "-c",
                "ip addr; ip route; cat /proc/net/dev",
            ]);
            let shim = stockade_integration::shim_dir()?.join("containerd-shim-stockade-v2");
            let id = d.docker(&["inspect", "-f", "{{.Id}}", name]).stdout;
            let log = run(Command::new(&shim)
                .arg("--state-dir")
                .arg(&s.ctd.stockade_state)
                .args(["agent-log", id.trim()]));
            bail!(
                "no answer from {host}:{port}: {body:?}\ninside:\n{}{}\nagent log:\n{}{}",
                inside.stdout,
                inside.stderr,
                log.stdout,
                log.stderr
            )
        };
        get(&ip, 8080).context("the container's address")?;
        get("127.0.0.1", port).context("the published port")?;
        Ok(())
    })();
    let _ = d.docker(&["rm", "-f", name]);
    result?;
    expect_no_vm_leaks(s)
}

fn main() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED vm_e2e: {why}");
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    let hv = guest_config();
    let missing: Vec<_> = [
        &hv.kernel,
        &hv.initrd,
        &hv.qemu,
        &hv.vsock_backend,
        &hv.virtiofsd,
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .collect();
    if !missing.is_empty() {
        println!("SKIPPED vm_e2e: missing {missing:?}: run packaging/setup.sh --deps");
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    let guest_release = std::fs::read_to_string(guest_assets().join("guest-kernel-release"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let setup =
        stockade_integration::start_suite("vm", &hypervisor_toml(&hv)).map(|(ctd, docker)| Suite {
            ctd,
            docker,
            guest_release,
        });
    let suite = match setup {
        Ok(s) => s,
        Err(e) => {
            println!("vm_e2e setup failed: {e:#}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let cases: &[Case] = &[
        ("vm_uname_is_the_guest_kernel", uname_is_the_guest_kernel),
        ("vm_no_host_path_is_visible", no_host_path_is_visible),
        ("vm_hardening_seen_from_inside", hardening_seen_from_inside),
        ("vm_escape_ctr", escape_ctr),
        ("vm_escape_docker", escape_docker),
        ("vm_privileged_policy", privileged_policy),
        (
            "vm_output_exit_codes_and_large_output",
            output_exit_codes_and_large_output,
        ),
        ("vm_stdin_reaches_the_guest", stdin_reaches_the_guest),
        ("vm_tty", tty),
        ("vm_exec_ps_metrics_pause_kill", exec_ps_metrics_pause_kill),
        ("vm_kill_reports_137", kill_reports_137),
        (
            "vm_events_are_ordered_and_oom_reported",
            events_are_ordered_and_oom_reported,
        ),
        (
            "vm_qemu_killed_exits_task_and_cleans_up",
            qemu_killed_exits_task_and_cleans_up,
        ),
        ("vm_shim_killed_is_cleaned_up", shim_killed_is_cleaned_up),
        (
            "vm_bad_input_and_silent_agent_fail_cleanly",
            bad_input_and_silent_agent_fail_cleanly,
        ),
        ("vm_docker_runs_in_the_vm", docker_runs_in_the_vm),
        (
            "vm_docker_bridge_network_and_published_port",
            docker_bridge_network_and_published_port,
        ),
        (
            "vm_volumes_refuse_devices_and_keep_read_only",
            volumes_refuse_devices_and_keep_read_only,
        ),
        (
            "vm_namespace_paths_outside_the_pod_are_refused",
            namespace_paths_outside_the_pod_are_refused,
        ),
        ("vm_hostile_reports", hostile_reports),
        ("vm_hostile_ignores_kill", hostile_ignores_kill),
        ("vm_hostile_mute", hostile_mute),
        (
            "vm_hostile_console_and_oversized",
            hostile_console_and_oversized,
        ),
        ("vm_hostile_share_tricks", hostile_share_tricks),
        ("vm_hostile_spoofing", hostile_spoofing),
        (
            "vm_helpers_run_with_least_privilege",
            helpers_run_with_least_privilege,
        ),
        ("vm_host_namespace_pods", host_namespace_pods),
        ("vm_warm_pool_serves_ctr_run", warm_pool_serves_ctr_run),
        ("vm_docker_options_users_use", docker_options_users_use),
        ("vm_time_namespace", time_namespace),
        ("vm_docker_image_store", docker_image_store),
        ("vm_ctr_run_cni", ctr_run_cni),
    ];
    let (passed, failed) = stockade_integration::run_cases(&suite, cases, |s| s.ctd.log());
    drop(suite);
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---- The hostile guest (SECURITY.md, "Hostile guest"): a compromised agent attacks
// the host; each case checks the host's side.

/// OOM and exit reports naming what is not the guest's, and a flood of them: no
/// foreign TaskOOM reaches containerd, the shim's memory stays bounded, and the pod
/// still answers.
fn hostile_reports(s: &Suite) -> Result<()> {
    let (victim, id) = ("hvictim", "hreport");
    s.ctd.run_detached(victim, &["sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let events = s.ctd.events("hostile-events.log")?;
        hostile::run_hostile(&s.ctd, id, &format!("oom={victim},flood=200000"), &[])?;
        let before = hostile::shim_rss_kib(&s.ctd, id)?;
        // The flood takes the guest about 5 s to send; the host keeps polling.
        let mut peak = before;
        for _ in 0..16 {
            std::thread::sleep(Duration::from_millis(500));
            peak = peak.max(hostile::shim_rss_kib(&s.ctd, id)?);
        }
        let ps = s.ctd.ctr(&["task", "ps", id]);
        ensure!(
            ps.ok(),
            "the pod stopped answering after the flood: {}",
            ps.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
        let text = events.stop()?;
        ensure!(
            !text
                .lines()
                .any(|l| l.contains("/tasks/oom") && l.contains(victim)),
            "a guest marked another pod's container OOM-killed:\n{text}"
        );
        println!("    hostile flood: shim VmRSS {before} KiB before, {peak} KiB peak");
        ensure!(
            peak < before + 16 * 1024,
            "the flood grew the shim from {before} KiB to {peak} KiB"
        );
        Ok(())
    })();
    s.ctd.remove(id);
    s.ctd.remove(victim);
    result?;
    expect_clean(s, id)?;
    expect_clean(s, victim)
}

/// A guest that acknowledges SIGKILL and never reports the exit: the host stops the VM
/// after the grace period (10 s) and reports the exit itself.
fn hostile_ignores_kill(s: &Suite) -> Result<()> {
    let id = "hnokill";
    hostile::run_hostile(&s.ctd, id, "ignore-kill", &[])?;
    let result = hostile::remove_within(&s.ctd, id, Duration::from_secs(25));
    if result.is_err() {
        cleanup(s, id);
    }
    let took = result?;
    println!(
        "    ignored SIGKILL: pod removed in {:.1}s",
        took.as_secs_f64()
    );
    expect_clean(s, id)
}

/// A guest that stops answering and stops reading its vsock: no call hangs the shim,
/// and Kill and Delete still remove the pod.
fn hostile_mute(s: &Suite) -> Result<()> {
    let id = "hmute";
    hostile::run_hostile(&s.ctd, id, "mute", &[])?;
    std::thread::sleep(Duration::from_secs(3));
    let result = (|| -> Result<()> {
        let start = Instant::now();
        let ps = s.ctd.ctr(&["task", "ps", id]);
        ensure!(!ps.ok(), "a mute guest answered ps: {ps:?}");
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "ps on a mute guest took {:?}",
            start.elapsed()
        );
        let took = hostile::remove_within(&s.ctd, id, Duration::from_secs(30))?;
        println!("    mute guest: pod removed in {:.1}s", took.as_secs_f64());
        Ok(())
    })();
    if result.is_err() {
        cleanup(s, id);
    }
    result?;
    expect_clean(s, id)
}

/// A guest flooding its console, and answering Stats with more than the protocol
/// allows: the console log stays within its cap, the shim answers, the pod goes.
fn hostile_console_and_oversized(s: &Suite) -> Result<()> {
    let id = "hconsole";
    hostile::run_hostile(&s.ctd, id, "console-flood,oversized", &[])?;
    let result = (|| -> Result<()> {
        let dir = hostile::sandbox_dir(&s.ctd)?.join("vm");
        std::thread::sleep(Duration::from_secs(8));
        let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        let (cur, old) = (size("console.log"), size("console.log.1"));
        println!("    console flood: console.log {cur} B, console.log.1 {old} B");
        ensure!(old > 0, "the flood never filled the first log ({cur} B)");
        ensure!(
            cur <= 1 << 20 && old <= 1 << 20,
            "console log over its cap: {cur} + {old}"
        );
        let m = s.ctd.ctr(&["task", "metrics", id]);
        ensure!(!m.ok(), "oversized stats were accepted: {}", m.stdout);
        let ps = s.ctd.ctr(&["task", "ps", id]);
        ensure!(ps.ok(), "the shim stopped answering: {}", ps.stderr);
        Ok(())
    })();
    let removed = hostile::remove_within(&s.ctd, id, Duration::from_secs(30));
    if removed.is_err() {
        cleanup(s, id);
    }
    result?;
    removed?;
    expect_clean(s, id)
}

/// A guest that renames the container's share dir (tab and newline in the new name),
/// plants a FIFO at its name and symlinks to `/` before Delete: the mounts still go,
/// Delete does not hang or fail, the host's volume is untouched.
fn hostile_share_tricks(s: &Suite) -> Result<()> {
    let id = "hshare";
    let vol = hostile::host_volume(&s.ctd, "hostile-vol")?;
    let before = hostile::listing(&vol);
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display());
    hostile::run_hostile(&s.ctd, id, "share-tricks", &["--mount", &mount])?;
    let removed = hostile::remove_within(&s.ctd, id, Duration::from_secs(30));
    if removed.is_err() {
        cleanup(s, id);
    }
    removed?;
    let state = s.ctd.stockade_state.display().to_string();
    let left = hostile::mounts_containing(&state);
    ensure!(
        left.is_empty(),
        "mounts left after the share tricks: {left:?}"
    );
    ensure!(
        hostile::listing(&vol) == before,
        "the host volume changed: {:?} -> {:?}",
        before,
        hostile::listing(&vol)
    );
    expect_clean(s, id)
}

/// As guest root on volumes: a device node cannot be made through virtiofs, the
/// host-side mounts of the share are nosuid and nodev, and a read-only volume is
/// read-only down to its submounts.
fn volumes_refuse_devices_and_keep_read_only(s: &Suite) -> Result<()> {
    let id = "vvolumes";
    let rw = hostile::host_volume(&s.ctd, "vol-rw")?;
    let ro = hostile::host_volume(&s.ctd, "vol-ro")?;
    let sub = ro.join("sub");
    std::fs::create_dir_all(&sub)?;
    let o = run(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub));
    ensure!(o.ok(), "mount tmpfs: {}", o.stderr);
    let result = (|| -> Result<()> {
        let m_rw = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
        let m_ro = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
        let out = s.ctd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--mount",
            &m_rw,
            "--mount",
            &m_ro,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        ensure!(out.ok(), "run {id}: {}", out.stderr);
        let script = "mknod /rw/blk b 8 0; echo mknod=$?; \
                      touch /ro/x; echo ro=$?; touch /ro/sub/x; echo rosub=$?; \
                      touch /rw/ok; echo rw=$?";
        let out = s
            .ctd
            .ctr(&["task", "exec", "--exec-id", "v1", id, "sh", "-c", script]);
        let o = &out.stdout;
        ensure!(
            !o.contains("mknod=0")
                && o.contains("ro=1")
                && o.contains("rosub=1")
                && o.contains("rw=0"),
            "guest root on volumes: {out:?}"
        );
        ensure!(
            !rw.join("blk").exists(),
            "a device node reached the host volume"
        );
        ensure!(
            rw.join("ok").exists() && !sub.join("x").exists(),
            "volume writes: {out:?}"
        );
        // Every host-side mount of the share is nosuid and nodev.
        let share_mounts: Vec<String> =
            hostile::mounts_containing(&format!("{}/vm/", s.ctd.stockade_state.display()))
                .into_iter()
                .filter(|m| !m.contains(" - nsfs "))
                .collect();
        ensure!(share_mounts.len() >= 4, "share mounts: {share_mounts:?}");
        for m in &share_mounts {
            let opts = m.split_whitespace().nth(5).unwrap_or("");
            ensure!(
                opts.contains("nosuid") && opts.contains("nodev"),
                "share mount without nosuid,nodev: {m}"
            );
        }
        Ok(())
    })();
    cleanup(s, id);
    let _ = run(Command::new("umount").arg(&sub));
    result?;
    expect_clean(s, id)
}

/// A VM pod never joins a namespace outside itself: a host process's by /proc path,
/// the host's own by any path, another VM's by Docker's `--network container:`.
fn namespace_paths_outside_the_pod_are_refused(s: &Suite) -> Result<()> {
    let pin = s.ctd.dir.path().join("host-netns");
    std::fs::write(&pin, "")?;
    let o = run(Command::new("mount")
        .args(["--bind", "/proc/self/ns/net"])
        .arg(&pin));
    ensure!(o.ok(), "pin the host netns: {}", o.stderr);
    let result = (|| -> Result<()> {
        for (n, (ns, want)) in [
            ("network:/proc/1/ns/net".to_string(), "outside this pod"),
            (format!("network:{}", pin.display()), "the host's"),
            ("ipc:/proc/1/ns/ipc".to_string(), "outside this pod"),
        ]
        .iter()
        .enumerate()
        {
            let id = format!("vns{n}");
            let out = s.ctd.run_rm_with(None, &["--with-ns", ns], &id, &["true"]);
            ensure!(
                !out.ok() && out.stderr.contains(want),
                "{ns}: want a refusal naming {want:?}: {out:?}"
            );
            let _ = s.ctd.ctr(&["container", "delete", &id]);
            expect_clean(s, &id)?;
        }
        let tap = run(Command::new("ip").args(["link", "show", "stk-tap0"]));
        ensure!(!tap.ok(), "a tap appeared in the host's namespace");
        Ok(())
    })();
    let _ = run(Command::new("umount").arg(&pin));
    result?;
    let Ok(d) = docker_of(s) else { return Ok(()) };
    let first = d.docker(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--name",
        "vnsd1",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let result = (|| -> Result<()> {
        ensure!(first.ok(), "docker run vnsd1: {}", first.stderr);
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--network",
            "container:vnsd1",
            IMAGE,
            "true",
        ]);
        ensure!(
            !out.ok() && out.stderr.contains("outside this pod"),
            "--network container: in VM mode: {out:?}"
        );
        Ok(())
    })();
    let _ = d.docker(&["rm", "-f", "vnsd1"]);
    result?;
    expect_no_vm_leaks(s)
}

/// A guest that sends from an address and a MAC the host did not give it: only its own
/// frames leave the tap. The pod's network here is a namespace with a veth to the host
/// (as CNI makes it); the host listens on its end.
fn hostile_spoofing(s: &Suite) -> Result<()> {
    let (id, ns) = ("hspoof", "stk-spoof");
    let sh = |cmd: &str| run(Command::new("sh").arg("-c").arg(cmd));
    let _ = sh(&format!("ip netns del {ns}; ip link del stk-sp0"));
    let made = sh(&format!(
        "set -e; ip netns add {ns}; ip link add stk-sp0 type veth peer name stk-sp1; \
         ip link set stk-sp1 netns {ns}; ip addr add 10.77.0.1/24 dev stk-sp0; \
         ip link set stk-sp0 up; ip -n {ns} addr add 10.77.0.2/24 dev stk-sp1; \
         ip -n {ns} link set stk-sp1 up"
    ));
    ensure!(made.ok(), "pod network: {}", made.stderr);
    let result = (|| -> Result<()> {
        let sock = std::net::UdpSocket::bind("10.77.0.1:9999")?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let netns = format!("network:/var/run/netns/{ns}");
        hostile::run_hostile(&s.ctd, id, "spoof=10.77.0.1:9999", &["--with-ns", &netns])?;
        let mut got: Vec<String> = Vec::new();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push(format!(
                    "{} from {from}",
                    String::from_utf8_lossy(&buf[..n])
                ));
            }
            if got.iter().any(|g| g.starts_with("genuine"))
                && start.elapsed() > Duration::from_secs(10)
            {
                break;
            }
        }
        println!("    spoofing guest: the host received {got:?}");
        // What the guest says it sent: the test proves nothing if it sent no spoof.
        let console =
            std::fs::read_to_string(hostile::sandbox_dir(&s.ctd)?.join("vm/console.log"))?;
        let said: Vec<&str> = console.lines().filter(|l| l.contains("spoof")).collect();
        println!("    the guest: {said:?}");
        ensure!(
            said.iter().filter(|l| l.contains("sent=Ok")).count() == 3,
            "the guest did not send all three: {said:?}"
        );
        ensure!(
            got.iter().any(|g| g.starts_with("genuine from 10.77.0.2:")),
            "the guest's own packets never arrived: {got:?}"
        );
        ensure!(
            !got.iter().any(|g| g.starts_with("spoofed")),
            "spoofed frames left the tap: {got:?}"
        );
        Ok(())
    })();
    let removed = hostile::remove_within(&s.ctd, id, Duration::from_secs(30));
    if removed.is_err() {
        cleanup(s, id);
    }
    let _ = sh(&format!("ip netns del {ns}; ip link del stk-sp0"));
    result?;
    removed?;
    expect_clean(s, id)
}

/// One line of `/proc/<pid>/status`, its value trimmed.
fn status_field(pid: &str, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} for {pid}"))
}

/// The pids of `name` processes working in this suite's state dir.
fn helper_pids(s: &Suite, name: &str) -> Vec<String> {
    stockade_integration::vm::helpers_working_in(&s.ctd.stockade_state, name)
}

/// Each helper keeps only what it needs (SECURITY.md, "Helpers"): QEMU and the vsock
/// backend as host uids of their own with no capability, QEMU chrooted into an empty
/// dir under seccomp; virtiofsd in its own namespaces with neither CAP_MKNOD nor
/// CAP_SETFCAP nor CAP_SYS_ADMIN; the state dirs only root can walk.
fn helpers_run_with_least_privilege(s: &Suite) -> Result<()> {
    let id = "vhelpers";
    s.ctd.run_detached(id, &["sleep", "1000"])?;
    let result = (|| -> Result<()> {
        let unprivileged = |pid: &str, what: &str| -> Result<u32> {
            let uids: Vec<u32> = status_field(pid, "Uid")?
                .split_whitespace()
                .map(|u| u.parse().unwrap_or(0))
                .collect();
            ensure!(
                uids.len() == 4 && uids.iter().all(|u| *u == uids[0] && *u != 0),
                "{what} runs as {uids:?}"
            );
            for f in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                let v = status_field(pid, f)?;
                ensure!(v.trim_start_matches('0').is_empty(), "{what} {f} {v}");
            }
            ensure!(
                status_field(pid, "NoNewPrivs")? == "1",
                "{what} may gain privileges"
            );
            Ok(uids[0])
        };
        let qemu = helper_pids(s, "qemu-system-x86_64");
        let [qemu] = qemu.as_slice() else {
            bail!("qemu: {qemu:?}")
        };
        let qemu_uid = unprivileged(qemu, "qemu")?;
        ensure!(
            status_field(qemu, "Seccomp")? == "2",
            "qemu without seccomp"
        );
        let root = std::fs::read_link(format!("/proc/{qemu}/root"))?;
        ensure!(
            root.ends_with("vm/jail"),
            "qemu's root is {}",
            root.display()
        );
        ensure!(
            std::fs::read_dir(&root)?.next().is_none(),
            "qemu's root is not empty"
        );
        let vsock = helper_pids(s, "vhost-device-vsock");
        let [vsock] = vsock.as_slice() else {
            bail!("vsock backend: {vsock:?}")
        };
        let vsock_uid = unprivileged(vsock, "the vsock backend")?;
        ensure!(
            vsock_uid != qemu_uid,
            "qemu and the vsock backend share uid {qemu_uid}"
        );
        // Its jail: a mount namespace of its own whose read-only root holds its binary,
        // the libraries and its sockets' dir, and nothing else of the host.
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
        ensure!(
            ns(vsock) != ns("self"),
            "the vsock backend shares the host's mounts"
        );
        let jail = PathBuf::from(format!("/proc/{vsock}/root"));
        let mut seen: Vec<String> = std::fs::read_dir(&jail)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        seen.sort();
        ensure!(
            seen == ["etc", "helper", "lib", "lib64", "usr", "work"],
            "the vsock backend sees {seen:?}"
        );
        let w = std::fs::write(jail.join("planted"), "x");
        ensure!(w.is_err(), "the vsock backend's root is writable");
        // virtiofsd's serving process: the child of its namespace supervisor.
        let fs = helper_pids(s, "virtiofsd");
        let serving: Vec<&String> = fs
            .iter()
            .filter(|p| status_field(p, "PPid").is_ok_and(|pp| fs.contains(&pp)))
            .collect();
        let [serving] = serving.as_slice() else {
            bail!("virtiofsd: {fs:?}")
        };
        let caps = u64::from_str_radix(&status_field(serving, "CapEff")?, 16)?;
        for (bit, name) in [
            (27, "MKNOD"),
            (31, "SETFCAP"),
            (21, "SYS_ADMIN"),
            (17, "SYS_RAWIO"),
        ] {
            ensure!(
                caps & (1 << bit) == 0,
                "virtiofsd keeps CAP_{name} ({caps:x})"
            );
        }
        ensure!(
            status_field(serving, "Seccomp")? == "2",
            "virtiofsd without seccomp"
        );
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
        ensure!(
            ns(serving) != ns("self"),
            "virtiofsd shares the host's mount namespace"
        );
        use std::os::unix::fs::PermissionsExt;
        for dir in [s.ctd.stockade_state.clone(), hostile::sandbox_dir(&s.ctd)?] {
            let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
            ensure!(mode == 0o700, "{} is {mode:o}", dir.display());
        }
        Ok(())
    })();
    cleanup(s, id);
    result?;
    expect_clean(s, id)
}

/// A container asking for the host's namespaces (`ctr run --net-host`, Docker's
/// `--network host`, `--pid host`) is refused in VM mode, naming what it asked for; with
/// `[hypervisor] host_namespace_pods = "container"` it runs with the container backend
/// (the host's kernel), never silently in a VM with namespaces of its own.
fn host_namespace_pods(s: &Suite) -> Result<()> {
    let out = s
        .ctd
        .run_rm_with(None, &["--net-host"], "vhostns1", &["true"]);
    ensure!(
        !out.ok() && out.stderr.contains("hostNetwork (Docker: --network host)"),
        "--net-host in VM mode: {out:?}"
    );
    let _ = s.ctd.ctr(&["container", "delete", "vhostns1"]);
    expect_clean(s, "vhostns1")?;
    let cfg = s.ctd.dir.path().join("hostns.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nmode = \"vm\"\nstate_dir = \"{}\"\n{}host_namespace_pods = \"container\"\n",
            s.ctd.stockade_state.display(),
            hypervisor_toml(&guest_config())
        ),
    )?;
    let out = s
        .ctd
        .run_rm_with(Some(&cfg), &["--net-host"], "vhostns2", &["uname", "-r"]);
    expect_code(&out, 0, "--net-host with host_namespace_pods = container")?;
    ensure!(
        out.stdout.trim() == host_release(),
        "ran in {} rather than the host's kernel",
        out.stdout.trim()
    );
    expect_clean(s, "vhostns2")?;
    let Ok(d) = docker_of(s) else { return Ok(()) };
    for flag in [["--network", "host"], ["--pid", "host"]] {
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            flag[0],
            flag[1],
            IMAGE,
            "true",
        ]);
        let want = format!("{} {}", flag[0], flag[1]);
        ensure!(
            !out.ok() && out.stderr.contains(&want),
            "docker {want} in VM mode: {out:?}"
        );
    }
    expect_no_vm_leaks(s)
}

/// The warm pool serves `ctr run` (a container whose new network namespace nobody
/// configures): the container runs in the pool's VM, the VM's parked tap has left the
/// pool's namespace (the guest has no address but loopback's), the pool refills, the
/// pid containerd reports is a host process in the container's own namespace, and the
/// claimed VM goes with the container. Docker's containers run beside the pool (Docker
/// 26's hooks need a VM booted for them; Docker 28's claim one) and the pool refills.
fn warm_pool_serves_ctr_run(s: &Suite) -> Result<()> {
    use stockade_integration::pool::{TestPool, parent_of};
    let mut pool = TestPool::start(&s.ctd.config, "size = 1")?;
    let result = (|| -> Result<()> {
        let ready = pool.wait_until(Duration::from_secs(180), "ready", |st| st.ready.len() == 1)?;
        let pooled = ready.ready[0].qemu_pid;
        let id = "vpooled1";
        s.ctd.run_detached(id, &["sleep", "1000"])?;
        ensure!(
            parent_of(pooled) == Some(pool.pid()),
            "the claimed VM's QEMU is no longer the pool's child"
        );
        let dir = stockade_runtime::vm::sandbox::sandbox_dir(&s.ctd.stockade_state, NAMESPACE, id);
        let recorded = std::fs::read_to_string(dir.join("pids"))?;
        ensure!(
            recorded.split_whitespace().next() == Some(pooled.to_string().as_str()),
            "ctr run did not get the pool's VM: {recorded:?}"
        );
        let out = s.ctd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "p1",
            id,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
        ]);
        expect_code(&out, 0, "exec in the pooled VM")?;
        let addressed: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        ensure!(
            addressed == ["lo"],
            "the container has addresses beyond loopback's: {:?}",
            out.stdout
        );
        let task_pid = s.ctd.task_pid(id)?;
        let netns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        ensure!(
            netns(&task_pid.to_string()).is_some() && netns(&task_pid.to_string()) != netns("self"),
            "the reported pid {task_pid} is not a host process in a namespace of its own"
        );
        let refilled = pool.wait_until(Duration::from_secs(180), "refilled", |st| {
            st.ready.len() == 1 && st.ready[0].qemu_pid != pooled
        })?;
        let netns = pool.state_dir.join("pool").join("netns");
        let links = run(Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ip", "-o", "link", "show"]));
        let taps = links.stdout.lines().filter(|l| l.contains("stk-p")).count();
        ensure!(
            taps == refilled.ready.len(),
            "{taps} taps in the pool's namespace for {} pooled VMs:\n{}",
            refilled.ready.len(),
            links.stdout
        );
        cleanup(s, id);
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pooled}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(
            !std::path::Path::new(&format!("/proc/{pooled}")).exists(),
            "the claimed VM outlived its container"
        );
        if let Ok(d) = docker_of(s) {
            let out = d.docker(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "true"]);
            expect_code(&out, 0, "docker run beside a pool")?;
            pool.wait_until(Duration::from_secs(180), "refilled after docker", |st| {
                st.ready.len() == 1
            })?;
        }
        Ok(())
    })();
    let stopped = pool.stop();
    result?;
    ensure!(stopped? == 0, "the pool service's exit code");
    expect_clean(s, "vpooled1")
}

/// `docker run`'s most used options and Docker's commands, each for its effect, with
/// every container in its own VM (`stockade_integration::docker_options`).
fn docker_options_users_use(s: &Suite) -> Result<()> {
    use stockade_integration::docker_options::{Backend, check_all};
    check_all(docker_of(s)?, Backend::Vm)?;
    expect_no_vm_leaks(s)
}

/// A spec with a private time namespace and clock offsets (Docker 29.5 adds one):
/// created in the guest, and its offsets seen inside (`stockade_integration::timens`).
fn time_namespace(s: &Suite) -> Result<()> {
    stockade_integration::timens::check(&s.ctd, "vtimens1")?;
    expect_clean(s, "vtimens1")
}

/// Docker with containerd's image store (Docker 29's default) beside the classic one,
/// each container in its own VM.
fn docker_image_store(s: &Suite) -> Result<()> {
    stockade_integration::docker_options::image_store(
        &s.ctd,
        &s.ctd.dir.path().join("busybox.tar"),
    )?;
    expect_no_vm_leaks(s)
}

/// `ctr run --cni` (nerdctl's path): CNI configures the namespace of the task's pid
/// between create and start; the container has the address CNI gave.
fn ctr_run_cni(s: &Suite) -> Result<()> {
    stockade_integration::ctr_cni::check(&s.ctd, "cni1")?;
    expect_clean(s, "cni1")
}
