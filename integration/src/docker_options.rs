//! The `docker run` options and Docker commands users use most, through Stockade, in
//! either backend: each checked from inside the container (or from Docker) for the
//! effect it promises, not only for being accepted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::command::{Out, expect_code};
use crate::docker::TestDocker;
use crate::{IMAGE, RUNTIME};

/// Which backend runs the containers: what can be seen from inside differs (the VM's
/// guest has cgroup v2 mounted in each container; the container backend on a v1 host
/// does not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Container,
    Vm,
}

fn run_rm(d: &TestDocker, opts: &[&str], cmd: &[&str]) -> Out {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    args.extend_from_slice(opts);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    d.docker(&args)
}

fn detached(d: &TestDocker, opts: &[&str], cmd: &[&str]) -> Result<String> {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend_from_slice(opts);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    let out = d.docker(&args);
    expect_code(&out, 0, &format!("docker run -d {opts:?}"))?;
    Ok(out.stdout.trim().to_string())
}

fn inspect(d: &TestDocker, id: &str, format: &str) -> String {
    d.docker(&["inspect", "-f", format, id])
        .stdout
        .trim()
        .to_string()
}

/// Every option and command in turn; containers are removed whatever happens.
pub fn check_all(d: &TestDocker, backend: Backend) -> Result<()> {
    let mut made = Vec::new();
    let result = check(d, backend, &mut made);
    for id in made {
        let _ = d.docker(&["rm", "-f", &id]);
    }
    result
}

