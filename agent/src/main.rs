//! `stockade-agent`: PID 1 of a Stockade guest.
//!
//! Boot: mount /proc, /sys, /dev, /run and the cgroup2 hierarchy, load the kernel
//! modules shipped beside it (in the order `/lib/modules/stockade/order` lists), set
//! the hostname, then serve the agent protocol with ttrpc on vsock port 1024, the
//! process stdio streams on port 1025 and forwarded connections on port 1026, while a
//! thread reaps every child.
//!
//! Containers run through the same runtime the host's container backend uses
//! (`stockade_runtime::Runtime` in container mode: libcontainer from a sealed copy of
//! this binary, Stockade's hardening, cgroups v2 inside the guest). Its libcontainer
//! helper is this binary re-executed with the helper argument.

mod forward;
mod fwcfg;
#[cfg(feature = "hostile")]
mod hostile;
mod init;
mod logger;
mod modprobe;
mod net;
mod service;
mod stdio;

use std::sync::Arc;

use stockade_agent_protocol::asynchronous::agent_ttrpc::create_agent;
use stockade_agent_protocol::{AGENT_PORT, FORWARD_PORT, SECRET_FW_CFG, SECRET_LEN, STDIO_PORT};
use stockade_runtime::exits::Exits;
use stockade_runtime::linux::helper;

/// `stockade-agent --precompile-filters`: print Stockade's seccomp profiles compiled.
const PRECOMPILE_ARG: &str = "--precompile-filters";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The libcontainer helper: single-threaded, before any thread exists.
    if args.get(1).map(String::as_str) == Some(helper::HELPER_ARG) {
        std::process::exit(helper::main(&args[2..]));
    }
    // The pod's sandbox process (stockade_runtime::linux::pause).
    if args.get(1).map(String::as_str) == Some(stockade_runtime::linux::pause::PAUSE_ARG) {
        stockade_runtime::linux::pause::main();
    }
    // The guest's build, on the host: Stockade's seccomp profiles compiled, for the
    // initramfs (`init::PRECOMPILED_FILTERS`), so that no guest compiles them.
    if args.get(1).map(String::as_str) == Some(PRECOMPILE_ARG) {
        print!(
            "{}",
            stockade_runtime::linux::seccomp::Filters::precompiled()
        );
        std::process::exit(0);
    }
    // The kernel's usermode modprobe (modprobe.rs): `/init -q -- <module or alias>`.
    if modprobe::called_as_modprobe(&args) {
        std::process::exit(modprobe::main(&args));
    }
    if std::process::id() != 1 {
        eprintln!(
            "stockade-agent {}: this is the guest's init; it runs as PID 1 inside a Stockade VM, \
             not on the host",
            env!("CARGO_PKG_VERSION")
        );
        std::process::exit(78); // EX_CONFIG
    }
    init::leave_rootfs();
    init::early_mounts();
    logger::init();
    let loaded = init::load_modules(std::path::Path::new(modprobe::DIR));
    modprobe::install();
    init::prepare_cgroups();
    let precompiled = std::fs::read_to_string(init::PRECOMPILED_FILTERS)
        .map(|t| stockade_runtime::linux::bpf::import(&t))
        .unwrap_or(0);
    init::set_hostname("stockade");
    net::loopback_up();
    let exits = Exits::default();
    init::spawn_reaper(exits.clone());
    // At the lowest priority: boot work comes first.
    std::thread::spawn(|| {
        // SAFETY: setpriority on this thread only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        stockade_runtime::linux::guest::warm_up();
    });
    log::info!(modules:% = loaded.join(" "), precompiled_filters = precompiled; "modules loaded");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| init::fatal(&format!("tokio runtime: {e}")));
    // The host's proof of identity, out of every other local user's sight (fwcfg.rs).
    let secret: Arc<[u8]> = match fwcfg::read_file(SECRET_FW_CFG) {
        Ok(s) if s.len() == SECRET_LEN => s.into(),
        Ok(s) => init::fatal(&format!(
            "the VM's secret has {} bytes, not {SECRET_LEN}",
            s.len()
        )),
        Err(e) => init::fatal(&format!("no VM secret from the host: {e}")),
    };
    rt.block_on(serve(exits, loaded, secret));
}

async fn serve(exits: Exits, loaded: Vec<String>, secret: Arc<[u8]>) {
    let svc = Arc::new(service::AgentService::new(exits, loaded, secret.clone()));
    for (port, what, serve) in [
        (STDIO_PORT, "stdio", stdio::serve_stream as fn(_, &[u8])),
        (FORWARD_PORT, "port forwarding", forward::serve),
    ] {
        if let Err(e) = stdio::listen(port, secret.clone(), serve) {
            init::fatal(&format!(
                "cannot listen for {what} on vsock port {port}: {e}"
            ));
        }
    }
    let addr = format!("vsock://-1:{AGENT_PORT}");
    let server = ttrpc::asynchronous::Server::new()
        .bind(&addr)
        .map(|s| s.register_service(create_agent(svc)));
    let mut server = match server {
        Ok(s) => s,
        Err(e) => init::fatal(&format!("cannot listen on {addr}: {e}")),
    };
    if let Err(e) = server.start().await {
        init::fatal(&format!("cannot serve on {addr}: {e}"));
    }
    log::info!(addr = addr.as_str(); "serving");
    std::future::pending::<()>().await;
}
