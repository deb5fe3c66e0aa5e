//! Pod networking into the VM: inside the pod's network namespace (made by Docker or
//! CNI), a tap device next to the pod's interface, with tc mirroring every frame both
//! ways (ingress qdisc + mirred redirect). QEMU gets the tap's fd; the guest's NIC gets
//! the interface's MAC, addresses, routes and MTU, so to the network the VM is the pod.
//!
//! The namespace is entered on a short-lived thread of its own; `ip` and `tc` run from
//! that thread (children inherit its namespace). Their exits are collected through the
//! process's exit registry, because the shim's reaper owns `waitpid`.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exits::Exits;

pub const TAP_NAME: &str = "stk-tap0";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// IPv4 addresses as `a.b.c.d/prefix`.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or `a.b.c.d/prefix`.
    pub dest: String,
    pub gateway: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub interface: Interface,
    pub routes: Vec<Route>,
}

/// A pod's network as the VM gets it.
pub struct PodNetwork {
    pub netns: PathBuf,
    /// Made by Stockade (removed with the sandbox) rather than given by the spec.
    pub owned: bool,
    /// None until wired (after the hooks, where there are hooks).
    pub config: Option<NetConfig>,
}

/// Run `cmd` with `input` on its stdin; its stdout, or an error with its stderr.
fn run_tool(exits: &Exits, cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::{Read, Write};
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("run {what}")))?;
    let exit = exits.subscribe(child.id() as i32);
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    // Whoever reaps it (the shim's reaper, or we when there is none) reports the code.
    let code = match child.wait() {
        Ok(status) => status.code().unwrap_or(255),
        Err(_) => exit.blocking_recv().unwrap_or(255),
    };
    if code != 0 {
        return Err(Error::Backend(format!(
            "{what} failed ({code}): {}",
            err.trim()
        )));
    }
    Ok(out)
}

fn ip(exits: &Exits, args: &[&str]) -> Result<String> {
    run_tool(exits, Command::new("ip").args(args), "")
}

fn tc(exits: &Exits, args: &[&str]) -> Result<String> {
    run_tool(exits, Command::new("tc").args(args), "")
}

/// One `tc -batch -` for several commands (one process instead of one each): it stops
/// at the first that fails.
fn tc_batch(exits: &Exits, commands: &[Vec<&str>]) -> Result<String> {
    let input: String = commands.iter().map(|c| c.join(" ") + "\n").collect();
    run_tool(exits, Command::new("tc").args(["-batch", "-"]), &input)
}

/// Run `f` on a new thread that has joined the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = File::open(netns).map_err(Error::io(format!("open {}", netns.display())))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Backend(format!("enter network namespace: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| Error::Backend("network setup thread panicked".into()))?
}

/// Parse `ip -j -batch -` of `addr show` and `route show`: the pod's interface and
/// its routes (see [`parse_interface`] and [`parse_routes`]).
fn parse_config(json: &str) -> Option<NetConfig> {
    let mut outputs = serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>();
    let links = outputs.next()?.ok()?;
    let routes = outputs.next().and_then(|r| r.ok()).unwrap_or_default();
    let interface = parse_interface(&links)?;
    let routes = parse_routes(&routes, &interface.name);
    Some(NetConfig { interface, routes })
}

/// Parse `ip -j addr show`: the first Ethernet interface with an IPv4 address.
fn parse_interface(links: &serde_json::Value) -> Option<Interface> {
    links.as_array()?.iter().find_map(|l| {
        if l["link_type"] != "ether" || l["ifname"] == TAP_NAME {
            return None;
        }
        let addresses: Vec<String> = l["addr_info"]
            .as_array()?
            .iter()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        if addresses.is_empty() {
            return None;
        }
        Some(Interface {
            name: l["ifname"].as_str()?.to_string(),
            mac: l["address"].as_str()?.to_string(),
            mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
            addresses,
        })
    })
}

