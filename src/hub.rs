//! The one door between connections and delivery. A connection joins (and its membership
//! leaves when dropped); whatever delivers a message (a client, later the admin API or another
//! node) publishes through here; the drain closes everyone through here. Nothing else reaches
//! the registry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::Link;
use crate::ending::{Code, Ending};
use crate::fanout;
use crate::flusher::Flusher;
use crate::frame::Frames;
use crate::mailbox::Mailbox;
pub use crate::registry::ClientInfo;
use crate::registry::{Client, Registry};
use crate::settings::Settings;

/// Connections by key, and delivery to them.
#[derive(Debug)]
pub struct Hub {
    registry: Registry,
    /// Read for the gzip level of each message, so a reload applies to the next one.
    live: watch::Receiver<Arc<Settings>>,
    /// The other nodes, when there is a cluster.
    link: Option<Arc<Link>>,
    /// Claims of other nodes for keys whose local holder has no generation yet: checked when
    /// its generation arrives (a claim can overtake the reply to our own).
    pending: DashMap<Box<str>, (u64, Instant)>,
    /// The earliest token `exp` of any connection (Unix seconds), so the expiry sweep walks the
    /// registry only when something is due.
    next_expiry: AtomicU64,
    /// Writes what fan-outs queue for plain connections.
    flusher: Flusher,
}

/// Where a key is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node.
    Here(ClientInfo),
    /// On the live node with this name.
    Node(String),
    /// Nowhere (or on a node that is gone).
    Nowhere,
}

/// What a connection gets when it joins.
#[derive(Debug)]
pub struct Joined {
    /// Its place in the registry.
    pub member: Member,
    /// The messages (and control replies) to deliver to it, and how it is ended.
    pub mailbox: Arc<Mailbox>,
}

/// A connection's registration. It leaves on [`Member::leave`] or on drop, and removes only
/// itself: a successor with the same key is never touched.
#[derive(Debug)]
pub struct Member {
    // Owned, not borrowed: a connection's state owns everything it holds, so it can live in its
    // task without a future around it.
    hub: Arc<Hub>,
    key: Box<str>,
    id: u64,
    // Atomic, not a plain bool, so that leaving takes `&self`: the writer's leave callback and
    // the connection's log lines (which name the key) then share the member.
    left: AtomicBool,
}

