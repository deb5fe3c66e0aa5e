//! End-to-end tests of the container backend through a real containerd 1.7 and a real
//! dockerd 26. One containerd and one dockerd serve the whole suite; every case cleans
//! up after itself and the suite checks that nothing leaked.
//!
//! Runs as part of `cargo test --release`; needs root and the binaries setup.sh installs.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use stockade_integration::{
    IMAGE, NAMESPACE, RUNTIME, TestContainerd, TestDocker, escape, expect_code, in_tty, run,
    run_with_stdin, skip_reason,
};

struct Suite {
    ctd: TestContainerd,
    docker: Option<TestDocker>,
    /// Shim sockets that existed before the suite (other containerds' shims).
    sockets_before: Vec<std::path::PathBuf>,
}

fn shim_sockets() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/run/containerd/s")
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn expect_clean(s: &Suite, ns: &str, id: &str) -> Result<()> {
    // Cleanup is asynchronous to the client returning only for the shim's exit.
    for _ in 0..50 {
        if s.ctd.leaks(ns, id).is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{id} left behind: {:?}", s.ctd.leaks(ns, id))
}

fn ctr_output_and_exit_codes(s: &Suite) -> Result<()> {
    let out = s.ctd.run_rm("out1", &["echo", "hi"]);
    expect_code(&out, 0, "echo")?;
    ensure!(out.stdout == "hi\n", "stdout {:?}", out.stdout);
    let out = s
        .ctd
        .run_rm("out2", &["sh", "-c", "echo to-err >&2; exit 7"]);
    expect_code(&out, 7, "exit 7")?;
    ensure!(out.stderr.contains("to-err"), "stderr {:?}", out.stderr);
    expect_clean(s, NAMESPACE, "out1")?;
    expect_clean(s, NAMESPACE, "out2")
}

fn ctr_large_output_is_whole(s: &Suite) -> Result<()> {
    let out = s.ctd.run_rm(
        "big",
        &["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' a"],
    );
    expect_code(&out, 0, "large output")?;
    ensure!(
        out.stdout.len() == 5_000_000,
        "got {} bytes",
        out.stdout.len()
    );
    ensure!(out.stdout.bytes().all(|b| b == b'a'), "corrupted output");
    Ok(())
}

fn ctr_stdin(s: &Suite) -> Result<()> {
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let out = run_with_stdin(
        s.ctd.ctr_cmd().args([
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "stdin1",
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
    Ok(())
}

fn ctr_tty(s: &Suite) -> Result<()> {
    let cmd = format!(
        "{} --address {} --namespace {NAMESPACE} run --rm -t --runtime {RUNTIME} {IMAGE} tty1 sh -c 'tty; exit 5'",
        stockade_integration::daemons().ctr.display(),
        s.ctd.socket.display()
    );
    let out = in_tty(&cmd);
    expect_code(&out, 5, "tty")?;
    ensure!(out.stdout.contains("/dev/pts/"), "no pty: {:?}", out.stdout);
    expect_clean(s, NAMESPACE, "tty1")
}

fn ctr_exec_ps_metrics_pause(s: &Suite) -> Result<()> {
    let id = "life1";
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
            "echo exec-out; exit 3",
        ]);
        expect_code(&out, 3, "exec")?;
        ensure!(
            out.stdout.contains("exec-out"),
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

        let ps = s.ctd.ctr(&["task", "ps", id]);
        expect_code(&ps, 0, "ps")?;
        let pid = s.ctd.task_pid(id)?.to_string();
        // The shim's socket is a path socket only root can use.
        let address = std::fs::read_to_string(
            s.ctd
                .state_dir
                .join("io.containerd.runtime.v2.task")
                .join(NAMESPACE)
                .join(id)
                .join("address"),
        )?;
        let sock = address.trim().trim_start_matches("unix://");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(sock)?.permissions());
        ensure!(mode & 0o077 == 0, "shim socket {sock} mode {mode:o}");
        ensure!(
            ps.stdout.contains(&pid),
            "ps {:?} lacks init pid {pid}",
            ps.stdout
        );

        let m = s.ctd.ctr(&["task", "metrics", id]);
        expect_code(&m, 0, "metrics")?;
        let usage = m
            .stdout
            .lines()
            .find(|l| l.starts_with("memory.usage_in_bytes") || l.starts_with("memory.usage"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        ensure!(usage > 0, "no memory usage in metrics: {}", m.stdout);
        ensure!(
            m.stdout.contains("pids.limit") && m.stdout.contains("4096"),
            "pids limit: {}",
            m.stdout
        );

        expect_code(&s.ctd.ctr(&["task", "pause", id]), 0, "pause")?;
        ensure!(
            s.ctd.ctr(&["task", "ls"]).stdout.contains("PAUSED"),
            "not paused"
        );
        let frozen = run(Command::new("sh").arg("-c").arg(format!(
            "cat /sys/fs/cgroup/freezer/{NAMESPACE}/{id}/freezer.state 2>/dev/null || cat /sys/fs/cgroup/{NAMESPACE}/{id}/cgroup.freeze"
        )));
        ensure!(
            frozen.stdout.contains("FROZEN") || frozen.stdout.trim() == "1",
            "cgroup not frozen: {:?}",
            frozen.stdout
        );
        expect_code(&s.ctd.ctr(&["task", "resume", id]), 0, "resume")?;
        let cp = s.ctd.ctr(&["task", "checkpoint", id]);
        ensure!(
            !cp.ok() && cp.stderr.to_lowercase().contains("not implemented"),
            "checkpoint: {cp:?}"
        );
        ensure!(
            s.ctd.ctr(&["task", "ls"]).stdout.contains("RUNNING"),
            "not resumed"
        );

        // An exec that dies of an unhandled SIGTERM reports 143, as runc does.
        let mut sleeper = s
            .ctd
            .ctr_cmd()
            .args(["task", "exec", "--exec-id", "e3", id, "sleep", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut killed = false;
        for _ in 0..50 {
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
    let _ = s.ctd.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.ctd.ctr(&["task", "delete", id]);
    let _ = s.ctd.ctr(&["container", "delete", id]);
    result?;
    expect_clean(s, NAMESPACE, id)
}

fn ctr_kill_reports_137(s: &Suite) -> Result<()> {
    let id = "kill1";
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
    for _ in 0..50 {
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
    expect_clean(s, NAMESPACE, id)
}

fn hardening_seen_from_inside(s: &Suite) -> Result<()> {
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
        for t in vsock alg userns netns clone-userns io_uring bpf keyctl userfaultfd perf inet; do echo \"$t: $(probe $t)\"; done; \
        echo \"kcore: $(wc -c < /proc/kcore 2>/dev/null || echo none)\"; \
        echo \"keys: $(cat /proc/keys 2>&1 | wc -c)\"; \
        (echo x > /proc/sys/kernel/hostname) 2>&1 | grep -q 'Read-only' && echo 'procsys: ro'; \
        (echo x > /proc/sysrq-trigger) 2>&1 | grep -q 'Read-only' && echo 'sysrq: ro'; \
        echo \"fds: $(ls /proc/self/fd | wc -l)\"; \
        (mknod /tmp/kvm c 10 232 && cat /tmp/kvm) >/dev/null 2>&1 || echo 'kvm: denied'";
    let out = s.ctd.run_rm("hard1", &["sh", "-c", script]);
    expect_code(&out, 0, "hardening probe")?;
    let o = &out.stdout;
    for want in [
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "userns: denied",
        "netns: denied",
        "clone-userns: denied",
        "io_uring: denied",
        "bpf: denied",
        "keyctl: denied",
        "userfaultfd: denied",
        "perf: denied",
        "vsock: denied",
        "alg: denied",
        "inet: allowed",
        "procsys: ro",
        "kvm: denied",
    ] {
        ensure!(o.contains(want), "missing {want:?} in:\n{o}");
    }
    // Some kernels (this CI's among them) have no /proc/sysrq-trigger at all.
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        ensure!(
            o.contains("sysrq: ro"),
            "/proc/sysrq-trigger writable:\n{o}"
        );
    }
    ensure!(
        o.contains("kcore: 0") || o.contains("kcore: none"),
        "kcore readable:\n{o}"
    );
    ensure!(o.contains("keys: 0"), "/proc/keys readable:\n{o}");
    // ls itself holds one fd open for the directory: stdio + that one.
    ensure!(o.contains("fds: 4"), "leaked fds:\n{o}");
    Ok(())
}

fn bad_input_fails_cleanly(s: &Suite) -> Result<()> {
    let out = s.ctd.run_rm_with(
        None,
        &["--mount", "type=nosuchfs,src=none,dst=/mnt"],
        "bad1",
        &["true"],
    );
    ensure!(
        !out.ok() && out.stderr.contains("unknown mount type"),
        "unknown mount type: {out:?}"
    );
    expect_clean(s, NAMESPACE, "bad1")?;

    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        "/nonexistent/rootfs",
        "bad2",
        "true",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("/nonexistent/rootfs"),
        "missing rootfs: {out:?}"
    );
    expect_clean(s, NAMESPACE, "bad2")?;

    // A spec containerd accepts but that is not a valid OCI runtime spec.
    let spec = s.ctd.ctr(&["oci", "spec"]).stdout;
    let mut v: serde_json::Value = serde_json::from_str(&spec)?;
    v["ociVersion"] = "0.1.0".into();
    v["process"]["cwd"] = "relative/cwd".into();
    let rootfs = s.ctd.dir.path().join("empty-rootfs");
    std::fs::create_dir_all(&rootfs)?;
    v["root"]["path"] = rootfs.display().to_string().into();
    let path = s.ctd.dir.path().join("bad-spec.json");
    std::fs::write(&path, v.to_string())?;
    let out = s.ctd.run_rm_spec(&path, "bad3");
    ensure!(
        !out.ok() && out.stderr.contains("bad3"),
        "malformed spec: {out:?}"
    );
    ensure!(
        !out.stderr.contains("panic"),
        "shim panicked: {}",
        out.stderr
    );
    expect_clean(s, NAMESPACE, "bad3")?;

    let out = s.ctd.run_rm("bad4", &["/no/such/binary"]);
    ensure!(
        !out.ok() && out.stderr.contains("/no/such/binary"),
        "missing binary: {out:?}"
    );
    expect_clean(s, NAMESPACE, "bad4")?;

    // A failure inside the container's init names its cause, not only the step.
    let out = s.ctd.run_rm_with(
        None,
        &[
            "--mount",
            "type=bind,src=/nonexistent/bind-source,dst=/mnt,options=rbind",
        ],
        "bad5",
        &["true"],
    );
    ensure!(
        !out.ok() && out.stderr.contains("/nonexistent/bind-source"),
        "missing bind source: {out:?}"
    );
    expect_clean(s, NAMESPACE, "bad5")?;
    for id in ["bad1", "bad2", "bad3", "bad4", "bad5"] {
        let _ = s.ctd.ctr(&["container", "delete", id]);
    }
    Ok(())
}

/// Images whose /proc or /dev are symlinks out of the rootfs (SECURITY.md item 12):
/// Create fails or stays inside, and the host is unchanged.
fn malicious_image_symlinks_fail_cleanly(s: &Suite) -> Result<()> {
    let base = s.ctd.dir.path().join("evil");
    let host_target = s.ctd.dir.path().join("host-target");
    std::fs::create_dir_all(&host_target)?;
    for (id, link) in [("evil1", "proc"), ("evil2", "dev")] {
        let root = base.join(id);
        for d in ["bin", "dev", "proc", "sys", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
        std::fs::remove_dir(root.join(link))?;
        std::os::unix::fs::symlink(&host_target, root.join(link))?;
        let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .count();
        let out = s.ctd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--env",
            "PATH=/bin",
            "--rootfs",
            &root.display().to_string(),
            id,
            "/bin/busybox",
            "true",
        ]);
        ensure!(!out.stderr.contains("panic"), "{id}: {out:?}");
        if link == "proc" {
            ensure!(!out.ok(), "{id}: a /proc symlink must fail Create: {out:?}");
        }
        let left: Vec<_> = std::fs::read_dir(&host_target)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(
            left.is_empty(),
            "{id}: the container wrote to the host through /{link}: {left:?}"
        );
        let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .count();
        ensure!(mounts_after <= mounts_before, "{id}: host mounts grew");
        let _ = s.ctd.ctr(&["container", "delete", id]);
        expect_clean(s, NAMESPACE, id)?;
    }
    Ok(())
}

fn backend_selection_fails_closed(s: &Suite) -> Result<()> {
    let vm = s.ctd.dir.path().join("vm.toml");
    std::fs::write(
        &vm,
        "[runtime]\nmode = \"vm\"\n[hypervisor]\naccel = \"kvm\"\n",
    )?;
    let vm_path = vm.display().to_string();
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &vm_path,
        IMAGE,
        "sel1",
        "true",
    ]);
    let probe_ok =
        stockade_runtime::probe::probe_kvm(&stockade_runtime::probe::RealHost).is_usable();
    if !probe_ok {
        ensure!(
            !out.ok() && out.stderr.contains("KVM"),
            "mode=vm without KVM must fail: {out:?}"
        );
    }
    // Software emulation asked for, but the guest kernel is missing: the VM backend
    // fails with a clear error and never falls back to a weaker container.
    std::fs::write(
        &vm,
        "[runtime]\nmode = \"vm\"\n[hypervisor]\naccel = \"tcg\"\nkernel = \"/nonexistent/vmlinuz\"\n",
    )?;
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &vm_path,
        IMAGE,
        "sel2",
        "true",
    ]);
    ensure!(
        !out.ok()
            && out
                .stderr
                .contains("kernel /nonexistent/vmlinuz does not exist"),
        "mode=vm without a kernel: {out:?}"
    );
    let bad = s.ctd.dir.path().join("bad.toml");
    std::fs::write(&bad, "[runtime]\nmode = \"fast\"\n")?;
    let out = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &bad.display().to_string(),
        IMAGE,
        "sel3",
        "true",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("bad.toml"),
        "bad config: {out:?}"
    );
    for id in ["sel1", "sel2", "sel3"] {
        let _ = s.ctd.ctr(&["container", "delete", id]);
        expect_clean(s, NAMESPACE, id)?;
    }
    Ok(())
}

