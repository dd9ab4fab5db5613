//! Hostile input: each case asserts the exact answer and that a well-behaved pair of clients
//! beside it kept exchanging broadcasts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wscast::config::Config;

/// Two well-behaved clients; `check` proves the daemon still serves them.
struct Bystanders {
    sender: Ws,
    receiver: Ws,
    n: u32,
}

impl Bystanders {
    async fn join(d: &TestDaemon) -> Self {
        let sender = join(d, "bystander-sender", false).await;
        let receiver = join(d, "bystander-receiver", true).await;
        Self { sender, receiver, n: 0 }
    }

    async fn check(&mut self, after: &str) {
        self.n += 1;
        let text = format!("still served after {after} ({})", self.n);
        send(&mut self.sender, &text).await;
        assert_eq!(recv_as(&mut self.receiver, true).await, text, "bystander after {after}");
        assert_eq!(recv_as(&mut self.sender, false).await, text, "bystander after {after}");
    }
}

async fn daemon_with(edit: impl FnOnce(&mut Config)) -> (TestDaemon, Bystanders) {
    let mut c = config();
    edit(&mut c);
    let d = start(c).await;
    let b = Bystanders::join(&d).await;
    (d, b)
}

/// A raw socket that completed the upgrade, for sending frames tungstenite would refuse to.
async fn raw_ws(addr: SocketAddr, key: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade_request(&format!("/?specialKey={key}"), "").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("101", tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// One masked client frame (zero mask key).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

/// Reads server frames until a Close and returns its code (0 if the socket just closed).
async fn close_code(tcp: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    within("close frame", async {
        loop {
            while buf.len() >= 2 {
                let len = (buf[1] & 0x7f) as usize;
                let (len, head) = match len {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
                    126 | 127 => break,
                    n => (n, 2),
                };
                if buf.len() < head + len {
                    break;
                }
                if buf[0] & 0x0f == 8 {
                    return if len >= 2 { u16::from_be_bytes([buf[head], buf[head + 1]]) } else { 0 };
                }
                buf.drain(..head + len);
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_http_handshake_is_cut_at_the_deadline() {
    let (d, mut b) = daemon_with(|c| c.server.handshake_timeout = Duration::from_millis(600)).await;
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    let started = std::time::Instant::now();
    for part in ["GET /?spec", "ialKey=x HTTP/1.1\r\n", "Host: a\r\n"] {
        slow.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut rest = Vec::new();
    let _ = within("cut", slow.read_to_end(&mut rest)).await;
    assert!(rest.is_empty() && started.elapsed() >= Duration::from_millis(550), "{:?}", started.elapsed());
    b.check("an HTTP slowloris").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_tls_and_plaintext_on_the_tls_port_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "h");
    let mut c = tls_config(&pki);
    c.server.handshake_timeout = Duration::from_millis(600);
    let d = start(c).await;
    let (mut s, _) = connect_tls(d.addr, &pki.ca, "tls-sender", false).await;
    let (mut r, _) = connect_tls(d.addr, &pki.ca, "tls-receiver", true).await;
    d.wait_for_clients(2).await;
    // Half a ClientHello, then nothing.
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let mut rest = Vec::new();
    let _ = within("tls slowloris cut", slow.read_to_end(&mut rest)).await;
    // Plain HTTP on the TLS port: closed, no hang.
    let mut plain = TcpStream::connect(d.addr).await.unwrap();
    plain.write_all(upgrade_request("/?specialKey=p", "").as_bytes()).await.unwrap();
    let _ = within("plaintext on tls cut", plain.read_to_end(&mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 101"));
    send(&mut s, "tls bystanders").await;
    assert_eq!(recv_as(&mut r, true).await, "tls bystanders");
    d.stop().await;
}

/// Reads a whole answer the daemon closes after; panics if it does not close within `WAIT`
/// although the client keeps its side open.
async fn answer_then_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    within("the answer and the daemon's close", tcp.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_plain_port_gets_400_at_once() {
    // A deadline far beyond the test's own wait: only an immediate answer passes.
    let (d, mut b) = daemon_with(|c| c.server.handshake_timeout = Duration::from_secs(60)).await;
    let mut tcp = TcpStream::connect(d.addr).await.unwrap();
    // A real ClientHello, which holds no line end, and the socket kept open.
    tcp.write_all(&client_hello()).await.unwrap();
    let answer = answer_then_close(&mut tcp).await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(answer.contains("TLS handshake") && answer.contains("ws://"), "{answer}");
    b.check("TLS on the plain port").await;
    d.stop().await;
}

/// The first flight of a rustls client: a TLS record holding a ClientHello.
fn client_hello() -> Vec<u8> {
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lf_lines_with_a_crlf_blank_line_end_the_head() {
    let (d, mut b) = daemon_with(|c| c.server.handshake_timeout = Duration::from_secs(60)).await;
    let lf = upgrade_request("/?specialKey=lf", "").replace("\r\n", "\n");
    // Bare-LF lines, then CRLF as the blank line: httparse accepts it, so must we, at once.
    let head = lf.strip_suffix('\n').unwrap().to_string() + "\r\n";
    let answer = within("101", http_head(d.addr, &head)).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    let mut tcp = TcpStream::connect(d.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\nHost: x\n\r\n").await.unwrap();
    assert_eq!(status(&answer_then_close(&mut tcp).await), 426);
    b.check("LF heads with a CRLF blank line").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_strictness_of_rfc_6455_and_rfc_9112() {
    let (d, mut b) = daemon_with(|_| {}).await;
    let good = upgrade_request("/?specialKey=strict", "");
    let cases = [
        (
            "a second Sec-WebSocket-Key",
            good.replace("\r\n\r\n", "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"),
            400,
        ),
        ("a key of 17 bytes", good.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZTE="), 400),
        ("a key that is not base64", good.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j*Q=="), 400),
        ("no Host", good.replace("Host: localhost\r\n", ""), 400),
        ("two Hosts", good.replace("Host: localhost\r\n", "Host: a\r\nHost: b\r\n"), 400),
    ];
    for (what, request, expected) in cases {
        let answer = http(d.addr, &request).await;
        assert_eq!(status(&answer), expected, "{what}: {answer}");
    }
    let absolute = good.replace("GET /?specialKey", "GET http://localhost/?specialKey");
    assert!(http_head(d.addr, &absolute).await.starts_with("HTTP/1.1 101"), "absolute-form target");
    let split = good.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\nConnection: Upgrade\r\n");
    assert!(http_head(d.addr, &split).await.starts_with("HTTP/1.1 101"), "Connection over two lines");
    b.check("strict handshakes").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_free_their_slot_at_once() {
    let (d, mut b) = daemon_with(|c| {
        c.server.max_connections = 50;
        c.server.max_connections_per_ip = 2;
        c.server.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    // One address opens 60 connections and never closes one.
    let greedy: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut held = Vec::new();
    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..60 {
        let mut tcp = tcp_from(d.addr, greedy).await;
        tcp.write_all(upgrade_request(&format!("/?specialKey=greedy{i}"), "").as_bytes()).await.unwrap();
        let answer = if i < 2 {
            head_of(&mut tcp).await
        } else {
            // A refusal is closed by the daemon right after the answer, while we keep our side.
            answer_then_close(&mut tcp).await
        };
        *answers.entry(status(&answer)).or_default() += 1;
        held.push(tcp);
    }
    assert_eq!(answers, [(101, 2), (503, 58)].into_iter().collect());
    // Another address is served at once: no slot is held by a refused socket.
    let mut other = within("another address served", connect_from(d.addr, [127, 0, 0, 3].into(), "other")).await;
    send(&mut other, "from another address").await;
    assert_eq!(recv_as(&mut b.receiver, true).await, "from another address");
    assert_eq!(recv_as(&mut b.sender, false).await, "from another address");
    b.check("58 refused connections held open").await;
    d.stop().await;
}

/// Reads a response head from a connection that stays open (a 101).
async fn head_of(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("a response head", tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connects_and_a_greedy_address_leave_others_their_handshakes() {
    let (d, mut b) = daemon_with(|c| c.server.max_handshakes_per_second = 50).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = d.addr;
    // One address connects and resets without a byte; another upgrades as fast as it can.
    let resetter = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tcp = tcp_from(addr, [127, 0, 0, 4].into()).await;
                socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
                drop(tcp);
                n += 1;
            }
            n
        }
    });
    let greedy = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut upgraded = 0u32;
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let request = upgrade_request(&format!("/?specialKey=greedy{i}"), "");
                let head = head_over(tcp_from(addr, [127, 0, 0, 5].into()).await, &request).await;
                upgraded += u32::from(head.starts_with("HTTP/1.1 101"));
            }
            upgraded
        }
    });
    // A polite address: 20 upgrades at 10 per second, well inside its share.
    let mut polite = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let request = upgrade_request(&format!("/?specialKey=polite{i}"), "");
        let head = head_over(tcp_from(addr, [127, 0, 0, 6].into()).await, &request).await;
        polite += usize::from(head.starts_with("HTTP/1.1 101"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let resets = within("resetter", resetter).await.unwrap();
    let greedy = within("greedy", greedy).await.unwrap();
    assert!(resets > 100, "the resetter ran: {resets}");
    assert_eq!(polite, 20, "the polite address got every handshake (greedy got {greedy}, {resets} resets)");
    // Over about 2 s the greedy address got about its share (a quarter of 50/s, burst included).
    assert!((10..=45).contains(&greedy), "greedy address upgraded {greedy} times");
    b.check("a reset flood and a greedy address").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_member_gzip_is_inflated_whole_and_trailing_garbage_is_1007() {
    let (d, mut b) = daemon_with(|_| {}).await;
    let mut t = raw_ws(d.addr, "members").await;
    let mut two = gzip(b"hello ");
    two.extend_from_slice(&gzip(b"world"));
    t.write_all(&frame(true, 0x2, &two)).await.unwrap();
    assert_eq!(recv_as(&mut b.receiver, true).await, "hello world");
    assert_eq!(recv_as(&mut b.sender, false).await, "hello world");
    let mut t = raw_ws(d.addr, "garbage").await;
    let mut trailing = gzip(b"hello");
    trailing.extend_from_slice(b"not a member");
    t.write_all(&frame(true, 0x2, &trailing)).await.unwrap();
    assert_eq!(close_code(&mut t).await, 1007);
    b.check("multi-member gzip and trailing garbage").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_huge_keys_and_many_parameters() {
    let (d, mut b) = daemon_with(|_| {}).await;
    let big_header = format!("X-Big: {}\r\n", "h".repeat(9000));
    assert_eq!(status(&http(d.addr, &upgrade_request("/?specialKey=a", &big_header)).await), 431);
    let many_headers: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(status(&http(d.addr, &upgrade_request("/?specialKey=a", &many_headers)).await), 431);
    let key_100k = format!("/?specialKey={}", "k".repeat(100 * 1024));
    assert_eq!(status(&http(d.addr, &upgrade_request(&key_100k, "")).await), 431);
    // A thousand parameters inside the head limit: ignored, the key still counts.
    let params: String = (0..1000).map(|i| format!("p{i}=1&")).collect();
    let head = http_head(d.addr, &upgrade_request(&format!("/?{params}specialKey=many"), "")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    b.check("oversized heads").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_percent_encoding_and_non_utf8_keys_get_400() {
    let (d, mut b) = daemon_with(|_| {}).await;
    for (target, reason) in [
        ("/?specialKey=%G1", "bad percent-escape"),
        ("/?specialKey=abc%", "bad percent-escape"),
        ("/?specialKey=%C3%28", "not UTF-8"),
        ("/?specialKey=%00", "control characters"),
    ] {
        let response = http(d.addr, &upgrade_request(target, "")).await;
        assert_eq!(status(&response), 400, "{target}");
        assert!(response.contains(reason), "{target}: {response}");
    }
    b.check("bad keys").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_1002_and_bad_payloads_1007_or_1009() {
    let (d, mut b) = daemon_with(|c| c.websocket.max_message_size = bytesize::ByteSize::mib(2)).await;
    // Continuation without a start.
    let mut t = raw_ws(d.addr, "cont").await;
    t.write_all(&frame(true, 0x0, b"orphan")).await.unwrap();
    assert_eq!(close_code(&mut t).await, 1002);
    // A control frame over 125 bytes.
    let mut t = raw_ws(d.addr, "bigping").await;
    t.write_all(&frame(true, 0x9, &[b'p'; 200])).await.unwrap();
    assert_eq!(close_code(&mut t).await, 1002);
    // Invalid close codes: 999 and 1005 (reserved) are protocol errors.
    for code in [999u16, 1005] {
        let mut t = raw_ws(d.addr, "badclose").await;
        t.write_all(&frame(true, 0x8, &code.to_be_bytes())).await.unwrap();
        assert_eq!(close_code(&mut t).await, 1002, "close code {code}");
    }
    // Fragments that each fit but together exceed the 2 MiB limit.
    let mut t = raw_ws(d.addr, "fragments").await;
    let part = vec![b'f'; 1 << 20];
    t.write_all(&frame(false, 0x1, &part)).await.unwrap();
    t.write_all(&frame(false, 0x0, &part)).await.unwrap();
    let _ = t.write_all(&frame(true, 0x0, &part)).await;
    assert_eq!(close_code(&mut t).await, 1009);
    // Truncated gzip.
    let mut t = raw_ws(d.addr, "truncated").await;
    let gz = gzip(b"hello hello hello hello");
    t.write_all(&frame(true, 0x2, &gz[..gz.len() - 6])).await.unwrap();
    assert_eq!(close_code(&mut t).await, 1007);
    // A gzip bomb: 1 GiB of zeros deflated to about 1 MiB, cut at the 2 MiB cap.
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let mut t = raw_ws(d.addr, "bomb").await;
    t.write_all(&frame(true, 0x2, &bomb)).await.unwrap();
    assert_eq!(close_code(&mut t).await, 1009);
    b.check("protocol violations and a gzip bomb").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_and_costs_nobody_else() {
    let (d, mut b) = daemon_with(|_| {}).await;
    let (mut rd, mut wr) = raw_ws(d.addr, "pinger").await.into_split();
    // Pongs come back while we flood (tungstenite may merge pending pongs: at least one).
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut chunk = vec![0u8; 65536];
        while !seen.windows(2).any(|w| w == [0x8a, 0x04]) {
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during a ping flood");
            seen.extend_from_slice(&chunk[..n]);
        }
    });
    let flood: Vec<u8> = (0..20_000).flat_map(|_| frame(true, 0x9, b"ping")).collect();
    within("flood", wr.write_all(&flood)).await.unwrap();
    within("pongs", reader).await.unwrap();
    b.check("a ping flood").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connects_and_a_connect_storm() {
    let (d, mut b) = daemon_with(|c| c.server.handshake_timeout = Duration::from_millis(1500)).await;
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(within("connect", TcpStream::connect(d.addr)).await.unwrap());
    }
    b.check("1,000 silent connections").await;
    // Each is cut at the handshake deadline.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut buf = [0u8; 1];
    for s in &mut silent[..10] {
        assert_eq!(within("cut", s.read(&mut buf)).await.unwrap_or(0), 0);
    }
    drop(silent);
    // A connect/close storm: connect, upgrade or not, close at once.
    for i in 0..300 {
        let mut tcp = TcpStream::connect(d.addr).await.unwrap();
        if i % 2 == 0 {
            let _ = tcp.write_all(upgrade_request(&format!("/?specialKey=storm{i}"), "").as_bytes()).await;
        }
    }
    b.check("a connect/close storm").await;
    d.wait_for_clients(2).await;
    d.stop().await;
}