/// Parse `ip -j route show` (IPv4's main table): the routes through `dev` that have a
/// gateway.
fn parse_routes(routes: &serde_json::Value, dev: &str) -> Vec<Route> {
    routes
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|r| r["dev"] == dev)
        .filter_map(|r| {
            Some(Route {
                dest: r["dst"].as_str()?.to_string(),
                gateway: r["gateway"].as_str()?.to_string(),
            })
        })
        .collect()
}

fn open_tap(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(Error::io("open /dev/net/tun"))?;
    // struct ifreq: 16 bytes of name, then the flags (short) in the union.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags: libc::c_short =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads (and writes back) an ifreq-sized buffer we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(Error::io("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    Ok(tun.into())
}

/// Make a tap in the namespace at `netns`, up; its queue fd is for QEMU.
pub fn create_tap(netns: &Path, exits: &Exits) -> Result<OwnedFd> {
    let exits = exits.clone();
    in_netns(netns, move || {
        let tap = open_tap(TAP_NAME)?;
        ip(&exits, &["link", "set", TAP_NAME, "up"])?;
        Ok(tap)
    })
}

/// A tap `name` in the namespace at `netns`, left down: a warm-pool VM's in the pool's
/// namespace (nothing crosses it until a pod claims the VM), or a pod's own that
/// [`mirror`] sets up once QEMU boots with it.
pub fn create_tap_down(netns: &Path, name: &str) -> Result<OwnedFd> {
    let name = name.to_string();
    in_netns(netns, move || open_tap(&name))
}

/// A claimed warm-pool VM's tap into the pod's namespace: moved out of the pool's
/// (`pool_netns`), renamed [`TAP_NAME`], given the pod interface's `mtu` (none: the
/// tap's own) and set up, all in one request; [`mirror`] (or [`wire`]) then wires it
/// as any other. On failure it is left in the pool's namespace, where it goes with
/// its VM.
pub fn claim_tap(
    pool_netns: &Path,
    name: &str,
    netns: &Path,
    mtu: Option<u32>,
    exits: &Exits,
) -> Result<()> {
    let (parked, target, ex) = (name.to_string(), netns.display().to_string(), exits.clone());
    in_netns(pool_netns, move || {
        let mtu = mtu.map(|m| m.to_string());
        let mut args = vec![
            "link", "set", "dev", &parked, "netns", &target, "name", TAP_NAME,
        ];
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.push("up");
        ip(&ex, &args).map(|_| ())
    })
}

/// A claimed warm-pool VM's tap, deleted from the pool's namespace (`pool_netns`): the
/// pod has no network of its own, and the guest's NIC stays without a backend.
pub fn drop_parked_tap(pool_netns: &Path, name: &str, exits: &Exits) -> Result<()> {
    let (name, ex) = (name.to_string(), exits.clone());
    in_netns(pool_netns, move || {
        ip(&ex, &["link", "del", "dev", &name]).map(|_| ())
    })
}

/// The pod's interface and routes in the namespace at `netns` (one `ip`), as the guest
/// gets them. `None` when it has no interface with an IPv4 address (`--network none`).
pub fn read_config(netns: &Path, exits: &Exits) -> Result<Option<NetConfig>> {
    let exits = exits.clone();
    in_netns(netns, move || {
        let out = run_tool(
            &exits,
            Command::new("ip").args(["-j", "-batch", "-"]),
            "addr show\nroute show\n",
        )?;
        Ok(parse_config(&out))
    })
}

