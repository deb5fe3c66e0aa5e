//! The image builder: the test image tarball, built offline by integration/image/build.sh.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::IMAGE;
use crate::command::run;
use crate::paths::workspace_root;

/// Build the test image tarball with integration/image/build.sh.
pub fn build_image(out: &Path) -> Result<()> {
    build_image_as(out, IMAGE, "null")
}

/// The test image's rootfs under `reference`, with `entrypoint` (JSON; `null` for none).
pub fn build_image_as(out: &Path, reference: &str, entrypoint: &str) -> Result<()> {
    let script = workspace_root().join("integration/image/build.sh");
    let o = run(Command::new("bash")
        .arg(script)
        .arg(out)
        .arg(reference)
        .arg(entrypoint));
    if !o.ok() {
        bail!("building the test image failed: {}{}", o.stdout, o.stderr);
    }
    Ok(())
}
