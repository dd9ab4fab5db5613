//! One connection's life: TLS and upgrade under one deadline, registration, then a reader that
//! publishes and a writer that delivers, until one of them ends it.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn, Instrument};

use crate::admission::{Admission, Limits};
use crate::broadcast::{Broadcaster, Frames};
use crate::config::Config;
use crate::gzip::{self, InflateError};
use crate::registry::{Client, Control, Ending, Registry, REPLACED, TOO_SLOW};
use crate::shutdown::{Shutdown, GOING_AWAY};
use crate::tls::CurrentTls;
use crate::upgrade::{self, HandshakeError, Policy};

/// How long a closing connection gets to flush its Close frame and hear the peer's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Queued messages a writer takes per flush.
const MAX_BATCH: usize = 64;
/// Outgoing bytes tungstenite gathers before writing; one flush per batch writes the rest.
const WRITE_BUFFER: usize = 16 * 1024;
/// Incoming buffer per connection: small, since most clients are idle most of the time.
const READ_BUFFER: usize = 1024;

/// What every connection shares.
pub struct Context {
    /// Per-IP and handshake-rate admission.
    pub admission: Admission,
    /// Connections by key.
    pub registry: Arc<Registry>,
    /// Fan-out.
    pub broadcaster: Broadcaster,
    /// The settings new connections use; replaced on reload.
    pub settings: watch::Receiver<Arc<Settings>>,
    /// The TLS acceptor new connections use; replaced on reload.
    pub tls: CurrentTls,
    /// Shutdown phases and task tracking.
    pub shutdown: Shutdown,
}

/// The per-connection part of the config, derived once per (re)load.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What the upgrade accepts.
    pub policy: Policy,
    /// tungstenite's limits and buffers.
    pub websocket: WebSocketConfig,
    /// `server.handshake_timeout`
    pub handshake_timeout: Duration,
    /// `websocket.send_queue`
    pub send_queue: usize,
    /// `websocket.ping_interval`
    pub ping_interval: Duration,
    /// `websocket.idle_timeout`
    pub idle_timeout: Duration,
    /// `websocket.max_message_size`, also the cap on inflated gzip.
    pub max_message_size: usize,
    /// Admission limits.
    pub admission: Limits,
    /// `websocket.max_messages_per_second` and the burst, when limited.
    pub message_rate: Option<(f64, f64)>,
}

impl Settings {
    /// Derives the settings from a validated config.
    pub fn new(config: &Config) -> Self {
        let max = config.websocket.max_message_bytes();
        let websocket = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            // Room for the buffer target plus one largest frame (gzip can exceed the text by a
            // few bytes); past it tungstenite errors instead of growing without bound.
            .max_write_buffer_size(WRITE_BUFFER + 2 * max + 1024)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        Self {
            policy: Policy {
                path: config.server.path.clone(),
                allowed_origins: config.server.allowed_origins.clone(),
                scheme: if config.tls.enabled { "wss" } else { "ws" },
            },
            websocket,
            handshake_timeout: config.server.handshake_timeout,
            send_queue: config.websocket.send_queue,
            ping_interval: config.websocket.ping_interval,
            idle_timeout: config.websocket.idle_timeout,
            max_message_size: max,
            admission: Limits::new(config),
            message_rate: (config.websocket.max_messages_per_second > 0).then(|| {
                let rate = f64::from(config.websocket.max_messages_per_second);
                let burst = match config.websocket.message_burst {
                    0 => rate,
                    b => f64::from(b),
                };
                (rate, burst)
            }),
        }
    }
}

/// Serves one accepted socket to the end. Errors stay here: they are logged, never returned.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    // info, not debug: a span filtered out would strip peer and key from the warnings inside it.
    let span = tracing::info_span!("conn", %peer, key = tracing::field::Empty);
    async move {
        // Copy what we need and release the watch locks at once.
        let settings = ctx.settings.borrow().clone();
        let tls = ctx.tls.borrow().clone();
        let deadline = Instant::now() + settings.handshake_timeout;
        let _ = tcp.set_nodelay(true);
        // Boxed, and built in statements of their own so no temporary outlives them across an
        // await: otherwise the TLS layout would size every connection's task, plain ones too.
        match tls {
            None => {
                let run = Box::pin(handshake_and_run(tcp, peer, deadline, &settings, &ctx));
                run.await
            }
            Some(acceptor) => {
                let accept = Box::pin(acceptor.accept(tcp));
                let stream = match timeout_at(deadline, accept).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return debug!(%e, "tls handshake failed"),
                    Err(_) => return debug!("handshake timeout during tls"),
                };
                let run = Box::pin(handshake_and_run(stream, peer, deadline, &settings, &ctx));
                run.await
            }
        }
    }
    .instrument(span)
    .await
}

