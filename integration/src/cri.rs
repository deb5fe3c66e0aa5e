//! The Kubernetes side of the tests: containerd's CRI plugin with Stockade as the
//! `stockade` runtime handler (and runc's shim as `runc`), CNI on a private bridge
//! (bridge + host-local + portmap + loopback from Debian's containernetworking-plugins),
//! an offline pause image, and a CRI client on containerd's socket that calls the
//! plugin the way kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{IMAGE, TestContainerd, build_image_as, run};

pub const PAUSE_IMAGE: &str = "stockade.test/pause:1";
/// containerd's namespace for everything the CRI plugin makes.
pub const CRI_NAMESPACE: &str = "k8s.io";
pub const HANDLER: &str = "stockade";
pub const CNI_BRIDGE: &str = "stk-cni0";
pub const CNI_SUBNET: &str = "10.88.77.0/24";
pub const CNI_GATEWAY: &str = "10.88.77.1";
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CRI plugin's keys and tables for a private containerd in `dir`: the pause image,
/// CNI from `dir/cni`, a streaming server on a free loopback port, and the runtimes, in
/// the config format of the containerd under test ([`crate::daemons`]). Writes the CNI
/// network config as a side effect; for containerd 2.x, also the shipped drop-in
/// (`configs/containerd2-cri.toml`) into `dir/conf.d/`, which its config imports.
pub fn cri_config(dir: &Path) -> String {
    cri_tables(dir, true)
}

/// [`cri_config`] without Stockade's runtimes (runc's alone): for a config that the
/// shim's `install containerd` is to add them to.
pub fn cri_config_without_stockade(dir: &Path) -> String {
    cri_tables(dir, false)
}

fn cri_tables(dir: &Path, stockade: bool) -> String {
    let conf_dir = dir.join("cni");
    let _ = std::fs::create_dir_all(&conf_dir);
    let net = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "stockade-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CNI_SUBNET, "gateway": CNI_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("cni-ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let _ = std::fs::write(conf_dir.join("10-stockade-test.conflist"), net.to_string());
    let conf = conf_dir.display();
    if crate::daemons::daemons().config_version >= 3 {
        // The `stockade` handler comes from the shipped drop-in, as an admin installs it.
        if stockade {
            let _ = install_drop_in(dir, &dir.join("stockade.toml"));
        }
        let runtime = r#"[plugins."io.containerd.cri.v1.runtime""#;
        return format!(
            r#"[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{runtime}.cni]
  bin_dirs = ["{CNI_BIN_DIR}"]
  conf_dir = "{conf}"
{runtime}.containerd]
  default_runtime_name = "runc"
  {runtime}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
{stockade}"#,
            stockade = if stockade {
                shipped_runtime_table(&following_kubernetes(dir), HANDLER_FOLLOWING_K8S)
                    + &shipped_runtime_table(&cloud_kernel(dir), HANDLER_CLOUD_KERNEL)
            } else {
                String::new()
            },
        );
    }
    format!(
        r#"  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{stockade}"#,
        stockade = if stockade {
            shipped_runtime_table(&dir.join("stockade.toml"), HANDLER)
                + &shipped_runtime_table(&following_kubernetes(dir), HANDLER_FOLLOWING_K8S)
                + &shipped_runtime_table(&cloud_kernel(dir), HANDLER_CLOUD_KERNEL)
        } else {
            String::new()
        },
    )
}

/// The shipped containerd 2.x drop-in, its `ConfigPath` alone pointed at `config`, as
/// `dir/conf.d/stockade.toml` (the private containerd's `imports`).
fn install_drop_in(dir: &Path, config: &Path) -> Result<()> {
    let shipped = crate::workspace_root().join(DROP_IN);
    let text = std::fs::read_to_string(&shipped)?;
    let default = "\"/etc/stockade/configuration.toml\"";
    if !text.contains(default) {
        bail!("{} no longer names {default}", shipped.display());
    }
    let text = text.replace(default, &format!("\"{}\"", config.display()));
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::write(dir.join("conf.d/stockade.toml"), text)?;
    Ok(())
}

/// containerd 2.x's snippet and drop-in (config version 3).
const DROP_IN: &str = "configs/containerd2-cri.toml";

/// A third handler whose Stockade config boots Debian's cloud kernel (the fallback
/// guest kernel, `crate::vm::cloud_guest_assets`) in VM mode, with a state dir of its
/// own (`<stockade-state>-cloud`), so a warm pool of its own can serve it.
pub const HANDLER_CLOUD_KERNEL: &str = "stockade-cloud";

