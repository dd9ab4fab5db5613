//! The daemon: bind everything fallible first, then serve, reload and drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminState, Health};
use crate::admission::Admission;
use crate::config::{self, Config, ConfigError};
use crate::hub::Hub;
use crate::listener::{self, Capacity};
use crate::logging::{self, LevelHandle, LogError};
use crate::metrics::Metrics;
use crate::notify;
use crate::settings::Settings;
use crate::shutdown::{DrainReport, Shutdown};
use crate::signals::Event;
use crate::state::Context;
use crate::tls::{self, TlsError};
use crate::token::{self as token, Tokens};

/// How often `STATUS=` is refreshed with the connection count.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// sysexits EX_OSERR: a socket cannot be bound, the runtime or the signal handlers cannot start.
pub const EX_OSERR: u8 = 71;
/// sysexits EX_CONFIG: anything the config can fix.
pub const EX_CONFIG: u8 = 78;

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
    /// A key file of `auth.keys` cannot be used.
    #[error(transparent)]
    Keys(#[from] crate::token::KeyError),
    /// The admin token file cannot be used.
    #[error(transparent)]
    AdminToken(#[from] admin::TokenError),
    /// The sockets passed by systemd cannot be used.
    #[error("sockets passed by systemd (LISTEN_FDS) cannot be used: {0}")]
    Inherited(std::io::Error),
    /// An admin listen address cannot be bound.
    #[error("admin.listen = {addr} cannot be bound: {err}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        err: std::io::Error,
    },
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
            StartError::Bind { .. } | StartError::AdminBind { .. } | StartError::Inherited(_) => EX_OSERR,
            _ => EX_CONFIG,
        }
    }
}

/// Validates what `--check-config` promises beyond parsing: TLS files load and match, the log
/// directory is writable.
pub fn check(config: &Config) -> Result<(), StartError> {
    load_tls(config)?;
    Tokens::load(&config.auth)?;
    admin::load_token(&config.admin.token_file)?;
    if config.log.target == config::LogTarget::File {
        logging::file_appender(&config.log)?;
    }
    Ok(())
}

fn load_tls(config: &Config) -> Result<Option<tls::Loaded>, TlsError> {
    if !config.tls.enabled {
        return Ok(None);
    }
    tls::load(&config.tls.cert, &config.tls.key).map(Some)
}

/// The keys of `auth.keys`, their count shown in the metrics.
fn tokens(config: &Config, metrics: &Metrics) -> Result<Arc<Tokens>, crate::token::KeyError> {
    let tokens = Tokens::load(&config.auth)?;
    metrics.token_keys.set(tokens.key_count() as i64);
    Ok(Arc::new(tokens))
}

/// The acceptor of a loaded certificate, its expiry shown in the metrics.
fn acceptor(loaded: Option<tls::Loaded>, metrics: &Metrics) -> Option<Arc<rustls::ServerConfig>> {
    let loaded = loaded?;
    metrics.tls_cert_not_after.set(loaded.not_after);
    Some(loaded.config)
}

/// A bound, not yet serving daemon.
pub struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    ctx: Arc<Context>,
    /// The one channel a reload goes through.
    live: watch::Sender<Arc<Settings>>,
    admin: Vec<TcpListener>,
    admin_addrs: Vec<SocketAddr>,
    admin_state: Arc<AdminState>,
    capacity: Arc<Capacity>,
    level: Option<LevelHandle>,
    /// The broker's work list, until `run` starts the broker.
    cluster_work: Option<tokio::sync::mpsc::UnboundedReceiver<crate::cluster::ClaimWork>>,
    /// The broker's tasks while serving; dropped (stopped) after the drain.
    broker: Option<crate::cluster::broker::Broker>,
}

