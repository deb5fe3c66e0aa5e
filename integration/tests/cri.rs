//! Kubernetes pods through containerd's CRI plugin with `runtime_handler = "stockade"`,
//! called the way kubelet calls it, once per backend: the container backend, then the
//! VM backend (TCG where KVM is unusable). Two containers in one pod, ExecSync, a
//! streaming Exec, logs, status, stats, resource updates, stop with a grace period, a
//! restart inside the pod, pod networking (pod IP, pod to pod, hostPort, DNS, hostname),
//! pod sizing (VM), a `kill -9` of the pod's shim, and sequential create/remove cycles
//! that must leak nothing.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1 as cri;
use stockade_integration::cri::{
    CNI_BRIDGE, CNI_GATEWAY, CRI_NAMESPACE, CriEnv, HANDLER, HANDLER_CLOUD_KERNEL,
    HANDLER_FOLLOWING_K8S, http_get_retry, set_pid_mode,
};
use stockade_integration::{
    escape, guest_assets, guest_config, hypervisor_toml, pids, run, skip_reason,
};

struct Suite {
    env: CriEnv,
    vm: bool,
    /// Distinguishes names and ports of the two suites.
    tag: &'static str,
    base_port: i32,
}

type Case = stockade_integration::Case<Suite>;

const MIB: i64 = 1024 * 1024;

/// Processes, mounts, interfaces and namespaces a pod may leave on the host.
#[derive(Debug, PartialEq, Eq)]
struct HostSnapshot {
    qemu: usize,
    shims: usize,
    mounts: usize,
    links: BTreeSet<String>,
    netns: BTreeSet<String>,
    containerd_fds: usize,
}

