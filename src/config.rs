//! The configuration surface: serde structs, figment layering and validation.
//!
//! Layering is built-in defaults < TOML file < `WSCAST_*` environment. Every error becomes one
//! line that names the key, the value and the problem, because that line is all an operator sees
//! in `systemctl status`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

/// Where the packaged daemon reads its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/wscast/wscast.toml";

/// Prefix of the environment variables that override the file (`WSCAST_SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "WSCAST_";

/// The largest `websocket.max_message_size` accepted: beyond it one client could pin a large
/// share of memory with a single message.
const MAX_MESSAGE_SIZE_CAP: u64 = 256 * 1024 * 1024;

/// The whole configuration, as read from all layers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening sockets and the HTTP upgrade.
    pub server: Server,
    /// Optional TLS (wss).
    pub tls: Tls,
    /// Per-connection WebSocket limits.
    pub websocket: WebSocket,
    /// Log destination and level.
    pub log: Log,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// The admin listener.
    pub admin: Admin,
    /// Several nodes as one, through Redis.
    pub cluster: Cluster,
    /// Who may connect: signed connection tokens.
    pub auth: Auth,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// `none` lets anyone connect (the Go server's behaviour); `jwt` requires a token.
    pub mode: AuthMode,
    /// Key files: HMAC secrets (HS256), PEM public keys (RS256, ES256, EdDSA), JWK Sets (`.json`).
    pub keys: Vec<PathBuf>,
    /// The `aud` a token must name; empty means `aud` is not checked.
    pub audience: String,
    /// The `iss` a token must carry; empty means `iss` is not checked.
    pub issuer: String,
    /// Clock skew allowed on `exp` and `nbf` at the handshake.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Close open connections with 4003 at their token's `exp`.
    pub expire_connections: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            keys: Vec::new(),
            audience: String::new(),
            issuer: String::new(),
            leeway: Duration::from_secs(30),
            expire_connections: false,
        }
    }
}

/// `auth.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect with any key.
    None,
    /// A connection needs a JWT whose `sub` is its key.
    Jwt,
}

impl Auth {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == AuthMode::Jwt && self.keys.is_empty() {
            return Err(ConfigError::invalid("auth.keys", "[]", "auth.mode = \"jwt\" needs at least one key file"));
        }
        if self.leeway > Duration::from_secs(600) {
            return Err(ConfigError::invalid(
                "auth.leeway",
                format!("\"{}\"", humantime::format_duration(self.leeway)),
                "must be at most 10m",
            ));
        }
        if let Some(dup) = self.keys.iter().enumerate().find_map(|(i, k)| self.keys[..i].contains(k).then_some(k)) {
            return Err(ConfigError::invalid("auth.keys", format!("{dup:?}"), "file listed twice"));
        }
        Ok(())
    }
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://`, `rediss://` or `redis+unix://` URL of the broker; empty means a single node.
    pub redis: String,
    /// Nodes with the same name (and Redis) form one cluster: it names their Redis keys and
    /// channels (`wscast:{name}:...`).
    pub name: String,
    /// Cross-node messages held while Redis is unreachable; beyond it the oldest are dropped.
    pub outbox: usize,
    /// How often a node says it is alive; three missed make it count as gone.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Self { redis: String::new(), name: "wscast".into(), outbox: 10_000, heartbeat: Duration::from_secs(1) }
    }
}

