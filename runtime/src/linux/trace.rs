//! libcontainer reports the cause of a failure inside the container's init (which mount,
//! which device) only as a `tracing` event; the error it returns says no more than "failed
//! to prepare rootfs". The helper catches those events in a file so the error that goes
//! back through containerd names the cause.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// At most this much of the caught text is added to an error: the first events, which
/// name the cause (later ones repeat it as it goes up the call chain).
const MAX_DETAIL: usize = 512;
const MAX_LINES: usize = 3;

struct Catcher {
    file: File,
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

impl Subscriber for Catcher {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() == Level::ERROR
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        line.0.retain(|c| c != '\n');
        line.0.push('\n');
        // One write on an O_APPEND file: lines from the helper and the container's init
        // (a clone of it that shares the file) do not interleave.
        let _ = (&self.file).write_all(line.0.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Catch errors in `path` from now on, in this process and its clones.
pub fn catch(path: &Path) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(file) = file {
        let _ = tracing::subscriber::set_global_default(Catcher { file });
    }
}

/// `error`, followed by what was caught in `path` (the last lines, bounded).
pub fn explain(error: String, path: &Path) -> String {
    let caught = std::fs::read_to_string(path).unwrap_or_default();
    let mut detail: Vec<&str> = caught.lines().filter(|l| !l.trim().is_empty()).collect();
    detail.dedup();
    detail.truncate(MAX_LINES);
    if detail.is_empty() {
        return error;
    }
    let mut text = detail.join("; ");
    if text.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    format!("{error} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_carries_the_caught_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        std::fs::write(
            &path,
            "failed to mount err=EBUSY\nfailed to mount err=EBUSY\n",
        )
        .unwrap();
        assert_eq!(
            explain("failed to prepare rootfs".into(), &path),
            "failed to prepare rootfs (failed to mount err=EBUSY)"
        );
        assert_eq!(
            explain("x".into(), &dir.path().join("none")),
            "x",
            "nothing caught, nothing added"
        );
        std::fs::write(&path, "y".repeat(5000)).unwrap();
        assert!(explain("x".into(), &path).len() < MAX_DETAIL + 16);
    }
}
