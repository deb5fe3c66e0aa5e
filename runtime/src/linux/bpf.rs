//! Seccomp filters compiled to BPF once per profile, not once per process.
//!
//! libcontainer compiles a profile with libseccomp in every process that loads it (the
//! container's init, every exec): under TCG that is about 70 ms for Stockade's guard
//! and default profile together. Here a profile is compiled by the runtime when the
//! container is created, cached in memory by its content, and saved with the
//! container's filters; its processes load the program with one `seccomp(2)` call.
//!
//! The translation is libcontainer 0.7's (same actions, the same errno default, the
//! same argument comparisons: `valueTwo` is MASKED_EQ's mask, one rule per comparison
//! when an argument index repeats, unknown syscall names skipped, rules with the
//! default action dropped, no-new-privileges left to the spec). A profile it cannot
//! compile exactly — filter flags, which need the load call's flags, or a notify action
//! — is left to libcontainer.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use crate::error::{Error, Result};

fn cache() -> &'static Mutex<HashMap<u64, Arc<Vec<u8>>>> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<Vec<u8>>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Bounds the cache: a node sees few distinct profiles; a flood of custom ones is
/// compiled each time rather than kept.
const MAX_CACHED: usize = 64;

/// The BPF program of `profile` (native-endian `struct sock_filter`s), from the cache
/// when it was compiled before; None when only libcontainer can load it.
pub fn compile(profile: &LinuxSeccomp) -> Result<Option<Arc<Vec<u8>>>> {
    let key = {
        let text = serde_json::to_string(profile).map_err(|e| Error::Backend(e.to_string()))?;
        let mut h = std::hash::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    };
    if let Some(p) = cache().lock().expect("bpf cache").get(&key) {
        return Ok(Some(p.clone()));
    }
    // One build at a time: a create that needs the profile the guest agent's warm-up is
    // compiling waits for that result (the warm-up thread, however low its priority,
    // then has the CPU) rather than compiling it a second time beside it.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().expect("bpf build lock");
    if let Some(p) = cache().lock().expect("bpf cache").get(&key) {
        return Ok(Some(p.clone()));
    }
    let Some(program) = build(profile)? else {
        return Ok(None);
    };
    let program = Arc::new(program);
    let mut c = cache().lock().expect("bpf cache");
    if c.len() < MAX_CACHED {
        c.insert(key, program.clone());
    }
    Ok(Some(program))
}

/// A program as text: two lowercase hex digits a byte.
pub fn to_hex(program: &[u8]) -> String {
    program.iter().map(|b| format!("{b:02x}")).collect()
}

/// [`to_hex`]'s text back; None if it is not whole bytes of hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// The cache as text, one `<key> <program>` line (both hex) per profile: a guest's build
/// compiles Stockade's profiles once and ships them in its initramfs ([`import`]).
pub fn export() -> String {
    let cache = cache().lock().expect("bpf cache");
    let mut lines: Vec<String> = cache
        .iter()
        .map(|(k, p)| format!("{k:016x} {}\n", to_hex(p)))
        .collect();
    lines.sort();
    lines.concat()
}

/// Put the programs of an [`export`] into the cache (the same binary's: the keys hash
/// profiles as this build does); how many. A line that is not a whole program is
/// skipped.
pub fn import(text: &str) -> usize {
    /// `struct sock_filter`: 8 bytes; the kernel takes at most 4,096 of them.
    const INSN: usize = 8;
    const MAX_INSNS: usize = 4096;
    let mut cache = cache().lock().expect("bpf cache");
    let mut n = 0;
    for line in text.lines() {
        let Some((key, hex)) = line.split_once(' ') else {
            continue;
        };
        let Ok(key) = u64::from_str_radix(key, 16) else {
            continue;
        };
        let Some(program) = from_hex(hex)
            .filter(|p| !p.is_empty() && p.len() % INSN == 0 && p.len() / INSN <= MAX_INSNS)
        else {
            continue;
        };
        if cache.len() < MAX_CACHED {
            cache.insert(key, Arc::new(program));
            n += 1;
        }
    }
    n
}

