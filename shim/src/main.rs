//! `containerd-shim-stockade-v2`: containerd's runtime v2 shim for Stockade.

mod bootstrap;
mod debug;
mod error;
mod events;
mod install;
mod metrics;
mod options;
mod pool;
mod shim;
mod start;
mod task;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // libcontainer helper: a single-threaded re-exec of the sealed shim binary.
    // It must run before any thread (tokio's included) exists.
    if args.get(1).map(String::as_str) == Some(stockade_runtime::linux::helper::HELPER_ARG) {
        std::process::exit(stockade_runtime::linux::helper::main(&args[2..]));
    }
    // The host process that stands for a VM container in its network namespace.
    if args.get(1).map(String::as_str) == Some(stockade_runtime::vm::network::NETNS_HOLDER_ARG) {
        stockade_runtime::vm::network::holder_main();
    }
    // Operator commands: never used by containerd, whose calls all start with a flag.
    let cmd_at = if args.get(1).map(String::as_str) == Some("--state-dir") {
        3
    } else {
        1
    };
    if args
        .get(cmd_at)
        .is_some_and(|a| debug::COMMANDS.contains(&a.as_str()))
    {
        match debug::main(args[1..].to_vec()) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(1);
            }
        }
    }
    if args
        .get(1)
        .is_some_and(|a| install::COMMANDS.contains(&a.as_str()))
    {
        if let Err(e) = install::main(args[1..].to_vec()) {
            eprintln!("containerd-shim-stockade-v2: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some(pool::COMMAND) {
        if let Err(e) = pool::main(args[2..].to_vec()) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return;
    }
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "{}:\n  Version: {}\n  Revision: {}",
            args[0],
            env!("CARGO_PKG_VERSION"),
            option_env!("STOCKADE_REVISION").unwrap_or("unknown")
        );
        return;
    }
    // `start` is Stockade's own: it speaks containerd 2.3's bootstrap protocol and the
    // older daemons' plain one (the crate's start path reads only the latter).
    if let Ok(flags) = containerd_shim::parse(&args[1..])
        && flags.action == "start"
    {
        match start::start(&flags) {
            Ok(answer) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                if let Err(e) = out.write_all(&answer).and_then(|()| out.flush()) {
                    eprintln!("stockade: start: write the answer: {e}");
                    std::process::exit(1);
                }
                return;
            }
            Err(e) => {
                eprintln!("stockade: start: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(containerd_shim::asynchronous::run::<shim::Shim>(
        "io.containerd.stockade.v2",
        None,
    ));
}
