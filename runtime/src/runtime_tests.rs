//! The state machine and the order of events, through a fake backend: no root, no
//! containerd, no QEMU.

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;

use super::*;
use crate::backend::Started;
use crate::linux::hardening::ExecPolicy;
use crate::stdio::{ChildIo, ProcessIo};

/// A backend that runs nothing: a process "exits" when the test (or a signal, or the
/// container's removal) says so.
#[derive(Default)]
struct Fake {
    fail_create: bool,
    /// The init exits before Start returns.
    init_exits_at_start: bool,
    /// Execs exit before their start returns.
    execs_exit_at_start: bool,
    /// Signals are accepted and ignored (a hostile guest); only force_stop ends them.
    ignores_signals: bool,
    next_pid: AtomicU32,
    exits: Mutex<HashMap<u32, oneshot::Sender<i32>>>,
    calls: Mutex<Vec<&'static str>>,
}

impl Fake {
    fn spawn(&self) -> (u32, oneshot::Receiver<i32>) {
        let pid = 100 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.exits.lock().unwrap().insert(pid, tx);
        (pid, rx)
    }

    fn exit(&self, pid: u32, code: i32) {
        if let Some(tx) = self.exits.lock().unwrap().remove(&pid) {
            let _ = tx.send(code);
        }
    }

    fn called(&self, what: &'static str) {
        self.calls.lock().unwrap().push(what);
    }
}

#[async_trait]
impl Backend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn create(&self, _new: NewContainer<'_>) -> Result<Created> {
        self.called("create");
        if self.fail_create {
            return Err(Error::Backend("the fake backend refuses".into()));
        }
        let (pid, exit) = self.spawn();
        Ok(Created {
            pid,
            io: ProcessIo::default(),
            exit,
            exec_policy: ExecPolicy::default(),
            own_pid_ns: true,
            cgroup: None,
        })
    }
    async fn start(&self, c: &Container) -> Result<()> {
        if self.init_exits_at_start {
            self.exit(c.init.pid(), 3);
        }
        Ok(())
    }
    async fn exec(
        &self,
        _c: &Container,
        _exec_id: &str,
        _process: &OciProcess,
        _stdio: &StdioPaths,
    ) -> Result<(ProcessIo, Option<ChildIo>)> {
        Ok((ProcessIo::default(), None))
    }
    async fn start_exec(&self, _c: &Container, _p: &Process) -> Result<Started> {
        let (pid, exit) = self.spawn();
        if self.execs_exit_at_start {
            self.exit(pid, 4);
        }
        Ok(Started { pid, exit })
    }
    async fn signal(&self, _c: &Container, p: &Process, signal: u32, _all: bool) -> Result<()> {
        self.called("signal");
        if !self.ignores_signals {
            self.exit(p.pid(), 128 + signal as i32);
        }
        Ok(())
    }
    async fn force_stop(&self, _why: &str) -> bool {
        self.called("force_stop");
        let pids: Vec<u32> = self.exits.lock().unwrap().keys().copied().collect();
        for pid in pids {
            self.exit(pid, 255);
        }
        true
    }
    async fn delete_exec(&self, _c: &Container, _exec_id: &str) {
        self.called("delete_exec");
    }
    async fn delete(&self, c: &Container) -> Result<()> {
        self.called("delete");
        self.exit(c.init.pid(), 137);
        Ok(())
    }
    async fn pids(&self, _c: &Container) -> Result<Vec<(u32, Option<String>)>> {
        Ok(vec![])
    }
    async fn set_paused(&self, _c: &Container, _paused: bool) -> Result<()> {
        Ok(())
    }
    async fn stats(&self, _c: &Container) -> Result<(CgroupVersion, Metrics)> {
        Err(Error::Unimplemented("stats"))
    }
    async fn update(&self, _c: &Container, _r: &LinuxResources) -> Result<()> {
        Ok(())
    }
    async fn resize(&self, _c: &Container, _p: &Process, _w: u32, _h: u32) -> Result<()> {
        Ok(())
    }
    async fn release(&self) -> Result<()> {
        self.called("release");
        Ok(())
    }
}

struct Pod {
    rt: Runtime,
    events: mpsc::UnboundedReceiver<Event>,
    fake: Arc<Fake>,
    dir: tempfile::TempDir,
}