/// `dir/stockade.toml` in VM mode with the cloud kernel's assets and its own state dir,
/// as `dir/stockade-cloud.toml`.
fn cloud_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("stockade-cloud.toml");
    let text = std::fs::read_to_string(dir.join("stockade.toml")).unwrap_or_default();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap_or_default();
    let assets = crate::vm::cloud_guest_assets();
    let mut set = |table: &str, key: &str, value: String| {
        if let Some(t) = cfg
            .entry(table)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
        {
            t.insert(key.into(), toml::Value::String(value));
        }
    };
    set("runtime", "mode", "vm".into());
    set(
        "runtime",
        "state_dir",
        dir.join("stockade-state-cloud").display().to_string(),
    );
    set(
        "hypervisor",
        "kernel",
        assets.join("vmlinuz").display().to_string(),
    );
    set(
        "hypervisor",
        "initrd",
        assets.join("initrd.img").display().to_string(),
    );
    let _ = std::fs::write(&path, toml::to_string(&cfg).unwrap_or_default());
    path
}

/// A second handler whose Stockade config follows Kubernetes on no-new-privileges
/// (`[container] no_new_privileges = false`): the escape suite checks that seccomp
/// still holds for every process without it.
pub const HANDLER_FOLLOWING_K8S: &str = "stockade-k8s";

/// `dir/stockade.toml` (written before this runs) with `no_new_privileges = false`,
/// as `dir/stockade-k8s.toml`.
fn following_kubernetes(dir: &Path) -> PathBuf {
    let path = dir.join("stockade-k8s.toml");
    let text = std::fs::read_to_string(dir.join("stockade.toml")).unwrap_or_default();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap_or_default();
    if let Some(container) = cfg
        .entry("container")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
    {
        container.insert("no_new_privileges".into(), toml::Value::Boolean(false));
    }
    let _ = std::fs::write(&path, toml::to_string(&cfg).unwrap_or_default());
    path
}

/// The `runtimes.stockade` table of the shipped snippet for the containerd under test
/// (`configs/containerd-cri.toml`, or [`DROP_IN`] for 2.x), with its ConfigPath
/// pointed at `config`, as the runtime handler `name`.
fn shipped_runtime_table(config: &Path, name: &str) -> String {
    let v3 = crate::daemons::daemons().config_version >= 3;
    let (file, plugin, under) = if v3 {
        (DROP_IN, "io.containerd.cri.v1.runtime", "")
    } else {
        (
            "configs/containerd-cri.toml",
            "io.containerd.grpc.v1.cri",
            "    ",
        )
    };
    let path = crate::workspace_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut doc: toml::Table = toml::from_str(&text).unwrap_or_default();
    let runtime = doc
        .get_mut("plugins")
        .and_then(|p| p.get_mut(plugin))
        .and_then(|c| c.get_mut("containerd"))
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(|r| r.get_mut(HANDLER))
        .and_then(|r| r.as_table_mut());
    let Some(runtime) = runtime else {
        return String::new();
    };
    runtime.insert(
        "options".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "ConfigPath".to_string(),
            toml::Value::String(config.display().to_string()),
        )])),
    );
    let mut out = toml::Table::new();
    out.insert(name.into(), toml::Value::Table(runtime.clone()));
    let header = format!(r#"[plugins."{plugin}".containerd.runtimes."#);
    let mut text = String::new();
    for line in toml::to_string(&out).unwrap_or_default().lines() {
        match line.strip_prefix('[') {
            Some(table) => text.push_str(&format!("{under}{header}{table}\n")),
            None => text.push_str(&format!("{under}  {line}\n")),
        }
    }
    text
}

/// A private containerd with the CRI plugin configured, both images imported into
/// `k8s.io`, and connected CRI clients. Pods left behind are removed on drop.
pub struct CriEnv {
    pub rt: tokio::runtime::Runtime,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub ctd: TestContainerd,
}

/// What a command run in a container printed and how it ended.
#[derive(Debug)]
pub struct ExecOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CriEnv {
    /// `mode` and `extra` as for [`TestContainerd::start_with`].
    pub fn start(mode: &str, extra: &str) -> Result<CriEnv> {
        crate::suite::print_daemons();
        let _ = run(Command::new("ip").args(["link", "del", CNI_BRIDGE]));
        forward_between_pods(true);
        Self::connect(TestContainerd::start_full(mode, extra, cri_config)?)
    }