/// Mirror the pod's `interface` and the tap (up, with the interface's MTU: `set_mtu`
/// unless it has it already) onto each other: one `tc` for every filter.
pub fn mirror(netns: &Path, interface: &Interface, set_mtu: bool, exits: &Exits) -> Result<()> {
    let (exits, interface) = (exits.clone(), interface.clone());
    in_netns(netns, move || {
        let dev = interface.name.as_str();
        let mtu = interface.mtu.to_string();
        if set_mtu {
            ip(&exits, &["link", "set", TAP_NAME, "mtu", &mtu, "up"])?;
        }
        // Into the guest: every frame. Out of the guest: only what carries its own MAC
        // and addresses.
        let frames = guest_frames(&interface)?;
        let mut commands = vec![
            vec!["qdisc", "add", "dev", dev, "ingress"],
            mirror_filter(dev, TAP_NAME, "1", "all", &[]),
            vec!["qdisc", "add", "dev", TAP_NAME, "ingress"],
        ];
        for (prio, protocol, matches) in &frames {
            commands.push(mirror_filter(TAP_NAME, dev, prio, protocol, matches));
        }
        if let Err(e) = tc_batch(&exits, &commands) {
            let _ = tc(&exits, &["qdisc", "del", "dev", dev, "ingress"]);
            let _ = tc(&exits, &["qdisc", "del", "dev", TAP_NAME, "ingress"]);
            return Err(e);
        }
        Ok(())
    })
}

/// [`read_config`], then [`mirror`] the tap already in the namespace.
pub fn wire(netns: &Path, exits: &Exits) -> Result<Option<NetConfig>> {
    let Some(config) = read_config(netns, exits)? else {
        return Ok(None);
    };
    mirror(netns, &config.interface, true, exits)?;
    Ok(Some(config))
}

/// `tc filter add dev <from> ingress ... u32 <matches> action mirred egress redirect
/// dev <to>` (no matches: every frame of `protocol`).
fn mirror_filter<'a>(
    from: &'a str,
    to: &'a str,
    prio: &'a str,
    protocol: &'a str,
    matches: &'a [String],
) -> Vec<&'a str> {
    let mut a = vec![
        "filter", "add", "dev", from, "parent", "ffff:", "prio", prio, "protocol", protocol, "u32",
    ];
    if matches.is_empty() {
        a.extend(["match", "u32", "0", "0"]);
    }
    a.extend(matches.iter().map(String::as_str));
    a.extend(["action", "mirred", "egress", "redirect", "dev", to]);
    a
}

/// The frames the guest may send, as u32 filters (priority, protocol, matches): IPv4
/// from one of its addresses and ARP claiming one of them, each with its MAC as the
/// Ethernet source (and ARP sender). Nothing else is mirrored out: a spoofed source
/// MAC or IP, ARP for an address the guest does not own, and every other protocol stay
/// on the tap, where nothing routes them. u32 offsets count from the network header
/// (negative: the Ethernet header), the only classifier every kernel has.
fn guest_frames(interface: &Interface) -> Result<Vec<(String, &'static str, Vec<String>)>> {
    let mac: Vec<u8> = interface
        .mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .ok()
        .filter(|m: &Vec<u8>| m.len() == 6)
        .ok_or_else(|| Error::Backend(format!("pod MAC {:?}", interface.mac)))?;
    let hi = format!("0x{:02x}{:02x}{:02x}{:02x}", mac[0], mac[1], mac[2], mac[3]);
    let lo = format!("0x{:02x}{:02x}", mac[4], mac[5]);
    let m = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let eth_src = m(&[
        "match",
        "u32",
        &hi,
        "0xffffffff",
        "at",
        "-8",
        "match",
        "u16",
        &lo,
        "0xffff",
        "at",
        "-4",
    ]);
    let mut out = Vec::new();
    for (n, cidr) in interface.addresses.iter().enumerate() {
        let ip = cidr.split('/').next().unwrap_or_default();
        let ip4: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| Error::Backend(format!("pod address {cidr:?}")))?;
        // u32 keys sit on 4-byte boundaries: the sender address (at 14) is two halves.
        let ip_hi = format!("0x{:04x}", u32::from(ip4) >> 16);
        let ip_lo = format!("0x{:04x}", u32::from(ip4) & 0xffff);
        let mut ipv4 = m(&["match", "ip", "src", &format!("{ip}/32")]);
        ipv4.extend(eth_src.clone());
        // ARP: sender hardware address at 8, sender protocol address at 14.
        let mut arp = m(&[
            "match",
            "u16",
            &ip_hi,
            "0xffff",
            "at",
            "14",
            "match",
            "u16",
            &ip_lo,
            "0xffff",
            "at",
            "16",
            "match",
            "u32",
            &hi,
            "0xffffffff",
            "at",
            "8",
            "match",
            "u16",
            &lo,
            "0xffff",
            "at",
            "12",
        ]);
        arp.extend(eth_src.clone());
        out.push(((10 + 2 * n).to_string(), "ip", ipv4));
        out.push(((11 + 2 * n).to_string(), "arp", arp));
    }
    Ok(out)
}

