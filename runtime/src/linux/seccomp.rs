//! Stockade's default seccomp profile and the extra deny list.
//!
//! The default profile follows moby's default for a container without CAP_SYS_ADMIN:
//! an allow list, EPERM for everything else, `clone` without namespace flags, `clone3`
//! answering ENOSYS (so libcs fall back to `clone`), a restricted `personality`.
//! The extra deny list is a second filter, the guard, loaded on top of any profile, the
//! spec's own included.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::error::{Error, Result};

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Namespace flags that `clone` may not carry (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC |
/// NEWUSER | NEWPID | NEWNET), as in moby's profile.
const CLONE_NS_MASK: u64 = 0x7E02_0000;

/// Syscalls denied in every container, whatever profile the spec brings.
pub const EXTRA_DENY: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "pivot_root",
    "lookup_dcookie",
    "quotactl",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
];

/// Socket families a container may never open: AF_VSOCK (it could reach a VM agent),
/// AF_ALG (kernel crypto attack surface), AF_RXRPC.
pub const DENIED_SOCKET_FAMILIES: &[u64] = &[
    libc::AF_VSOCK as u64,
    libc::AF_ALG as u64,
    libc::AF_RXRPC as u64,
];

const ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chroot",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setdomainname",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "sethostname",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Socket families above AF_RXRPC (33) that stay allowed; everything below 33 is allowed,
/// AF_RXRPC, AF_ALG (38) and AF_VSOCK (40) are not.
const ALLOWED_HIGH_FAMILIES: &[u64] = &[34, 35, 36, 37, 39, 41, 42, 43, 44, 45];

/// Allow rules for socket(2): one comparison each, so no unconditional `socket` rule
/// competes with a conditional one (libseccomp refuses mixing those with different actions).
fn socket_allow_rules() -> Result<Vec<LinuxSyscall>> {
    let mut rules = vec![rule(
        &["socket"],
        LinuxSeccompAction::ScmpActAllow,
        None,
        vec![arg(
            0,
            libc::AF_RXRPC as u64,
            0,
            LinuxSeccompOperator::ScmpCmpLt,
        )],
    )?];
    for f in ALLOWED_HIGH_FAMILIES {
        rules.push(rule(
            &["socket"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg(0, *f, 0, LinuxSeccompOperator::ScmpCmpEq)],
        )?);
    }
    Ok(rules)
}

/// personality(2) values moby allows; ADDR_NO_RANDOMIZE is not among them.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> Result<LinuxSyscall> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if let Some(errno) = errno {
        b = b.errno_ret(errno);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build()
        .map_err(|e| Error::Backend(format!("building seccomp rule: {e}")))
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("all fields set")
}

/// `(arg & mask) == datum`, encoded the way libcontainer 0.7 reads it: it takes the
/// mask from `valueTwo` and the datum from `value`, the reverse of runc and of the OCI
/// profiles Docker writes (`value` = mask). See [`to_libcontainer_encoding`].
fn masked_eq(index: usize, mask: u64, datum: u64) -> LinuxSeccompArg {
    arg(index, datum, mask, LinuxSeccompOperator::ScmpCmpMaskedEq)
}

/// Re-encode a profile written for runc (Docker's, a pod's) for libcontainer: swap
/// `value`/`valueTwo` of every SCMP_CMP_MASKED_EQ comparison. Without this, moby's
/// `clone` rule `(flags & 0x7E020000) == 0` becomes `(flags & 0) == 0x7E020000`.
pub fn to_libcontainer_encoding(profile: &mut LinuxSeccomp) {
    let Some(mut rules) = profile.syscalls().clone() else {
        return;
    };
    for r in rules.iter_mut() {
        let Some(args) = r.args().clone() else {
            continue;
        };
        let fixed = args
            .into_iter()
            .map(|a| {
                if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    masked_eq(a.index(), a.value(), a.value_two().unwrap_or(0))
                } else {
                    a
                }
            })
            .collect();
        r.set_args(Some(fixed));
    }
    profile.set_syscalls(Some(rules));
}

pub fn default_profile() -> Result<LinuxSeccomp> {
    let mut rules = vec![rule(ALLOW, LinuxSeccompAction::ScmpActAllow, None, vec![])?];
    rules.extend(socket_allow_rules()?);
    rules.push(rule(
        &["clone"],
        LinuxSeccompAction::ScmpActAllow,
        None,
        vec![masked_eq(0, CLONE_NS_MASK, 0)],
    )?);
    rules.push(rule(
        &["clone3"],
        LinuxSeccompAction::ScmpActErrno,
        Some(ENOSYS),
        vec![],
    )?);
    for p in PERSONALITIES {
        rules.push(rule(
            &["personality"],
            LinuxSeccompAction::ScmpActAllow,
            None,
            vec![arg(0, *p, 0, LinuxSeccompOperator::ScmpCmpEq)],
        )?);
    }
    profile(
        "Stockade's default profile",
        LinuxSeccompAction::ScmpActErrno,
        rules,
    )
}