fn snapshot(s: &Suite) -> HostSnapshot {
    let links = run(Command::new("ip").args(["-o", "link", "show"]))
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        // CNI's bridge stays once the first pod made it.
        .filter(|n| n != CNI_BRIDGE)
        .collect();
    let netns = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let containerd_fds = std::fs::read_dir(format!("/proc/{}/fd", s.env.ctd.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    HostSnapshot {
        qemu: qemu_pids(s).len(),
        shims: s.env.ctd.shims().len(),
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .count(),
        links,
        netns,
        containerd_fds,
    }
}

/// Wait until the host is back to `before` (processes and mounts go away a moment after
/// RemovePodSandbox returns); fail with the difference.
fn expect_back_to(s: &Suite, before: &HostSnapshot, what: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let now = snapshot(s);
        let vm = s.env.ctd.vm_leaks();
        let same = now.qemu == before.qemu
            && now.shims == before.shims
            && now.mounts == before.mounts
            && now.links == before.links
            && now.netns == before.netns
            // containerd keeps a few connections open; a per-pod leak grows without bound.
            && now.containerd_fds <= before.containerd_fds + 4;
        if same && vm.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{what} left behind: before {before:?}\nafter {now:?}\nVM state {vm:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Remove what a failed case left, then snapshot the host.
fn fresh(s: &Suite) -> HostSnapshot {
    if let Ok(pods) = s.env.pods()
        && !pods.is_empty()
    {
        for p in pods {
            let _ = s.env.remove_pod(&p.id);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    snapshot(s)
}

fn qemu_pids(s: &Suite) -> Vec<String> {
    pids(&format!("qemu.*{}", s.env.ctd.stockade_state.display()))
}

/// A container of the pod that only sleeps.
fn sleeper(s: &Suite, name: &str) -> cri::ContainerConfig {
    s.env.container_config(name, &["sleep", "600"])
}

/// Nothing of the pod or containers `ids` is left: state dir, rootfs mount, cgroup,
/// process.
fn expect_no_leaks(s: &Suite, ids: &[&String]) -> Result<()> {
    for id in ids {
        let leaks = s.env.ctd.leaks(CRI_NAMESPACE, id);
        ensure!(leaks.is_empty(), "{id} left {leaks:?}");
    }
    Ok(())
}

/// An httpd in the container on `port` serving `body`; prints "started <body>".
fn web(port: i32, body: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /www && echo {body} > /www/index.html && echo started {body} && \
             exec httpd -f -p {port} -h /www"
        ),
    ]
}

fn container(s: &Suite, name: &str, args: &[String]) -> cri::ContainerConfig {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.env.container_config(name, &args)
}

fn pod_with_two_containers(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let host_port = s.base_port;
    let name = format!("web-{}", s.tag);
    // shareProcessNamespace: true, so the containers see each other and the pause process.
    let mut pc = env.pod_config(&name, Some((host_port, 8080)));
    set_pid_mode(
        pc.linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|c| c.namespace_options.as_mut()),
        cri::NamespaceMode::Pod,
    );
    let shared_pid = |mut cfg: cri::ContainerConfig| {
        set_pid_mode(
            cfg.linux
                .as_mut()
                .and_then(|l| l.security_context.as_mut())
                .and_then(|c| c.namespace_options.as_mut()),
            cri::NamespaceMode::Pod,
        );
        cfg
    };
    let pod = env.run_pod(&pc, HANDLER)?;
    let c1 = env.start_container(
        &pod,
        &pc,
        shared_pid(container(s, "c1", &web(8080, "c1-answers"))),
    )?;
    // c2: a server on 8081 (daemonized) and a TERM trap that says goodbye with code 7.
    let c2_args = vec![
        "sh".to_string(),
        "-c".into(),
        "mkdir -p /w2 && echo c2-answers > /w2/index.html && httpd -p 8081 -h /w2 && \
         trap 'echo bye; exit 7' TERM; while :; do sleep 1; done"
            .into(),
    ];
    let c2 = env.start_container(&pod, &pc, shared_pid(container(s, "c2", &c2_args)))?;

    // One shim for the pod; in VM mode one VM for both containers.
    ensure!(
        env.ctd.shims().len() == before.shims + 1,
        "shims: {:?}",
        env.ctd.shims()
    );
    let vms = qemu_pids(s);
    if s.vm {
        ensure!(vms.len() == 1, "one qemu for the pod, found {vms:?}");
        // The VM is charged to the pod: qemu and its helpers are in the sandbox's cgroup.
        let state = env.ctd.stockade_state.display().to_string();
        let helpers = pids(&state);
        ensure!(
            helpers.len() >= 3,
            "qemu, virtiofsd, vsock backend: {helpers:?}"
        );
        for p in &helpers {
            let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
            ensure!(
                cg.is_empty() || cg.lines().any(|l| l.ends_with(&format!("/k8s.io/{pod}"))),
                "VM process {p} is not in the pod's cgroup: {cg}"
            );
        }
        let guest = env.sh(&c1, "uname -r")?;
        let host = run(Command::new("uname").arg("-r")).stdout;
        ensure!(guest != host, "uname -r in the pod is the host's: {guest}");
    } else {
        ensure!(vms.is_empty(), "qemu in container mode: {vms:?}");
    }

    // Both containers answer on the pod IP from the host; the hostPort reaches c1.
    let ip = env.pod_ip(&pod)?;
    let b1 = http_get_retry(&ip, 8080, Duration::from_secs(30))?;
    ensure!(b1.contains("c1-answers"), "pod IP :8080 answered {b1:?}");
    let b2 = http_get_retry(&ip, 8081, Duration::from_secs(30))?;
    ensure!(b2.contains("c2-answers"), "pod IP :8081 answered {b2:?}");
    let hp = http_get_retry(CNI_GATEWAY, host_port as u16, Duration::from_secs(30))?;
    ensure!(
        hp.contains("c1-answers"),
        "hostPort {host_port} answered {hp:?}"
    );
    // The containers share the pod's network: c2 reaches c1 on localhost.
    let local = env.sh(&c2, "wget -qO- http://127.0.0.1:8080/")?;
    ensure!(
        local.contains("c1-answers"),
        "c2 → localhost:8080: {local:?}"
    );

    // Hostname and DNS from the CRI request, in both containers.
    for c in [&c1, &c2] {
        let h = env.sh(c, "hostname")?;
        ensure!(h.trim() == name, "hostname {h:?}, pod asked for {name}");
        let r = env.sh(c, "cat /etc/resolv.conf")?;
        ensure!(
            r.contains("nameserver 10.88.77.53")
                && r.contains("search stockade.test")
                && r.contains("ndots:2"),
            "resolv.conf: {r}"
        );
    }
    // A shared PID namespace: c2 sees the pause process and c1's server.
    let ps = env.sh(&c2, "ps -o pid,args")?;
    ensure!(
        ps.contains("/pause") && ps.contains("httpd -f -p 8080"),
        "ps in c2 with a shared PID namespace: {ps}"
    );
    // IPC, UTS and PID are the pod's; the network is the pod's (c2 reached c1 on localhost).
    for ns in ["ipc", "uts", "net", "pid"] {
        let a = env.sh(&c1, &format!("readlink /proc/self/ns/{ns}"))?;
        let b = env.sh(&c2, &format!("readlink /proc/self/ns/{ns}"))?;
        ensure!(a == b, "{ns} namespace: c1 {a:?}, c2 {b:?}");
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
        ensure!(
            a.trim() != host.display().to_string(),
            "{ns} namespace is the host's"
        );
    }
    let addr = env.sh(&c1, "ip -o -4 addr show eth0")?;
    ensure!(
        addr.contains(&format!("{ip}/24")),
        "eth0 in the pod: {addr}"
    );

    // ExecSync: output, stderr, exit code.
    let o = env.exec_sync(&c1, &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
    ensure!(
        o.code == 3 && o.stdout == "out\n" && o.stderr == "err\n",
        "exec sync: {o:?}"
    );
    // A streaming Exec with stdin, as `kubectl exec -i` runs it.
    let o = env.exec_stream(
        &c1,
        &["sh", "-c", "head -c 9; echo; echo e >&2; exit 4"],
        b"via-stdin",
    )?;
    ensure!(
        o.code == 4 && o.stdout == "via-stdin\n" && o.stderr == "e\n",
        "exec stream: {o:?}"
    );
    let o = env.exec_stream(&c2, &["hostname"], b"")?;
    ensure!(o.code == 0 && o.stdout.trim() == name, "exec stream: {o:?}");

    // Logs at the CRI path, in the CRI format.
    let log = std::fs::read_to_string(env.log_dir(&name).join("c1.log"))?;
    ensure!(
        log.lines()
            .any(|l| l.ends_with(" stdout F started c1-answers")),
        "c1.log: {log}"
    );

    // Status and stats.
    let st = env.container_status(&c1)?;
    ensure!(
        st.state == cri::ContainerState::ContainerRunning as i32,
        "status {st:?}"
    );
    ensure!(st.log_path.ends_with("c1.log"), "log path {}", st.log_path);
    let stats = env.block(|mut c| {
        let id = c1.clone();
        async move {
            c.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .map(|r| r.into_inner().stats.unwrap_or_default())
        }
    })?;
    let mem = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value)
        .unwrap_or(0);
    ensure!(mem > 0 && cpu > 0, "stats of c1: {stats:?}");
    let pod_id = pod.clone();
    let all = env.block(|mut c| async move {
        c.list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod_id,
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().stats)
    })?;
    ensure!(all.len() == 2, "ListContainerStats for the pod: {all:?}");

    // UpdateContainerResources: c2 may first allocate 48 MiB, then no longer.
    let alloc = [
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null",
    ];
    let o = env.exec_sync(&c2, &alloc)?;
    ensure!(o.code == 0, "48 MiB without a limit: {o:?}");
    let id = c2.clone();
    env.block(|mut c| async move {
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id,
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 24 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
    })?;
    let o = env.exec_sync(&c2, &alloc)?;
    ensure!(o.code != 0, "48 MiB under a 24 MiB limit succeeded: {o:?}");
    if s.vm {
        // The guest's cgroup v2 is mounted in the container: it sees its new limit.
        let max = env.sh(&c2, "cat /sys/fs/cgroup/memory.max")?;
        ensure!(
            max.trim() == (24 * MIB).to_string(),
            "memory.max seen in c2: {max:?}"
        );
    }
    let st = env.container_status(&c2)?;
    let limit = st
        .resources
        .and_then(|r| r.linux)
        .map(|l| l.memory_limit_in_bytes)
        .unwrap_or(0);
    ensure!(limit == 24 * MIB, "status resources after update: {limit}");

    // StopContainer with a grace period: c2's trap runs, exit code 7, "bye" logged.
    let t = Instant::now();
    env.stop_container(&c2, 20)?;
    let st = env.wait_state(
        &c2,
        cri::ContainerState::ContainerExited,
        Duration::from_secs(5),
    )?;
    ensure!(st.exit_code == 7, "c2 after SIGTERM: {st:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(15),
        "stop took {:?}",
        t.elapsed()
    );
    let log = std::fs::read_to_string(env.log_dir(&name).join("c2.log"))?;
    ensure!(log.contains("stdout F bye"), "c2.log: {log}");

    // A restart inside the pod (kubelet: remove, create attempt 1, start): same pod IP,
    // and in VM mode the same VM.
    env.remove_container(&c2)?;
    let mut again = container(s, "c2", &c2_args);
    again.metadata.as_mut().context("metadata")?.attempt = 1;
    let again = shared_pid(again);
    let c2b = env.start_container(&pod, &pc, again)?;
    let b2 = http_get_retry(&ip, 8081, Duration::from_secs(30))?;
    ensure!(b2.contains("c2-answers"), "restarted c2 answered {b2:?}");
    ensure!(qemu_pids(s) == vms, "the VM changed across a restart");

    // A container that ignores SIGTERM is killed when its grace period ends.
    let t = Instant::now();
    env.stop_container(&c1, 2)?;
    let st = env.wait_state(
        &c1,
        cri::ContainerState::ContainerExited,
        Duration::from_secs(5),
    )?;
    ensure!(
        t.elapsed() >= Duration::from_secs(2) || st.exit_code == 143,
        "c1 stopped early: {st:?}"
    );

    env.remove_pod(&pod)?;
    expect_no_leaks(s, &[&pod, &c1, &c2, &c2b])?;
    expect_back_to(s, &before, "the pod")
}

fn pods_reach_each_other(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let a_cfg = env.pod_config(&format!("a-{}", s.tag), None);
    let a = env.run_pod(&a_cfg, HANDLER)?;
    env.start_container(&a, &a_cfg, container(s, "srv", &web(8080, "from-a")))?;
    let b_cfg = env.pod_config(&format!("b-{}", s.tag), None);
    let b = env.run_pod(&b_cfg, HANDLER)?;
    let cb = env.start_container(&b, &b_cfg, sleeper(s, "cli"))?;
    if s.vm {
        ensure!(
            qemu_pids(s).len() == 2,
            "two pods, two VMs: {:?}",
            qemu_pids(s)
        );
    }
    // kubelet's default: a PID namespace per container, the command is PID 1.
    let ps = env.sh(&cb, "ps -o pid,args")?;
    ensure!(
        !ps.contains("/pause") && ps.lines().any(|l| l.trim() == "1 sleep 600"),
        "ps in a container with its own PID namespace: {ps}"
    );
    let a_ip = env.pod_ip(&a)?;
    let start = Instant::now();
    loop {
        let o = env.exec_sync(
            &cb,
            &[
                "timeout",
                "5",
                "wget",
                "-qO-",
                &format!("http://{a_ip}:8080/"),
            ],
        )?;
        if o.code == 0 && o.stdout.contains("from-a") {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("pod b cannot reach pod a at {a_ip}: {o:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    env.remove_pod(&a)?;
    env.remove_pod(&b)?;
    expect_back_to(s, &before, "two pods")
}

/// The VM follows the pod's size: a base plus the limits containerd's sizing
/// annotations carry; a container's memory limit holds inside the guest.
fn pod_sizing(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let hv = guest_config();
    let mut pc = env.pod_config(&format!("sized-{}", s.tag), None);
    if let Some(linux) = pc.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            memory_limit_in_bytes: 384 * MIB,
            ..Default::default()
        });
    }
    let pod = env.run_pod(&pc, HANDLER)?;
    let mut cfg = sleeper(s, "limited");
    if let Some(linux) = cfg.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 * MIB,
            ..Default::default()
        });
    }
    let c = env.start_container(&pod, &pc, cfg)?;
    if s.vm {
        let cpus: u32 = env.sh(&c, "nproc")?.trim().parse()?;
        let host_cpus = std::thread::available_parallelism()?.get() as u32;
        let want = (hv.vcpus + 2).min(host_cpus);
        ensure!(
            cpus == want,
            "guest vCPUs {cpus}, expected base {} + 2 (at most {host_cpus})",
            hv.vcpus
        );
        let kb: i64 = env
            .sh(
                &c,
                "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
            )?
            .trim()
            .parse()?;
        let want = (hv.memory_mib as i64 + 384) * 1024;
        // MemTotal is the guest's RAM less what the kernel reserves.
        ensure!(
            kb > want * 85 / 100 && kb <= want,
            "guest MemTotal {kb} kB, expected about {want} kB"
        );
    }
    // 64 MiB under a 32 MiB limit is refused (OOM-killed); 8 MiB is fine.
    let big = env.exec_sync(
        &c,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    )?;
    ensure!(big.code != 0, "64 MiB under a 32 MiB limit: {big:?}");
    let small = env.exec_sync(
        &c,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"],
    )?;
    ensure!(small.code == 0, "8 MiB under a 32 MiB limit: {small:?}");
    env.remove_pod(&pod)?;
    expect_back_to(s, &before, "the sized pod")
}

