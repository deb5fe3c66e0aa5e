//! `install` / `uninstall`: register Stockade with Docker or containerd, or take it out.
//!
//! ```text
//! containerd-shim-stockade-v2 install docker|containerd [OPTIONS]
//! containerd-shim-stockade-v2 uninstall docker|containerd [OPTIONS]
//! ```
//!
//! Docker: `runtimes.<name>` in `daemon.json`, with every other byte of the file kept
//! ([`json`]). containerd: the CRI runtime `<name>` in a drop-in where containerd imports
//! one, else in a marked block at the end of its config ([`containerd`]). Both are
//! reversible: `uninstall` after `install` leaves the files as they were. Neither
//! restarts a daemon; each prints the command that would. The Debian package's
//! maintainer scripts never call them: registering a runtime is the admin's decision.

mod containerd;
mod diff;
mod json;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub const COMMANDS: [&str; 2] = ["install", "uninstall"];

/// The runtime type both daemons start the shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.stockade.v2";

const USAGE: &str =
    "usage: containerd-shim-stockade-v2 install|uninstall docker|containerd [OPTIONS]
  --config FILE             daemon.json (default /etc/docker/daemon.json) or containerd's
                            config (default /etc/containerd/config.toml)
  --runtime-name NAME       the runtime's name in Docker, the CRI handler in containerd
                            (default stockade)
  --shim-config FILE        containerd: the Stockade config the CRI runtime passes to the
                            shim as ConfigPath (default /etc/stockade/configuration.toml)
  --containerd-version X.Y  containerd: its version, when it is not `containerd --version`'s
  --root DIR                read and write every file under DIR (a node installer's view of
                            the host's /); paths written into configs stay as given
  --dry-run                 print the change as a diff; write nothing";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Uninstall,
}

#[derive(Debug)]
struct Options {
    action: Action,
    target: String,
    config: Option<PathBuf>,
    name: String,
    shim_config: String,
    containerd_version: Option<String>,
    root: PathBuf,
    dry_run: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let action = match args.first().map(String::as_str) {
        Some("install") => Action::Install,
        Some("uninstall") => Action::Uninstall,
        _ => bail!("{USAGE}"),
    };
    let mut o = Options {
        action,
        target: String::new(),
        config: None,
        name: "stockade".into(),
        shim_config: stockade_runtime::config::ETC_CONFIG.into(),
        containerd_version: None,
        root: PathBuf::from("/"),
        dry_run: false,
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--config" => o.config = Some(PathBuf::from(value(a)?)),
            "--runtime-name" => o.name = value(a)?,
            "--shim-config" => o.shim_config = value(a)?,
            "--containerd-version" => o.containerd_version = Some(value(a)?),
            "--root" => o.root = PathBuf::from(value(a)?),
            "--dry-run" => o.dry_run = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            t @ ("docker" | "containerd") if o.target.is_empty() => o.target = t.into(),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.target.is_empty() {
        bail!("docker or containerd?\n{USAGE}");
    }
    if o.name.is_empty()
        || !o
            .name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    {
        bail!(
            "--runtime-name {:?}: letters, digits, '-', '_' and '.' only",
            o.name
        );
    }
    if !Path::new(&o.shim_config).is_absolute() {
        bail!("--shim-config {:?} must be an absolute path", o.shim_config);
    }
    Ok(o)
}

/// A file's path under `root` (`/` for the machine itself).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// What one file becomes: new contents, or removed.
#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    Write(String),
    Remove,
    /// A drop-in: removed, and its directory too if that leaves it empty (install
    /// creates the directory when containerd imports one that does not exist).
    RemoveWithEmptyDir,
}

/// A planned change of one file (`path` as the machine sees it; `at` where it is read
/// and written, under `--root`).
#[derive(Debug)]
pub(crate) struct Edit {
    pub path: PathBuf,
    pub at: PathBuf,
    pub before: Option<String>,
    pub change: Change,
}

pub(crate) fn read(at: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(at) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", at.display())),
    }
}

/// Write `text` to `at` through a temporary file beside it and a rename, with the mode
/// and owner of the file it replaces (0644, root, for a new one), so a daemon never
/// reads half a config.
fn write_atomic(at: &Path, text: &str) -> Result<()> {
    let dir = at.parent().context("a config path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let old = std::fs::metadata(at).ok();
    let mut tmp = tempfile::Builder::new()
        .prefix(".stockade-install-")
        .tempfile_in(dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    if let Some(m) = &old {
        std::os::unix::fs::chown(tmp.path(), Some(m.uid()), Some(m.gid()))?;
    }
    tmp.persist(at)
        .with_context(|| format!("replace {}", at.display()))?;
    Ok(())
}

fn apply(edit: &Edit) -> Result<()> {
    match &edit.change {
        Change::Write(text) => write_atomic(&edit.at, text),
        Change::Remove | Change::RemoveWithEmptyDir => {
            match std::fs::remove_file(&edit.at) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("remove {}", edit.at.display()));
                }
                _ => {}
            }
            if edit.change == Change::RemoveWithEmptyDir
                && let Some(dir) = edit.at.parent()
            {
                // Fails, as it should, when anything else is in it.
                let _ = std::fs::remove_dir(dir);
            }
            Ok(())
        }
    }
}

