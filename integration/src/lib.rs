//! Harness for Stockade's end-to-end tests: a private containerd (and dockerd) in a
//! temp dir, the test image built offline and imported, and leak checks.
//!
//! ```no_run
//! use stockade_integration::{TestContainerd, build_image};
//! let env = TestContainerd::start().unwrap();
//! let tar = env.dir.path().join("busybox.tar");
//! build_image(&tar).unwrap();
//! env.import_image(&tar).unwrap();
//! let out = env.run_rm("t1", &["echo", "hi"]);
//! assert_eq!(out.stdout, "hi\n");
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod cri;
pub mod escape;

pub const RUNTIME: &str = "io.containerd.stockade.v2";
pub const NAMESPACE: &str = "stockade-test";
pub const IMAGE: &str = "stockade.test/busybox:latest";
pub const DOCKER: &str = "/usr/bin/docker";
/// The bridge the private dockerd uses for its default network.
pub const TEST_BRIDGE: &str = "stk-test0";
pub const TEST_BRIDGE_CIDR: &str = "172.31.254.1/24";

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl From<std::io::Result<std::process::Output>> for Out {
    /// A signal death reads as 128 + signal, the way a shell (and runc) reports it.
    fn from(r: std::io::Result<std::process::Output>) -> Out {
        use std::os::unix::process::ExitStatusExt;
        match r {
            Ok(o) => Out {
                code: o
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Out {
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }
}

pub fn run(cmd: &mut Command) -> Out {
    cmd.stdin(Stdio::null()).output().into()
}

pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Out {
    use std::io::Write;
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Err(e).into(),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().into()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The directory holding the shim binary under test (release build unless overridden).
pub fn shim_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("STOCKADE_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"));
    if !dir.join("containerd-shim-stockade-v2").exists() {
        bail!(
            "{}/containerd-shim-stockade-v2 missing: run `cargo build --release` first",
            dir.display()
        );
    }
    Ok(dir)
}

/// `$PATH` with the shim under test first, so the daemons find it by runtime name.
fn path_with_shim() -> Result<String> {
    Ok(format!(
        "{}:{}",
        shim_dir()?.display(),
        std::env::var("PATH").unwrap_or_default()
    ))
}

/// Why the end-to-end suite cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: containerd and the shim need root".into());
    }
    for bin in ["/usr/bin/containerd", "/usr/bin/ctr"] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} missing: run packaging/setup.sh --deps"));
        }
    }
    None
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            bail!("timed out waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after `grace`; then unmount what the daemon left under `dir`
/// (containerd and dockerd leave their snapshot mounts behind on exit).
fn stop_daemon(child: &mut Child, grace: Duration, dir: &Path) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = run(Command::new("sh").arg("-c").arg(format!(
        "grep -o ' {d}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
        d = dir.display()
    )));
}

/// A private containerd: own root, state, sockets and config, stopped on drop.
pub struct TestContainerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub stockade_state: PathBuf,
    pub config: PathBuf,
    child: Child,
}

impl TestContainerd {
    pub fn start() -> Result<TestContainerd> {
        Self::start_with("auto", "")
    }

    /// With Stockade's `[runtime] mode` and extra configuration (TOML tables after
    /// `[runtime]`, e.g. a `[hypervisor]` section).
    pub fn start_with(mode: &str, extra: &str) -> Result<TestContainerd> {
        Self::start_full(mode, extra, |_| String::new())
    }

