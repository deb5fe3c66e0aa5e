//! The Debian package as a user meets it: `packaging/deb/build.sh` builds it, lintian
//! checks it, `apt-get install ./stockade_*.deb` installs it on this machine; then Docker
//! and containerd's CRI run containers (and a VM pod) through the installed shim, its
//! installed config and guest assets alone: the daemons' `PATH` has neither the build
//! tree nor `/usr/local/bin`, and no `$STOCKADE_CONFIG` is set. The shim's `install` and
//! `uninstall` register it with each daemon, and their round trips must leave
//! daemon.json and containerd's config byte-identical. The Kubernetes node installer
//! then runs on this machine as its DaemonSet would, with the package's tree as its
//! payload, and pods must run from `/opt/stockade` alone. `apt-get purge` must leave
//! nothing of Stockade on disk.
//!
//! A developer's own install (setup.sh's `/usr/share/stockade`, `/etc/stockade`) is
//! moved aside for the run and put back afterwards, whatever happens.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use stockade_integration::containerd::SYSTEM_PATH;
use stockade_integration::cri::CriEnv;
use stockade_integration::{
    IMAGE, Out, TestContainerd, TestDocker, build_image, run, skip_reason, workspace_root,
};

const SHIM: &str = "/usr/bin/containerd-shim-stockade-v2";
/// Where the node installer puts Stockade, and the link it puts on containerd's PATH.
const OPT: &str = "/opt/stockade";
const NODE_LINK: &str = "/usr/local/bin/containerd-shim-stockade-v2";
/// The second CRI handler the suite adds: a VM pod's.
const VM_HANDLER: &str = "stockade-vm";
/// What the package may own or make; none may be left after a purge.
const OURS: [&str; 8] = [
    "/etc/stockade",
    "/usr/share/stockade",
    "/usr/libexec/stockade",
    "/usr/share/doc/stockade",
    "/run/stockade",
    SHIM,
    OPT,
    NODE_LINK,
];

fn must(out: Out, what: &str) -> Result<Out> {
    ensure!(
        out.ok(),
        "{what} failed ({:?}):\n{}\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(out)
}

fn apt(args: &[&str]) -> Out {
    run(Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "stockade"]))
        .stdout
        .contains("installed")
}

fn shim(args: &[&str]) -> Result<Out> {
    shim_at(Path::new(SHIM), args)
}

fn shim_at(bin: &Path, args: &[&str]) -> Result<Out> {
    must(
        run(Command::new(bin).args(args)),
        &format!("{} {}", bin.display(), args.join(" ")),
    )
}

/// A developer's install moved out of the package's way, and put back on drop (after
/// the package, if a failure left it installed, is purged).
struct Aside(Vec<(PathBuf, PathBuf)>);

impl Aside {
    fn take() -> Result<Aside> {
        if Path::new(OPT).exists() {
            bail!("{OPT} exists (a node installer's?): the package test installs there");
        }
        let mut moved = Vec::new();
        for p in ["/usr/share/stockade", "/etc/stockade", NODE_LINK] {
            let p = PathBuf::from(p);
            let aside = p.with_file_name(".stockade-package-test-aside");
            if aside.exists() {
                bail!(
                    "{} exists: an earlier run was interrupted; move it back to {} first",
                    aside.display(),
                    p.display()
                );
            }
            if p.exists() || p.is_symlink() {
                std::fs::rename(&p, &aside)
                    .with_context(|| format!("move {} aside", p.display()))?;
                moved.push((p, aside));
            }
        }
        Ok(Aside(moved))
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if installed() {
            let _ = apt(&["purge", "-y", "-qq", "stockade"]);
        }
        // What a failed node-installer step left (nothing was there before).
        let _ = std::fs::remove_dir_all(OPT);
        if std::fs::read_link(NODE_LINK).is_ok_and(|t| t.starts_with(OPT)) {
            let _ = std::fs::remove_file(NODE_LINK);
        }
        for (p, aside) in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            }
            if let Err(e) = std::fs::rename(aside, p) {
                eprintln!(
                    "could not move {} back to {}: {e}",
                    aside.display(),
                    p.display()
                );
            }
        }
    }
}

