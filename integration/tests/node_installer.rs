//! The Kubernetes node installer, packaging/node/stockade-deploy.sh, run for real against
//! a scratch root: a payload laid out like the Debian package (the release shim, small
//! stand-ins for the guest assets and the helpers, the repository's configuration.toml
//! and runtimeclass.yaml), a host root holding containerd's config, and recording
//! stand-ins for kubectl and containerd's restart (there is no cluster and no systemd
//! here). Install; install again (nothing on disk changes, no restart); an upgrade;
//! uninstall (the root as it was before, byte for byte, modes and symlinks); uninstall
//! again. Also: a config file containerd does not have yet, a foreign shim in
//! /usr/local/bin refused, a kubectl failure stopping uninstall before the host changes.
//! The containerd config the installer leaves is loaded by a real containerd (`config
//! dump`): 1.7 for a version-2 config, 2.1 for a version-3 one whose `imports` take the
//! drop-in. Skipped only where /usr/bin/containerd is missing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use stockade_integration::daemons::MATRIX_PREFIX;
use stockade_integration::{Out, run, shim_dir, workspace_root};
use stockade_runtime::config::Config;

const CONTAINERD_1: &str = "/usr/bin/containerd";
const NODE: &str = "node-a";
const RUNTIME_TYPE: &str = "io.containerd.stockade.v2";
const SHIM_CONFIG: &str = "/opt/stockade/etc/configuration.toml";
const SHIM_LINK: &str = "usr/local/bin/containerd-shim-stockade-v2";
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const CRI_V3: &str = "io.containerd.cri.v1.runtime";

/// A containerd 1.7 node's config (version 2) with content of its own, which the
/// installer must keep.
const CONFIG_V2: &str = r#"# containerd 1.7, as a kubeadm node has it
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
"#;

/// A containerd 2.x node's config (version 3) that imports drop-ins: the installer's
/// table goes to conf.d/stockade.toml, and this file stays as it is.
const CONFIG_V3: &str = r#"version = 3
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
"#;

/// Another drop-in already on that node.
const OTHER_DROP_IN: &str = r#"version = 3

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "registry.k8s.io/pause:3.10"
"#;

fn containerd_2() -> PathBuf {
    Path::new(MATRIX_PREFIX).join("usr/bin/containerd")
}

/// Why the tests cannot run here, if they cannot.
fn skip() -> Option<String> {
    (!Path::new(CONTAINERD_1).exists())
        .then(|| format!("{CONTAINERD_1} missing: run packaging/setup.sh --deps"))
}

/// A file system entry as the snapshots compare it.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

/// Every entry under `root` (not following symlinks), by its path below `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                Entry::Link(fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                walk(root, &path, out);
                Entry::Dir(mode)
            } else {
                Entry::File(mode, fs::read(&path).unwrap())
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What differs between two snapshots, by path (contents left out: binaries).
fn diff(a: &BTreeMap<PathBuf, Entry>, b: &BTreeMap<PathBuf, Entry>) -> Vec<String> {
    let kind = |e: Option<&Entry>| match e {
        None => "absent".to_string(),
        Some(Entry::Dir(m)) => format!("dir {m:o}"),
        Some(Entry::File(m, c)) => format!("file {m:o}, {} bytes", c.len()),
        Some(Entry::Link(t)) => format!("symlink -> {}", t.display()),
    };
    a.keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| format!("{}: {} / {}", p.display(), kind(a.get(p)), kind(b.get(p))))
        .collect()
}

