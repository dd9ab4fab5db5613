//! Test helpers: a daemon on port 0, WebSocket clients over plain TCP and TLS, certificates made
//! in the test, and receive-with-timeout. Every await in a test goes through a timeout.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wscast::config::Config;
use wscast::daemon::Daemon;
use wscast::hub::Hub;
use wscast::shutdown::DrainReport;
use wscast::signals::Event;

/// The bound on every single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client over any transport.
pub type Ws<S = TcpStream> = WebSocketStream<S>;

/// A daemon running in this process.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub hub: Arc<Hub>,
    pub events: mpsc::Sender<Event>,
    pub task: JoinHandle<DrainReport>,
}

/// A config for tests: port 0 on loopback, short timers.
pub fn config() -> Config {
    let mut c = Config::default();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.handshake_timeout = Duration::from_secs(2);
    c.shutdown.drain_timeout = Duration::from_secs(5);
    c
}

/// Binds and runs a daemon; events (Terminate, Reload) come from the returned sender.
pub async fn start(config: Config) -> TestDaemon {
    start_at(config, None).await
}

/// Like `start`, with a config file that a Reload event re-reads.
pub async fn start_at(config: Config, path: Option<PathBuf>) -> TestDaemon {
    run_bound(Daemon::bind(config, path, None).expect("daemon binds")).await
}

