//! `stockade-agent`: PID 1 of a Stockade guest.
//!
//! Boot: mount /proc, /sys, /dev, /run and the cgroup2 hierarchy, load the kernel
//! modules shipped beside it (in the order `/lib/modules/stockade/order` lists), set
//! the hostname, then serve the agent protocol with ttrpc on vsock port 1024 while a
//! thread reaps every child. Containers inside the guest come with the VM backend's
//! next steps; this agent answers the version handshake, health, guest details and
//! shutdown.

mod init;
mod service;

use std::sync::Arc;

use stockade_agent_protocol::{AGENT_PORT, sync::agent_ttrpc::create_agent};

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "stockade-agent {}: this is the guest's init; it runs as PID 1 inside a Stockade VM, \
             not on the host",
            env!("CARGO_PKG_VERSION")
        );
        std::process::exit(78); // EX_CONFIG
    }
    init::early_mounts();
    let loaded = init::load_modules(std::path::Path::new("/lib/modules/stockade"));
    init::set_hostname("stockade");
    init::spawn_reaper();
    println!("stockade-agent: modules loaded: {}", loaded.join(" "));

    let service = create_agent(Arc::new(service::AgentService::new(loaded)));
    let addr = format!("vsock://-1:{AGENT_PORT}");
    let server = ttrpc::Server::new()
        .bind(&addr)
        .map(|s| s.register_service(service));
    let mut server = match server {
        Ok(s) => s,
        Err(e) => init::fatal(&format!("cannot listen on {addr}: {e}")),
    };
    if let Err(e) = server.start() {
        init::fatal(&format!("cannot serve on {addr}: {e}"));
    }
    println!("stockade-agent: serving on {addr}");
    loop {
        std::thread::park();
    }
}