fn write(path: &Path, text: impl AsRef<[u8]>, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A node: the payload the image carries, the host's root, and the call log of the
/// kubectl and restart stand-ins.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A host root with containerd's config, if any (and drop-ins in
    /// etc/containerd/conf.d).
    fn new(containerd_config: Option<&str>, drop_ins: &[(&str, &str)]) -> Node {
        let node = Node {
            dir: tempfile::Builder::new()
                .prefix("stockade-node-")
                .tempdir()
                .unwrap(),
        };
        let root = node.root();
        for d in ["opt", "usr/local/bin", "etc/containerd"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        if let Some(text) = containerd_config {
            write(&root.join("etc/containerd/config.toml"), text, 0o644);
        }
        for (name, text) in drop_ins {
            write(&root.join("etc/containerd/conf.d").join(name), text, 0o644);
        }

        // The payload: the Debian package's tree, with the real shim (it edits
        // containerd's config) and stand-ins where the contents do not matter here.
        let p = node.payload();
        let shim = shim_dir().unwrap().join("containerd-shim-stockade-v2");
        write(
            &p.join("usr/bin/containerd-shim-stockade-v2"),
            fs::read(shim).unwrap(),
            0o755,
        );
        for helper in ["vhost-device-vsock", "virtiofsd"] {
            let text = format!("#!/bin/sh\n# stand-in for {helper}\nexit 1\n");
            write(&p.join("usr/libexec/stockade").join(helper), text, 0o755);
        }
        let share = p.join("usr/share/stockade");
        write(&share.join("vmlinuz"), "stand-in kernel 1\n", 0o644);
        write(&share.join("initrd.img"), "stand-in initrd\n", 0o644);
        write(&share.join("guest-kernel"), "stockade\n", 0o644);
        write(
            &share.join("guest-kernel-release"),
            "6.12.0-stockade\n",
            0o644,
        );
        let configs = workspace_root().join("configs");
        let packaged = fs::read(configs.join("configuration.toml")).unwrap();
        write(&share.join("configuration.toml"), packaged, 0o644);
        let rc = fs::read(configs.join("runtimeclass.yaml")).unwrap();
        write(&share.join("kubernetes/runtimeclass.yaml"), rc, 0o644);
        // Also in the package, not for the node.
        write(
            &p.join("usr/share/doc/stockade/copyright"),
            "Apache-2.0\n",
            0o644,
        );

        // kubectl answers `get nodes` with the file other-nodes, if there is one, and
        // fails while there is a file kubectl-fails (the API server unreachable).
        let dir = node.dir.path();
        let log = node.calls_log();
        let (others, fails) = (dir.join("other-nodes"), dir.join("kubectl-fails"));
        write(
            &node.kubectl(),
            format!(
                "#!/bin/sh\necho \"kubectl $*\" >>'{}'\n\
                 if [ -f '{}' ]; then echo 'kubectl: connection refused' >&2; exit 1; fi\n\
                 if [ \"$1 $2\" = 'get nodes' ] && [ -f '{}' ]; then cat '{}'; fi\n",
                log.display(),
                fails.display(),
                others.display(),
                others.display(),
            ),
            0o755,
        );
        write(
            &node.restart(),
            format!(
                "#!/bin/sh\necho 'restart containerd' >>'{}'\n",
                log.display()
            ),
            0o755,
        );
        node
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn payload(&self) -> PathBuf {
        self.dir.path().join("payload")
    }
    fn calls_log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }
    fn kubectl(&self) -> PathBuf {
        self.dir.path().join("bin/kubectl")
    }
    fn restart(&self) -> PathBuf {
        self.dir.path().join("bin/restart-containerd")
    }
    fn opt(&self) -> PathBuf {
        self.root().join("opt/stockade")
    }

    /// `stockade-deploy.sh <verb>` as the DaemonSet runs it, with this node's stand-ins.
    fn deploy(&self, verb: &str) -> Out {
        self.deploy_with(verb, &[])
    }

    fn deploy_with(&self, verb: &str, env: &[(&str, &str)]) -> Out {
        let script = workspace_root().join("packaging/node/stockade-deploy.sh");
        let out = run(Command::new(script)
            .arg(verb)
            .env("HOST_ROOT", self.root())
            .env("PAYLOAD", self.payload())
            .env("NODE_NAME", NODE)
            .env("KUBECTL", self.kubectl())
            .env("RESTART_CONTAINERD", self.restart())
            .env_remove("CONTAINERD_CONFIG")
            .env_remove("CONTAINERD_VERSION")
            .envs(env.iter().copied()));
        eprintln!("--- stockade-deploy.sh {verb}: exit {}", out.code);
        eprint!("{}", out.stderr);
        out
    }

    fn deploy_ok(&self, verb: &str) {
        self.deploy_ok_with(verb, &[]);
    }

    fn deploy_ok_with(&self, verb: &str, env: &[(&str, &str)]) {
        let out = self.deploy_with(verb, env);
        assert!(
            out.ok(),
            "stockade-deploy.sh {verb} failed:\n{}",
            out.stderr
        );
    }

    /// The stand-ins' calls since the last look, the payload's path written <payload>.
    /// The root's files are as `before` says, or the test fails naming `what` changed.
    fn assert_root_is(&self, before: &BTreeMap<PathBuf, Entry>, what: &str) {
        let d = diff(before, &snapshot(&self.root()));
        assert!(d.is_empty(), "{what}: {d:#?}");
    }

    /// Install again over an installed root: nothing on disk changes, containerd is not
    /// restarted.
    fn reinstall_changes_nothing(&self) {
        let installed = snapshot(&self.root());
        self.deploy_ok("install");
        assert_eq!(self.calls(), install_calls(false));
        self.assert_root_is(&installed, "a second install changed");
    }

    fn calls(&self) -> Vec<String> {
        let text = fs::read_to_string(self.calls_log()).unwrap_or_default();
        fs::remove_file(self.calls_log()).ok();
        let payload = self.payload().display().to_string();
        text.lines()
            .map(|l| l.replace(&payload, "<payload>"))
            .collect()
    }

    /// The release the node's `current` points at.
    fn release(&self) -> PathBuf {
        fs::read_link(self.opt().join("current")).unwrap()
    }
}

const RC: &str = "<payload>/usr/share/stockade/kubernetes/runtimeclass.yaml";

fn install_calls(restart: bool) -> Vec<String> {
    let mut calls = Vec::new();
    if restart {
        calls.push("restart containerd".to_string());
    }
    calls.push(format!(
        "kubectl label node {NODE} stockade.io/runtime=true --overwrite"
    ));
    calls.push(format!("kubectl apply -f {RC}"));
    calls
}

fn uninstall_calls(last_node: bool, restart: bool) -> Vec<String> {
    let mut calls = vec![
        format!("kubectl label node {NODE} stockade.io/runtime-"),
        "kubectl get nodes -l stockade.io/runtime=true -o name".to_string(),
    ];
    if last_node {
        calls.push(format!("kubectl delete -f {RC} --ignore-not-found"));
    }
    if restart {
        calls.push("restart containerd".to_string());
    }
    calls
}

/// /opt/stockade holds the payload's files, the node's config points at them, and the
/// shim is linked where containerd's PATH finds it.
fn check_installed(node: &Node) {
    let opt = node.opt();
    let payload = node.payload();
    for (installed, packaged) in [
        (
            "bin/containerd-shim-stockade-v2",
            "usr/bin/containerd-shim-stockade-v2",
        ),
        (
            "libexec/vhost-device-vsock",
            "usr/libexec/stockade/vhost-device-vsock",
        ),
        ("libexec/virtiofsd", "usr/libexec/stockade/virtiofsd"),
        ("share/vmlinuz", "usr/share/stockade/vmlinuz"),
        ("share/initrd.img", "usr/share/stockade/initrd.img"),
        ("share/guest-kernel", "usr/share/stockade/guest-kernel"),
        (
            "share/guest-kernel-release",
            "usr/share/stockade/guest-kernel-release",
        ),
        (
            "share/configuration.toml",
            "usr/share/stockade/configuration.toml",
        ),
        (
            "share/kubernetes/runtimeclass.yaml",
            "usr/share/stockade/kubernetes/runtimeclass.yaml",
        ),
    ] {
        let (a, b) = (opt.join(installed), payload.join(packaged));
        assert_eq!(
            fs::read(&a).unwrap(),
            fs::read(&b).unwrap(),
            "/opt/stockade/{installed}"
        );
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o7777,
            fs::metadata(&b).unwrap().permissions().mode() & 0o7777,
            "mode of /opt/stockade/{installed}"
        );
    }
    // The fixed paths lead to one release through `current`; nothing else is left over
    // (no temp dir, no older release, nothing from usr/share/doc).
    for d in ["bin", "libexec", "share"] {
        assert_eq!(
            fs::read_link(opt.join(d)).unwrap(),
            Path::new("current").join(d)
        );
    }
    let names = |dir: &Path| {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&opt),
        ["bin", "current", "etc", "libexec", "releases", "share"]
    );
    let releases = names(&opt.join("releases"));
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(node.release(), Path::new("releases").join(&releases[0]));
    assert_eq!(
        names(&opt.join("current/")),
        ["bin", "libexec", "share"],
        "a release's directories"
    );
    assert_eq!(names(&opt.join("etc")), ["configuration.toml"]);
    // Directories as the package has them (the temp dir a release is copied into is not).
    for (path, entry) in snapshot(&opt) {
        if let Entry::Dir(mode) = entry {
            assert_eq!(mode, 0o755, "mode of /opt/stockade/{}", path.display());
        }
    }

    // The node's Stockade config: valid for the shim (unknown keys are an error), the
    // packaged one with the helper and guest asset paths moved to /opt/stockade.
    let cfg = Config::from_file(&opt.join("etc/configuration.toml")).unwrap();
    let mut want = Config::from_file(&workspace_root().join("configs/configuration.toml")).unwrap();
    want.hypervisor.kernel = "/opt/stockade/share/vmlinuz".into();
    want.hypervisor.initrd = "/opt/stockade/share/initrd.img".into();
    want.hypervisor.vsock_backend = "/opt/stockade/libexec/vhost-device-vsock".into();
    want.hypervisor.virtiofsd = "/opt/stockade/libexec/virtiofsd".into();
    assert_eq!(cfg, want);
    // Every path it names exists on the node (QEMU is the host's own).
    for p in [
        &cfg.hypervisor.kernel,
        &cfg.hypervisor.initrd,
        &cfg.hypervisor.vsock_backend,
        &cfg.hypervisor.virtiofsd,
    ] {
        let on_node = node.root().join(p.strip_prefix("/").unwrap());
        assert!(on_node.exists(), "{} missing on the node", p.display());
    }
    assert!(
        opt.join("share/guest-kernel").exists(),
        "guest-kernel beside the kernel"
    );

    // The installed shim runs (through bin -> current -> releases/<id>).
    let version = run(Command::new(opt.join("bin/containerd-shim-stockade-v2")).arg("--version"));
    assert!(version.ok(), "the installed shim: {}", version.stderr);

    // containerd's PATH finds the shim through the link, a host path.
    let link = node.root().join(SHIM_LINK);
    let target = fs::read_link(&link).unwrap();
    assert_eq!(
        target,
        Path::new("/opt/stockade/bin/containerd-shim-stockade-v2")
    );
    assert_eq!(
        fs::read(node.root().join(target.strip_prefix("/").unwrap())).unwrap(),
        fs::read(payload.join("usr/bin/containerd-shim-stockade-v2")).unwrap()
    );
}

