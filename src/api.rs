//! The admin API (`/v1/*`), for the application's backend: publish to everyone, send to one
//! key, kick a key, look a key up, counts; and `/debug/clients` for operators. Everything goes through the Hub, exactly as a
//! client's message does; the bearer token was checked before a request gets here.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::json;
use std::sync::atomic::Ordering;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::admin::{error, json_response, method_not_allowed, AdminState};
use crate::cluster::NodeStats;
use crate::ending::Code;
use crate::hub::Location;

type Answer = Response<Full<Bytes>>;

/// Answers one `/v1/` request.
pub async fn handle(req: Request<Incoming>, state: &AdminState) -> Answer {
    let segments: Option<Vec<String>> = req.uri().path().split('/').skip(1).map(segment).collect();
    let Some(segments) = segments else {
        return error(StatusCode::BAD_REQUEST, "the path is not UTF-8 after percent-decoding");
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["v1", "publish"]) => publish(req, state).await,
        (_, ["v1", "publish"]) => method_not_allowed("POST"),
        (Method::POST, ["v1", "clients", key, "send"]) => {
            let key = key.to_string();
            send(req, state, &key).await
        }
        (_, ["v1", "clients", _, "send"]) => method_not_allowed("POST"),
        (Method::GET, ["v1", "clients", key]) => client(state, key).await,
        (Method::DELETE, ["v1", "clients", key]) => kick(&req, state, key).await,
        (_, ["v1", "clients", _]) => method_not_allowed("GET, DELETE"),
        (Method::POST, ["v1", "tokens"]) => mint(req, state).await,
        (_, ["v1", "tokens"]) => method_not_allowed("POST"),
        (Method::GET, ["v1", "stats"]) => stats(state),
        (_, ["v1", "stats"]) => method_not_allowed("GET"),
        (Method::GET, ["debug", "clients"]) => debug_clients(state),
        (Method::GET, ["debug", "pprof", "profile"]) => profile(&req, state).await,
        (_, ["debug", "pprof", "profile"]) => method_not_allowed("GET"),
        (_, ["debug", "clients"]) => method_not_allowed("GET"),
        _ => error(StatusCode::NOT_FOUND, &format!("no admin API route {}", req.uri().path())),
    }
}

/// A percent-decoded path segment: a key may hold `/` (as `%2F`), spaces and UTF-8.
fn segment(raw: &str) -> Option<String> {
    percent_decode_str(raw).decode_utf8().ok().map(|s| s.into_owned())
}

async fn publish(req: Request<Incoming>, state: &AdminState) -> Answer {
    let text = match text_body(req, state).await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    // Held while publishing, like a client's reader: the drain waits for it, so a message
    // answered with 202 is delivered before anyone gets 1001.
    let _accepting = state.ctx.shutdown.reader_guard();
    if state.ctx.shutdown.reading_has_stopped() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is draining: nothing is accepted any more");
    }
    state.ctx.metrics.messages_received.inc();
    let clients = state.ctx.hub.publish(text);
    json_response(StatusCode::ACCEPTED, json!({ "clients": clients }))
}

async fn send(req: Request<Incoming>, state: &AdminState, key: &str) -> Answer {
    let text = match text_body(req, state).await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let hub = &state.ctx.hub;
    if hub.send_to(key, text.clone()) {
        return json_response(StatusCode::ACCEPTED, json!({ "key": key, "node": state.node }));
    }
    match hub.locate(key).await {
        Location::Node(node) => {
            hub.send_elsewhere(key, &text);
            json_response(StatusCode::ACCEPTED, json!({ "key": key, "node": node }))
        }
        // Connected here after all (it joined meanwhile): deliver it here.
        Location::Here(_) if hub.send_to(key, text) => {
            json_response(StatusCode::ACCEPTED, json!({ "key": key, "node": state.node }))
        }
        _ => not_connected(key),
    }
}

fn not_connected(key: &str) -> Answer {
    error(StatusCode::NOT_FOUND, &format!("no client with key {key:?} is connected"))
}

