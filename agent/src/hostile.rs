//! A hostile guest, for the host's tests only (cargo feature `hostile`, never in the
//! shipped initramfs): the agent misbehaves on command, as a compromised guest would,
//! so the host's promises can be tested against it.
//!
//! The commands come from the environment of a container's process,
//! `STOCKADE_HOSTILE=<command>[,<command>...]`:
//!
//! | command | what the guest does |
//! |---|---|
//! | `oom=<id>` | reports an OOM kill of container `<id>` (another pod's) |
//! | `flood=<n>` | reports `n` exits of pids nobody runs, in bursts of 1,000 |
//! | `ignore-kill` | acknowledges signals to this container, delivers none, and never reports its exits |
//! | `mute` | stops answering and stops reading its vsock, 2 s after the create |
//! | `console-flood` | writes to its serial console without end |
//! | `oversized` | answers Stats with more than the protocol's 4 MiB |
//! | `spoof=<ip>:<port>` | sends UDP to `<ip>:<port>`: `genuine` from its own address and MAC, then `spoofed-ip` from an address it added, then `spoofed-mac` after changing its MAC |
//! | `share-tricks` | at Delete: renames the container's share dir (tab and newline in the name), plants a FIFO and a symlink to `/` at its name |

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use stockade_agent_protocol::GUEST_SHARE_DIR;

#[derive(Default)]
pub struct Hostile {
    ignore_kill: Mutex<HashSet<String>>,
    share_tricks: Mutex<HashSet<String>>,
    oversized: Mutex<HashSet<String>>,
}

/// What to report, as event kinds the service queues.
pub enum Report {
    Oom(String),
    /// `n` exits of pids nobody runs, in bursts, faster than the host polls.
    Flood(u32),
}

impl Hostile {
    /// Arm the commands of container `id`'s spec; returns the events to report now.
    pub fn arm(&self, id: &str, spec: &oci_spec::runtime::Spec) -> Vec<Report> {
        let env = spec
            .process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default();
        let Some(cmds) = env
            .iter()
            .find_map(|kv| kv.strip_prefix("STOCKADE_HOSTILE="))
        else {
            return Vec::new();
        };
        log::warn!(id, commands = cmds; "hostile test agent: misbehaving on command");
        let mut out = Vec::new();
        for cmd in cmds.split(',') {
            let (name, arg) = cmd.split_once('=').unwrap_or((cmd, ""));
            match name {
                "oom" => out.push(Report::Oom(arg.to_string())),
                "flood" => out.push(Report::Flood(arg.parse().unwrap_or(100_000))),
                "ignore-kill" => {
                    self.ignore_kill.lock().unwrap().insert(id.into());
                }
                "share-tricks" => {
                    self.share_tricks.lock().unwrap().insert(id.into());
                }
                "oversized" => {
                    self.oversized.lock().unwrap().insert(id.into());
                }
                "mute" => mute(),
                "spoof" => match arg.parse::<std::net::SocketAddrV4>() {
                    Ok(to) => {
                        std::thread::spawn(move || spoof(to));
                    }
                    Err(_) => log::warn!(arg; "hostile test agent: spoof=<ip>:<port>"),
                },
                "console-flood" => {
                    std::thread::spawn(|| {
                        use std::io::Write;
                        if let Ok(mut c) =
                            std::fs::OpenOptions::new().write(true).open("/dev/console")
                        {
                            let line = [b'y'; 4095];
                            while c.write_all(&line).and_then(|()| c.write_all(b"\n")).is_ok() {}
                        }
                    });
                }
                other => log::warn!(command = other; "hostile test agent: unknown command"),
            }
        }
        out
    }

    pub fn ignores_kill(&self, id: &str) -> bool {
        self.ignore_kill.lock().unwrap().contains(id)
    }

    pub fn oversized(&self, id: &str) -> bool {
        self.oversized.lock().unwrap().contains(id)
    }

    /// Before the Delete of `id`: the share tricks, if armed.
    pub fn before_delete(&self, id: &str) {
        if !self.share_tricks.lock().unwrap().remove(id) {
            return;
        }
        let share = Path::new(GUEST_SHARE_DIR);
        let at = share.join(id);
        let moved = share.join(format!("{id}\tmoved\nhere"));
        let renamed = std::fs::rename(&at, &moved);
        let fifo = nix::unistd::mkfifo(&at, nix::sys::stat::Mode::from_bits_truncate(0o600));
        let link = std::os::unix::fs::symlink("/", share.join(format!("{id}-link")));
        let inner = std::os::unix::fs::symlink("/", moved.join("mounts").join("planted"));
        log::warn!(id, renamed:? = renamed, fifo:? = fifo, link:? = link, inner:? = inner; "hostile test agent: share tricks played");
    }
}

/// Send `genuine`, then the two spoofs, a few times each (the first may wait on ARP).
fn spoof(to: std::net::SocketAddrV4) {
    let send = |from: std::net::Ipv4Addr, what: &str| {
        let sent = std::net::UdpSocket::bind((from, 0)).and_then(|s| {
            for _ in 0..3 {
                s.send_to(what.as_bytes(), to)?;
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(())
        });
        log::warn!(what, sent:? = sent; "hostile test agent: spoof");
    };
    let own = std::net::Ipv4Addr::UNSPECIFIED;
    send(own, "genuine");
    let fake = std::net::Ipv4Addr::from(u32::from(*to.ip()) ^ 0x40);
    match crate::net::add_alias(fake) {
        Ok(()) => send(fake, "spoofed-ip"),
        Err(e) => log::warn!(error:% = e; "hostile test agent: alias"),
    }
    match crate::net::change_mac("02:00:00:00:00:99") {
        Ok(()) => send(own, "spoofed-mac"),
        Err(e) => log::warn!(error:% = e; "hostile test agent: MAC"),
    }
}

/// Stop answering and stop reading: in 2 s every worker thread of the runtime blocks
/// for good, so no request is read, answered or polled again.
fn mute() {
    let handle = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        log::warn!("hostile test agent: muted");
        for _ in 0..8 {
            handle.spawn(async {
                std::thread::sleep(Duration::MAX);
            });
        }
    });
}
