//! containerd: the CRI runtime `<name>` (RuntimeClass handler), where containerd will
//! read it:
//!
//! 1. containerd 2.2 and later import `/etc/containerd/conf.d/*.toml` whatever their
//!    config says: a drop-in there, the main config untouched.
//! 2. A config whose `imports` name a `<dir>/*.toml` glob: a drop-in in that dir.
//! 3. Otherwise a marked block appended to the config (created if there is none);
//!    `uninstall` removes exactly that block, so the file gets its bytes back.
//!
//! A drop-in's `version` is the main config's: containerd ignores a drop-in of a newer
//! config version than its root config. A runtime of the same name that Stockade did not
//! write (no marker) is left alone, and said so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{Action, Change, Edit, Options, RUNTIME_TYPE, read, under};

const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// What containerd 2.2 and later import without being told.
const DEFAULT_DROP_INS: &str = "/etc/containerd/conf.d";
const DROP_IN_MARK: &str =
    "# Stockade's CRI runtime, written by `containerd-shim-stockade-v2 install containerd`";

fn begin_mark(name: &str) -> String {
    format!(
        "# stockade: BEGIN runtime {name:?}: written by `containerd-shim-stockade-v2 install containerd`; `uninstall containerd` removes it"
    )
}

fn end_mark(name: &str) -> String {
    format!("# stockade: END runtime {name:?}")
}

/// The keys of the CRI plugin's runtimes table for a config version.
fn runtimes_keys(version: i64) -> [&'static str; 4] {
    let plugin = match version {
        1 => "cri",
        2 => "io.containerd.grpc.v1.cri",
        _ => "io.containerd.cri.v1.runtime",
    };
    ["plugins", plugin, "containerd", "runtimes"]
}

fn runtime_toml(version: i64, name: &str, shim_config: &str) -> String {
    // A plugin id holds dots: quoted in the table's header.
    let table = runtimes_keys(version)
        .iter()
        .map(|k| {
            if k.contains('.') {
                format!("{k:?}")
            } else {
                k.to_string()
            }
        })
        .chain([name.to_string()])
        .collect::<Vec<_>>()
        .join(".");
    format!(
        "[{table}]\n  runtime_type = \"{RUNTIME_TYPE}\"\n  # Pod annotations the shim reads (io.stockade.mode = \"vm\" asks for a VM).\n  pod_annotations = [\"io.stockade.*\"]\n  [{table}.options]\n    ConfigPath = {}\n",
        toml::Value::String(shim_config.to_string())
    )
}

/// containerd's (major, minor): `--containerd-version`, else `containerd --version`.
fn containerd_version(o: &Options) -> Result<(u32, u32)> {
    let text = match &o.containerd_version {
        Some(v) => v.clone(),
        None => {
            let out = Command::new("containerd").arg("--version").output().context(
                "run `containerd --version` (give --containerd-version when containerd is not on PATH)",
            )?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    // "containerd github.com/containerd/containerd 1.7.24~ds1 …", "containerd containerd.io v2.1.9 …", "2.2"
    text.split_whitespace()
        .find_map(|w| {
            let w = w.trim_start_matches('v');
            let mut parts = w.split(['.', '~', '-', '+']);
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        })
        .with_context(|| format!("no containerd version in {:?}", text.trim()))
}

/// The runtime at `table.name` in a parsed config, if any.
fn runtime_in<'a>(doc: &'a toml::Table, version: i64, name: &str) -> Option<&'a toml::Value> {
    let mut v: &toml::Table = doc;
    for k in runtimes_keys(version) {
        v = v.get(k)?.as_table()?;
    }
    v.get(name)
}

