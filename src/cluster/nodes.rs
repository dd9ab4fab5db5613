//! The nodes of the cluster as their heartbeats describe them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a node says of itself in each heartbeat (and `/v1/stats` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Its name.
    pub node: String,
    /// Open client connections.
    pub clients: u64,
    /// Of which receive gzip.
    pub gzip_clients: u64,
    /// Upgrades since it started.
    pub connections_accepted: u64,
    /// Messages it accepted since it started.
    pub messages_received: u64,
    /// Whether it is draining.
    pub draining: bool,
    /// Whether its subscription to Redis is up (it receives what others publish).
    #[serde(default)]
    pub subscribed: bool,
}

/// How long a silent node is remembered (it is not live after three missed heartbeats).
const FORGET: Duration = Duration::from_secs(600);

/// Nodes heard from; a node missing three heartbeats is gone.
#[derive(Debug)]
pub struct Nodes {
    heartbeat: Duration,
    seen: Mutex<HashMap<u64, (NodeStats, Instant)>>,
}

impl Nodes {
    /// No node heard from yet; heartbeats every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        Self { heartbeat, seen: Mutex::default() }
    }

    /// A heartbeat of node `id` arrived.
    pub fn heard(&self, id: u64, stats: NodeStats) {
        let mut seen = self.seen.lock().expect("nodes lock");
        seen.insert(id, (stats, Instant::now()));
        // Forget the long dead here, so the map never outgrows the nodes of the last minutes;
        // the recently dead are kept: after an outage, they are the nodes to wait for.
        seen.retain(|_, (_, at)| at.elapsed() <= FORGET);
    }

    /// The live nodes, ordered by name.
    pub fn live(&self) -> Vec<(u64, NodeStats)> {
        let horizon = self.heartbeat * 3;
        let seen = self.seen.lock().expect("nodes lock");
        let mut live: Vec<_> =
            seen.iter().filter(|(_, (_, at))| at.elapsed() <= horizon).map(|(id, (s, _))| (*id, s.clone())).collect();
        live.sort_by(|a, b| a.1.node.cmp(&b.1.node));
        live
    }

    /// Every node remembered (live or recently silent).
    pub fn known(&self) -> Vec<u64> {
        self.seen.lock().expect("nodes lock").keys().copied().collect()
    }

    /// True when each of `nodes` said, since `since`, that it is subscribed: what is published
    /// now reaches all of them.
    pub fn subscribed_since(&self, since: Instant, nodes: &[u64]) -> bool {
        let seen = self.seen.lock().expect("nodes lock");
        nodes.iter().all(|id| seen.get(id).is_some_and(|(s, at)| *at >= since && s.subscribed))
    }

    /// The name of node `id` if it is alive.
    pub fn name_of(&self, id: u64) -> Option<String> {
        self.live().into_iter().find(|(n, _)| *n == id).map(|(_, s)| s.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str) -> NodeStats {
        NodeStats {
            node: name.into(),
            clients: 1,
            gzip_clients: 0,
            connections_accepted: 1,
            messages_received: 0,
            draining: false,
            subscribed: true,
        }
    }

    #[test]
    fn a_node_is_gone_after_three_missed_heartbeats() {
        let nodes = Nodes::new(Duration::from_millis(20));
        nodes.heard(1, stats("b"));
        nodes.heard(2, stats("a"));
        assert_eq!(nodes.live().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 1]);
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(80));
        nodes.heard(2, stats("a"));
        assert_eq!(nodes.live().len(), 1);
        assert_eq!((nodes.name_of(2), nodes.name_of(1)), (Some("a".into()), None));
        assert!(nodes.subscribed_since(since, &[2]));
        assert!(!nodes.subscribed_since(since, &[1, 2]), "1 was not heard from since");
        assert_eq!(nodes.known().len(), 2, "a silent node is remembered for a while");
    }
}