impl Cluster {
    /// True when a broker is configured.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled() {
            let scheme = self.redis.split_once("://").map(|(s, _)| s).unwrap_or("");
            if !["redis", "rediss", "redis+unix", "unix"].contains(&scheme) {
                return Err(ConfigError::invalid(
                    "cluster.redis",
                    format!("{:?}", redact(&self.redis)),
                    "must be a redis://, rediss:// or redis+unix:// URL",
                ));
            }
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.redis.as_str()) {
                return Err(ConfigError::invalid(
                    "cluster.redis",
                    format!("{:?}", redact(&self.redis)),
                    one_line(&e.to_string()),
                ));
            }
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(ConfigError::invalid(
                "cluster.name",
                format!("{:?}", self.name),
                "must be 1-64 of A-Z a-z 0-9 - _ .",
            ));
        }
        if self.outbox == 0 || self.outbox > 10_000_000 {
            return Err(ConfigError::invalid("cluster.outbox", self.outbox, "must be 1 to 10000000"));
        }
        if self.heartbeat < Duration::from_millis(100) || self.heartbeat > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "cluster.heartbeat",
                format!("\"{}\"", humantime::format_duration(self.heartbeat)),
                "must be 100ms to 60s",
            ));
        }
        Ok(())
    }
}

/// A Redis URL without its password (`user:pass@` or `?pass=`), for messages and logs.
pub fn redact(url: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    match query {
        Some(q) => {
            let hidden: Vec<String> = q
                .split('&')
                .map(|p| if p.starts_with("pass=") { "pass=***".to_string() } else { p.to_string() })
                .collect();
            format!("{base}?{}", hidden.join("&"))
        }
        None => base,
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Addresses of the admin HTTP listener; empty means none.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// File holding the bearer token of `/v1/*`; empty means `$CREDENTIALS_DIRECTORY/admin-token`
    /// when systemd passed it, else no token (those routes answer 403).
    pub token_file: PathBuf,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// One or more socket addresses; a single string is accepted too.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// The only path that upgrades.
    pub path: String,
    /// Open connections at most, handshakes included.
    pub max_connections: usize,
    /// One deadline for TCP accept -> TLS -> HTTP 101.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Browser origins allowed to connect; empty means any.
    pub allowed_origins: Vec<String>,
    /// Open connections per client IP at most; 0 means no limit.
    pub max_connections_per_ip: usize,
    /// Addresses exempt from the per-IP limit (proxies, load balancers).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// New connections admitted per second over the whole daemon; 0 means no limit.
    pub max_handshakes_per_second: u32,
    /// IPv6 clients are counted per prefix of this many bits by the per-address limits.
    pub ipv6_prefix: u8,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// Serve wss instead of ws.
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[websocket]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocket {
    /// Largest message (a frame or the sum of its fragments), and the cap on inflated gzip.
    pub max_message_size: ByteSize,
    /// Messages a client may fall behind before it is cut off with 4001.
    pub send_queue: usize,
    /// How often the daemon pings each client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent this long (no data, no pong) is dropped as dead.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Deflate level for gzip clients, 0 (store) to 9 (smallest).
    pub gzip_level: u32,
    /// Messages a client may send per second on average; 0 means no limit.
    pub max_messages_per_second: u32,
    /// Messages a client may send at once above that rate; 0 means as many as one second's worth.
    pub message_burst: u32,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// Where log lines go.
    pub target: LogTarget,
    /// Directory of the rotating files (`target = "file"`).
    pub directory: PathBuf,
    /// File name prefix; tracing-appender appends the date.
    pub file_prefix: String,
    /// How often a new file is started.
    pub rotation: Rotation,
    /// Rotated files kept, the current one included.
    pub max_files: usize,
    /// An `EnvFilter` directive string.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// How long clients get to take their last messages and the 1001 close.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The drain's 1001 closes are spread over this long, so reconnects do not all land at once.
    #[serde(with = "humantime_serde")]
    pub spread: Duration,
}

/// `log.target`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Rotating files under `log.directory`.
    File,
    /// Standard error (systemd puts it in the journal too).
    Stderr,
    /// The journal's native protocol, with structured fields.
    Journald,
}

/// `log.rotation`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rotation {
    /// A new file every minute (mostly for tests).
    Minutely,
    /// Every hour.
    Hourly,
    /// Every day.
    Daily,
    /// Every week.
    Weekly,
    /// One file forever.
    Never,
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8888))],
            path: "/".into(),
            max_connections: 200_000,
            handshake_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_connections_per_ip: 0,
            trusted_proxies: Vec::new(),
            max_handshakes_per_second: 0,
            ipv6_prefix: 64,
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self { enabled: false, cert: "/etc/wscast/tls/fullchain.pem".into(), key: "/etc/wscast/tls/privkey.pem".into() }
    }
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize::kib(64),
            send_queue: 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            gzip_level: 6,
            max_messages_per_second: 0,
            message_burst: 0,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            target: LogTarget::Stderr,
            directory: "/var/log/wscast".into(),
            file_prefix: "wscast.log".into(),
            rotation: Rotation::Daily,
            max_files: 14,
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { drain_timeout: Duration::from_secs(20), spread: Duration::ZERO }
    }
}

