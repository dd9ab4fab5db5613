//! The admin listener: plain HTTP/1.1 (hyper) on loopback or a private network, for operators
//! load balancers and the application's backend: `/healthz`, `/readyz`, `/metrics`, and the
//! token-protected API of [`crate::api`]. It keeps answering through the drain, until the
//! process exits.
//!
//! The router is a plain `match` on method and path, as in linkerd2-proxy's admin server.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::state::Context;

/// Admin connections served at once; more wait in the kernel's queue.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` reports: ready once the daemon has told systemd READY=1, and not any more
/// from the first moment of a drain.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the daemon ready (after READY=1).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// What the routes read.
#[derive(Debug)]
pub struct AdminState {
    /// The readiness latch.
    pub health: Health,
    /// The daemon's shared state.
    pub ctx: Arc<Context>,
    /// The bearer token of `/v1/*`, if one is configured.
    pub token: Option<String>,
    /// This node's name in API answers (the host name).
    pub node: String,
    /// The public listener's URL, prefilled in the demo page (`ws://127.0.0.1:8888`).
    pub public_url: String,
    /// `http://` and the first admin address, for the demo page's hint on minting tokens.
    pub admin_url: String,
    /// A CPU profile is being taken (one at a time).
    pub profiling: AtomicBool,
}

/// The demo page: self-contained (no CDN, no build step), a small chat against the public
/// listener with gzip on or off.
const DEMO_PAGE: &str = include_str!("admin_page/demo.html");

/// Why the admin token cannot be used; names the file.
#[derive(Debug, thiserror::Error)]
#[error("admin.token_file = {path:?} is not usable: {problem}")]
pub struct TokenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub problem: String,
}

/// The admin token: `admin.token_file`, else systemd's credential `admin-token`, else none. A
/// trailing line end is not part of it; a file anyone may read is refused.
pub fn load_token(token_file: &Path) -> Result<Option<String>, TokenError> {
    let path = if token_file.as_os_str().is_empty() {
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if Path::new(&dir).join("admin-token").exists() => Path::new(&dir).join("admin-token"),
            _ => return Ok(None),
        }
    } else {
        token_file.to_path_buf()
    };
    let problem = |problem: String| TokenError { path: path.clone(), problem };
    let meta = std::fs::metadata(&path).map_err(|e| problem(e.to_string()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(problem("it is readable by everyone; chmod o-r it (0640 root:wscast)".into()));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| problem(e.to_string()))?;
    let token = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(problem("the token must be one non-empty line without spaces".into()));
    }
    Ok(Some(token.to_string()))
}

/// The host name, for API answers.
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Binds one admin socket.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    crate::listener::bind(addr)
}

/// Serves admin requests on `listener` until the process exits.
pub async fn run(listener: TcpListener, state: Arc<AdminState>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(%e, "admin accept failed");
                // EMFILE and the like: the public listener's backoff is the one that matters.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                debug!(%e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn route(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let path = req.uri().path();
    if path.starts_with("/v1/") || path.starts_with("/debug/") {
        if let Some(refused) = refusal(&req, state) {
            return refused;
        }
        return crate::api::handle(req, state).await;
    }
    match req.uri().path() {
        "/" if get => demo(state),
        "/healthz" if get => text(StatusCode::OK, "ok"),
        "/readyz" if get => readiness(state),
        "/metrics" if get => metrics(state),
        "/" | "/healthz" | "/readyz" | "/metrics" => method_not_allowed("GET, HEAD"),
        other => error(StatusCode::NOT_FOUND, &format!("no admin route {other}; try /healthz, /readyz or /metrics")),
    }
}

/// The answer to a request without the right bearer token (compared in constant time), or
/// `None` when it may pass. A wrong token never reaches the Hub.
fn refusal(req: &Request<Incoming>, state: &AdminState) -> Option<Response<Full<Bytes>>> {
    let Some(expected) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "no admin token is configured: set admin.token_file (the package makes /etc/wscast/admin-token)",
        ));
    };
    let given = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => None,
        _ => {
            let mut r =
                error(StatusCode::UNAUTHORIZED, "a valid Authorization: Bearer <admin token> header is required");
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
    }
}

fn readiness(state: &AdminState) -> Response<Full<Bytes>> {
    if state.ctx.shutdown.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !state.health.ready.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    // Still ready without Redis (local clients are served); the body says so.
    match state.ctx.hub.link() {
        Some(_) if state.ctx.metrics.broker.up.get() == 0 => {
            text(StatusCode::OK, "ready\ncluster: Redis unreachable, serving local clients only")
        }
        Some(_) => text(StatusCode::OK, "ready\ncluster: connected"),
        None => text(StatusCode::OK, "ready"),
    }
}

fn demo(state: &AdminState) -> Response<Full<Bytes>> {
    let auth = if state.ctx.live.borrow().tokens.required() { "jwt" } else { "none" };
    let admin = state.admin_url.as_str();
    let page = DEMO_PAGE
        .replace("__WSCAST_URL__", &state.public_url)
        .replace("__WSCAST_AUTH__", auth)
        .replace("__WSCAST_ADMIN__", admin);
    let mut r = Response::new(Full::new(Bytes::from(page)));
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Its own inline script and style, WebSockets anywhere; nothing else is loaded.
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src ws: wss:",
        ),
    );
    r
}

fn metrics(state: &AdminState) -> Response<Full<Bytes>> {
    // Derived at scrape time from the hub's own count, rather than counted twice.
    state.ctx.metrics.gzip_connections.set(state.ctx.hub.gzip_len() as i64);
    if let Some(link) = state.ctx.hub.link() {
        state.ctx.metrics.broker.outbox.set(link.outbox.len() as i64);
        state.ctx.metrics.broker.nodes.set(link.nodes.live().len().max(1) as i64);
    }
    let mut r = Response::new(Full::new(Bytes::from(state.ctx.metrics.render())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// `{"error": "..."}` with `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, serde_json::json!({ "error": message }))
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("this route takes {allow}"));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}
