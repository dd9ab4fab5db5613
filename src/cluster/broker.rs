//! The tasks that talk to Redis: one command connection (publishes in outbox order, claims,
//! heartbeats, repairs), one subscription (bus and claims), one sequential dispatcher. Each
//! reconnects by itself with backoff and jitter, forever.
//!
//! The subscription's reader never waits on fan-out: it hands envelopes to a bounded dispatch
//! queue and drops (and counts) when that is full, so Redis never sees a slow subscriber because
//! of a slow client here. A subscription that is up on the TCP level but delivers nothing is
//! found by this node's own heartbeat not coming back, and restarted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use super::envelope::{now_us, Body, Envelope};
use super::{parse_claim, parse_entry, ClaimWork, Link, Names, NodeStats};
use crate::ending::Code;
use crate::state::Context;

/// How long a command or a connection attempt may take before Redis counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Envelopes received and not yet delivered; beyond it they are dropped and counted.
const DISPATCH_QUEUE: usize = 8192;
/// Envelopes published in one pipeline.
const BATCH: usize = 256;
/// How long a key's entry lives without a refresh.
const ENTRY_TTL: Duration = Duration::from_secs(3600);
/// How often every local key's entry is refreshed (and checked against newer holders).
const REFRESH: Duration = Duration::from_secs(900);

/// `INCR` of the one counter (lifted to the caller's floor first, in case Redis restarted
/// empty), `SET` of the key's entry, `PUBLISH` of the claim: atomically.
const CLAIM: &str = r"
local floor = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then redis.call('SET', KEYS[1], floor) end
local gen = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], gen .. ' ' .. ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[4], gen .. ' ' .. ARGV[2] .. ' ' .. ARGV[5])
return gen";

/// After an outage: keeps a holder's entry if it is still the latest (refreshing its TTL, or
/// writing it again and re-announcing the claim if Redis lost it); returns the newer
/// generation if another holder came since (the local one must go), else 0.
const REPAIR: &str = r"
local gen = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[2])
if v then
  local cur = tonumber(string.match(v, '^(%d+)'))
  if cur and cur > gen then return cur end
  if cur == gen then redis.call('EXPIRE', KEYS[2], ARGV[3]) return 0 end
end
if tonumber(redis.call('GET', KEYS[1]) or '0') < gen then redis.call('SET', KEYS[1], gen) end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[5])
return 0";

/// Deletes a key's entry if it still names this holder's generation.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then return redis.call('DEL', KEYS[1]) end
return 0";

/// What the three tasks share.
struct Shared {
    ctx: Arc<Context>,
    link: Arc<Link>,
    names: Names,
    client: Client,
    heartbeat: Duration,
    subscribed: AtomicBool,
    own_heartbeat: Mutex<Instant>,
    /// Set by the subscriber after each (re)subscribe: claims may have been missed.
    repair: Notify,
}

impl Shared {
    fn update_up(&self) {
        let fresh = self.own_heartbeat.lock().expect("heartbeat lock").elapsed() <= self.heartbeat * 3;
        let up = self.link.publishing.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed) && fresh;
        self.ctx.metrics.broker.up.set(i64::from(up));
    }

    fn stats(&self) -> NodeStats {
        let (hub, metrics) = (&self.ctx.hub, &self.ctx.metrics);
        NodeStats {
            node: self.link.name.clone(),
            clients: hub.len() as u64,
            gzip_clients: hub.gzip_len() as u64,
            connections_accepted: metrics.accepted.get(),
            messages_received: metrics.messages_received.get(),
            draining: self.ctx.shutdown.is_draining(),
            subscribed: self.subscribed.load(Ordering::Relaxed),
        }
    }
}