/// The marked block's byte range in `text` (with the line break install put before it).
fn block_range(text: &str, name: &str) -> Option<(usize, usize)> {
    let begin = text.find(&begin_mark(name))?;
    let end_mark = end_mark(name);
    let end = begin + text[begin..].find(&end_mark)? + end_mark.len();
    let end = if text[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    let start = if begin > 0 && text[..begin].ends_with('\n') {
        begin - 1
    } else {
        begin
    };
    Some((start, end))
}

pub(super) fn plan(o: &Options) -> Result<(Vec<Edit>, Vec<String>)> {
    let path = o
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let at = under(&o.root, &path);
    let before = read(&at)?;
    let doc: Option<toml::Table> = before
        .as_deref()
        .map(|t| t.parse::<toml::Table>())
        .transpose()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let mut notes = Vec::new();
    // containerd's version, asked at most once (it may run `containerd --version`).
    let asked = std::cell::OnceCell::new();
    let containerd_version = || -> Result<(u32, u32)> {
        asked
            .get_or_init(|| containerd_version(o).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    };
    // containerd reads a config without `version` as version 1.
    let version = match &doc {
        Some(d) => d
            .get("version")
            .and_then(toml::Value::as_integer)
            .unwrap_or(1),
        None => match containerd_version() {
            Ok((major, _)) if major >= 2 => 3,
            Ok(_) => 2,
            // Nothing to remove, whatever the version.
            Err(_) if o.action == Action::Uninstall => 2,
            Err(e) => return Err(e),
        },
    };
    // Where a drop-in goes, if containerd reads one.
    let config_dir = path.parent().unwrap_or(Path::new("/"));
    let imported = doc
        .as_ref()
        .and_then(|d| d.get("imports"))
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
        .find_map(|i| i.strip_suffix("/*.toml").map(|d| config_dir.join(d)));
    let drop_in_dir = match imported {
        Some(d) => Some(d),
        None => {
            let new_enough = match &o.containerd_version {
                Some(_) => containerd_version()? >= (2, 2),
                // Only the machine's own containerd can say; under --root, ask for it.
                None if o.root == Path::new("/") => containerd_version().is_ok_and(|v| v >= (2, 2)),
                None => false,
            };
            new_enough.then(|| PathBuf::from(DEFAULT_DROP_INS))
        }
    };

    // A runtime of that name in the main config that is not install's block.
    let ours_in_main = before
        .as_deref()
        .is_some_and(|t| block_range(t, &o.name).is_some());
    if let Some(d) = &doc
        && !ours_in_main
        && runtime_in(d, version, &o.name).is_some()
    {
        let what = format!(
            "{} already defines runtime {:?}, and install did not write it",
            path.display(),
            o.name
        );
        if o.action == Action::Install {
            bail!("{what}: remove it, or choose another --runtime-name");
        }
        notes.push(format!("unchanged: {what}; leaving it"));
        return Ok((Vec::new(), notes));
    }

    let mut edits = Vec::new();
    if let Some(dir) = drop_in_dir.filter(|_| !ours_in_main) {
        let drop_in = dir.join(format!("{}.toml", o.name));
        let drop_in_at = under(&o.root, &drop_in);
        let old = read(&drop_in_at)?;
        if let Some(old) = &old
            && !old.starts_with(DROP_IN_MARK)
        {
            let what = format!("{} exists and install did not write it", drop_in.display());
            if o.action == Action::Install {
                bail!("{what}: remove it, or choose another --runtime-name");
            }
            notes.push(format!("unchanged: {what}; leaving it"));
            return Ok((Vec::new(), notes));
        }
        let text = format!(
            "{DROP_IN_MARK};\n# `containerd-shim-stockade-v2 uninstall containerd` removes this file.\nversion = {version}\n\n{}",
            runtime_toml(version, &o.name, &o.shim_config)
        );
        check(&text, version, &o.name, true)?;
        let change = match o.action {
            Action::Install if old.as_deref() == Some(text.as_str()) => None,
            Action::Install => Some(Change::Write(text)),
            Action::Uninstall => old.is_some().then_some(Change::RemoveWithEmptyDir),
        };
        if let Some(change) = change {
            edits.push(Edit {
                path: drop_in,
                at: drop_in_at,
                before: old,
                change,
            });
        }
        return Ok((edits, notes));
    }

    // The marked block in the main config.
    let text = before.clone().unwrap_or_default();
    let range = block_range(&text, &o.name);
    let without = match range {
        Some((s, e)) => format!("{}{}", &text[..s], &text[e..]),
        None => text.clone(),
    };
    let new = match o.action {
        Action::Install => {
            let mut block = begin_mark(&o.name) + "\n";
            // A config that is nothing but the block (install made it) says its version.
            if without.trim().is_empty() {
                block += &format!("version = {version}\n");
            }
            block += &runtime_toml(version, &o.name, &o.shim_config);
            block += &(end_mark(&o.name) + "\n");
            let new = match range {
                // Replace it where it is.
                Some((s, e)) => {
                    let lead = if s < text.len() && text[s..].starts_with('\n') {
                        "\n"
                    } else {
                        ""
                    };
                    format!("{}{lead}{block}{}", &text[..s], &text[e..])
                }
                None if text.is_empty() => block,
                None => format!("{text}\n{block}"),
            };
            check(&new, version, &o.name, true).with_context(|| {
                format!(
                    "{}: the runtime table cannot be appended here; add it by hand (/usr/share/stockade/containerd/config-v{}.toml)",
                    path.display(),
                    version.max(2)
                )
            })?;
            new
        }
        Action::Uninstall => without,
    };
    if before.as_deref() == Some(new.as_str()) || (before.is_none() && new.is_empty()) {
        return Ok((Vec::new(), notes));
    }
    let change = if new.is_empty() {
        Change::Remove
    } else {
        Change::Write(new)
    };
    edits.push(Edit {
        path,
        at,
        before,
        change,
    });
    Ok((edits, notes))
}

/// The text parses as TOML and holds (or not) Stockade's runtime of that name.
fn check(text: &str, version: i64, name: &str, present: bool) -> Result<()> {
    let doc: toml::Table = text.parse().context("the result would not be valid TOML")?;
    let rt = runtime_in(&doc, version, name);
    let ok = rt
        .and_then(|r| r.get("runtime_type"))
        .and_then(toml::Value::as_str)
        == Some(RUNTIME_TYPE);
    if ok != present {
        bail!("the result does not hold the runtime as expected");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run_in as run};
    use super::*;

    const V2: &str = "version = 2\nroot = \"/var/lib/containerd\"\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n";

    #[test]
    fn block_round_trip_keeps_every_byte() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/containerd/config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        for original in [V2, V2.trim_end(), "version = 3\n"] {
            std::fs::write(&file, original).unwrap();
            assert_eq!(run(root.path(), &["install", "containerd"]), 1);
            let doc: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
            let v = doc["version"].as_integer().unwrap();
            let rt = runtime_in(&doc, v, "stockade").unwrap();
            assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
            assert_eq!(
                rt["options"]["ConfigPath"].as_str(),
                Some("/etc/stockade/configuration.toml")
            );
            assert_eq!(run(root.path(), &["install", "containerd"]), 0);
            assert_eq!(run(root.path(), &["uninstall", "containerd"]), 1);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
            assert_eq!(run(root.path(), &["uninstall", "containerd"]), 0);
        }
    }

    #[test]
    fn imports_glob_gets_a_drop_in() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/containerd/config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let original = "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n";
        std::fs::write(&file, original).unwrap();
        run(
            root.path(),
            &["install", "containerd", "--shim-config", "/opt/s/c.toml"],
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        let drop_in = root.path().join("etc/containerd/conf.d/stockade.toml");
        let doc: toml::Table = std::fs::read_to_string(&drop_in).unwrap().parse().unwrap();
        assert_eq!(doc["version"].as_integer(), Some(3));
        let rt = runtime_in(&doc, 3, "stockade").unwrap();
        assert_eq!(rt["options"]["ConfigPath"].as_str(), Some("/opt/s/c.toml"));
        run(root.path(), &["uninstall", "containerd"]);
        assert!(!drop_in.exists());
        // The dir install made for it goes too.
        assert!(!drop_in.parent().unwrap().exists());
    }

    #[test]
    fn containerd_2_2_gets_a_drop_in_without_a_config() {
        let root = tempfile::tempdir().unwrap();
        run(
            root.path(),
            &["install", "containerd", "--containerd-version", "2.2.1"],
        );
        assert!(!root.path().join("etc/containerd/config.toml").exists());
        let drop_in = root.path().join("etc/containerd/conf.d/stockade.toml");
        assert!(
            std::fs::read_to_string(&drop_in)
                .unwrap()
                .contains("version = 3")
        );
    }

    #[test]
    fn no_config_creates_one_and_uninstall_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/containerd/config.toml");
        run(
            root.path(),
            &["install", "containerd", "--containerd-version", "1.7.24"],
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("version = 2\n"), "{text}");
        // Installed again over its own file: the same bytes.
        assert_eq!(
            run(
                root.path(),
                &["install", "containerd", "--containerd-version", "1.7.24"]
            ),
            0
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        run(root.path(), &["uninstall", "containerd"]);
        assert!(!file.exists());
    }

    #[test]
    fn a_runtime_the_admin_wrote_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("etc/containerd/config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let original = format!("version = 2\n{}", runtime_toml(2, "stockade", "/x.toml"));
        std::fs::write(&file, &original).unwrap();
        let o = parse(&[
            "install".into(),
            "containerd".into(),
            "--root".into(),
            root.path().display().to_string(),
        ])
        .unwrap();
        let err = plan(&o).unwrap_err();
        assert!(format!("{err}").contains("did not write it"), "{err}");
        assert_eq!(run(root.path(), &["uninstall", "containerd"]), 0);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    }

    /// install writes the table the shipped snippets document (and the CRI tests use).
    #[test]
    fn writes_the_shipped_snippets_table() {
        for (version, shipped) in [
            (2, include_str!("../../../configs/containerd-cri.toml")),
            (3, include_str!("../../../configs/containerd2-cri.toml")),
        ] {
            let shipped: toml::Table = shipped.parse().unwrap();
            let ours: toml::Table =
                runtime_toml(version, "stockade", "/etc/stockade/configuration.toml")
                    .parse()
                    .unwrap();
            assert_eq!(
                runtime_in(&shipped, version, "stockade"),
                runtime_in(&ours, version, "stockade"),
                "version {version}"
            );
        }
    }

    #[test]
    fn versions_parse() {
        let o = |v: &str| {
            let mut o = parse(&["install".into(), "containerd".into()]).unwrap();
            o.containerd_version = Some(v.into());
            containerd_version(&o).unwrap()
        };
        assert_eq!(
            o("containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6"),
            (1, 7)
        );
        assert_eq!(o("containerd containerd.io v2.1.9 abc"), (2, 1));
        assert_eq!(o("2.2"), (2, 2));
    }
}