/// A filter over the x86-64, i386 and x32 ABIs (a syscall from any other ABI kills the
/// process) whose `default` action answers EPERM where it denies.
fn profile(
    what: &str,
    default: LinuxSeccompAction,
    rules: Vec<LinuxSyscall>,
) -> Result<LinuxSeccomp> {
    let mut b = LinuxSeccompBuilder::default()
        .default_action(default)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules);
    if default == LinuxSeccompAction::ScmpActErrno {
        b = b.default_errno_ret(EPERM);
    }
    b.build()
        .map_err(|e| Error::Backend(format!("building {what}: {e}")))
}

/// The x86 `socketcall` multiplexer's call number for `socket(2)`.
const SYS_SOCKET: u64 = 1;

/// The guard: a filter of its own, loaded by every process of a container before the
/// spec's profile (or Stockade's default), so the kernel applies both and the stricter
/// action wins. Its default action allows; it denies:
/// - every syscall in [`EXTRA_DENY`];
/// - `clone` with any namespace flag, and `clone3` with ENOSYS (its flags sit in memory
///   seccomp cannot read, so libcs fall back to `clone`, whose flags are checked);
/// - `socket` of the families in [`DENIED_SOCKET_FAMILIES`];
/// - the i386 `socketcall(SYS_SOCKET, …)`, whose family sits in memory seccomp cannot
///   read: a 64-bit process can reach it with `int $0x80`, so a family check alone would
///   be bypassed. 32-bit programs create sockets through the direct i386 `socket`
///   syscall (checked like the 64-bit one); `socketcall`'s other calls work on sockets
///   that already exist and stay allowed.
///
/// It covers the x86-64, i386 and x32 ABIs; a syscall from any other ABI kills the
/// process (libseccomp's bad-architecture action).
pub fn guard_profile() -> Result<LinuxSeccomp> {
    let eperm =
        |names: &[&str], args| rule(names, LinuxSeccompAction::ScmpActErrno, Some(EPERM), args);
    let mut rules = vec![eperm(EXTRA_DENY, vec![])?];
    let mut flag = 1u64;
    while flag <= CLONE_NS_MASK {
        if CLONE_NS_MASK & flag != 0 {
            rules.push(eperm(&["clone"], vec![masked_eq(0, flag, flag)])?);
        }
        flag <<= 1;
    }
    rules.push(rule(
        &["clone3"],
        LinuxSeccompAction::ScmpActErrno,
        Some(ENOSYS),
        vec![],
    )?);
    for family in DENIED_SOCKET_FAMILIES {
        rules.push(eperm(
            &["socket"],
            vec![arg(0, *family, 0, LinuxSeccompOperator::ScmpCmpEq)],
        )?);
    }
    rules.push(eperm(
        &["socketcall"],
        vec![arg(0, SYS_SOCKET, 0, LinuxSeccompOperator::ScmpCmpEq)],
    )?);
    profile("the seccomp guard", LinuxSeccompAction::ScmpActAllow, rules)
}

/// Refuse what Stockade cannot honour in a spec's profile: user notification needs a
/// listener that the shim does not run.
pub fn check_spec_profile(profile: &LinuxSeccomp) -> Result<()> {
    let notify = profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify);
    if notify || profile.listener_path().is_some() {
        return Err(Error::InvalidArgument(
            "seccomp profile: SCMP_ACT_NOTIFY and listenerPath are not supported by stockade"
                .into(),
        ));
    }
    Ok(())
}

