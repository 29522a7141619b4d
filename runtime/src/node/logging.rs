//! Logging for the shim and the hook: the configured `log_file`, plus runc's own `--log` file
//! in runc's format when the engine passes one, so our errors appear in the engine's message
//! (containerd and Docker read the last error from that file).
use std::{
    fs::{File, OpenOptions},
    path::Path,
    sync::Mutex,
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    Layer,
    filter::LevelFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
};

use crate::node::config::{Config, LogLevel};

fn open_append(path: &Path) -> Option<File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn level(l: LogLevel) -> LevelFilter {
    match l {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// The log the engine asked the runtime for: runc's `--log`, `--log-format` and `--debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLog<'a> {
    pub file: &'a Path,
    pub json: bool,
    pub debug: bool,
}

/// Installs the global subscriber. A log file that cannot be opened is skipped: logging
/// must never be the reason a container fails.
pub fn init(config: &Config, program: &'static str, engine: Option<EngineLog<'_>>) {
    let file_layer = config.log_file.as_deref().and_then(open_append).map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_target(false)
            .with_writer(Mutex::new(f))
            .with_filter(level(config.log_level))
    });
    let runc_layer = engine
        .and_then(|r| open_append(r.file).map(|f| (r, f)))
        .map(|(r, f)| {
            let filter = if r.debug {
                LevelFilter::DEBUG
            } else {
                LevelFilter::WARN
            };
            let json = r.json;
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Mutex::new(f))
                .event_format(RuncFormat { json, program })
                .with_filter(filter)
        });
    let subscriber = tracing_subscriber::registry()
        .with(file_layer)
        .with(runc_layer);
    // Only fails if a subscriber is already installed, which then keeps logging.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// This process's peak resident set size in KiB (`VmHWM`), for the benchmarks' debug lines.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// runc's log line formats: `{"level":"error","msg":"...","time":"..."}` or logrus text.
struct RuncFormat {
    json: bool,
    program: &'static str,
}

impl<S, N> FormatEvent<S, N> for RuncFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let msg = format!("{}: {fields}", self.program);
        if self.json {
            let line = serde_json::json!({"level": level, "msg": msg, "time": time});
            writeln!(writer, "{line}")
        } else {
            writeln!(writer, "time={time:?} level={level} msg={msg:?}")
        }
    }
}
