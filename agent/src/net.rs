//! The guest's network: loopback, and the NIC that took over the pod's interface (its
//! MAC is set by QEMU; address, MTU and routes come with CreateSandbox). IPv4, through
//! the classic ioctls: no netlink library in PID 1.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use stockade_runtime::{Error, Result};

fn sock() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::io("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= r.ifr_name.len() {
        return Err(Error::InvalidArgument(format!("interface name {name:?}")));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the API is used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<()> {
    // SAFETY: every caller passes the struct the request expects, alive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } < 0 {
        return Err(Error::Backend(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn set_up(fd: &OwnedFd, name: &str) -> Result<()> {
    let mut r = ifreq(name)?;
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "get flags",
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS,
        (&mut r as *mut libc::ifreq).cast(),
        "set flags",
    )
}

pub fn loopback_up() {
    if let Err(e) = sock().and_then(|s| set_up(&s, "lo")) {
        log::warn!(error:% = e; "cannot bring lo up");
    }
}

/// The guest's one NIC (virtio-net), if QEMU gave it one: the interface a virtio_net
/// driver backs, never a virtual one (a kernel with dummy built in makes `dummy0`).
fn nic_name() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_link(format!("/sys/class/net/{n}/device/driver"))
            .is_ok_and(|d| d.file_name().is_some_and(|f| f == "virtio_net"))
    })
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u32)> {
    let (ip, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("address {s:?}")))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| Error::InvalidArgument(format!("prefix in {s:?}")))?;
    Ok((ip, prefix))
}

fn mask(prefix: u32) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    })
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::InvalidArgument(format!("MAC {s:?}")))?;
    parts
        .try_into()
        .map_err(|_| Error::InvalidArgument(format!("MAC {s:?}")))
}

fn set_mac(fd: &OwnedFd, name: &str, mac: &str) -> Result<()> {
    let bytes = parse_mac(mac)?;
    let mut r = ifreq(name)?;
    // SAFETY: sockaddr is plain old data; all zeroes is a valid value.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (d, b) in hw.sa_data.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    r.ifr_ifru.ifru_hwaddr = hw;
    ioctl(
        fd,
        libc::SIOCSIFHWADDR,
        (&mut r as *mut libc::ifreq).cast(),
        "set MAC",
    )
}

/// The hostile test agent's spoofing: `ip` as a second address of the NIC (an alias).
#[cfg(feature = "hostile")]
pub fn add_alias(ip: Ipv4Addr) -> Result<()> {
    let name = nic_name().ok_or_else(|| Error::FailedPrecondition("no NIC".into()))?;
    let fd = sock()?;
    let mut r = ifreq(&format!("{name}:9"))?;
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(
        &fd,
        libc::SIOCSIFADDR,
        (&mut r as *mut libc::ifreq).cast(),
        "add alias",
    )
}

/// The hostile test agent's spoofing: a MAC the host did not give the NIC.
#[cfg(feature = "hostile")]
pub fn change_mac(mac: &str) -> Result<()> {
    let name = nic_name().ok_or_else(|| Error::FailedPrecondition("no NIC".into()))?;
    set_mac(&sock()?, &name, mac)
}

/// Configure the NIC: the pod interface's MAC and MTU, the first IPv4 address, up,
/// then the routes.
pub fn configure(
    mac: &str,
    mtu: u32,
    addresses: &[String],
    routes: &[(String, String)],
) -> Result<()> {
    let name = nic_name().ok_or_else(|| {
        Error::FailedPrecondition("the pod has a network but the guest has no NIC".into())
    })?;
    let fd = sock()?;
    if !mac.is_empty() {
        set_mac(&fd, &name, mac)?;
    }
    let mut r = ifreq(&name)?;
    r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(
        &fd,
        libc::SIOCSIFMTU,
        (&mut r as *mut libc::ifreq).cast(),
        "set mtu",
    )?;
    if let Some(first) = addresses.first() {
        let (ip, prefix) = parse_cidr(first)?;
        let mut r = ifreq(&name)?;
        r.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(
            &fd,
            libc::SIOCSIFADDR,
            (&mut r as *mut libc::ifreq).cast(),
            "set address",
        )?;
        let mut r = ifreq(&name)?;
        r.ifr_ifru.ifru_netmask = sockaddr(mask(prefix));
        ioctl(
            &fd,
            libc::SIOCSIFNETMASK,
            (&mut r as *mut libc::ifreq).cast(),
            "set netmask",
        )?;
    }
    if addresses.len() > 1 {
        log::warn!(extra:? = &addresses[1..]; "only the first IPv4 address is configured");
    }
    set_up(&fd, &name)?;
    for (dest, gateway) in routes {
        let (dst, prefix) = if dest == "default" {
            (Ipv4Addr::UNSPECIFIED, 0)
        } else {
            parse_cidr(dest)?
        };
        let gw: Ipv4Addr = gateway
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("gateway {gateway:?}")))?;
        // SAFETY: rtentry is plain old data; all zeroes is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(dst);
        rt.rt_genmask = sockaddr(mask(prefix));
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(
            &fd,
            libc::SIOCADDRT,
            (&mut rt as *mut libc::rtentry).cast(),
            "add route",
        )?;
    }
    log::info!(nic = name.as_str(), addresses:? = addresses, mtu; "network configured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_masks() {
        assert_eq!(
            parse_cidr("172.17.0.2/16").unwrap(),
            ("172.17.0.2".parse().unwrap(), 16)
        );
        assert!(parse_cidr("172.17.0.2/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
        assert_eq!(mask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("02:42:ac").is_err());
    }
}
