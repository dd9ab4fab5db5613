//! The admin listener over real HTTP: health, readiness through a drain, errors.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wscast::signals::Event;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
}

/// A daemon with an admin listener on a free loopback port.
async fn start_with_admin() -> (TestDaemon, SocketAddr) {
    start_with_admin_and(|_| {}).await
}

async fn start_with_admin_and(edit: impl FnOnce(&mut wscast::config::Config)) -> (TestDaemon, SocketAddr) {
    let mut c = config();
    edit(&mut c);
    c.admin.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.shutdown.drain_timeout = Duration::from_secs(30);
    let daemon = wscast::daemon::Daemon::bind(c, None, None).expect("binds");
    let admin = daemon.admin_addrs()[0];
    (run_bound(daemon).await, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_errors() {
    let (d, admin) = start_with_admin().await;
    let healthz = http(admin, &get("/healthz")).await;
    assert!(healthz.starts_with("HTTP/1.1 200") && healthz.ends_with("ok\n"), "{healthz}");
    let readyz = http(admin, &get("/readyz")).await;
    assert!(readyz.starts_with("HTTP/1.1 200") && readyz.ends_with("ready\n"), "{readyz}");
    let page = http(admin, &get("/")).await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html"), "{}", &page[..200.min(page.len())]);
    assert!(page.contains(&format!("value=\"ws://{}\"", d.addr)), "the demo page connects to the public listener");
    assert!(page.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"));
    let missing = http(admin, &get("/nope")).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("application/json") && missing.contains(r#"{"error":"no admin route /nope"#), "{missing}");
    let post = http(admin, "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get, head"), "{post}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_when_the_first_1001_arrives_and_health_answers_through_the_drain() {
    let (d, admin) = start_with_admin().await;
    let mut client = join(&d, "watcher", false).await;
    // A client that never reads, with a backlog: it keeps the drain going.
    let mut stuck = join(&d, "stuck", false).await;
    let big = "x".repeat(60 * 1024);
    for _ in 0..100 {
        send(&mut stuck, &big).await;
    }
    for _ in 0..100 {
        assert_eq!(recv_text(&mut client).await.len(), big.len());
    }
    within("terminate", d.events.send(Event::Terminate)).await.unwrap();
    assert_eq!(recv_close(&mut client).await.0, 1001);
    let readyz = http(admin, &get("/readyz")).await;
    assert!(readyz.starts_with("HTTP/1.1 503") && readyz.ends_with("draining\n"), "{readyz}");
    let healthz = http(admin, &get("/healthz")).await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "still answering during the drain: {healthz}");
    // The drain may be over by now; if not, a second signal ends it.
    let _ = d.events.send(Event::Terminate).await;
    within("daemon exit", d.task).await.unwrap();
}

/// `name{labels}` -> value, from a strict reading of the OpenMetrics text.
fn parse(text: &str) -> std::collections::HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            assert!(series.starts_with("wscast_"), "{l}");
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        })
        .collect()
}

async fn scrape(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let response = http(admin, &get("/metrics")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("content-type: application/openmetrics-text"), "{response}");
    parse(&response[response.find("\r\n\r\n").unwrap() + 4..])
}