fn parse(text: &str, what: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}\n{text}"))
}

/// `plugins.<plugin>.containerd.runtimes.<name>` of a containerd config.
fn runtime<'a>(config: &'a toml::Table, plugin: &str, name: &str) -> Option<&'a toml::Table> {
    config
        .get("plugins")?
        .get(plugin)?
        .get("containerd")?
        .get("runtimes")?
        .get(name)?
        .as_table()
}

/// The Stockade runtime as the installer registers it.
fn check_stockade_runtime(config: &toml::Table, plugin: &str, what: &str) {
    let rt = runtime(config, plugin, "stockade")
        .unwrap_or_else(|| panic!("{what}: no plugins.{plugin}.containerd.runtimes.stockade"));
    assert_eq!(
        rt.get("runtime_type").and_then(|v| v.as_str()),
        Some(RUNTIME_TYPE),
        "{what}"
    );
    assert_eq!(
        rt.get("options")
            .and_then(|o| o.get("ConfigPath"))
            .and_then(|v| v.as_str()),
        Some(SHIM_CONFIG),
        "{what}: options.ConfigPath"
    );
    let annotations = rt.get("pod_annotations").and_then(|v| v.as_array());
    assert!(
        annotations.is_some_and(|a| a.iter().any(|v| v.as_str() == Some("io.stockade.*"))),
        "{what}: pod_annotations {annotations:?}"
    );
}

