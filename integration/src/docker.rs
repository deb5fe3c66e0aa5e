//! A private dockerd for the tests, on a private containerd and its own bridge.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::RUNTIME;
use crate::command::{Out, run};
use crate::containerd::{SYSTEM_PATH, TestContainerd, stop_daemon};
use crate::daemons::daemons;
use crate::paths::path_with_shim;

/// The bridge the private dockerd uses for its default network.
pub const TEST_BRIDGE: &str = "stk-test0";
pub const TEST_BRIDGE_CIDR: &str = "172.31.254.1/24";

/// A private dockerd on top of a [`TestContainerd`], with a named runtime in daemon.json.
pub struct TestDocker {
    pub dir: tempfile::TempDir,
    pub host: String,
    child: Child,
    /// Whether it runs on [`TEST_BRIDGE`] (removed on drop).
    bridged: bool,
}

/// How a [`TestDocker`] keeps images and networks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Its graph driver, and [`TEST_BRIDGE`] as its default network.
    Classic,
    /// containerd's image store (`features.containerd-snapshotter`, Docker 29's
    /// default), in a containerd namespace of its own, and no default bridge: it runs
    /// beside a classic one on the same containerd.
    ImageStore,
}

impl TestDocker {
    pub fn start(ctd: &TestContainerd) -> Result<TestDocker> {
        Self::start_as(ctd, Flavor::Classic)
    }

    pub fn start_as(ctd: &TestContainerd, flavor: Flavor) -> Result<TestDocker> {
        Self::start_inner(ctd, flavor, None)
    }

    /// A classic dockerd with the admin's `daemon_json` (not one of the harness's), that
    /// finds only what is installed on the machine ([`SYSTEM_PATH`]).
    pub fn start_installed(ctd: &TestContainerd, daemon_json: &Path) -> Result<TestDocker> {
        Self::start_inner(ctd, Flavor::Classic, Some(daemon_json))
    }

    fn start_inner(
        ctd: &TestContainerd,
        flavor: Flavor,
        admin_json: Option<&Path>,
    ) -> Result<TestDocker> {
        let dockerd = &daemons().dockerd;
        if !dockerd.exists() {
            bail!(
                "{} missing: run packaging/setup.sh --deps",
                dockerd.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("stockade-dk-")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let bridged = flavor == Flavor::Classic;
        let daemon_json = match admin_json {
            Some(p) => p.to_path_buf(),
            None => {
                let daemon_json = d.join("daemon.json");
                let features = if bridged {
                    ""
                } else {
                    r#", "features": {"containerd-snapshotter": true}"#
                };
                std::fs::write(
                    &daemon_json,
                    format!(
                        r#"{{"runtimes": {{"stockade": {{"runtimeType": "{RUNTIME}"}}}}{features}}}"#
                    ),
                )?;
                daemon_json
            }
        };
        let sock = d.join("docker.sock");
        // Our own bridge, so a node's docker0 (if any) is left alone; removed on drop.
        let bridge_links: Vec<Vec<&str>> = if bridged {
            let _ = run(Command::new("ip").args(["link", "del", TEST_BRIDGE]));
            vec![
                vec!["link", "add", TEST_BRIDGE, "type", "bridge"],
                vec!["addr", "add", TEST_BRIDGE_CIDR, "dev", TEST_BRIDGE],
                vec!["link", "set", TEST_BRIDGE, "up"],
            ]
        } else {
            Vec::new()
        };
        for args in &bridge_links {
            let o = run(Command::new("ip").args(args));
            if !o.ok() {
                bail!("ip {}: {}", args.join(" "), o.stderr);
            }
        }
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let path = match admin_json {
            None => path_with_shim()?,
            Some(_) => daemons().path_with(SYSTEM_PATH),
        };
        let mut cmd = Command::new(dockerd);
        if bridged {
            cmd.arg(format!("--bridge={TEST_BRIDGE}"));
        } else {
            cmd.args([
                "--bridge=none",
                "--containerd-namespace=moby-store",
                "--containerd-plugins-namespace=plugins-moby-store",
            ]);
        }
        let child = cmd
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
            bridged,
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
        run(Command::new(&daemons().docker)
            .arg("-H")
            .arg(&self.host)
            .args(args))
    }

    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(&daemons().docker);
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
        if self.bridged {
            let _ = run(Command::new("ip").args(["link", "del", TEST_BRIDGE]));
        }
    }
}