/// A pod granted CAP_NET_ADMIN builds a bridge, a veth pair and a VXLAN device in its
/// own network namespace; in VM mode the Stockade kernel has them built in, and Debian's
/// cloud kernel loads the modules on demand (they show in the guest's /proc/modules).
/// Both backends.
fn net_admin_pod_makes_a_bridge(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let pc = env.pod_config(&format!("netadm-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER)?;
    let mut cc = sleeper(s, "na");
    if let Some(sc) = cc.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.capabilities = Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            ..Default::default()
        });
    }
    let c = env.start_container(&pod, &pc, cc)?;
    let out = env.sh(
        &c,
        "ip link add br0 type bridge && ip link add v0 type veth peer name v1 && \
         ip link set v0 master br0 && ip link set br0 up && \
         ip link add vx0 type vxlan id 42 && ip -o link",
    )?;
    ensure!(
        out.contains("br0:")
            && out
                .lines()
                .any(|l| l.contains("v0") && l.contains("master br0")),
        "bridge and veth in a NET_ADMIN pod: {out}"
    );
    ensure!(out.contains("vx0:"), "vxlan in a NET_ADMIN pod: {out}");
    // Debian's cloud kernel loads them on demand; the Stockade kernel has them built in.
    let kind = stockade_integration::guest_config().kernel_kind();
    if s.vm && kind.as_deref() == Some("cloud") {
        let mods = env.sh(&c, "cut -d' ' -f1 /proc/modules")?;
        for m in ["bridge", "veth", "vxlan"] {
            ensure!(
                mods.lines().any(|l| l == m),
                "{m} not loaded in the guest: {mods}"
            );
        }
    }
    env.remove_pod(&pod)?;
    expect_back_to(s, &before, "the NET_ADMIN pod")
}