/// The filters every process of one container loads, in order, right before it runs
/// its program (see [`crate::linux::confine`]): the guard, then the spec's profile or
/// Stockade's default. Saved beside the hardened bundle, so the init and every exec
/// load the same ones.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Filters {
    pub guard: Option<LinuxSeccomp>,
    pub profile: Option<LinuxSeccomp>,
    /// Both, compiled (hex BPF, in load order) by [`compile`](Self::compile); empty: the
    /// processes compile them with libcontainer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.guard.is_none() && self.profile.is_none()
    }

    /// In load order.
    pub fn iter(&self) -> impl Iterator<Item = &LinuxSeccomp> {
        self.guard.iter().chain(self.profile.iter())
    }

    /// Compile every filter to BPF (each profile once per process, see `bpf.rs`), so
    /// the container's processes only load them. Left as they are when one of them
    /// only libcontainer can load.
    pub fn compile(&mut self) -> Result<()> {
        let mut out = Vec::new();
        for f in self.iter() {
            match crate::linux::bpf::compile(f)? {
                Some(p) => out.push(crate::linux::bpf::to_hex(&p)),
                None => return Ok(()),
            }
        }
        self.bpf = out;
        Ok(())
    }

    /// Compile Stockade's guard and default profile ahead of the first container (the
    /// guest agent does at boot, off its critical path), so its Create finds them
    /// compiled.
    pub fn warm_up() {
        for p in [guard_profile(), default_profile()].into_iter().flatten() {
            let _ = crate::linux::bpf::compile(&p);
        }
    }

    /// Stockade's guard and default profile compiled, as [`crate::linux::bpf::export`]
    /// text: what a guest's build puts in its initramfs, so that no guest compiles them.
    pub fn precompiled() -> String {
        Self::warm_up();
        crate::linux::bpf::export()
    }

    /// The compiled programs, in load order (empty when not compiled).
    pub fn programs(&self) -> std::result::Result<Vec<Vec<u8>>, String> {
        self.bpf
            .iter()
            .map(|hex| {
                crate::linux::bpf::from_hex(hex)
                    .ok_or_else(|| "compiled seccomp filter: bad hex".to_string())
            })
            .collect()
    }

    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Backend(e.to_string()))?;
        std::fs::write(path, json).map_err(Error::io(format!("write {}", path.display())))
    }

    pub fn load(path: &std::path::Path) -> Result<Filters> {
        let text = std::fs::read(path).map_err(Error::io(format!("read {}", path.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Backend(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_with(profile: &LinuxSeccomp, action: LinuxSeccompAction) -> Vec<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.action() == action)
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn default_profile_denies_by_default() {
        let p = default_profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        let allowed = names_with(&p, LinuxSeccompAction::ScmpActAllow);
        assert!(allowed.contains(&"read".to_string()));
        for denied in EXTRA_DENY {
            assert!(!allowed.contains(&denied.to_string()), "{denied} allowed");
        }
    }

    #[test]
    fn guard_denies_everything_extra_whatever_the_profile() {
        let g = guard_profile().unwrap();
        assert_eq!(g.default_action(), LinuxSeccompAction::ScmpActAllow);
        let denied = names_with(&g, LinuxSeccompAction::ScmpActErrno);
        for name in EXTRA_DENY
            .iter()
            .chain(&["clone", "clone3", "socket", "socketcall"])
        {
            assert!(denied.contains(&name.to_string()), "{name} not denied");
        }
        assert!(names_with(&g, LinuxSeccompAction::ScmpActAllow).is_empty());
        let arches = g.architectures().clone().unwrap();
        assert!(arches.contains(&Arch::ScmpArchX86) && arches.contains(&Arch::ScmpArchX32));
    }

    #[test]
    fn guard_checks_every_namespace_flag_of_clone() {
        let g = guard_profile().unwrap();
        let mut covered = 0u64;
        for r in g.syscalls().iter().flatten() {
            if r.names() == &["clone".to_string()] {
                let a = &r.args().as_ref().unwrap()[0];
                // libcontainer's encoding: mask in valueTwo, datum in value.
                assert_eq!(a.value_two(), Some(a.value()));
                covered |= a.value();
            }
        }
        assert_eq!(covered, CLONE_NS_MASK);
    }

    #[test]
    fn the_i386_socketcall_socket_is_denied() {
        let g = guard_profile().unwrap();
        let r = g
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names() == &["socketcall".to_string()])
            .unwrap();
        let a = &r.args().as_ref().unwrap()[0];
        assert_eq!((a.index(), a.value()), (0, SYS_SOCKET));
    }

    #[test]
    fn notify_profiles_are_refused() {
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap();
        assert!(check_spec_profile(&p).is_err());
        check_spec_profile(&default_profile().unwrap()).unwrap();
    }

    #[test]
    fn filters_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Filters {
            guard: Some(guard_profile().unwrap()),
            profile: Some(default_profile().unwrap()),
            bpf: Vec::new(),
        };
        f.compile().unwrap();
        assert_eq!(f.programs().unwrap().len(), 2, "both compiled");
        let path = dir.path().join("seccomp.json");
        f.save(&path).unwrap();
        assert_eq!(Filters::load(&path).unwrap(), f);
        assert_eq!(f.iter().count(), 2);
    }
}