#[doc(hidden)]
pub async fn handshake_and_run<S>(stream: S, peer: SocketAddr, deadline: Instant, settings: &Settings, ctx: &Context)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Held for the connection's life: its place in the per-IP count.
    let _slot = match ctx.admission.admit(peer.ip(), &settings.admission) {
        Ok(slot) => slot,
        Err(r) => {
            debug!(reason = %r.reason, "not admitted");
            let refuse = Box::pin(timeout_at(deadline, upgrade::reject(stream, r)));
            let _ = refuse.await;
            return;
        }
    };
    // A handshake under way when the drain starts still completes (bounded by its deadline): the
    // client then gets a proper 1001 instead of a cut connection.
    // The handshake's state is boxed and freed once it is done, so it does not size the future
    // every open connection keeps for its whole life.
    let upgrade = Box::pin(timeout_at(deadline, upgrade::accept(stream, &settings.policy, settings.websocket)));
    let (ws, params) = match upgrade.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(HandshakeError::Rejected(r))) => {
            debug!(status = r.status.as_u16(), reason = %r.reason, "upgrade rejected");
            return;
        }
        Ok(Err(e)) => {
            debug!(%e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("handshake timeout");
            return;
        }
    };
    tracing::Span::current().record("key", &*params.key);
    let (queue, rx) = mpsc::channel(settings.send_queue);
    let control = Arc::new(Control::default());
    let id = ctx.registry.next_id();
    let client = Client { id, gzip: params.gzip, queue, control: control.clone() };
    ctx.registry.register(params.key.clone(), client);
    if ctx.shutdown.is_closing() {
        control.end(Ending::close(GOING_AWAY.0, GOING_AWAY.1));
    }
    debug!(gzip = params.gzip, "connected");

    let (mut sink, mut stream) = ws.split();
    let read_end = {
        let reader = read_loop(&mut stream, ctx, &control, settings);
        let unregister = || {
            ctx.registry.unregister(&params.key, id);
        };
        let writer =
            write_loop(&mut sink, rx, &control, params.gzip, settings.ping_interval, &unregister, &ctx.shutdown);
        tokio::pin!(reader, writer);
        tokio::select! {
        end = &mut reader => {
            control.end(end);
            // The writer unregisters, then sends the Close (bounded by its own grace period).
            writer.await;
            true
        }
        () = &mut writer => {
            // Wait for the peer's Close reply (or its departure) before dropping the socket.
            let _ = timeout(CLOSE_GRACE, &mut reader).await;
            false
        }
        }
    };
    let ending = control.ending().cloned();
    debug!(?ending, "disconnected");
    // After a protocol error the client may still be sending the rest of its bad message; close
    // our side and read until it closes, so our Close frame is not destroyed by a reset.
    if read_end && matches!(ending, Some(Ending::Close(_))) {
        if let Ok(ws) = sink.reunite(stream) {
            let lingering = Box::pin(linger(ws.into_inner()));
            lingering.await;
        }
    }
}

/// Reads until the peer leaves, publishing every text (and inflated gzip) message.
async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    ctx: &Context,
    control: &Control,
    settings: &Settings,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Held while this reader may publish; the drain waits until every reader has let go.
    let mut accepting = Some(ctx.shutdown.reader_guard());
    let idle = sleep(settings.idle_timeout);
    tokio::pin!(idle);
    // Token bucket: (tokens, last refill).
    let mut budget = settings.message_rate.map(|(_, burst)| (burst, Instant::now()));
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.shutdown.reading_stopped(), if accepting.is_some() => {
                accepting = None;
                continue;
            }
            () = &mut idle => return Ending::Dead("idle timeout"),
            next = stream.next() => next,
        };
        idle.as_mut().reset(Instant::now() + settings.idle_timeout);
        let text = match next {
            None => return Ending::PeerClosed,
            Some(Err(e)) => return ending_for(e),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(data))) => match gzip::inflate(&data, settings.max_message_size) {
                Ok(text) => text.into(),
                Err(e @ InflateError::TooBig(_)) => return close_with(CloseCode::Size, &e),
                Err(e) => return close_with(CloseCode::Invalid, &e),
            },
            // Pings are answered by tungstenite; a Close is answered by the next read, which
            // then ends the stream. Any of them proves the peer alive.
            Some(Ok(_)) => continue,
        };
        if let (Some((tokens, last)), Some((rate, burst))) = (budget.as_mut(), settings.message_rate) {
            let now = Instant::now();
            *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
            *last = now;
            if *tokens < 1.0 {
                return close_with(CloseCode::Policy, &"message rate limit exceeded");
            }
            *tokens -= 1.0;
        }
        // A replaced client sent this before it could know: it is still delivered. After any
        // other ending, or once the drain stopped reading, the message was never accepted.
        if accepting.is_some() && control.ending().is_none_or(is_replaced) {
            ctx.broadcaster.publish(text);
        } else {
            debug!("message after the connection began closing: not accepted");
        }
    }
}