impl WebSocket {
    /// `max_message_size` in bytes; validation keeps it far below `usize::MAX`.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_size.as_u64() as usize
    }
}

/// A configuration that cannot be used, with everything needed for one line of explanation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key holds a value that does not parse or does not make sense.
    #[error("{key} = {value} is not valid: {problem}{}", origin_suffix(.origin))]
    Invalid {
        /// Dotted key, e.g. `server.listen`.
        key: String,
        /// The value as written (rendered as TOML).
        value: String,
        /// What is wrong with it.
        problem: String,
        /// The layer it came from (file path or environment), when known.
        origin: Option<String>,
    },
    /// The file itself could not be read or parsed.
    #[error("config file {path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        problem: String,
    },
}

fn origin_suffix(origin: &Option<String>) -> String {
    origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default()
}

impl ConfigError {
    /// An invalid value found by validation after extraction.
    pub fn invalid(key: &str, value: impl fmt::Display, problem: impl fmt::Display) -> Self {
        ConfigError::Invalid { key: key.into(), value: value.to_string(), problem: problem.to_string(), origin: None }
    }
}

/// Reads the layers. `explicit` is the `--config` argument: a missing explicit file is an error,
/// while a missing default file means "run on built-in defaults".
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    let mut figment = Figment::new();
    match std::fs::metadata(path) {
        Ok(_) => {
            // Read it ourselves so an unreadable file (permissions) is reported as such instead
            // of figment's "file not found".
            std::fs::File::open(path).map_err(|e| ConfigError::File { path: path.into(), problem: e.to_string() })?;
            figment = figment.merge(Toml::file(path));
        }
        Err(e) if explicit.is_some() || e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ConfigError::File { path: path.into(), problem: e.to_string() });
        }
        Err(_) => {}
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    let config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
    config.validate()?;
    Ok(config)
}

/// Parses a TOML text alone, without file or environment layers (for tools and fuzzing).
pub fn parse(toml: &str) -> Result<Config, ConfigError> {
    let figment = Figment::new().merge(Toml::string(toml));
    let config: Config = figment.extract().map_err(|e| from_figment(&figment, e))?;
    config.validate()?;
    Ok(config)
}

/// Turns figment's error into one line with key, value and problem.
fn from_figment(figment: &Figment, err: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let origin = err.metadata.as_ref().map(|m| match &m.source {
        Some(source) => source.to_string(),
        None => m.name.to_string(),
    });
    let path = &err.path;
    let problem = match &err.kind {
        Kind::UnknownField(_, expected) => format!("unknown key; expected one of: {}", expected.join(", ")),
        Kind::UnknownVariant(_, expected) => format!("expected one of: {}", expected.join(", ")),
        Kind::InvalidType(actual, expected) => format!("found {actual}, expected {expected}"),
        Kind::Message(msg) if path.is_empty() => {
            // A syntax error in the file: figment has no key to name, the message has the place.
            let file = origin.clone().unwrap_or_else(|| DEFAULT_PATH.into());
            return ConfigError::File { path: file.into(), problem: one_line(msg) };
        }
        other => one_line(&other.to_string()),
    };
    let key = path.join(".");
    let value = figment.find_value(&key).map(|v| render(&v)).unwrap_or_else(|_| "(unreadable)".into());
    // Keys and values may hold line breaks (quoted keys, multi-line strings): the message must
    // stay one line.
    ConfigError::Invalid {
        key: escape_controls(&key),
        value: escape_controls(&value),
        problem: one_line(&problem),
        origin,
    }
}