fn docker_of(s: &Suite) -> Result<&TestDocker> {
    s.docker
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("dockerd did not start"))
}

fn docker_run_exec_stop_stats(s: &Suite) -> Result<()> {
    let d = docker_of(s)?;
    let out = d.docker(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "echo", "hi"]);
    expect_code(&out, 0, "docker run")?;
    ensure!(out.stdout == "hi\n", "stdout {:?}", out.stdout);
    expect_code(
        &d.docker(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "sh",
            "-c",
            "exit 9",
        ]),
        9,
        "docker exit 9",
    )?;
    // The named runtime from daemon.json (runtimeType).
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "stockade",
        IMAGE,
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; probe vsock; probe clone-userns; true",
    ]);
    expect_code(&out, 0, "named runtime")?;
    ensure!(out.stdout.contains("Seccomp:\t2"), "{:?}", out.stdout);
    ensure!(
        out.stdout.matches("denied").count() == 2,
        "docker profile not hardened: {:?}",
        out.stdout
    );
    let out = run_with_stdin(
        d.docker_cmd()
            .args(["run", "--rm", "-i", "--runtime", RUNTIME, IMAGE, "cat"]),
        b"via-stdin\n",
    );
    ensure!(out.stdout == "via-stdin\n", "docker -i: {out:?}");
    let out = in_tty(&format!(
        "{} -H {} run --rm -it --runtime {RUNTIME} {IMAGE} sh -c 'tty; exit 3'",
        stockade_integration::daemons().docker.display(),
        d.host
    ));
    expect_code(&out, 3, "docker -it")?;
    ensure!(
        out.stdout.contains("/dev/pts/"),
        "docker -it: {:?}",
        out.stdout
    );

    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "dk1",
        "--runtime",
        RUNTIME,
        IMAGE,
        "sleep",
        "1000",
    ]);
    expect_code(&out, 0, "docker run -d")?;
    let result = (|| -> Result<()> {
        let out = d.docker(&["exec", "dk1", "sh", "-c", "echo in-exec; exit 4"]);
        expect_code(&out, 4, "docker exec")?;
        ensure!(out.stdout.contains("in-exec"), "{:?}", out.stdout);
        let out = d.docker(&[
            "exec",
            "-u",
            "nobody",
            "dk1",
            "sh",
            "-c",
            "id -u; grep NoNewPrivs /proc/self/status",
        ]);
        expect_code(&out, 0, "docker exec -u nobody")?;
        ensure!(
            out.stdout.starts_with("65534\n") && out.stdout.contains("NoNewPrivs:\t1"),
            "exec as nobody: {:?}",
            out.stdout
        );
        let out = d.docker(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}} {{.PIDs}}",
            "dk1",
        ]);
        expect_code(&out, 0, "docker stats")?;
        ensure!(
            !out.stdout.starts_with("0B") && out.stdout.trim().ends_with(" 1"),
            "docker stats: {:?}",
            out.stdout
        );
        // sleep as PID 1 ignores SIGTERM: docker stop escalates to SIGKILL.
        expect_code(&d.docker(&["stop", "-t", "1", "dk1"]), 0, "docker stop")?;
        let code = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", "dk1"]);
        ensure!(
            code.stdout.trim() == "137",
            "exit after stop: {:?}",
            code.stdout
        );
        Ok(())
    })();
    let _ = d.docker(&["rm", "-f", "dk1"]);
    result
}