/// Poll `ok` until it holds or `limit` passes.
fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let end = std::time::Instant::now() + limit;
    while !ok() {
        ensure!(std::time::Instant::now() < end, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `kubectl port-forward`, through the CRI streaming server: HTTP answers, many
/// connections at once, a large download and a large upload arrive whole, a port nothing
/// listens on is an error, and every connection closes (the shim keeps no socket).
fn port_forward(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let pc = env.pod_config(&format!("pf-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER)?;
    let args = [
        "sh",
        "-c",
        "mkdir -p /www && echo pf-answers > /www/index.html && seq 1 1000000 > /www/big && \
         (nc -l -p 9000 > /tmp/upload &) && echo ready && exec httpd -f -p 8080 -h /www",
    ];
    let c = env.start_container(&pod, &pc, env.container_config("pf", &args))?;
    wait_for(Duration::from_secs(60), || {
        env.sh(
            &c,
            "netstat -ltn | grep -q ':9000 ' && netstat -ltn | grep -q ':8080 '",
        )
        .is_ok()
    })
    .context("the servers never listened")?;
    let sockets = || -> usize {
        env.ctd
            .shims()
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| {
                                std::fs::read_link(e.path())
                                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                            })
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    let shim_sockets = sockets();
    let get = |path: &str| format!("GET {path} HTTP/1.0\r\n\r\n").into_bytes();
    let body = |answer: &[u8]| -> Vec<u8> {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        answer[at..].to_vec()
    };

    // 24 connections at once: 23 small answers and one of 6.9 MB.
    let mut requests = vec![get("/index.html"); 23];
    requests.push(get("/big"));
    let answers = env.port_forward(&pod, 8080, requests, false);
    let expected_big: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.with_context(|| format!("connection {i}"))?;
        if i < 23 {
            ensure!(
                body(&a) == b"pf-answers\n",
                "connection {i}: {:?}",
                String::from_utf8_lossy(&a)
            );
        } else {
            let b = body(&a);
            ensure!(
                b == expected_big.as_bytes(),
                "the large answer: {} bytes, expected {}",
                b.len(),
                expected_big.len()
            );
        }
    }

    // An upload: the client closes when it has sent everything; the server sees its end
    // of file and keeps every byte.
    let upload: String = (1..=600_000).map(|i| format!("{i}\n")).collect();
    let sent = env.port_forward(&pod, 9000, vec![upload.into_bytes()], true);
    for r in sent {
        r.context("upload")?;
    }
    wait_for(Duration::from_secs(30), || {
        env.sh(&c, "! pidof nc && seq 1 600000 | cmp - /tmp/upload")
            .is_ok()
    })
    .with_context(|| {
        format!(
            "the upload did not arrive whole: {:?}",
            env.sh(&c, "ls -l /tmp/upload; pidof nc")
        )
    })?;

    // Nothing listens on 9999: an error, as with runc, not an empty success.
    let refused = env.port_forward(&pod, 9999, vec![get("/")], false);
    match refused.into_iter().next() {
        Some(Err(_)) => {}
        other => bail!("port-forward to a closed port: {other:?}"),
    }

    // Every forwarded connection is gone from the shim.
    wait_for(Duration::from_secs(15), || sockets() <= shim_sockets).with_context(|| {
        format!(
            "the shim holds {} sockets after port-forward, {shim_sockets} before",
            sockets()
        )
    })?;
    env.remove_pod(&pod)?;
    expect_back_to(s, &before, "the port-forward pod")
}

/// A pod asking for the host's network (`hostNetwork: true`): the container backend
/// gives it the host's namespace; VM mode refuses it through CRI, naming the field,
/// and leaves nothing behind (never a VM with its own network instead).
fn host_network_pod(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let mut pc = env.pod_config(&format!("hostnet-{}", s.tag), None);
    if let Some(o) = pc
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|c| c.namespace_options.as_mut())
    {
        o.network = cri::NamespaceMode::Node as i32;
    }
    // As kubelet sends it: a hostNetwork pod has the node's hostname, so none is set.
    pc.hostname = String::new();
    let pod = env.run_pod(&pc, HANDLER);
    if s.vm {
        let err = match pod {
            Ok(id) => {
                let _ = env.remove_pod(&id);
                bail!("a hostNetwork pod started in VM mode")
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("hostNetwork"),
            "the refusal does not name the field: {err}"
        );
        ensure!(qemu_pids(s).is_empty(), "a VM is left: {:?}", qemu_pids(s));
    } else {
        let pod = pod?;
        let c = env.start_container(&pod, &pc, sleeper(s, "hn"))?;
        let inside = env.sh(&c, "readlink /proc/self/ns/net")?;
        let host = std::fs::read_link("/proc/self/ns/net")?;
        ensure!(
            inside.trim() == host.display().to_string(),
            "hostNetwork container in {inside}, host in {}",
            host.display()
        );
        env.remove_pod(&pod)?;
    }
    expect_back_to(s, &before, "the hostNetwork pod")
}

/// SECURITY 18 (CVE-2020-2026's pattern): a guest can write into the pod's share, so it
/// can plant symlinks there that point at host paths. The host must never follow them:
/// removing a container's part of the share, and the share itself at teardown, removes
/// the links and leaves their targets alone. The test plays the guest by writing into
/// the share directly on the host, where virtiofsd puts a guest's writes.
fn planted_symlinks_are_not_followed(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let canary = tempfile::Builder::new()
        .prefix("stockade-canary-")
        .tempdir_in("/tmp")?;
    std::fs::write(canary.path().join("keep"), "host data")?;
    let pc = env.pod_config(&format!("planted-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER)?;
    let c = env.start_container(&pod, &pc, sleeper(s, "x"))?;
    let vm_dirs: Vec<_> = std::fs::read_dir(env.ctd.stockade_state.join("vm"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(vm_dirs.len() == 1, "one sandbox dir: {vm_dirs:?}");
    let share = vm_dirs[0].join("share");
    let plant = |link: std::path::PathBuf| -> Result<()> {
        std::os::unix::fs::symlink(canary.path(), &link)
            .with_context(|| format!("plant {}", link.display()))
    };
    plant(share.join(&c).join("planted"))?;
    plant(share.join(&c).join("mounts").join("planted"))?;
    plant(share.join("planted-at-the-top"))?;
    // The container's part of the share goes at RemoveContainer, the rest at teardown.
    env.stop_container(&c, 0)?;
    env.remove_container(&c)?;
    ensure!(
        !share.join(&c).exists(),
        "the container's share is still there"
    );
    env.remove_pod(&pod)?;
    let kept = std::fs::read_to_string(canary.path().join("keep"))
        .context("the host file behind a planted link is gone")?;
    ensure!(kept == "host data", "the host file changed: {kept:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&canary.path().display().to_string()),
        "something was mounted over the host dir"
    );
    expect_back_to(s, &before, "the pod with planted links")
}

/// `kill -9` of the pod's shim: containerd notices, and StopPodSandbox/RemovePodSandbox
/// clean up through the shim's `delete` (VM, helpers, mounts, namespace).
fn shim_killed(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let pc = env.pod_config(&format!("crash-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER)?;
    let c = env.start_container(&pod, &pc, sleeper(s, "x"))?;
    let shims = env.ctd.shims();
    ensure!(shims.len() == before.shims + 1, "shims: {shims:?}");
    let pid = shims
        .last()
        .and_then(|l| l.split_whitespace().next())
        .context("shim pid")?;
    run(Command::new("kill").args(["-9", pid]));
    env.wait_state(
        &c,
        cri::ContainerState::ContainerExited,
        Duration::from_secs(30),
    )?;
    env.remove_pod(&pod)?;
    expect_no_leaks(s, &[&pod, &c])?;
    expect_back_to(s, &before, "the crashed pod")
}

/// A pod annotation may ask for the stronger backend: under `mode = "container"`,
/// `io.stockade.mode = vm` (passed through `pod_annotations`) puts the pod in a VM.
fn annotation_asks_for_a_vm(s: &Suite) -> Result<()> {
    let env = &s.env;
    let before = fresh(s);
    let mut pc = env.pod_config(&format!("asks-vm-{}", s.tag), None);
    pc.annotations
        .insert("io.stockade.mode".into(), "vm".into());
    let pod = env.run_pod(&pc, HANDLER)?;
    let a = env.start_container(&pod, &pc, sleeper(s, "a"))?;
    let b = env.start_container(&pod, &pc, sleeper(s, "b"))?;
    ensure!(qemu_pids(s).len() == 1, "one VM: {:?}", qemu_pids(s));
    let host = run(Command::new("uname").arg("-r")).stdout;
    for c in [&a, &b] {
        let guest = env.sh(c, "uname -r")?;
        ensure!(guest != host, "{c} runs on the host kernel");
    }
    env.remove_pod(&pod)?;
    expect_back_to(s, &before, "the VM pod")
}

/// Sequential pod create/remove cycles ($STOCKADE_CRI_CYCLES, 50 by default) leak no
/// fd, mount, interface, namespace or process.
fn create_remove_cycles(s: &Suite) -> Result<()> {
    let env = &s.env;
    let cycles: usize = std::env::var("STOCKADE_CRI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let one = |i: usize| -> Result<()> {
        let pc = env.pod_config(&format!("cycle-{}-{i}", s.tag), None);
        let pod = env.run_pod(&pc, HANDLER)?;
        let c = env.start_container(&pod, &pc, sleeper(s, "c"))?;
        let o = env.exec_sync(&c, &["true"])?;
        ensure!(o.code == 0, "cycle {i}: exec {o:?}");
        env.remove_pod(&pod)
    };
    // One warm-up cycle: containerd opens its long-lived connections on the first pod.
    one(0)?;
    std::thread::sleep(Duration::from_secs(1));
    let before = fresh(s);
    let start = Instant::now();
    for i in 1..=cycles {
        one(i).with_context(|| format!("cycle {i}"))?;
    }
    println!("  {cycles} cycles in {:.1}s", start.elapsed().as_secs_f64());
    expect_back_to(s, &before, &format!("{cycles} cycles"))
}

/// The escape suite (see `stockade_integration::escape`) as Kubernetes runs pods: one
/// pod with three containers, with no profile (CRI passes none: Stockade's default),
/// `RuntimeDefault` and a `Localhost` profile that denies chmod, each checked in its
/// init and in an ExecSync. Then a pod on a handler whose config follows Kubernetes on
/// no-new-privileges: NoNewPrivs is 0 there, yet Seccomp is 2, CapEff is what the spec
/// says (CAP_SYS_ADMIN, lent to load the filters, is gone) and every deny holds.
fn escape_suite(s: &Suite) -> Result<()> {
    use cri::security_profile::ProfileType;
    let env = &s.env;
    let before = fresh(s);
    let dir = tempfile::tempdir()?;
    let localhost = escape::chmod_profile(dir.path())?.display().to_string();
    let profile = |t: ProfileType, path: &str| {
        Some(cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: path.into(),
        })
    };
    type Wanted<'a> = (&'a str, Option<cri::SecurityProfile>, bool);
    let pod_of = |handler: &str, name: &str, nnp: bool, containers: Vec<Wanted<'_>>| {
        let pc = env.pod_config(&format!("{name}-{}", s.tag), None);
        let pod = env.run_pod(&pc, handler)?;
        let result = (|| -> Result<()> {
            for (name, seccomp, chmod_denied) in containers {
                let mut config = container(s, name, &escape::init_args());
                if let Some(sc) = config
                    .linux
                    .as_mut()
                    .and_then(|l| l.security_context.as_mut())
                {
                    sc.seccomp = seccomp;
                }
                let id = env.start_container(&pod, &pc, config)?;
                let start = Instant::now();
                let init_out = loop {
                    let o = env.exec_sync(&id, &["cat", "/tmp/init.out"])?;
                    if o.code == 0 {
                        break o.stdout;
                    }
                    ensure!(
                        start.elapsed() < Duration::from_secs(120),
                        "{name}: no init output"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                };
                let expect = escape::Expect {
                    no_new_privs: nnp,
                    cap_eff: escape::spec_cap_eff(&env.ctd, CRI_NAMESPACE, &id)?,
                    chmod_denied,
                };
                escape::check(&format!("{handler} {name}: the init"), &init_out, &expect)?;
                let o = env.exec_sync(&id, &["sh", "-c", &escape::script()])?;
                escape::check(&format!("{handler} {name}: ExecSync"), &o.stdout, &expect)?;
            }
            Ok(())
        })();
        env.remove_pod(&pod)?;
        result
    };
    pod_of(
        HANDLER,
        "escape",
        true,
        vec![
            ("unset", None, false),
            (
                "runtime-default",
                profile(ProfileType::RuntimeDefault, ""),
                false,
            ),
            (
                "localhost",
                profile(ProfileType::Localhost, &localhost),
                true,
            ),
        ],
    )?;
    pod_of(
        HANDLER_FOLLOWING_K8S,
        "escape-k8s",
        false,
        vec![(
            "runtime-default",
            profile(ProfileType::RuntimeDefault, ""),
            false,
        )],
    )?;
    expect_back_to(s, &before, "the escape pods")
}

/// The pod VM's QEMU pid, from its sandbox dir's record.
fn pod_qemu_pid(s: &Suite, pod: &str) -> Result<u32> {
    let dir =
        stockade_runtime::vm::sandbox::sandbox_dir(&s.env.ctd.stockade_state, CRI_NAMESPACE, pod);
    let pids = std::fs::read_to_string(dir.join("pids"))
        .with_context(|| format!("{}/pids", dir.display()))?;
    pids.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .context("no QEMU pid recorded")
}

/// The warm pool through CRI (VM backend): a pod claims the pool's VM (its QEMU is the
/// pool's, the service its parent) and gets its own identity and network; the pool
/// refills with a new VM; a pod of another size boots its own; a pool VM that dies is
/// replaced; stopping the service removes every pool VM and leaves the claimed pod
/// running; without the service, and with a service that keeps none, pods boot their
/// own. The claimed VM was warmed up and keeps nothing of it. Nothing is left at the end.
fn warm_pool(s: &Suite) -> Result<()> {
    use stockade_integration::pool::{TestPool, parent_of};
    let env = &s.env;
    let before = fresh(s);
    let mut pool = TestPool::start(&env.ctd.config, "size = 1")?;
    let boot = Duration::from_secs(120);
    let first = pool.wait_until(boot, "ready", |st| st.ready.len() == 1)?;
    let pooled = first.ready[0].qemu_pid;

    // Claimed: the pod's QEMU is the pool's, with the pod's hostname and network.
    let pc = env.pod_config(&format!("pooled-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER)?;
    ensure!(
        pod_qemu_pid(s, &pod)? == pooled,
        "the pod did not get the pool's VM (pid {pooled})"
    );
    ensure!(
        parent_of(pooled) == Some(pool.pid()),
        "the pool VM's parent"
    );
    // It was warmed up (a throwaway container created and deleted in it before it was
    // offered), and the pod's sandbox holds nothing of that.
    ensure!(
        pool.log_text().contains("pool VM warmed up"),
        "the pool's log does not say its VM was warmed up"
    );
    let sandbox =
        stockade_runtime::vm::sandbox::sandbox_dir(&env.ctd.stockade_state, CRI_NAMESPACE, &pod);
    for left in [sandbox.join("warm-up"), sandbox.join("share/warm-up")] {
        ensure!(!left.exists(), "the pool's warm-up left {}", left.display());
    }
    let port = s.base_port + 70;
    let c = env.start_container(&pod, &pc, container(s, "web", &web(port, "pooled")))?;
    let ip = env.pod_ip(&pod)?;
    ensure!(http_get_retry(&ip, port as u16, Duration::from_secs(30))?.contains("pooled"));
    let host = env.sh(&c, "hostname; cat /sys/class/net/eth0/address")?;
    ensure!(
        host.starts_with(&pc.hostname),
        "identity in the claimed VM: {host}"
    );
    let mac = host.lines().nth(1).unwrap_or_default().to_string();
    ensure!(
        mac != "02:00:00:00:00:01",
        "the claimed VM kept the pool's MAC"
    );

    // Refilled with a new VM; the claimed one is never handed out again.
    let refilled = pool.wait_until(boot, "refilled", |st| {
        st.ready.len() == 1 && st.ready[0].qemu_pid != pooled
    })?;
    ensure!(refilled.claimed == 1, "claims counted: {refilled:?}");
    let spare = refilled.ready[0].qemu_pid;

    // Another size: its own VM, the pool's stays.
    let mut big = env.pod_config(&format!("pool-big-{}", s.tag), None);
    if let Some(linux) = big.linux.as_mut() {
        linux.resources = Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 100_000,
            memory_limit_in_bytes: 64 * MIB,
            ..Default::default()
        });
    }
    let big_pod = env.run_pod(&big, HANDLER)?;
    let big_qemu = pod_qemu_pid(s, &big_pod)?;
    ensure!(
        big_qemu != spare && parent_of(big_qemu) != Some(pool.pid()),
        "a pod of another size took a pool VM"
    );
    ensure!(
        pool.status()?.ready.iter().any(|v| v.qemu_pid == spare),
        "the spare VM left the pool"
    );
    env.remove_pod(&big_pod)?;

    // A pool VM that dies is replaced, and leaves nothing.
    let _ = run(Command::new("kill").args(["-9", &spare.to_string()]));
    pool.wait_until(boot, "replaced", |st| {
        st.ready.len() == 1 && st.ready[0].qemu_pid != spare
    })?;
    let pool_dirs = || {
        std::fs::read_dir(env.ctd.stockade_state.join("vm"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pool"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(10), || pool_dirs() == 1)?;

    // Stopping the service removes its VMs; the claimed pod runs on.
    ensure!(pool.stop()? == 0, "the pool service's exit code");
    ensure!(
        pool_dirs() == 0,
        "pool VM dirs left after the service stopped"
    );
    let left: Vec<String> = qemu_pids(s)
        .into_iter()
        .filter(|p| p.parse::<u32>().ok() != Some(pooled))
        .collect();
    ensure!(
        left.is_empty(),
        "pool QEMUs left after the service stopped: {left:?}"
    );
    ensure!(
        !pool.state_dir.join("pool").exists(),
        "the pool's socket and namespace dir were left"
    );
    ensure!(
        env.sh(&c, "echo alive")?.trim() == "alive",
        "the claimed pod after the stop"
    );
    ensure!(http_get_retry(&ip, port as u16, Duration::from_secs(10))?.contains("pooled"));

    // No service: a pod boots its own VM.
    let cold = env.pod_config(&format!("pool-none-{}", s.tag), None);
    let cold_pod = env.run_pod(&cold, HANDLER)?;
    ensure!(pod_qemu_pid(s, &cold_pod)? != pooled);
    env.remove_pod(&cold_pod)?;
    ensure!(
        env.ctd
            .log()
            .contains("no VM from the warm pool: booting one"),
        "the shim's log says why the pod booted its own VM"
    );

    // A service that keeps no VM of the shape: the same.
    let empty = TestPool::start(&env.ctd.config, "size = 0")?;
    empty.wait_until(Duration::from_secs(20), "up", |st| st.ready.is_empty())?;
    let cold = env.pod_config(&format!("pool-empty-{}", s.tag), None);
    let cold_pod = env.run_pod(&cold, HANDLER)?;
    let cold_qemu = pod_qemu_pid(s, &cold_pod)?;
    ensure!(
        parent_of(cold_qemu) != Some(empty.pid()),
        "an empty pool handed out a VM"
    );
    env.remove_pod(&cold_pod)?;
    drop(empty);

    env.remove_pod(&pod)?;
    expect_back_to(s, &before, "the pool's pods")?;
    warm_pool_cloud_kernel(s, &before)
}

/// The warm pool with Debian's cloud kernel (the fallback guest kernel), through the
/// handler whose config boots it: a pod claims the pool's VM and runs in that kernel.
fn warm_pool_cloud_kernel(s: &Suite, before: &HostSnapshot) -> Result<()> {
    use stockade_integration::pool::{TestPool, parent_of};
    let env = &s.env;
    let config = env.ctd.dir.path().join("stockade-cloud.toml");
    let mut pool = TestPool::start(&config, "size = 1")?;
    let ready = pool.wait_until(Duration::from_secs(180), "ready", |st| st.ready.len() == 1)?;
    let pooled = ready.ready[0].qemu_pid;
    let pc = env.pod_config(&format!("pooled-cloud-{}", s.tag), None);
    let pod = env.run_pod(&pc, HANDLER_CLOUD_KERNEL)?;
    ensure!(
        parent_of(pooled) == Some(pool.pid()),
        "the cloud-kernel pool VM's parent"
    );
    let c = env.start_container(&pod, &pc, sleeper(s, "cloud"))?;
    let release = std::fs::read_to_string(
        stockade_integration::vm::cloud_guest_assets().join("guest-kernel-release"),
    )?;
    let uname = env.sh(&c, "uname -r")?;
    ensure!(
        uname.trim() == release.trim(),
        "the claimed VM runs {uname:?}, not the cloud kernel {release:?}"
    );
    let dir = stockade_runtime::vm::sandbox::sandbox_dir(&pool.state_dir, CRI_NAMESPACE, &pod);
    let recorded = std::fs::read_to_string(dir.join("pids"))?;
    ensure!(
        recorded.split_whitespace().next() == Some(pooled.to_string().as_str()),
        "the cloud-kernel pod did not get the pool's VM"
    );
    ensure!(pool.stop()? == 0, "the pool service's exit code");
    env.remove_pod(&pod)?;
    let left = std::fs::read_dir(pool.state_dir.join("vm"))
        .map(|d| d.count())
        .unwrap_or(0);
    ensure!(
        left == 0,
        "{left} VM dirs left in the cloud kernel's state dir"
    );
    expect_back_to(s, before, "the cloud-kernel pool's pod")
}

fn run_suite(mode: &'static str, extra: &str, base_port: i32) -> (usize, usize) {
    let env = match CriEnv::start(mode, extra) {
        Ok(e) => e,
        Err(e) => {
            println!("cri ({mode}) setup failed: {e:#}");
            return (0, 1);
        }
    };
    let suite = Suite {
        env,
        vm: mode == "vm",
        tag: if mode == "vm" { "vm" } else { "ct" },
        base_port,
    };
    println!("== CRI, {mode} backend");
    let mut cases: Vec<Case> = vec![
        ("pod_with_two_containers", pod_with_two_containers),
        ("escape_suite", escape_suite),
        ("pods_reach_each_other", pods_reach_each_other),
        ("pod_sizing", pod_sizing),
        ("shim_killed", shim_killed),
        ("create_remove_cycles", create_remove_cycles),
        ("host_network_pod", host_network_pod),
        ("port_forward", port_forward),
        ("net_admin_pod_makes_a_bridge", net_admin_pod_makes_a_bridge),
    ];
    if suite.vm {
        cases.push((
            "planted_symlinks_are_not_followed",
            planted_symlinks_are_not_followed,
        ));
        cases.push(("warm_pool", warm_pool));
    } else {
        cases.push(("annotation_asks_for_a_vm", annotation_asks_for_a_vm));
    }
    stockade_integration::run_cases(&suite, &cases, |s| s.env.ctd.log())
}

fn main() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED cri: {why}");
        return;
    }
    for p in [
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !std::path::Path::new(p).exists() {
            println!("SKIPPED cri: {p} missing: run packaging/setup.sh --deps");
            return;
        }
    }
    let only: Option<String> = std::env::var("STOCKADE_CRI_BACKEND").ok();
    let mut total = (0, 0);
    if only.as_deref().is_none_or(|m| m == "container") {
        // With a hypervisor configured, so a pod annotation can ask for a VM.
        let (p, f) = run_suite("container", &hypervisor_toml(&guest_config()), 30080);
        total = (total.0 + p, total.1 + f);
    }
    if only.as_deref().is_none_or(|m| m == "vm") {
        let hv = guest_config();
        if !hv.kernel.exists() || !guest_assets().join("initrd.img").exists() {
            println!("cri (vm): guest assets missing: run packaging/setup.sh --deps");
            total.1 += 1;
        } else {
            let (p, f) = run_suite("vm", &hypervisor_toml(&hv), 30180);
            total = (total.0 + p, total.1 + f);
        }
    }
    println!("{} passed, {} failed", total.0, total.1);
    if total.1 > 0 {
        std::process::exit(1);
    }
}