/// Build the package; lintian; install it. Returns the .deb.
fn build_and_install() -> Result<PathBuf> {
    let root = workspace_root();
    let out = must(
        run(Command::new("bash").arg(root.join("packaging/deb/build.sh"))),
        "packaging/deb/build.sh",
    )?;
    let deb = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
    ensure!(
        deb.extension().is_some_and(|e| e == "deb") && deb.exists(),
        "build.sh's last line is not a .deb: {:?}",
        out.stdout
    );
    println!("built {}", deb.display());
    let lint = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb));
    println!("lintian:\n{}{}", lint.stdout, lint.stderr);
    ensure!(lint.ok(), "lintian fails the package");
    if installed() {
        must(apt(&["purge", "-y", "-qq", "stockade"]), "purge a leftover")?;
    }
    must(
        apt(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            &deb.display().to_string(),
        ]),
        "apt-get install ./stockade_*.deb",
    )?;
    ensure!(installed(), "dpkg does not list stockade as installed");
    Ok(deb)
}

/// What dpkg says the package is made of, and what `check` says of the installed node.
fn installed_files() -> Result<()> {
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "stockade"]));
    ensure!(
        conffiles
            .stdout
            .contains("/etc/stockade/configuration.toml"),
        "the admin's config is not a conffile: {:?}",
        conffiles.stdout
    );
    let check = shim(&["check"])?.stdout;
    println!("check:\n{check}");
    ensure!(!check.contains("MISSING"), "check finds files missing");
    for want in [
        "/usr/libexec/stockade/virtiofsd (ok)",
        "/usr/libexec/stockade/vhost-device-vsock (ok)",
        "/usr/share/stockade/vmlinuz (ok)",
        "guest kernel: the Stockade kernel",
    ] {
        ensure!(check.contains(want), "check does not say {want:?}");
    }
    for doc in [
        "/usr/share/man/man8/containerd-shim-stockade-v2.8.gz",
        "/usr/share/bash-completion/completions/containerd-shim-stockade-v2",
        "/lib/systemd/system/stockade-pool.service",
        "/usr/share/stockade/containerd/config-v2.toml",
    ] {
        ensure!(Path::new(doc).exists(), "{doc} is not installed");
    }
    Ok(())
}

/// The shim processes serving this containerd's containers run the installed binary.
fn shim_is_installed_one(ctd: &TestContainerd, want: &dyn Fn(&Path) -> bool) -> Result<()> {
    let shims = ctd.shims();
    ensure!(!shims.is_empty(), "no shim of this containerd is running");
    for line in shims {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        ensure!(want(&exe), "shim {pid} runs {}", exe.display());
    }
    Ok(())
}

fn is_package_shim(exe: &Path) -> bool {
    exe == Path::new(SHIM)
}

/// `install docker`, dockerd restarted on it, `docker run --runtime stockade` and
/// `docker exec`, `uninstall docker`: the admin's daemon.json comes back byte for byte.
fn docker(tmp: &Path) -> Result<()> {
    let json = tmp.join("daemon.json");
    let admin = "{\n    \"log-level\": \"info\",\n    \"default-ulimits\": {\n        \"nofile\": {\"Name\": \"nofile\", \"Hard\": 4096, \"Soft\": 2048}\n    },\n    \"live-restore\": false\n}\n";
    std::fs::write(&json, admin)?;
    let cfg = json.display().to_string();
    let dry = shim(&["install", "docker", "--config", &cfg, "--dry-run"])?.stdout;
    ensure!(
        dry.contains("+        \"stockade\": {") && std::fs::read_to_string(&json)? == admin,
        "--dry-run: {dry}"
    );
    let out = shim(&["install", "docker", "--config", &cfg])?.stdout;
    ensure!(
        out.contains("changed:") && out.contains("systemctl restart docker"),
        "{out}"
    );
    ensure!(
        shim(&["install", "docker", "--config", &cfg])?
            .stdout
            .starts_with("unchanged:")
    );

    let ctd = TestContainerd::start_installed(SYSTEM_PATH, |_| String::new(), |_| Ok(()))?;
    let dockerd = TestDocker::start_installed(&ctd, &json)?;
    let tar = tmp.join("busybox.tar");
    build_image(&tar)?;
    must(
        dockerd.docker(&["load", "-i", &tar.display().to_string()]),
        "docker load",
    )?;
    // Stockade's installed config forces no_new_privs (runc would not): the container
    // ran through the installed shim with the installed configuration.
    let hi = must(
        dockerd.docker(&[
            "run",
            "--rm",
            "--runtime",
            "stockade",
            IMAGE,
            "sh",
            "-c",
            "echo hi; grep NoNewPrivs /proc/self/status; ulimit -n",
        ]),
        "docker run --runtime stockade",
    )?;
    // The admin's other keys still hold: default-ulimits.
    ensure!(
        hi.stdout.starts_with("hi\n")
            && hi.stdout.contains("NoNewPrivs:\t1")
            && hi.stdout.ends_with("\n2048\n"),
        "{:?}",
        hi.stdout
    );
    must(
        dockerd.docker(&[
            "run",
            "-d",
            "--runtime",
            "stockade",
            "--name",
            "pkg-docker",
            IMAGE,
            "sleep",
            "600",
        ]),
        "docker run -d",
    )?;
    shim_is_installed_one(&ctd, &is_package_shim)?;
    let exec = must(
        dockerd.docker(&[
            "exec",
            "pkg-docker",
            "grep",
            "NoNewPrivs",
            "/proc/self/status",
        ]),
        "docker exec",
    )?;
    ensure!(exec.stdout.contains("NoNewPrivs:\t1"), "{:?}", exec.stdout);
    must(dockerd.docker(&["rm", "-f", "pkg-docker"]), "docker rm")?;
    drop(dockerd);
    drop(ctd);

    let out = shim(&["uninstall", "docker", "--config", &cfg])?.stdout;
    ensure!(out.contains("changed:"), "{out}");
    ensure!(
        std::fs::read_to_string(&json)? == admin,
        "daemon.json after install + uninstall differs:\n{}",
        std::fs::read_to_string(&json)?
    );
    ensure!(
        shim(&["uninstall", "docker", "--config", &cfg])?
            .stdout
            .starts_with("unchanged:")
    );
    Ok(())
}

