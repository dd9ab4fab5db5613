//! One connection's life: TLS and upgrade under one deadline, registration, then a reader that
//! publishes and a writer that delivers, until one of them ends it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn, Instrument};

use crate::admission::{Admission, Limits};
use crate::broadcast::{Broadcaster, Frames};
use crate::config::Config;
use crate::frame::{self, Outbox};
use crate::gzip::{self, InflateError};
use crate::rate::TokenBucket;
use crate::registry::{Client, Control, Ending, Registry, REPLACED, TOO_SLOW};
use crate::shutdown::{Shutdown, GOING_AWAY};
use crate::tls::CurrentTls;
use crate::upgrade::{self, ClientParams, HandshakeError, Policy};

/// How long a closing connection gets to flush its Close frame and hear the peer's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Queued messages a writer takes per flush.
const MAX_BATCH: usize = 64;
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
        // tungstenite only reads (its replies go through ReadSide to our writer), so only its
        // read-side limits matter.
        let websocket = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
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
                (
                    rate,
                    if config.websocket.message_burst == 0 { rate } else { f64::from(config.websocket.message_burst) },
                )
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
    // Admission runs once the head is complete: a silent connection spends nobody's budget.
    let admit = |_: &ClientParams| ctx.admission.admit(peer.ip(), &settings.admission);
    // A handshake under way when the drain starts still completes (bounded by its deadline): the
    // client then gets a proper 1001 instead of a cut connection.
    // The handshake's state is boxed and freed once it is done, so it does not size the future
    // every open connection keeps for its whole life.
    let upgrade = Box::pin(timeout_at(deadline, upgrade::accept(stream, &settings.policy, admit)));
    let upgraded = match upgrade.await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(HandshakeError::Rejected(r))) => {
            return debug!(status = r.status.as_u16(), reason = %r.reason, "upgrade rejected");
        }
        Ok(Err(e)) => return debug!(%e, "handshake failed"),
        Err(_) => return debug!("handshake timeout"),
    };
    // Held for the connection's life: its place in the per-address count.
    let _slot = upgraded.admitted;
    let _client = ctx.shutdown.client();
    tracing::Span::current().record("key", &*upgraded.params.key);
    let run = Box::pin(run_client(upgraded.stream, upgraded.tail, upgraded.params, settings, ctx));
    run.await
}