fn render(value: &figment::value::Value) -> String {
    toml::Value::try_from(value).map(|v| v.to_string()).unwrap_or_else(|_| format!("{value:?}"))
}

fn escape_controls(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Config {
    /// Checks what serde cannot: ranges, relations between keys, the log filter syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        // Port 0 (any free port, for tests) cannot collide.
        for (i, a) in self.admin.listen.iter().enumerate().filter(|(_, a)| a.port() != 0) {
            if self.admin.listen[..i].contains(a) || self.server.listen.contains(a) {
                return Err(ConfigError::invalid("admin.listen", a, "address listed twice (or also in server.listen)"));
            }
        }
        self.websocket.validate()?;
        self.log.validate()?;
        self.cluster.validate()?;
        self.auth.validate()?;
        nonzero("shutdown.drain_timeout", self.shutdown.drain_timeout)?;
        let (spread, drain) = (self.shutdown.spread, self.shutdown.drain_timeout);
        if spread >= drain {
            return Err(ConfigError::invalid(
                "shutdown.spread",
                format!("\"{}\"", humantime::format_duration(spread)),
                format!(
                    "must be shorter than shutdown.drain_timeout ({}), so the last clients can still flush",
                    humantime::format_duration(drain)
                ),
            ));
        }
        Ok(())
    }
}

impl Server {
    fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
        if s.listen.is_empty() {
            return Err(ConfigError::invalid("server.listen", "[]", "at least one address is needed"));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(ConfigError::invalid("server.listen", a, "address listed twice"));
            }
        }
        if !s.path.starts_with('/') || s.path.contains(['?', '#', ' ']) {
            return Err(ConfigError::invalid(
                "server.path",
                format!("{:?}", s.path),
                "must start with '/' and hold no '?', '#' or space",
            ));
        }
        if s.max_connections == 0 || s.max_connections > 10_000_000 {
            return Err(ConfigError::invalid("server.max_connections", s.max_connections, "must be 1 to 10000000"));
        }
        nonzero("server.handshake_timeout", s.handshake_timeout)?;
        if !(1..=128).contains(&s.ipv6_prefix) {
            return Err(ConfigError::invalid("server.ipv6_prefix", s.ipv6_prefix, "must be 1 to 128 (bits)"));
        }
        if let Some(o) = s.allowed_origins.iter().find(|o| o.is_empty() || o.ends_with('/')) {
            return Err(ConfigError::invalid(
                "server.allowed_origins",
                format!("{o:?}"),
                "an origin is scheme://host[:port] with no trailing slash",
            ));
        }
        Ok(())
    }
}

impl WebSocket {
    fn validate(&self) -> Result<(), ConfigError> {
        let w = self;
        let size = w.max_message_size.as_u64();
        if size == 0 || size > MAX_MESSAGE_SIZE_CAP {
            return Err(ConfigError::invalid(
                "websocket.max_message_size",
                format!("\"{}\"", w.max_message_size),
                "must be 1 byte to 256 MiB",
            ));
        }
        if w.send_queue == 0 || w.send_queue > 1_000_000 {
            return Err(ConfigError::invalid("websocket.send_queue", w.send_queue, "must be 1 to 1000000"));
        }
        nonzero("websocket.ping_interval", w.ping_interval)?;
        if w.idle_timeout <= w.ping_interval {
            return Err(ConfigError::invalid(
                "websocket.idle_timeout",
                format!("\"{}\"", humantime::format_duration(w.idle_timeout)),
                format!(
                    "must be longer than websocket.ping_interval ({}), or live clients are dropped",
                    humantime::format_duration(w.ping_interval)
                ),
            ));
        }
        if w.gzip_level > 9 {
            return Err(ConfigError::invalid("websocket.gzip_level", w.gzip_level, "must be 0 to 9"));
        }
        Ok(())
    }
}

