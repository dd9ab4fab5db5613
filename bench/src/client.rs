//! A minimal WebSocket client for load: raw upgrade, a frame parser that counts without copying,
//! masked sends with a zero key (legal, and free to apply).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// `Some` for wss.
    pub tls: Option<TlsConnector>,
}

impl Target {
    /// Parses `ws://host:port` or `wss://host:port`; wss needs the CA that signed the server's
    /// certificate.
    pub fn new(url: &str, ca: Option<&str>) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(format!("{url}: expected ws://ADDR or wss://ADDR"));
        };
        let addr: SocketAddr = rest.trim_end_matches('/').parse().map_err(|e| format!("{rest}: {e}"))?;
        let tls = if tls {
            let ca = ca.ok_or("wss:// needs --ca FILE")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
                roots.add(cert.map_err(|e| format!("{ca}: {e}"))?).map_err(|e| e.to_string())?;
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self { addr, tls })
    }
}

/// A plain or TLS stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Source address for connection `i`: one source IP has ~28k ephemeral ports, so spread
/// connections over 127.0.0.1..=127.0.0.250 (loopback only).
fn source_for(i: usize, server: SocketAddr) -> Option<SocketAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Some(SocketAddr::from(([127, 0, 0, 1 + (i % 250) as u8], 0))),
        _ => None,
    }
}

/// Connects connection number `i` and completes the upgrade; returns the stream and whatever
/// bytes followed the 101 response.
pub async fn connect(target: &Target, i: usize, key: &str, gzip: bool) -> io::Result<(Stream, Vec<u8>)> {
    let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(src) = source_for(i, target.addr) {
        socket.bind(src)?;
    }
    // Close with a reset: a connect storm would otherwise fill the ports with TIME_WAIT.
    // (Deprecated because a non-zero linger blocks on drop; a zero linger never does.)
    #[allow(deprecated)]
    socket.set_linger(Some(std::time::Duration::ZERO))?;
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let mut stream = match &target.tls {
        None => Stream::Plain(tcp),
        Some(connector) => {
            let name = ServerName::IpAddress(target.addr.ip().into());
            let name = if target.addr.ip().is_loopback() { ServerName::try_from("localhost").unwrap() } else { name };
            Stream::Tls(Box::new(connector.connect(name.to_owned(), tcp).await?))
        }
    };
    let gz = if gzip { "&support_gzip=1" } else { "" };
    let request = format!(
        "GET /?specialKey={key}{gz} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        target.addr
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {head}")));
            }
            return Ok((stream, buf.split_off(end + 4)));
        }
    }
}

/// One frame as seen by the parser.
pub struct Frame<'a> {
    /// Opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The unmasked payload (servers do not mask).
    pub payload: &'a [u8],
}

/// Parses the next complete frame at the start of `buf`; returns it and its total length.
pub fn parse(buf: &[u8]) -> Option<(Frame<'_>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let total = head + len;
    (buf.len() >= total).then(|| (Frame { opcode, payload: &buf[head..total] }, total))
}

/// Encodes a masked client frame with a zero masking key (the payload stays as is).
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
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
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}
