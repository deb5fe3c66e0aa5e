//! The pod's sandbox ("pause") container inside a VM, without libcontainer.
//!
//! In a Stockade guest the VM already is the pod: its network is the pod's, its
//! kernel the pod's alone. The sandbox container CRI creates only has to hold the
//! namespaces the pod's containers join (PID, IPC, UTS) and to stay alive until it is
//! killed. Creating it as a libcontainer container costs two helper runs and a rootfs
//! the process never uses (about half a second under TCG). Here the runtime clones one
//! process straight into new namespaces, sets the pod's hostname, and re-executes its
//! own binary as [`main`] (named as the image's `/pause`), which shuts itself into an
//! empty directory, drops every capability, and waits for signals, reaping whatever
//! joins its PID namespace.
//!
//! A spec that asks for more (a user namespace, a namespace to join, IPC sysctls) goes
//! through libcontainer as before ([`applies_to`] says which).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// `<binary> __stockade-pause`: the process [`spawn`] starts.
pub const PAUSE_ARG: &str = "__stockade-pause";
/// Marks a container's state dir as a pause process's (the backend's verbs differ).
pub const MARK: &str = "pause";
/// The empty, read-only directory the pause process shuts itself into.
const EMPTY_ROOT: &str = "/run/stockade/pause-root";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Whether `spec` is a CRI pod sandbox this module can run: new PID, IPC, UTS, mount or
/// cgroup namespaces only, and no sysctl left for it to apply (the guest applied the
/// `net.*` ones to the pod's network already).
pub fn applies_to(spec: &Spec) -> bool {
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox");
    let Some(linux) = spec.linux().as_ref() else {
        return false;
    };
    let plain_namespaces = linux.namespaces().as_ref().is_none_or(|ns| {
        ns.iter().all(|n| {
            n.path().is_none()
                && matches!(
                    n.typ(),
                    LinuxNamespaceType::Pid
                        | LinuxNamespaceType::Ipc
                        | LinuxNamespaceType::Uts
                        | LinuxNamespaceType::Mount
                        | LinuxNamespaceType::Cgroup
                )
        })
    });
    let no_sysctl = linux.sysctl().as_ref().is_none_or(|s| s.is_empty());
    sandbox && plain_namespaces && no_sysctl
}

fn clone_flags(spec: &Spec) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    let mut flags = CloneFlags::empty();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for n in namespaces {
        flags |= match n.typ() {
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            _ => CloneFlags::empty(),
        };
    }
    flags
}

/// Start the pause process for `spec` from binary `exe`; its pid (in the caller's PID
/// namespace). Its exit reaches the caller's reaper like any child's. `cgroup`: a
/// `cgroup.procs` the process writes itself into before its exec (it exits 125 if it
/// cannot).
pub fn spawn(exe: &Path, spec: &Spec, cgroup: Option<&std::fs::File>) -> Result<i32> {
    std::fs::create_dir_all(EMPTY_ROOT).map_err(Error::io("create the pause root"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(EMPTY_ROOT, std::fs::Permissions::from_mode(0o555));
    }
    let flags = clone_flags(spec);
    // Set before the exec, so a container joining the UTS namespace never sees another.
    let hostname = spec
        .hostname()
        .clone()
        .filter(|_| flags.contains(nix::sched::CloneFlags::CLONE_NEWUTS))
        .unwrap_or_default()
        .into_bytes();
    let cstr = |s: &str| CString::new(s).map_err(|_| Error::InvalidArgument(format!("{s:?}")));
    let path = cstr(&exe.to_string_lossy())?;
    // argv[0] is the image's (`/pause`): what `ps` shows in the pod's PID namespace.
    let name = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .and_then(|a| a.first().cloned())
        .unwrap_or_else(|| "pause".into());
    let argv = [cstr(&name)?, cstr(PAUSE_ARG)?];
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::io("open /dev/null"))?;
    let null_fd = null.as_raw_fd();
    let cgroup_fd = cgroup.map_or(-1, |f| f.as_raw_fd());
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(move || {
        // Only async-signal-safe calls between clone and exec: the parent has threads.
        // SAFETY: write and dup2 on fds open in this process, execv with NUL-terminated
        // strings built before the clone; on failure the child exits at once.
        unsafe {
            if cgroup_fd >= 0 && libc::write(cgroup_fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(125);
            }
            if !hostname.is_empty()
                && libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0
            {
                libc::_exit(126);
            }
            for fd in 0..3 {
                libc::dup2(null_fd, fd);
            }
            let args: [*const libc::c_char; 3] =
                [argv[0].as_ptr(), argv[1].as_ptr(), std::ptr::null()];
            libc::execv(path.as_ptr(), args.as_ptr());
            libc::_exit(127)
        }
    });
    // SAFETY: the callback only runs async-signal-safe calls before execv (above), on
    // a stack of its own that outlives the call (the child execs or exits on it).
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| Error::Backend(format!("start the pod's pause process: {e}")))?;
    drop(null);
    Ok(pid.as_raw())
}

extern "C" fn shut_down(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe.
    unsafe { while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {} }
}

/// The pause process (`<binary> __stockade-pause`): PID 1 of the pod's PID namespace.
/// Never returns.
pub fn main() -> ! {
    if let Err(e) = confine() {
        eprintln!("stockade pause: {e}");
        std::process::exit(1);
    }
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let on = |sig, handler| {
        let action = SigAction::new(
            SigHandler::Handler(handler),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handlers only call async-signal-safe functions.
        let _ = unsafe { sigaction(sig, &action) };
    };
    on(Signal::SIGTERM, shut_down);
    on(Signal::SIGINT, shut_down);
    on(Signal::SIGCHLD, reap);
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// An empty read-only root, no capability, no new privileges.
fn confine() -> std::result::Result<(), String> {
    // Its mount namespace is its own: nothing it does there reaches the guest's.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    );
    nix::unistd::chroot(EMPTY_ROOT).map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    // Every capability out of the bounding set, then out of every set.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset with a v3 header and its two data words, both ours.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_plain_cri_sandboxes_skip_libcontainer() {
        let sandbox = serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"});
        let ns = |list: serde_json::Value| {
            spec(
                serde_json::json!({"ociVersion": "1.0.2", "annotations": sandbox,
                "linux": {"namespaces": list}}),
            )
        };
        assert!(applies_to(&ns(serde_json::json!([
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ]))));
        assert!(!applies_to(&ns(serde_json::json!([{"type": "user"}]))));
        assert!(!applies_to(&ns(serde_json::json!([{"type": "network"}]))));
        assert!(!applies_to(&ns(serde_json::json!([
            {"type": "ipc", "path": "/proc/7/ns/ipc"}
        ]))));
        let container = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "linux": {"namespaces": [{"type": "pid"}]}}));
        assert!(!applies_to(&container));
        let sysctl = spec(
            serde_json::json!({"ociVersion": "1.0.2", "annotations": sandbox,
            "linux": {"namespaces": [{"type": "ipc"}], "sysctl": {"kernel.shmmax": "1"}}}),
        );
        assert!(!applies_to(&sysctl));
    }
}