    /// On a containerd that finds only what is installed
    /// ([`TestContainerd::start_installed`]): its CRI config has runc's runtime alone
    /// until `edit` (given the config file) adds Stockade's.
    /// `path` is containerd's `PATH` (see [`TestContainerd::start_installed`]).
    pub fn start_installed(path: &str, edit: impl FnOnce(&Path) -> Result<()>) -> Result<CriEnv> {
        crate::suite::print_daemons();
        let _ = run(Command::new("ip").args(["link", "del", CNI_BRIDGE]));
        forward_between_pods(true);
        Self::connect(TestContainerd::start_installed(
            path,
            cri_config_without_stockade,
            edit,
        )?)
    }

    fn connect(ctd: TestContainerd) -> Result<CriEnv> {
        for (tar, reference, entrypoint) in [
            ("busybox.tar", IMAGE, "null"),
            ("pause.tar", PAUSE_IMAGE, r#"["/pause"]"#),
        ] {
            let tar = ctd.dir.path().join(tar);
            build_image_as(&tar, reference, entrypoint)?;
            let o = ctd.ctr_in(
                CRI_NAMESPACE,
                &["images", "import", &tar.display().to_string()],
            );
            if !o.ok() {
                bail!("import {reference}: {}", o.stderr);
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let socket = ctd.socket.clone();
        let channel = rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
                .context("connect to containerd's CRI")
        })?;
        let env = CriEnv {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            ctd,
        };
        let version = env.block(|mut c| async move {
            c.version(cri::VersionRequest::default())
                .await
                .map(|r| r.into_inner())
        })?;
        anyhow::ensure!(
            version.runtime_api_version == "v1",
            "CRI API {}",
            version.runtime_api_version
        );
        Ok(env)
    }

    /// Run `f` with a runtime-service client on the env's tokio runtime.
    pub fn block<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.rt
            .block_on(f(self.runtime.clone()))
            .map_err(|s| anyhow::anyhow!("CRI: {:?}: {}", s.code(), s.message()))
    }

    /// Where the pods' container logs go (the `log_directory` of [`pod_config`](Self::pod_config)).
    pub fn log_dir(&self, pod: &str) -> PathBuf {
        self.ctd.dir.path().join("pods").join(pod)
    }

