//! The container backend: the pod's containers are hardened Linux containers on the
//! host's kernel. libcontainer does the work in helper processes (`helper.rs`); the
//! spec is hardened first (`hardening.rs`) and every process loads the container's
//! seccomp filters (`confine.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess};

use crate::backend::{Backend, Created, Host, HostCgroup, NewContainer, Started};
use crate::error::{Error, Result};
use crate::linux::hardening::{self, ExecPolicy};
use crate::linux::stats::{self, CgroupVersion, Metrics};
use crate::linux::{Confinement, ContainerDirs, LinuxBackend, oom, pause};
use crate::process::{Container, Process};
use crate::stdio::{ChildIo, ProcessIo, StdioPaths};

pub(crate) struct ContainerBackend {
    host: Host,
}

impl ContainerBackend {
    pub(crate) fn new(host: Host) -> ContainerBackend {
        ContainerBackend { host }
    }

    async fn create_in(&self, new: NewContainer<'_>) -> Result<Created> {
        let NewContainer {
            req,
            config,
            spec,
            dirs,
            ..
        } = new;
        if self.host.kernel == hardening::Kernel::Guest && pause::applies_to(spec) {
            return self.create_pause(req, spec, dirs).await;
        }
        if hardening::drop_unsupported_time_namespace(spec, hardening::kernel_has_time_namespaces())
        {
            log::debug!(id = req.id.as_str(); "no time namespaces in this kernel: the container's private time namespace is dropped");
        }
        let mut hardened =
            hardening::harden(spec, &req.bundle, &config.container, self.host.kernel)?;
        hardened.filters.compile()?;
        let confinement = Confinement {
            filters: (!hardened.filters.is_empty()).then(|| dirs.filters.clone()),
            drop_sys_admin: hardened.drop_sys_admin,
        };
        if confinement.filters.is_some() {
            hardened.filters.save(&dirs.filters)?;
        }
        let terminal = spec
            .process()
            .as_ref()
            .is_some_and(|p| p.terminal().unwrap_or(false));
        if terminal != req.stdio.terminal {
            log::warn!(id = req.id.as_str(); "spec terminal and request terminal differ; using the request's");
        }
        if let Some(p) = spec.process_mut() {
            p.set_terminal(Some(req.stdio.terminal));
        }
        spec.save(dirs.bundle.join("config.json"))
            .map_err(|e| Error::Backend(format!("write hardened spec: {e}")))?;

        let cgroup_path = cgroup_path_of(spec, &req.id);
        // Docker and CRI with the systemd cgroup driver send "slice:prefix:name" but
        // runc-only options; the path's form says which driver the node uses.
        let systemd = req.systemd_cgroup || is_systemd_cgroup_path(&cgroup_path);
        let own_pid_ns = hardening::spec_namespace(spec, LinuxNamespaceType::Pid)
            .is_some_and(|n| n.path().is_none());

        let (io, mut child) = ProcessIo::new(&req.stdio, &dirs.state, "init")?;
        let console = io.attach_console(&mut child, &req.stdio);
        let created = self
            .host
            .helpers
            .create(
                dirs,
                &req.id,
                systemd,
                child.console_socket.clone(),
                std::mem::take(&mut child.fds),
                confinement.clone(),
            )
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                io.shutdown();
                if let Some(c) = console {
                    c.abort();
                }
                return Err(e);
            }
        };
        if let Some(c) = console {
            let res = c
                .await
                .map_err(|e| Error::Backend(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = res {
                io.shutdown();
                return Err(e);
            }
        }
        let exec_policy = ExecPolicy {
            allow_privileged: config.container.allow_privileged,
            setting: self.host.kernel.allow_privileged_setting(),
            no_new_privileges: config.container.no_new_privileges,
            confined: confinement.filters.is_some(),
            ..ExecPolicy::of(spec)
        };
        let exit = self.host.exits.subscribe(pid);
        let oom = self.host.oom.clone();
        let id = req.id.clone();
        oom::watch(&cgroup_path, move || {
            log::warn!(id = id.as_str(); "OOM kill in container");
            oom(id.clone());
        });
        Ok(Created {
            pid: pid as u32,
            io,
            exit,
            exec_policy,
            own_pid_ns,
            cgroup: Some(HostCgroup {
                path: cgroup_path,
                systemd,
            }),
        })
    }
}

