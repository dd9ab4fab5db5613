//! The HTTP upgrade: read the request head, validate path, query and origin, answer 101 or an
//! HTTP error with a one-line reason.
//!
//! We parse the head ourselves (httparse) so that every request, a plain GET included, gets an
//! answer; after our 101 the socket belongs to the connection's own reader and writer.

use std::borrow::Cow;
use std::io;

use percent_encoding::percent_decode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::StatusCode;

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
    /// Its connection token (`token=` or `Authorization: Bearer`), if it sent one.
    pub token: Option<Token>,
}

/// A connection token as the client sent it. It prints as `Token(..)`: whatever logs a request's
/// parameters never writes a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Box<str>);

impl Token {
    /// The token's text, for the verifier only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
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

    /// The `reason` label of `wscast_handshakes_rejected_total` for this answer.
    pub fn metric_reason(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::FORBIDDEN => "origin",
            StatusCode::UPGRADE_REQUIRED => "not_websocket",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "limit",
            StatusCode::UNAUTHORIZED => "token",
            _ => "bad_request",
        }
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

/// A WebSocket connection right after our 101.
#[derive(Debug)]
pub struct Upgraded<S, T> {
    /// The socket, now speaking WebSocket.
    pub stream: S,
    /// Bytes the client sent after its head (its first frames, if it did not wait for our 101).
    pub tail: Vec<u8>,
    /// What the client asked for.
    pub params: ClientParams,
    /// What `admit` returned.
    pub admitted: T,
}

/// Longest a refusal (503) may take to write before the socket is closed: a refused client must
/// not keep its place.
const REFUSAL_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and answers the upgrade request. `admit` runs once the head is complete and valid, just
/// before the 101; its error is answered at once and the socket closed without lingering.
pub async fn accept<S, T>(
    mut stream: S,
    policy: &Policy,
    admit: impl FnOnce(&ClientParams) -> Result<T, Rejection>,
) -> Result<Upgraded<S, T>, HandshakeError>
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
        Err(HeadError::NotHttp(first)) => return Err(reject(stream, not_http(first, policy)).await),
    };
    let (params, accept_key) = match check(&buf[..head_len], policy) {
        Ok(pair) => pair,
        Err(r) => return Err(reject(stream, r).await),
    };
    let admitted = match admit(&params) {
        Ok(a) => a,
        Err(r) => return Err(refuse(stream, r).await),
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    let tail = buf.split_off(head_len);
    Ok(Upgraded { stream, tail, params, admitted })
}

/// The answer to bytes that cannot start an HTTP request, given at once instead of waiting for a
/// head that will never end.
fn not_http(first: u8, policy: &Policy) -> Rejection {
    let hint = format!("connect with {}://HOST:PORT{}?specialKey=YOUR_KEY", policy.scheme, policy.path);
    let reason = if first == TLS_HANDSHAKE {
        format!("this port speaks plain HTTP, but a TLS handshake arrived: {hint}")
    } else {
        format!("not an HTTP request: {hint}")
    };
    Rejection::new(StatusCode::BAD_REQUEST, reason)
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

enum HeadError {
    Io(io::Error),
    Eof,
    TooLarge,
    /// The first byte cannot begin a request line.
    NotHttp(u8),
}

/// Reads until the blank line that ends the head; returns the head's length (the buffer may
/// hold more).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<usize, HeadError> {
    loop {
        let searched = buf.len().saturating_sub(2);
        if buf.capacity() == buf.len() {
            buf.reserve(1024);
        }
        // Straight into the Vec: a stack buffer here would be part of every connection's task.
        let n = stream.read_buf(buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        // httparse skips blank lines before the request line; anything else must be a token.
        if let Some(&first) = buf.iter().find(|b| !matches!(b, b'\r' | b'\n')) {
            if !is_token_byte(first) {
                return Err(HeadError::NotHttp(first));
            }
        }
        // Blank lines before the request line are skipped, as httparse does; a buffer of
        // nothing but line ends is answered (400) rather than waited on.
        let leading = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        let from = if leading < buf.len() { searched.max(leading) } else { searched };
        if let Some(end) = head_end(buf, from) {
            // A head that arrived whole in one read is held to the same limit.
            return if end > MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(end) };
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends: after the first empty line, searching from `from`. Lines may end in CRLF
/// or in a bare LF, as httparse accepts, so an empty line is `\n\n` or `\n\r\n`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// An HTTP token character (RFC 9110 tchar), the only bytes a method may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes the error answer and closes our side; the returned error carries the rejection. The
/// client may still be sending (a body, early frames): we read until it closes, bounded by the
/// caller's deadline, so our close is a FIN after the answer and not a reset that destroys it.
pub async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, r: Rejection) -> HandshakeError {
    let answered = async {
        answer(&mut stream, &r).await?;
        let mut sink = vec![0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    }
    .await;
    if let Err(e) = answered {
        tracing::debug!(%e, "peer left before reading the rejection");
    }
    HandshakeError::Rejected(r)
}

/// Like [`reject`], but closes as soon as the answer is written (within [`REFUSAL_BOUND`]):
/// a refused connection must free its place at once. Its head was read whole, so the close is
/// a FIN, not a reset.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, r: Rejection) -> HandshakeError {
    match tokio::time::timeout(REFUSAL_BOUND, answer(&mut stream, &r)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%e, "peer left before reading the refusal"),
        Err(_) => tracing::debug!("refusal not written in time, closing"),
    }
    HandshakeError::Rejected(r)
}

/// Writes `r` as an HTTP response and shuts our side down.
async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, r: &Rejection) -> io::Result<()> {
    let body = format!("{}\n", r.reason);
    let extra = r.header.as_ref().map(|(k, v)| format!("{k}: {v}\r\n")).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
    let target = origin_form(req.path.unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = if path.is_empty() { "/" } else { path };
    let lines = |name: &'static str| req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    let header = |name: &'static str| lines(name).next().and_then(|h| std::str::from_utf8(h.value).ok());
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host.
    if req.version == Some(1) && lines("Host").count() != 1 {
        let problem = if header("Host").is_none() { "has no Host header" } else { "has more than one Host header" };
        return Err(Rejection::new(StatusCode::BAD_REQUEST, format!("the request {problem}: {generic_hint}")));
    }
    let host = header("Host").unwrap_or("HOST:PORT");
    let hint = format!("connect with {}://{host}{}?specialKey=YOUR_KEY", policy.scheme, policy.path);

    if path != policy.path {
        return Err(Rejection::new(StatusCode::NOT_FOUND, format!("no WebSocket endpoint at {path}: {hint}")));
    }
    let key = upgrade_headers(&req, &hint)?;
    if !policy.allowed_origins.is_empty() {
        if let Some(origin) = header("Origin") {
            if !policy.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                return Err(Rejection::new(StatusCode::FORBIDDEN, format!("origin {origin} is not allowed")));
            }
        }
    }
    let mut params = parse_query(query).map_err(|reason| Rejection::new(StatusCode::BAD_REQUEST, reason))?;
    if let Some(bearer) = bearer(&req) {
        if params.token.is_some() {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "the token is given twice: send it as token= in the URL or in an Authorization header, not both",
            ));
        }
        params.token = Some(Token(bearer.into()));
    }
    Ok((params, derive_accept_key(key.as_bytes())))
}