    /// A pod config as kubelet sends it: metadata, hostname, DNS, log directory, one
    /// port mapping (hostPort → containerPort) when asked.
    pub fn pod_config(&self, name: &str, port: Option<(i32, i32)>) -> cri::PodSandboxConfig {
        let log_dir = self.log_dir(name);
        let _ = std::fs::create_dir_all(&log_dir);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.88.77.53".into()],
                searches: vec!["stockade.test".into()],
                options: vec!["ndots:2".into()],
            }),
            port_mappings: port
                .map(|(host, container)| {
                    vec![cri::PortMapping {
                        protocol: cri::Protocol::Tcp as i32,
                        container_port: container,
                        host_port: host,
                        host_ip: String::new(),
                    }]
                })
                .unwrap_or_default(),
            labels: HashMap::from([("stockade-test".into(), name.into())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with `handler` (the RuntimeClass's handler).
    pub fn run_pod(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.block(|mut c| async move {
            c.run_pod_sandbox(req)
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
        })
    }

    /// A container of the test image running `args`, logging to `<name>.log`.
    pub fn container_config(&self, name: &str, args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources::default()),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self.block(|mut c| async move {
            c.create_container(req)
                .await
                .map(|r| r.into_inner().container_id)
        })?;
        let cid = id.clone();
        self.block(|mut c| async move {
            c.start_container(cri::StartContainerRequest { container_id: cid })
                .await
                .map(|_| ())
        })?;
        Ok(id)
    }

    pub fn exec_sync(&self, container: &str, cmd: &[&str]) -> Result<ExecOut> {
        let req = cri::ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let r =
            self.block(|mut c| async move { c.exec_sync(req).await.map(|r| r.into_inner()) })?;
        Ok(ExecOut {
            code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// ExecSync that must succeed; returns its stdout.
    pub fn sh(&self, container: &str, script: &str) -> Result<String> {
        let o = self.exec_sync(container, &["sh", "-c", script])?;
        anyhow::ensure!(o.code == 0, "`{script}` exited {}: {}", o.code, o.stderr);
        Ok(o.stdout)
    }

    /// Exec through the CRI streaming server, as `kubectl exec` does: the URL from Exec,
    /// then a WebSocket session on the `v4.channel.k8s.io` protocol (channel 1 stdout,
    /// 2 stderr, 3 the final status). `stdin` is written to channel 0 first.
    pub fn exec_stream(&self, container: &str, cmd: &[&str], stdin: &[u8]) -> Result<ExecOut> {
        let req = cri::ExecRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: !stdin.is_empty(),
            stdout: true,
            stderr: true,
        };
        let url =
            self.block(|mut c| async move { c.exec(req).await.map(|r| r.into_inner().url) })?;
        let stdin = stdin.to_vec();
        self.rt.block_on(async move {
            use tokio_tungstenite::tungstenite::Message;
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let ws_url = url.replacen("http://", "ws://", 1);
            let mut request = ws_url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
            let (mut ws, _) = tokio::time::timeout(
                Duration::from_secs(30),
                tokio_tungstenite::connect_async(request),
            )
            .await
            .context("exec: connect timed out")?
            .with_context(|| format!("exec: connect {ws_url}"))?;
            if !stdin.is_empty() {
                let mut frame = vec![0u8];
                frame.extend_from_slice(&stdin);
                ws.send(Message::Binary(frame.into())).await?;
            }
            let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), Vec::new());
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
                    .await
                    .context("exec: no output for 60 s")?;
                let data = match msg {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                };
                match data.split_first() {
                    Some((1, rest)) => stdout.extend_from_slice(rest),
                    Some((2, rest)) => stderr.extend_from_slice(rest),
                    Some((3, rest)) => status.extend_from_slice(rest),
                    _ => {}
                }
            }
            Ok(ExecOut {
                code: exit_code_of_status(&status)?,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        })
    }

    /// Port-forward through the CRI streaming server, as kubectl does: the URL from
    /// PortForward, then a WebSocket session on `v4.channel.k8s.io`, the portforward
    /// protocol's WebSocket flavour (kubectl's SPDY flavour ends in the same dial inside
    /// the pod's network namespace). One session and connection per request, all at once:
    /// `requests[i]` is sent on connection i; with `close_after_send` the client then
    /// closes (an upload), else it reads until the server closes. The error channel's
    /// text, if any, is the result's error.
    pub fn port_forward(
        &self,
        pod: &str,
        port: u16,
        requests: Vec<Vec<u8>>,
        close_after_send: bool,
    ) -> Vec<Result<Vec<u8>>> {
        let runtime = self.runtime.clone();
        let pod = pod.to_string();
        self.rt.block_on(async move {
            let sessions = requests.into_iter().map(|request| {
                let mut c = runtime.clone();
                let req = cri::PortForwardRequest {
                    pod_sandbox_id: pod.clone(),
                    port: vec![i32::from(port)],
                };
                async move {
                    let url = c
                        .port_forward(req)
                        .await
                        .map_err(|s| anyhow::anyhow!("CRI PortForward: {}", s.message()))?
                        .into_inner()
                        .url;
                    tokio::time::timeout(
                        Duration::from_secs(120),
                        forward_session(&url, request, close_after_send),
                    )
                    .await
                    .context("port-forward session: no end within 120 s")?
                }
            });
            futures_util::future::join_all(sessions).await
        })
    }

    pub fn pod_status(&self, pod: &str) -> Result<cri::PodSandboxStatus> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        self.block(|mut c| async move {
            c.pod_sandbox_status(req)
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
        })
    }

    pub fn pod_ip(&self, pod: &str) -> Result<String> {
        let ip = self
            .pod_status(pod)?
            .network
            .map(|n| n.ip)
            .unwrap_or_default();
        anyhow::ensure!(!ip.is_empty(), "pod {pod} has no IP");
        Ok(ip)
    }

    pub fn container_status(&self, container: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: container.into(),
            verbose: false,
        };
        self.block(|mut c| async move {
            c.container_status(req)
                .await
                .map(|r| r.into_inner().status.unwrap_or_default())
        })
    }

    pub fn stop_container(&self, container: &str, timeout: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: container.into(),
            timeout,
        };
        self.block(|mut c| async move { c.stop_container(req).await.map(|_| ()) })
    }

    pub fn remove_container(&self, container: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: container.into(),
        };
        self.block(|mut c| async move { c.remove_container(req).await.map(|_| ()) })
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod goes away.
    pub fn remove_pod(&self, pod: &str) -> Result<()> {
        let id = pod.to_string();
        self.block(|mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ())
        })?;
        let id = pod.to_string();
        self.block(|mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(|_| ())
        })
    }

    pub fn pods(&self) -> Result<Vec<cri::PodSandbox>> {
        self.block(|mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .map(|r| r.into_inner().items)
        })
    }

    /// Wait until the container's state is `want` (e.g. exited), or fail after `timeout`.
    pub fn wait_state(
        &self,
        container: &str,
        want: cri::ContainerState,
        timeout: Duration,
    ) -> Result<cri::ContainerStatus> {
        let start = std::time::Instant::now();
        loop {
            let st = self.container_status(container)?;
            if st.state == want as i32 {
                return Ok(st);
            }
            if start.elapsed() > timeout {
                bail!("container {container} not {want:?} after {timeout:?}: {st:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        if let Ok(pods) = self.pods() {
            for p in pods {
                let _ = self.remove_pod(&p.id);
            }
        }
        let _ = run(Command::new("ip").args(["link", "del", CNI_BRIDGE]));
        forward_between_pods(false);
    }
}

/// Pod-to-pod frames cross the CNI bridge, and with bridge netfilter on they meet the
/// host's iptables FORWARD chain, whose policy a dockerd on the same node (the e2e
/// suites start one) sets to DROP. A node that runs both needs this rule, as kubelet's
/// CNI setups add; the suite adds it for its bridge and removes it afterwards.
fn forward_between_pods(add: bool) {
    let rule = [
        "FORWARD", "-i", CNI_BRIDGE, "-o", CNI_BRIDGE, "-j", "ACCEPT",
    ];
    let present = run(Command::new("iptables").arg("-C").args(rule)).ok();
    match (add, present) {
        (true, false) => {
            let _ = run(Command::new("iptables").arg("-I").args(rule));
        }
        (false, true) => {
            let _ = run(Command::new("iptables").arg("-D").args(rule));
        }
        _ => {}
    }
}

/// The exit code in a v4 channel protocol status (a metav1.Status as JSON): Success is
/// 0; a non-zero exit carries `details.causes[{reason: ExitCode, message: N}]`.
fn exit_code_of_status(status: &[u8]) -> Result<i32> {
    if status.is_empty() {
        bail!("exec: the stream closed without a status");
    }
    let v: serde_json::Value = serde_json::from_slice(status)
        .with_context(|| format!("exec status: {}", String::from_utf8_lossy(status)))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    v["details"]["causes"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["reason"] == "ExitCode"))
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("exec failed: {v}"))
}

