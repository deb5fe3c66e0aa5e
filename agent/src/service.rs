//! The agent protocol's service, guest side: a thin translation onto the runtime.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use stockade_agent_protocol::asynchronous::agent::{
    ContainerRef, CreateContainerRequest, CreateSandboxRequest, Empty, EventsRequest,
    EventsResponse, ExecRequest, ExitResponse, GuestDetailsResponse, GuestEvent, HealthResponse,
    Network, PauseRequest, PidResponse, ProcessEntry, ProcessList, ProcessRef, ResizeRequest,
    SignalRequest, StatsResponse, Stdio, UpdateRequest, VersionRequest, VersionResponse,
    guest_event::Kind,
};
use stockade_agent_protocol::asynchronous::agent_ttrpc::Agent;
use stockade_agent_protocol::{
    AUTH_METADATA, GUEST_SHARE_DIR, PROTOCOL_VERSION, capabilities, secret_matches, valid_id,
};
use stockade_runtime::config::{Config, ConfigSource, Mode};
use stockade_runtime::exits::Exits;
use stockade_runtime::linux::stats::CgroupVersion;
use stockade_runtime::runtime::{CreateRequest, Event, ExitInfo, ProcessSpec, Runtime};
use stockade_runtime::{Error, Result};
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

use crate::stdio;

const BUNDLES: &str = "/run/stockade/bundles";
const STATE_DIR: &str = "/run/stockade/state";
/// Events the host has not fetched yet, at most; a host that stops polling loses the oldest.
const MAX_PENDING_EVENTS: usize = 4096;
const MAX_EVENTS_PER_REPLY: usize = 256;
const MAX_EVENT_WAIT: Duration = Duration::from_secs(30);

pub struct AgentService {
    modules: Vec<String>,
    runtime: Runtime,
    /// The guest's configuration (TOML), from CreateSandbox.
    config: Mutex<Option<String>>,
    events: Arc<EventQueue>,
    /// The VM's secret: every call must carry it (see `AUTH_METADATA`).
    secret: Arc<[u8]>,
    #[cfg(feature = "hostile")]
    hostile: Arc<crate::hostile::Hostile>,
}

#[derive(Default)]
struct EventQueue {
    pending: Mutex<(u64, VecDeque<GuestEvent>)>,
    ready: Notify,
}

impl EventQueue {
    fn push(&self, mut e: GuestEvent) {
        let mut q = self.pending.lock().expect("events lock");
        q.0 += 1;
        e.seq = q.0;
        if q.1.len() >= MAX_PENDING_EVENTS {
            q.1.pop_front();
        }
        q.1.push_back(e);
        drop(q);
        self.ready.notify_waiters();
    }

