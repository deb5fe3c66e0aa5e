//! The Task ttrpc service: a thin translation between containerd's messages and
//! [`stockade_runtime::Runtime`]. No lifecycle logic lives here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::util::convert_to_any;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim::shim::CheckpointTaskRequest;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self};
use containerd_shim_protos::types::task::{ProcessInfo, Status as PbStatus};
use stockade_runtime::config::ConfigSource;
use stockade_runtime::mounts::Mount;
use stockade_runtime::runtime::CreateRequest;
use stockade_runtime::{Error, ProcessSpec, Runtime, Status, StdioPaths};

use crate::error::IntoTtrpc;
use crate::events::timestamp;

const SAVED_OPTIONS: &str = "stockade-options.json";

/// The config source a Create used, kept in the bundle for the `delete` subcommand.
pub fn saved_config_source(bundle: &Path) -> ConfigSource {
    let Ok(text) = std::fs::read_to_string(bundle.join(SAVED_OPTIONS)) else {
        return ConfigSource::default();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    ConfigSource {
        path: v["config_path"].as_str().map(PathBuf::from),
        body: v["config_body"].as_str().map(String::from),
    }
}

pub struct TaskService {
    runtime: Runtime,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(runtime: Runtime, exit: Arc<ExitSignal>) -> TaskService {
        TaskService { runtime, exit }
    }
}

fn status(s: Status) -> PbStatus {
    match s {
        Status::Created => PbStatus::CREATED,
        Status::Running => PbStatus::RUNNING,
        Status::Paused => PbStatus::PAUSED,
        Status::Stopped => PbStatus::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        log::info!(id = req.id.as_str(), bundle = req.bundle.as_str(); "create");
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restore from checkpoint")).rpc();
        }
        let options = crate::options::parse(req.options.as_ref())
            .map_err(|e| Error::InvalidArgument(format!("runtime options: {e}")))
            .rpc()?;
        let bundle = PathBuf::from(&req.bundle);
        let saved = serde_json::json!({
            "config_path": options.config.path.as_ref().map(|p| p.display().to_string()),
            "config_body": options.config.body,
        });
        let _ = std::fs::write(bundle.join(SAVED_OPTIONS), saved.to_string());
        let pid = self
            .runtime
            .create(CreateRequest {
                id: req.id.clone(),
                bundle,
                rootfs: req
                    .rootfs
                    .iter()
                    .map(|m| Mount {
                        kind: m.type_.clone(),
                        source: m.source.clone(),
                        options: m.options.clone(),
                    })
                    .collect(),
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                config: options.config,
                systemd_cgroup: options.systemd_cgroup,
            })
            .await
            .rpc()?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self.runtime.start(&req.id, &req.exec_id).await.rpc()?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.runtime
            .exec(
                &req.id,
                &req.exec_id,
                ProcessSpec { json: spec },
                StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
            )
            .await
            .rpc()?;
        Ok(Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.runtime
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .rpc()?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let info = self.runtime.wait(&req.id, &req.exec_id).await.rpc()?;
        Ok(WaitResponse {
            exit_status: info.code,
            exited_at: Some(timestamp(info.at)).into(),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        let info = self.runtime.delete(&req.id, &req.exec_id).await.rpc()?;
        Ok(DeleteResponse {
            pid: info.pid,
            exit_status: info.code,
            exited_at: Some(timestamp(info.at)).into(),
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let s = self.runtime.state(&req.id, &req.exec_id).rpc()?;
        Ok(StateResponse {
            id: s.id,
            exec_id: s.exec_id,
            bundle: s.bundle.display().to_string(),
            pid: s.pid,
            status: status(s.status).into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: s.exit.map(|e| e.code).unwrap_or(0),
            exited_at: s.exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let pids = self.runtime.pids(&req.id).await.rpc()?;
        let processes = pids
            .into_iter()
            .map(|(pid, exec_id)| {
                let mut info = ProcessInfo {
                    pid,
                    ..Default::default()
                };
                if let Some(exec_id) = exec_id {
                    // containerd reads the exec id from a ProcessDetails Any.
                    let mut details = containerd_shim_protos::shim::oci::ProcessDetails::new();
                    details.exec_id = exec_id;
                    info.info = convert_to_any(Box::new(details)).ok().into();
                }
                info
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.runtime.set_paused(&req.id, true).await.rpc()?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.runtime.set_paused(&req.id, false).await.rpc()?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(Error::Unimplemented("Checkpoint")).rpc()
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let (version, m) = self.runtime.stats(&req.id).await.rpc()?;
        let any = convert_to_any(crate::metrics::to_message(version, &m))
            .map_err(|e| Error::Backend(e.to_string()))
            .rpc()?;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.runtime.update(&req.id, &resources).await.rpc()?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.runtime
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .rpc()?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            self.runtime.close_io(&req.id, &req.exec_id).rpc()?;
        }
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self.runtime.state(&req.id, "").map(|s| s.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        // One shim serves a whole pod: exit only when its last container is gone.
        if self.runtime.is_empty() {
            log::info!("last container gone; shim exiting");
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
