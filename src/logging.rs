//! Logging: tracing to stderr (level from `IMAGESCOPE_LOG`, default `warn`) and, once a run folder
//! exists, also to its `output.log` at `info` level without colours. The file is written by
//! `tracing-appender`'s worker thread (a line is handed over, never written on the logging
//! thread); `close_file` flushes it.

use std::sync::Mutex;

use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The run's log file: the non-blocking writer and the guard that flushes it when dropped.
static LOG_FILE: Mutex<
    Option<(
        tracing_appender::non_blocking::NonBlocking,
        tracing_appender::non_blocking::WorkerGuard,
    )>,
> = Mutex::new(None);

/// Writes to the run's log file when one is set.
struct FileSink;

impl std::io::Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((f, _)) = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some((f, _)) = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init() {
    let stderr_filter = tracing_subscriber::EnvFilter::try_from_env("IMAGESCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(stderr_filter),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| FileSink)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .try_init();
}

/// Sends log lines to `path` (appending) from now on.
pub fn log_to_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let writer = tracing_appender::non_blocking(f);
    // Replacing an earlier file drops its guard, which flushes it.
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    Ok(())
}

/// Flushes and closes the run's log file (the worker thread writes what is queued first).
pub fn close_file() {
    LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).take();
}
