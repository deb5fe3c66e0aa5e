//! The escape suite: what a hostile process inside a container tries, run the same way
//! in the init and in every kind of exec (ctr, Docker, CRI), in both backends. The
//! probes are `image/probe.c` in the test image; the `*32` ones enter the kernel
//! through the i386 ABI (`int $0x80`) from a 64-bit process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::{IMAGE, NAMESPACE, RUNTIME, TestContainerd, TestDocker};

const EPERM: &[&str] = &["denied EPERM"];

/// Each probe and the answers a hardened container may give. Seccomp answers EPERM
/// before the kernel looks at the request, so EPERM is asked for even where the kernel
/// itself would refuse with another errno (AF_ALG on a host without the module).
pub const PROBES: &[(&str, &[&str])] = &[
    ("vsock", EPERM),
    ("alg", EPERM),
    // socketcall(SYS_SOCKET, …): the family is in memory seccomp cannot read, so the
    // i386 socketcall's socket() is denied whatever the family.
    ("vsock32", EPERM),
    ("alg32", EPERM),
    ("inet32", EPERM),
    ("vsock32-direct", EPERM),
    ("userns", EPERM),
    ("netns", EPERM),
    ("clone-userns", EPERM),
    // ENOSYS from Stockade's guard; a profile that names clone3 itself (containerd's,
    // Docker's) may answer first with its own errno.
    ("clone3-userns", &["denied ENOSYS", "denied EPERM"]),
    ("userns32", EPERM),
    ("io_uring", EPERM),
    ("bpf", EPERM),
    ("keyctl", EPERM),
    ("userfaultfd", EPERM),
    ("perf", EPERM),
    // Controls: the probe and the i386 ABI work, only what is denied fails.
    ("inet", &["allowed"]),
    ("inet32-direct", &["allowed"]),
];

/// A localhost profile (OCI JSON, also Docker's format) that allows everything but
/// chmod: Stockade's guard must still deny the rest, and the chmod deny must hold in
/// every exec.
pub const CHMOD_PROFILE: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],"syscalls":[{"names":["chmod","fchmod","fchmodat","fchmodat2"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;

/// The shell script a container runs: its process status, each probe, and chmod. A
/// probe that prints nothing is run once more, by the same shell and so
/// under the same filters, and the silent run is reported on a `retry` line ([`check`]
/// shows it). Two CI runs saw one probe of a VM exec print nothing while its exit
/// status said it had been denied; the cause is not known. A probe silent twice is
/// shown with its stderr and exit status, and fails.
pub fn script() -> String {
    let names: Vec<&str> = PROBES.iter().map(|(n, _)| *n).collect();
    format!(
        "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; \
         for t in {}; do \
           out=$(probe $t 2>/tmp/probe.err); rc=$?; \
           if [ -z \"$out\" ]; then \
             echo \"retry $t: no output, exit $rc: $(cat /tmp/probe.err)\"; \
             out=$(probe $t 2>/tmp/probe.err); rc=$?; \
           fi; \
           [ -n \"$out\" ] || out=\"no output, exit $rc: $(cat /tmp/probe.err)\"; \
           echo \"$t: $out\"; \
         done; \
         touch /tmp/escape-chmod; \
         if chmod 600 /tmp/escape-chmod 2>/dev/null; then echo 'chmod: allowed'; else echo 'chmod: denied'; fi",
        names.join(" ")
    )
}

/// A container init that records [`script`]'s output in `/tmp/init.out`, then sleeps.
pub fn init_args() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "({}) >/tmp/init.tmp 2>&1; mv /tmp/init.tmp /tmp/init.out; exec sleep 100000",
            script()
        ),
    ]
}

/// What a process of the container must show.
#[derive(Debug, Clone)]
pub struct Expect {
    pub no_new_privs: bool,
    /// `/proc/self/status`'s CapEff: the spec's effective set (see [`spec_cap_eff`]).
    pub cap_eff: String,
    pub chmod_denied: bool,
}