fn docker_capabilities_are_only_those_granted(s: &Suite) -> Result<()> {
    let d = docker_of(s)?;
    let script = "for t in raw mknod; do echo \"$t: $(probe $t)\"; done; \
        (touch /sys/stockade-probe) 2>&1 | grep -q 'Read-only' && echo 'sys: ro'; \
        grep CapBnd /proc/self/status";
    // Docker's defaults grant NET_RAW and MKNOD...
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    expect_code(&out, 0, "default caps")?;
    ensure!(
        out.stdout.contains("raw: allowed") && out.stdout.contains("mknod: allowed"),
        "{:?}",
        out.stdout
    );
    ensure!(
        out.stdout.contains("sys: ro"),
        "/sys writable: {:?}",
        out.stdout
    );
    // ...and without them, raw sockets and mknod fail.
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--cap-drop",
        "NET_RAW",
        "--cap-drop",
        "MKNOD",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    expect_code(&out, 0, "dropped caps")?;
    ensure!(
        out.stdout.contains("raw: denied EPERM") && out.stdout.contains("mknod: denied EPERM"),
        "{:?}",
        out.stdout
    );
    Ok(())
}

fn docker_bad_input(s: &Suite) -> Result<()> {
    let d = docker_of(s)?;
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--privileged",
        IMAGE,
        "true",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("privileged"),
        "privileged must be refused: {out:?}"
    );
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "/no/such/binary",
    ]);
    ensure!(
        !out.ok() && out.stderr.contains("/no/such/binary"),
        "missing binary: {out:?}"
    );
    Ok(())
}