impl ContainerBackend {
    /// The pod's sandbox container in a guest: one process cloned into the pod's new
    /// namespaces, in a cgroup of its own (see `pause.rs`).
    async fn create_pause(
        &self,
        req: &crate::runtime::CreateRequest,
        spec: &oci_spec::runtime::Spec,
        dirs: &ContainerDirs,
    ) -> Result<Created> {
        let cgroup_path = cgroup_path_of(spec, &req.id);
        std::fs::write(dirs.state.join(pause::MARK), b"")
            .map_err(Error::io("mark the pause container"))?;
        // Under the guest's prepared parent the process joins its cgroup itself, before
        // its exec; anywhere else libcgroups moves it there after it started.
        let cgroup = crate::linux::guest::open_cgroup(&cgroup_path)?;
        let pid = pause::spawn(&self.host.helpers.exe_path(), spec, cgroup.as_ref())?;
        let exit = self.host.exits.subscribe(pid);
        let placed = match cgroup {
            Some(_) => Ok(()),
            None => {
                let (path, id) = (cgroup_path.clone(), req.id.clone());
                tokio::task::spawn_blocking(move || {
                    use libcgroups::common::CgroupManager;
                    stats::manager(&path, false, &id)?
                        .add_task(nix::unistd::Pid::from_raw(pid))
                        .map_err(|e| Error::Backend(format!("cgroup {}: {e}", path.display())))
                })
                .await
                .map_err(|e| Error::Backend(e.to_string()))
                .and_then(|r| r)
            }
        };
        if let Err(e) = placed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        // Nothing is ever written to its stdio (it is /dev/null to the process).
        let (io, _child) = ProcessIo::new(&req.stdio, &dirs.state, "init")?;
        log::debug!(id = req.id.as_str(), pid; "pod sandbox as a pause process");
        Ok(Created {
            pid: pid as u32,
            io,
            exit,
            exec_policy: ExecPolicy::of(spec),
            own_pid_ns: hardening::spec_namespace(spec, LinuxNamespaceType::Pid).is_some(),
            cgroup: Some(HostCgroup {
                path: cgroup_path,
                systemd: false,
            }),
        })
    }
}

fn is_pause(c: &Container) -> bool {
    c.dirs.state.join(pause::MARK).exists()
}

/// The spec's cgroupsPath, or `/stockade/<id>`.
fn cgroup_path_of(spec: &oci_spec::runtime::Spec, id: &str) -> PathBuf {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_else(|| PathBuf::from(format!("/stockade/{id}")))
}

fn exec_spec_file(c: &Container, exec_id: &str) -> PathBuf {
    c.dirs.state.join(format!("exec-{exec_id}.json"))
}