/// The headers that make a GET a WebSocket upgrade (RFC 6455 4.2.1); returns the client's key.
fn upgrade_headers<'h>(req: &httparse::Request<'_, 'h>, hint: &str) -> Result<&'h str, Rejection> {
    let lines = |name: &'static str| req.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    let header = |name: &'static str| lines(name).next().and_then(|h| std::str::from_utf8(h.value).ok());
    if req.method != Some("GET") {
        let mut r = Rejection::new(StatusCode::UPGRADE_REQUIRED, format!("only a GET upgrades: {hint}"));
        r.header = Some(("Upgrade", "websocket".into()));
        return Err(r);
    }
    // A list-valued header may be split over several lines; they combine (RFC 9110 5.3).
    let has_token = |name: &'static str, token: &str| {
        lines(name)
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
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
    // RFC 6455 4.2.1: one key, the base64 of 16 bytes.
    header("Sec-WebSocket-Key").filter(|k| lines("Sec-WebSocket-Key").count() == 1 && is_websocket_key(k)).ok_or_else(
        || Rejection::new(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be given once, as the base64 of 16 bytes"),
    )
}

/// The token of an `Authorization: Bearer` header (RFC 6750 2.1), if there is one. Other schemes
/// (a proxy's Basic credentials) are not ours and are ignored.
fn bearer<'h>(req: &httparse::Request<'_, 'h>) -> Option<&'h str> {
    let value = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("Authorization"))?.value;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}

/// The origin form (`/path?query`) of a request target; the absolute form
/// (`http://host/path?query`, RFC 9112 3.2.2) is one a server must accept too.
fn origin_form(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else { return target };
    if !["http", "https", "ws", "wss"].iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return target;
    }
    // `http://host` and `http://host?q` have an empty path, which means `/`.
    rest.find(['/', '?']).map_or("/", |i| &rest[i..])
}

/// A `Sec-WebSocket-Key`: canonical base64 of exactly 16 bytes.
fn is_websocket_key(key: &str) -> bool {
    data_encoding::BASE64.decode(key.as_bytes()).is_ok_and(|k| k.len() == 16)
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
    let mut token: Option<Token> = None;
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
            "token" => {
                if token.is_some() {
                    return Err("token is given more than once".into());
                }
                token = Some(Token(decode(value).map_err(|e| format!("token {e}"))?.into_boxed_str()));
            }
            _ => {}
        }
    }
    let key = key.ok_or("specialKey is required: add ?specialKey=YOUR_KEY to the URL")?;
    check_key(&key)?;
    Ok(ClientParams { key: key.into_boxed_str(), gzip: gzip.unwrap_or(false), token })
}