    /// As [`start_with`](Self::start_with), with `cri(dir)` returning more keys and
    /// tables for containerd's CRI plugin section (see [`cri::cri_config`]).
    pub fn start_full(
        mode: &str,
        extra: &str,
        cri: impl FnOnce(&Path) -> String,
    ) -> Result<TestContainerd> {
        let dir = tempfile::Builder::new()
            .prefix("stockade-it-")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let stockade_state = d.join("stockade-state");
        let config = d.join("stockade.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\nmode = \"{mode}\"\nstate_dir = \"{}\"\n{extra}",
                stockade_state.display()
            ),
        )?;
        let ctd_config = d.join("containerd.toml");
        std::fs::write(
            &ctd_config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
{cri}"#,
                cri = cri(d),
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
                d = d.display()
            ),
        )?;
        let path = path_with_shim()?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&ctd_config)
            .env("PATH", path)
            .env("STOCKADE_CONFIG", &config)
            .env("STOCKADE_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let env = TestContainerd {
            state_dir: d.join("state"),
            dir,
            socket,
            stockade_state,
            config,
            child,
        };
        wait_for(&env.socket, Duration::from_secs(20))?;
        Ok(env)
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        run(self.ctr_cmd().args(args))
    }

    /// `ctr` in another containerd namespace (the CRI plugin's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Out {
        run(Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args))
    }

    /// `ctr run --rm --runtime stockade IMAGE ID ARGS...`
    pub fn run_rm(&self, id: &str, args: &[&str]) -> Out {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run -d --runtime stockade IMAGE ID ARGS...`
    pub fn run_detached(&self, id: &str, args: &[&str]) -> Result<()> {
        let mut a = vec!["run", "-d", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        let out = self.ctr(&a);
        if !out.ok() {
            bail!("ctr run -d {id}: {}", out.stderr);
        }
        Ok(())
    }

    /// The init pid `ctr task ls` shows for `id`.
    pub fn task_pid(&self, id: &str) -> Result<i32> {
        let ls = self.ctr(&["task", "ls"]);
        ls.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no pid for {id} in: {}", ls.stdout))
    }

    /// Kill a container's task, then delete it and the container (best effort).
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        for _ in 0..100 {
            if self.ctr(&["task", "delete", id]).ok() || !self.ctr(&["task", "ps", id]).ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(&["container", "delete", id]);
    }

    pub fn import_image(&self, tar: &Path) -> Result<()> {
        let out = self.ctr(&["images", "import", &tar.display().to_string()]);
        if !out.ok() {
            bail!("image import failed: {}", out.stderr);
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Everything one container may leave behind, checked after it is gone.
    pub fn leaks(&self, namespace: &str, id: &str) -> Vec<String> {
        let mut found = Vec::new();
        let state = self.stockade_state.join(namespace).join(id);
        if state.exists() {
            found.push(format!("state dir {}", state.display()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if line.contains(&format!("/{id}/rootfs")) {
                found.push(format!("mount {line}"));
            }
        }
        for ctl in ["memory", "pids", "cpu", "freezer"] {
            for root in [
                format!("/sys/fs/cgroup/{ctl}"),
                "/sys/fs/cgroup".to_string(),
            ] {
                let dir = Path::new(&root).join(namespace).join(id);
                if dir.exists() {
                    found.push(format!("cgroup {}", dir.display()));
                }
            }
        }
        let ps = run(Command::new("pgrep").args(["-f", &format!("stockade.*{id}")]));
        if ps.ok() && !ps.stdout.trim().is_empty() {
            found.push(format!("processes {}", ps.stdout.trim()));
        }
        found
    }

    /// What VM sandboxes may leave behind: sandbox dirs, and qemu, virtiofsd or vsock
    /// backend processes working in this containerd's Stockade state dir.
    pub fn vm_leaks(&self) -> Vec<String> {
        let mut found = Vec::new();
        let vm = self.stockade_state.join("vm");
        if let Ok(entries) = std::fs::read_dir(&vm) {
            for e in entries.flatten() {
                found.push(format!("sandbox dir {}", e.path().display()));
            }
        }
        let state = self.stockade_state.display().to_string();
        let ps = run(Command::new("pgrep").args(["-a", "-f", &state]));
        for line in ps.stdout.lines() {
            if line.contains("qemu") || line.contains("virtiofsd") || line.contains("vhost-device")
            {
                found.push(format!("process {line}"));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if line.contains(&format!("{}/vm/", state)) {
                found.push(format!("mount {line}"));
            }
        }
        found
    }

    /// Shim processes this containerd started that are still alive.
    pub fn shims(&self) -> Vec<String> {
        let ps = run(Command::new("pgrep").args(["-a", "-f", "containerd-shim-stockade-v2"]));
        let addr = self.socket.display().to_string();
        ps.stdout
            .lines()
            .filter(|l| l.contains(&addr))
            .map(String::from)
            .collect()
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        stop_daemon(&mut self.child, Duration::from_secs(10), self.dir.path());
    }
}

/// A private dockerd on top of a [`TestContainerd`], with a named runtime in daemon.json.
pub struct TestDocker {
    pub dir: tempfile::TempDir,
    pub host: String,
    child: Child,
}

impl TestDocker {
    pub fn start(ctd: &TestContainerd) -> Result<TestDocker> {
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("dockerd missing: run packaging/setup.sh --deps")?;
        let dir = tempfile::Builder::new()
            .prefix("stockade-dk-")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let daemon_json = d.join("daemon.json");
        std::fs::write(
            &daemon_json,
            format!(r#"{{"runtimes": {{"stockade": {{"runtimeType": "{RUNTIME}"}}}}}}"#),
        )?;
        let sock = d.join("docker.sock");
        // Our own bridge, so a node's docker0 (if any) is left alone; removed on drop.
        let _ = run(Command::new("ip").args(["link", "del", TEST_BRIDGE]));
        for args in [
            vec!["link", "add", TEST_BRIDGE, "type", "bridge"],
            vec!["addr", "add", TEST_BRIDGE_CIDR, "dev", TEST_BRIDGE],
            vec!["link", "set", TEST_BRIDGE, "up"],
        ] {
            let o = run(Command::new("ip").args(&args));
            if !o.ok() {
                bail!("ip {}: {}", args.join(" "), o.stderr);
            }
        }
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let path = path_with_shim()?;
        let child = Command::new(dockerd)
            .arg("--config-file")
            .arg(&daemon_json)
            .arg("--containerd")
            .arg(&ctd.socket)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg(format!("--bridge={TEST_BRIDGE}"))
            .arg("--ip6tables=false")
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd")?;
        let env = TestDocker {
            host: format!("unix://{}", sock.display()),
            dir,
            child,
        };
        let start = Instant::now();
        loop {
            if env.docker(&["version"]).ok() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("dockerd did not come up:\n{}", env.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(env)
    }

    pub fn docker(&self, args: &[&str]) -> Out {
        run(Command::new(DOCKER).arg("-H").arg(&self.host).args(args))
    }

    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(&self.host);
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]).stdout;
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", "-v", id]);
        }
        stop_daemon(&mut self.child, Duration::from_secs(15), self.dir.path());
        let _ = run(Command::new("ip").args(["link", "del", TEST_BRIDGE]));
    }
}

/// Fail with the command's output unless it exited with `code`.
pub fn expect_code(out: &Out, code: i32, what: &str) -> Result<()> {
    anyhow::ensure!(
        out.code == code,
        "{what}: exit code {} (expected {code})\nstdout: {}\nstderr: {}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// A suite's containerd with the test image imported, and a dockerd on it with the
/// image loaded (None, with the reason printed, when dockerd does not start: the
/// Docker cases then fail on their own).
pub fn start_suite(mode: &str, extra: &str) -> Result<(TestContainerd, Option<TestDocker>)> {
    let ctd = TestContainerd::start_with(mode, extra)?;
    let tar = ctd.dir.path().join("busybox.tar");
    build_image(&tar)?;
    ctd.import_image(&tar)?;
    let docker = match TestDocker::start(&ctd) {
        Ok(d) => {
            let o = d.docker(&["load", "-i", &tar.display().to_string()]);
            if !o.ok() {
                bail!("docker load: {}", o.stderr);
            }
            Some(d)
        }
        Err(e) => {
            eprintln!("dockerd failed to start: {e:#}");
            None
        }
    };
    Ok((ctd, docker))
}

/// One named case of a suite.
pub type Case<S> = (&'static str, fn(&S) -> Result<()>);

/// Run the cases whose names contain one of the command line's words (all without
/// words), print each result, and the tail of `log` if any failed. Returns (passed, failed).
pub fn run_cases<S>(suite: &S, cases: &[Case<S>], log: impl Fn(&S) -> String) -> (usize, usize) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        match case(suite) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", start.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED ({:.1}s)\n{e:#}",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    if failed > 0 {
        let log = log(suite);
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        println!("--- containerd log (last lines) ---");
        for l in tail.into_iter().rev() {
            println!("{l}");
        }
    }
    (passed, failed)
}

/// Build the test image tarball with integration/image/build.sh.
pub fn build_image(out: &Path) -> Result<()> {
    build_image_as(out, IMAGE, "null")
}

/// The test image's rootfs under `reference`, with `entrypoint` (JSON; `null` for none).
pub fn build_image_as(out: &Path, reference: &str, entrypoint: &str) -> Result<()> {
    let script = workspace_root().join("integration/image/build.sh");
    let o = run(Command::new("bash")
        .arg(script)
        .arg(out)
        .arg(reference)
        .arg(entrypoint));
    if !o.ok() {
        bail!("building the test image failed: {}{}", o.stdout, o.stderr);
    }
    Ok(())
}

/// Run `cmd` under a pseudo-terminal (util-linux `script`), as a user at a terminal would.
pub fn in_tty(cmd: &str) -> Out {
    run(Command::new("script").args(["-qec", cmd, "/dev/null"]))
}

/// Where the guest assets live (`$STOCKADE_GUEST_DIR`, else setup.sh's install dir).
pub fn guest_assets() -> PathBuf {
    std::env::var_os("STOCKADE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/stockade"))
}

/// The `[hypervisor]` table of a Stockade config for [`guest_config`].
pub fn hypervisor_toml(cfg: &stockade_runtime::config::HypervisorConfig) -> String {
    format!(
        "[hypervisor]\naccel = \"{}\"\nkernel = \"{}\"\ninitrd = \"{}\"\nboot_timeout_secs = {}\n",
        match cfg.accel {
            stockade_runtime::config::Accel::Kvm => "kvm",
            stockade_runtime::config::Accel::Tcg => "tcg",
        },
        cfg.kernel.display(),
        cfg.initrd.display(),
        cfg.boot_timeout_secs
    )
}

/// The hypervisor config the VM tests and benchmarks boot with: the installed guest
/// assets, KVM where the probe passes, TCG elsewhere.
pub fn guest_config() -> stockade_runtime::config::HypervisorConfig {
    use stockade_runtime::config::{Accel, HypervisorConfig};
    use stockade_runtime::probe::{RealHost, probe_kvm};
    let assets = guest_assets();
    HypervisorConfig {
        accel: if probe_kvm(&RealHost).is_usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        },
        kernel: assets.join("vmlinuz"),
        initrd: assets.join("initrd.img"),
        boot_timeout_secs: 60,
        ..Default::default()
    }
}

/// PSS in KiB from /proc/<pid>/smaps: (total, guest RAM, TCG translation cache).
/// Guest RAM is QEMU's memfd memory backend; the TCG cache is its anonymous
/// read-write-execute mapping (absent under KVM).
pub fn pss_kib(pid: &str) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest, mut tcg) = (0, 0, 0);
    let mut kind = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let perms = words.next().unwrap_or("");
            let named = line.split_whitespace().count() > 5;
            kind = if line.contains("memfd:memory-backend") {
                1
            } else if perms == "rwxp" && !named {
                2
            } else {
                0
            };
            continue;
        }
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            total += kib;
            match kind {
                1 => guest += kib,
                2 => tcg += kib,
                _ => {}
            }
        }
    }
    (total, guest, tcg)
}

pub fn pids(pattern: &str) -> Vec<String> {
    run(Command::new("pgrep").args(["-f", pattern]))
        .stdout
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Print the PSS of one VM sandbox's host processes (qemu, virtiofsd, the vsock backend,
/// and the shim matching `shim_pattern`) working in Stockade state dir `state`, and the
/// host overhead outside guest RAM. Returns that overhead without the TCG translation
/// cache (what KVM would cost), in KiB.
pub fn report_sandbox_memory(state: &str, shim_pattern: &str, guest_mib: u32) -> u64 {
    let mut total = 0u64;
    let mut guest_ram = 0u64;
    let mut tcg_cache = 0u64;
    for (name, pattern) in [
        ("qemu", format!("qemu-system.*{state}")),
        ("virtiofsd", format!("virtiofsd.*{state}")),
        ("vhost-device-vsock", format!("vhost-device-vsock.*{state}")),
        ("shim", shim_pattern.to_string()),
    ] {
        let mut kib = 0;
        for p in pids(&pattern) {
            let (t, g, c) = pss_kib(&p);
            kib += t;
            guest_ram += g;
            tcg_cache += c;
        }
        total += kib;
        println!("  {name:<20} PSS {:>7.1} MiB", kib as f64 / 1024.0);
    }
    let overhead = total - guest_ram;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  one sandbox ({guest_mib} MiB guest): PSS {:.1} MiB in all, of which guest RAM touched {:.1} MiB",
        mib(total),
        mib(guest_ram)
    );
    println!(
        "  host overhead outside guest RAM: {:.1} MiB; without the TCG translation cache ({:.1} MiB, absent under KVM): {:.1} MiB (target <= 40 MiB)",
        mib(overhead),
        mib(tcg_cache),
        mib(overhead - tcg_cache)
    );
    overhead - tcg_cache
}