fn build(profile: &LinuxSeccomp) -> Result<Option<Vec<u8>>> {
    let notify = |a: LinuxSeccompAction| a == LinuxSeccompAction::ScmpActNotify;
    let has_flags = profile.flags().as_ref().is_some_and(|f| !f.is_empty());
    let rules = profile.syscalls().clone().unwrap_or_default();
    if has_flags || notify(profile.default_action()) || rules.iter().any(|r| notify(r.action())) {
        return Ok(None);
    }
    let err = |what: &str| {
        let what = what.to_string();
        move |e: libseccomp::error::SeccompError| Error::Backend(format!("seccomp {what}: {e}"))
    };
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(err("filter"))?;
    for arch in profile.architectures().clone().unwrap_or_default() {
        let Some(a) = arch_of(arch) else {
            return Ok(None);
        };
        ctx.add_arch(a).map_err(err("architecture"))?;
    }
    ctx.set_ctl_nnp(false).map_err(err("nnp"))?;
    for rule in rules {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let Some(args) = rule.args() else {
                ctx.add_rule(act, sc).map_err(err(name))?;
                continue;
            };
            let cmps: Vec<ScmpArgCompare> = args
                .iter()
                .map(|a| {
                    ScmpArgCompare::new(a.index() as u32, op(a.op(), a.value_two()), a.value())
                })
                .collect();
            let mut seen = HashSet::new();
            if args.iter().all(|a| seen.insert(a.index())) {
                ctx.add_rule_conditional(act, sc, &cmps)
                    .map_err(err(name))?;
            } else {
                for c in &cmps {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(c))
                        .map_err(err(name))?;
                }
            }
        }
    }
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"stockade-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd for BPF")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ctx.export_bpf(&file).map_err(err("export"))?;
    use std::io::{Read, Seek};
    let mut program = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut program))
        .map_err(Error::io("read the BPF program"))?;
    Ok(Some(program))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    }
}

fn op(o: LinuxSeccompOperator, mask: Option<u64>) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(mask.unwrap_or(0)),
    }
}

/// The x86 family this runtime runs on; any other leaves the profile to libcontainer.
fn arch_of(a: Arch) -> Option<ScmpArch> {
    match a {
        Arch::ScmpArchNative => Some(ScmpArch::Native),
        Arch::ScmpArchX86 => Some(ScmpArch::X86),
        Arch::ScmpArchX86_64 => Some(ScmpArch::X8664),
        Arch::ScmpArchX32 => Some(ScmpArch::X32),
        _ => None,
    }
}

/// Load a compiled program into this thread (`seccomp(SECCOMP_SET_MODE_FILTER)`, no
/// flags): the caller holds CAP_SYS_ADMIN or has no-new-privileges set.
pub fn load(program: &[u8]) -> std::io::Result<()> {
    const INSN: usize = 8; // struct sock_filter
    if program.is_empty()
        || !program.len().is_multiple_of(INSN)
        || program.len() / INSN > u16::MAX as usize
    {
        return Err(std::io::Error::other("not a BPF program"));
    }
    let prog = libc::sock_fprog {
        len: (program.len() / INSN) as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp reads `prog` and the instructions it points to, which outlive the
    // call; SECCOMP_SET_MODE_FILTER with no flags returns 0 or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiled_profile_denies_what_it_says_and_is_cached() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                         {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap();
        let a = compile(&profile).unwrap().unwrap();
        let b = compile(&profile).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "compiled once");
        // In a child: the filter is for good.
        // SAFETY: the child only makes system calls (no allocation, no lock) and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: raw system calls with integer arguments, then _exit.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    let ok = load(&a).is_ok()
                        && libc::syscall(libc::SYS_getppid) == -1
                        && std::io::Error::last_os_error().raw_os_error() == Some(38)
                        && libc::getpid() > 0;
                    libc::_exit(if ok { 0 } else { 1 })
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn flags_and_notify_are_left_to_libcontainer() {
        let flagged: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]
        }))
        .unwrap();
        assert!(compile(&flagged).unwrap().is_none());
        let notify: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }))
        .unwrap();
        assert!(compile(&notify).unwrap().is_none());
    }

    #[test]
    fn exported_programs_come_back_and_broken_lines_do_not() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpgid"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap();
        let program = compile(&profile).unwrap().unwrap();
        let text = export();
        let hex = to_hex(&program);
        let line = text
            .lines()
            .find(|l| l.ends_with(&format!(" {hex}")))
            .expect("exported");
        assert!(import(line) == 1, "a whole program comes back");
        for broken in [
            "zz 0011223344556677".to_string(),
            "0000000000000001 00112233".to_string(),
            "0000000000000002 0g11223344556677".to_string(),
            "0000000000000003".to_string(),
            format!("0000000000000004 {}", "00".repeat(8 * 4097)),
        ] {
            assert_eq!(import(&broken), 0, "{}", &broken[..broken.len().min(40)]);
        }
    }
}
