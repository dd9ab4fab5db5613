//! The daemon's metrics, rendered for `GET /metrics` in the OpenMetrics text format that
//! Prometheus scrapes.
//!
//! Counting stays off the fan-out's back: every metric touched per message or per write is a
//! handle taken once, so an increment is one relaxed atomic add with no label lookup. Labelled
//! families are looked up only per handshake, per disconnect or per reload. No label carries a
//! key or a peer. One registry per daemon (no global one), so in-process tests stay apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tls {
    tls: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseCode {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

/// Every metric of the daemon; see `docs/metrics.md`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: [Gauge; 2],
    /// `wscast_gzip_connections`, set from the hub at each scrape.
    pub gzip_connections: Gauge,
    /// `wscast_connections_accepted_total`
    pub accepted: Counter,
    rejected: Family<Reason, Counter>,
    /// `wscast_messages_received_total`
    pub messages_received: Counter,
    frames: [Counter; 2],
    /// `wscast_bytes_sent_total`
    pub bytes_sent: Counter,
    disconnects: Family<CloseCode, Counter>,
    /// `wscast_slow_consumers_total`
    pub slow_consumers: Counter,
    reloads: Family<Outcome, Counter>,
    /// `wscast_tls_cert_not_after_seconds`
    pub tls_cert_not_after: Gauge,
    tokens_rejected: Family<Reason, Counter>,
    /// `wscast_token_keys`: keys loaded from `auth.keys`.
    pub token_keys: Gauge,
    /// The `wscast_broker_*` and `wscast_cluster_*` metrics.
    pub broker: BrokerMetrics,
}

/// What the cluster's link to Redis counts.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// `wscast_broker_up`: 1 while publishing and subscribed with the node's own heartbeat
    /// coming back.
    pub up: Gauge,
    /// `wscast_broker_reconnects_total`
    pub reconnects: Counter,
    /// `wscast_broker_outbox`, set at each scrape.
    pub outbox: Gauge,
    dropped: Family<Reason, Counter>,
    /// `wscast_broker_gaps_total`: envelopes of other nodes that never arrived.
    pub gaps: Counter,
    /// `wscast_broker_duplicates_total`
    pub duplicates: Counter,
    /// `wscast_cluster_nodes`, set at each scrape.
    pub nodes: Gauge,
    lag: Option<Histogram>,
}