async fn client(state: &AdminState, key: &str) -> Answer {
    let info = match state.ctx.hub.locate(key).await {
        Location::Here(info) => info,
        // Another node's details stay there: which node it is, is what this one knows.
        Location::Node(node) => return json_response(StatusCode::OK, json!({ "key": key, "node": node })),
        Location::Nowhere => return not_connected(key),
    };
    json_response(
        StatusCode::OK,
        json!({
            "key": key,
            "node": state.node,
            "peer": info.peer.to_string(),
            "gzip": info.gzip,
            "tls": info.tls,
            "connected_at": humantime::format_rfc3339_seconds(info.connected_at).to_string(),
            "token_expires_at": (info.expires != 0).then_some(info.expires),
        }),
    )
}

async fn kick(req: &Request<Incoming>, state: &AdminState, key: &str) -> Answer {
    let (mut code, mut reason) = (Code::Kicked, None);
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Ok(value) = crate::upgrade::decode(value) else {
            return error(StatusCode::BAD_REQUEST, &format!("{name} has a bad percent-escape"));
        };
        match name {
            "code" => match value.parse().ok().and_then(Code::for_kick) {
                Some(c) => code = c,
                None => return error(StatusCode::BAD_REQUEST, &format!("code must be 4000 to 4999, not {value:?}")),
            },
            "reason" => reason = Some(value),
            _ => {}
        }
    }
    let reason = reason.unwrap_or_else(|| Code::Kicked.reason().to_string());
    let hub = &state.ctx.hub;
    if hub.kick(key, code, &reason) {
        return json_response(StatusCode::ACCEPTED, json!({ "key": key, "code": code.as_u16(), "node": state.node }));
    }
    match hub.locate(key).await {
        Location::Node(node) => {
            hub.kick_elsewhere(key, code, &reason);
            json_response(StatusCode::ACCEPTED, json!({ "key": key, "code": code.as_u16(), "node": node }))
        }
        Location::Here(_) if hub.kick(key, code, &reason) => {
            json_response(StatusCode::ACCEPTED, json!({ "key": key, "code": code.as_u16(), "node": state.node }))
        }
        _ => not_connected(key),
    }
}

/// One JSON object per line and per local connection, for a quick look with `grep` or `jq`.
fn debug_clients(state: &AdminState) -> Answer {
    let now = std::time::SystemTime::now();
    let mut lines = String::new();
    state.ctx.hub.for_each_client(|key, info, queued| {
        let age = now.duration_since(info.connected_at).unwrap_or_default().as_secs();
        let line = json!({ "key": key, "peer": info.peer.to_string(), "gzip": info.gzip, "tls": info.tls,
                           "queued": queued, "age_seconds": age });
        lines.push_str(&format!("{line}\n"));
    });
    let mut r = Response::new(Full::new(Bytes::from(lines)));
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/x-ndjson"));
    r
}

/// The longest CPU profile one request may ask for.
const MAX_PROFILE_SECONDS: u64 = 60;

/// A CPU profile of `?seconds=N` (default 10, at most 60) in pprof's protobuf format, readable
/// by `go tool pprof` and `pprof`; one at a time (409 while one is being taken).
async fn profile(req: &Request<Incoming>, state: &AdminState) -> Answer {
    let mut seconds = 10;
    for pair in req.uri().query().unwrap_or("").split('&') {
        if let Some(value) = pair.strip_prefix("seconds=") {
            match value.parse() {
                Ok(n) if (1..=MAX_PROFILE_SECONDS).contains(&n) => seconds = n,
                _ => {
                    let reason = format!("seconds must be 1 to {MAX_PROFILE_SECONDS}, not {value:?}");
                    return error(StatusCode::BAD_REQUEST, &reason);
                }
            }
        }
    }
    if state.profiling.swap(true, Ordering::AcqRel) {
        return error(StatusCode::CONFLICT, "a profile is already being taken; try again when it is done");
    }
    let taken = take_profile(seconds).await;
    state.profiling.store(false, Ordering::Release);
    match taken {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/octet-stream"));
            r
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the profile could not be taken: {e}")),
    }
}