impl Log {
    fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l.level) {
            return Err(ConfigError::invalid("log.level", format!("{:?}", l.level), e));
        }
        if l.max_files == 0 {
            return Err(ConfigError::invalid("log.max_files", 0, "must be at least 1"));
        }
        if l.file_prefix.is_empty() || l.file_prefix.contains('/') {
            return Err(ConfigError::invalid(
                "log.file_prefix",
                format!("{:?}", l.file_prefix),
                "must be a non-empty file name without '/'",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The keys whose change from `self` to `new` needs a restart.
    pub fn restart_keys(&self, new: &Config) -> Vec<&'static str> {
        self.carry_restart_keys(&mut new.clone())
    }

    /// Puts this config's values of the restart-only keys into `new` (a reload keeps them) and
    /// returns the keys that differed.
    pub fn carry_restart_keys(&self, new: &mut Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! carry {
            ($($section:ident . $key:ident),+) => {$(
                if new.$section.$key != self.$section.$key {
                    changed.push(concat!(stringify!($section), ".", stringify!($key)));
                    new.$section.$key = self.$section.$key.clone();
                }
            )+};
        }
        carry!(
            server.listen,
            admin.listen,
            admin.token_file,
            cluster.redis,
            cluster.name,
            cluster.outbox,
            cluster.heartbeat,
            server.ipv6_prefix,
            tls.enabled,
            log.target,
            log.directory,
            log.file_prefix,
            log.rotation,
            log.max_files,
            log.format
        );
        changed
    }
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "\"0s\"", "must be longer than zero"));
    }
    Ok(())
}

