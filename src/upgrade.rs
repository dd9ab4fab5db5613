//! The HTTP upgrade: read the request head, validate path, query and origin, answer 101 or an
//! HTTP error with a one-line reason.
//!
//! tungstenite's handshake callback only runs for requests that are already valid upgrades, so a
//! plain GET would get no answer at all; we parse the head ourselves (httparse, as tungstenite
//! does) and hand tungstenite the socket after our 101.

use std::borrow::Cow;
use std::io;

use percent_encoding::percent_decode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// Largest request head (request line and headers) read before answering 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed at most; more is answered with 431.
const MAX_HEADERS: usize = 64;
/// Longest `specialKey`, in bytes after percent-decoding.
pub const MAX_KEY_LEN: usize = 256;

/// What a validated upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The client's name in the registry.
    pub key: Box<str>,
    /// Whether it wants broadcasts as gzip Binary frames.
    pub gzip: bool,
}

/// What the daemon accepts, from the current config.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The one path that upgrades.
    pub path: String,
    /// Allowed browser origins; empty means any.
    pub allowed_origins: Vec<String>,
    /// `ws` or `wss`, for the how-to-connect hint.
    pub scheme: &'static str,
}

/// An HTTP error answer: status, one-line reason, optional extra header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: StatusCode,
    /// One line of explanation, sent as the body.
    pub reason: String,
    /// One extra header (e.g. `Upgrade: websocket` with 426).
    pub header: Option<(&'static str, String)>,
}

impl Rejection {
    /// A rejection without an extra header.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into(), header: None }
    }
}

/// Why a handshake did not produce a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The request was answered with an HTTP error.
    #[error("rejected with {} {}: {}", .0.status.as_u16(), .0.status.canonical_reason().unwrap_or(""), .0.reason)]
    Rejected(Rejection),
    /// The peer closed before sending a whole request head.
    #[error("peer closed before the request was complete")]
    PeerLeft,
    /// A socket error.
    #[error("i/o error during the handshake: {0}")]
    Io(#[from] io::Error),
}

/// Reads and answers the upgrade request; on success the socket speaks WebSocket.
pub async fn accept<S>(
    mut stream: S,
    policy: &Policy,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<S>, ClientParams), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let head_len = match read_head(&mut stream, &mut buf).await {
        Ok(n) => n,
        Err(HeadError::Io(e)) => return Err(e.into()),
        Err(HeadError::Eof) => return Err(HandshakeError::PeerLeft),
        Err(HeadError::TooLarge) => {
            let r = Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is larger than {MAX_HEAD} bytes"),
            );
            return Err(reject(stream, r).await);
        }
    };
    match check(&buf[..head_len], policy) {
        Ok((params, accept_key)) => {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            // Bytes after the head are the client's first frames (it did not wait for our 101).
            let tail = buf.split_off(head_len);
            drop(buf);
            let ws = WebSocketStream::from_partially_read(stream, tail, Role::Server, Some(config)).await;
            Ok((ws, params))
        }
        Err(r) => Err(reject(stream, r).await),
    }
}

enum HeadError {
    Io(io::Error),
    Eof,
    TooLarge,
}

/// Reads until the blank line that ends the head; returns the head's length (the buffer may
/// hold more).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
    loop {
        let searched = buf.len().saturating_sub(3);
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        // Straight into the Vec: a stack buffer here would be part of every connection's task.
        let n = stream.read_buf(buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        let crlf = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| searched + p + 4);
        // httparse also accepts bare LF line ends; without this such a head would wait for the
        // deadline instead of getting an answer.
        let lf = || buf[searched.saturating_sub(1)..].windows(2).position(|w| w == b"\n\n");
        if let Some(end) = crlf.or_else(|| lf().map(|p| searched.saturating_sub(1) + p + 2)) {
            // A head that arrived whole in one read is held to the same limit.
            return if end > MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(end) };
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Writes the error answer and closes our side; the returned error carries the rejection.
pub async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, r: Rejection) -> HandshakeError {
    let body = format!("{}\n", r.reason);
    let extra = r.header.as_ref().map(|(k, v)| format!("{k}: {v}\r\n")).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let written = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client still sends until it closes, so our close is a FIN after the
        // answer and not a reset that could destroy it; bounded by the handshake deadline.
        let mut sink = vec![0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    }
    .await;
    if let Err(e) = written {
        tracing::debug!(%e, "peer left before reading the rejection");
    }
    HandshakeError::Rejected(r)
}