/// Waits until every series in `expected` has moved by exactly its delta from `before`.
async fn moved(admin: SocketAddr, before: &std::collections::HashMap<String, f64>, expected: &[(&str, f64)]) {
    let mut last = Default::default();
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            last = scrape(admin).await;
            let delta = |s: &str| last.get(s).copied().unwrap_or(0.0) - before.get(s).copied().unwrap_or(0.0);
            if expected.iter().all(|(s, d)| delta(s) == *d) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if settled.is_err() {
        let got: Vec<_> = expected
            .iter()
            .map(|(s, _)| (s, last.get(*s).copied().unwrap_or(0.0) - before.get(*s).copied().unwrap_or(0.0)))
            .collect();
        panic!("metrics did not move as expected: want {expected:?}, got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_moves_by_exactly_what_happened() {
    let (d, admin) = start_with_admin().await;
    let before = scrape(admin).await;
    assert_eq!(before.get(&format!("wscast_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), Some(&1.0));
    let mut a = join(&d, "a", false).await;
    let mut b = join(&d, "b", true).await;
    send(&mut a, "counted").await;
    assert_eq!(recv_as(&mut a, false).await, "counted");
    assert_eq!(recv_as(&mut b, true).await, "counted");
    assert_eq!(status(&http(d.addr, &upgrade_request("/elsewhere?specialKey=x", "")).await), 404);
    assert_eq!(status(&http(d.addr, &upgrade_request("/?support_gzip=1", "")).await), 400);
    moved(
        admin,
        &before,
        &[
            ("wscast_connections_accepted_total", 2.0),
            ("wscast_connections{tls=\"false\"}", 2.0),
            ("wscast_connections{tls=\"true\"}", 0.0),
            ("wscast_gzip_connections", 1.0),
            ("wscast_messages_received_total", 1.0),
            ("wscast_frames_sent_total{kind=\"text\"}", 1.0),
            ("wscast_frames_sent_total{kind=\"gzip\"}", 1.0),
            ("wscast_handshakes_rejected_total{reason=\"not_found\"}", 1.0),
            ("wscast_handshakes_rejected_total{reason=\"bad_request\"}", 1.0),
        ],
    )
    .await;
    let bytes = scrape(admin).await["wscast_bytes_sent_total"] - before["wscast_bytes_sent_total"];
    // A 9-byte text frame and a gzip frame of about 30 bytes.
    assert!((20.0..200.0).contains(&bytes), "bytes sent: {bytes}");
    // One client closes with 1000; the server closes the other with 4002.
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    };
    within("close", a.close(Some(normal))).await.unwrap();
    assert!(d.hub.kick("b", wscast::ending::Code::Kicked, "bye"));
    assert_eq!(recv_close(&mut b).await.0, 4002);
    moved(
        admin,
        &before,
        &[
            ("wscast_disconnects_total{code=\"1000\"}", 1.0),
            ("wscast_disconnects_total{code=\"4002\"}", 1.0),
            ("wscast_connections{tls=\"false\"}", 0.0),
            ("wscast_gzip_connections", 0.0),
        ],
    )
    .await;
    d.reload().await;
    moved(admin, &before, &[("wscast_reloads_total{result=\"ok\"}", 3.0)]).await;
    d.stop().await;
}

const TOKEN: &str = "s3cret-admin-token";

/// A daemon whose admin token is in a 0640 file (with the trailing newline editors leave).
async fn start_with_token() -> (TestDaemon, SocketAddr, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (d, admin) = start_with_admin_and(|c| c.admin.token_file = file.clone()).await;
    (d, admin, dir)
}

/// An API request with the token, returning (status, body).
async fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    api_as(admin, method, path, body, &format!("Authorization: Bearer {TOKEN}\r\n")).await
}

async fn api_as(admin: SocketAddr, method: &str, path: &str, body: &str, auth: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = http(admin, &request).await;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status(&response), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_is_closed_with_403_saying_how_to_set_one() {
    let (d, admin) = start_with_admin().await;
    let (code, body) = api(admin, "POST", "/v1/publish", "hello").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin.token_file"), "{body}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_gets_401_and_never_reaches_the_hub() {
    let (d, admin, _dir) = start_with_token().await;
    let mut a = join(&d, "a", false).await;
    for auth in ["", "Authorization: Bearer wrong\r\n", "Authorization: Basic czNjcmV0\r\n"] {
        let request =
            format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 4\r\nConnection: close\r\n\r\nlost");
        let response = http(admin, &request).await;
        assert_eq!(status(&response), 401, "{response}");
        assert!(response.to_ascii_lowercase().contains("www-authenticate: bearer"), "{response}");
    }
    // The next frame a gets is the one published with the right token.
    assert_eq!(api(admin, "POST", "/v1/publish", "with the token").await, (202, "{\"clients\":1}\n".into()));
    assert_eq!(recv_text(&mut a).await, "with the token");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_send_look_up_kick_and_stats() {
    let (d, admin, _dir) = start_with_token().await;
    let mut plain = join(&d, "plain", false).await;
    // A key with a space, a slash and UTF-8, percent-encoded in the URL and in the path.
    let mut odd = join(&d, "a%20b%2Fc%C3%A9", true).await;
    assert_eq!(api(admin, "POST", "/v1/publish", "to everyone").await.0, 202);
    assert_eq!(recv_as(&mut plain, false).await, "to everyone");
    assert_eq!(recv_as(&mut odd, true).await, "to everyone");
    let (code, _) = api(admin, "POST", "/v1/clients/a%20b%2Fc%C3%A9/send", "only you").await;
    assert_eq!(code, 202);
    assert_eq!(recv_as(&mut odd, true).await, "only you");
    assert_eq!(api(admin, "POST", "/v1/clients/nobody/send", "lost").await.0, 404);
    let (code, body) = api(admin, "GET", "/v1/clients/a%20b%2Fc%C3%A9", "").await;
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (info["key"].as_str(), info["gzip"].as_bool(), info["tls"].as_bool()),
        (Some("a b/c\u{e9}"), Some(true), Some(false))
    );
    assert!(info["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{body}");
    assert!(info["connected_at"].as_str().unwrap().ends_with('Z'), "{body}");
    let (code, body) = api(admin, "GET", "/v1/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, stats["nodes"][0]["clients"].as_u64()), (200, Some(2)), "{body}");
    // A code outside 4000-4999 closes nothing.
    assert_eq!(api(admin, "DELETE", "/v1/clients/plain?code=1000", "").await.0, 400);
    assert_eq!(api(admin, "DELETE", "/v1/clients/plain?code=4100&reason=see+you", "").await.0, 202);
    assert_eq!(recv_close(&mut plain).await, (4100, "see you".into()));
    assert_eq!(api(admin, "DELETE", "/v1/clients/a%20b%2Fc%C3%A9", "").await.0, 202);
    assert_eq!(recv_close(&mut odd).await, (4002, "closed by the server".into()));
    assert_eq!(api(admin, "DELETE", "/v1/clients/plain", "").await.0, 404);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_gets_a_json_error_with_the_fitting_status() {
    let (d, admin, _dir) = start_with_token().await;
    let big = "x".repeat(64 * 1024 + 1);
    let (code, body) = api(admin, "POST", "/v1/publish", &big).await;
    assert_eq!(code, 413, "{body}");
    assert!(body.starts_with("{\"error\":"), "{body}");
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // A body announced as too large is refused before it is sent.
    let request =
        format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 100000000\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&http(admin, &request).await), 413);
    let request = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
    assert_eq!(status(&http(admin, &request).await), 415);
    // Not UTF-8.
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!("POST /v1/publish HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 2\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[head.as_bytes(), &[0xff, 0xfe]].concat()).await.unwrap();
    let mut answer = String::new();
    within("answer", tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("not UTF-8"), "{answer}");
    assert_eq!(api(admin, "GET", "/v1/publish", "").await.0, 405);
    assert_eq!(api(admin, "PUT", "/v1/clients/x", "").await.0, 405);
    assert_eq!(api(admin, "GET", "/v1/nothing", "").await.0, 404);
    assert_eq!(api(admin, "GET", "/v1/clients/%FF", "").await.0, 400);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_clients_lists_local_connections_as_json_lines() {
    let (d, admin, _dir) = start_with_token().await;
    let _a = join(&d, "a", false).await;
    let _b = join(&d, "b", true).await;
    assert_eq!(api_as(admin, "GET", "/debug/clients", "", "").await.0, 401, "the token is required");
    let (code, body) = api(admin, "GET", "/debug/clients", "").await;
    assert_eq!(code, 200, "{body}");
    let mut keys: Vec<(String, bool)> = body
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["queued"].is_u64() && v["age_seconds"].is_u64(), "{l}");
            (v["key"].as_str().unwrap().to_string(), v["gzip"].as_bool().unwrap())
        })
        .collect();
    keys.sort();
    assert_eq!(keys, [("a".to_string(), false), ("b".to_string(), true)]);
    d.stop().await;
}

/// When each of `n` clients got its 1001, in ms after the first one, sorted.
async fn close_times(spread: Duration, n: usize) -> Vec<u128> {
    let (d, _admin) = start_with_admin_and(|c| {
        c.shutdown.spread = spread;
        c.shutdown.drain_timeout = Duration::from_secs(10);
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(join(&d, &format!("c{i}"), false).await);
    }
    let stop = tokio::spawn(d.stop());
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                assert_eq!(recv_close(&mut ws).await.0, 1001);
                std::time::Instant::now()
            })
        })
        .collect();
    let mut at = Vec::new();
    for w in waits {
        at.push(within("a 1001", w).await.unwrap());
    }
    let report = within("drain", stop).await.unwrap();
    assert_eq!(report.drained, n);
    at.sort();
    at.iter().map(|t| t.duration_since(at[0]).as_millis()).collect()
}

/// Closes per 100 ms, for the record in BENCHMARKS.md (`--nocapture`).
fn curve(times: &[u128]) -> Vec<usize> {
    let mut buckets = vec![0; (times.last().copied().unwrap_or(0) / 100 + 1) as usize];
    times.iter().for_each(|t| buckets[(*t / 100) as usize] += 1);
    buckets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_drain_closes_over_at_least_80_percent_of_the_spread() {
    let at_once = close_times(Duration::ZERO, 40).await;
    let spread = close_times(Duration::from_secs(2), 40).await;
    println!("closes per 100 ms, no spread: {:?}", curve(&at_once));
    println!("closes per 100 ms, spread 2s: {:?}", curve(&spread));
    let span = *spread.last().unwrap();
    assert!(span >= 1600, "the 1001s spanned only {span} ms of a 2 s spread");
    assert!(curve(&spread).iter().all(|&n| n <= 8), "a batch is small: {:?}", curve(&spread));
}

/// A self-signed certificate for localhost expiring on 1 January of `year`, written as PEM.
fn cert_expiring(dir: &std::path::Path, year: i32) -> i64 {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    params.not_after.unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_expiry_metric_follows_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let first = cert_expiring(dir.path(), 2031);
    let path = dir.path().join("wscast.toml");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\nenabled = true\ncert = {:?}\nkey = {:?}\n\
         [admin]\nlisten = [\"127.0.0.1:0\"]\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    std::fs::write(&path, toml).unwrap();
    let config = wscast::config::load(Some(&path)).unwrap();
    let daemon = wscast::daemon::Daemon::bind(config, Some(path), None).unwrap();
    let admin = daemon.admin_addrs()[0];
    let d = run_bound(daemon).await;
    let expiry = |m: &std::collections::HashMap<String, f64>| m["wscast_tls_cert_not_after_seconds"] as i64;
    assert_eq!(expiry(&scrape(admin).await), first);
    let second = cert_expiring(dir.path(), 2032);
    d.reload().await;
    assert_eq!(expiry(&scrape(admin).await), second, "a renewed certificate shows after the reload");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_burst_beside_a_fan_out_loses_and_reorders_nothing() {
    use futures_util::StreamExt;
    let (d, admin, _dir) = start_with_token().await;
    let mut sender = join(&d, "sender", false).await;
    let mut receiver = join(&d, "receiver", true).await;
    // 1,000 API requests, 50 at a time.
    let burst = tokio::spawn(async move {
        futures_util::stream::iter(0..1000)
            .map(|_| api(admin, "GET", "/v1/stats", ""))
            .buffer_unordered(50)
            .filter(|(code, _)| std::future::ready(*code == 200))
            .count()
            .await
    });
    // Meanwhile the API is a sender of its own, in order, beside a client sending.
    let publisher = tokio::spawn(async move {
        for i in 0..100 {
            assert_eq!(api(admin, "POST", "/v1/publish", &format!("api {i}")).await.0, 202);
        }
    });
    for i in 0..300 {
        send(&mut sender, &format!("client {i}")).await;
    }
    let (mut from_client, mut from_api) = (Vec::new(), Vec::new());
    while from_client.len() < 300 || from_api.len() < 100 {
        let text = recv_as(&mut receiver, true).await;
        match text.split_once(' ') {
            Some(("client", n)) => from_client.push(n.parse::<u32>().unwrap()),
            Some(("api", n)) => from_api.push(n.parse::<u32>().unwrap()),
            _ => panic!("unexpected {text:?}"),
        }
    }
    assert_eq!(from_client, (0..300).collect::<Vec<_>>(), "the client's messages, all, in order");
    assert_eq!(from_api, (0..100).collect::<Vec<_>>(), "the API's messages, all, in order");
    within("publisher", publisher).await.unwrap();
    assert_eq!(within("burst", burst).await.unwrap(), 1000, "every request of the burst answered 200");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_taken_during_a_fan_out_names_the_fan_out() {
    let (d, admin, _dir) = start_with_token().await;
    // The sender reads its own copies too: a sender that does not is cut off (4001) once its
    // queue is full, and the fan-out would stop long before the profile does.
    let (mut sender, mut echoes) = join(&d, "sender", false).await.split();
    let mut readers = vec![tokio::spawn(async move { while let Some(Ok(_)) = echoes.next().await {} })];
    for i in 0..50 {
        let mut ws = join(&d, &format!("r{i}"), i % 2 == 0).await;
        readers.push(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }));
    }
    let profile = tokio::spawn(async move {
        let request = format!("GET /debug/pprof/profile?seconds=2 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        within("the profile", tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut raw)).await.unwrap();
        raw
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One at a time.
    assert_eq!(api(admin, "GET", "/debug/pprof/profile?seconds=1", "").await.0, 409);
    assert_eq!(api(admin, "GET", "/debug/pprof/profile?seconds=600", "").await.0, 400);
    // About 1,000 messages/s into 51 clients: enough to keep the data path in the samples, slow
    // enough that a debug build's readers keep up (a reader cut off would shrink the fan-out).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2300) {
        for _ in 0..5 {
            within("send", sender.send(Message::text("profiled fan-out message"))).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let raw = within("profile task", profile).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw[..split]));
    let decoded: pprof::protos::Profile = prost::Message::decode(&raw[split + 4..]).expect("a pprof protobuf");
    assert!(!decoded.sample.is_empty(), "samples were taken");
    // The data path of a broadcast: the reader that publishes, the hub, the fan-out, the writer.
    let path = ["wscast::connection::read_loop", "wscast::hub", "wscast::fanout", "wscast::frame", "wscast::writer"];
    // Contained, not leading: an optimised build names inlined frames by their callers' generics.
    let named = decoded.string_table.iter().any(|s| path.iter().any(|p| s.contains(p)));
    let wscast: Vec<_> = decoded.string_table.iter().filter(|s| s.contains("wscast")).take(40).collect();
    assert!(named, "the profile names the fan-out ({} strings): {wscast:?}", decoded.string_table.len());
    for r in readers {
        r.abort();
    }
    d.stop().await;
}

/// The `curl` lines of docs/admin-api.md, continuations joined, in the order they appear.
fn documented_curls() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.md")).unwrap();
    let mut commands: Vec<String> = Vec::new();
    let mut continued = false;
    for line in doc.lines().filter_map(|l| l.strip_prefix("    ")) {
        let line = line.trim();
        if continued {
            commands.last_mut().unwrap().push_str(line.trim_end_matches('\\'));
        } else if line.starts_with("curl ") {
            commands.push(line.trim_end_matches('\\').to_string());
        }
        continued = line.ends_with('\\');
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_examples_of_the_docs_work_as_written() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    assert!(curl.is_ok(), "this test runs the documented curl examples: install curl (apt-get install curl)");
    let commands = documented_curls();
    assert!(commands.len() >= 7, "the curl examples of docs/admin-api.md: {commands:#?}");
    let (d, admin, _dir) = start_with_token().await;
    let mut alice = join(&d, "alice", false).await;
    let work = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for command in &commands {
        // -f: an HTTP error fails the command; the address is the test daemon's.
        let command =
            command.replacen("curl ", "curl -fsS --max-time 30 ", 1).replace("127.0.0.1:9090", &admin.to_string());
        let run = tokio::process::Command::new("sh")
            .args(["-c", &command])
            .env("TOKEN", TOKEN)
            .current_dir(work.path())
            .output();
        let out = within("a documented curl", run).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        outputs.push(stdout);
    }
    assert!(outputs.iter().any(|o| o.contains(r#""nodes":[{"#)), "/v1/stats answered: {outputs:?}");
    assert!(outputs.iter().any(|o| o.contains(r#""key":"alice","node""#)), "the look-up answered: {outputs:?}");
    assert_eq!(recv_text(&mut alice).await, "maintenance at 18:00");
    assert_eq!(recv_text(&mut alice).await, "just for you");
    assert_eq!(recv_close(&mut alice).await, (4100, "banned".into()));
    let profile = std::fs::read(work.path().join("wscast.pprof")).unwrap();
    let decoded: pprof::protos::Profile = prost::Message::decode(&profile[..]).expect("a pprof protobuf");
    assert!(!decoded.string_table.is_empty(), "the profile has a string table");
    d.stop().await;
}
