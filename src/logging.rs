//! The tracing subscriber: rotating files, stderr or journald; text or JSON; a level that a
//! reload can change.

use std::io::IsTerminal;

use tracing::Level;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{self, RollingFileAppender};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::{Log, LogFormat, LogTarget, Rotation};

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory cannot be created or written.
    #[error("log.directory = {dir:?} is not usable: {problem}")]
    Directory {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        problem: String,
    },
    /// The journal socket is not there.
    #[error("log.target = \"journald\" is not usable: {0}")]
    Journald(std::io::Error),
    /// A global subscriber was already installed (only in tests).
    #[error("logging was already initialised")]
    AlreadySet,
}

/// Changes the level filter of the running subscriber.
#[derive(Clone)]
pub struct LevelHandle(reload::Handle<EnvFilter, Registry>);

impl std::fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LevelHandle")
    }
}

impl LevelHandle {
    /// Applies a validated `log.level`.
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::builder().parse(level).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// Flushes buffered file output when dropped: keep it alive until the process exits.
#[must_use]
pub struct Guard(#[allow(dead_code)] Option<WorkerGuard>);

type Base = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Base> + Send + Sync>;

/// Installs the global subscriber described by `log`.
pub fn init(log: &Log) -> Result<(Guard, LevelHandle), LogError> {
    let filter = EnvFilter::builder().parse(&log.level).expect("validated with the config");
    let (filter, handle) = reload::Layer::new(filter);
    let (output, guard): (Output, _) = match log.target {
        LogTarget::Stderr => {
            let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
            (formatted(layer, log.format), None)
        }
        LogTarget::File => {
            let appender = file_appender(log)?;
            // Lossless: under a flood the logging thread waits rather than silently dropping.
            let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(appender);
            let file = formatted(fmt::layer().with_writer(writer).with_ansi(false), log.format);
            // The lifecycle lines (listening, reload, drain summary) also go to stderr, which
            // systemd puts in the journal: `systemctl status` shows them next to the unit's state.
            let lifecycle = fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_filter(filter_fn(|m| m.target() == "wscast::daemon" && *m.level() <= Level::INFO));
            (Box::new(file.and_then(lifecycle)), Some(guard))
        }
        LogTarget::Journald => {
            let layer = tracing_journald::layer().map_err(LogError::Journald)?;
            (Box::new(layer), None)
        }
    };
    tracing_subscriber::registry().with(filter).with(output).try_init().map_err(|_| LogError::AlreadySet)?;
    Ok((Guard(guard), LevelHandle(handle)))
}

fn formatted<W>(
    layer: fmt::Layer<Base, fmt::format::DefaultFields, fmt::format::Format, W>,
    format: LogFormat,
) -> Output
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    }
}

/// The rolling appender; also proves the directory is writable (used by `--check-config`).
pub fn file_appender(log: &Log) -> Result<RollingFileAppender, LogError> {
    let rotation = match log.rotation {
        Rotation::Minutely => rolling::Rotation::MINUTELY,
        Rotation::Hourly => rolling::Rotation::HOURLY,
        Rotation::Daily => rolling::Rotation::DAILY,
        Rotation::Weekly => rolling::Rotation::WEEKLY,
        Rotation::Never => rolling::Rotation::NEVER,
    };
    let problem =
        |e: &dyn std::fmt::Display| LogError::Directory { dir: log.directory.clone(), problem: e.to_string() };
    std::fs::create_dir_all(&log.directory).map_err(|e| problem(&e))?;
    // The appender opens its file lazily on some errors; probe with a real write so a read-only
    // directory is reported now and not at the first log line.
    let probe = log.directory.join(format!(".{}.probe", log.file_prefix));
    std::fs::write(&probe, b"").map_err(|e| problem(&e))?;
    let _ = std::fs::remove_file(&probe);
    RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(&log.file_prefix)
        .max_log_files(log.max_files)
        .build(&log.directory)
        .map_err(|e| problem(&e))
}