impl BrokerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self { lag: Some(Histogram::new(exponential_buckets(0.000_25, 2.0, 16))), ..Self::default() };
        registry.register("broker_up", "1 while the link to Redis works both ways", m.up.clone());
        registry.register("broker_reconnects", "Connections to Redis made again after a loss", m.reconnects.clone());
        registry.register("broker_outbox", "Envelopes waiting to be published to Redis", m.outbox.clone());
        registry.register("broker_dropped", "Cross-node envelopes dropped, by reason", m.dropped.clone());
        registry.register("broker_gaps", "Envelopes of other nodes that never arrived (sequence gaps)", m.gaps.clone());
        registry.register("broker_duplicates", "Envelopes received twice and dropped", m.duplicates.clone());
        registry.register("cluster_nodes", "Live nodes of the cluster, this one included", m.nodes.clone());
        let lag = m.lag.clone().expect("made above");
        registry.register("broker_lag_seconds", "From another node's send to its arrival here", lag);
        for reason in ["outbox", "dispatch", "undecodable"] {
            let _ = m.dropped.get_or_create(&Reason { reason: reason.into() });
        }
        m
    }

    /// Counts `n` envelopes dropped for `reason` (`outbox`, `dispatch`, `undecodable`).
    pub fn dropped(&self, reason: &str, n: u64) {
        self.dropped.get_or_create(&Reason { reason: reason.into() }).inc_by(n);
    }

    /// The counter of envelopes dropped for `reason`, as a handle to count with later.
    pub fn dropped_counter(&self, reason: &str) -> Counter {
        self.dropped.get_or_create(&Reason { reason: reason.into() }).clone()
    }

    /// Records how long an envelope took from its origin to here.
    pub fn lag(&self, seconds: f64) {
        if let Some(lag) = &self.lag {
            lag.observe(seconds.max(0.0));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `wscast_` names.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wscast");
        let connections = Family::<Tls, Gauge>::default();
        registry.register("connections", "Open client connections (upgraded)", connections.clone());
        let gzip_connections = Gauge::default();
        registry.register("gzip_connections", "Open client connections that receive gzip", gzip_connections.clone());
        let accepted = Counter::default();
        registry.register("connections_accepted", "Completed upgrades", accepted.clone());
        let rejected = Family::<Reason, Counter>::default();
        registry.register("handshakes_rejected", "Handshakes answered without an upgrade, by reason", rejected.clone());
        let messages_received = Counter::default();
        registry.register("messages_received", "Messages accepted for broadcast", messages_received.clone());
        let frames = Family::<Kind, Counter>::default();
        registry.register("frames_sent", "Broadcast frames written to clients, by kind", frames.clone());
        let bytes_sent = Counter::default();
        registry.register("bytes_sent", "Bytes written to clients (frames, headers included)", bytes_sent.clone());
        let disconnects = Family::<CloseCode, Counter>::default();
        registry.register("disconnects", "Ended connections, by close code", disconnects.clone());
        let slow_consumers = Counter::default();
        registry.register("slow_consumers", "Clients cut off with 4001", slow_consumers.clone());
        let reloads = Family::<Outcome, Counter>::default();
        registry.register("reloads", "Configuration reloads, by result", reloads.clone());
        let tls_cert_not_after = Gauge::default();
        registry.register(
            "tls_cert_not_after_seconds",
            "Expiry of the served TLS certificate, Unix seconds (0 without TLS)",
            tls_cert_not_after.clone(),
        );
        let tokens_rejected = Family::<Reason, Counter>::default();
        registry.register("tokens_rejected", "Connection tokens refused (401), by reason", tokens_rejected.clone());
        let token_keys = Gauge::default();
        registry.register("token_keys", "Keys loaded from auth.keys", token_keys.clone());
        let broker = BrokerMetrics::register(&mut registry);
        let build_info = Family::<Version, Gauge>::default();
        registry.register("build_info", "The running version", build_info.clone());
        build_info.get_or_create(&Version { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        // Handles taken once: counting them later is a plain atomic add.
        let tls = |on: bool| connections.get_or_create(&Tls { tls: on.to_string() }).clone();
        let kind = |k: &str| frames.get_or_create(&Kind { kind: k.into() }).clone();
        for outcome in ["ok", "failed"] {
            let _ = reloads.get_or_create(&Outcome { result: outcome.into() });
        }
        Self {
            registry,
            connections: [tls(false), tls(true)],
            gzip_connections,
            accepted,
            rejected,
            messages_received,
            frames: [kind("text"), kind("gzip")],
            bytes_sent,
            disconnects,
            slow_consumers,
            reloads,
            tls_cert_not_after,
            tokens_rejected,
            token_keys,
            broker,
        }
    }

    /// The open-connections gauge for plain or TLS clients.
    pub fn connections(&self, tls: bool) -> &Gauge {
        &self.connections[usize::from(tls)]
    }

    /// The frames-sent counter for text or gzip frames.
    pub fn frames_sent(&self, gzip: bool) -> &Counter {
        &self.frames[usize::from(gzip)]
    }

    /// Counts a handshake that ended without an upgrade.
    pub fn rejected(&self, reason: &str) {
        self.rejected.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// Counts a refused connection token (its handshake is counted as `reason="token"` too).
    pub fn token_rejected(&self, reason: &'static str) {
        self.tokens_rejected.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// Counts an ended connection by its close code (`None`: the peer vanished).
    pub fn disconnected(&self, code: Option<u16>) {
        let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
        self.disconnects.get_or_create(&CloseCode { code }).inc();
    }

    /// Counts a reload.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&Outcome { result: result.into() }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_values() {
        let m = Metrics::new();
        m.connections(true).inc();
        m.frames_sent(true).inc_by(3);
        m.rejected("not_found");
        m.disconnected(Some(4001));
        m.disconnected(None);
        m.reloaded(false);
        let text = m.render();
        for line in [
            "wscast_connections{tls=\"true\"} 1",
            "wscast_connections{tls=\"false\"} 0",
            "wscast_frames_sent_total{kind=\"gzip\"} 3",
            "wscast_frames_sent_total{kind=\"text\"} 0",
            "wscast_handshakes_rejected_total{reason=\"not_found\"} 1",
            "wscast_disconnects_total{code=\"4001\"} 1",
            "wscast_disconnects_total{code=\"none\"} 1",
            "wscast_reloads_total{result=\"failed\"} 1",
            "wscast_reloads_total{result=\"ok\"} 0",
            "# TYPE wscast_connections gauge",
            "# TYPE wscast_messages_received counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        assert!(text.contains(&format!("wscast_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        assert!(text.ends_with("# EOF\n"));
    }
}
