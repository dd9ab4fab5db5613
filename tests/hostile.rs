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

fn status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_plain_port_gets_400() {
    let (d, mut b) = daemon_with(|_| {}).await;
    let mut tcp = TcpStream::connect(d.addr).await.unwrap();
    // A TLS ClientHello record header and some bytes, then a blank line to end the "head".
    tcp.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    within("answer", tcp.read_to_end(&mut out)).await.unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&out)), 400);
    b.check("TLS on the plain port").await;
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
