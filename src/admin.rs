//! The admin listener: plain HTTP/1.1 (hyper) on loopback or a private network, for operators
//! and load balancers: `/healthz`, `/readyz` and `/metrics`. It keeps answering through the
//! drain, until the process exits.
//!
//! The router is a plain `match` on method and path, as in linkerd2-proxy's admin server.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
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
                async move { Ok::<_, Infallible>(route(&req, &state)) }
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

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/healthz" if get => text(StatusCode::OK, "ok"),
        "/readyz" if get => readiness(state),
        "/metrics" if get => metrics(state),
        "/healthz" | "/readyz" | "/metrics" => method_not_allowed("GET, HEAD"),
        other => error(StatusCode::NOT_FOUND, &format!("no admin route {other}; try /healthz, /readyz or /metrics")),
    }
}

fn readiness(state: &AdminState) -> Response<Full<Bytes>> {
    if state.ctx.shutdown.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !state.health.ready.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting");
    }
    text(StatusCode::OK, "ready")
}

fn metrics(state: &AdminState) -> Response<Full<Bytes>> {
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
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = format!("{}\n", serde_json::json!({ "error": message }));
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("this route takes {allow}"));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}