/// Serves an upgraded client: registration, then a reader that publishes and a writer that
/// delivers until one of them ends it, then the close handshake.
async fn run_client<S>(stream: S, tail: Vec<u8>, params: ClientParams, settings: &Settings, ctx: &Context)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let control = Arc::new(Control::default());
    let (read_half, mut write_half) = tokio::io::split(stream);
    let read_side = ReadSide { io: read_half, control: control.clone() };
    let mut ws = WebSocketStream::from_partially_read(read_side, tail, Role::Server, Some(settings.websocket)).await;
    let (queue, rx) = mpsc::channel(settings.send_queue);
    let id = ctx.registry.next_id();
    let client = Client { id, gzip: params.gzip, queue, control: control.clone() };
    ctx.registry.register(params.key.clone(), client);
    if ctx.shutdown.is_closing() {
        control.end(Ending::close(GOING_AWAY.0, GOING_AWAY.1));
    }
    debug!(gzip = params.gzip, "connected");

    let read_end = {
        let mut writer = Writer { io: &mut write_half, outbox: Outbox::new(params.gzip), rx, control: &control };
        let reader = read_loop(&mut ws, ctx, &control, settings);
        let unregister = || {
            ctx.registry.unregister(&params.key, id);
        };
        let writing = writer.run(settings.ping_interval, &unregister, &ctx.shutdown);
        tokio::pin!(reader, writing);
        tokio::select! {
        end = &mut reader => {
            control.end(end);
            // The writer unregisters, then sends the Close (bounded by its own grace period).
            writing.await;
            true
        }
        () = &mut writing => {
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
        let stream = ws.into_inner().io.unsplit(write_half);
        let lingering = Box::pin(linger(stream));
        lingering.await;
    }
}

/// The socket as tungstenite sees it: it reads from the socket, but what it writes (its
/// automatic pong and close replies) goes to the connection's writer, the only one that writes
/// to the socket. That is what lets the writer send shared frames without tungstenite's copy.
struct ReadSide<R> {
    io: R,
    control: Arc<Control>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(self: Pin<&mut Self>, _: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // tungstenite hands over whole frames (its buffer holds one reply at a time).
        self.control.reply(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads until the peer leaves, publishing every text (and inflated gzip) message.
async fn read_loop<S>(ws: &mut WebSocketStream<S>, ctx: &Context, control: &Control, settings: &Settings) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Held while this reader may publish; the drain waits until every reader has let go.
    let mut accepting = Some(ctx.shutdown.reader_guard());
    let idle = sleep(settings.idle_timeout);
    tokio::pin!(idle);
    let mut budget = settings.message_rate.map(|(_, burst)| TokenBucket::full(burst, Instant::now()));
    loop {
        let next = tokio::select! {
            biased;
            () = ctx.shutdown.reading_stopped(), if accepting.is_some() => {
                accepting = None;
                continue;
            }
            () = &mut idle => return Ending::Dead("idle timeout"),
            next = ws.next() => next,
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
            // Pings and Closes are answered by tungstenite (through ReadSide); any of them
            // proves the peer alive.
            Some(Ok(_)) => continue,
        };
        if let (Some(bucket), Some((rate, burst))) = (budget.as_mut(), settings.message_rate) {
            if !bucket.take(rate, burst, Instant::now()) {
                return close_with(CloseCode::Policy, &"message rate limit exceeded");
            }
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

/// What woke an idle writer.
enum Wake {
    Replies,
    Broadcasts,
    Ping,
}

/// The writing half of a connection: its queue, what it is writing, and the socket.
struct Writer<'a, W> {
    io: &'a mut W,
    outbox: Outbox,
    rx: mpsc::Receiver<Arc<Frames>>,
    control: &'a Control,
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    /// Delivers queued broadcasts, replies and pings until the connection is ended, then
    /// unregisters and sends what the ending calls for.
    async fn run(&mut self, ping_interval: Duration, unregister: &(dyn Fn() + Sync), shutdown: &Shutdown) {
        let delivered = self.deliver(ping_interval).await;
        // Out of the registry before the close handshake: nothing more is queued for us, and a
        // successor with our key is never touched.
        unregister();
        if let Err(e) = delivered {
            log_io_error(&e);
            self.control.end(Ending::Dead("write failed"));
            return;
        }
        let code = match self.control.ending() {
            Some(Ending::Close(frame)) => u16::from(frame.code),
            // The peer closed: tungstenite's echo of its Close is among the replies.
            Some(Ending::PeerClosed) => {
                self.outbox.discard_unstarted();
                self.outbox.push_control(&self.control.take_replies());
                let _ = timeout(CLOSE_GRACE, self.outbox.flush(self.io)).await;
                return;
            }
            _ => return,
        };
        // A client that does not read cannot hold its task (or its socket) past the grace period;
        // at shutdown the grace is what is left of the drain timeout, so a backlog can still flush.
        let grace = match shutdown.deadline() {
            Some(deadline) if code == GOING_AWAY.0 => deadline.saturating_duration_since(Instant::now()),
            _ => CLOSE_GRACE,
        };
        // Boxed: closing happens once, and inline it would enlarge every idle connection.
        match timeout(grace, Box::pin(self.close(code))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(%e, "could not send the close frame"),
            Err(_) => warn!(code, "closing did not complete in time; queued messages for this client were dropped"),
        }
    }

    async fn deliver(&mut self, ping_interval: Duration) -> io::Result<()> {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let control = self.control;
            let woken = tokio::select! {
                biased;
                () = control.ended() => return Ok(()),
                () = control.replied() => Wake::Replies,
                n = self.rx.recv_many(&mut self.outbox.batch, MAX_BATCH), if self.outbox.batch.is_empty() => {
                    if n == 0 {
                        return Ok(());
                    }
                    Wake::Broadcasts
                }
                _ = ping.tick() => Wake::Ping,
            };
            match woken {
                Wake::Replies => self.outbox.push_control(&control.take_replies()),
                Wake::Ping => self.outbox.push_control(&frame::encode(frame::PING, b"")),
                Wake::Broadcasts => {}
            }
            // A blocked write must not keep a slow client from being cut off; the outbox keeps
            // its place when the write is abandoned.
            tokio::select! {
                biased;
                () = control.ended() => return Ok(()),
                r = self.outbox.flush(&mut *self.io) => r?,
            }
        }
    }

    /// Sends what was accepted before the close (unless the queue is the problem), then the
    /// Close frame.
    async fn close(&mut self, code: u16) -> io::Result<()> {
        if code == TOO_SLOW {
            warn!("client too slow: send queue overflow, closing with 4001");
            self.outbox.discard_unstarted();
        } else {
            // Everything accepted before the close reaches the client first (shutdown, replacement).
            while let Ok(frames) = self.rx.try_recv() {
                self.outbox.batch.push(frames);
            }
        }
        self.outbox.flush(self.io).await?;
        if let Some(Ending::Close(f)) = self.control.ending() {
            self.outbox.push_control(&frame::close(code, &f.reason));
        }
        self.outbox.flush(self.io).await
    }
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
        WsError::ConnectionClosed | WsError::AlreadyClosed => Ending::PeerClosed,
        WsError::Io(e) => {
            log_io_error(&e);
            Ending::Dead("read failed")
        }
        other => {
            warn!(%other, "connection closed with error");
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

/// Sorts socket errors: a peer that left, or sent bytes TLS cannot decrypt, is its own
/// business (debug, so a flood of them cannot flood the log); anything else is ours (warn).
fn log_io_error(e: &io::Error) {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted | InvalidData => {
            debug!(%e, "peer left or sent garbage")
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
