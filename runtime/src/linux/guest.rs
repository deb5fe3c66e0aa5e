//! What a guest's runtime does ahead of its first container, while the VM waits for its
//! pod (a warm-pool VM waits the longest): work every pod's first create would
//! otherwise pay for on its critical path.

use std::path::Path;

/// The cgroup under which a guest's containers live (`<parent>/<container id>`).
pub const CGROUP_PARENT: &str = "stockade";

/// The guest's cgroup v2 root, as the agent mounts it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Let child cgroups use every controller the guest kernel offers (limits inside the
/// guest are applied to each container's own cgroup), and make [`CGROUP_PARENT`] with
/// the same: the first create then only adds its own cgroup. Done at boot, before the
/// first request, so no create races with it.
pub fn prepare_cgroups(root: &Path) -> Vec<(String, std::io::Error)> {
    let mut failed = Vec::new();
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return failed;
    };
    let mut enable = |dir: &Path| {
        for c in available.split_whitespace() {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                failed.push((format!("{} +{c}", dir.display()), e));
            }
        }
    };
    enable(root);
    let parent = root.join(CGROUP_PARENT);
    match std::fs::create_dir(&parent) {
        Ok(()) => enable(&parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => enable(&parent),
        Err(e) => failed.push((parent.display().to_string(), e)),
    }
    failed
}

/// Run, once and off the critical path, the code a create runs first: Stockade's
/// seccomp profiles compiled (`Filters` finds them compiled), and a spec and a config
/// parsed and written (their first use otherwise pays for faulting in that code and,
/// under TCG, for translating it).
pub fn warm_up() {
    // Parsing first: a pod's sandbox create needs it, its first container the filters.
    warm_up_parsing();
    crate::linux::seccomp::Filters::warm_up();
}

/// The parsing half of [`warm_up`]: what a helper process (which has its own page
/// tables) runs before it waits for its request.
pub fn warm_up_parsing() {
    let spec = oci_spec::runtime::Spec::default();
    if let Ok(json) = serde_json::to_vec(&spec) {
        let _ = serde_json::from_slice::<oci_spec::runtime::Spec>(&json);
    }
    // Written and read back as a bundle's config.json is (a reader, not a slice).
    let file = std::env::temp_dir().join(format!(".stockade-warm-up-{}.json", std::process::id()));
    if spec.save(&file).is_ok() {
        let _ = oci_spec::runtime::Spec::load(&file);
    }
    let _ = std::fs::remove_file(&file);
    let config = crate::config::Config::default();
    if let Ok(text) = toml::to_string(&config) {
        let _ = crate::config::Config::parse(&text, Path::new("<warm-up>"));
    }
}

/// The cgroup `path` (as a spec names it) made, and its `cgroup.procs` opened for a
/// process to write itself in (`0`), when `path` is a child of [`CGROUP_PARENT`] as
/// [`prepare_cgroups`] made it: where libcgroups' manager would first re-enable every
/// controller on the way down, then move the process after it started. None (nothing
/// done) for any other path.
pub fn open_cgroup(path: &Path) -> crate::error::Result<Option<std::fs::File>> {
    use crate::error::Error;
    let root = Path::new(CGROUP_ROOT);
    let parent = root.join(CGROUP_PARENT);
    let relative = path.strip_prefix("/").unwrap_or(path);
    let dir = root.join(relative);
    let one_level = relative.components().count() == 2
        && relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !one_level || dir.parent() != Some(parent.as_path()) || !parent.is_dir() {
        return Ok(None);
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("create cgroup {}", dir.display()))(e)),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map(Some)
        .map_err(Error::io(format!("open cgroup {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_child_of_the_prepared_parent_is_opened_directly() {
        // Paths that are not `/stockade/<name>` go to libcgroups (false, nothing done).
        for p in [
            "/kubepods/pod1/c1",
            "/stockade",
            "/stockade/a/b",
            "/stockade/..",
            "/other/c1",
        ] {
            assert!(open_cgroup(Path::new(p)).unwrap().is_none(), "{p}");
        }
    }

    #[test]
    fn the_parent_is_made_and_both_levels_get_every_controller() {
        // A stand-in hierarchy: each write lands in a plain file (the last one stays).
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(prepare_cgroups(root.path()).is_empty());
        for dir in [root.path().to_path_buf(), root.path().join(CGROUP_PARENT)] {
            let last = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            assert_eq!(last, "+pids", "{}", dir.display());
        }
        // Again (an agent restarted in the same guest): the parent is there already.
        assert!(prepare_cgroups(root.path()).is_empty());
        let none = tempfile::tempdir().unwrap();
        assert!(
            prepare_cgroups(none.path()).is_empty(),
            "no cgroup v2 here: nothing to do"
        );
    }
}