/// `containerd --config <config> config dump`: the config as that containerd loads it.
fn containerd_dump(containerd: &Path, config: &Path) -> toml::Table {
    let out = run(Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"]));
    assert!(
        out.ok(),
        "{} config dump of {} failed:\n{}",
        containerd.display(),
        config.display(),
        out.stderr
    );
    parse(&out.stdout, "containerd's config dump")
}

#[test]
fn version_2_config_install_upgrade_uninstall() {
    if let Some(why) = skip() {
        println!("SKIPPED node_installer: {why}");
        return;
    }
    let node = Node::new(Some(CONFIG_V2), &[]);
    let config = node.root().join("etc/containerd/config.toml");
    let before = snapshot(&node.root());

    node.deploy_ok("install");
    assert_eq!(node.calls(), install_calls(true));
    check_installed(&node);

    // containerd's config: the Stockade runtime added, everything it had kept.
    let text = fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(CONFIG_V2.trim_end()),
        "the node's own config is not kept as it was:\n{text}"
    );
    let doc = parse(&text, "containerd's config");
    check_stockade_runtime(&doc, CRI_V2, "config.toml");
    // A real containerd 1.7 loads it and has both runtimes.
    let dump = containerd_dump(Path::new(CONTAINERD_1), &config);
    check_stockade_runtime(&dump, CRI_V2, "containerd 1.7's config dump");
    let runc = runtime(&dump, CRI_V2, "runc").expect("runc runtime kept");
    assert_eq!(
        runc.get("options").and_then(|o| o.get("SystemdCgroup")),
        Some(&toml::Value::Boolean(true)),
        "runc's options kept"
    );
    // containerd 2.x migrates a version-2 config on load: the runtime survives that too.
    if containerd_2().exists() {
        let dump = containerd_dump(&containerd_2(), &config);
        check_stockade_runtime(&dump, CRI_V3, "containerd 2.1's config dump (migrated)");
    }

    // Again: nothing on disk changes, containerd is not restarted.
    node.reinstall_changes_nothing();

    // An upgrade: a new payload becomes a new release behind `current`, the old one goes;
    // the administrator's edit of the node's config stays; containerd's config is the
    // same, so no restart.
    let old_release = node.release();
    let cfg = node.opt().join("etc/configuration.toml");
    let edited = fs::read_to_string(&cfg)
        .unwrap()
        .replace("\nvcpus = 1\n", "\nvcpus = 2\n");
    fs::write(&cfg, &edited).unwrap();
    let vmlinuz = node.payload().join("usr/share/stockade/vmlinuz");
    fs::write(&vmlinuz, "stand-in kernel 2\n").unwrap();
    node.deploy_ok("install");
    assert_eq!(node.calls(), install_calls(false));
    assert_ne!(node.release(), old_release);
    assert!(!node.opt().join(&old_release).exists(), "old release left");
    assert_eq!(
        fs::read_to_string(node.opt().join("share/vmlinuz")).unwrap(),
        "stand-in kernel 2\n"
    );
    assert_eq!(fs::read_to_string(&cfg).unwrap(), edited);
    assert_eq!(
        Config::from_file(&cfg).unwrap().hypervisor.vcpus,
        2,
        "edited config"
    );

    // Uninstall while another node still has Stockade: the RuntimeClass stays. The root
    // is as it was before the first install.
    fs::write(node.dir.path().join("other-nodes"), "node/node-b\n").unwrap();
    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(false, true));
    node.assert_root_is(&before, "uninstall left the root changed");

    // Again, as the last node: nothing to remove, no restart; the RuntimeClass goes.
    fs::remove_file(node.dir.path().join("other-nodes")).unwrap();
    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(true, false));
    node.assert_root_is(&before, "a second uninstall changed the root");
}