/// Check one process's [`script`] output; `what` names it in the error, which lists
/// every difference at once.
pub fn check(what: &str, out: &str, e: &Expect) -> Result<()> {
    if std::env::var_os("STOCKADE_ESCAPE_SHOW").is_some() {
        println!("--- {what}\n{out}");
    }
    for l in out.lines().filter(|l| l.starts_with("retry ")) {
        println!("    {what}: a silent probe, run again: {l}");
    }
    let mut wrong = Vec::new();
    let nnp = format!("NoNewPrivs:\t{}", u8::from(e.no_new_privs));
    let cap = format!("CapEff:\t{}", e.cap_eff);
    for want in ["Seccomp:\t2", nnp.as_str(), cap.as_str()] {
        if !out.lines().any(|l| l == want) {
            wrong.push(format!("want {want:?}"));
        }
    }
    let chmod = if e.chmod_denied { "denied" } else { "allowed" };
    let probes = PROBES
        .iter()
        .map(|(n, w)| (*n, w.to_vec()))
        .chain([("chmod", vec![chmod])]);
    for (name, answers) in probes {
        let got = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("(no answer)");
        if !answers.contains(&got) {
            wrong.push(format!("{name}: {got} (want {})", answers.join(" or ")));
        }
    }
    if !wrong.is_empty() {
        bail!("{what}:\n  {}\noutput:\n{out}", wrong.join("\n  "));
    }
    Ok(())
}

/// Linux capability numbers, in order.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability containerd 1.7 knows (the set `--privileged` asks for).
pub fn all_capabilities() -> impl Iterator<Item = &'static str> {
    CAPABILITIES.iter().copied()
}

/// `/proc/<pid>/status`'s hex form of a set of `CAP_*` names.
pub fn cap_mask<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<String> {
    let mut mask = 0u64;
    for n in names {
        let bare = n.strip_prefix("CAP_").unwrap_or(n);
        let bit = CAPABILITIES
            .iter()
            .position(|c| *c == bare)
            .with_context(|| format!("unknown capability {n}"))?;
        mask |= 1 << bit;
    }
    Ok(format!("{mask:016x}"))
}

/// containerd's state dir for one task: its bundle and its shim's `address`.
fn task_dir(ctd: &TestContainerd, namespace: &str, id: &str) -> std::path::PathBuf {
    ctd.state_dir
        .join("io.containerd.runtime.v2.task")
        .join(namespace)
        .join(id)
}