/// Validates a complete request head: returns the client's parameters and the
/// `Sec-WebSocket-Accept` value, or the HTTP error to answer.
pub fn check(head: &[u8], policy: &Policy) -> Result<(ClientParams, String), Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let generic_hint = format!("connect with {}://HOST:PORT{}?specialKey=YOUR_KEY", policy.scheme, policy.path);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // httparse skips leading blank lines, so a head of nothing but line ends is "partial".
        Ok(httparse::Status::Partial) => {
            return Err(Rejection::new(StatusCode::BAD_REQUEST, format!("empty HTTP request: {generic_hint}")))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("not a valid HTTP request ({e}): {generic_hint}"),
            ))
        }
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let host = header("Host").unwrap_or("HOST:PORT");
    let hint = format!("connect with {}://{host}{}?specialKey=YOUR_KEY", policy.scheme, policy.path);

    if path != policy.path {
        return Err(Rejection::new(StatusCode::NOT_FOUND, format!("no WebSocket endpoint at {path}: {hint}")));
    }
    if req.method != Some("GET") {
        let mut r = Rejection::new(StatusCode::UPGRADE_REQUIRED, format!("only a GET upgrades: {hint}"));
        r.header = Some(("Upgrade", "websocket".into()));
        return Err(r);
    }
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.version != Some(1) || !has_token("Connection", "upgrade") || !has_token("Upgrade", "websocket") {
        let mut r = Rejection::new(StatusCode::UPGRADE_REQUIRED, format!("this is a WebSocket endpoint: {hint}"));
        r.header = Some(("Upgrade", "websocket".into()));
        return Err(r);
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        let mut r =
            Rejection::new(StatusCode::UPGRADE_REQUIRED, format!("only WebSocket version 13 is supported: {hint}"));
        r.header = Some(("Sec-WebSocket-Version", "13".into()));
        return Err(r);
    }
    let key = header("Sec-WebSocket-Key")
        .filter(|k| k.len() == 24 && k.ends_with("=="))
        .ok_or_else(|| Rejection::new(StatusCode::BAD_REQUEST, "missing or malformed Sec-WebSocket-Key"))?;
    if !policy.allowed_origins.is_empty() {
        if let Some(origin) = header("Origin") {
            if !policy.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(Rejection::new(StatusCode::FORBIDDEN, format!("origin {origin} is not allowed")));
            }
        }
    }
    let params = parse_query(query).map_err(|reason| Rejection::new(StatusCode::BAD_REQUEST, reason))?;
    Ok((params, derive_accept_key(key.as_bytes())))
}

/// Reads `specialKey` and `support_gzip` from a query string; other parameters are ignored (the
/// Go server ignored them too). The error is the one-line reason for the 400.
///
/// ```
/// use wscast::upgrade::parse_query;
/// let p = parse_query("specialKey=caf%C3%A9+bar&support_gzip=1&t=1").unwrap();
/// assert_eq!((&*p.key, p.gzip), ("caf\u{e9} bar", true));
/// assert!(parse_query("support_gzip=1").unwrap_err().contains("specialKey is required"));
/// ```
pub fn parse_query(query: &str) -> Result<ClientParams, String> {
    let mut key: Option<String> = None;
    let mut gzip: Option<bool> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "specialKey" => {
                if key.is_some() {
                    return Err("specialKey is given more than once".into());
                }
                key = Some(decode(value).map_err(|e| format!("specialKey {e}"))?);
            }
            "support_gzip" => {
                if gzip.is_some() {
                    return Err("support_gzip is given more than once".into());
                }
                gzip = Some(match value {
                    "1" => true,
                    "0" => false,
                    other => return Err(format!("support_gzip must be 1 or 0, not {other:?}")),
                });
            }
            _ => {}
        }
    }
    let key = key.ok_or("specialKey is required: add ?specialKey=YOUR_KEY to the URL")?;
    if key.is_empty() {
        return Err("specialKey must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("specialKey is {} bytes; at most {MAX_KEY_LEN} are allowed", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("specialKey must not contain control characters".into());
    }
    Ok(ClientParams { key: key.into_boxed_str(), gzip: gzip.unwrap_or(false) })
}

