//! The agent's log: structured lines on the guest console, which the host keeps in the
//! sandbox's `console.log` (`containerd-shim-stockade-v2 logs <id>` shows them).

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

struct Console;

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value:?}"));
        Ok(())
    }
}

impl log::Log for Console {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut fields = Fields(String::new());
        let _ = r.key_values().visit(&mut fields);
        let line = format!(
            "stockade-agent: level={} msg={:?}{}\n",
            r.level().as_str().to_lowercase(),
            r.args().to_string(),
            fields.0
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

pub fn init() {
    static LOGGER: Console = Console;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