/// A network namespace of the runtime's own, bind-mounted at `path`: for specs that ask
/// for a new namespace and let their hooks configure it (Docker's libnetwork hook).
pub fn create_netns(path: &Path) -> Result<()> {
    std::fs::File::create(path).map_err(Error::io(format!("create {}", path.display())))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Backend(format!("new network namespace: {e}")))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::Backend(format!("pin network namespace: {e}")))
    })
    .join()
    .map_err(|_| Error::Backend("netns thread panicked".into()))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// `argv[1]` of the process that stands for a VM container in the network namespace
/// Stockade made for it (see [`spawn_holder`]).
pub const NETNS_HOLDER_ARG: &str = "__stockade-netns-holder";

/// The holder's whole life: asleep until killed.
pub fn holder_main() -> ! {
    loop {
        nix::unistd::pause();
    }
}

/// A process of this binary asleep in `netns`: the host pid the runtime reports for a
/// VM container whose network namespace is Stockade's, so that whoever configures
/// `/proc/<pid>/ns/net` (Docker 28 and later, between create and start) configures the
/// pod's namespace rather than whatever host process shares the guest's pid.
pub fn spawn_holder(netns: &Path) -> Result<crate::vm::watched::Watched> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(netns).map_err(Error::io("open netns"))?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(NETNS_HOLDER_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec the child makes one async-signal-safe system call,
    // setns(2), on an fd that `ns` keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(Error::io("spawn the netns holder"))?;
    drop(ns);
    crate::vm::watched::Watched::new("netns holder", child)
}

pub fn remove_netns(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// The `iptables` rule that sends the namespace's loopback TCP (to 127.0.0.1, any port)
/// to `to_port`: how a dial of `localhost:<port>` there (the CRI's PortForward) reaches
/// the port forwarder.
fn redirect_rule(action: &str, to_port: u16) -> Vec<String> {
    let to = to_port.to_string();
    [
        "-w",
        "5",
        "-t",
        "nat",
        action,
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "-j",
        "REDIRECT",
        "--to-ports",
        &to,
    ]
    .map(String::from)
    .to_vec()
}

/// In the namespace at `netns`: a listener on 127.0.0.1 (a port the kernel picks) that
/// every TCP connection to 127.0.0.1 in the namespace is redirected to.
pub fn listen_loopback(netns: &Path, exits: &Exits) -> Result<std::net::TcpListener> {
    let exits = exits.clone();
    in_netns(netns, move || {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::io(
            "listen on 127.0.0.1 in the pod's network namespace",
        ))?;
        let port = listener
            .local_addr()
            .map_err(Error::io("port forwarder address"))?
            .port();
        let args = redirect_rule("-A", port);
        run_tool(&exits, Command::new("iptables").args(&args), "")?;
        Ok(listener)
    })
}

/// Remove [`listen_loopback`]'s rule, where the namespace still exists.
pub fn remove_loopback_redirect(netns: &Path, port: u16, exits: &Exits) {
    if netns.exists() {
        let exits = exits.clone();
        let _ = in_netns(netns, move || {
            let args = redirect_rule("-D", port);
            run_tool(&exits, Command::new("iptables").args(&args), "").map(|_| ())
        });
    }
}