/// Percent-decodes a query value, `+` meaning space as in Go's `url.ParseQuery`.
fn decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' && !(bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
            return Err("has a bad percent-escape");
        }
    }
    let spaced: Cow<'_, str> = if raw.contains('+') { raw.replace('+', " ").into() } else { raw.into() };
    percent_decode(spaced.as_bytes())
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| "is not UTF-8 after percent-decoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_table() {
        let ok = |key: &str, gzip| Ok(ClientParams { key: key.into(), gzip });
        let long = "k".repeat(MAX_KEY_LEN);
        let too_long = format!("specialKey={}", "k".repeat(MAX_KEY_LEN + 1));
        let cases: Vec<(&str, Result<ClientParams, &str>)> = vec![
            ("specialKey=alice", ok("alice", false)),
            ("specialKey=alice&support_gzip=1", ok("alice", true)),
            ("support_gzip=0&specialKey=bob", ok("bob", false)),
            ("specialKey=a%20b", ok("a b", false)),
            ("specialKey=a+b", ok("a b", false)),
            ("specialKey=%E2%9C%93", ok("\u{2713}", false)),
            ("specialKey=x&other=1&t=123", ok("x", false)),
            ("", Err("specialKey is required")),
            ("support_gzip=1", Err("specialKey is required")),
            ("specialKey=", Err("must not be empty")),
            ("specialKey", Err("must not be empty")),
            (&too_long, Err("at most 256")),
            ("specialKey=a&specialKey=b", Err("more than once")),
            ("specialKey=a%zz", Err("bad percent-escape")),
            ("specialKey=a%4", Err("bad percent-escape")),
            ("specialKey=%FF%FE", Err("not UTF-8")),
            ("specialKey=a%0Ab", Err("control characters")),
            ("specialKey=a&support_gzip=yes", Err("must be 1 or 0")),
            ("specialKey=a&support_gzip=", Err("must be 1 or 0")),
            ("specialKey=a&support_gzip=1&support_gzip=1", Err("more than once")),
        ];
        for (query, expected) in cases {
            match (parse_query(query), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{query}: {got:?} lacks {want:?}"),
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(parse_query(&format!("specialKey={long}")).unwrap().key.len(), MAX_KEY_LEN);
    }

    fn policy(origins: &[&str]) -> Policy {
        Policy { path: "/".into(), allowed_origins: origins.iter().map(|s| s.to_string()).collect(), scheme: "ws" }
    }

    fn request(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: h:1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn head_table() {
        let status = |head: &[u8], p: &Policy| check(head, p).map(|_| 101).unwrap_or_else(|r| r.status.as_u16());
        let any = policy(&[]);
        let strict = policy(&["https://app.example"]);
        assert_eq!(status(&request("/?specialKey=a", ""), &any), 101);
        let (_, accept) = check(&request("/?specialKey=a", ""), &any).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 sample");
        assert_eq!(status(&request("/chat?specialKey=a", ""), &any), 404);
        assert_eq!(status(&request("/?support_gzip=1", ""), &any), 400);
        assert_eq!(status(b"GET /?specialKey=a HTTP/1.1\r\nHost: h\r\n\r\n", &any), 426);
        assert_eq!(status(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n", &any), 426);
        assert_eq!(status(b"\r\n\r\n", &any), 400, "only line ends: partial for httparse");
        assert_eq!(status(b"GET / HTTP/1.0\n\n", &any), 426, "bare LF line ends parse");
        assert_eq!(status(b"\x16\x03\x01 garbage\r\n\r\n", &any), 400);
        let old = String::from_utf8(request("/?specialKey=a", "")).unwrap().replace("Version: 13", "Version: 8");
        assert_eq!(status(old.as_bytes(), &any), 426);
        assert_eq!(status(&request("/?specialKey=a", "Origin: https://evil.example\r\n"), &strict), 403);
        assert_eq!(status(&request("/?specialKey=a", "Origin: https://app.example\r\n"), &strict), 101);
        assert_eq!(status(&request("/?specialKey=a", ""), &strict), 101, "no Origin: not a browser");
        let r = check(b"GET / HTTP/1.1\r\nHost: example:8888\r\n\r\n", &any).unwrap_err();
        assert!(r.reason.contains("ws://example:8888/?specialKey="), "{}", r.reason);
    }
}
