//! The agent's log: structured lines on the guest console, which the host keeps in the
//! sandbox's `console.log` (`containerd-shim-stockade-v2 agent-log <id>` shows them).

pub fn init() {
    stockade_runtime::logfmt::init("stockade-agent: ", log::LevelFilter::Info);
}