impl Daemon {
    /// Loads TLS and binds every listener; nothing serves yet. Must run inside a tokio runtime.
    /// `config_path` is what SIGHUP re-reads (the `--config` argument).
    pub fn bind(config: Config, config_path: Option<PathBuf>, level: Option<LevelHandle>) -> Result<Self, StartError> {
        raise_open_file_limit(config.server.max_connections);
        let loaded = load_tls(&config)?;
        let listeners = bind_listeners(&config)?;
        let addrs =
            listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>().map_err(StartError::Inherited)?;
        let admin = config
            .admin
            .listen
            .iter()
            .map(|&addr| admin::bind(addr).map_err(|err| StartError::AdminBind { addr, err }))
            .collect::<Result<Vec<_>, _>>()?;
        let admin_addrs: Vec<SocketAddr> = admin.iter().filter_map(|l| l.local_addr().ok()).collect();
        let metrics = Metrics::new();
        let tokens = tokens(&config, &metrics)?;
        let acceptor = acceptor(loaded, &metrics);
        let (live, live_rx) = watch::channel(Arc::new(Settings::new(&config, acceptor, tokens)));
        let mut node = admin::node_name();
        let (hub, cluster_work) = if config.cluster.enabled() {
            let dropped = metrics.broker.dropped_counter("outbox");
            let (link, work) = crate::cluster::Link::new(&node, &config.cluster, dropped);
            node = link.name.clone();
            (Hub::clustered(live_rx.clone(), Arc::new(link)), Some(work))
        } else {
            (Hub::new(live_rx.clone()), None)
        };
        let ctx = Arc::new(Context {
            admission: Arc::new(Admission::new(config.server.ipv6_prefix)),
            hub: Arc::new(hub.counting(&metrics)),
            live: live_rx,
            shutdown: Shutdown::default(),
            metrics,
        });
        let capacity = Arc::new(Capacity::default());
        let token = admin::load_token(&config.admin.token_file)?;
        let scheme = if config.tls.enabled { "wss" } else { "ws" };
        let public_url = addrs.first().map(|a| format!("{scheme}://{a}")).unwrap_or_default();
        let admin_state = Arc::new(AdminState {
            health: Health::default(),
            ctx: ctx.clone(),
            token,
            node,
            public_url,
            admin_url: admin_addrs.first().map(|a| format!("http://{a}")).unwrap_or_default(),
            profiling: Default::default(),
        });
        Ok(Self {
            config,
            config_path,
            listeners,
            addrs,
            ctx,
            live,
            admin,
            admin_addrs,
            admin_state,
            capacity,
            level,
            cluster_work,
            broker: None,
        })
    }

    /// The bound addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound admin addresses (port 0 resolved).
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
    }

    #[doc(hidden)]
    pub fn context_for_tests(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// The hub, for observing connection counts.
    pub fn hub(&self) -> Arc<Hub> {
        self.ctx.hub.clone()
    }

    /// Serves until a Terminate event (or the end of `events`), then drains.
    pub async fn run(mut self, mut events: impl Stream<Item = Event> + Unpin) -> DrainReport {
        let listening = self.start_listeners();
        info!(version = env!("CARGO_PKG_VERSION"), "listening on {listening}");
        notify::ready(&format!("listening on {listening}"));
        self.admin_state.health.set_ready();
        // STATUS= and WATCHDOG= until the process ends, the drain included.
        let heartbeat = tokio::spawn(heartbeat(self.ctx.hub.clone(), listening.clone()));
        let expiry = tokio::spawn(expire_tokens(self.ctx.clone()));
        let keepalive = tokio::spawn(keepalive(self.ctx.clone()));
        while let Some(Event::Reload) = events.next().await {
            self.reload();
            notify::ready(&format!("listening on {listening}; {} clients", self.ctx.hub.len()));
        }
        let report = self.drain(&mut events).await;
        heartbeat.abort();
        expiry.abort();
        keepalive.abort();
        self.broker = None;
        report
    }

    /// Spawns one accept loop per listener; returns the addresses as `ws://a wss://b`.
    fn start_listeners(&mut self) -> String {
        for listener in std::mem::take(&mut self.listeners) {
            tokio::spawn(listener::run(listener, self.ctx.clone(), self.capacity.clone()));
        }
        // Not stopped by the drain: health checks are answered until the process exits.
        for listener in std::mem::take(&mut self.admin) {
            tokio::spawn(admin::run(listener, self.admin_state.clone()));
        }
        if let Some(work) = self.cluster_work.take() {
            let cluster = &self.config.cluster;
            info!("cluster {:?} through {}", cluster.name, crate::config::redact(&cluster.redis));
            self.broker =
                Some(crate::cluster::broker::start(self.ctx.clone(), &cluster.redis, cluster.heartbeat, work));
        }
        let scheme = if self.config.tls.enabled { "wss" } else { "ws" };
        self.addrs.iter().map(|a| format!("{scheme}://{a}")).collect::<Vec<_>>().join(" ")
    }

    /// The drain, cut short by a second Terminate.
    async fn drain(&self, events: &mut (impl Stream<Item = Event> + Unpin)) -> DrainReport {
        let timeout = self.config.shutdown.drain_timeout;
        let open = self.ctx.hub.len();
        info!(clients = open, "draining within {}", humantime::format_duration(timeout));
        notify::stopping(&format!("draining {open} clients"));
        let drain = self.ctx.shutdown.drain(&self.ctx.hub, timeout, self.config.shutdown.spread);
        tokio::pin!(drain);
        let report = loop {
            tokio::select! {
                report = &mut drain => break report,
                event = events.next() => match event {
                    Some(Event::Terminate) => {
                        warn!("second termination signal: exiting at once");
                        break self.ctx.shutdown.report();
                    }
                    // A reload during the drain changes nothing.
                    Some(Event::Reload) => {}
                    None => break (&mut drain).await,
                },
            }
        };
        if report.cut_off > 0 {
            warn!("graceful shutdown did not complete in {}, terminating now", humantime::format_duration(timeout));
        }
        info!("drained {}, cut off {}", report.drained, report.cut_off);
        report
    }

    /// Re-reads the config; applies what can change live (one send on the live channel), names
    /// what needs a restart, and keeps the old config whole if anything in the new one is wrong.
    fn reload(&mut self) {
        notify::reloading();
        let ok = self.try_reload();
        self.ctx.metrics.reloaded(ok);
    }

    /// The reload itself; false when the running configuration was kept.
    fn try_reload(&mut self) -> bool {
        let mut new = match config::load(self.config_path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return false;
            }
        };
        let restart = self.config.carry_restart_keys(&mut new);
        // After carrying tls.enabled over: a reload never switches TLS on or off.
        let loaded = match load_tls(&new) {
            Ok(l) => l,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return false;
            }
        };
        // Key files are read again: a new key works and a removed one stops working at once.
        let tokens = match tokens(&new, &self.ctx.metrics) {
            Ok(t) => t,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return false;
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
        let acceptor = acceptor(loaded, &self.ctx.metrics);
        self.live.send_replace(Arc::new(Settings::new(&new, acceptor, tokens)));
        self.config = new;
        info!("configuration reloaded");
        true
    }
}