/// The machine's own containerd config (Debian's), under a scratch root: install, then
/// containerd itself reads the result, then uninstall gives the bytes back.
fn machine_containerd_config(tmp: &Path) -> Result<()> {
    let machine = Path::new("/etc/containerd/config.toml");
    if !machine.exists() {
        println!("no {}: skipping its round trip", machine.display());
        return Ok(());
    }
    let root = tmp.join("root");
    let file = root.join("etc/containerd/config.toml");
    std::fs::create_dir_all(file.parent().unwrap_or(&root))?;
    std::fs::copy(machine, &file)?;
    let before = std::fs::read(&file)?;
    let r = root.display().to_string();
    shim(&["install", "containerd", "--root", &r])?;
    let dump = must(
        run(Command::new("containerd")
            .arg("--config")
            .arg(&file)
            .args(["config", "dump"])),
        "containerd config dump",
    )?;
    ensure!(
        dump.stdout.contains("runtimes.stockade]")
            && dump.stdout.contains("io.containerd.stockade.v2"),
        "containerd does not read the runtime from the installed config"
    );
    shim(&["uninstall", "containerd", "--root", &r])?;
    ensure!(
        std::fs::read(&file)? == before,
        "{} after install + uninstall differs",
        machine.display()
    );
    Ok(())
}

/// The CRI handler `stockade-vm`, added to containerd's `config` by `bin`'s `install
/// containerd`: its Stockade config is `base` (an installed one) with `mode = "vm"` (and
/// TCG where `bin check` finds KVM unusable), written to `vm_config`, as an admin who
/// wants a VM handler copies and edits it.
fn install_vm_handler(bin: &Path, base: &Path, config: &Path, vm_config: &Path) -> Result<()> {
    let mut cfg: toml::Table = std::fs::read_to_string(base)?.parse()?;
    let kvm = shim_at(bin, &["check"])?.stdout.contains("kvm: usable");
    let mut set = |table: &str, key: &str, value: &str| {
        if let Some(t) = cfg.get_mut(table).and_then(|t| t.as_table_mut()) {
            t.insert(key.into(), toml::Value::String(value.into()));
        }
    };
    set("runtime", "mode", "vm");
    set("hypervisor", "accel", if kvm { "kvm" } else { "tcg" });
    std::fs::write(vm_config, toml::to_string(&cfg)?)?;
    shim_at(
        bin,
        &[
            "install",
            "containerd",
            "--config",
            &config.display().to_string(),
            "--runtime-name",
            VM_HANDLER,
            "--shim-config",
            &vm_config.display().to_string(),
        ],
    )?;
    Ok(())
}

fn uninstall_vm_handler(bin: &Path, config: &Path) -> Result<()> {
    let c = config.display().to_string();
    shim_at(
        bin,
        &[
            "uninstall",
            "containerd",
            "--config",
            &c,
            "--runtime-name",
            VM_HANDLER,
        ],
    )?;
    Ok(())
}