impl Member {
    /// The key it is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Leaves the registry now (nothing more is queued for this connection); idempotent.
    pub fn leave(&self) {
        if !self.left.swap(true, Ordering::Relaxed) {
            let generation = self.hub.registry.unregister(&self.key, self.id);
            if let (Some(link), Some(generation @ 1..)) = (&self.hub.link, generation) {
                link.release(self.key.clone(), generation);
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Hub {
    /// An empty hub following the live settings.
    pub fn new(live: watch::Receiver<Arc<Settings>>) -> Self {
        Self {
            registry: Registry::default(),
            live,
            link: None,
            pending: DashMap::new(),
            next_expiry: u64::MAX.into(),
            flusher: Flusher::new(Default::default()),
        }
    }

    /// A hub whose messages also go to the other nodes of a cluster through `link`.
    pub fn clustered(live: watch::Receiver<Arc<Settings>>, link: Arc<Link>) -> Self {
        Self { link: Some(link), ..Self::new(live) }
    }

    /// Counts what the flusher writes in `metrics` (a hub without them counts in counters
    /// nobody reads).
    pub fn counting(self, metrics: &crate::metrics::Metrics) -> Self {
        Self { flusher: Flusher::new(fanout::Sent::of(metrics)), ..self }
    }

    /// The cluster link, if any.
    pub fn link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    /// Registers a connection under `key` with a queue of `queue_len` messages, whose
    /// broadcasts go straight to `socket` when it takes them; a connection already there is
    /// closed with 4000.
    pub fn join(
        self: &Arc<Self>,
        key: Box<str>,
        info: ClientInfo,
        queue_len: usize,
        socket: Option<crate::duplex::Socket>,
    ) -> Joined {
        let mailbox = Arc::new(Mailbox::new(queue_len, info.gzip, socket));
        let id = self.registry.next_id();
        let generation = Default::default();
        self.registry.register(key.clone(), Client { id, info, mailbox: mailbox.clone(), generation });
        // After the registration: a sweep that reset the minimum either sees this entry or this.
        if info.expires != 0 {
            self.next_expiry.fetch_min(u64::from(info.expires), Ordering::Relaxed);
        }
        if let Some(link) = &self.link {
            link.claim(key.clone(), id);
        }
        Joined { member: Member { hub: self.clone(), key, id, left: AtomicBool::new(false) }, mailbox }
    }

    /// A message accepted here: delivered to every local connection (sender included), then
    /// queued for the other nodes, in this order for every message of every sender; returns
    /// how many local connections took it.
    pub fn publish(&self, text: Utf8Bytes) -> usize {
        let taken = self.deliver_local(text.clone());
        if let Some(link) = &self.link {
            link.message(&text);
        }
        taken
    }

    /// A message accepted by another node: delivered to every local connection.
    pub fn deliver_remote(&self, text: Utf8Bytes) -> usize {
        self.deliver_local(text)
    }

    /// Delivers `text` to the connection holding `key`; false when none does (or it is gone).
    pub fn send_to(&self, key: &str, text: Utf8Bytes) -> bool {
        let frames = self.frames(text);
        self.registry.with(key, |client| fanout::to_single(client, &frames, &self.flusher)).unwrap_or(false)
    }

    /// Where `key` is connected, asking Redis when it is not here.
    pub async fn locate(&self, key: &str) -> Location {
        if let Some(info) = self.client(key) {
            return Location::Here(info);
        }
        match &self.link {
            Some(link) => match crate::cluster::broker::holder(link, key).await {
                Some(node) => Location::Node(node),
                None => Location::Nowhere,
            },
            None => Location::Nowhere,
        }
    }

    /// Sends `text` to `key` on the other nodes (the one holding it delivers it).
    pub fn send_elsewhere(&self, key: &str, text: &str) {
        if let Some(link) = &self.link {
            link.direct(key, text);
        }
    }

    /// Kicks `key` on the other nodes (the one holding it closes it).
    pub fn kick_elsewhere(&self, key: &str, code: Code, reason: &str) {
        if let Some(link) = &self.link {
            link.kick(key, code.as_u16(), reason);
        }
    }

    /// Redis gave connection `id` of `key` its generation: record it, and close the connection
    /// (4000) if another node's claim for the key with a higher one came first.
    pub fn claimed(&self, key: &str, id: u64, generation: u64) {
        // The pending entry's lock, held throughout, orders this against `claim_seen`.
        let entry = self.pending.entry(key.into());
        let seen = match &entry {
            Entry::Occupied(o) => o.get().0,
            Entry::Vacant(_) => 0,
        };
        self.registry.with(key, |client| {
            if client.id == id {
                client.generation.store(generation, Ordering::Relaxed);
                if seen > generation {
                    client.mailbox.control().end(Ending::close(Code::Replaced));
                }
            }
        });
        if let Entry::Occupied(o) = entry {
            o.remove();
        }
    }

    /// Another node claimed `key` with `generation`: the local holder closes (4000) if its
    /// generation is lower; if it has none yet, the claim is kept until it has.
    pub fn claim_seen(&self, key: &str, generation: u64) {
        let entry = self.pending.entry(key.into());
        let held = self.registry.with(key, |client| {
            let mine = client.generation.load(Ordering::Relaxed);
            if mine != 0 && mine < generation {
                client.mailbox.control().end(Ending::close(Code::Replaced));
            }
            mine
        });
        if held == Some(0) {
            match entry {
                Entry::Occupied(mut o) => {
                    let kept = o.get_mut();
                    *kept = (kept.0.max(generation), Instant::now());
                }
                Entry::Vacant(v) => {
                    v.insert((generation, Instant::now()));
                }
            }
        }
    }

    /// Forgets claims kept longer than `age` (their holder left before its generation came).
    pub fn forget_claims_older_than(&self, age: Duration) {
        self.pending.retain(|_, (_, at)| at.elapsed() <= age);
    }

    /// Every local key with its connection id and generation (0: none yet).
    pub fn generations(&self) -> Vec<(Box<str>, u64, u64)> {
        let mut all = Vec::with_capacity(self.registry.len());
        self.registry.for_each_keyed(|key, c| all.push((key.into(), c.id, c.generation.load(Ordering::Relaxed))));
        all
    }

    /// Closes the local holder of `key` with 4000 if it is connection `id` (a newer holder
    /// elsewhere was found by a repair).
    pub fn replaced(&self, key: &str, id: u64) {
        self.registry.with(key, |c| {
            if c.id == id {
                c.mailbox.control().end(Ending::close(Code::Replaced));
            }
        });
    }

    /// Waits until the outbox to the other nodes is empty, or `deadline`.
    pub async fn flush_cluster(&self, deadline: tokio::time::Instant) {
        let Some(link) = &self.link else { return };
        // Without Redis there is nothing to wait for: the outbox would only eat the clients' time.
        while !link.outbox.is_empty()
            && link.publishing.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What is known of the connection holding `key`.
    pub fn client(&self, key: &str) -> Option<ClientInfo> {
        self.registry.with(key, |client| client.info)
    }

    /// Closes the connection holding `key` with `code` and `reason`; false when none does.
    pub fn kick(&self, key: &str, code: Code, reason: &str) -> bool {
        self.registry
            .with(key, |client| client.mailbox.control().end(Ending::close_because(code, reason)))
            .unwrap_or(false)
    }

    /// Calls `f` with the key, the info and the queue depth (messages waiting) of every local
    /// connection. `f` must not block: a registry shard is read-locked meanwhile.
    pub fn for_each_client(&self, mut f: impl FnMut(&str, &ClientInfo, usize)) {
        self.registry.for_each_keyed(|key, c| f(key, &c.info, c.mailbox.len()));
    }

    /// The mailboxes (and so the end switches) of every registered connection, for a drain that
    /// closes them over time.
    pub fn mailboxes(&self) -> Vec<Arc<Mailbox>> {
        let mut mailboxes = Vec::with_capacity(self.registry.len());
        self.registry.for_each(|client| mailboxes.push(client.mailbox.clone()));
        mailboxes
    }

    /// Ends every registered connection with `ending` (the drain's 1001).
    pub fn close_all(&self, ending: &Ending) {
        self.registry.for_each(|client| {
            client.mailbox.control().end(ending.clone());
        });
    }

    /// Closes (4003) every connection whose token's `exp` is at or before `now` (Unix seconds);
    /// returns how many it closed. Costs one atomic load while nothing is due.
    pub fn expire(&self, now: u64) -> usize {
        if self.next_expiry.load(Ordering::Relaxed) > now {
            return 0;
        }
        // Reset before the walk: a connection joining meanwhile lowers it again.
        self.next_expiry.store(u64::MAX, Ordering::Relaxed);
        let (mut closed, mut next) = (0, u64::MAX);
        self.registry.for_each(|client| match u64::from(client.info.expires) {
            0 => {}
            exp if exp <= now => closed += usize::from(client.mailbox.control().end(Ending::close(Code::TokenExpired))),
            exp => next = next.min(exp),
        });
        self.next_expiry.fetch_min(next, Ordering::Relaxed);
        closed
    }

    /// The heartbeat of every registered connection at `now` ([`crate::mailbox::now_ms`]): pings the
    /// ones due, and ends (without a Close: the peer is gone) the ones silent for
    /// `idle_timeout`; returns how many it ended.
    pub fn heartbeat(&self, now: u64, ping_interval: Duration, idle_timeout: Duration) -> usize {
        let mut ended = 0;
        self.registry.for_each(|client| {
            if !client.mailbox.beat(now, ping_interval, idle_timeout) {
                ended += usize::from(client.mailbox.control().end(Ending::Dead("idle timeout")));
            }
        });
        ended
    }

    /// Wakes every registered connection to see that reading stopped (the drain), so each lets
    /// go of its reader guard at once, however idle.
    pub fn wake_all(&self) {
        self.registry.for_each(|client| client.mailbox.control().nudge());
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.registry.is_empty()
    }

    /// Registered connections that want gzip.
    pub fn gzip_len(&self) -> usize {
        self.registry.gzip_len()
    }

    fn deliver_local(&self, text: Utf8Bytes) -> usize {
        fanout::to_all(&self.registry, &self.frames(text), &self.flusher)
    }

    fn frames(&self, text: Utf8Bytes) -> Arc<Frames> {
        let level = self.live.borrow().gzip_level;
        Arc::new(Frames::new(text, level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn info(gzip: bool) -> ClientInfo {
        ClientInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            tls: false,
            gzip,
            connected_at: std::time::SystemTime::now(),
            expires: 0,
        }
    }

    fn hub() -> Arc<Hub> {
        let (_, live) = watch::channel(Arc::new(Settings::new(&Config::default(), None, Default::default())));
        Arc::new(Hub::new(live))
    }

    fn text(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(s)
    }

    #[test]
    fn expiry_closes_only_the_connections_whose_exp_has_come() {
        let hub = hub();
        let with_exp = |exp| ClientInfo { expires: exp, ..info(false) };
        let soon = hub.join("soon".into(), with_exp(100), 4, None);
        let later = hub.join("later".into(), with_exp(200), 4, None);
        let never = hub.join("never".into(), info(false), 4, None);
        assert_eq!(hub.expire(99), 0);
        assert_eq!(hub.expire(100), 1, "at exp, not after it");
        assert_eq!(soon.mailbox.control().ending().and_then(Ending::code), Some(Code::TokenExpired));
        assert_eq!(later.mailbox.control().ending(), None);
        assert_eq!(hub.next_expiry.load(Ordering::Relaxed), 200, "the next walk waits for the next exp");
        assert_eq!(hub.expire(150), 0);
        let sooner = hub.join("sooner".into(), with_exp(120), 4, None);
        assert_eq!(hub.expire(120), 1, "a join lowers the next walk's time");
        assert_eq!(sooner.mailbox.control().ending().and_then(Ending::code), Some(Code::TokenExpired));
        assert_eq!(hub.expire(1000), 1);
        assert_eq!(never.mailbox.control().ending(), None, "no token, no expiry");
        assert_eq!(hub.next_expiry.load(Ordering::Relaxed), u64::MAX);
    }

    #[test]
    fn the_heartbeat_pings_when_due_and_ends_the_silent_only() {
        let hub = hub();
        let (ping, idle) = (Duration::from_millis(100), Duration::from_millis(250));
        let quiet = hub.join("quiet".into(), info(false), 4, None);
        let chatty = hub.join("chatty".into(), info(false), 4, None);
        // Both joined at `start` or a few milliseconds before.
        let start = crate::mailbox::now_ms();
        assert_eq!(hub.heartbeat(start + 50, ping, idle), 0);
        assert!(quiet.mailbox.take_replies().is_empty(), "no ping before ping_interval");
        assert_eq!(hub.heartbeat(start + 100, ping, idle), 0);
        assert_eq!(quiet.mailbox.take_replies(), crate::frame::PING_FRAME, "pinged once due");
        assert_eq!(hub.heartbeat(start + 150, ping, idle), 0);
        assert!(quiet.mailbox.take_replies().is_empty(), "the next ping waits a whole interval");
        // A frame from the client moves its silence forward.
        chatty.mailbox.seen_at(start + 200);
        assert_eq!(hub.heartbeat(start + 250, ping, idle), 1);
        assert_eq!(quiet.mailbox.control().ending(), Some(&Ending::Dead("idle timeout")));
        assert_eq!(chatty.mailbox.control().ending(), None);
        assert_eq!(hub.heartbeat(start + 449, ping, idle), 0, "each ended once");
        assert_eq!(hub.heartbeat(start + 450, ping, idle), 1);
        assert_eq!(chatty.mailbox.control().ending(), Some(&Ending::Dead("idle timeout")));
    }

    #[test]
    fn a_member_leaves_on_drop_and_never_removes_its_successor() {
        let hub = hub();
        let first = hub.join("k".into(), info(false), 4, None);
        let second = hub.join("k".into(), info(true), 4, None);
        assert_eq!(first.mailbox.control().ending().and_then(Ending::code), Some(Code::Replaced));
        drop(first);
        assert_eq!(hub.len(), 1, "the replaced member's drop left the successor in place");
        drop(second);
        assert!(hub.is_empty());
    }

    #[test]
    fn publish_and_deliver_remote_reach_everyone_send_to_one() {
        let hub = hub();
        let a = hub.join("a".into(), info(false), 4, None);
        let b = hub.join("b".into(), info(true), 4, None);
        assert_eq!(hub.publish(text("local")), 2);
        assert_eq!(hub.deliver_remote(text("remote")), 2);
        assert!(hub.send_to("b", text("only b")));
        assert_eq!(hub.client("b").map(|c| c.gzip), Some(true));
        assert_eq!(hub.client("nobody"), None);
        assert!(!hub.send_to("nobody", text("lost")));
        let payloads = |m: &Mailbox| {
            let mut outbox = crate::frame::Outbox::new(false);
            m.take_broadcasts(&mut outbox);
            outbox.batch.iter().map(|f| f.payload().to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(payloads(&a.mailbox), [b"local".to_vec(), b"remote".to_vec()]);
        assert_eq!(payloads(&b.mailbox), [b"local".to_vec(), b"remote".to_vec(), b"only b".to_vec()]);
    }

    #[test]
    fn a_full_queue_is_closed_with_4001() {
        let hub = hub();
        let slow = hub.join("slow".into(), info(false), 1, None);
        assert_eq!(hub.publish(text("one")), 1);
        assert_eq!(hub.publish(text("two")), 0);
        assert_eq!(slow.mailbox.control().ending().and_then(Ending::code), Some(Code::TooSlow));
    }

    fn clustered() -> Arc<Hub> {
        let (_, live) = watch::channel(Arc::new(Settings::new(&Config::default(), None, Default::default())));
        let (link, _work) = Link::new("test", &crate::config::Cluster::default(), Default::default());
        Arc::new(Hub::clustered(live, Arc::new(link)))
    }

    fn id_of(hub: &Hub, key: &str) -> u64 {
        hub.generations().into_iter().find(|(k, _, _)| &**k == key).unwrap().1
    }

    #[test]
    fn the_highest_generation_wins_whatever_order_claims_and_replies_come_in() {
        let hub = clustered();
        // A remote claim overtakes the reply to ours: kept, and it wins when the reply comes.
        let a = hub.join("a".into(), info(false), 4, None);
        hub.claim_seen("a", 7);
        assert_eq!(a.mailbox.control().ending(), None);
        hub.claimed("a", id_of(&hub, "a"), 5);
        assert_eq!(a.mailbox.control().ending().and_then(Ending::code), Some(Code::Replaced));
        // A lower remote claim, before or after our reply, changes nothing.
        let b = hub.join("b".into(), info(false), 4, None);
        hub.claim_seen("b", 3);
        hub.claimed("b", id_of(&hub, "b"), 9);
        hub.claim_seen("b", 8);
        assert_eq!(b.mailbox.control().ending(), None);
        // A higher one after the reply closes at once.
        hub.claim_seen("b", 10);
        assert_eq!(b.mailbox.control().ending().and_then(Ending::code), Some(Code::Replaced));
        // A claim for a key nobody holds here is not kept.
        hub.claim_seen("nobody", 4);
        assert!(!hub.pending.contains_key("nobody"));
    }

    #[test]
    fn a_publish_is_queued_for_the_other_nodes_in_order() {
        let hub = clustered();
        let _a = hub.join("a".into(), info(false), 4, None);
        hub.publish(text("one"));
        hub.publish(text("two"));
        let link = hub.link().unwrap();
        let sent: Vec<_> =
            link.outbox.peek(10).iter().map(|b| crate::cluster::envelope::Envelope::decode(b).unwrap()).collect();
        let bodies: Vec<_> = sent.iter().map(|e| (e.seq, e.body.clone())).collect();
        use crate::cluster::envelope::Body::Message;
        assert_eq!(bodies, [(1, Message("one".into())), (2, Message("two".into()))]);
    }

    #[test]
    fn kick_and_close_all() {
        let hub = hub();
        let a = hub.join("a".into(), info(false), 4, None);
        let b = hub.join("b".into(), info(false), 4, None);
        assert!(hub.kick("a", Code::Kicked, "bye"));
        assert!(!hub.kick("nobody", Code::Kicked, "bye"));
        assert_eq!(a.mailbox.control().ending(), Some(&Ending::close_because(Code::Kicked, "bye")));
        hub.close_all(&Ending::close(Code::GoingAway));
        assert_eq!(b.mailbox.control().ending().and_then(Ending::code), Some(Code::GoingAway));
        assert_eq!(a.mailbox.control().ending().and_then(Ending::code), Some(Code::Kicked), "the first ending stays");
    }
}
