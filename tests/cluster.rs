//! Several nodes as one through a real redis-server: cross-node broadcast, takeover, the
//! cluster-wide admin API, and Redis faults.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use redis_server::Redis;
use wscast::state::Context;

const TOKEN: &str = "cluster-admin-token";

/// A node of a cluster, with its admin listener.
struct Node {
    d: TestDaemon,
    ctx: Arc<Context>,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn node(redis: &Redis, edit: impl FnOnce(&mut wscast::config::Config)) -> Node {
    node_at(&redis.url(), edit).await
}

async fn node_at(url: &str, edit: impl FnOnce(&mut wscast::config::Config)) -> Node {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = config();
    c.cluster.redis = url.to_string();
    c.cluster.name = "test".into();
    c.cluster.heartbeat = Duration::from_millis(200);
    c.admin.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.admin.token_file = token;
    edit(&mut c);
    let daemon = wscast::daemon::Daemon::bind(c, None, None).expect("binds");
    let (ctx, admin) = (daemon.context_for_tests(), daemon.admin_addrs()[0]);
    Node { d: run_bound(daemon).await, ctx, admin, _dir: dir }
}

impl Node {
    fn up(&self) -> bool {
        self.ctx.metrics.broker.up.get() == 1
    }

    /// Waits until this node's link to Redis works both ways and it sees `nodes` nodes.
    async fn ready(&self, nodes: usize) {
        let link = self.ctx.hub.link().unwrap().clone();
        let ctx = self.ctx.clone();
        within("the broker to come up", async move {
            while ctx.metrics.broker.up.get() != 1 || link.nodes.live().len() != nodes {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Waits until every local key has a generation from Redis.
    async fn claimed(&self) {
        let hub = self.ctx.hub.clone();
        within("claims", async move {
            while hub.generations().iter().any(|(_, _, g)| *g == 0) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = http(self.admin, &request).await;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status(&response), body)
    }

    fn name(&self) -> String {
        self.ctx.hub.link().unwrap().name.clone()
    }
}

async fn cluster(redis: &Redis, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(node(redis, |_| {}).await);
    }
    for node in &nodes {
        node.ready(n).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_to_every_client_in_sender_order() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3).await;
    // On every node: a sender (plain), a plain and a gzip reader.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        senders.push(join(&node.d, &format!("s{n}"), false).await);
        readers.push((join(&node.d, &format!("p{n}"), false).await, false));
        readers.push((join(&node.d, &format!("g{n}"), true).await, true));
    }
    const EACH: usize = 40;
    for i in 0..EACH {
        for (n, s) in senders.iter_mut().enumerate() {
            send(s, &format!("from {n} #{i} caf\u{e9}")).await;
        }
    }
    let expected = 3 * EACH;
    let check = |got: Vec<String>, who: &str| {
        assert_eq!(got.len(), expected, "{who}");
        let mut next: HashMap<char, usize> = HashMap::new();
        for m in &got {
            let sender = m.chars().nth(5).unwrap();
            let i: usize = m.split('#').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            let want = next.entry(sender).or_default();
            assert_eq!(i, *want, "{who}: per-sender order of sender {sender}");
            assert!(m.ends_with(" caf\u{e9}"), "{who}: byte for byte: {m:?}");
            *want += 1;
        }
    };
    for (r, (ws, gzip)) in readers.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..expected {
            got.push(recv_as(ws, *gzip).await);
        }
        check(got, &format!("reader {r} (gzip {gzip})"));
    }
    for (n, s) in senders.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..expected {
            got.push(recv_text(s).await);
        }
        check(got, &format!("sender {n}, its own messages included"));
    }
    for node in &nodes {
        assert_eq!(node.ctx.metrics.broker.gaps.get(), 0, "no gaps while Redis is up");
        // Every message of the two other nodes' senders went through the lag histogram.
        let text = node.ctx.metrics.render();
        let count = format!("wscast_broker_lag_seconds_count {}", 2 * EACH);
        assert!(text.lines().any(|l| l == count), "{count} in:\n{text}");
    }
    for node in nodes {
        node.d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_connected_on_another_node_replaces_the_first_with_4000() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut first = join(&nodes[0].d, "alice", false).await;
    nodes[0].claimed().await;
    let mut second = join(&nodes[1].d, "alice", true).await;
    assert_eq!(recv_close(&mut first).await, (4000, "replaced by a newer connection".into()));
    nodes[0].d.wait_for_clients(0).await;
    // The survivor gets what the other node's clients send.
    let mut bob = join(&nodes[0].d, "bob", false).await;
    nodes[0].claimed().await;
    send(&mut bob, "hi alice").await;
    assert_eq!(recv_as(&mut second, true).await, "hi alice");
    for node in nodes {
        node.d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_with_one_key_leave_exactly_the_higher_generation() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    for round in 0..100 {
        let key = format!("race{round}");
        let (mut a, mut b) = tokio::join!(connect(nodes[0].d.addr, &key, false), connect(nodes[1].d.addr, &key, false));
        // Whichever is closed first is the loser; it must be closed with 4000.
        let (loser, frame) = within("one of the two to be replaced", async {
            tokio::select! {
                f = a.next() => (0, f),
                f = b.next() => (1, f),
            }
        })
        .await;
        let code = match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => u16::from(c.code),
            other => panic!("round {round}: expected a close, got {other:?}"),
        };
        assert_eq!(code, 4000, "round {round}: the loser is replaced");
        let winner = 1 - loser;
        let generation =
            |n: usize| nodes[n].ctx.hub.generations().into_iter().find(|(k, _, _)| **k == *key).map(|(_, _, g)| g);
        within("the winner's generation", async {
            while generation(winner).unwrap_or(0) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // The survivor holds the generation Redis last gave the key: the highest.
        let entry = redis.cli(&["GET", &format!("wscast:{{test}}:key:{key}")]);
        let (entry_gen, entry_node) = entry.split_once(' ').unwrap();
        assert_eq!(
            u64::from_str_radix(entry_node, 16).unwrap(),
            nodes[winner].ctx.hub.link().unwrap().node,
            "round {round}"
        );
        assert_eq!(generation(winner), Some(entry_gen.parse().unwrap()), "round {round}");
        within("the loser gone", async {
            while generation(loser).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // And it stays: no late claim closes it.
        let survivor = if winner == 0 { &mut a } else { &mut b };
        assert!(tokio::time::timeout(Duration::from_millis(20), survivor.next()).await.is_err(), "round {round}");
        let _ = a.close(None).await;
        let _ = b.close(None).await;
    }
    for node in nodes {
        node.d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_acts_on_whichever_node_holds_the_key() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut far = join(&nodes[1].d, "far%20away", true).await;
    let mut near = join(&nodes[0].d, "near", false).await;
    for node in &nodes {
        node.claimed().await;
    }
    let a = &nodes[0];
    assert_eq!(a.api("POST", "/v1/publish", "to all nodes").await.0, 202);
    assert_eq!(recv_as(&mut far, true).await, "to all nodes");
    assert_eq!(recv_text(&mut near).await, "to all nodes");
    let (code, body) = a.api("POST", "/v1/clients/far%20away/send", "just you").await;
    assert_eq!(code, 202, "{body}");
    assert!(body.contains(&nodes[1].name()), "{body}");
    assert_eq!(recv_as(&mut far, true).await, "just you");
    let (code, body) = a.api("GET", "/v1/clients/far%20away", "").await;
    assert_eq!((code, body.contains(&format!(r#""node":"{}""#, nodes[1].name()))), (200, true), "{body}");
    assert_eq!(a.api("GET", "/v1/clients/nobody", "").await.0, 404);
    assert_eq!(a.api("POST", "/v1/clients/nobody/send", "lost").await.0, 404);
    let (code, body) = a.api("GET", "/v1/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> =
        stats["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(code, 200);
    assert_eq!(names.len(), 2, "{body}");
    assert!(names.contains(&nodes[1].name()) && names.contains(&a.name()), "{body}");
    let scrape = http(a.admin, "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    for line in ["wscast_cluster_nodes 2", "wscast_broker_up 1", "wscast_broker_outbox 0"] {
        assert!(scrape.lines().any(|l| l == line), "{line} in:\n{scrape}");
    }
    assert_eq!(a.api("DELETE", "/v1/clients/far%20away?code=4100&reason=banned", "").await.0, 202);
    assert_eq!(recv_close(&mut far).await, (4100, "banned".into()));
    nodes[1].d.wait_for_clients(0).await;
    let mut nodes = nodes;
    let gone = nodes.pop().unwrap();
    let gone_name = gone.name();
    gone.d.stop().await;
    // A node that stopped is gone from the stats within three heartbeats.
    within("the stopped node to disappear", async {
        loop {
            let (_, body) = nodes[0].api("GET", "/v1/stats", "").await;
            if !body.contains(&gone_name) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    nodes.pop().unwrap().d.stop().await;
}

/// Receives `n` texts, in order.
async fn texts(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(recv_text(ws).await);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_local_delivery_goes_on_and_the_outbox_drains_in_order_after() {
    let mut redis = Redis::start();
    let a = node(&redis, |c| c.cluster.outbox = 5).await;
    let b = node(&redis, |_| {}).await;
    a.ready(2).await;
    b.ready(2).await;
    let mut sender = join(&a.d, "sender", false).await;
    let mut remote = join(&b.d, "remote", false).await;
    a.claimed().await;
    send(&mut sender, "before").await;
    assert_eq!(recv_text(&mut remote).await, "before");
    assert_eq!(recv_text(&mut sender).await, "before");
    redis.kill();
    within("broker down", async {
        while a.up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // 8 messages into an outbox of 5: the 3 oldest are dropped, and counted.
    for i in 0..8 {
        send(&mut sender, &format!("during {i}")).await;
    }
    let local = texts(&mut sender, 8).await;
    assert_eq!(local, (0..8).map(|i| format!("during {i}")).collect::<Vec<_>>(), "local delivery went on");
    let readyz = http(a.admin, "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(readyz.starts_with("HTTP/1.1 200") && readyz.contains("Redis unreachable"), "{readyz}");
    redis.restart();
    a.ready(2).await;
    b.ready(2).await;
    let after = texts(&mut remote, 5).await;
    assert_eq!(after, (3..8).map(|i| format!("during {i}")).collect::<Vec<_>>(), "the outbox, in order");
    let dropped = a.ctx.metrics.render();
    assert!(dropped.contains(r#"wscast_broker_dropped_total{reason="outbox"} 3"#), "{dropped}");
    assert_eq!(b.ctx.metrics.broker.gaps.get(), 3, "the receiver counted the three it never got");
    assert!(a.ctx.metrics.broker.reconnects.get() >= 1);
    send(&mut sender, "after").await;
    assert_eq!(recv_text(&mut remote).await, "after");
    a.d.stop().await;
    b.d.stop().await;
}

/// Sends from `a` until `b`'s client gets one, proving the path works again.
async fn until_delivered(sender: &mut Ws, sender_echo: bool, receiver: &mut Ws, tag: &str) {
    let mut i = 0;
    within(tag, async {
        loop {
            let text = format!("{tag} {i}");
            send(sender, &text).await;
            if sender_echo {
                assert_eq!(recv_text(sender).await, text);
            }
            match tokio::time::timeout(Duration::from_millis(300), receiver.next()).await {
                Ok(Some(Ok(m))) if m.to_text().unwrap().starts_with(tag) => return,
                Ok(None) | Ok(Some(Err(_))) => panic!("{tag}: the receiver was cut off"),
                _ => i += 1,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_a_paused_and_a_stopped_redis_each_recover() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut sender = join(&nodes[0].d, "sender", false).await;
    let mut receiver = join(&nodes[1].d, "receiver", false).await;
    until_delivered(&mut sender, true, &mut receiver, "start").await;
    let reconnects = nodes[1].ctx.metrics.broker.reconnects.get();
    assert_ne!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "0", "subscriptions were killed");
    until_delivered(&mut sender, true, &mut receiver, "after-kill").await;
    assert!(nodes[1].ctx.metrics.broker.reconnects.get() > reconnects, "the subscription was made again");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]), "OK");
    until_delivered(&mut sender, true, &mut receiver, "after-pause").await;
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!nodes[0].up() && !nodes[1].up(), "a stopped Redis reads as down within 3 s");
    redis.signal("CONT");
    until_delivered(&mut sender, true, &mut receiver, "after-stop").await;
    for node in &nodes {
        node.ready(2).await;
    }
    for node in nodes {
        node.d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cutting_off_a_slow_subscriber_is_survived() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut sender = join(&nodes[0].d, "sender", false).await;
    let mut receiver = join(&nodes[1].d, "receiver", false).await;
    until_delivered(&mut sender, true, &mut receiver, "start").await;
    assert_eq!(redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1kb 512 1"]), "OK");
    // Messages larger than Redis's 16 KiB static reply buffer count against the limit at once:
    // Redis drops the subscribers. Keep sending until one of them has subscribed again.
    let big = "x".repeat(20_000);
    let before = nodes[1].ctx.metrics.broker.reconnects.get();
    let mut sent = 0;
    within("Redis to cut the subscriber off", async {
        while nodes[1].ctx.metrics.broker.reconnects.get() == before {
            send(&mut sender, &big).await;
            assert_eq!(recv_text(&mut sender).await, big);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(redis.cli(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 32mb 8mb 60"]), "OK");
    until_delivered(&mut sender, true, &mut receiver, "after-cutoff").await;
    assert!(sent > 0);
    let broker = &nodes[1].ctx.metrics.broker;
    assert!(broker.reconnects.get() >= 1, "Redis cut the subscriber off and it subscribed again");
    assert!(broker.gaps.get() > 0, "what was lost meanwhile is counted as gaps");
    for node in nodes {
        node.d.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_leaves_the_others_serving_and_its_keys_free() {
    let redis = Redis::start();
    let survivor = node(&redis, |_| {}).await;
    // The other node is the real binary, so that SIGKILL is real.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nmax_connections = 1000\n[log]\nlevel = \"warn\"\n\
         [cluster]\nredis = \"{}\"\nname = \"test\"\nheartbeat = \"200ms\"\n",
        redis.url()
    );
    std::fs::write(dir.path().join("node.toml"), toml).unwrap();
    let mut killed = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscast"))
        .arg("--config")
        .arg(dir.path().join("node.toml"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    survivor.ready(2).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut held = connect(addr, "wanderer", false).await;
    let mut here = join(&survivor.d, "here", false).await;
    survivor.claimed().await;
    send(&mut held, "from the doomed node").await;
    assert_eq!(recv_text(&mut here).await, "from the doomed node");
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    // Its client is cut (no close frame: the process is gone); its key connects here at once.
    let _ = within("the killed node's client", async { while let Some(Ok(_)) = held.next().await {} }).await;
    let mut again = join(&survivor.d, "wanderer", false).await;
    send(&mut again, "still here").await;
    assert_eq!(recv_text(&mut again).await, "still here");
    assert_eq!(recv_text(&mut here).await, "still here");
    // And it leaves the cluster within three heartbeats.
    let link = survivor.ctx.hub.link().unwrap().clone();
    within("the killed node to leave", async {
        while link.nodes.live().len() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    survivor.d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_is_not_fatal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = node_at(&format!("redis://127.0.0.1:{port}/"), |_| {}).await;
    let mut one = join(&a.d, "one", false).await;
    send(&mut one, "local only").await;
    assert_eq!(recv_text(&mut one).await, "local only");
    let readyz = http(a.admin, "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(readyz.starts_with("HTTP/1.1 200") && readyz.contains("Redis unreachable"), "{readyz}");
    let metrics = a.ctx.metrics.render();
    assert!(metrics.lines().any(|l| l == "wscast_broker_up 0"), "{metrics}");
    a.d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_across_nodes_with_a_drain_in_the_middle() {
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 2).await;
    let mut sender = join(&nodes[0].d, "sender", false).await;
    let mut receiver = join(&nodes[1].d, "receiver", false).await;
    for node in &nodes {
        node.claimed().await;
    }
    for i in 0..200 {
        send(&mut sender, &format!("m{i}")).await;
    }
    // The first copy proves the node has begun reading (else the drain could start before it
    // read anything, and nothing would be accepted); the rest are still in flight.
    let mut own = vec![recv_text(&mut sender).await];
    // The sender's node drains: what it accepted still reaches the other node.
    let draining = nodes.remove(0);
    let stop = tokio::spawn(draining.d.stop());
    while let Some(Ok(m)) = within("the sender's copies", sender.next()).await {
        if m.is_text() {
            own.push(m.into_text().unwrap().to_string());
        }
    }
    within("drain", stop).await.unwrap();
    let got = texts(&mut receiver, own.len()).await;
    assert_eq!(got, own, "every message the draining node accepted reached the other node, in order");
    assert!(!own.is_empty(), "some were accepted before the drain");
    nodes.pop().unwrap().d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_during_an_outage_wins_after_it_even_when_redis_restarts_empty() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut old = join(&nodes[0].d, "k", false).await;
    nodes[0].claimed().await;
    redis.kill();
    within("broker down", async {
        while nodes[1].up() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // While Redis is away, the key connects on the other node: both hold it for now.
    let mut new = join(&nodes[1].d, "k", false).await;
    assert!(nodes[0].ctx.hub.client("k").is_some());
    // Redis comes back empty (its generation counter too): the later connect still wins.
    redis.restart();
    assert_eq!(recv_close(&mut old).await.0, 4000, "the holder from before the outage is replaced");
    nodes[1].claimed().await;
    assert!(tokio::time::timeout(Duration::from_millis(500), new.next()).await.is_err(), "the newer one stays");
    let entry = redis.cli(&["GET", "wscast:{test}:key:k"]);
    assert!(entry.ends_with(&format!("{:x}", nodes[1].ctx.hub.link().unwrap().node)), "{entry}");
    for node in nodes {
        node.d.stop().await;
    }
}