/// Run `install` or `uninstall`; `args` are the words after the binary's name.
pub fn main(args: Vec<String>) -> Result<()> {
    let o = parse(&args)?;
    let (edits, notes) = plan(&o)?;
    if edits.is_empty() && !notes.is_empty() {
        for note in &notes {
            println!("{note}");
        }
        return Ok(());
    }
    let verb = match o.action {
        Action::Install => "install",
        Action::Uninstall => "uninstall",
    };
    if edits.is_empty() {
        println!(
            "unchanged: runtime {:?} was already {} for {}",
            o.name,
            if o.action == Action::Install {
                "there"
            } else {
                "gone"
            },
            o.target
        );
        return Ok(());
    }
    for e in &edits {
        let after = match &e.change {
            Change::Write(t) => Some(t.as_str()),
            Change::Remove | Change::RemoveWithEmptyDir => None,
        };
        if o.dry_run {
            print!(
                "{}",
                diff::unified(&e.path, e.before.as_deref(), after, verb)
            );
        } else {
            apply(e)?;
            println!(
                "changed: {} {}",
                e.path.display(),
                match (&e.change, &e.before) {
                    (Change::Remove | Change::RemoveWithEmptyDir, _) => "removed",
                    (_, None) => "created",
                    _ => "updated",
                }
            );
        }
    }
    let (daemon, unit) = if o.target == "docker" {
        ("dockerd", "docker")
    } else {
        ("containerd", "containerd")
    };
    if o.dry_run {
        println!("dry run: nothing written");
    } else {
        println!("restart {daemon} to load it: systemctl restart {unit}");
    }
    Ok(())
}

/// The edits `o` asks for, and what to say when there are none.
fn plan(o: &Options) -> Result<(Vec<Edit>, Vec<String>)> {
    match o.target.as_str() {
        "docker" => docker(o),
        _ => containerd::plan(o),
    }
}

/// The command line `args` (after the binary's name) run against the root `root`, as
/// [`main`] runs it, without its output: how many files it changed.
#[cfg(test)]
fn run_in(root: &Path, args: &[&str]) -> usize {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--root".to_string(), root.display().to_string()]);
    let (edits, _) = plan(&parse(&a).unwrap()).unwrap();
    for e in &edits {
        apply(e).unwrap();
    }
    edits.len()
}

/// Docker: `runtimes.<name> = {"runtimeType": "io.containerd.stockade.v2"}`.
fn docker(o: &Options) -> Result<(Vec<Edit>, Vec<String>)> {
    let path = o
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/docker/daemon.json"));
    let at = under(&o.root, &path);
    let before = read(&at)?;
    let entry = serde_json::json!({ "runtimeType": RUNTIME_TYPE });
    let ctx = || format!("{}", path.display());
    let text = before.as_deref().unwrap_or_default();
    let blank = text.trim().is_empty();
    let change = match o.action {
        Action::Install => {
            let (text, top) = if blank {
                ("{}\n", json::top("{}")?)
            } else {
                (text, json::top(text).with_context(ctx)?)
            };
            let unit = json::indent_unit(text, &top);
            let new = match top.get("runtimes") {
                None => {
                    let value = serde_json::json!({ o.name.clone(): entry });
                    json::insert(text, &top, "runtimes", &value, &unit)
                }
                Some(rt) => {
                    let runtimes = json::object_at(text, rt.value_start)
                        .with_context(|| format!("{}: \"runtimes\" is not an object", ctx()))?;
                    match runtimes.get(&o.name) {
                        None => json::insert(text, &runtimes, &o.name, &entry, &unit),
                        Some(m) => {
                            let old: serde_json::Value =
                                serde_json::from_str(&text[m.value_start..m.end])?;
                            if old.get("runtimeType").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE)
                            {
                                // Stockade's, as install writes it or with the admin's options.
                                return Ok((Vec::new(), Vec::new()));
                            }
                            bail!(
                                "{}: runtime {:?} is already there, and not Stockade's (its runtimeType is {}): remove it, or choose another --runtime-name",
                                ctx(),
                                o.name,
                                old.get("runtimeType").unwrap_or(&serde_json::Value::Null)
                            );
                        }
                    }
                }
            };
            check_docker(&new, &o.name, Some(&entry)).with_context(ctx)?;
            Change::Write(new)
        }
        Action::Uninstall => {
            if blank {
                return Ok((Vec::new(), Vec::new()));
            }
            let top = json::top(text).with_context(ctx)?;
            let Some(rt) = top.get("runtimes") else {
                return Ok((Vec::new(), Vec::new()));
            };
            let runtimes = json::object_at(text, rt.value_start)
                .with_context(|| format!("{}: \"runtimes\" is not an object", ctx()))?;
            let Some(i) = runtimes.members.iter().position(|m| m.key == o.name) else {
                return Ok((Vec::new(), Vec::new()));
            };
            let m = &runtimes.members[i];
            let old: serde_json::Value = serde_json::from_str(&text[m.value_start..m.end])?;
            if old.get("runtimeType").and_then(|t| t.as_str()) != Some(RUNTIME_TYPE) {
                bail!(
                    "{}: runtime {:?} is not Stockade's (its runtimeType is {}); leaving it",
                    ctx(),
                    o.name,
                    old.get("runtimeType").unwrap_or(&serde_json::Value::Null)
                );
            }
            let new = if runtimes.members.len() == 1 {
                // The "runtimes" object was install's (or holds nothing else): it goes.
                let i = top.members.iter().position(|m| m.key == "runtimes");
                json::remove(text, &top, i.expect("runtimes is a member"))
            } else {
                json::remove(text, &runtimes, i)
            };
            check_docker(&new, &o.name, None).with_context(ctx)?;
            if json::top(&new)?.members.is_empty() {
                // Nothing left: the file install created, or one that said nothing.
                Change::Remove
            } else {
                Change::Write(new)
            }
        }
    };
    Ok((
        vec![Edit {
            path,
            at,
            before,
            change,
        }],
        Vec::new(),
    ))
}