/// The running broker: its tasks stop when it is dropped (after the drain).
#[derive(Debug, Default)]
pub struct Broker {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the broker's tasks for `url` (already validated).
pub fn start(ctx: Arc<Context>, url: &str, heartbeat: Duration, work: mpsc::UnboundedReceiver<ClaimWork>) -> Broker {
    let link = ctx.hub.link().expect("a clustered hub").clone();
    let client = match Client::open(url) {
        Ok(c) => c,
        Err(e) => {
            // Validation parsed the same URL: this cannot happen, but must not be a panic.
            warn!("cluster.redis: {e}: running as a single node");
            return Broker::default();
        }
    };
    let shared = Arc::new(Shared {
        ctx,
        link: link.clone(),
        names: link.names.clone(),
        client,
        heartbeat,
        subscribed: AtomicBool::new(false),
        own_heartbeat: Mutex::new(Instant::now()),
        repair: Notify::new(),
    });
    let (dispatch_tx, dispatch_rx) = mpsc::channel(DISPATCH_QUEUE);
    let tasks = vec![
        tokio::spawn(commands(shared.clone(), work)),
        tokio::spawn(subscriber(shared.clone(), dispatch_tx)),
        tokio::spawn(dispatch(shared, dispatch_rx)),
    ];
    Broker { tasks }
}

/// The node holding `key` elsewhere, by its entry in Redis and its heartbeats.
pub async fn holder(link: &Link, key: &str) -> Option<String> {
    let mut conn = link.lookup_connection()?;
    let value: Option<String> =
        tokio::time::timeout(TIMEOUT, redis::cmd("GET").arg(link.names.entry(key)).query_async(&mut conn))
            .await
            .ok()?
            .ok()?;
    let (_, node) = parse_entry(&value?)?;
    (node != link.node).then(|| link.nodes.name_of(node)).flatten()
}

/// Waits out a failed attempt: 100 ms doubling to 5 s, each with up to half again of jitter.
async fn backoff(failures: &mut u32) {
    let base = Duration::from_millis(100) * 2u32.pow((*failures).min(6));
    let base = base.min(Duration::from_secs(5));
    *failures += 1;
    tokio::time::sleep(base + base.mul_f64(fastrand::f64() / 2.0)).await;
}

async fn connect(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
    shared.client.get_multiplexed_async_connection_with_config(&config).await
}

/// The command connection: publishes, claims, heartbeats, repairs, reconnecting forever.
async fn commands(shared: Arc<Shared>, mut work: mpsc::UnboundedReceiver<ClaimWork>) {
    let (mut failures, mut connected_before) = (0, false);
    loop {
        let mut conn = match connect(&shared).await {
            Ok(conn) => conn,
            Err(e) => {
                if failures == 0 {
                    warn!("cluster: cannot reach Redis ({e}); serving local clients, retrying");
                }
                // Claims made meanwhile are redone by the repair after reconnecting.
                while work.try_recv().is_ok() {}
                backoff(&mut failures).await;
                continue;
            }
        };
        if std::mem::replace(&mut connected_before, true) {
            shared.ctx.metrics.broker.reconnects.inc();
        }
        info!("cluster: connected to Redis");
        failures = 0;
        shared.link.set_lookup(Some(conn.clone()));
        shared.link.publishing.store(true, Ordering::Relaxed);
        shared.update_up();
        let result = serve_commands(&shared, &mut conn, &mut work).await;
        shared.link.publishing.store(false, Ordering::Relaxed);
        shared.link.set_lookup(None);
        shared.update_up();
        if let Err(e) = result {
            warn!("cluster: lost Redis ({e}); reconnecting");
        }
    }
}

/// One connection's life: returns on the first error.
async fn serve_commands(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    work: &mut mpsc::UnboundedReceiver<ClaimWork>,
) -> redis::RedisResult<()> {
    let mut heartbeat = tokio::time::interval(shared.heartbeat);
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.tick().await;
    // Whatever was claimed while there was no connection is redone now.
    repair(shared, conn).await?;
    // What waited in the outbox goes out once the other nodes are listening again (their
    // heartbeats say so), or after three heartbeats whatever they say.
    let (since, mut held) = (Instant::now(), true);
    let others: Vec<u64> = shared.link.nodes.known().into_iter().filter(|n| *n != shared.link.node).collect();
    let hold_until = tokio::time::Instant::now() + shared.heartbeat * 3;
    loop {
        if held {
            let listening =
                shared.subscribed.load(Ordering::Relaxed) && shared.link.nodes.subscribed_since(since, &others);
            held = !listening && tokio::time::Instant::now() < hold_until;
        }
        if !held {
            publish_outbox(shared, conn).await?;
        }
        tokio::select! {
            biased;
            _ = shared.link.outbox.ready.notified(), if !held => {}
            _ = tokio::time::sleep(Duration::from_millis(20)), if held => {}
            Some(first) = work.recv() => claims(shared, conn, first, work).await?,
            _ = heartbeat.tick() => publish_heartbeat(shared, conn).await?,
            _ = shared.repair.notified() => repair(shared, conn).await?,
            _ = refresh.tick() => repair(shared, conn).await?,
        }
    }
}

/// Publishes what the outbox holds, a few pipelines at a time, so heartbeats and claims are
/// not starved by a long backlog.
async fn publish_outbox(shared: &Shared, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let outbox = &shared.link.outbox;
    for _ in 0..8 {
        let batch = outbox.peek(BATCH);
        if batch.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        for envelope in &batch {
            pipe.cmd("PUBLISH").arg(&shared.names.bus).arg(envelope.as_ref()).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        outbox.done(&batch);
    }
    if !outbox.is_empty() {
        // More to do: come straight back after the other duties.
        outbox.ready.notify_one();
    }
    shared.ctx.metrics.broker.outbox.set(outbox.len() as i64);
    Ok(())
}

async fn publish_heartbeat(shared: &Shared, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let stats = serde_json::to_string(&shared.stats()).expect("stats serialize");
    let envelope = Envelope { origin: shared.link.node, seq: 0, sent_at_us: now_us(), body: Body::Heartbeat(stats) };
    redis::cmd("PUBLISH").arg(&shared.names.bus).arg(envelope.encode()).query_async::<()>(conn).await?;
    shared.update_up();
    Ok(())
}

/// Runs `first` and whatever else is waiting, in one pipeline.
async fn claims(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    first: ClaimWork,
    work: &mut mpsc::UnboundedReceiver<ClaimWork>,
) -> redis::RedisResult<()> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match work.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    let mut pipe = redis::pipe();
    let floor = shared.link.highest_generation();
    for w in &batch {
        match w {
            ClaimWork::Claim { key, .. } => script_cmd(&mut pipe, shared, CLAIM, key, floor),
            ClaimWork::Release { key, generation } => {
                pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(shared.names.entry(key)).arg(generation.to_string()).ignore();
            }
        }
    }
    let generations: Vec<u64> = pipe.query_async(conn).await?;
    let claimed = batch.iter().filter_map(|w| match w {
        ClaimWork::Claim { key, id } => Some((key, *id)),
        ClaimWork::Release { .. } => None,
    });
    for ((key, id), generation) in claimed.zip(generations) {
        shared.link.saw_generation(generation);
        shared.ctx.hub.claimed(key, id, generation);
    }
    Ok(())
}

/// CLAIM (with `number` = the floor) or REPAIR (with `number` = the holder's generation): the
/// same keys and arguments.
fn script_cmd(pipe: &mut redis::Pipeline, shared: &Shared, script: &str, key: &str, number: u64) {
    pipe.cmd("EVAL")
        .arg(script)
        .arg(2)
        .arg(&shared.names.counter)
        .arg(shared.names.entry(key))
        .arg(number)
        .arg(format!("{:x}", shared.link.node))
        .arg(ENTRY_TTL.as_secs())
        .arg(&shared.names.claims)
        .arg(key);
}

/// Claims every local key without a generation and checks every other against Redis: a newer
/// holder elsewhere closes the local one (4000); an entry Redis lost is written again.
async fn repair(shared: &Shared, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let all = shared.ctx.hub.generations();
    let (mut replaced, mut claimed) = (0, 0);
    for chunk in all.chunks(BATCH) {
        let floor = shared.link.highest_generation();
        let mut pipe = redis::pipe();
        for (key, _, generation) in chunk {
            match *generation {
                0 => script_cmd(&mut pipe, shared, CLAIM, key, floor),
                mine => script_cmd(&mut pipe, shared, REPAIR, key, mine),
            }
        }
        let answers: Vec<u64> = pipe.query_async(conn).await?;
        for ((key, id, generation), answer) in chunk.iter().zip(answers) {
            if *generation == 0 {
                shared.link.saw_generation(answer);
                shared.ctx.hub.claimed(key, *id, answer);
                claimed += 1;
            } else if answer > 0 {
                shared.link.saw_generation(answer);
                shared.ctx.hub.replaced(key, *id);
                replaced += 1;
            }
        }
    }
    shared.ctx.hub.forget_claims_older_than(REFRESH);
    debug!(keys = all.len(), claimed, replaced, "cluster: keys checked against Redis");
    Ok(())
}

/// The subscription, restarted whenever it fails or stops delivering.
async fn subscriber(shared: Arc<Shared>, dispatch: mpsc::Sender<Envelope>) {
    let (mut failures, mut subscribed_before) = (0, false);
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    loop {
        let mut pubsub = match subscribe(&shared).await {
            Ok(p) => p,
            Err(e) => {
                debug!("cluster: subscribing failed: {e}");
                backoff(&mut failures).await;
                continue;
            }
        };
        if std::mem::replace(&mut subscribed_before, true) {
            shared.ctx.metrics.broker.reconnects.inc();
        }
        failures = 0;
        *shared.own_heartbeat.lock().expect("heartbeat lock") = Instant::now();
        shared.subscribed.store(true, Ordering::Relaxed);
        shared.repair.notify_one();
        shared.update_up();
        let why = listen(&shared, &mut pubsub, &dispatch, &mut last_seq).await;
        shared.subscribed.store(false, Ordering::Relaxed);
        shared.update_up();
        warn!("cluster: subscription ended ({why}); subscribing again");
    }
}

async fn subscribe(shared: &Shared) -> redis::RedisResult<redis::aio::PubSub> {
    let attempt = async {
        let mut pubsub = shared.client.get_async_pubsub().await?;
        pubsub.subscribe(&[&shared.names.bus, &shared.names.claims]).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "subscribing timed out"))))
}