    async fn poll(&self, acked: u64, wait: Duration) -> Vec<GuestEvent> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_EVENT_WAIT);
        loop {
            let notified = self.ready.notified();
            {
                let mut q = self.pending.lock().expect("events lock");
                while q.1.front().is_some_and(|e| e.seq <= acked) {
                    q.1.pop_front();
                }
                if !q.1.is_empty() {
                    return q.1.iter().take(MAX_EVENTS_PER_REPLY).cloned().collect();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn exit_response(info: ExitInfo) -> ExitResponse {
    ExitResponse {
        pid: info.pid,
        exit_code: info.code,
        exited_at_unix_nanos: unix_nanos(info.at),
        ..Default::default()
    }
}

/// A runtime error as the host gets it (`Error::ttrpc_code`; the host reverses it with
/// `Error::from_code`).
fn status(e: Error) -> ttrpc::Error {
    e.to_status()
}

fn check_id(id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid id {id:?}")))
    }
}

/// Configure the guest's NIC as the pod's interface.
fn configure_network(net: &Network) -> Result<()> {
    let routes: Vec<(String, String)> = net
        .routes
        .iter()
        .map(|r| (r.dest.clone(), r.gateway.clone()))
        .collect();
    crate::net::configure(&net.mac, net.mtu, &net.addresses, &routes)
}

/// A container without a network namespace of its own shares the guest's, which is the
/// pod's network: its `net.*` sysctls (Docker sets some) are the pod's, applied here
/// rather than refused by libcontainer as host-namespace sysctls.
fn apply_pod_net_sysctls(spec: &mut oci_spec::runtime::Spec) -> Result<()> {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let own_netns = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    if own_netns {
        return Ok(());
    }
    let Some(sysctl) = linux.sysctl_mut() else {
        return Ok(());
    };
    let net: Vec<(String, String)> = sysctl
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in net {
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            || k.contains("..")
        {
            return Err(Error::InvalidArgument(format!("sysctl {k:?}")));
        }
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, &v)
            .map_err(|e| Error::InvalidArgument(format!("sysctl {k}={v}: {e}")))?;
        sysctl.remove(&k);
    }
    Ok(())
}

fn want(s: &Stdio) -> [bool; 3] {
    [s.stdin, s.stdout, s.stderr]
}

impl AgentService {
    pub fn new(exits: Exits, modules: Vec<String>, secret: Arc<[u8]>) -> AgentService {
        // The agent's binary lives on the read-only root (see init::leave_rootfs):
        // a container cannot overwrite it through /proc/self/exe, so no sealed copy.
        let (runtime, mut rx) =
            Runtime::for_guest("guest", exits, !crate::init::root_is_readonly());
        let events = Arc::new(EventQueue::default());
        let queue = events.clone();
        #[cfg(feature = "hostile")]
        let hostile = Arc::new(crate::hostile::Hostile::default());
        #[cfg(feature = "hostile")]
        let hostile2 = hostile.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                #[cfg(feature = "hostile")]
                if let Event::Exit { id, .. } = &e
                    && hostile2.ignores_kill(id)
                {
                    continue;
                }
                let ev = match e {
                    Event::Exit { id, exec_id, info } => GuestEvent {
                        kind: Kind::EXIT.into(),
                        container_id: id,
                        exec_id,
                        pid: info.pid,
                        exit_code: info.code,
                        exited_at_unix_nanos: unix_nanos(info.at),
                        ..Default::default()
                    },
                    Event::Oom { id } => GuestEvent {
                        kind: Kind::OOM.into(),
                        container_id: id,
                        ..Default::default()
                    },
                    // The host emits lifecycle events itself when its calls return.
                    _ => continue,
                };
                queue.push(ev);
            }
        });
        AgentService {
            modules,
            runtime,
            config: Mutex::new(None),
            events,
            secret,
            #[cfg(feature = "hostile")]
            hostile,
        }
    }

    /// Every call carries the VM's secret, or is refused before anything is done.
    fn authorize(&self, ctx: &TtrpcContext) -> ttrpc::Result<()> {
        let presented = ctx
            .metadata
            .get(AUTH_METADATA)
            .and_then(|v| v.first())
            .map(String::as_bytes)
            .unwrap_or_default();
        if secret_matches(presented, &self.secret) {
            return Ok(());
        }
        log::warn!("call refused: the VM's secret is missing or wrong");
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::PERMISSION_DENIED,
            "the VM's secret is missing or wrong",
        )))
    }

    fn config_source(&self) -> Result<ConfigSource> {
        let body = self.config.lock().expect("config lock").clone();
        let body = body.ok_or_else(|| {
            Error::FailedPrecondition("CreateSandbox must come before containers".into())
        })?;
        Ok(ConfigSource {
            body: Some(body),
            path: None,
        })
    }

    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        // The guest runs containers with the container backend, in its own state dir,
        // whatever the host's mode says; the `[container]` hardening comes from the host.
        let mut config = Config::parse(&req.container_config, Path::new("<host config>"))?;
        config.runtime.mode = Mode::Container;
        config.runtime.state_dir = PathBuf::from(STATE_DIR);
        let text = toml::to_string(&config).map_err(|e| Error::Backend(e.to_string()))?;
        if !req.random_seed.is_empty() {
            // Mixed in (not credited): the pool's state now differs from any other VM's.
            if let Err(e) = std::fs::write("/dev/urandom", &req.random_seed) {
                log::warn!(error:% = e; "the host's random seed was not mixed in");
            }
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| Error::InvalidArgument(format!("hostname: {e}")))?;
        }
        if !req.share_tag.is_empty() {
            crate::init::mount_share(&req.share_tag, Path::new(GUEST_SHARE_DIR))?;
        }
        if let Some(net) = req.network.as_ref() {
            configure_network(net)?;
        }
        *self.config.lock().expect("config lock") = Some(text);
        log::info!(sandbox = req.sandbox_id.as_str(); "sandbox ready");
        Ok(())
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32> {
        check_id(&req.container_id)?;
        let config = self.config_source()?;
        let id = req.container_id.as_str();
        let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(&req.spec_json)
            .map_err(|e| Error::InvalidArgument(format!("invalid spec: {e}")))?;
        apply_pod_net_sysctls(&mut spec)?;
        #[cfg(feature = "hostile")]
        for r in self.hostile.arm(id, &spec) {
            self.events.push(match r {
                crate::hostile::Report::Oom(other) => GuestEvent {
                    kind: Kind::OOM.into(),
                    container_id: other,
                    ..Default::default()
                },
                crate::hostile::Report::Flood(n) => {
                    let (queue, id) = (self.events.clone(), id.to_string());
                    tokio::spawn(async move {
                        for pid in 0..n {
                            queue.push(GuestEvent {
                                kind: Kind::EXIT.into(),
                                container_id: id.clone(),
                                pid: 1_000_000 + pid,
                                exit_code: 1,
                                ..Default::default()
                            });
                            if pid % 1000 == 999 {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    });
                    continue;
                }
            });
        }
        let bundle = Path::new(BUNDLES).join(id);
        std::fs::create_dir_all(&bundle).map_err(Error::io("create bundle"))?;
        let io = req.stdio.get_or_default();
        let result = async {
            spec.save(bundle.join("config.json"))
                .map_err(|e| Error::Backend(format!("write spec: {e}")))?;
            let paths = stdio::make_fifos(id, "", want(io), io.terminal)
                .map_err(Error::io("make stdio fifos"))?;
            self.runtime
                .create(CreateRequest {
                    id: id.into(),
                    bundle: bundle.clone(),
                    rootfs: Vec::new(),
                    stdio: paths,
                    config,
                    systemd_cgroup: false,
                })
                .await
        }
        .await;
        if result.is_err() {
            stdio::remove_container(id);
            let _ = std::fs::remove_dir_all(&bundle);
        }
        result
    }

    async fn exec(&self, req: ExecRequest) -> Result<()> {
        check_id(&req.container_id)?;
        check_id(&req.exec_id)?;
        let io = req.stdio.get_or_default();
        let paths = stdio::make_fifos(&req.container_id, &req.exec_id, want(io), io.terminal)
            .map_err(Error::io("make stdio fifos"))?;
        let res = self
            .runtime
            .exec(
                &req.container_id,
                &req.exec_id,
                ProcessSpec {
                    json: req.process_json,
                },
                paths,
            )
            .await;
        if res.is_err() {
            stdio::remove_fifos(&req.container_id, &req.exec_id);
        }
        res
    }

    async fn delete(&self, req: ProcessRef) -> Result<ExitInfo> {
        #[cfg(feature = "hostile")]
        if req.exec_id.is_empty() {
            self.hostile.before_delete(&req.container_id);
        }
        let info = self.runtime.delete(&req.container_id, &req.exec_id).await?;
        stdio::remove_fifos(&req.container_id, &req.exec_id);
        if req.exec_id.is_empty() {
            stdio::remove_container(&req.container_id);
            let _ = std::fs::remove_dir_all(Path::new(BUNDLES).join(&req.container_id));
        }
        Ok(info)
    }
}

#[async_trait]
impl Agent for AgentService {
    async fn version(
        &self,
        ctx: &TtrpcContext,
        req: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        self.authorize(ctx)?;
        if req.host_protocol != PROTOCOL_VERSION {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!(
                    "host speaks protocol {}, agent speaks {PROTOCOL_VERSION}",
                    req.host_protocol
                ),
            )));
        }
        Ok(VersionResponse {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: [
                capabilities::HEALTH,
                capabilities::GUEST_DETAILS,
                capabilities::SHUTDOWN,
                capabilities::CONTAINERS,
                capabilities::VIRTIOFS,
                capabilities::PORT_FORWARD,
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        })
    }

    async fn health(&self, ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<HealthResponse> {
        self.authorize(ctx)?;
        Ok(HealthResponse {
            serving: true,
            ..Default::default()
        })
    }

    async fn guest_details(
        &self,
        ctx: &TtrpcContext,
        _req: Empty,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        self.authorize(ctx)?;
        let uts = nix::sys::utsname::uname().map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        Ok(GuestDetailsResponse {
            kernel_release: uts.release().to_string_lossy().into_owned(),
            hostname: uts.nodename().to_string_lossy().into_owned(),
            memory_total_bytes: crate::init::meminfo_total(),
            online_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            loaded_modules: self.modules.clone(),
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        AgentService::create_sandbox(self, req)
            .await
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn configure_network(&self, ctx: &TtrpcContext, req: Network) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        if self.config.lock().expect("config lock").is_none() {
            return Err(status(Error::FailedPrecondition(
                "configure network before create sandbox".into(),
            )));
        }
        configure_network(&req).map_err(status)?;
        log::info!(addresses:? = req.addresses; "pod network configured");
        Ok(Empty::default())
    }

    async fn create_container(
        &self,
        ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<PidResponse> {
        self.authorize(ctx)?;
        let pid = AgentService::create_container(self, req)
            .await
            .map_err(status)?;
        Ok(PidResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_process(
        &self,
        ctx: &TtrpcContext,
        req: ProcessRef,
    ) -> ttrpc::Result<PidResponse> {
        self.authorize(ctx)?;
        let pid = self
            .runtime
            .start(&req.container_id, &req.exec_id)
            .await
            .map_err(status)?;
        Ok(PidResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, ctx: &TtrpcContext, req: ExecRequest) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        AgentService::exec(self, req).await.map_err(status)?;
        Ok(Empty::default())
    }

    async fn signal(&self, ctx: &TtrpcContext, req: SignalRequest) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        #[cfg(feature = "hostile")]
        if self.hostile.ignores_kill(&req.container_id) {
            return Ok(Empty::default());
        }
        self.runtime
            .kill(&req.container_id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn wait(&self, ctx: &TtrpcContext, req: ProcessRef) -> ttrpc::Result<ExitResponse> {
        self.authorize(ctx)?;
        let info = self
            .runtime
            .wait(&req.container_id, &req.exec_id)
            .await
            .map_err(status)?;
        Ok(exit_response(info))
    }

    async fn delete(&self, ctx: &TtrpcContext, req: ProcessRef) -> ttrpc::Result<ExitResponse> {
        self.authorize(ctx)?;
        let info = AgentService::delete(self, req).await.map_err(status)?;
        Ok(exit_response(info))
    }

    async fn stats(&self, ctx: &TtrpcContext, req: ContainerRef) -> ttrpc::Result<StatsResponse> {
        self.authorize(ctx)?;
        let (version, metrics) = self
            .runtime
            .stats(&req.container_id)
            .await
            .map_err(status)?;
        #[cfg(feature = "hostile")]
        if self.hostile.oversized(&req.container_id) {
            return Ok(StatsResponse {
                metrics_json: vec![b' '; 5 << 20],
                ..Default::default()
            });
        }
        Ok(StatsResponse {
            cgroup_v2: version == CgroupVersion::V2,
            metrics_json: serde_json::to_vec(&metrics)
                .map_err(|e| ttrpc::Error::Others(e.to_string()))?,
            ..Default::default()
        })
    }

    async fn update_resources(
        &self,
        ctx: &TtrpcContext,
        req: UpdateRequest,
    ) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        self.runtime
            .update(&req.container_id, &req.resources_json)
            .await
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn set_paused(&self, ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        self.runtime
            .set_paused(&req.container_id, req.paused)
            .await
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn resize_tty(&self, ctx: &TtrpcContext, req: ResizeRequest) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        self.runtime
            .resize_pty(&req.container_id, &req.exec_id, req.width, req.height)
            .await
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn close_stdin(&self, ctx: &TtrpcContext, req: ProcessRef) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        self.runtime
            .close_io(&req.container_id, &req.exec_id)
            .map_err(status)?;
        Ok(Empty::default())
    }

    async fn list_processes(
        &self,
        ctx: &TtrpcContext,
        req: ContainerRef,
    ) -> ttrpc::Result<ProcessList> {
        self.authorize(ctx)?;
        let pids = self.runtime.pids(&req.container_id).await.map_err(status)?;
        Ok(ProcessList {
            processes: pids
                .into_iter()
                .map(|(pid, exec)| ProcessEntry {
                    pid,
                    exec_id: exec.unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn events(
        &self,
        ctx: &TtrpcContext,
        req: EventsRequest,
    ) -> ttrpc::Result<EventsResponse> {
        self.authorize(ctx)?;
        let events = self
            .events
            .poll(req.acked, Duration::from_millis(req.wait_millis.into()))
            .await;
        Ok(EventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn shutdown(&self, ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        self.authorize(ctx)?;
        // Answer first; end the VM a moment later so the reply reaches the host.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            crate::init::end_vm();
        });
        Ok(Empty::default())
    }
}
