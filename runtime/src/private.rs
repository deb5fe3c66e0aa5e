//! Files and directories only root may read: state dirs, the libcontainer helper's
//! requests, a VM's secret.

use std::path::Path;

/// Make `dir` root's alone (0700); best effort, as the runtime has always done.
pub(crate) fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// Write `bytes` to a new file at `path` that only its owner can read (0600). An
/// existing file is an error, never reused.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
}