/// Reads the subscription until it ends or goes quiet; returns why it stopped.
async fn listen(
    shared: &Shared,
    pubsub: &mut redis::aio::PubSub,
    dispatch: &mpsc::Sender<Envelope>,
    last_seq: &mut HashMap<u64, u64>,
) -> &'static str {
    let mut stream = pubsub.on_message();
    let mut check = tokio::time::interval(shared.heartbeat.min(Duration::from_millis(250)));
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => received(shared, msg.get_channel_name(), msg.get_payload_bytes(), dispatch, last_seq),
                None => return "the connection closed",
            },
            _ = check.tick() => {
                shared.update_up();
                let quiet = shared.own_heartbeat.lock().expect("heartbeat lock").elapsed();
                if quiet > shared.heartbeat * 3 && shared.link.publishing.load(Ordering::Relaxed) {
                    return "this node's own heartbeat stopped coming back";
                }
            }
        }
    }
}

fn received(
    shared: &Shared,
    channel: &str,
    payload: &[u8],
    dispatch: &mpsc::Sender<Envelope>,
    last_seq: &mut HashMap<u64, u64>,
) {
    let broker = &shared.ctx.metrics.broker;
    if channel == shared.names.claims {
        match parse_claim(payload) {
            Some((generation, node, key)) => {
                shared.link.saw_generation(generation);
                if node != shared.link.node {
                    shared.ctx.hub.claim_seen(&key, generation);
                }
            }
            None => broker.dropped("undecodable", 1),
        }
        return;
    }
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            debug!("cluster: dropped an envelope: {e}");
            return broker.dropped("undecodable", 1);
        }
    };
    if let Body::Heartbeat(stats) = &envelope.body {
        if envelope.origin == shared.link.node {
            *shared.own_heartbeat.lock().expect("heartbeat lock") = Instant::now();
        }
        if let Ok(stats) = serde_json::from_str(stats) {
            shared.link.nodes.heard(envelope.origin, stats);
        }
        return;
    }
    if envelope.origin == shared.link.node {
        return;
    }
    let last = last_seq.entry(envelope.origin).or_insert(envelope.seq.saturating_sub(1));
    if envelope.seq <= *last {
        broker.duplicates.inc();
        return;
    }
    broker.gaps.inc_by(envelope.seq - *last - 1);
    *last = envelope.seq;
    broker.lag(now_us().saturating_sub(envelope.sent_at_us) as f64 / 1e6);
    if dispatch.try_send(envelope).is_err() {
        broker.dropped("dispatch", 1);
    }
}

/// Delivers what other nodes sent, one envelope after the other (their order is kept).
async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::Receiver<Envelope>) {
    while let Some(envelope) = rx.recv().await {
        let hub = &shared.ctx.hub;
        match envelope.body {
            Body::Message(text) => {
                hub.deliver_remote(text.into());
            }
            Body::Direct { key, text } => {
                hub.send_to(&key, text.into());
            }
            Body::Kick { key, code, reason } => {
                hub.kick(&key, Code::for_kick(code).unwrap_or(Code::Kicked), &reason);
            }
            Body::Heartbeat(_) => {}
        }
    }
}
