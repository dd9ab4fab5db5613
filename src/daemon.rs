//! The daemon: bind everything fallible first, then serve, reload and drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::admission::Admission;
use crate::broadcast::Broadcaster;
use crate::config::{self, Config, ConfigError};
use crate::connection::{Context, Settings};
use crate::listener::{self, Capacity};
use crate::logging::{self, LevelHandle, LogError};
use crate::notify;
use crate::registry::Registry;
use crate::shutdown::{DrainReport, Shutdown};
use crate::signals::Event;
use crate::tls::{self, TlsError};

/// How often `STATUS=` is refreshed with the connection count.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A config value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The log directory cannot be used.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The sockets passed by systemd cannot be used.
    #[error("sockets passed by systemd (LISTEN_FDS) cannot be used: {0}")]
    Inherited(std::io::Error),
    /// A listen address cannot be bound.
    #[error("server.listen = {addr} cannot be bound: {err}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        err: std::io::Error,
    },
}

impl StartError {
    /// sysexits code: 78 (EX_CONFIG) for anything the config can fix, 71 (EX_OSERR) otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Bind { .. } | StartError::Inherited(_) => 71,
            _ => 78,
        }
    }
}

/// Validates what `--check-config` promises beyond parsing: TLS files load and match, the log
/// directory is writable.
pub fn check(config: &Config) -> Result<(), StartError> {
    load_tls(config)?;
    if config.log.target == config::LogTarget::File {
        logging::file_appender(&config.log)?;
    }
    Ok(())
}

fn load_tls(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    if !config.tls.enabled {
        return Ok(None);
    }
    Ok(Some(TlsAcceptor::from(tls::load(&config.tls.cert, &config.tls.key)?)))
}

/// A bound, not yet serving daemon.
pub struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    ctx: Arc<Context>,
    settings: watch::Sender<Arc<Settings>>,
    tls: watch::Sender<Option<TlsAcceptor>>,
    capacity: Arc<Capacity>,
    level: Option<LevelHandle>,
}

impl Daemon {
    /// Loads TLS and binds every listener; nothing serves yet. Must run inside a tokio runtime.
    /// `config_path` is what SIGHUP re-reads (the `--config` argument).
    pub fn bind(config: Config, config_path: Option<PathBuf>, level: Option<LevelHandle>) -> Result<Self, StartError> {
        // Each connection is a descriptor: take the hard limit (systemd's LimitNOFILE=, or the
        // shell's) instead of the 1024 soft default, and say so when it is still short.
        let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
        if (nofile as usize) < config.server.max_connections + 64 {
            warn!(
                limit = nofile,
                "the open-file limit is below server.max_connections ({}); raise LimitNOFILE",
                config.server.max_connections
            );
        }
        let acceptor = load_tls(&config)?;
        // Sockets from systemd (wscast.socket) take the place of server.listen: systemd keeps
        // them open across restarts, so no connect is refused while the daemon is down.
        let mut listeners = listener::inherited().map_err(StartError::Inherited)?;
        let inherited = !listeners.is_empty();
        if !inherited {
            for &addr in &config.server.listen {
                listeners.push(listener::bind(addr).map_err(|err| StartError::Bind { addr, err })?);
            }
        }
        let addrs =
            listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>().map_err(StartError::Inherited)?;
        if inherited {
            info!("serving {} socket(s) passed by systemd; server.listen is not used", listeners.len());
        }
        let (settings, settings_rx) = watch::channel(Arc::new(Settings::new(&config)));
        let (tls, tls_rx) = watch::channel(acceptor);
        let registry = Arc::new(Registry::default());
        let ctx = Arc::new(Context {
            admission: Admission::new(config.server.ipv6_prefix),
            broadcaster: Broadcaster::new(registry.clone(), config.websocket.gzip_level),
            registry,
            settings: settings_rx,
            tls: tls_rx,
            shutdown: Shutdown::default(),
        });
        let capacity = Capacity::new(config.server.max_connections);
        Ok(Self { config, config_path, listeners, addrs, ctx, settings, tls, capacity, level })
    }

