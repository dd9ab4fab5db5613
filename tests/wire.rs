//! The wire contract against a real daemon on a loopback port: broadcast, gzip, ordering,
//! replacement, rejections, limits, heartbeats, TLS.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use wscast::shutdown::DrainReport;
use wscast::signals::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_client_in_its_encoding_sender_included() {
    let d = start(config()).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let gz = i % 2 == 0;
        clients.push((join(&d, &format!("c{i}"), gz).await, gz));
    }
    let text = format!("h\u{e9}llo \u{1F600} {}", "payload ".repeat(50));
    send(&mut clients[3].0, &text).await;
    for (ws, gz) in &mut clients {
        assert_eq!(recv_as(ws, *gz).await, text, "byte for byte after gunzip");
    }
    assert_eq!(d.hub.gzip_len(), 10);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_sender_order_is_kept_with_concurrent_senders() {
    let d = start(config()).await;
    let mut rx_plain = join(&d, "rx-plain", false).await;
    let mut rx_gzip = join(&d, "rx-gzip", true).await;
    let mut senders = Vec::new();
    for s in 0..3 {
        senders.push(join(&d, &format!("s{s}"), false).await);
    }
    const N: usize = 200;
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            tokio::spawn(async move {
                for i in 0..N {
                    send(&mut ws, &format!("{s}:{i}")).await;
                }
                ws
            })
        })
        .collect();
    for (ws, gz) in [(&mut rx_plain, false), (&mut rx_gzip, true)] {
        let mut next = [0usize; 3];
        for _ in 0..3 * N {
            let m = recv_as(ws, gz).await;
            let (s, i) = m.split_once(':').unwrap();
            let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[s], "sender {s} out of order");
            next[s] += 1;
        }
        assert_eq!(next, [N; 3]);
    }
    for t in tasks {
        within("sender", t).await.unwrap();
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_closes_old_with_4000_and_keeps_the_new_registered() {
    let d = start(config()).await;
    let mut old = join(&d, "same", false).await;
    let mut new = connect(d.addr, "same", true).await;
    assert_eq!(recv_close(&mut old).await, (4000, "replaced by a newer connection".into()));
    // The old connection's late close must not unregister its successor.
    let _ = old.close(None).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.hub.len(), 1);
    let mut other = join(&d, "other", false).await;
    send(&mut other, "after replacement").await;
    assert_eq!(recv_as(&mut new, true).await, "after replacement");
    assert_eq!(recv_as(&mut other, false).await, "after replacement");
    d.stop().await;
}

async fn status_of(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let response = http(addr, request).await;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.trim_end().to_string()).unwrap_or_default();
    assert!(!body.is_empty() && !body.contains('\n'), "one-line reason: {response:?}");
    (status, body)
}

macro_rules! rejection {
    ($name:ident, $target:expr, $extra:expr, $status:expr, $needle:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let mut c = config();
            c.server.allowed_origins = vec!["https://app.example".into()];
            let d = start(c).await;
            let (status, body) = status_of(d.addr, &upgrade_request(&$target, $extra)).await;
            assert_eq!(status, $status, "{body}");
            assert!(body.contains($needle), "{body:?} lacks {:?}", $needle);
            assert_eq!(d.hub.len(), 0);
            d.stop().await;
        }
    };
}