#[test]
fn version_3_config_with_imports_takes_the_drop_in() {
    if let Some(why) = skip() {
        println!("SKIPPED node_installer: {why}");
        return;
    }
    let node = Node::new(Some(CONFIG_V3), &[("other.toml", OTHER_DROP_IN)]);
    let conf_d = node.root().join("etc/containerd/conf.d");
    let before = snapshot(&node.root());

    node.deploy_ok("install");
    assert_eq!(node.calls(), install_calls(true));
    check_installed(&node);

    // The node's config and its other drop-in are untouched; ours is a drop-in beside.
    let config = node.root().join("etc/containerd/config.toml");
    assert_eq!(fs::read_to_string(&config).unwrap(), CONFIG_V3);
    assert_eq!(
        fs::read_to_string(conf_d.join("other.toml")).unwrap(),
        OTHER_DROP_IN
    );
    let drop_in = parse(
        &fs::read_to_string(conf_d.join("stockade.toml")).unwrap(),
        "conf.d/stockade.toml",
    );
    assert_eq!(drop_in.get("version"), Some(&toml::Value::Integer(3)));
    check_stockade_runtime(&drop_in, CRI_V3, "conf.d/stockade.toml");

    // A real containerd 2.1 loads it with its imports. The config names the host's
    // conf.d; a copy of it beside the root points its import at the scratch root's.
    if containerd_2().exists() {
        let copy = node.dir.path().join("config-for-dump.toml");
        let text = CONFIG_V3.replace(
            "\"/etc/containerd/conf.d/*.toml\"",
            &format!("\"{}/*.toml\"", conf_d.display()),
        );
        assert_ne!(text, CONFIG_V3);
        fs::write(&copy, text).unwrap();
        let dump = containerd_dump(&containerd_2(), &copy);
        check_stockade_runtime(&dump, CRI_V3, "containerd 2.1's config dump");
        let pinned = dump
            .get("plugins")
            .and_then(|p| p.get("io.containerd.cri.v1.images"))
            .and_then(|i| i.get("pinned_images"))
            .and_then(|p| p.get("sandbox"))
            .and_then(|s| s.as_str());
        assert_eq!(
            pinned,
            Some("registry.k8s.io/pause:3.10"),
            "the other drop-in"
        );
    } else {
        println!(
            "node_installer: {} missing, the version-3 config is not loaded by a real \
             containerd 2.x (packaging/setup.sh --deps unpacks it)",
            containerd_2().display()
        );
    }

    node.reinstall_changes_nothing();

    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(true, true));
    node.assert_root_is(&before, "uninstall left the root changed");
    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(true, false));
    node.assert_root_is(&before, "a second uninstall changed the root");
}