/// Undo `attach` where the namespace still exists (the tap goes with its last fd).
pub fn detach(net: &PodNetwork, exits: &Exits) {
    if net.netns.exists() {
        let exits = exits.clone();
        let dev = net.config.as_ref().map(|c| c.interface.name.clone());
        let _ = in_netns(&net.netns, move || {
            if let Some(dev) = dev {
                let _ = tc(&exits, &["qdisc", "del", "dev", &dev, "ingress"]);
            }
            let _ = tc(&exits, &["qdisc", "del", "dev", TAP_NAME, "ingress"]);
            let _ = ip(&exits, &["link", "del", TAP_NAME]);
            Ok(())
        });
    }
    if net.owned {
        remove_netns(&net.netns);
    }
}

/// Run OCI hooks on the host (Docker's libnetwork-setkey among them) with the state of
/// a sandbox whose host-side process is `pid` (QEMU, which sits in the pod's netns).
pub fn run_hooks(hooks: &[oci_spec::runtime::Hook], state_json: &str, exits: &Exits) -> Result<()> {
    use std::os::unix::process::CommandExt;
    for h in hooks {
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some(a0) = args.first() {
                cmd.arg0(a0);
            }
            cmd.args(args.iter().skip(1));
        }
        if let Some(env) = h.env() {
            cmd.env_clear();
            for kv in env {
                if let Some((k, v)) = kv.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        run_tool(exits, &mut cmd, state_json)
            .map_err(|e| Error::Backend(format!("hook {}: {e}", h.path().display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_interface_and_its_routes_are_read_from_ip_json() {
        // `ip -j -batch -` prints each command's array, one after the other.
        let out = r#"[{"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","mtu":65536,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifname":"eth0","link_type":"ether","address":"02:42:ac:11:00:02","mtu":1450,"addr_info":[{"family":"inet","local":"172.17.0.2","prefixlen":16},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]
[{"dst":"default","gateway":"172.17.0.1","dev":"eth0"},{"dst":"172.17.0.0/16","dev":"eth0","scope":"link"},{"dst":"default","gateway":"10.0.0.1","dev":"eth1"}]
"#;
        let c = parse_config(out).unwrap();
        assert_eq!(c.interface.name, "eth0");
        assert_eq!(c.interface.mac, "02:42:ac:11:00:02");
        assert_eq!(c.interface.mtu, 1450);
        assert_eq!(c.interface.addresses, vec!["172.17.0.2/16".to_string()]);
        assert_eq!(
            c.routes,
            vec![Route {
                dest: "default".into(),
                gateway: "172.17.0.1".into()
            }]
        );
        let only_lo = r#"[{"ifname":"lo","link_type":"loopback","addr_info":[]}] []"#;
        assert_eq!(parse_config(only_lo), None);
        assert_eq!(parse_config(""), None);
    }

    #[test]
    fn only_the_guests_own_mac_and_addresses_leave_the_tap() {
        let i = Interface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1500,
            addresses: vec!["172.17.0.2/16".into()],
        };
        let f = guest_frames(&i).unwrap();
        assert_eq!(f.len(), 2);
        let ipv4 = f[0].2.join(" ");
        assert_eq!(f[0].1, "ip");
        assert!(ipv4.contains("match ip src 172.17.0.2/32"), "{ipv4}");
        assert!(
            ipv4.contains("match u32 0x0242ac11 0xffffffff at -8"),
            "{ipv4}"
        );
        assert!(ipv4.contains("match u16 0x0002 0xffff at -4"), "{ipv4}");
        let arp = f[1].2.join(" ");
        assert_eq!(f[1].1, "arp");
        assert!(
            arp.contains("match u16 0xac11 0xffff at 14 match u16 0x0002 0xffff at 16"),
            "{arp}"
        );
        assert!(
            arp.contains("match u32 0x0242ac11 0xffffffff at 8"),
            "{arp}"
        );
        let args = mirror_filter("stk-tap0", "eth0", &f[0].0, f[0].1, &f[0].2).join(" ");
        assert!(args.starts_with(
            "filter add dev stk-tap0 parent ffff: prio 10 protocol ip u32 match ip src"
        ));
        assert!(args.ends_with("action mirred egress redirect dev eth0"));
        let bad = Interface {
            mac: "nope".into(),
            ..i
        };
        assert!(guest_frames(&bad).is_err());
    }
}