rejection!(rejects_missing_key, "/?support_gzip=1", "", 400, "specialKey is required");
rejection!(rejects_empty_key, "/?specialKey=", "", 400, "must not be empty");
rejection!(rejects_long_key, format!("/?specialKey={}", "k".repeat(257)), "", 400, "at most 256");
rejection!(rejects_bad_support_gzip, "/?specialKey=a&support_gzip=yes", "", 400, "support_gzip must be 1 or 0");
rejection!(rejects_bad_percent_escape, "/?specialKey=%zz", "", 400, "percent-escape");
rejection!(rejects_wrong_path, "/chat?specialKey=a", "", 404, "ws://localhost/?specialKey=");
rejection!(rejects_bad_origin, "/?specialKey=a", "Origin: https://evil.example\r\n", 403, "not allowed");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_gets_426_with_how_to_connect() {
    let d = start(config()).await;
    let (status, body) = status_of(d.addr, "GET /?specialKey=a HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(
        (status, body.as_str()),
        (426, "this is a WebSocket endpoint: connect with ws://localhost/?specialKey=YOUR_KEY")
    );
    let (status, _) = status_of(d.addr, "NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(status, 400);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origin_and_no_origin_upgrade() {
    let mut c = config();
    c.server.allowed_origins = vec!["https://app.example".into()];
    let d = start(c).await;
    let response = http_head(d.addr, &upgrade_request("/?specialKey=a", "Origin: https://app.example\r\n")).await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let mut ws = connect(d.addr, "no-origin", false).await;
    send(&mut ws, "served").await;
    assert_eq!(recv_text(&mut ws).await, "served");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_closed_with_1009_and_others_unaffected() {
    let d = start(config()).await; // max_message_size 64 KiB
    let mut big = join(&d, "big", false).await;
    let mut fine = join(&d, "fine", false).await;
    send(&mut big, &"x".repeat(100 * 1024)).await;
    assert_eq!(recv_close(&mut big).await.0, 1009);
    send(&mut fine, "still here").await;
    assert_eq!(recv_text(&mut fine).await, "still here");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_summing_past_the_limit_are_closed_with_1009() {
    let d = start(config()).await;
    let mut ws = join(&d, "frag", false).await;
    let part = vec![b'y'; 40 * 1024];
    ws.send(Message::Frame(Frame::message(part.clone(), OpCode::Data(Data::Text), false))).await.unwrap();
    ws.send(Message::Frame(Frame::message(part, OpCode::Data(Data::Continue), true))).await.unwrap();
    assert_eq!(recv_close(&mut ws).await.0, 1009);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_is_closed_with_1007() {
    let d = start(config()).await;
    let mut ws = join(&d, "bad-utf8", false).await;
    let frame = Frame::message(vec![b'a', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(recv_close(&mut ws).await.0, 1007);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_binary_in_is_broadcast_as_text() {
    let d = start(config()).await;
    let mut sender = join(&d, "gz-sender", true).await;
    let mut plain = join(&d, "plain", false).await;
    let text = "compressed by the client \u{2713}";
    sender.send(Message::binary(gzip(text.as_bytes()))).await.unwrap();
    assert_eq!(recv_as(&mut plain, false).await, text);
    assert_eq!(recv_as(&mut sender, true).await, text);
    // Binary that is not gzip is refused with 1007.
    sender.send(Message::binary(b"not gzip".to_vec())).await.unwrap();
    assert_eq!(recv_close(&mut sender).await.0, 1007);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_cut_at_the_cap_and_the_daemon_keeps_serving() {
    let d = start(config()).await;
    let mut bomber = join(&d, "bomber", false).await;
    let mut fine = join(&d, "fine", false).await;
    let bomb = gzip(&vec![b'a'; 64 << 20]);
    assert!(bomb.len() < 64 * 1024, "fits in one allowed message: {}", bomb.len());
    bomber.send(Message::binary(bomb)).await.unwrap();
    let (code, reason) = recv_close(&mut bomber).await;
    assert_eq!(code, 1009, "{reason}");
    send(&mut fine, "after the bomb").await;
    assert_eq!(recv_text(&mut fine).await, "after the bomb");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_cut_off_with_4001_and_others_keep_receiving() {
    let mut c = config();
    c.websocket.send_queue = 8;
    c.websocket.max_message_size = bytesize::ByteSize::kib(64);
    let d = start(c).await;
    let mut slow = join(&d, "slow", false).await;
    let mut sender = join(&d, "sender", false).await;
    let mut reader = join(&d, "reader", false).await;
    let payload = "z".repeat(60 * 1024);
    // Enough to fill the loopback socket buffers several times over, then the queue.
    const N: usize = 400;
    let reading = tokio::spawn(async move {
        for i in 0..N {
            let m = recv_text(&mut reader).await;
            assert_eq!(m.len(), payload.len() + i.to_string().len(), "message {i}");
        }
        reader
    });
    let payload = "z".repeat(60 * 1024);
    let mut sender_count = 0;
    for i in 0..N {
        send(&mut sender, &format!("{i}{payload}")).await;
        // The sender receives its own messages; keep reading them so it is not slow itself.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(1), sender.next()).await {
            sender_count += 1;
        }
    }
    let _reader = within("the reading client got all", reading).await.unwrap();
    while sender_count < N {
        recv_text(&mut sender).await;
        sender_count += 1;
    }
    // The slow client is no longer registered; when it finally reads, it finds 4001 at the end.
    d.wait_for_clients(2).await;
    let (code, reason) = recv_close(&mut slow).await;
    assert_eq!((code, reason.as_str()), (4001, "too slow: send queue overflow"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_is_dropped_after_idle_timeout() {
    let mut c = config();
    c.websocket.ping_interval = Duration::from_millis(200);
    c.websocket.idle_timeout = Duration::from_millis(800);
    let d = start(c).await;
    // A raw socket that upgrades and then never answers pings: a dead peer.
    let mut tcp = TcpStream::connect(d.addr).await.unwrap();
    tcp.write_all(upgrade_request("/?specialKey=dead", "").as_bytes()).await.unwrap();
    d.wait_for_clients(1).await;
    // A live client beside it answers pings (tungstenite does) and stays.
    let mut live = join(&d, "live", false).await;
    let live_task = tokio::spawn(async move {
        let m = recv_text(&mut live).await;
        (m, live)
    });
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    within("dead peer dropped", async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(700), "dropped too early: {:?}", started.elapsed());
    assert!(seen.windows(2).any(|w| w == [0x89, 0x00]), "the daemon pinged the dead peer");
    d.wait_for_clients(1).await;
    let mut probe = join(&d, "probe", false).await;
    send(&mut probe, "live one still served").await;
    let (m, _live) = within("live", live_task).await.unwrap();
    assert_eq!(m, "live one still served");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_certificate_made_in_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let c = tls_config(&pki);
    let d = start(c).await;
    let (mut a, shown) = connect_tls(d.addr, &pki.ca, "tls-a", true).await;
    assert_eq!(shown, pki.leaf);
    let (_, session) = a.get_ref().get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(matches!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3)));
    let (mut b, _) = connect_tls(d.addr, &pki.ca, "tls-b", false).await;
    d.wait_for_clients(2).await;
    send(&mut b, "over tls").await;
    assert_eq!(recv_as(&mut a, true).await, "over tls");
    assert_eq!(recv_as(&mut b, false).await, "over tls");
    // Plain HTTP on the TLS port is not answered as HTTP and does not hang.
    let mut tcp = TcpStream::connect(d.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = within("plaintext on tls port closed", tcp.read_to_end(&mut sink)).await;
    d.stop().await;
}

/// The TLS write path: broadcasts of every size are encrypted by whoever writes them (a
/// fan-out's direct write, or the connection's writer once the socket is full) and reach TLS 1.2
/// and 1.3 clients whole and in order, while a TLS client that never reads is cut off with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_delivers_every_size_in_order_and_cuts_a_tls_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let mut c = tls_config(&pki);
    c.websocket.send_queue = 8;
    c.websocket.max_message_size = bytesize::ByteSize::kib(64);
    let d = start(c).await;
    let (mut slow, _) = connect_tls(d.addr, &pki.ca, "slow", false).await;
    let (mut sender, _) = connect_tls(d.addr, &pki.ca, "sender", false).await;
    let (mut tls12, _) = connect_tls_with(d.addr, &pki.ca, "tls12", true, &[&rustls::version::TLS12]).await;
    let (_, session) = tls12.get_ref().get_ref();
    assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    d.wait_for_clients(3).await;
    // Sizes from one byte to 60 KiB: records cut inside frames and frames inside records.
    const N: usize = 300;
    let message = |i: usize| format!("{i}:{}", "z".repeat((i * 7919) % (60 * 1024)));
    let reading = tokio::spawn(async move {
        for i in 0..N {
            assert_eq!(recv_as(&mut tls12, true).await, message(i), "message {i} over TLS 1.2");
        }
        tls12
    });
    let mut own = 0;
    for i in 0..N {
        send(&mut sender, &message(i)).await;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1), sender.next()).await {
            assert_eq!(m.into_text().unwrap().as_str(), message(own), "the sender's own copy {own}");
            own += 1;
        }
    }
    while own < N {
        assert_eq!(recv_text(&mut sender).await, message(own), "the sender's own copy {own}");
        own += 1;
    }
    let _tls12 = within("the TLS 1.2 client got all", reading).await.unwrap();
    d.wait_for_clients(2).await;
    let (code, reason) = recv_close(&mut slow).await;
    assert_eq!((code, reason.as_str()), (4001, "too slow: send queue overflow"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_ipv4_and_ipv6_at_once() {
    let mut c = config();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let daemon = wscast::daemon::Daemon::bind(c, None, None).expect("binds both");
    let addrs = daemon.local_addrs().to_vec();
    let (events, rx) = tokio::sync::mpsc::channel(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let task = tokio::spawn(daemon.run(Box::pin(stream)));
    let mut v4 = connect(addrs[0], "v4", false).await;
    let mut v6 = connect(addrs[1], "v6", true).await;
    assert!(addrs[1].is_ipv6());
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&mut v6, "both families").await;
    assert_eq!(recv_as(&mut v4, false).await, "both families");
    assert_eq!(recv_as(&mut v6, true).await, "both families");
    events.send(wscast::signals::Event::Terminate).await.unwrap();
    within("stop", task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_at_the_handshake_timeout() {
    let mut c = config();
    c.server.handshake_timeout = Duration::from_millis(500);
    let d = start(c).await;
    let mut fine = join(&d, "fine", false).await;
    let started = std::time::Instant::now();
    // One says nothing, one sends half a request head: both are closed at the deadline.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(b"GET /?specialKey=slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        let _ = within("handshake deadline", s.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "no answer, just a close");
    }
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    send(&mut fine, "unaffected").await;
    assert_eq!(recv_text(&mut fine).await, "unaffected");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_enforced_by_a_permit_before_accept() {
    let mut c = config();
    c.server.max_connections = 2;
    let d = start(c).await;
    let a = join(&d, "a", false).await;
    let _b = join(&d, "b", false).await;
    // The third waits in the kernel's accept queue: its upgrade does not complete.
    let third = tokio::spawn(connect(d.addr, "c", false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served past max_connections");
    assert_eq!(d.hub.len(), 2);
    drop(a);
    let _c = within("third served once a slot frees", third).await.unwrap();
    d.wait_for_clients(2).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_queued_messages_then_1001() {
    let d = start(config()).await;
    let mut a = join(&d, "a", true).await;
    let mut b = join(&d, "b", false).await;
    for i in 0..50 {
        send(&mut a, &format!("m{i}")).await;
    }
    // Wait until the daemon has read them all (b's queue holds or has delivered them).
    for i in 0..50 {
        assert_eq!(recv_as(&mut a, true).await, format!("m{i}"));
    }
    let report = tokio::spawn(d.stop());
    for i in 0..50 {
        assert_eq!(recv_as(&mut b, false).await, format!("m{i}"));
    }
    assert_eq!(recv_close(&mut b).await, (1001, "server shutting down".into()));
    assert_eq!(recv_close(&mut a).await.0, 1001);
    let report = within("drain", report).await.unwrap();
    assert_eq!((report.drained, report.cut_off), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_answers_503_with_retry_after_before_any_upgrade() {
    let mut c = config();
    c.server.max_connections_per_ip = 2;
    let d = start(c).await;
    let _a = join(&d, "a", false).await;
    let mut b = join(&d, "b", false).await;
    let response = http(d.addr, &upgrade_request("/?specialKey=c", "")).await;
    assert!(response.starts_with("HTTP/1.1 503 Service Unavailable"), "{response}");
    assert!(response.contains("Retry-After: 10\r\n") && response.contains("too many connections from 127.0.0.1"));
    assert_eq!(d.hub.len(), 2);
    // A freed slot admits again.
    let _ = b.close(None).await;
    drop(b);
    d.wait_for_clients(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _c = join(&d, "c", false).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_are_exempt_from_the_per_ip_limit() {
    let mut c = config();
    c.server.max_connections_per_ip = 1;
    c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let d = start(c).await;
    let _a = join(&d, "a", false).await;
    let _b = join(&d, "b", false).await;
    let _c = join(&d, "c", false).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_rate_limit_paces_a_storm_with_jittered_retry_after() {
    let mut c = config();
    c.server.max_handshakes_per_second = 5;
    let d = start(c).await;
    // Twenty addresses, one handshake each: the daemon-wide budget is what limits them.
    let storm: Vec<_> = (0..20u8)
        .map(|i| {
            let request = upgrade_request(&format!("/?specialKey=s{i}"), "");
            let addr = d.addr;
            tokio::spawn(async move { head_over(tcp_from(addr, [127, 0, 0, 10 + i].into()).await, &request).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for t in storm {
        let head = within("storm answer", t).await.unwrap();
        if head.starts_with("HTTP/1.1 101") {
            admitted += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            let retry: u64 = head.split("Retry-After: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
            assert!((1..=5).contains(&retry), "{retry}");
            refused += 1;
        }
    }
    assert!((5..=7).contains(&admitted), "admitted {admitted}, refused {refused}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_limit_closes_the_flooder_with_1008() {
    let mut c = config();
    c.websocket.max_messages_per_second = 10;
    c.websocket.message_burst = 10;
    let d = start(c).await;
    let mut flooder = join(&d, "flooder", false).await;
    let mut calm = join(&d, "calm", false).await;
    for i in 0..30 {
        let _ = flooder.send(Message::text(format!("flood {i}"))).await;
    }
    let (code, reason) = recv_close(&mut flooder).await;
    assert_eq!((code, reason.as_str()), (1008, "message rate limit exceeded"));
    // The burst got through, and the calm client is still served.
    assert_eq!(recv_text(&mut calm).await, "flood 0");
    send(&mut calm, "still calm").await;
    loop {
        if recv_text(&mut calm).await == "still calm" {
            break;
        }
    }
    d.stop().await;
}

/// A config file for reload tests, and the config it holds with `extra` appended.
fn config_file(dir: &std::path::Path, extra: &str) -> (std::path::PathBuf, wscast::config::Config) {
    let path = dir.join("wscast.toml");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhandshake_timeout = \"2s\"\n{extra}\n[shutdown]\ndrain_timeout = \"5s\"\n"
    );
    std::fs::write(&path, toml).unwrap();
    let config = wscast::config::load(Some(&path)).unwrap();
    (path, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_exact_across_listeners() {
    let mut c = config();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    c.server.max_connections = 3;
    let d = start(c).await;
    // No place is held by an idle accept loop: three IPv4 clients fill the limit.
    let first = join(&d, "v4-1", false).await;
    let _second = join(&d, "v4-2", false).await;
    let _third = join(&d, "v4-3", false).await;
    let v6 = tokio::spawn(connect(d.addrs[1], "v6", false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!v6.is_finished(), "a fourth connection was served past max_connections = 3");
    drop(first);
    let _v6 = within("the fourth once a place frees", v6).await.unwrap();
    d.wait_for_clients(3).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_connection_limit_applies_at_once_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (path, c) = config_file(dir.path(), "max_connections = 10");
    let d = start_at(c, Some(path)).await;
    let mut open = Vec::new();
    for i in 0..8 {
        open.push(join(&d, &format!("c{i}"), false).await);
    }
    config_file(dir.path(), "max_connections = 5");
    d.reload().await;
    let ninth = tokio::spawn(connect(d.addr, "ninth", false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ninth.is_finished(), "served with 8 open and max_connections lowered to 5");
    // Down to 5 open: still at the limit.
    open.truncate(5);
    d.wait_for_clients(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ninth.is_finished(), "served with 5 open and max_connections = 5");
    open.pop();
    let _ninth = within("served below the limit", ninth).await.unwrap();
    d.wait_for_clients(5).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_ip_limit_switched_on_by_reload_counts_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (path, c) = config_file(dir.path(), "");
    let d = start_at(c, Some(path)).await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(join(&d, &format!("k{i}"), false).await);
    }
    config_file(dir.path(), "max_connections_per_ip = 3");
    d.reload().await;
    let request = upgrade_request("/?specialKey=fourth", "");
    let refused = http(d.addr, &request).await;
    assert_eq!(status(&refused), 503, "three were already open from 127.0.0.1: {refused}");
    let other = head_over(tcp_from(d.addr, [127, 0, 0, 2].into()).await, &request).await;
    assert!(other.starts_with("HTTP/1.1 101"), "{other}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_summary_counts_clients_not_handshakes() {
    let mut c = config();
    c.server.handshake_timeout = Duration::from_secs(1);
    let d = start(c).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(join(&d, &format!("c{i}"), i % 2 == 0).await);
    }
    // Five connections still in their handshake: tasks, not clients.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(within("connect", TcpStream::connect(d.addr)).await.unwrap());
    }
    let report = d.stop().await;
    assert_eq!(report, DrainReport { drained: 10, cut_off: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_terminate_counts_clients_still_flushing_as_cut_off() {
    let mut c = config();
    c.shutdown.drain_timeout = Duration::from_secs(60);
    let d = start(c).await;
    // Two clients that never read: their backlogs cannot be flushed.
    let mut sender = join(&d, "sender", false).await;
    let _stuck = join(&d, "stuck", false).await;
    let big = "x".repeat(60 * 1024);
    for _ in 0..200 {
        send(&mut sender, &big).await;
    }
    within("terminate", d.events.send(Event::Terminate)).await.unwrap();
    // Both are closing (out of the registry) but still flushing.
    d.wait_for_clients(0).await;
    within("second terminate", d.events.send(Event::Terminate)).await.unwrap();
    let report = within("daemon exit", d.task).await.unwrap();
    assert_eq!(report, DrainReport { drained: 0, cut_off: 2 });
}