/// Accepts `listen = "a"` as well as `listen = ["a", "b"]`, so `WSCAST_SERVER__LISTEN=a` works.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| {
            s.parse::<SocketAddr>().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not a socket address like 127.0.0.1:8888 or [::1]:8888"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    // figment's Jail fixes the closure's error type.
    #[allow(clippy::result_large_err)]
    fn load_in_jail(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            jail.create_file("wscast.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = load(Some(Path::new("wscast.toml"))).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn defaults_match_the_design() {
        let c = load_in_jail("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen, vec!["127.0.0.1:8888".parse().unwrap()]);
        assert_eq!(c.websocket.max_message_bytes(), 65536);
        assert_eq!(c.log.target, LogTarget::Stderr);
    }

    #[test]
    fn shipped_config_parses_and_differs_only_in_logging() {
        let shipped = include_str!("../config/wscast.toml");
        let c = load_in_jail(shipped, &[]).unwrap();
        let mut expected = Config::default();
        expected.log.target = LogTarget::File;
        expected.admin.listen = vec!["127.0.0.1:9090".parse().unwrap()];
        assert_eq!(c, expected);
    }

    #[test]
    fn env_overrides_file_and_accepts_a_single_address() {
        let c = load_in_jail(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[websocket]\nsend_queue = 5\n",
            &[("WSCAST_SERVER__LISTEN", "[::1]:9000"), ("WSCAST_WEBSOCKET__MAX_MESSAGE_SIZE", "1MiB")],
        )
        .unwrap();
        assert_eq!(c.server.listen, vec!["[::1]:9000".parse().unwrap()]);
        assert_eq!(c.websocket.send_queue, 5);
        assert_eq!(c.websocket.max_message_bytes(), 1 << 20);
    }

    #[test]
    fn errors_name_key_value_and_problem() {
        // (file, environment, what the one-line error must contain)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            ("[server]\nlisten = \"nope\"\n", &[], &["server.listen", "nope", "socket address"]),
            ("[server]\nmax_connections = 0\n", &[], &["server.max_connections = 0", "1 to"]),
            ("[server]\nhandshake_timeout = \"ten\"\n", &[], &["server.handshake_timeout", "\"ten\""]),
            ("[server]\nbogus = 1\n", &[], &["server.bogus = 1", "unknown key"]),
            ("[server]\nipv6_prefix = 0\n", &[], &["server.ipv6_prefix = 0", "1 to 128"]),
            ("[shutdown]\nspread = \"30s\"\n", &[], &["shutdown.spread = \"30s\"", "drain_timeout (20s)"]),
            ("[websocket]\ngzip_level = 11\n", &[], &["websocket.gzip_level = 11", "0 to 9"]),
            ("[websocket]\nmax_message_size = \"lots\"\n", &[], &["websocket.max_message_size", "lots"]),
            ("[websocket]\nidle_timeout = \"10s\"\n", &[], &["websocket.idle_timeout", "ping_interval"]),
            ("[log]\nrotation = \"yearly\"\n", &[], &["log.rotation = \"yearly\"", "minutely"]),
            ("[log]\nlevel = \"wscast=loud\"\n", &[], &["log.level", "wscast=loud"]),
            ("", &[("WSCAST_SHUTDOWN__DRAIN_TIMEOUT", "forever")], &["shutdown.drain_timeout", "forever", "WSCAST_"]),
            ("[server\n", &[], &["config file", "wscast.toml"]),
            ("[cluster]\nredis = \"http://r:1\"\n", &[], &["cluster.redis", "http://r:1", "redis://"]),
            ("[cluster]\nredis = \"redis://u:secret@r:99999/\"\n", &[], &["cluster.redis", "***@r:99999"]),
            ("[cluster]\nname = \"a b\"\n", &[], &["cluster.name = \"a b\"", "A-Z"]),
            ("[cluster]\noutbox = 0\n", &[], &["cluster.outbox = 0", "1 to"]),
        ];
        for (toml, env, needles) in cases {
            let err = load_in_jail(toml, env).expect_err(toml);
            assert!(!err.contains('\n'), "one line: {err}");
            for n in *needles {
                assert!(err.contains(n), "{toml:?}: {err:?} should contain {n:?}");
            }
        }
    }

    #[test]
    fn redis_passwords_never_reach_an_error_or_a_log() {
        for url in ["redis://u:secret@r:99999/", "redis+unix:///run/r.sock?db=1&pass=secret&x"] {
            assert!(!redact(url).contains("secret"), "{}", redact(url));
        }
        assert_eq!(redact("redis+unix:///s?db=1&pass=secret"), "redis+unix:///s?db=1&pass=***");
        let err = parse("[cluster]\nredis = \"redis://u:secret@r:99999/\"\n").unwrap_err().to_string();
        assert!(err.contains("cluster.redis") && !err.contains("secret"), "{err}");
        assert!(parse("[cluster]\nredis = \"redis+unix:///run/redis/redis-server.sock\"\n").is_ok());
        assert!(parse("[cluster]\nredis = \"rediss://r:6380/\"\n").is_ok());
    }

    #[test]
    fn errors_stay_one_line_with_line_breaks_in_keys_and_values() {
        // Found by the `config` fuzz target: an unknown quoted key with a multi-line value.
        let err = parse("\"a\\nb\" = \"\"\"x\ny\"\"\"\n").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("a\\nb") && err.contains("unknown key"), "{err}");
    }

    #[test]
    fn restart_keys_are_named_and_carried_over() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.tls.enabled = true;
        new.log.format = LogFormat::Json;
        new.websocket.send_queue = 5;
        assert_eq!(old.restart_keys(&new), ["server.listen", "tls.enabled", "log.format"]);
        assert_eq!(old.carry_restart_keys(&mut new), ["server.listen", "tls.enabled", "log.format"]);
        assert_eq!((&new.server.listen, new.tls.enabled, new.log.format), (&old.server.listen, false, LogFormat::Text));
        assert_eq!(new.websocket.send_queue, 5, "a live key keeps its new value");
        assert!(old.restart_keys(&old).is_empty());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/wscast.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/wscast.toml"), "{err}");
    }
}