fn events_are_ordered_and_oom_reported(s: &Suite) -> Result<()> {
    let events = s.ctd.events("events.log")?;
    let out = s.ctd.run_rm("ev1", &["echo", "hi"]);
    s.ctd.run_detached("ev2", &["sleep", "1000"])?;
    let exec = s
        .ctd
        .ctr(&["task", "exec", "--exec-id", "ev2x", "ev2", "true"]);
    let _ = s.ctd.ctr(&["task", "kill", "--signal", "SIGKILL", "ev2"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.ctd.ctr(&["task", "delete", "ev2"]);
    let _ = s.ctd.ctr(&["container", "delete", "ev2"]);
    let oom = s.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "33554432",
        IMAGE,
        "oom1",
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let text = events.stop()?;
    expect_code(&out, 0, "ev1")?;
    expect_code(&oom, 137, "OOM-killed container")?;
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"ev1\""))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    let order = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let pos: Vec<Option<usize>> = order
        .iter()
        .map(|t| topics.iter().position(|x| x == t))
        .collect();
    ensure!(
        pos.iter().all(Option::is_some),
        "missing task events for ev1: {topics:?}\n{text}"
    );
    ensure!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "events out of order: {topics:?}"
    );
    ensure!(
        text.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("\"oom1\"")),
        "no /tasks/oom for oom1:\n{text}"
    );
    expect_code(&exec, 0, "exec in ev2")?;
    let exec_topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"ev2x\""))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    ensure!(
        exec_topics == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "exec events: {exec_topics:?}"
    );
    expect_clean(s, NAMESPACE, "ev2")?;
    expect_clean(s, NAMESPACE, "oom1")
}

