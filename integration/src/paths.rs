//! Where things are: the workspace, and the shim binary under test.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The directory holding the shim binary under test (release build unless overridden).
pub fn shim_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("STOCKADE_SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"));
    if !dir.join("containerd-shim-stockade-v2").exists() {
        bail!(
            "{}/containerd-shim-stockade-v2 missing: run `cargo build --release` first",
            dir.display()
        );
    }
    Ok(dir)
}

/// `$PATH` with the shim under test first, so the daemons find it by runtime name.
pub(crate) fn path_with_shim() -> Result<String> {
    Ok(format!(
        "{}:{}",
        shim_dir()?.display(),
        crate::daemons::daemons().path_with(&std::env::var("PATH").unwrap_or_default())
    ))
}