#[async_trait]
impl Backend for ContainerBackend {
    fn name(&self) -> &'static str {
        "container"
    }

    async fn create(&self, new: NewContainer<'_>) -> Result<Created> {
        let (dirs, id) = (new.dirs.clone(), new.req.id.clone());
        let res = self.create_in(new).await;
        if res.is_err() {
            let _ = self.host.helpers.delete(&dirs, &id).await;
        }
        res
    }

    async fn start(&self, c: &Container) -> Result<()> {
        if is_pause(c) {
            // It waits for nothing: it only holds the pod's namespaces.
            return Ok(());
        }
        self.host.helpers.start(&c.dirs, &c.id).await
    }

    async fn exec(
        &self,
        c: &Container,
        exec_id: &str,
        process: &OciProcess,
        stdio: &StdioPaths,
    ) -> Result<(ProcessIo, Option<ChildIo>)> {
        if is_pause(c) {
            return Err(Error::FailedPrecondition(format!(
                "{} is the pod's sandbox: it runs no other process",
                c.id
            )));
        }
        std::fs::write(
            exec_spec_file(c, exec_id),
            serde_json::to_vec(process).map_err(|e| Error::Backend(e.to_string()))?,
        )
        .map_err(Error::io("write exec spec"))?;
        let (io, child) = ProcessIo::new(stdio, &c.dirs.state, &format!("exec-{exec_id}"))?;
        Ok((io, Some(child)))
    }

    async fn start_exec(&self, c: &Container, p: &Process) -> Result<Started> {
        let spec_file = exec_spec_file(c, &p.exec_id);
        let mut child = p.child.lock().expect("child lock").take().ok_or_else(|| {
            Error::FailedPrecondition(format!("exec {} was already started", p.exec_id))
        })?;
        let console = p.io.attach_console(&mut child, &p.stdio);
        let started = self
            .host
            .helpers
            .exec(
                &c.dirs,
                &c.id,
                &spec_file,
                child.console_socket.clone(),
                std::mem::take(&mut child.fds),
                Confinement {
                    filters: c.exec_policy.confined.then(|| c.dirs.filters.clone()),
                    drop_sys_admin: p.lent_sys_admin.load(std::sync::atomic::Ordering::Relaxed),
                },
            )
            .await;
        let _ = std::fs::remove_file(&spec_file);
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(h) = console {
                    h.abort();
                }
                return Err(e);
            }
        };
        if let Some(h) = console {
            let _ = h.await;
        }
        Ok(Started {
            pid: pid as u32,
            exit: self.host.exits.subscribe(pid),
        })
    }

    async fn signal(&self, c: &Container, p: &Process, signal: u32, all: bool) -> Result<()> {
        if all && p.exec_id.is_empty() && !is_pause(c) {
            return self
                .host
                .helpers
                .kill_all(&c.dirs, &c.id, signal as i32)
                .await;
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(Error::Backend(format!("kill {}: {e}", p.pid()))),
        }
    }

    async fn delete_exec(&self, c: &Container, exec_id: &str) {
        let _ = std::fs::remove_file(exec_spec_file(c, exec_id));
    }

    async fn delete(&self, c: &Container) -> Result<()> {
        if is_pause(c) {
            if !matches!(c.init.state(), crate::process::ProcState::Stopped(_)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.init.pid() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                c.init.wait_exit().await;
            }
            return in_cgroup(c, |path, systemd, id| {
                use libcgroups::common::CgroupManager;
                stats::manager(path, systemd, id)?
                    .remove()
                    .map_err(|e| Error::Backend(format!("remove cgroup {}: {e}", path.display())))
            })
            .await;
        }
        self.host.helpers.delete(&c.dirs, &c.id).await
    }

    async fn pids(&self, c: &Container) -> Result<Vec<(u32, Option<String>)>> {
        use libcgroups::common::CgroupManager;
        let pids = in_cgroup(c, |path, systemd, id| {
            stats::manager(path, systemd, id)?
                .get_all_pids()
                .map_err(|e| Error::Backend(format!("list pids: {e}")))
        })
        .await?;
        let execs: HashMap<u32, String> = c
            .execs
            .lock()
            .expect("execs lock")
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|p| {
                let pid = p.as_raw() as u32;
                (pid, execs.get(&pid).cloned())
            })
            .collect())
    }

    async fn set_paused(&self, c: &Container, paused: bool) -> Result<()> {
        if is_pause(c) {
            return in_cgroup(c, move |path, systemd, id| {
                use libcgroups::common::{CgroupManager, FreezerState};
                let state = if paused {
                    FreezerState::Frozen
                } else {
                    FreezerState::Thawed
                };
                stats::manager(path, systemd, id)?
                    .freeze(state)
                    .map_err(|e| Error::Backend(format!("freeze {}: {e}", path.display())))
            })
            .await;
        }
        self.host.helpers.set_paused(&c.dirs, &c.id, paused).await
    }

    async fn stats(&self, c: &Container) -> Result<(CgroupVersion, Metrics)> {
        let m = in_cgroup(c, stats::collect).await?;
        Ok((stats::cgroup_version(), m))
    }

    async fn update(&self, c: &Container, resources: &LinuxResources) -> Result<()> {
        use libcgroups::common::{CgroupManager, ControllerOpt};
        let resources = resources.clone();
        in_cgroup(c, move |path, systemd, id| {
            let opt = ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            };
            stats::manager(path, systemd, id)?
                .apply(&opt)
                .map_err(|e| Error::InvalidArgument(format!("update resources: {e}")))
        })
        .await
    }

    async fn resize(&self, _c: &Container, p: &Process, width: u32, height: u32) -> Result<()> {
        p.io.resize(width, height)
    }

    async fn release(&self) -> Result<()> {
        Ok(())
    }
}

/// Run `f` on the container's cgroup (path, systemd driver, id) off the async threads:
/// cgroupfs reads and writes block.
async fn in_cgroup<T: Send + 'static>(
    c: &Container,
    f: impl FnOnce(&Path, bool, &str) -> Result<T> + Send + 'static,
) -> Result<T> {
    let cgroup = c
        .cgroup
        .clone()
        .ok_or_else(|| Error::Backend(format!("container {} has no host cgroup", c.id)))?;
    let id = c.id.clone();
    tokio::task::spawn_blocking(move || f(&cgroup.path, cgroup.systemd, &id))
        .await
        .map_err(|e| Error::Backend(e.to_string()))?
}

/// `slice:prefix:name`, the systemd driver's cgroupsPath form (never an absolute path).
pub(crate) fn is_systemd_cgroup_path(path: &Path) -> bool {
    let s = path.to_string_lossy();
    !s.starts_with('/') && s.split(':').count() == 3
}

/// What a dead shim left in libcontainer's state for container `id`.
pub(crate) async fn cleanup_from_disk(
    helpers: &LinuxBackend,
    dirs: &ContainerDirs,
    id: &str,
) -> Result<()> {
    if dirs.state.exists() {
        helpers.delete(dirs, id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_cgroup_paths_are_recognised() {
        assert!(is_systemd_cgroup_path(Path::new("system.slice:docker:abc")));
        assert!(is_systemd_cgroup_path(Path::new(
            "kubepods-besteffort-pod1.slice:cri-containerd:abc"
        )));
        assert!(!is_systemd_cgroup_path(Path::new(
            "/kubepods/besteffort/pod1/abc"
        )));
        assert!(!is_systemd_cgroup_path(Path::new("/stockade/a:b:c")));
    }
}
