//! The warm pool service under test: `containerd-shim-stockade-v2 pool` run as a child
//! with a Stockade config of its own, and what it reports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use stockade_runtime::vm::pool::{self, PoolStatus};

use crate::paths::shim_dir;

pub struct TestPool {
    child: Option<Child>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl TestPool {
    /// Start the service with the Stockade config `base` (a file) plus `pool` (the
    /// `[pool]` table's keys), written next to it as `<stem>-pool.toml`.
    pub fn start(base: &Path, pool: &str) -> Result<TestPool> {
        let text = std::fs::read_to_string(base).context("read the base config")?;
        let config = base.with_file_name(format!(
            "{}-pool.toml",
            base.file_stem().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&config, format!("{text}\n[pool]\n{pool}\n"))?;
        let state_dir = stockade_runtime::Config::from_file(&config)?
            .runtime
            .state_dir;
        let log = config.with_extension("log");
        let child = Command::new(shim_dir()?.join("containerd-shim-stockade-v2"))
            .args(["pool", "--config"])
            .arg(&config)
            .env("STOCKADE_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start the pool service")?;
        Ok(TestPool {
            child: Some(child),
            config,
            state_dir,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn status(&self) -> Result<PoolStatus> {
        Ok(pool::status(&self.state_dir)?)
    }

    /// Wait until `ok` holds of the service's status.
    pub fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        ok: impl Fn(&PoolStatus) -> bool,
    ) -> Result<PoolStatus> {
        let end = Instant::now() + limit;
        loop {
            let s = self.status();
            if let Ok(s) = &s
                && ok(s)
            {
                return Ok(s.clone());
            }
            if Instant::now() > end {
                bail!(
                    "pool: not {what} within {limit:?}: {s:?}\n--- pool log ---\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the service's exit code once it is gone.
    pub fn stop(&mut self) -> Result<i32> {
        let Some(mut child) = self.child.take() else {
            bail!("the pool service was stopped already");
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the pool service did not stop within 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// The parent of process `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