fn pod(fake: Fake) -> Pod {
    let fake = Arc::new(fake);
    let (rt, events) = Runtime::new("test", Exits::default());
    *rt.inner.pod.try_lock().unwrap() = Some(fake.clone());
    Pod {
        rt,
        events,
        fake,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Pod {
    fn request(&self, id: &str) -> CreateRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        let state = self.dir.path().join("state");
        CreateRequest {
            id: id.into(),
            bundle,
            rootfs: vec![],
            stdio: StdioPaths::default(),
            config: ConfigSource {
                body: Some(format!(
                    "[runtime]\nstate_dir = {:?}\n",
                    state.display().to_string()
                )),
                path: None,
            },
            systemd_cgroup: false,
        }
    }

    /// The next event's kind and process (`id` or `id/exec`).
    async fn next(&mut self) -> String {
        let e = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the channel is open");
        match e {
            Event::Create { id, .. } => format!("create {id}"),
            Event::Start { id, .. } => format!("start {id}"),
            Event::ExecAdded { id, exec_id } => format!("exec-added {id}/{exec_id}"),
            Event::ExecStarted { id, exec_id, .. } => format!("exec-started {id}/{exec_id}"),
            Event::Exit { id, exec_id, info } if exec_id.is_empty() => {
                format!("exit {id} {}", info.code)
            }
            Event::Exit { id, exec_id, info } => format!("exit {id}/{exec_id} {}", info.code),
            Event::Delete { id, .. } => format!("delete {id}"),
            Event::Oom { id } => format!("oom {id}"),
            Event::Paused { id } => format!("paused {id}"),
            Event::Resumed { id } => format!("resumed {id}"),
        }
    }

    async fn expect(&mut self, want: &[&str]) {
        for w in want {
            assert_eq!(self.next().await, *w);
        }
    }

    fn process(json: &str) -> ProcessSpec {
        ProcessSpec {
            json: json.as_bytes().to_vec(),
        }
    }
}

#[tokio::test]
async fn create_start_exit_delete_in_order() {
    let mut p = pod(Fake::default());
    let pid = p.rt.create(p.request("c1")).await.unwrap();
    assert_eq!(p.rt.state("c1", "").unwrap().status, Status::Created);
    assert_eq!(p.rt.start("c1", "").await.unwrap(), pid);
    assert_eq!(p.rt.state("c1", "").unwrap().status, Status::Running);
    p.fake.exit(pid, 7);
    assert_eq!(p.rt.wait("c1", "").await.unwrap().code, 7);
    let info = p.rt.delete("c1", "").await.unwrap();
    assert_eq!(info.code, 7);
    p.expect(&["create c1", "start c1", "exit c1 7", "delete c1"])
        .await;
    assert!(p.rt.is_empty());
    // The pod's last container took the backend's pod resources with it.
    assert_eq!(p.fake.calls.lock().unwrap().last(), Some(&"release"));
}

#[tokio::test(start_paused = true)]
async fn a_sigkill_the_backend_ignores_ends_in_a_forced_stop() {
    let mut p = pod(Fake {
        ignores_signals: true,
        ..Fake::default()
    });
    p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    // A polite signal is the backend's business; SIGKILL is the runtime's promise.
    p.rt.kill("c1", "", libc::SIGTERM as u32, false)
        .await
        .unwrap();
    tokio::time::sleep(EXIT_GRACE * 2).await;
    assert!(!p.fake.calls.lock().unwrap().contains(&"force_stop"));
    p.rt.kill("c1", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    assert_eq!(p.rt.wait("c1", "").await.unwrap().code, 255);
    assert!(p.fake.calls.lock().unwrap().contains(&"force_stop"));
    p.expect(&["create c1", "start c1", "exit c1 255"]).await;
}

#[tokio::test]
async fn an_exec_is_added_started_and_exits() {
    let mut p = pod(Fake::default());
    p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    let json = r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
    p.rt.exec("c1", "e1", Pod::process(json), StdioPaths::default())
        .await
        .unwrap();
    let dup =
        p.rt.exec("c1", "e1", Pod::process(json), StdioPaths::default())
            .await;
    assert!(matches!(dup, Err(Error::AlreadyExists(_))), "{dup:?}");
    let pid = p.rt.start("c1", "e1").await.unwrap();
    p.fake.exit(pid, 5);
    assert_eq!(p.rt.wait("c1", "e1").await.unwrap().code, 5);
    assert_eq!(p.rt.delete("c1", "e1").await.unwrap().code, 5);
    p.expect(&[
        "create c1",
        "start c1",
        "exec-added c1/e1",
        "exec-started c1/e1",
        "exit c1/e1 5",
    ])
    .await;
    assert!(matches!(p.rt.state("c1", "e1"), Err(Error::NotFound(_))));
}

#[tokio::test]
async fn exits_before_start_returns_are_published_after_the_start() {
    let mut p = pod(Fake {
        init_exits_at_start: true,
        ..Fake::default()
    });
    p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    p.expect(&["create c1", "start c1", "exit c1 3"]).await;
    // A stopped container takes no exec.
    let exec =
        p.rt.exec(
            "c1",
            "e1",
            Pod::process(r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#),
            StdioPaths::default(),
        )
        .await;
    assert!(
        matches!(exec, Err(Error::FailedPrecondition(_))),
        "{exec:?}"
    );
}

#[tokio::test]
async fn an_exec_that_exits_at_once_is_started_before_its_exit() {
    let mut p = pod(Fake {
        execs_exit_at_start: true,
        ..Fake::default()
    });
    p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    p.rt.exec(
        "c1",
        "e1",
        Pod::process(r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#),
        StdioPaths::default(),
    )
    .await
    .unwrap();
    p.rt.start("c1", "e1").await.unwrap();
    p.expect(&[
        "create c1",
        "start c1",
        "exec-added c1/e1",
        "exec-started c1/e1",
        "exit c1/e1 4",
    ])
    .await;
}

#[tokio::test]
async fn killing_a_stopped_process_is_not_found() {
    let mut p = pod(Fake::default());
    let pid = p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    p.rt.kill("c1", "", 15, false).await.unwrap();
    p.expect(&["create c1", "start c1", "exit c1 143"]).await;
    let again = p.rt.kill("c1", "", 9, false).await;
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    assert_eq!(p.rt.state("c1", "").unwrap().pid, pid);
}

#[tokio::test]
async fn deleting_a_running_container_is_refused() {
    let mut p = pod(Fake::default());
    p.rt.create(p.request("c1")).await.unwrap();
    p.rt.start("c1", "").await.unwrap();
    let del = p.rt.delete("c1", "").await;
    assert!(matches!(del, Err(Error::FailedPrecondition(_))), "{del:?}");
    assert!(!p.rt.is_empty());
    // An exec that was never started may be deleted; one that runs may not.
    let json = r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#;
    p.rt.exec("c1", "e1", Pod::process(json), StdioPaths::default())
        .await
        .unwrap();
    let kill = p.rt.kill("c1", "e1", 9, false).await;
    assert!(
        matches!(kill, Err(Error::FailedPrecondition(_))),
        "{kill:?}"
    );
    p.rt.exec("c1", "e2", Pod::process(json), StdioPaths::default())
        .await
        .unwrap();
    p.rt.start("c1", "e2").await.unwrap();
    let del = p.rt.delete("c1", "e2").await;
    assert!(matches!(del, Err(Error::FailedPrecondition(_))), "{del:?}");
    assert_eq!(p.rt.delete("c1", "e1").await.unwrap().code, 0);
    p.expect(&[
        "create c1",
        "start c1",
        "exec-added c1/e1",
        "exec-added c1/e2",
        "exec-started c1/e2",
    ])
    .await;
}

#[tokio::test]
async fn a_container_never_started_is_deleted_with_its_exit() {
    let mut p = pod(Fake::default());
    p.rt.create(p.request("c1")).await.unwrap();
    let info = p.rt.delete("c1", "").await.unwrap();
    assert_eq!(info.code, 137);
    p.expect(&["create c1", "exit c1 137", "delete c1"]).await;
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_registered() {
    let mut p = pod(Fake {
        fail_create: true,
        ..Fake::default()
    });
    let err = p.rt.create(p.request("c1")).await.unwrap_err();
    assert!(err.to_string().contains("refuses"), "{err}");
    assert!(p.rt.is_empty());
    assert!(matches!(p.rt.state("c1", ""), Err(Error::NotFound(_))));
    assert!(!p.dir.path().join("state/test/c1").exists());
    assert!(p.events.try_recv().is_err(), "an event for a failed create");
    assert_eq!(*p.fake.calls.lock().unwrap(), vec!["create", "release"]);
}

#[tokio::test]
async fn oom_is_published_only_for_the_pods_own_containers() {
    let mut p = pod(Fake::default());
    p.rt.create(p.request("c1")).await.unwrap();
    p.expect(&["create c1"]).await;
    // What a guest (or a cgroup watch) reports goes through the backend's sink.
    let oom = p.rt.inner.host.oom.clone();
    oom("another-pods-container".into());
    oom("c1".into());
    p.expect(&["oom c1"]).await;
    assert!(p.events.try_recv().is_err(), "a foreign OOM was published");
    // A flood for its own container: one event a second at most.
    for _ in 0..10_000 {
        oom("c1".into());
    }
    assert!(p.events.try_recv().is_err(), "an OOM flood was published");
}