fn check(d: &TestDocker, backend: Backend, made: &mut Vec<String>) -> Result<()> {
    // -v: a host directory, read and written.
    let vol = tempfile::tempdir()?;
    std::fs::write(vol.path().join("in"), "from-host\n")?;
    let bind = format!("{}:/data", vol.path().display());
    let out = run_rm(
        d,
        &["-v", &bind],
        &[
            "sh",
            "-c",
            "cat /data/in && echo from-container > /data/out",
        ],
    );
    expect_code(&out, 0, "-v")?;
    ensure!(out.stdout == "from-host\n", "-v read: {out:?}");
    ensure!(
        std::fs::read_to_string(vol.path().join("out"))? == "from-container\n",
        "-v write did not reach the host"
    );

    // --read-only with --tmpfs: the root refuses writes, the tmpfs takes them.
    let out = run_rm(
        d,
        &["--read-only", "--tmpfs", "/scratch"],
        &[
            "sh",
            "-c",
            "touch /x 2>/dev/null && echo root-rw || echo root-ro; \
             touch /scratch/y && echo tmpfs-rw; grep ' /scratch ' /proc/mounts",
        ],
    );
    expect_code(&out, 0, "--read-only --tmpfs")?;
    ensure!(
        out.stdout.contains("root-ro")
            && out.stdout.contains("tmpfs-rw")
            && out.stdout.contains("tmpfs"),
        "--read-only --tmpfs: {out:?}"
    );

    // -u: the uid and gid asked for.
    let out = run_rm(d, &["-u", "1234:5678"], &["id"]);
    expect_code(&out, 0, "-u")?;
    ensure!(
        out.stdout.contains("uid=1234") && out.stdout.contains("gid=5678"),
        "-u: {out:?}"
    );

    // --cap-drop: NET_RAW (bit 13) leaves the effective set, which has it by default.
    let cap_eff = |opts: &[&str]| -> Result<u64> {
        let out = run_rm(d, opts, &["grep", "CapEff", "/proc/self/status"]);
        expect_code(&out, 0, "CapEff")?;
        let hex = out.stdout.split_whitespace().nth(1).context("no CapEff")?;
        Ok(u64::from_str_radix(hex, 16)?)
    };
    ensure!(
        cap_eff(&[])? & (1 << 13) != 0,
        "NET_RAW is not a default capability"
    );
    ensure!(
        cap_eff(&["--cap-drop", "NET_RAW"])? & (1 << 13) == 0,
        "--cap-drop NET_RAW left it effective"
    );

    // --memory: more than the limit is OOM-killed (tail buffers a line without end).
    let out = run_rm(
        d,
        &["--memory", "64m", "--memory-swap", "64m"],
        &["sh", "-c", "head -c 200000000 /dev/zero | tail > /dev/null"],
    );
    ensure!(out.code == 137, "--memory 64m: 200 MB were held: {out:?}");

    // --cpus and --pids-limit: the guest's cgroup v2 shows them in the VM; the
    // container backend's are checked by Docker's own view of the running container.
    let id = detached(
        d,
        &["--cpus", "0.5", "--pids-limit", "50"],
        &["sleep", "300"],
    )?;
    made.push(id.clone());
    if backend == Backend::Vm {
        let out = d.docker(&[
            "exec",
            &id,
            "cat",
            "/sys/fs/cgroup/cpu.max",
            "/sys/fs/cgroup/pids.max",
        ]);
        expect_code(&out, 0, "cgroup files in the guest")?;
        ensure!(
            out.stdout.contains("50000 100000") && out.stdout.contains("50"),
            "--cpus 0.5 --pids-limit 50 inside the guest: {out:?}"
        );
    }
    // --pids-limit holds: forks past it fail (a container of its own: the limit stays
    // spent while the sleepers live).
    let out = run_rm(
        d,
        &["--pids-limit", "20"],
        &[
            "sh",
            "-c",
            "for i in $(seq 40); do sleep 1 & done 2>&1; wait",
        ],
    );
    ensure!(
        format!("{}{}", out.stdout, out.stderr).contains("fork"),
        "--pids-limit 20: 40 processes forked: {out:?}"
    );
    ensure!(
        inspect(d, &id, "{{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}") == "500000000 50",
        "docker's view of the limits"
    );

    // docker top, pause, unpause on the same running container.
    let top = d.docker(&["top", &id]);
    expect_code(&top, 0, "docker top")?;
    if backend == Backend::Container {
        ensure!(top.stdout.contains("sleep 300"), "docker top: {top:?}");
    }
    expect_code(&d.docker(&["pause", &id]), 0, "docker pause")?;
    ensure!(inspect(d, &id, "{{.State.Paused}}") == "true", "not paused");
    expect_code(&d.docker(&["unpause", &id]), 0, "docker unpause")?;
    ensure!(
        inspect(d, &id, "{{.State.Paused}}") == "false",
        "still paused"
    );

    // docker cp both ways into the running container.
    let src = vol.path().join("copied");
    std::fs::write(&src, "copied-in\n")?;
    expect_code(
        &d.docker(&[
            "cp",
            &src.display().to_string(),
            &format!("{id}:/tmp/copied"),
        ]),
        0,
        "docker cp in",
    )?;
    let out = d.docker(&["exec", &id, "cat", "/tmp/copied"]);
    ensure!(
        out.stdout == "copied-in\n",
        "docker cp in, read inside: {out:?}"
    );
    expect_code(
        &d.docker(&["exec", &id, "sh", "-c", "echo made-inside > /tmp/made"]),
        0,
        "write inside",
    )?;
    let back = vol.path().join("back");
    expect_code(
        &d.docker(&[
            "cp",
            &format!("{id}:/tmp/made"),
            &back.display().to_string(),
        ]),
        0,
        "docker cp out",
    )?;
    ensure!(
        std::fs::read_to_string(&back)? == "made-inside\n",
        "docker cp out"
    );

    // --init: Docker's init (tini) is PID 1 and the command its child.
    let out = run_rm(
        d,
        &["--init"],
        &["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"],
    );
    expect_code(&out, 0, "--init")?;
    ensure!(
        out.stdout.contains("docker-init"),
        "--init: PID 1 is {out:?}"
    );

    // --network none: no address but loopback's.
    let out = run_rm(
        d,
        &["--network", "none"],
        &["ip", "-4", "-o", "addr", "show"],
    );
    expect_code(&out, 0, "--network none")?;
    let named: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    ensure!(named == ["lo"], "--network none: {out:?}");

    // --ulimit: both limits.
    let out = run_rm(
        d,
        &["--ulimit", "nofile=100:200"],
        &["sh", "-c", "ulimit -n; ulimit -Hn"],
    );
    expect_code(&out, 0, "--ulimit")?;
    ensure!(
        out.stdout == "100\n200\n",
        "--ulimit nofile=100:200: {out:?}"
    );

    // docker logs -f follows until the container ends; docker wait gives its code.
    let id = detached(
        d,
        &[],
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; sleep 0.3; done; exit 7",
        ],
    )?;
    made.push(id.clone());
    let logs = d.docker(&["logs", "-f", &id]);
    expect_code(&logs, 0, "docker logs -f")?;
    ensure!(
        logs.stdout == "line1\nline2\nline3\n",
        "docker logs -f: {logs:?}"
    );
    let wait = d.docker(&["wait", &id]);
    ensure!(wait.stdout.trim() == "7", "docker wait: {wait:?}");

    // --restart: the daemon restarts a failing container, each time a new task.
    let id = detached(d, &["--restart", "on-failure:2"], &["sh", "-c", "exit 3"])?;
    made.push(id.clone());
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let state = inspect(d, &id, "{{.RestartCount}} {{.State.Status}}");
        if state == "2 exited" {
            break;
        }
        if Instant::now() > end {
            bail!("--restart on-failure:2: {state}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(
        inspect(d, &id, "{{.State.ExitCode}}") == "3",
        "restart's exit code"
    );
    Ok(())
}

/// A second dockerd on the same containerd with containerd's image store (Docker 29's
/// default; `features.containerd-snapshotter`): the image loaded into containerd's
/// store, a container run and exec'd through Stockade, its rootfs coming from
/// containerd's snapshotter as mounts in CreateTask.
pub fn image_store(ctd: &crate::TestContainerd, image_tar: &std::path::Path) -> Result<()> {
    let d = TestDocker::start_as(ctd, crate::docker::Flavor::ImageStore)?;
    let info = d.docker(&["info", "-f", "{{.Driver}}"]);
    ensure!(
        info.stdout.contains("overlayfs") || info.stdout.contains("snapshotter"),
        "not containerd's image store: {info:?}"
    );
    expect_code(
        &d.docker(&["load", "-i", &image_tar.display().to_string()]),
        0,
        "docker load into containerd's store",
    )?;
    let out = run_rm(
        &d,
        &["--network", "none"],
        &["sh", "-c", "echo from-the-store"],
    );
    expect_code(&out, 0, "docker run from containerd's store")?;
    ensure!(out.stdout == "from-the-store\n", "{out:?}");
    let id = detached(&d, &["--network", "none"], &["sleep", "300"])?;
    let out = d.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo in-exec > /tmp/x && cat /tmp/x",
    ]);
    let _ = d.docker(&["rm", "-f", &id]);
    ensure!(out.stdout == "in-exec\n", "docker exec: {out:?}");
    Ok(())
}