/// The task's OCI spec, as containerd wrote it.
fn bundle_spec(ctd: &TestContainerd, namespace: &str, id: &str) -> Result<serde_json::Value> {
    let path = task_dir(ctd, namespace, id).join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

/// The effective set the container's bundle (as containerd wrote it) asks for.
pub fn spec_cap_eff(ctd: &TestContainerd, namespace: &str, id: &str) -> Result<String> {
    let spec = bundle_spec(ctd, namespace, id)?;
    let names = spec["process"]["capabilities"]["effective"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
        .unwrap_or_default();
    cap_mask(names)
}

/// Write [`CHMOD_PROFILE`] into `dir`; returns its path.
pub fn chmod_profile(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("chmod-denied.json");
    std::fs::write(&path, CHMOD_PROFILE)?;
    Ok(path)
}

/// Ask the container's shim for an exec directly, as containerd would, with a process
/// spec of the caller's choosing: what a client that bypasses ctr's and Docker's flags
/// can send. `Ok(Err(message))` is the shim's refusal. An exec it accepts is deleted
/// again without being started.
pub fn shim_exec(
    ctd: &TestContainerd,
    namespace: &str,
    id: &str,
    exec_id: &str,
    process: &serde_json::Value,
) -> Result<Result<(), String>> {
    use containerd_shim_protos::ttrpc::context;
    let address = std::fs::read_to_string(task_dir(ctd, namespace, id).join("address"))?;
    let client =
        containerd_shim_protos::Client::connect(address.trim()).context("connect to the shim")?;
    let task = containerd_shim_protos::TaskClient::new(client);
    let ctx = || context::with_timeout(30_000_000_000);
    let req = api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(process)?,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    match task.exec(ctx(), &req) {
        Ok(_) => {
            let del = api::DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            };
            task.delete(ctx(), &del)
                .context("delete the accepted exec")?;
            Ok(Ok(()))
        }
        Err(containerd_shim_protos::ttrpc::Error::RpcStatus(s)) => {
            Ok(Err(format!("{:?}: {}", s.code(), s.message())))
        }
        Err(e) => Err(e).context("exec through the shim"),
    }
}

/// The container's own process spec (from its bundle) with `add` joined to every
/// capability set: an exec asking for more than the container has.
pub fn process_with_caps(
    ctd: &TestContainerd,
    namespace: &str,
    id: &str,
    add: &[&str],
) -> Result<serde_json::Value> {
    let spec = bundle_spec(ctd, namespace, id)?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(["true"]);
    process["terminal"] = serde_json::json!(false);
    if let Some(sets) = process["capabilities"].as_object_mut() {
        for (_, set) in sets.iter_mut() {
            if let Some(list) = set.as_array_mut() {
                for cap in add {
                    list.push(serde_json::json!(cap));
                }
            }
        }
    }
    Ok(process)
}

/// `read()` retried until it succeeds or `timeout` passes: a container init's
/// `/tmp/init.out` appears once its probes are done (seconds under TCG).
fn wait_output(timeout: Duration, mut read: impl FnMut(usize) -> crate::Out) -> Result<String> {
    let start = Instant::now();
    for attempt in 0.. {
        let out = read(attempt);
        if out.ok() {
            return Ok(out.stdout);
        }
        if start.elapsed() > timeout {
            bail!("no init output after {timeout:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    unreachable!()
}

const INIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The ctr half, on `ctd` (either backend): for each profile, the container's init and
/// a `ctr task exec` run [`script`]. The profiles: none (Stockade's default),
/// `--seccomp` (containerd's default, the same as Docker's) and `--seccomp-profile`
/// (a localhost profile that only denies chmod). With the default profile, an exec
/// asking the shim for CAP_SYS_ADMIN is refused and names it.
pub fn ctr_escape(ctd: &TestContainerd, tag: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let profile = chmod_profile(dir.path())?;
    let profile = profile.display().to_string();
    let cases: [(&str, Vec<&str>, bool); 3] = [
        ("stockade-default", vec![], false),
        ("containerd-default", vec!["--seccomp"], false),
        (
            "localhost-chmod",
            vec!["--seccomp", "--seccomp-profile", &profile],
            true,
        ),
    ];
    for (name, flags, chmod_denied) in cases {
        let id = format!("esc-{tag}-{name}");
        let init = init_args();
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend(flags);
        args.extend([IMAGE, id.as_str()]);
        args.extend(init.iter().map(String::as_str));
        let out = ctd.ctr(&args);
        if !out.ok() {
            bail!("ctr run {id}: {}", out.stderr);
        }
        let result = (|| -> Result<()> {
            let init_out = wait_output(INIT_TIMEOUT, |n| {
                let exec_id = format!("read{n}");
                ctd.ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    &id,
                    "cat",
                    "/tmp/init.out",
                ])
            })?;
            let expect = Expect {
                no_new_privs: true,
                cap_eff: spec_cap_eff(ctd, NAMESPACE, &id)?,
                chmod_denied,
            };
            check(&format!("{name}: the init"), &init_out, &expect)?;
            let out = ctd.ctr(&[
                "task",
                "exec",
                "--exec-id",
                "probe",
                &id,
                "sh",
                "-c",
                &script(),
            ]);
            check(&format!("{name}: ctr task exec"), &out.stdout, &expect)?;
            if name == "stockade-default" {
                let more = process_with_caps(ctd, NAMESPACE, &id, &["CAP_SYS_ADMIN"])?;
                match shim_exec(ctd, NAMESPACE, &id, "admin", &more)? {
                    Ok(()) => bail!("an exec asking for CAP_SYS_ADMIN was accepted"),
                    Err(e) if e.contains("PERMISSION_DENIED") && e.contains("CAP_SYS_ADMIN") => {}
                    Err(e) => bail!("exec with CAP_SYS_ADMIN refused unclearly: {e}"),
                }
                // The same request within the container's capabilities is accepted.
                let same = process_with_caps(ctd, NAMESPACE, &id, &[])?;
                if let Err(e) = shim_exec(ctd, NAMESPACE, &id, "same", &same)? {
                    bail!("an exec with the container's own capabilities was refused: {e}");
                }
            }
            Ok(())
        })();
        ctd.remove(&id);
        result?;
    }
    Ok(())
}

/// The Docker half: Docker's default profile and a localhost profile (`--security-opt
/// seccomp=`), each for the init and a `docker exec`; `docker exec --privileged` is
/// refused and the error names CAP_SYS_ADMIN.
pub fn docker_escape(ctd: &TestContainerd, d: &TestDocker, tag: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let profile = format!("seccomp={}", chmod_profile(dir.path())?.display());
    let cases: [(&str, Vec<&str>, bool); 2] = [
        ("docker-default", vec![], false),
        ("docker-localhost", vec!["--security-opt", &profile], true),
    ];
    for (name, opts, chmod_denied) in cases {
        let cname = format!("esc-{tag}-{name}");
        let first = docker_escape_case(ctd, d, &cname, name, &opts, chmod_denied);
        // Twice in about 30 CI runs (VM mode, both daemon pairs) the container's init, a
        // busybox sh running the probes, stopped before writing its report; the one run
        // that showed why: SIGSEGV (exit 139). The cause is not known (README, Known
        // gaps). A signal death other than a kill is shown and the case run once more;
        // it fails if that happens again.
        let result = match first {
            Err((e, Some(code))) if code > 128 && code != 137 => {
                println!(
                    "    {name}: the container's init died by signal {}; run once more. {e:#}",
                    code - 128
                );
                docker_escape_case(ctd, d, &cname, name, &opts, chmod_denied)
            }
            other => other,
        };
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// One case of [`docker_escape`]; on failure, the error and the container's exit code
/// if it had exited.
fn docker_escape_case(
    ctd: &TestContainerd,
    d: &TestDocker,
    cname: &str,
    name: &str,
    opts: &[&str],
    chmod_denied: bool,
) -> std::result::Result<(), (anyhow::Error, Option<i32>)> {
    let init = init_args();
    let mut args = vec!["run", "-d", "--name", cname, "--runtime", RUNTIME];
    args.extend(opts);
    args.push(IMAGE);
    args.extend(init.iter().map(String::as_str));
    let out = d.docker(&args);
    if !out.ok() {
        let _ = d.docker(&["rm", "-f", cname]);
        return Err((anyhow::anyhow!("docker run {cname}: {}", out.stderr), None));
    }
    let result = (|| -> Result<()> {
        let init_out = wait_output(INIT_TIMEOUT, |_| {
            d.docker(&["exec", cname, "cat", "/tmp/init.out"])
        })?;
        let id = d.docker(&["inspect", "-f", "{{.Id}}", cname]).stdout;
        let expect = Expect {
            no_new_privs: true,
            cap_eff: spec_cap_eff(ctd, "moby", id.trim())?,
            chmod_denied,
        };
        check(&format!("{name}: the init"), &init_out, &expect)?;
        let out = d.docker(&["exec", cname, "sh", "-c", &script()]);
        check(&format!("{name}: docker exec"), &out.stdout, &expect)?;
        // Docker prints an exec's start error on stdout.
        let out = d.docker(&["exec", "--privileged", cname, "true"]);
        let said = format!("{}{}", out.stdout, out.stderr);
        if out.ok() || !said.contains("CAP_SYS_ADMIN") || !said.contains("refused") {
            bail!("docker exec --privileged not refused clearly: {out:?}");
        }
        Ok(())
    })();
    let result = result.map_err(|e| {
        let (said, code) = docker_state(d, cname);
        (e.context(said), code)
    });
    let _ = d.docker(&["rm", "-f", cname]);
    result
}

/// What Docker knows of container `name`, for a failure's message: its state (exit
/// code, error, OOM), the last lines of its output, and dockerd's log lines naming it;
/// and its exit code if it is no longer running.
fn docker_state(d: &TestDocker, name: &str) -> (String, Option<i32>) {
    let state = d.docker(&["inspect", "-f", "{{json .State}}", name]);
    let code = serde_json::from_str::<serde_json::Value>(&state.stdout)
        .ok()
        .filter(|s| s["Running"] == serde_json::Value::Bool(false))
        .and_then(|s| s["ExitCode"].as_i64())
        .and_then(|c| i32::try_from(c).ok());
    let id = d.docker(&["inspect", "-f", "{{.Id}}", name]).stdout;
    let logs = d.docker(&["logs", "--tail", "20", name]);
    let daemon = d.log();
    let named: Vec<&str> = daemon
        .lines()
        .filter(|l| !id.trim().is_empty() && l.contains(id.trim()))
        .collect();
    let named = &named[named.len().saturating_sub(20)..];
    let said = format!(
        "docker state of {name}: {}{}\nits last output:\n{}{}\ndockerd about it:\n{}",
        state.stdout.trim(),
        state.stderr.trim(),
        logs.stdout.trim(),
        logs.stderr.trim(),
        named.join("\n")
    );
    (said, code)
}

/// `ctr run --privileged` must fail before anything runs, and its error must name each
/// of `wants` (the capabilities, the setting that would allow them).
pub fn ctr_privileged_refused(ctd: &TestContainerd, id: &str, wants: &[&str]) -> Result<()> {
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "true",
    ]);
    let _ = ctd.ctr(&["container", "delete", id]);
    if out.ok() {
        bail!("--privileged ran: {out:?}");
    }
    for want in wants {
        if !out.stderr.contains(want) {
            bail!("the refusal lacks {want:?}: {}", out.stderr);
        }
    }
    Ok(())
}

/// A profile asking for seccomp user notification, which Stockade cannot serve: Create
/// must fail with a clear error naming it.
pub fn ctr_notify_profile_refused(ctd: &TestContainerd, id: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    )?;
    let path = path.display().to_string();
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--seccomp",
        "--seccomp-profile",
        &path,
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "true",
    ]);
    let _ = ctd.ctr(&["container", "delete", id]);
    if out.ok() || !out.stderr.contains("SCMP_ACT_NOTIFY") {
        bail!("a notify profile was not refused clearly: {out:?}");
    }
    Ok(())
}
