//! Structured log lines (`<prefix>level=info msg="..." key=value`) on stderr, for the
//! processes that have no containerd log to write to: the guest agent (its console) and
//! the warm pool service (its journal); or into a file: the shim's `start`, whose
//! stderr containerd reads as its answer, writes to containerd's shim log fifo.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

struct Lines {
    prefix: &'static str,
    /// stderr when `None`.
    sink: Option<std::sync::Mutex<Box<dyn Write + Send>>>,
}

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value:?}"));
        Ok(())
    }
}

impl log::Log for Lines {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut fields = Fields(String::new());
        let _ = r.key_values().visit(&mut fields);
        let line = format!(
            "{}level={} msg={:?}{}\n",
            self.prefix,
            r.level().as_str().to_lowercase(),
            r.args().to_string(),
            fields.0
        );
        match &self.sink {
            Some(w) => {
                if let Ok(mut w) = w.lock() {
                    let _ = w.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Log to stderr from now on, each line after `prefix`, up to `level`.
pub fn init(prefix: &'static str, level: log::LevelFilter) {
    install(Lines { prefix, sink: None }, level);
}

/// Log to `sink` from now on, each line after `prefix`, up to `level`.
pub fn init_writer(prefix: &'static str, level: log::LevelFilter, sink: Box<dyn Write + Send>) {
    let sink = Some(std::sync::Mutex::new(sink));
    install(Lines { prefix, sink }, level);
}

fn install(lines: Lines, level: log::LevelFilter) {
    let logger = Box::leak(Box::new(lines));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
