//! Dwaar's own log (startup, reloads, errors): the global `log` option chooses where it
//! goes (any access-log output, rotation included), its format and its level.

use dwaar_config::model::{LogConfig, LogFormat, LogLevel, LogOutput};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Installs the process-wide subscriber. `debug` (the global option) lowers the level.
pub fn init(config: Option<&LogConfig>, debug: bool) {
    let default = LogConfig::default();
    let c = config.unwrap_or(&default);
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        match c.level {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    };
    let terminal = matches!(c.output, LogOutput::Stderr)
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = OutputWriter(Arc::new(Mutex::new(dwaar_log::output::from_config(
        &c.output,
    ))));
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(writer)
        .with_ansi(terminal);
    // Without a global `log`, humans read the console format; with one, its format.
    if config.is_some_and(|c| c.format == LogFormat::Json) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Hands each formatted event to an output in one write.
#[derive(Clone)]
struct OutputWriter(Arc<Mutex<Box<dyn dwaar_log::output::Output>>>);

/// One event being formatted.
struct EventWriter {
    out: Arc<Mutex<Box<dyn dwaar_log::output::Output>>>,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OutputWriter {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            out: self.0.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

impl Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Ok(mut o) = self.out.lock() {
            let _ = o.write_batch(&self.buf);
        }
    }
}