/// The namespaces kubelet asks for by default: the pod's network and IPC, a PID
/// namespace per container (`shareProcessNamespace: false`).
pub fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Set the PID namespace mode of a pod config or container config's namespace options
/// (`shareProcessNamespace: true` is [`cri::NamespaceMode::Pod`] on both).
pub fn set_pid_mode(options: Option<&mut cri::NamespaceOption>, mode: cri::NamespaceMode) {
    if let Some(o) = options {
        o.pid = mode as i32;
    }
}

/// One HTTP/1.0 GET from the host; the response body.
pub fn http_get(addr: &str, port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let target: std::net::SocketAddr = format!("{addr}:{port}").parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .with_context(|| format!("connect {target}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(resp))
}

/// Retry [`http_get`] until it answers (a server in a just-started container), up to `timeout`.
pub fn http_get_retry(addr: &str, port: u16, timeout: Duration) -> Result<String> {
    let start = std::time::Instant::now();
    loop {
        match http_get(addr, port) {
            Ok(b) if !b.is_empty() => return Ok(b),
            Ok(_) | Err(_) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Ok(b) => return Ok(b),
            Err(e) => return Err(e),
        }
    }
}

/// One port-forward session (see [`CriEnv::port_forward`]): channel 0 carries the data,
/// channel 1 the errors; each first announces the port in two little-endian bytes.
async fn forward_session(url: &str, request: Vec<u8>, close_after_send: bool) -> Result<Vec<u8>> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("port-forward: connect {ws_url}"))?;
    let (mut tx, mut rx) = ws.split();
    // Sent while the answer is read: a large request must not wait for the reader.
    let send = async move {
        for chunk in request.chunks(32 * 1024) {
            let mut frame = vec![0u8];
            frame.extend_from_slice(chunk);
            tx.send(Message::Binary(frame.into())).await?;
        }
        if close_after_send {
            tx.send(Message::Close(None)).await?;
        }
        Ok::<_, anyhow::Error>(tx)
    };
    let receive = async move {
        let (mut data, mut errors) = (Vec::new(), Vec::new());
        while let Some(msg) = rx.next().await {
            let bytes = match msg {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                // The server may drop the connection without a close frame.
                Err(_) => break,
            };
            match bytes.split_first() {
                Some((0, rest)) => data.extend_from_slice(rest),
                Some((1, rest)) => errors.extend_from_slice(rest),
                _ => {}
            }
        }
        (data, errors)
    };
    let (sent, (data, errors)) = tokio::join!(send, receive);
    drop(sent?);
    // The port announcements.
    let strip = |mut v: Vec<u8>| {
        v.drain(..v.len().min(2));
        v
    };
    let (data, errors) = (strip(data), strip(errors));
    if !errors.is_empty() {
        bail!("port-forward: {}", String::from_utf8_lossy(&errors));
    }
    Ok(data)
}