    /// The bound addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    #[doc(hidden)]
    pub fn context_for_tests(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// The registry, for observing connection counts.
    pub fn registry(&self) -> Arc<Registry> {
        self.ctx.registry.clone()
    }

    /// Serves until a Terminate event (or the end of `events`), then drains.
    pub async fn run(mut self, mut events: impl Stream<Item = Event> + Unpin) -> DrainReport {
        for listener in std::mem::take(&mut self.listeners) {
            tokio::spawn(listener::run(listener, self.ctx.clone(), self.capacity.clone()));
        }
        let scheme = if self.config.tls.enabled { "wss" } else { "ws" };
        let listening = self.addrs.iter().map(|a| format!("{scheme}://{a}")).collect::<Vec<_>>().join(" ");
        info!(version = env!("CARGO_PKG_VERSION"), "listening on {listening}");
        notify::ready(&format!("listening on {listening}"));

        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut watchdog = tokio::time::interval(notify::watchdog_interval().unwrap_or(Duration::MAX / 4));
        let watchdog_on = notify::watchdog_interval().is_some();
        let mut last_count = usize::MAX;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Reload) => {
                        self.reload();
                        notify::ready(&format!("listening on {listening}; {} clients", self.ctx.registry.len()));
                    }
                    Some(Event::Terminate) | None => break,
                },
                _ = status.tick() => {
                    let count = self.ctx.registry.len();
                    if count != last_count {
                        last_count = count;
                        notify::status(&format!("listening on {listening}; {count} clients"));
                    }
                }
                _ = watchdog.tick(), if watchdog_on => notify::watchdog(),
            }
        }

        let timeout = self.config.shutdown.drain_timeout;
        let open = self.ctx.registry.len();
        info!(clients = open, "draining within {}", humantime::format_duration(timeout));
        notify::stopping(&format!("draining {open} clients"));
        let drain = self.ctx.shutdown.drain(&self.ctx.registry, timeout);
        tokio::pin!(drain);
        let report = loop {
            tokio::select! {
                report = &mut drain => break report,
                event = events.next() => {
                    if matches!(event, Some(Event::Terminate)) {
                        warn!("second termination signal: exiting at once");
                        break self.ctx.shutdown.report();
                    }
                }
                _ = watchdog.tick(), if watchdog_on => notify::watchdog(),
            }
        };
        if report.cut_off > 0 {
            warn!("graceful shutdown did not complete in {}, terminating now", humantime::format_duration(timeout));
        }
        info!("drained {}, cut off {}", report.drained, report.cut_off);
        report
    }

    /// Re-reads the config; applies what can change live, names what needs a restart, and keeps
    /// the old config whole if anything in the new one is wrong.
    fn reload(&mut self) {
        notify::reloading();
        let mut new = match config::load(self.config_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        let old = &self.config;
        let mut restart = Vec::new();
        macro_rules! keep_old {
            ($($key:ident . $field:ident),+) => {$(
                if new.$key.$field != old.$key.$field {
                    restart.push(concat!(stringify!($key), ".", stringify!($field)));
                    new.$key.$field = old.$key.$field.clone();
                }
            )+};
        }
        keep_old!(
            server.listen,
            tls.enabled,
            log.target,
            log.directory,
            log.file_prefix,
            log.rotation,
            log.max_files,
            log.format,
            server.ipv6_prefix
        );
        // After keep_old!: a reload never switches TLS on or off, only swaps the certificate.
        let acceptor = match load_tls(&new) {
            Ok(a) => a,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        if !restart.is_empty() {
            warn!(keys = %restart.join(", "), "changed keys need a restart to take effect");
        }
        if let Some(level) = &self.level {
            if let Err(e) = level.set(&new.log.level) {
                error!("log.level could not be applied: {e}");
            }
        }
        self.capacity.set_max(new.server.max_connections);
        if new.tls.enabled {
            self.tls.send_replace(acceptor);
        }
        self.ctx.broadcaster.set_gzip_level(new.websocket.gzip_level);
        self.settings.send_replace(Arc::new(Settings::new(&new)));
        self.config = new;
        info!("configuration reloaded");
    }
}
