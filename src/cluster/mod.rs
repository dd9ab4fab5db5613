//! Several nodes as one, through Redis pub/sub. This module owns the node's side of the
//! cluster: the [`Link`] the hub hands cross-node work to (the outbox, claims, the known nodes)
//! and, in [`broker`], the tasks that talk to Redis.
//!
//! In Redis (`{name}` is `cluster.name`, a hash tag so the scripts stay valid on Redis Cluster):
//! - channel `wscast:{name}:bus`: [`envelope`]s (messages, directs, kicks, heartbeats);
//! - channel `wscast:{name}:claims`: `"<generation> <node> <key>"`, one per connect;
//! - key `wscast:{name}:generation`: the one counter generations come from;
//! - keys `wscast:{name}:key:<key>`: `"<generation> <node>"` of the key's latest holder, with a
//!   TTL, refreshed while it is connected.

pub mod broker;
pub mod envelope;
mod nodes;
pub mod outbox;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

pub use nodes::{NodeStats, Nodes};

use envelope::{now_us, Body, Envelope};
use outbox::Outbox;

/// What the claimer is asked to do in Redis for a local connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimWork {
    /// A connection with `id` joined with `key`: get it a generation.
    Claim {
        /// The key.
        key: Box<str>,
        /// The connection.
        id: u64,
    },
    /// The holder of `key` with `generation` left: remove its entry if it is still the latest.
    Release {
        /// The key.
        key: Box<str>,
        /// Its generation.
        generation: u64,
    },
}

/// The hub's side of the cluster: cheap to call from the data path, never waits on Redis.
#[derive(Debug)]
pub struct Link {
    /// This node's id (random per start) as envelopes carry it.
    pub node: u64,
    /// This node's name in API answers: the host name and the id's low 32 bits.
    pub name: String,
    /// The cluster's Redis names.
    pub names: Names,
    /// Envelopes waiting to be published.
    pub outbox: Outbox,
    /// Nodes heard from, this one included.
    pub nodes: Nodes,
    claims: mpsc::UnboundedSender<ClaimWork>,
    /// `wscast_broker_dropped_total{reason="outbox"}`
    outbox_dropped: prometheus_client::metrics::counter::Counter,
    /// The highest generation seen anywhere: the floor of the next one, so a Redis that
    /// restarted empty cannot hand out a generation lower than a live holder's.
    highest: AtomicU64,
    /// True while the command connection to Redis works (what is queued goes out).
    pub publishing: AtomicBool,
    /// A connection for look-ups from the admin API, while there is one.
    lookup: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Link {
    /// A link for a node on `host` in the cluster `config` describes; the receiver is the
    /// broker's work list.
    pub fn new(
        host: &str,
        config: &crate::config::Cluster,
        outbox_dropped: prometheus_client::metrics::counter::Counter,
    ) -> (Self, mpsc::UnboundedReceiver<ClaimWork>) {
        let (claims, work) = mpsc::unbounded_channel();
        let node = fastrand::u64(1..);
        let (outbox, heartbeat) = (config.outbox, config.heartbeat);
        let link = Self {
            node,
            name: format!("{host}-{:08x}", node as u32),
            names: Names::new(&config.name),
            outbox: Outbox::new(outbox),
            nodes: Nodes::new(heartbeat),
            claims,
            outbox_dropped,
            highest: AtomicU64::new(0),
            publishing: AtomicBool::new(false),
            lookup: Mutex::new(None),
        };
        (link, work)
    }

    /// Queues a broadcast for the other nodes; true when the outbox had to drop its oldest.
    pub fn message(&self, text: &str) -> bool {
        self.send(Body::Message(text.to_string()))
    }

    /// Queues a text for `key` on whichever node holds it.
    pub fn direct(&self, key: &str, text: &str) -> bool {
        self.send(Body::Direct { key: key.into(), text: text.into() })
    }

    /// Queues a kick of `key` on whichever node holds it.
    pub fn kick(&self, key: &str, code: u16, reason: &str) -> bool {
        self.send(Body::Kick { key: key.into(), code, reason: reason.into() })
    }

    fn send(&self, body: Body) -> bool {
        let node = self.node;
        let dropped = self.outbox.push(|seq| Envelope { origin: node, seq, sent_at_us: now_us(), body }.encode());
        if dropped {
            self.outbox_dropped.inc();
        }
        dropped
    }

    /// Asks for a generation for a connection that just joined.
    pub fn claim(&self, key: Box<str>, id: u64) {
        let _ = self.claims.send(ClaimWork::Claim { key, id });
    }

    /// Says a holder with a known generation left.
    pub fn release(&self, key: Box<str>, generation: u64) {
        let _ = self.claims.send(ClaimWork::Release { key, generation });
    }

    /// Notes a generation seen; returns the highest so far.
    pub fn saw_generation(&self, generation: u64) -> u64 {
        self.highest.fetch_max(generation, Ordering::Relaxed).max(generation)
    }

    /// The highest generation seen so far.
    pub fn highest_generation(&self) -> u64 {
        self.highest.load(Ordering::Relaxed)
    }

    /// The connection the admin API looks keys up with (None while Redis is unreachable).
    pub fn lookup_connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.lookup.lock().expect("lookup lock").clone()
    }

    pub(crate) fn set_lookup(&self, conn: Option<redis::aio::MultiplexedConnection>) {
        *self.lookup.lock().expect("lookup lock") = conn;
    }
}

/// The Redis names of one cluster.
#[derive(Debug, Clone)]
pub struct Names {
    /// The bus channel.
    pub bus: String,
    /// The claims channel.
    pub claims: String,
    /// The generation counter.
    pub counter: String,
    prefix: String,
}

impl Names {
    /// The names for `cluster.name`.
    pub fn new(name: &str) -> Self {
        let base = format!("wscast:{{{name}}}");
        Self {
            bus: format!("{base}:bus"),
            claims: format!("{base}:claims"),
            counter: format!("{base}:generation"),
            prefix: format!("{base}:key:"),
        }
    }

    /// The entry of `key`'s latest holder.
    pub fn entry(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Reads a claim published on the claims channel: (generation, node, key).
pub fn parse_claim(payload: &[u8]) -> Option<(u64, u64, String)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (generation, rest) = text.split_once(' ')?;
    let (node, key) = rest.split_once(' ')?;
    Some((generation.parse().ok()?, u64::from_str_radix(node, 16).ok()?, key.to_string()))
}

/// Reads a key entry: (generation, node).
pub fn parse_entry(value: &str) -> Option<(u64, u64)> {
    let (generation, node) = value.split_once(' ')?;
    Some((generation.parse().ok()?, u64::from_str_radix(node, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_entries_parse_keys_with_spaces() {
        assert_eq!(parse_claim(b"17 ff a key/with spaces"), Some((17, 255, "a key/with spaces".into())));
        assert_eq!(parse_claim(b"x ff k"), None);
        assert_eq!(parse_entry("9 1a"), Some((9, 26)));
        assert_eq!(Names::new("prod").entry("k"), "wscast:{prod}:key:k");
    }

    #[test]
    fn the_outbox_numbers_envelopes_in_queue_order() {
        let (link, _work) = Link::new("n", &crate::config::Cluster::default(), Default::default());
        link.message("one");
        link.kick("k", 4002, "bye");
        let sent: Vec<Envelope> = link.outbox.peek(10).iter().map(|b| Envelope::decode(b).unwrap()).collect();
        assert_eq!(sent.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(sent[0].body, Body::Message("one".into()));
        assert!(sent.iter().all(|e| e.origin == link.node));
    }
}
