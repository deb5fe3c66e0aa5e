//! One ordered forwarder from the runtime's events to containerd.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::types::mount::Mount;
use stockade_runtime::Event;
use tokio::sync::mpsc;

pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

fn convert(e: Event) -> (String, Box<dyn MessageDyn>) {
    fn boxed<T: containerd_shim::event::Event + 'static>(m: T) -> (String, Box<dyn MessageDyn>) {
        (m.topic(), Box::new(m))
    }
    match e {
        Event::Create {
            id,
            bundle,
            pid,
            rootfs,
            stdio,
        } => boxed(TaskCreate {
            container_id: id,
            bundle: bundle.display().to_string(),
            rootfs: rootfs
                .into_iter()
                .map(|m| Mount {
                    type_: m.kind,
                    source: m.source,
                    options: m.options,
                    ..Default::default()
                })
                .collect(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        }),
        Event::Start { id, pid } => boxed(TaskStart {
            container_id: id,
            pid,
            ..Default::default()
        }),
        Event::ExecAdded { id, exec_id } => boxed(TaskExecAdded {
            container_id: id,
            exec_id,
            ..Default::default()
        }),
        Event::ExecStarted { id, exec_id, pid } => boxed(TaskExecStarted {
            container_id: id,
            exec_id,
            pid,
            ..Default::default()
        }),
        Event::Exit { id, exec_id, info } => boxed(TaskExit {
            // containerd names the process by its exec id, or the container id for the init.
            id: if exec_id.is_empty() {
                id.clone()
            } else {
                exec_id
            },
            container_id: id,
            pid: info.pid,
            exit_status: info.code,
            exited_at: Some(timestamp(info.at)).into(),
            ..Default::default()
        }),
        Event::Delete { id, info } => boxed(TaskDelete {
            id: id.clone(),
            container_id: id,
            pid: info.pid,
            exit_status: info.code,
            exited_at: Some(timestamp(info.at)).into(),
            ..Default::default()
        }),
        Event::Oom { id } => boxed(TaskOOM {
            container_id: id,
            ..Default::default()
        }),
        Event::Paused { id } => boxed(TaskPaused {
            container_id: id,
            ..Default::default()
        }),
        Event::Resumed { id } => boxed(TaskResumed {
            container_id: id,
            ..Default::default()
        }),
    }
}

pub fn forward(
    mut events: mpsc::UnboundedReceiver<Event>,
    publisher: RemotePublisher,
    namespace: String,
) {
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let (topic, msg) = convert(e);
            log::debug!(topic = topic.as_str(); "publish");
            // The publisher queues and retries; order is kept because this loop is the only sender.
            if let Err(err) = publisher
                .publish(Context::default(), &topic, &namespace, msg)
                .await
            {
                log::error!(topic = topic.as_str(), error:% = err; "publish event");
            }
        }
    });
}
