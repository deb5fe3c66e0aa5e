//! The warm pool service, a subcommand of the shim binary (run by systemd:
//! `packaging/systemd/stockade-pool.service`):
//!
//! ```text
//! containerd-shim-stockade-v2 pool [--config <file>]          run the service
//! containerd-shim-stockade-v2 pool status [--config <file>]   what it holds
//! ```
//!
//! The configuration is the shim's (`--config`, else `STOCKADE_CONFIG`, else
//! `/etc/stockade/configuration.toml`, ...): its `[pool]` section sizes the pool, its
//! `[hypervisor]` section boots the VMs, and its state dir holds them and the socket.
//! See `stockade_runtime::vm::pool`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use stockade_runtime::Config;
use stockade_runtime::config::ConfigSource;
use stockade_runtime::vm::pool;

pub const COMMAND: &str = "pool";

/// `args`: the words after `pool`.
pub fn main(mut args: Vec<String>) -> Result<()> {
    let mut source = ConfigSource::default();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        let path = args.get(i + 1).context("--config needs a file")?.clone();
        source.path = Some(PathBuf::from(path));
        args.drain(i..=i + 1);
    }
    let config = Config::load(&source)?;
    match args.first().map(String::as_str) {
        None => run(config),
        Some("status") => {
            let s = pool::status(&config.runtime.state_dir)?;
            println!(
                "ready: {}  booting: {}  claimed: {}",
                s.ready.len(),
                s.booting,
                s.claimed
            );
            for vm in s.ready {
                println!(
                    "{}  {} vCPU  {} MiB  qemu pid {}",
                    vm.dir.display(),
                    vm.vcpus,
                    vm.memory_mib,
                    vm.qemu_pid
                );
            }
            Ok(())
        }
        Some(other) => bail!("pool: unknown argument {other:?} (expected `status` or nothing)"),
    }
}

fn run(config: Config) -> Result<()> {
    let level = std::env::var("STOCKADE_LOG_LEVEL")
        .ok()
        .unwrap_or_else(|| config.runtime.log_level.clone());
    stockade_runtime::logfmt::init("", level.parse().unwrap_or(log::LevelFilter::Info));
    if config.pool.size == 0 {
        log::warn!("[pool] size is 0: the service keeps no VM");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(pool::serve(config))?;
    Ok(())
}