/// Runs a daemon the test has bound itself.
pub async fn run_bound(daemon: Daemon) -> TestDaemon {
    let addrs = daemon.local_addrs().to_vec();
    let addr = addrs[0];
    let hub = daemon.hub();
    // One slot: a send returns only once the daemon took the event before it (see `reload`).
    let (events, rx) = mpsc::channel(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    // Fused: a test that drops its sender ends the stream, which the drain may poll again.
    let task = tokio::spawn(daemon.run(Box::pin(stream.fuse())));
    TestDaemon { addr, addrs, hub, events, task }
}

impl TestDaemon {
    /// Waits until the hub holds `n` clients.
    pub async fn wait_for_clients(&self, n: usize) {
        let hub = self.hub.clone();
        within("client count", async move {
            while hub.len() != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Sends Reload and returns once the daemon has applied it: with a one-slot channel, the
    /// third send completes only after the daemon took the second event, which it does only
    /// after handling the first.
    pub async fn reload(&self) {
        for _ in 0..3 {
            within("reload", self.events.send(Event::Reload)).await.unwrap();
        }
    }

    /// Sends Terminate and returns the drain report.
    pub async fn stop(self) -> DrainReport {
        self.events.send(Event::Terminate).await.unwrap();
        within("daemon stop", self.task).await.unwrap()
    }
}

/// Awaits `fut` or panics naming `what` after `WAIT`.
pub async fn within<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The upgrade URL for `key`.
pub fn url(addr: SocketAddr, scheme: &str, key: &str, gzip: bool) -> String {
    let gz = if gzip { "&support_gzip=1" } else { "" };
    format!("{scheme}://{addr}/?specialKey={key}{gz}")
}

/// Connects a plain ws client and waits for the 101.
pub async fn connect(addr: SocketAddr, key: &str, gzip: bool) -> Ws {
    let tcp = within("tcp connect", TcpStream::connect(addr)).await.unwrap();
    let (ws, _) = within("upgrade", tokio_tungstenite::client_async(url(addr, "ws", key, gzip), tcp))
        .await
        .expect("upgrade accepted");
    ws
}

/// Connects and waits until the daemon has registered the client.
pub async fn join(d: &TestDaemon, key: &str, gzip: bool) -> Ws {
    let before = d.hub.len();
    let ws = connect(d.addr, key, gzip).await;
    d.wait_for_clients(before + 1).await;
    ws
}

/// Receives the next data frame as text (gzip Binary frames are inflated), answering nothing
/// else. Panics on close or timeout.
pub async fn recv_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> String {
    loop {
        match within("a broadcast", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Binary(b))) => return gunzip(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
}

/// Receives the next data frame and checks its kind: Binary gzip for gzip clients, Text otherwise.
pub async fn recv_as<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, gzip: bool) -> String {
    loop {
        match within("a broadcast", ws.next()).await {
            Some(Ok(Message::Text(t))) if !gzip => return t.to_string(),
            Some(Ok(Message::Binary(b))) if gzip => return gunzip(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("gzip={gzip}: unexpected {other:?}"),
        }
    }
}

/// Inflates with flate2's reference decoder.
pub fn gunzip(data: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(data).read_to_string(&mut out).expect("a valid gzip member");
    out
}

/// Gzips with flate2's reference encoder.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Reads until the server's Close frame and returns its code and reason (skipping data).
pub async fn recv_close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> (u16, String) {
    loop {
        match within("a close frame", ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Sends a text message.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, text: &str) {
    within("send", ws.send(Message::text(text))).await.expect("send");
}

/// Sends a raw HTTP request and returns the whole response (the daemon closes after it).
pub async fn http(addr: SocketAddr, request: &str) -> String {
    let mut tcp = within("tcp connect", TcpStream::connect(addr)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("http response", tcp.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP connection to `addr` from the loopback address `from` (e.g. 127.0.0.7), so tests can
/// play several clients on one machine.
pub async fn tcp_from(addr: SocketAddr, from: std::net::IpAddr) -> TcpStream {
    let socket =
        if from.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    within("tcp connect", socket.connect(addr)).await.unwrap()
}

/// Connects a plain ws client from the loopback address `from` and waits for the 101.
pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr, key: &str) -> Ws {
    let tcp = tcp_from(addr, from).await;
    let (ws, _) = within("upgrade", tokio_tungstenite::client_async(url(addr, "ws", key, false), tcp))
        .await
        .expect("upgrade accepted");
    ws
}

/// The status code of an HTTP response (0 if there is none).
pub fn status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Sends a raw HTTP request and returns the response head only (for answers that keep the
/// connection, like 101).
pub async fn http_head(addr: SocketAddr, request: &str) -> String {
    let tcp = within("tcp connect", TcpStream::connect(addr)).await.unwrap();
    head_over(tcp, request).await
}

/// Sends `request` over `tcp` and returns the response head.
pub async fn head_over(mut tcp: TcpStream, request: &str) -> String {
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("http response head", async {
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap() == 1 {
            out.push(byte[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket upgrade request for `target` with extra header lines.
pub fn upgrade_request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed, written as PEM files.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The DER of the server certificate, to tell two certificates apart.
    pub leaf: CertificateDer<'static>,
}

/// Makes a CA and a leaf signed by it in `dir`, with file names suffixed by `tag`.
pub fn make_pki(dir: &Path, tag: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let cert = dir.join(format!("cert-{tag}.pem"));
    let key = dir.join(format!("key-{tag}.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    TestPki { ca: ca.der().clone(), cert, key, leaf: leaf.der().clone() }
}

/// A test config serving wss with `pki`'s certificate.
pub fn tls_config(pki: &TestPki) -> Config {
    let mut c = config();
    c.tls.enabled = true;
    c.tls.cert = pki.cert.clone();
    c.tls.key = pki.key.clone();
    c
}

/// Connects over TLS trusting `ca`; returns the client and the certificate the server showed.
pub async fn connect_tls(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    key: &str,
    gzip: bool,
) -> (Ws<tokio_rustls::client::TlsStream<TcpStream>>, CertificateDer<'static>) {
    connect_tls_with(addr, ca, key, gzip, rustls::DEFAULT_VERSIONS).await
}

/// [`connect_tls`] offering only the TLS `versions` given.
pub async fn connect_tls_with(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    key: &str,
    gzip: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Ws<tokio_rustls::client::TlsStream<TcpStream>>, CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within("tcp connect", TcpStream::connect(addr)).await.unwrap();
    let tls = within("tls handshake", connector.connect(ServerName::try_from("localhost").unwrap(), tcp))
        .await
        .expect("tls handshake");
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (ws, _) = within("upgrade", tokio_tungstenite::client_async(url(addr, "wss", key, gzip), tls))
        .await
        .expect("upgrade accepted");
    (ws, shown)
}