/// The edited daemon.json parses, and says what it should of the runtime.
fn check_docker(text: &str, name: &str, want: Option<&serde_json::Value>) -> Result<()> {
    let v: serde_json::Value =
        serde_json::from_str(text).context("the edit would not be valid JSON (a bug)")?;
    let got = v.get("runtimes").and_then(|r| r.get(name));
    if got != want {
        bail!("the edit did not give the expected runtime entry (a bug): {got:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(action: &str, target: &str, root: &Path) -> Options {
        let mut o = parse(&[action.into(), target.into()]).unwrap();
        o.root = root.to_path_buf();
        o
    }

    #[test]
    fn docker_round_trip_keeps_every_byte() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/docker/daemon.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for original in [
            "{\n    \"log-level\": \"warn\",\n    \"runtimes\": {\n        \"runc2\": {\"path\": \"/usr/bin/runc\"}\n    }\n}\n",
            "{\"storage-driver\":\"overlay2\"}",
            "{\n  \"features\": {\"containerd-snapshotter\": true}\n}\n",
        ] {
            std::fs::write(&file, original).unwrap();
            assert_eq!(run_in(root.path(), &["install", "docker"]), 1);
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(v["runtimes"]["stockade"]["runtimeType"], RUNTIME_TYPE);
            // Idempotent.
            assert_eq!(run_in(root.path(), &["install", "docker"]), 0);
            assert_eq!(run_in(root.path(), &["uninstall", "docker"]), 1);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
            assert_eq!(run_in(root.path(), &["uninstall", "docker"]), 0);
        }
    }

    #[test]
    fn docker_without_a_file_creates_and_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/docker/daemon.json");
        run_in(root.path(), &["install", "docker"]);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\n  \"runtimes\": {\n    \"stockade\": {\n      \"runtimeType\": \"io.containerd.stockade.v2\"\n    }\n  }\n}\n"
        );
        run_in(root.path(), &["uninstall", "docker"]);
        assert!(!file.exists());
    }

    #[test]
    fn docker_leaves_a_foreign_runtime_of_the_same_name() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/docker/daemon.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, r#"{"runtimes": {"stockade": {"path": "/bin/x"}}}"#).unwrap();
        for action in ["install", "uninstall"] {
            let err = docker(&opts(action, "docker", root.path())).unwrap_err();
            assert!(format!("{err:#}").contains("not Stockade's"), "{err:#}");
        }
    }

    #[test]
    fn docker_refuses_invalid_json_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/docker/daemon.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{\"a\": ").unwrap();
        let err = docker(&opts("install", "docker", root.path())).unwrap_err();
        assert!(
            format!("{err:#}").contains("/etc/docker/daemon.json"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["install".into()]).is_err());
        assert!(parse(&["install".into(), "podman".into()]).is_err());
        assert!(
            parse(&[
                "install".into(),
                "docker".into(),
                "--runtime-name".into(),
                "a b".into()
            ])
            .is_err()
        );
    }
}