fn shim_killed_is_cleaned_up(s: &Suite) -> Result<()> {
    let id = "crash1";
    s.ctd.run_detached(id, &["sleep", "1000"])?;
    let pid = s.ctd.task_pid(id)?;
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
    // SAFETY: plain kill(2) of the shim process we found.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    let mut gone = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            gone = true;
            break;
        }
    }
    let _ = s.ctd.ctr(&["task", "delete", "--force", id]);
    let _ = s.ctd.ctr(&["container", "delete", id]);
    ensure!(gone, "container init {pid} survived its shim's death");
    expect_clean(s, NAMESPACE, id)
}

fn docker_update_resources(s: &Suite) -> Result<()> {
    let d = docker_of(s)?;
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "dk2",
        "--runtime",
        RUNTIME,
        IMAGE,
        "sleep",
        "1000",
    ]);
    expect_code(&out, 0, "docker run -d")?;
    let full = out.stdout.trim().to_string();
    let result = (|| -> Result<()> {
        expect_code(
            &d.docker(&["update", "--memory", "64m", "--memory-swap", "64m", "dk2"]),
            0,
            "docker update",
        )?;
        let v1 = format!("/sys/fs/cgroup/memory/docker/{full}/memory.limit_in_bytes");
        let v2 = format!("/sys/fs/cgroup/docker/{full}/memory.max");
        let limit = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2))?;
        ensure!(
            limit.trim() == "67108864",
            "memory limit after update: {limit:?}"
        );
        Ok(())
    })();
    let _ = d.docker(&["rm", "-f", "dk2"]);
    result
}