/// Each connection is a descriptor: take the hard limit (systemd's LimitNOFILE=, or the shell's)
/// instead of the 1024 soft default, and say so when it is still short.
fn raise_open_file_limit(max_connections: usize) {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if (nofile as usize) < max_connections + 64 {
        warn!(
            limit = nofile,
            "the open-file limit is below server.max_connections ({max_connections}); raise LimitNOFILE"
        );
    }
}

/// Sockets from systemd (wscast.socket) take the place of server.listen: systemd keeps them
/// open across restarts, so no connect is refused while the daemon is down.
fn bind_listeners(config: &Config) -> Result<Vec<TcpListener>, StartError> {
    let inherited = listener::inherited().map_err(StartError::Inherited)?;
    if !inherited.is_empty() {
        info!("serving {} socket(s) passed by systemd; server.listen is not used", inherited.len());
        return Ok(inherited);
    }
    config
        .server
        .listen
        .iter()
        .map(|&addr| listener::bind(addr).map_err(|err| StartError::Bind { addr, err }))
        .collect()
}

/// `STATUS=` with the client count when it changes, and `WATCHDOG=1` when systemd asks for it.
async fn heartbeat(hub: Arc<Hub>, listening: String) {
    let mut status = tokio::time::interval(STATUS_EVERY);
    let watchdog = notify::watchdog_interval();
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::MAX / 4));
    let mut last_count = usize::MAX;
    loop {
        tokio::select! {
            _ = status.tick() => {
                let count = hub.len();
                if count != last_count {
                    last_count = count;
                    notify::status(&format!("listening on {listening}; {count} clients"));
                }
            }
            _ = ping.tick(), if watchdog.is_some() => notify::watchdog(),
        }
    }
}

/// The connections' heartbeats, one sweep for all of them instead of a timer per connection:
/// a ping every `websocket.ping_interval`, the cut-off after `websocket.idle_timeout` of silence,
/// each at most a quarter of the shorter one late (and at most a second).
async fn keepalive(ctx: Arc<Context>) {
    loop {
        let (ping, idle) = {
            let live = ctx.live.borrow();
            (live.ping_interval, live.idle_timeout)
        };
        tokio::time::sleep((ping.min(idle) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))).await;
        let ended = ctx.hub.heartbeat(crate::mailbox::now_ms(), ping, idle);
        if ended > 0 {
            debug!(ended, "dropped connections silent for websocket.idle_timeout");
        }
    }
}

/// How often the expiry sweep looks; a token's 4003 comes this long after its `exp` at most.
const EXPIRY_EVERY: Duration = Duration::from_millis(250);

/// With `auth.expire_connections`, closes (4003) the connections whose token's `exp` has come:
/// one sweep for all of them instead of a timer per connection.
async fn expire_tokens(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(EXPIRY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if ctx.live.borrow().tokens.expire_connections() {
            let closed = ctx.hub.expire(token::unix_now());
            if closed > 0 {
                info!(closed, "closed connections whose token expired (4003)");
            }
        }
    }
}