async fn take_profile(seconds: u64) -> Result<Vec<u8>, pprof::Error> {
    // 99 Hz, as Go's profiler: enough samples in seconds, negligible cost.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let profile = guard.report().build()?.pprof()?;
    Ok(prost::Message::encode_to_vec(&profile))
}

/// What `POST /v1/tokens` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    key: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// The lifetime of a minted token when the request names none.
const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Mints a connection token for a key, signed with the configured HMAC secret: for backends
/// without a JWT library. The token is in the answer only, never in a log.
async fn mint(req: Request<Incoming>, state: &AdminState) -> Answer {
    if let Some(kind) = req.headers().get(CONTENT_TYPE) {
        if !kind.to_str().is_ok_and(|k| k.trim_start().to_ascii_lowercase().starts_with("application/json")) {
            let kind = String::from_utf8_lossy(kind.as_bytes());
            let why = format!(
                "the body must be application/json, not {kind}; with curl: -H 'Content-Type: application/json'"
            );
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &why);
        }
    }
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "the request is over 4096 bytes")
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body could not be read: {e}")),
    };
    let asked: MintRequest = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, &format!("the body must be {{\"key\": ..., \"ttl\": \"5m\"}}: {e}"))
        }
    };
    if let Err(why) = crate::upgrade::check_key(&asked.key) {
        return error(StatusCode::BAD_REQUEST, &why);
    }
    let ttl = match asked.ttl.as_deref().map(humantime::parse_duration).transpose() {
        Ok(ttl) => ttl.unwrap_or(DEFAULT_TTL),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("ttl must be a duration like \"5m\": {e}")),
    };
    if ttl < std::time::Duration::from_secs(1) || ttl > crate::token::MAX_TTL {
        return error(StatusCode::BAD_REQUEST, "ttl must be 1s to 24h");
    }
    let tokens = state.ctx.live.borrow().tokens.clone();
    match tokens.mint(&asked.key, ttl) {
        Ok(m) => json_response(
            StatusCode::OK,
            json!({ "token": m.token, "key": asked.key, "expires_at": m.expires, "kid": m.kid }),
        ),
        Err(e @ crate::token::MintError::NoSecret) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn stats(state: &AdminState) -> Answer {
    let hub = &state.ctx.hub;
    let m = &state.ctx.metrics;
    let here = NodeStats {
        node: state.node.clone(),
        clients: hub.len() as u64,
        gzip_clients: hub.gzip_len() as u64,
        connections_accepted: m.accepted.get(),
        messages_received: m.messages_received.get(),
        draining: state.ctx.shutdown.is_draining(),
        subscribed: m.broker.up.get() == 1,
    };
    // This node as it is now; the others as their last heartbeat said.
    let mut nodes = vec![here];
    if let Some(link) = hub.link() {
        nodes.extend(link.nodes.live().into_iter().filter(|(id, _)| *id != link.node).map(|(_, s)| s));
    }
    json_response(StatusCode::OK, json!({ "nodes": nodes }))
}

/// The body as text: `text/plain` (or no type), UTF-8, at most `websocket.max_message_size`.
/// A body announced as larger is refused before a byte of it is read.
async fn text_body(req: Request<Incoming>, state: &AdminState) -> Result<Utf8Bytes, Answer> {
    let max = state.ctx.live.borrow().max_message_size;
    if let Some(kind) = req.headers().get(CONTENT_TYPE) {
        if !kind.to_str().is_ok_and(|k| k.trim_start().to_ascii_lowercase().starts_with("text/plain")) {
            let kind = String::from_utf8_lossy(kind.as_bytes());
            // curl's --data-binary sends a form type unless told otherwise: say how to fix it.
            let why =
                format!("the body must be text/plain (UTF-8), not {kind}; with curl: -H 'Content-Type: text/plain'");
            return Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &why));
        }
    }
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the message is over {max} bytes"));
    let announced = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, &format!("the body could not be read: {e}"))),
    };
    Utf8Bytes::try_from(body).map_err(|_| error(StatusCode::BAD_REQUEST, "the message is not UTF-8"))
}