fn docker_bridge_network_and_published_port(s: &Suite) -> Result<()> {
    use std::io::{Read, Write};
    let d = docker_of(s)?;
    let port = 20000 + (std::process::id() % 10000) as u16;
    let publish = format!("127.0.0.1:{port}:8080");
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "web1",
        "--runtime",
        RUNTIME,
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "echo hello-from-stockade > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
    ]);
    expect_code(&out, 0, "docker run -p")?;
    let result = (|| -> Result<()> {
        let addr = d.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web1"]);
        ensure!(
            addr.stdout.starts_with("172.31.254."),
            "container address {:?}",
            addr.stdout
        );
        let mut body = String::new();
        for _ in 0..50 {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                body.clear();
                let _ = c.read_to_string(&mut body);
                if body.contains("hello-from-stockade") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no answer through the published port {port}: {body:?}")
    })();
    let _ = d.docker(&["rm", "-f", "web1"]);
    result
}

fn no_stray_shims(s: &Suite) -> Result<()> {
    for _ in 0..50 {
        if s.ctd.shims().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(s.ctd.shims().is_empty(), "stray shims: {:?}", s.ctd.shims());
    let left: Vec<_> = std::fs::read_dir(&s.ctd.stockade_state)
        .map(|r| {
            r.flatten()
                .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    ensure!(left.is_empty(), "state dirs left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let rootfs: Vec<_> = mounts
        .lines()
        .filter(|l| l.contains("io.containerd.runtime.v2.task") && l.contains("/rootfs"))
        .collect();
    ensure!(rootfs.is_empty(), "rootfs mounts left: {rootfs:?}");
    let sockets: Vec<_> = shim_sockets()
        .into_iter()
        .filter(|p| !s.sockets_before.contains(p))
        .collect();
    ensure!(sockets.is_empty(), "shim sockets left: {sockets:?}");
    Ok(())
}

/// The escape suite (see `stockade_integration::escape`) through ctr: Stockade's
/// default, containerd's default and a localhost profile, each for the init and an
/// exec; an exec asking the shim for CAP_SYS_ADMIN is refused.
fn escape_ctr(s: &Suite) -> Result<()> {
    escape::ctr_escape(&s.ctd, "ct")?;
    for name in ["stockade-default", "containerd-default", "localhost-chmod"] {
        expect_clean(s, NAMESPACE, &format!("esc-ct-{name}"))?;
    }
    Ok(())
}

/// The escape suite through Docker: its default profile and a localhost one, the init
/// and `docker exec`; `docker exec --privileged` refused.
fn escape_docker(s: &Suite) -> Result<()> {
    escape::docker_escape(&s.ctd, docker_of(s)?, "ct")
}

/// `ctr run --privileged`: refused, the error names the capabilities that give the
/// host away and the setting that would allow them; nothing is left behind. So is a
/// seccomp profile asking for user notification.
fn privileged_and_notify_refused(s: &Suite) -> Result<()> {
    let wants = [
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "[container] allow_privileged",
    ];
    escape::ctr_privileged_refused(&s.ctd, "priv1", &wants)?;
    expect_clean(s, NAMESPACE, "priv1")?;
    escape::ctr_notify_profile_refused(&s.ctd, "notify1")?;
    expect_clean(s, NAMESPACE, "notify1")
}

type Case = stockade_integration::Case<Suite>;

/// Every process's command line is readable by every local user: a container's spec
/// (its environment, often with secrets) must never be on one. While a container is
/// created, started and exec'd into, every process's arguments are watched for a value
/// only its environment holds (`ctr`'s own, the user's command, are not the runtime's),
/// and the libcontainer helper's for any JSON (its requests travel in root-only files).
fn specs_never_reach_a_command_line(s: &Suite) -> Result<()> {
    use stockade_runtime::linux::helper::HELPER_ARG;
    let mark = format!("stk-secret-{}", std::process::id());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, mark) = (stop.clone(), mark.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut scans = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                scans += 1;
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    let json_to_helper = text.contains(HELPER_ARG) && text.contains('{');
                    let ctr = stockade_integration::daemons().ctr.display().to_string();
                    if json_to_helper || (text.contains(&mark) && !text.starts_with(&ctr)) {
                        seen.insert(text);
                    }
                }
            }
            (seen, scans)
        })
    };
    let env = format!("STK_TOKEN={mark}");
    let run_out = s.ctd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--env",
        &env,
        IMAGE,
        "argv1",
        "sleep",
        "100",
    ]);
    let exec = s
        .ctd
        .ctr(&["task", "exec", "--exec-id", "x1", "argv1", "true"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, scans) = watcher.join().expect("watcher");
    s.ctd.remove("argv1");
    ensure!(run_out.ok() && exec.ok(), "run: {run_out:?} exec: {exec:?}");
    ensure!(scans > 10, "the watcher only scanned {scans} times");
    ensure!(seen.is_empty(), "a spec reached a command line: {seen:?}");
    Ok(())
}