/// A pod of the handler `stockade` (this node's backend: the container backend where KVM
/// is not usable) and one of `stockade-vm`, each with a container and an ExecSync whose
/// `uname -r` is the host's, then the guest kernel's (`guest_release`'s); the shims must
/// run the binary `shim_exe` accepts. Nothing of the VM is left after.
fn run_pods(cri: &CriEnv, shim_exe: &dyn Fn(&Path) -> bool, guest_release: &Path) -> Result<()> {
    let host = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let guest = std::fs::read_to_string(guest_release)?;
    for (handler, release) in [("stockade", host.as_str()), (VM_HANDLER, guest.trim())] {
        let name = format!("pkg-{handler}");
        let pod_config = cri.pod_config(&name, None);
        let pod = cri
            .run_pod(&pod_config, handler)
            .with_context(|| format!("RunPodSandbox ({handler})"))?;
        let c = cri.start_container(
            &pod,
            &pod_config,
            cri.container_config("app", &["sleep", "600"]),
        )?;
        shim_is_installed_one(&cri.ctd, shim_exe)?;
        let exec = cri.exec_sync(
            &c,
            &["sh", "-c", "uname -r; grep NoNewPrivs /proc/self/status"],
        )?;
        ensure!(
            exec.code == 0
                && exec.stdout.starts_with(&format!("{release}\n"))
                && exec.stdout.contains("NoNewPrivs:\t1"),
            "{handler}: {exec:?}"
        );
        println!("{handler}: kernel {release}");
        cri.stop_container(&c, 0)?;
        cri.remove_container(&c)?;
        cri.remove_pod(&pod)?;
    }
    let leftovers: Vec<String> = std::fs::read_dir("/run/stockade/vm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    ensure!(leftovers.is_empty(), "VM sandboxes left: {leftovers:?}");
    Ok(())
}

/// containerd's CRI with the runtime `install`ed into its config: the default handler,
/// and a VM handler whose Stockade config is the installed one with mode = vm; pods of
/// both ([`run_pods`]); then `uninstall` of both gives the config its bytes back.
fn cri_pods(tmp: &Path) -> Result<()> {
    let before = std::sync::Mutex::new(Vec::new());
    let cri = CriEnv::start_installed(SYSTEM_PATH, |config| {
        *before.lock().expect("lock") = std::fs::read(config)?;
        shim(&[
            "install",
            "containerd",
            "--config",
            &config.display().to_string(),
        ])?;
        install_vm_handler(
            Path::new(SHIM),
            Path::new("/etc/stockade/configuration.toml"),
            config,
            &tmp.join("vm.toml"),
        )
    })?;
    run_pods(
        &cri,
        &is_package_shim,
        Path::new("/usr/share/stockade/guest-kernel-release"),
    )?;
    let config_file = cri.ctd.dir.path().join("containerd.toml");
    shim(&[
        "uninstall",
        "containerd",
        "--config",
        &config_file.display().to_string(),
    ])?;
    uninstall_vm_handler(Path::new(SHIM), &config_file)?;
    ensure!(
        std::fs::read(&config_file)? == *before.lock().expect("lock"),
        "containerd's config after install + uninstall differs"
    );
    drop(cri);
    Ok(())
}

/// The Kubernetes node installer (`packaging/node/stockade-deploy.sh`) run on this
/// machine as its DaemonSet runs it on a node, with the host's `/` as `HOST_ROOT` and
/// the package's tree (`dpkg-deb -x`, as its image holds it) as the payload; a private
/// containerd's config stands for the node's, and kubectl and the restart are recorded
/// (no cluster, no systemd here: containerd starts after the install). containerd's
/// `PATH` is systemd's: `/usr/local/bin` first. CRI pods of both backends must run from
/// `/opt/stockade` alone; `uninstall` must give the config its bytes back and leave
/// nothing in `/opt` or `/usr/local/bin`.
fn node_installer(tmp: &Path, deb: &Path) -> Result<()> {
    let payload = tmp.join("payload");
    must(
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&payload)),
        "dpkg-deb -x",
    )?;
    let payload_shim = payload.join("usr/bin/containerd-shim-stockade-v2");
    let calls = tmp.join("kubectl.log");
    let kubectl = tmp.join("kubectl");
    std::fs::write(
        &kubectl,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
    )?;
    std::fs::set_permissions(
        &kubectl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let script = workspace_root().join("packaging/node/stockade-deploy.sh");
    let deploy = |verb: &str, config: &Path| {
        must(
            run(Command::new("sh")
                .arg(&script)
                .arg(verb)
                .env("HOST_ROOT", "/")
                .env("PAYLOAD", &payload)
                .env("NODE_NAME", "stockade-test-node")
                .env("KUBECTL", &kubectl)
                .env("RESTART_CONTAINERD", "true")
                .env("CONTAINERD_CONFIG", config)),
            &format!("stockade-deploy.sh {verb}"),
        )
    };
    let before = std::sync::Mutex::new(Vec::new());
    let cri = CriEnv::start_installed(&format!("/usr/local/bin:{SYSTEM_PATH}"), |config| {
        *before.lock().expect("lock") = std::fs::read(config)?;
        deploy("install", config)?;
        install_vm_handler(
            &payload_shim,
            &Path::new(OPT).join("etc/configuration.toml"),
            config,
            &tmp.join("node-vm.toml"),
        )
    })?;
    let config_file = cri.ctd.dir.path().join("containerd.toml");
    run_pods(
        &cri,
        &|exe| exe.starts_with(Path::new(OPT).join("releases")),
        &Path::new(OPT).join("share/guest-kernel-release"),
    )?;
    uninstall_vm_handler(&payload_shim, &config_file)?;
    deploy("uninstall", &config_file)?;
    ensure!(
        std::fs::read(&config_file)? == *before.lock().expect("lock"),
        "containerd's config after the node installer's install + uninstall differs"
    );
    drop(cri);
    ensure!(!Path::new(OPT).exists(), "{OPT} left");
    ensure!(
        !Path::new(NODE_LINK).exists() && !Path::new(NODE_LINK).is_symlink(),
        "{NODE_LINK} left"
    );
    let calls = std::fs::read_to_string(&calls)?;
    for want in [
        "label node stockade-test-node stockade.io/runtime=true --overwrite",
        "apply -f /",
        "label node stockade-test-node stockade.io/runtime-",
        "delete -f /",
    ] {
        ensure!(
            calls.contains(want),
            "kubectl was not called with {want:?}:\n{calls}"
        );
    }
    Ok(())
}

