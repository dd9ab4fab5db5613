//! The live settings: everything a reload may change, derived once per (re)load from a
//! validated config and published through one watch channel. Each new connection takes the
//! current value; open connections keep theirs.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::Limits;
use crate::config::Config;
use crate::token::Tokens;
use crate::upgrade::Policy;

/// What a reload may change.
#[derive(Clone)]
pub struct Settings {
    /// What the upgrade accepts.
    pub policy: Policy,
    /// The TLS acceptor of new handshakes; `None` serves plain ws.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `server.handshake_timeout`
    pub handshake_timeout: Duration,
    /// `server.max_connections`
    pub max_connections: usize,
    /// Admission limits.
    pub admission: Limits,
    /// `websocket.send_queue`
    pub send_queue: usize,
    /// `websocket.ping_interval`
    pub ping_interval: Duration,
    /// `websocket.idle_timeout`
    pub idle_timeout: Duration,
    /// `websocket.max_message_size`, also the cap on inflated gzip.
    pub max_message_size: usize,
    /// `websocket.max_messages_per_second` and the burst, when limited.
    pub message_rate: Option<(f64, f64)>,
    /// `websocket.gzip_level`
    pub gzip_level: u32,
    /// `[auth]`: the keys and whether a token is required.
    pub tokens: Arc<Tokens>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("tls", &self.tls.is_some())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Derives the settings from a validated config, its loaded TLS acceptor and token keys.
    pub fn new(config: &Config, tls: Option<Arc<rustls::ServerConfig>>, tokens: Arc<Tokens>) -> Self {
        let max = config.websocket.max_message_bytes();
        let w = &config.websocket;
        Self {
            policy: Policy {
                path: config.server.path.clone(),
                allowed_origins: config.server.allowed_origins.clone(),
                scheme: if config.tls.enabled { "wss" } else { "ws" },
            },
            tls,
            handshake_timeout: config.server.handshake_timeout,
            max_connections: config.server.max_connections,
            admission: Limits::new(config),
            send_queue: w.send_queue,
            ping_interval: w.ping_interval,
            idle_timeout: w.idle_timeout,
            max_message_size: max,
            message_rate: (w.max_messages_per_second > 0).then(|| {
                let rate = f64::from(w.max_messages_per_second);
                (rate, if w.message_burst == 0 { rate } else { f64::from(w.message_burst) })
            }),
            gzip_level: w.gzip_level,
            tokens,
        }
    }
}