fn main() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED e2e: {why}");
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    let setup = stockade_integration::start_suite("auto", "").map(|(ctd, docker)| Suite {
        ctd,
        docker,
        sockets_before: shim_sockets(),
    });
    let suite = match setup {
        Ok(s) => s,
        Err(e) => {
            println!("e2e setup failed: {e:#}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let cases: &[Case] = &[
        ("docker_options_users_use", docker_options_users_use),
        ("time_namespace", time_namespace),
        ("docker_image_store", docker_image_store),
        ("ctr_run_cni", ctr_run_cni),
        (
            "shim_start_speaks_each_daemons_protocol",
            shim_start_speaks_each_daemons_protocol,
        ),
        ("ctr_output_and_exit_codes", ctr_output_and_exit_codes),
        ("ctr_large_output_is_whole", ctr_large_output_is_whole),
        ("ctr_stdin", ctr_stdin),
        ("ctr_tty", ctr_tty),
        ("ctr_exec_ps_metrics_pause", ctr_exec_ps_metrics_pause),
        ("ctr_kill_reports_137", ctr_kill_reports_137),
        ("hardening_seen_from_inside", hardening_seen_from_inside),
        ("escape_ctr", escape_ctr),
        ("escape_docker", escape_docker),
        (
            "privileged_and_notify_refused",
            privileged_and_notify_refused,
        ),
        ("bad_input_fails_cleanly", bad_input_fails_cleanly),
        (
            "specs_never_reach_a_command_line",
            specs_never_reach_a_command_line,
        ),
        (
            "malicious_image_symlinks_fail_cleanly",
            malicious_image_symlinks_fail_cleanly,
        ),
        (
            "backend_selection_fails_closed",
            backend_selection_fails_closed,
        ),
        ("docker_run_exec_stop_stats", docker_run_exec_stop_stats),
        (
            "events_are_ordered_and_oom_reported",
            events_are_ordered_and_oom_reported,
        ),
        ("shim_killed_is_cleaned_up", shim_killed_is_cleaned_up),
        (
            "docker_capabilities_are_only_those_granted",
            docker_capabilities_are_only_those_granted,
        ),
        ("docker_bad_input", docker_bad_input),
        ("docker_update_resources", docker_update_resources),
        (
            "docker_bridge_network_and_published_port",
            docker_bridge_network_and_published_port,
        ),
        ("no_stray_shims", no_stray_shims),
    ];
    let (passed, failed) = stockade_integration::run_cases(&suite, cases, |s| s.ctd.log());
    drop(suite);
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// The cgroup a `shim_cgroup` option names, relative to `/sys/fs/cgroup` (the v2
/// hierarchy: the root on a v2 host, `unified/` beside v1), made for the test.
struct ShimCgroup {
    relative: String,
    dir: std::path::PathBuf,
}

impl ShimCgroup {
    fn new(name: &str) -> Result<Option<ShimCgroup>> {
        let base = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            ""
        } else if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            "unified/"
        } else {
            return Ok(None);
        };
        let relative = format!("{base}{name}");
        let dir = std::path::Path::new("/sys/fs/cgroup").join(&relative);
        std::fs::create_dir_all(&dir)?;
        Ok(Some(ShimCgroup { relative, dir }))
    }

    fn holds(&self, pid: u32) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == pid.to_string())
    }
}