/// The rules of a `specialKey` (also for the keys the admin API mints tokens for).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("specialKey must not be empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("specialKey is {} bytes; at most {MAX_KEY_LEN} are allowed", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("specialKey must not contain control characters".into());
    }
    Ok(())
}

/// Percent-decodes a query value, `+` meaning space as in Go's `url.ParseQuery`.
pub(crate) fn decode(raw: &str) -> Result<String, &'static str> {
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
        let ok = |key: &str, gzip| Ok(ClientParams { key: key.into(), gzip, token: None });
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
            ("specialKey=a&token=x&token=y", Err("token is given more than once")),
            ("specialKey=a&token=%zz", Err("token has a bad percent-escape")),
        ];
        for (query, expected) in cases {
            match (parse_query(query), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{query}: {got:?} lacks {want:?}"),
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(parse_query(&format!("specialKey={long}")).unwrap().key.len(), MAX_KEY_LEN);
        let with_token = parse_query("specialKey=a&token=h.p.s").unwrap();
        assert_eq!(with_token.token.as_ref().map(Token::expose), Some("h.p.s"));
        assert_eq!(format!("{with_token:?}").matches("h.p.s").count(), 0, "a token never prints");
    }

    #[test]
    fn the_token_comes_from_the_query_or_a_bearer_header_but_not_both() {
        let any = policy(&[]);
        let token = |head: &[u8]| check(head, &any).map(|(p, _)| p.token.map(|t| t.expose().to_string()));
        assert_eq!(token(&request("/?specialKey=a&token=q.q.q", "")), Ok(Some("q.q.q".into())));
        assert_eq!(token(&request("/?specialKey=a", "Authorization: Bearer h.h.h\r\n")), Ok(Some("h.h.h".into())));
        assert_eq!(token(&request("/?specialKey=a", "authorization: bearer  h.h.h \r\n")), Ok(Some("h.h.h".into())));
        assert_eq!(token(&request("/?specialKey=a", "Authorization: Basic dTpw\r\n")), Ok(None), "not ours");
        let both = check(&request("/?specialKey=a&token=q.q.q", "Authorization: Bearer h.h.h\r\n"), &any);
        assert!(both.unwrap_err().reason.contains("given twice"));
    }

    #[test]
    fn head_end_agrees_with_httparse_on_line_ends() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: h\n\n",
            b"GET / HTTP/1.1\nHost: h\n\r\n",
        ] {
            let end = head_end(head, 0).expect("an end");
            assert_eq!(end, head.len(), "{:?}", String::from_utf8_lossy(head));
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut headers).parse(head).unwrap();
            assert_eq!(parsed, httparse::Status::Complete(end), "the parser ends where we do");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: h\r\n", 0), None);
        assert!(is_token_byte(b'G') && !is_token_byte(TLS_HANDSHAKE) && !is_token_byte(b' '));
    }

    #[tokio::test]
    async fn blank_lines_before_the_request_line_are_skipped_like_httparse_does() {
        let whole: &[u8] = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (mut input, mut buf) = (whole, Vec::new());
        assert_eq!(read_head(&mut input, &mut buf).await.ok(), Some(whole.len()));
        // Nothing but line ends is answered at once, not waited on.
        let (mut input, mut buf) = (&b"\r\n\r\n"[..], Vec::new());
        assert_eq!(read_head(&mut input, &mut buf).await.ok(), Some(4));
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
        // RFC 6455 / RFC 9112 strictness.
        let base = String::from_utf8(request("/?specialKey=a", "")).unwrap();
        let dup_key = base.replace("\r\n\r\n", "\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n");
        assert_eq!(status(dup_key.as_bytes(), &any), 400, "two Sec-WebSocket-Keys");
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZ===",
            "dGhlIHNhbXBsZSBub25jZR==",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let other = base.replace("dGhlIHNhbXBsZSBub25jZQ==", bad);
            assert_eq!(status(other.as_bytes(), &any), 400, "key {bad}");
        }
        let no_host = base.replace("Host: h:1\r\n", "");
        assert_eq!(status(no_host.as_bytes(), &any), 400, "HTTP/1.1 without Host");
        let two_hosts = base.replace("Host: h:1\r\n", "Host: h:1\r\nHost: h:2\r\n");
        assert_eq!(status(two_hosts.as_bytes(), &any), 400, "two Hosts");
        assert_eq!(status(&request("http://h:1/?specialKey=a", ""), &any), 101, "absolute form");
        assert_eq!(status(&request("HTTP://h:1?specialKey=a", ""), &any), 101, "absolute form, empty path");
        assert_eq!(status(&request("http://h:1/chat?specialKey=a", ""), &any), 404);
        let split =
            base.replace("Connection: keep-alive, Upgrade\r\n", "Connection: keep-alive\r\nConnection: Upgrade\r\n");
        assert_eq!(status(split.as_bytes(), &any), 101, "Connection over two lines");
        let r = check(b"GET / HTTP/1.1\r\nHost: example:8888\r\n\r\n", &any).unwrap_err();
        assert!(r.reason.contains("ws://example:8888/?specialKey="), "{}", r.reason);
    }
}