/// A shim in /usr/local/bin that is not the installer's link (a manual install, or a
/// link elsewhere) stops the install before it writes anything.
#[test]
fn foreign_shim_on_path_refused_before_any_change() {
    if let Some(why) = skip() {
        println!("SKIPPED node_installer: {why}");
        return;
    }
    for (what, want) in [
        ("file", "is not a symlink"),
        ("link", "not into /opt/stockade"),
    ] {
        let node = Node::new(Some(CONFIG_V2), &[]);
        let link = node.root().join(SHIM_LINK);
        match what {
            "file" => write(&link, "#!/bin/sh\n", 0o755),
            _ => symlink("/usr/bin/containerd-shim-stockade-v2", &link).unwrap(),
        }
        let before = snapshot(&node.root());
        let out = node.deploy("install");
        assert!(!out.ok(), "install over a foreign {what} succeeded");
        assert!(
            out.stderr.contains(want) && out.stderr.contains("/usr/local/bin"),
            "{what}: {}",
            out.stderr
        );
        assert!(node.calls().is_empty());
        node.assert_root_is(&before, "a refused install changed the root");
    }
}

/// A node whose containerd runs without a config file: the shim creates one in the format
/// of the containerd version the installer tells it (the host's `containerd --version`,
/// or CONTAINERD_VERSION), and uninstall removes it again.
#[test]
fn missing_config_created_for_the_containerd_version_and_removed() {
    if let Some(why) = skip() {
        println!("SKIPPED node_installer: {why}");
        return;
    }
    let node = Node::new(None, &[]);
    let config = node.root().join("etc/containerd/config.toml");
    let before = snapshot(&node.root());

    // The scratch root has no containerd to ask: refused before anything is written.
    let out = node.deploy("install");
    assert!(!out.ok(), "install without a containerd version succeeded");
    assert!(
        out.stderr.contains("set CONTAINERD_VERSION"),
        "{}",
        out.stderr
    );
    assert!(node.calls().is_empty());
    node.assert_root_is(&before, "a refused install changed the root");

    let v21 = [("CONTAINERD_VERSION", "2.1")];
    node.deploy_ok_with("install", &v21);
    assert_eq!(node.calls(), install_calls(true));
    check_installed(&node);
    let doc = parse(&fs::read_to_string(&config).unwrap(), "containerd's config");
    assert_eq!(doc.get("version"), Some(&toml::Value::Integer(3)));
    check_stockade_runtime(&doc, CRI_V3, "the created config.toml");
    if containerd_2().exists() {
        let dump = containerd_dump(&containerd_2(), &config);
        check_stockade_runtime(&dump, CRI_V3, "containerd 2.1's config dump");
    }
    // Now that the file exists its own version counts; the variable is not needed.
    node.reinstall_changes_nothing();

    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(true, true));
    node.assert_root_is(&before, "uninstall left the root changed");
}

/// Uninstall stops at a kubectl failure before it touches the host: the node keeps its
/// label and a working runtime, and containerd is not restarted. Once the API server
/// answers again, uninstall goes through.
#[test]
fn uninstall_changes_nothing_when_kubectl_fails() {
    if let Some(why) = skip() {
        println!("SKIPPED node_installer: {why}");
        return;
    }
    let node = Node::new(Some(CONFIG_V2), &[]);
    let before = snapshot(&node.root());
    node.deploy_ok("install");
    node.calls();
    let installed = snapshot(&node.root());

    let fails = node.dir.path().join("kubectl-fails");
    fs::write(&fails, "").unwrap();
    let out = node.deploy("uninstall");
    assert!(!out.ok(), "uninstall succeeded with kubectl failing");
    assert!(out.stderr.contains("removing label"), "{}", out.stderr);
    assert_eq!(
        node.calls(),
        [format!("kubectl label node {NODE} stockade.io/runtime-")]
    );
    node.assert_root_is(&installed, "a failed uninstall changed the root");

    fs::remove_file(&fails).unwrap();
    node.deploy_ok("uninstall");
    assert_eq!(node.calls(), uninstall_calls(true, true));
    node.assert_root_is(&before, "uninstall left the root changed");
}