impl Drop for ShimCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `start` as containerd 2.3 (BootstrapParams on stdin, a BootstrapResult read back,
/// options as an extension, the daemon's socket dir), 2.0–2.2 and 1.7 (options as a
/// bare Any, or none; a plain answer) run it: each daemon reads the answer it
/// expects, the server answers at that address (only root may dial it), the options
/// reach it (its shim_cgroup), nothing goes to stderr, and the server goes with its
/// socket when asked to shut down.
fn shim_start_speaks_each_daemons_protocol(s: &Suite) -> Result<()> {
    use containerd_shim_protos::api::{ConnectRequest, ShutdownRequest};
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim_async::{Client, TaskClient};
    use containerd_shim_protos::ttrpc::context;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use stockade_integration::bootstrap::{
        Daemon, bootstrap_params, drive_start, runc_options, socket_path,
    };

    let cgroup = ShimCgroup::new("stockade-bootstrap-test")?;
    let dir = tempfile::tempdir()?;
    let socket_dir = dir.path().join("sockets");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cases: [(Daemon, &str, bool, Option<&std::path::Path>); 5] = [
        (Daemon::V2_3, "boot23", true, None),
        (Daemon::V2_3, "boot23s", false, Some(&socket_dir)),
        (Daemon::V2_2, "boot22", true, None),
        (Daemon::V1_7, "boot17", true, None),
        (Daemon::V1_7, "boot17n", false, None),
    ];
    for (daemon, id, with_options, sockets) in cases {
        let bundle = dir.path().join(id);
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), "{}")?;
        // containerd makes the log fifo and reads it before it runs `start`.
        nix::unistd::mkfifo(&bundle.join("log"), nix::sys::stat::Mode::S_IRWXU)?;
        let _log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"))?;
        let options = match (&cgroup, with_options) {
            (Some(cg), true) => Some(runc_options(&cg.relative)),
            _ => None,
        };
        let stdin = match daemon {
            Daemon::V2_3 => {
                bootstrap_params(id, NAMESPACE, &s.ctd.socket, options.as_ref(), sockets)
            }
            Daemon::V2_2 | Daemon::V1_7 => options
                .as_ref()
                .map(|a| a.write_to_bytes())
                .transpose()?
                .unwrap_or_default(),
        };
        let answer = drive_start(daemon, &bundle, &s.ctd.socket, NAMESPACE, id, &stdin)
            .map_err(|e| anyhow::anyhow!("{daemon:?} ({id}): {e:#}"))?;
        ensure!(
            answer.bootstrap_result == (daemon == Daemon::V2_3),
            "{id}: {daemon:?} got {answer:?}"
        );
        let path = socket_path(&answer.address);
        if let Some(d) = sockets {
            ensure!(
                path.parent() == Some(d),
                "{id}: the socket is not in the daemon's socket dir: {path:?}"
            );
        }
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{id}: the shim socket's mode is {mode:o}");
        let shim_pid = rt.block_on(async {
            let client = TaskClient::new(Client::connect(&answer.address).await?);
            let ctx = || context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
            let req = ConnectRequest {
                id: id.into(),
                ..Default::default()
            };
            let pid = client.connect(ctx(), &req).await?.shim_pid;
            let req = ShutdownRequest {
                id: id.into(),
                ..Default::default()
            };
            if let (Some(cg), true) = (&cgroup, with_options) {
                ensure!(cg.holds(pid), "{id}: the shim is not in its shim_cgroup");
            }
            client.shutdown(ctx(), &req).await?;
            Ok::<_, anyhow::Error>(pid)
        })?;
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{shim_pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ensure!(
            !std::path::Path::new(&format!("/proc/{shim_pid}")).exists(),
            "{id}: the shim server did not exit on shutdown"
        );
        ensure!(!path.exists(), "{id}: the shim left its socket {path:?}");
    }
    Ok(())
}

/// `docker run`'s most used options and Docker's commands, each for its effect
/// (`stockade_integration::docker_options`).
fn docker_options_users_use(s: &Suite) -> Result<()> {
    use stockade_integration::docker_options::{Backend, check_all};
    check_all(docker_of(s)?, Backend::Container)?;
    ensure!(s.ctd.vm_leaks().is_empty(), "VM state left");
    Ok(())
}

/// A spec with a private time namespace and clock offsets (Docker 29.5 adds one):
/// created, and its offsets seen inside (`stockade_integration::timens`).
fn time_namespace(s: &Suite) -> Result<()> {
    stockade_integration::timens::check(&s.ctd, "timens1")?;
    ensure!(
        s.ctd.leaks(NAMESPACE, "timens1").is_empty(),
        "timens1 left things behind"
    );
    Ok(())
}

/// Docker with containerd's image store (Docker 29's default) beside the classic one.
fn docker_image_store(s: &Suite) -> Result<()> {
    stockade_integration::docker_options::image_store(
        &s.ctd,
        &s.ctd.dir.path().join("busybox.tar"),
    )?;
    ensure!(s.ctd.vm_leaks().is_empty(), "VM state left");
    Ok(())
}

/// `ctr run --cni` (nerdctl's path): CNI configures the namespace of the task's pid
/// between create and start; the container has the address CNI gave.
fn ctr_run_cni(s: &Suite) -> Result<()> {
    stockade_integration::ctr_cni::check(&s.ctd, "cni1")?;
    ensure!(
        s.ctd.leaks(NAMESPACE, "cni1").is_empty(),
        "cni1 left things behind"
    );
    Ok(())
}