/// `apt-get purge`: every file the package had is gone, and so is everything of ours.
fn purge() -> Result<()> {
    let files = run(Command::new("dpkg").args(["-L", "stockade"])).stdout;
    must(apt(&["purge", "-y", "-qq", "stockade"]), "apt-get purge")?;
    ensure!(!installed(), "still installed after purge");
    let mut left: Vec<String> = files
        .lines()
        .filter(|f| {
            let p = Path::new(f);
            p.exists() && !p.is_dir()
        })
        .map(String::from)
        .collect();
    left.extend(
        OURS.iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| p.to_string()),
    );
    let procs = run(Command::new("pgrep").args(["-a", "-f", SHIM])).stdout;
    left.extend(procs.lines().map(|l| format!("process {l}")));
    ensure!(left.is_empty(), "left after purge: {left:?}");
    Ok(())
}

fn main() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED package: {why}");
        return;
    }
    let started = std::time::Instant::now();
    let result = (|| -> Result<()> {
        let _aside = Aside::take()?;
        let tmp = tempfile::Builder::new()
            .prefix("stockade-pkg-")
            .tempdir_in("/tmp")?;
        let deb = std::cell::RefCell::new(PathBuf::new());
        let steps: [(&str, &dyn Fn() -> Result<()>); 7] = [
            ("build, lintian, apt-get install", &|| {
                *deb.borrow_mut() = build_and_install()?;
                Ok(())
            }),
            ("installed files", &installed_files),
            ("docker: install, run, exec, uninstall", &|| {
                docker(tmp.path())
            }),
            ("the machine's containerd config round trip", &|| {
                machine_containerd_config(tmp.path())
            }),
            ("cri: install, pods, uninstall", &|| cri_pods(tmp.path())),
            (
                "node installer: install, pods from /opt/stockade, uninstall",
                &|| node_installer(tmp.path(), &deb.borrow()),
            ),
            ("apt-get purge leaves nothing", &purge),
        ];
        for (name, step) in steps {
            let t = std::time::Instant::now();
            step().with_context(|| format!("step {name:?}"))?;
            println!(
                "test package: {name} ... ok ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => println!("\npackage: ok ({:.0}s)", started.elapsed().as_secs_f64()),
        Err(e) => {
            println!("\npackage: FAILED\n{e:#}");
            std::process::exit(1);
        }
    }
}
