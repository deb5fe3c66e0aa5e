//! A private containerd for the tests: its own root, state, sockets and config.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::command::{Out, run};
use crate::daemons::daemons;
use crate::paths::path_with_shim;
use crate::{IMAGE, NAMESPACE, RUNTIME};

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
pub(crate) fn stop_daemon(child: &mut Child, grace: Duration, dir: &Path) {
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

/// The `PATH` of daemons that must find only what is installed: not `/usr/local/bin`
/// (a developer's `setup.sh` puts a shim there) and not the build tree.
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Which shim a private containerd's shims are, and with which Stockade config.
enum Shim<'a> {
    /// The build tree's, with `[runtime] mode` and more config for `$STOCKADE_CONFIG`.
    Tree { mode: &'a str, extra: &'a str },
    /// The machine's installed one, found on `path`, with its installed config.
    Installed { path: &'a str },
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
    /// tables for containerd's CRI plugin section (see
    /// [`cri::cri_config`](crate::cri::cri_config)).
    pub fn start_full(
        mode: &str,
        extra: &str,
        cri: impl FnOnce(&Path) -> String,
    ) -> Result<TestContainerd> {
        Self::start_inner(Shim::Tree { mode, extra }, cri, |_| Ok(()))
    }

    /// A private containerd that finds only what is installed on the machine: the shim
    /// on the system `PATH` (`/usr/bin`, not the build tree), and Stockade's config from
    /// `/etc/stockade` or its CRI runtime's options (no `$STOCKADE_CONFIG`). `edit` gets
    /// containerd's config file before the daemon starts (to `install` the runtime).
    /// `path` is the daemon's `PATH` ([`SYSTEM_PATH`], or with a node installer's dir).
    pub fn start_installed(
        path: &str,
        cri: impl FnOnce(&Path) -> String,
        edit: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<TestContainerd> {
        Self::start_inner(Shim::Installed { path }, cri, edit)
    }

    fn start_inner(
        shim: Shim<'_>,
        cri: impl FnOnce(&Path) -> String,
        edit: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<TestContainerd> {
        let dir = tempfile::Builder::new()
            .prefix("stockade-it-")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("stockade.toml");
        let stockade_state = match shim {
            Shim::Tree { mode, extra } => {
                let state = d.join("stockade-state");
                std::fs::write(
                    &config,
                    format!(
                        "[runtime]\nmode = \"{mode}\"\nstate_dir = \"{}\"\n{extra}",
                        state.display()
                    ),
                )?;
                state
            }
            // The installed configuration's default.
            Shim::Installed { .. } => PathBuf::from("/run/stockade"),
        };
        let ctd_config = d.join("containerd.toml");
        let (root, state, sock) = (
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            socket.display().to_string(),
        );
        // containerd 2.x (config version 3): the CRI plugin's runtime options moved, it
        // imports drop-ins, and NRI is on by default at a socket every daemon shares.
        let (version, extra_top, cri_plugin, nri) = if daemons().config_version >= 3 {
            (
                3,
                format!("imports = [\"{}/conf.d/*.toml\"]\n", d.display()),
                "io.containerd.cri.v1.runtime",
                "[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n",
            )
        } else {
            (2, String::new(), "io.containerd.grpc.v1.cri", "")
        };
        let text = format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
{extra_top}[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{nri}[plugins."{cri_plugin}"]
  restrict_oom_score_adj = true
{cri}"#,
            cri = cri(d),
            d = d.display()
        );
        std::fs::write(&ctd_config, text)?;
        edit(&ctd_config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let mut cmd = Command::new(&daemons().containerd);
        match shim {
            Shim::Tree { .. } => {
                cmd.env("PATH", path_with_shim()?)
                    .env("STOCKADE_CONFIG", &config)
                    .env("STOCKADE_LOG_LEVEL", "debug");
            }
            Shim::Installed { path } => {
                cmd.env_remove("STOCKADE_CONFIG")
                    .env_remove("STOCKADE_LOG_LEVEL")
                    .env("PATH", daemons().path_with(path));
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&ctd_config)
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
        let mut c = Command::new(&daemons().ctr);
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
        run(Command::new(&daemons().ctr)
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args))
    }

    /// `ctr run --rm --runtime stockade --config SPEC ID`: a whole spec of the test's
    /// own, its rootfs named by its `root.path`.
    pub fn run_rm_spec(&self, spec: &Path, id: &str) -> Out {
        let spec = spec.display().to_string();
        self.ctr(&["run", "--rm", "--runtime", RUNTIME, "--config", &spec, id])
    }

    /// `ctr run --rm --runtime stockade IMAGE ID ARGS...`
    pub fn run_rm(&self, id: &str, args: &[&str]) -> Out {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run --rm --runtime stockade [--runtime-config-path CONFIG] EXTRA... IMAGE ID
    /// ARGS...`
    pub fn run_rm_with(
        &self,
        config: Option<&Path>,
        extra: &[&str],
        id: &str,
        args: &[&str],
    ) -> Out {
        let config = config.map(|c| c.display().to_string());
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
        if let Some(c) = &config {
            a.extend(["--runtime-config-path", c.as_str()]);
        }
        a.extend_from_slice(extra);
        a.extend([IMAGE, id]);
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

    /// `ctr events` running in the background into `<dir>/<name>`, from now on.
    pub fn events(&self, name: &str) -> Result<EventLog> {
        let path = self.dir.path().join(name);
        let child = self
            .ctr_cmd()
            .arg("events")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&path)?)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Ok(EventLog { child, path })
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
        // The vsock backend names its sockets relative to its dir: found by its cwd.
        for pid in crate::vm::helpers_working_in(&self.stockade_state, "vhost-device-vsock") {
            found.push(format!("process {pid} (vhost-device-vsock)"));
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

/// A background `ctr events` ([`TestContainerd::events`]).
pub struct EventLog {
    child: std::process::Child,
    path: PathBuf,
}

impl EventLog {
    /// Stop it; what it printed.
    pub fn stop(mut self) -> Result<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(std::fs::read_to_string(&self.path)?)
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        stop_daemon(&mut self.child, Duration::from_secs(10), self.dir.path());
    }
}
