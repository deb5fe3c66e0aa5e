//! containerd's shim lifecycle: `start`, `delete`, and serving the task service.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{ExitSignal, Shim as ShimTrait};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::{Config as ShimConfig, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use stockade_runtime::exits::Exits;
use stockade_runtime::{Config, Runtime};

use crate::task::TaskService;

pub struct Shim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
    exits: Exits,
}

/// Feed every reaped child into `exits`: the shim crate's reaper is the only `waitpid`.
async fn forward_exits(exits: Exits) {
    let Ok(mut sub) = monitor_subscribe(Topic::Pid).await else {
        log::error!("cannot subscribe to the exit monitor");
        return;
    };
    tokio::spawn(async move {
        while let Some(e) = sub.rx.recv().await {
            if let Subject::Pid(pid) = e.subject {
                exits.notify(pid, e.exit_code);
            }
        }
    });
}

/// After a shim died its socket stays behind; remove it unless a live shim (the pod's,
/// serving other containers) still answers on it.
fn remove_stale_socket(bundle: &std::path::Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    let is_socket = std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    if is_socket && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[async_trait]
impl ShimTrait for Shim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut ShimConfig) -> Self {
        // The node's configuration sets the level; $STOCKADE_LOG_LEVEL overrides it. A
        // config given only in runtime options arrives with Create, after the logger.
        config.default_log_level = std::env::var("STOCKADE_LOG_LEVEL").unwrap_or_else(|_| {
            Config::load(&Default::default())
                .map(|c| c.runtime.log_level)
                .unwrap_or_else(|_| "info".into())
        });
        let exits = Exits::default();
        forward_exits(exits.clone()).await;
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
            exits,
        }
    }

    /// Never reached: `main` serves `start` itself (`crate::start`).
    async fn start_shim(&mut self, _opts: StartOpts) -> containerd_shim::Result<String> {
        Err(containerd_shim::Error::Other(
            "start is served before the shim runtime starts".into(),
        ))
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let source = crate::task::saved_config_source(&bundle);
        let config = Config::load(&source).unwrap_or_default();
        let (runtime, _events) = Runtime::new(&self.namespace, self.exits.clone());
        if let Err(e) = runtime.cleanup(&self.id, &bundle, &config).await {
            // containerd only logs this; say what was left so an operator can act.
            eprintln!("stockade: cleanup of {} incomplete: {e}", self.id);
        }
        remove_stale_socket(&bundle);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.set_exited_at(containerd_shim::util::timestamp()?);
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let (runtime, events) = Runtime::new(&self.namespace, self.exits.clone());
        crate::events::forward(events, publisher, self.namespace.clone());
        TaskService::new(runtime, self.exit.clone())
    }
}