/// Delivers queued broadcasts and pings until the connection is ended, then sends its Close.
async fn write_loop<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Arc<Frames>>,
    control: &Control,
    gzip: bool,
    ping_interval: Duration,
    unregister: &(dyn Fn() + Sync),
    shutdown: &Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::with_capacity(0);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let delivered: Result<(), WsError> = async {
        loop {
            tokio::select! {
                biased;
                () = control.ended() => return Ok(()),
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    // A blocked write must not keep a slow client from being cut off.
                    tokio::select! {
                        biased;
                        () = control.ended() => return Ok(()),
                        r = send_batch(sink, &mut batch, gzip) => r?,
                    }
                }
                _ = ping.tick() => {
                    tokio::select! {
                        biased;
                        () = control.ended() => return Ok(()),
                        r = sink.send(Message::Ping(Bytes::new())) => r?,
                    }
                }
            }
        }
    }
    .await;
    // Out of the registry before the close handshake: nothing more is queued for us, and a
    // successor with our key is never touched.
    unregister();
    if let Err(e) = delivered {
        log_error(&e);
        control.end(Ending::Dead("write failed"));
        return;
    }
    let Some(Ending::Close(frame)) = control.ending() else { return };
    let code = u16::from(frame.code);
    let closing = async {
        if code == TOO_SLOW {
            warn!("client too slow: send queue overflow, closing with 4001");
        } else {
            // Everything accepted before the close reaches the client first (shutdown, replacement).
            while let Ok(frames) = rx.try_recv() {
                batch.push(frames);
            }
            send_batch(sink, &mut batch, gzip).await?;
        }
        sink.send(Message::Close(Some(frame.clone()))).await
    };
    // A client that does not read cannot hold its task (or its socket) past the grace period;
    // at shutdown the grace is what is left of the drain timeout, so a backlog can still flush.
    let grace = match shutdown.deadline() {
        Some(deadline) if code == GOING_AWAY.0 => deadline.saturating_duration_since(Instant::now()),
        _ => CLOSE_GRACE,
    };
    // Boxed: closing happens once, and inline it would enlarge every idle connection.
    match timeout(grace, Box::pin(closing)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%e, "could not send the close frame"),
        Err(_) => warn!(code, "closing did not complete in time; queued messages for this client were dropped"),
    }
}

/// Feeds every queued message into tungstenite's buffer, then flushes once. Items leave `batch`
/// only when tungstenite took them, so a cancelled call loses nothing.
async fn send_batch<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    batch: &mut Vec<Arc<Frames>>,
    gzip: bool,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut sent = 0;
    let result = async {
        while sent < batch.len() {
            poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
            sink.start_send_unpin(batch[sent].message(gzip))?;
            sent += 1;
        }
        poll_fn(|cx| sink.poll_flush_unpin(cx)).await
    };
    let r = result.await;
    batch.drain(..sent);
    r
}

fn is_replaced(ending: &Ending) -> bool {
    matches!(ending, Ending::Close(f) if u16::from(f.code) == REPLACED)
}

/// The Close frame for a reader error; I/O errors mean the peer is gone.
fn ending_for(e: WsError) -> Ending {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => close_with(CloseCode::Size, &"message too big"),
        WsError::Capacity(e) => close_with(CloseCode::Size, &e),
        WsError::Utf8(_) => close_with(CloseCode::Invalid, &"invalid utf-8 in text message"),
        // The peer vanished without a Close: nothing to answer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Dead("reset by peer"),
        WsError::Protocol(p) => close_with(CloseCode::Protocol, &p),
        other => {
            log_error(&other);
            Ending::Dead("read failed")
        }
    }
}

fn close_with(code: CloseCode, reason: &dyn std::fmt::Display) -> Ending {
    debug!(code = u16::from(code), %reason, "closing for a bad message");
    let mut reason = reason.to_string();
    // A Close frame's payload is at most 125 bytes, 2 of them the code.
    while reason.len() > 123 {
        reason.pop();
    }
    Ending::Close(CloseFrame { code, reason: reason.into() })
}

/// Sorts errors: a peer that left or misbehaved is its own business (debug); anything else is
/// ours to look at (warn).
fn log_error(e: &WsError) {
    use std::io::ErrorKind::*;
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Protocol(_) | WsError::Utf8(_) => {
            debug!(%e, "peer left")
        }
        WsError::Io(io) if matches!(io.kind(), ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted) => {
            debug!(%e, "peer left")
        }
        _ => warn!(%e, "connection closed with error"),
    }
}

/// Sends FIN and discards input until the peer closes, for at most `CLOSE_GRACE`.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let _ = timeout(CLOSE_GRACE, async {
        stream.shutdown().await?;
        let mut buf = vec![0u8; 1024];
        while stream.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}
