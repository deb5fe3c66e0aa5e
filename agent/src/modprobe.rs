//! The guest's modprobe. A pod uses a kernel feature that is built as a module (a bridge,
//! a veth pair, nftables, a tun device, …) and the kernel asks for the module by name or
//! alias (`request_module`: `rtnl-link-bridge`, `nft-chain-2-nat`, `char-major-10-200`)
//! by running `/proc/sys/kernel/modprobe`, which the agent points at itself: the kernel
//! runs `/init -q -- <name>`. The modules ship in `/lib/modules/stockade` with two tables
//! the guest build writes (`packaging/guest/build.sh`): `modules.alias` (`<pattern>
//! <module>`, the kernel's aliases of the shipped modules) and `modules.dep` (`<module>:
//! <what it needs, in load order>`).

use std::os::fd::AsRawFd;
use std::path::Path;

pub const DIR: &str = "/lib/modules/stockade";

/// Whether the agent was started as the kernel's modprobe.
pub fn called_as_modprobe(args: &[String]) -> bool {
    args.get(1).map(String::as_str) == Some("-q") && args.get(2).map(String::as_str) == Some("--")
}

/// `/init -q -- <name>`: load what `name` stands for. 0 when loaded (or already there).
pub fn main(args: &[String]) -> i32 {
    let Some(name) = args.get(3) else { return 1 };
    match load(Path::new(DIR), name) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stockade-agent modprobe {name}: {e}");
            1
        }
    }
}

/// Module names treat `-` and `_` alike.
fn normal(name: &str) -> String {
    name.replace('-', "_")
}

/// `*`, `?` and `[...]` as the kernel's aliases use them.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(b'['), Some(c)) => match pattern.iter().position(|b| *b == b']') {
            Some(end) => pattern[1..end].contains(c) && glob(&pattern[end + 1..], &text[1..]),
            None => false,
        },
        (Some(p), Some(c)) => p == c && glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// The module `name` is, or stands for (an alias).
fn resolve(dir: &Path, name: &str) -> Option<String> {
    if dir.join(format!("{}.ko", normal(name))).exists() {
        return Some(normal(name));
    }
    let aliases = std::fs::read_to_string(dir.join("modules.alias")).ok()?;
    aliases.lines().find_map(|l| {
        let (pattern, module) = l.split_once(' ')?;
        glob(pattern.as_bytes(), name.as_bytes()).then(|| normal(module.trim()))
    })
}

/// Load `name` (a module or an alias) and what it needs, first to last.
pub fn load(dir: &Path, name: &str) -> std::io::Result<()> {
    let module = resolve(dir, name).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such module in this guest")
    })?;
    let deps = std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default();
    let needs: Vec<String> = deps
        .lines()
        .find_map(|l| {
            let (m, rest) = l.split_once(':')?;
            (normal(m.trim()) == module).then(|| rest.split_whitespace().map(normal).collect())
        })
        .unwrap_or_default();
    for m in needs.iter().chain(std::iter::once(&module)) {
        let file = std::fs::File::open(dir.join(format!("{m}.ko")))?;
        // SAFETY: finit_module with an open module fd and an empty, NUL-terminated
        // parameter string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    Ok(())
}

/// Point the kernel's usermode modprobe at the agent.
pub fn install() {
    let knob = std::path::Path::new("/proc/sys/kernel/modprobe");
    // A kernel without module support (the Stockade kernel) has everything built in.
    if !knob.exists() {
        return;
    }
    if let Err(e) = std::fs::write(knob, "/init") {
        eprintln!("stockade-agent: cannot set the kernel's modprobe: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_match_as_the_kernel_writes_them() {
        assert!(glob(b"rtnl-link-bridge", b"rtnl-link-bridge"));
        assert!(glob(b"nft-chain-2-*", b"nft-chain-2-nat"));
        assert!(glob(b"char-major-10-20[0-9]", b"char-major-10-200"));
        assert!(glob(b"net-pf-?-proto-*", b"net-pf-2-proto-6"));
        assert!(!glob(b"rtnl-link-bridge", b"rtnl-link-bridg"));
        assert!(!glob(b"nft-chain-2-*", b"nft-chain-10-nat"));
    }

    #[test]
    fn a_module_and_its_needs_load_first_to_last() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bridge.ko"), "").unwrap();
        std::fs::write(
            dir.path().join("modules.alias"),
            "rtnl-link-bridge bridge\n",
        )
        .unwrap();
        assert_eq!(
            resolve(dir.path(), "rtnl-link-bridge").as_deref(),
            Some("bridge")
        );
        assert_eq!(resolve(dir.path(), "bridge").as_deref(), Some("bridge"));
        assert_eq!(resolve(dir.path(), "nope"), None);
        assert!(called_as_modprobe(&[
            "/init".into(),
            "-q".into(),
            "--".into(),
            "x".into()
        ]));
        assert!(!called_as_modprobe(&["/init".into()]));
    }
}
