//! The host cgroup of a pod's VM: qemu, virtiofsd and the vsock backend live where the
//! sandbox container would have lived on the host (its spec's `cgroupsPath`: with
//! Kubernetes, under the pod's cgroup, whose limit kubelet sets to the pod's limits plus
//! the RuntimeClass overhead). The VM's memory and CPU are then charged to the pod.
//! The cgroup carries no limits of its own; the guest enforces each container's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libcgroups::common::CgroupManager;
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::linux::stats;

/// The file in the sandbox dir that names the cgroup, for cleanup after a crash.
const CGROUP_FILE: &str = "cgroup";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: PathBuf,
    pub systemd: bool,
    /// The sandbox id (libcgroups names a systemd scope after it).
    pub id: String,
}

impl PodCgroup {
    /// Record the cgroup in `dir`, then move `pids` and all their descendants into it.
    pub fn place(&self, dir: &Path, pids: &[u32]) -> Result<()> {
        std::fs::write(
            dir.join(CGROUP_FILE),
            format!(
                "{}\n{}\n{}\n",
                u8::from(self.systemd),
                self.id,
                self.path.display()
            ),
        )
        .map_err(Error::io("record the VM's cgroup"))?;
        let manager = stats::manager(&self.path, self.systemd, &self.id)?;
        let mut all = Vec::new();
        for &p in pids {
            descendants(p, &mut all);
        }
        for p in all {
            manager.add_task(Pid::from_raw(p as i32)).map_err(|e| {
                Error::Backend(format!(
                    "move VM process {p} into cgroup {}: {e}",
                    self.path.display()
                ))
            })?;
        }
        log::debug!(cgroup:% = self.path.display(); "VM processes in the pod's cgroup");
        Ok(())
    }

    /// The cgroup recorded in `dir`, if any.
    pub fn load(dir: &Path) -> Option<PodCgroup> {
        let text = std::fs::read_to_string(dir.join(CGROUP_FILE)).ok()?;
        let mut lines = text.lines();
        let systemd = lines.next()? == "1";
        let id = lines.next()?.to_string();
        let path = PathBuf::from(lines.next()?);
        Some(PodCgroup { path, systemd, id })
    }

    /// Remove the cgroup once the VM's processes are gone (they were killed before).
    pub fn remove(&self) -> Result<()> {
        let manager = stats::manager(&self.path, self.systemd, &self.id)?;
        for _ in 0..100 {
            if manager.get_all_pids().map(|p| p.is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        manager
            .remove()
            .map_err(|e| Error::Backend(format!("remove cgroup {}: {e}", self.path.display())))
    }
}

/// Move `pids` and their descendants into this process's own cgroups, in every
/// hierarchy (v1 and v2): a warm-pool VM taken over leaves the pool service's cgroup,
/// which its service manager kills when the service stops. Best effort: a hierarchy
/// that refuses is logged.
pub fn join_own(pids: &[u32]) {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut all = Vec::new();
    for &p in pids {
        descendants(p, &mut all);
    }
    for line in own.lines() {
        let Some(dir) = hierarchy_dir(line, &mounts) else {
            continue;
        };
        for p in &all {
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), p.to_string()) {
                log::warn!(pid = p, cgroup:% = dir.display(), error:% = e; "VM process not moved into the shim's cgroup");
            }
        }
    }
}

/// Where a `/proc/self/cgroup` line's cgroup is mounted (`<id>:<controllers>:<path>`):
/// the cgroup2 mount for `0::`, else the v1 mount whose options name the controllers.
fn hierarchy_dir(line: &str, mountinfo: &str) -> Option<PathBuf> {
    let mut parts = line.splitn(3, ':');
    let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    let mount = mountinfo.lines().find_map(|m| {
        let (left, right) = m.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        let (fstype, _source, options) = (fields.next()?, fields.next()?, fields.next()?);
        let mut l = left.split_whitespace();
        let root = l.nth(3)?;
        let point = l.next()?;
        let matches = if id == "0" && controllers.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup"
                && controllers
                    .split(',')
                    .all(|c| options.split(',').any(|o| o == c))
        };
        (matches && root == "/").then(|| PathBuf::from(point))
    })?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// `pid` and every process below it (virtiofsd's sandboxed child, for one).
fn descendants(pid: u32, out: &mut Vec<u32>) {
    if out.contains(&pid) {
        return;
    }
    out.push(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            descendants(c, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut found = Vec::new();
        descendants(std::process::id(), &mut found);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found[0], std::process::id());
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn each_hierarchy_is_found_where_it_is_mounted() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,name=systemd
35 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
36 25 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory";
        assert_eq!(
            hierarchy_dir("0::/system.slice/x.service", mountinfo),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/x.service"
            ))
        );
        assert_eq!(
            hierarchy_dir("1:name=systemd:/a", mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/systemd/a"))
        );
        assert_eq!(
            hierarchy_dir("4:cpu,cpuacct:/", mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(hierarchy_dir("5:blkio:/", mountinfo), None);
    }

    #[test]
    fn load_reads_what_place_records() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PodCgroup::load(dir.path()), None);
        std::fs::write(
            dir.path().join(CGROUP_FILE),
            "1\npod1\nkubepods.slice:cri:pod1\n",
        )
        .unwrap();
        assert_eq!(
            PodCgroup::load(dir.path()),
            Some(PodCgroup {
                path: PathBuf::from("kubepods.slice:cri:pod1"),
                systemd: true,
                id: "pod1".into()
            })
        );
    }
}
