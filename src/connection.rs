//! One connection's life, top to bottom: TLS and upgrade under one deadline, join the hub, then
//! one hand-written poll that reads and publishes, and writes what the mailbox holds, until the
//! connection is ended, then the close.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, warn, Instrument};

use crate::admission::Slot;
use crate::duplex::Socket;
use crate::ending::{Code, Control, Ending};
use crate::gzip::{self, InflateError};
use crate::hub::{ClientInfo, Joined, Member};
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::reader::{FrameError, Incoming, ReadEnd, Reader};
use crate::settings::Settings;
use crate::state::Context;
use crate::tls_socket;
use crate::token::Refusal;
use crate::upgrade::{self, ClientParams, HandshakeError, Rejection};
use crate::writer::{Closed, Writer, CLOSE_GRACE};

/// Serves one accepted socket to the end. Errors stay here: they are logged, never returned.
///
/// The future is written by hand, not by `async`: what an open connection keeps in its task is
/// its [`Conn`] and nothing else. The handshake before it and the close after it are boxed
/// futures, freed when they are done, and no argument or local of theirs stays behind.
pub fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>) -> impl Future<Output = ()> + Send {
    Serve::Starting(Box::pin(start(tcp, peer, ctx)))
}

/// A connection's task, phase by phase.
// The running connection is inline on purpose: the task's own cell is its one allocation.
#[allow(clippy::large_enum_variant)]
enum Serve {
    /// TLS, the upgrade and joining the hub; a connection when they succeed.
    Starting(Pin<Box<dyn Future<Output = Option<Conn>> + Send>>),
    /// The steady state, inline: what every open connection keeps.
    Running(Conn),
    /// The close handshake and what follows it.
    Closing(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl Future for Serve {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Serve::Starting(start) => match ready!(start.as_mut().poll(cx)) {
                    Some(conn) => *this = Serve::Running(conn),
                    None => *this = Serve::Done,
                },
                Serve::Running(conn) => {
                    let stop = ready!(conn.poll_steady(cx));
                    let Serve::Running(conn) = std::mem::replace(this, Serve::Done) else { unreachable!() };
                    *this = Serve::Closing(Box::pin(conn.finish(stop)));
                }
                Serve::Closing(closing) => {
                    ready!(closing.as_mut().poll(cx));
                    *this = Serve::Done;
                }
                Serve::Done => return Poll::Ready(()),
            }
        }
    }
}

/// TLS and the upgrade under one deadline, then the hub: the connection, or none when the
/// handshake failed (logged here).
async fn start(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>) -> Option<Conn> {
    // Copy what we need and release the watch locks at once.
    let settings = ctx.live.borrow().clone();
    let deadline = Instant::now() + settings.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    let socket = match settings.tls.clone() {
        None => Socket::Tcp(Arc::new(tcp)),
        Some(config) => match timeout_at(deadline, tls_socket::accept(tcp, config)).await {
            Ok(Ok(tls)) => Socket::Tls(Arc::new(tls)),
            Ok(Err(e)) => {
                ctx.metrics.rejected("tls");
                debug!(%peer, %e, "tls handshake failed");
                return None;
            }
            Err(_) => {
                ctx.metrics.rejected("timeout");
                debug!(%peer, "handshake timeout during tls");
                return None;
            }
        },
    };
    let upgraded = upgrade(socket, peer, deadline, &settings, &ctx).await?;
    Some(Conn::join(upgraded, peer, settings, ctx))
}

/// What a connection's log lines name. A span would carry them too, but its few hundred bytes
/// would stay with every idle connection; the handshake alone runs in one.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    peer: SocketAddr,
    key: &'a str,
}

/// The WebSocket upgrade, with admission and the token's check; none when it failed (logged).
async fn upgrade(
    socket: Socket,
    peer: SocketAddr,
    deadline: Instant,
    settings: &Settings,
    ctx: &Context,
) -> Option<upgrade::Upgraded<Socket, (Slot, u32)>> {
    // Admission runs once the head is complete: a silent connection spends nobody's budget. The
    // token is checked after it, so a flood of bad tokens spends its own address's budget.
    let admit = |params: &ClientParams| {
        let slot = ctx.admission.admit(peer.ip(), &settings.admission)?;
        let expires = authorize(params, settings, &ctx.metrics)?;
        Ok((slot, expires))
    };
    // A handshake under way when the drain starts still completes (bounded by its deadline): the
    // client then gets a proper 1001 instead of a cut connection.
    // info, not debug: a span filtered out would strip the peer from the lines inside it.
    let span = tracing::info_span!("conn", %peer);
    match timeout_at(deadline, upgrade::accept(socket, &settings.policy, admit)).instrument(span).await {
        Ok(Ok(upgraded)) => Some(upgraded),
        Ok(Err(HandshakeError::Rejected(r))) => {
            ctx.metrics.rejected(r.metric_reason());
            debug!(%peer, status = r.status.as_u16(), reason = %r.reason, "upgrade rejected");
            None
        }
        Ok(Err(e)) => {
            debug!(%peer, %e, "handshake failed");
            None
        }
        Err(_) => {
            ctx.metrics.rejected("timeout");
            debug!(%peer, "handshake timeout");
            None
        }
    }
}

/// The connection token's check when `[auth]` requires one: the token's `exp` (0 when none is
/// required), or the 401. Neither the answer nor the metric holds any part of the token.
fn authorize(params: &ClientParams, settings: &Settings, metrics: &Metrics) -> Result<u32, Rejection> {
    let tokens = &settings.tokens;
    if !tokens.required() {
        return Ok(0);
    }
    let verified = match &params.token {
        Some(token) => tokens.verify(token.expose(), &params.key),
        None => Err(Refusal::Missing),
    };
    // An `exp` past 2106 does not fit: such a token counts as never expiring.
    verified.map(|v| u32::try_from(v.expires).unwrap_or(u32::MAX)).map_err(|refusal| {
        metrics.token_rejected(refusal.label());
        let mut r = Rejection::new(StatusCode::UNAUTHORIZED, refusal.reason());
        r.header = Some(("WWW-Authenticate", "Bearer".into()));
        r
    })
}

/// A connection's place in the daemon's books (the drain's count of clients, the connection
/// gauge), given back on drop.
struct Books {
    ctx: Arc<Context>,
    tls: bool,
}

impl Books {
    fn new(ctx: Arc<Context>, tls: bool) -> Self {
        ctx.shutdown.client_joined();
        ctx.metrics.accepted.inc();
        ctx.metrics.connections(tls).inc();
        Self { ctx, tls }
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        self.ctx.metrics.connections(self.tls).dec();
        self.ctx.shutdown.client_left();
    }
}

/// An upgraded connection: its reading side, its writer and what it holds in the hub and the
/// daemon's books. It lives inline in the connection's task, and between polls nothing else
/// does: no future of a reader, a writer, a timer or a `select!` stays with an idle connection,
/// which is what keeps its task small. It owns all it holds, so no future has to keep it alive.
struct Conn {
    reading: Reading,
    writer: Writer<Socket>,
    /// Its place in the registry; it leaves before the close handshake, or on drop.
    member: Member,
    peer: SocketAddr,
    _books: Books,
    /// Its place in its address's count.
    _slot: Slot,
}

/// Why a connection's steady state stopped.
enum Stop {
    /// Its reader ended it: the peer closed, left or broke a rule.
    Read(Ending),
    /// It was ended from outside (replaced, kicked, too slow, silent, the drain).
    Ended,
    /// A write to the socket failed.
    WriteFailed(io::Error),
}

impl Conn {
    /// Joins the hub with an upgraded socket: registration, the reader (fed first with what came
    /// after the request) and the writer.
    fn join(
        upgraded: upgrade::Upgraded<Socket, (Slot, u32)>,
        peer: SocketAddr,
        settings: Arc<Settings>,
        ctx: Arc<Context>,
    ) -> Self {
        let upgrade::Upgraded { stream, tail, params, admitted: (slot, expires) } = upgraded;
        // Taken apart here so that nothing of the request (the token least of all) stays in the
        // state every open connection keeps.
        let ClientParams { key, gzip, token } = params;
        drop(token);
        let tls = settings.tls.is_some();
        let books = Books::new(ctx.clone(), tls);
        let info = ClientInfo { peer, tls, gzip, connected_at: std::time::SystemTime::now(), expires };
        let Joined { member, mailbox } = ctx.hub.join(key, info, settings.send_queue, Some(stream.clone()));
        if ctx.shutdown.is_closing() {
            mailbox.control().end(Ending::close(Code::GoingAway));
        }
        debug!(%peer, key = member.key(), gzip, "connected");
        let reader = Reader::new(stream.clone(), &tail, settings.max_message_size, mailbox.clone());
        let writer = Writer::new(stream, mailbox, gzip);
        let budget = settings.message_rate.map(|(_, burst)| TokenBucket::full(burst, Instant::now()));
        let accepting = Some(ctx.shutdown.reader_guard());
        let reading = Reading { reader, accepting, budget, ctx, settings };
        Conn { reading, writer, member, peer, _books: books, _slot: slot }
    }

    fn who(&self) -> Who<'_> {
        Who { peer: self.peer, key: self.member.key() }
    }

    /// Until the connection is ended: reads and handles every frame the socket has, then writes
    /// what the mailbox holds. Each poll registers the task with the control (which the drain
    /// also wakes when reading stops), the socket and, while the writer is idle, the mailbox.
    fn poll_steady(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Stop> {
        let who = Who { peer: self.peer, key: self.member.key() };
        let reading = &mut self.reading;
        if reading.control().poll_ended(cx).is_ready() {
            return Poll::Ready(Stop::Ended);
        }
        if reading.accepting.is_some() && reading.ctx.shutdown.reading_has_stopped() {
            reading.accepting = None;
        }
        while let Poll::Ready(next) = reading.reader.poll_next(cx) {
            if let Err(ending) = reading.handle(next, who) {
                return Poll::Ready(Stop::Read(ending));
            }
        }
        if reading.control().ending().is_some() {
            return Poll::Ready(Stop::Ended);
        }
        self.writer.poll_deliver(cx, &reading.ctx.metrics).map(Stop::WriteFailed)
    }

    /// Once the steady state stopped: the close, the log line and the metrics, then, after a
    /// protocol error, the linger.
    async fn finish(mut self, stop: Stop) {
        let (read_end, closed) = self.close(stop).await;
        let ending = self.reading.control().ending();
        log_ending(self.who(), &closed, ending);
        // The code the server sent, else the one the client sent, else none (a vanished peer).
        self.reading.ctx.metrics.disconnected(match ending {
            Some(Ending::Close { code, .. }) => Some(code.as_u16()),
            Some(Ending::PeerClosed(code)) => *code,
            _ => None,
        });
        // After a protocol error the client may still be sending the rest of its bad message;
        // close our side and read until it closes, so our Close frame is not destroyed by a reset.
        if read_end && closed.sent() {
            let Conn { reading, writer, member, _books, _slot, .. } = self;
            drop((reading, member));
            linger(writer.into_io()).await;
        }
    }

    /// The close: the writer sends what the ending calls for (after the member leaves) while the
    /// reader goes on reading until the peer's reply. Returns whether the reader ended the
    /// connection, and how the writer closed.
    async fn close(&mut self, stop: Stop) -> (bool, Closed) {
        let who = Who { peer: self.peer, key: self.member.key() };
        let (reading, writer, member) = (&mut self.reading, &mut self.writer, &self.member);
        let ctx = reading.ctx.clone();
        let leave = || member.leave();
        match stop {
            Stop::Read(end) => {
                reading.control().end(end);
                (true, writer.close_after(Ok(()), &ctx.shutdown, &ctx.metrics, leave).await)
            }
            Stop::WriteFailed(e) => (false, writer.close_after(Err(e), &ctx.shutdown, &ctx.metrics, leave).await),
            Stop::Ended => {
                let mailbox = reading.reader.mailbox().clone();
                let rest = reading.read_rest(who);
                let writing = writer.close_after(Ok(()), &ctx.shutdown, &ctx.metrics, leave);
                tokio::pin!(rest, writing);
                tokio::select! {
                    end = &mut rest => {
                        mailbox.control().end(end);
                        (true, writing.await)
                    }
                    closed = &mut writing => {
                        // Wait for the peer's Close reply (or its departure) before dropping the
                        // socket; when no Close went out, there is no reply to wait for.
                        if closed.sent() {
                            let _ = timeout(CLOSE_GRACE, &mut rest).await;
                        }
                        (false, closed)
                    }
                }
            }
        }
    }
}

/// The reading side of a connection: its reader, and what handling a client's message needs.
struct Reading {
    reader: Reader<Socket>,
    /// Held while this reader may publish; the drain waits until every reader has let go.
    accepting: Option<TaskTrackerToken>,
    /// `websocket.max_messages_per_second`, when set.
    budget: Option<TokenBucket>,
    ctx: Arc<Context>,
    settings: Arc<Settings>,
}

impl Reading {
    /// How the connection ends (kept in its mailbox).
    fn control(&self) -> &Control {
        self.reader.mailbox().control()
    }

    /// What a frame (or the end of reading) means: a message is published; an error is the
    /// connection's ending.
    fn handle(&mut self, next: Result<Incoming, ReadEnd>, who: Who) -> Result<(), Ending> {
        // The hub's heartbeat sweep pings and cuts off by it (`Hub::heartbeat`).
        self.reader.mailbox().touch();
        let text = match next {
            // The reader answered it (the echo is among the writer's replies).
            Ok(Incoming::Close(code)) => return Err(Ending::PeerClosed(code)),
            // Answered by the reader too; like any frame, it proves the peer alive.
            Ok(Incoming::Ping(_) | Incoming::Pong) => return Ok(()),
            Ok(Incoming::Text(text)) => text,
            Ok(Incoming::Binary(data)) => inflate(&data, self.settings.max_message_size)?,
            Err(end) => return Err(ending_for(end, who)),
        };
        if over_rate(self.budget.as_mut(), self.settings.message_rate) {
            return Err(close_with(Code::Policy, &"message rate limit exceeded"));
        }
        publish(text, self.accepting.is_some(), self.control(), &self.ctx, &who);
        Ok(())
    }

    /// Reads on while the connection closes, until the peer leaves or breaks a rule.
    async fn read_rest(&mut self, who: Who<'_>) -> Ending {
        loop {
            let next = tokio::select! {
                biased;
                () = self.ctx.shutdown.reading_stopped(), if self.accepting.is_some() => {
                    self.accepting = None;
                    continue;
                }
                next = self.reader.next() => next,
            };
            if let Err(ending) = self.handle(next, who) {
                return ending;
            }
        }
    }
}

/// Publishes a client's message, unless it was sent after the connection began closing.
fn publish(text: Utf8Bytes, accepting: bool, control: &Control, ctx: &Context, who: &Who) {
    // A replaced client sent this before it could know: it is still delivered. After any other
    // ending, or once the drain stopped reading, the message was never accepted.
    let replaced = |e: &Ending| e.code() == Some(Code::Replaced);
    if accepting && control.ending().is_none_or(replaced) {
        ctx.metrics.messages_received.inc();
        ctx.hub.publish(text);
    } else {
        debug!(peer = %who.peer, key = who.key, "message after the connection began closing: not accepted");
    }
}

/// Takes one message from the client's budget, if it has one; true when it is spent.
fn over_rate(budget: Option<&mut TokenBucket>, rate: Option<(f64, f64)>) -> bool {
    match (budget, rate) {
        (Some(bucket), Some((rate, burst))) => !bucket.take(rate, burst, Instant::now()),
        _ => false,
    }
}

/// The text of a Binary message, which is gzip, or the ending a bad one calls for.
fn inflate(data: &[u8], max: usize) -> Result<Utf8Bytes, Ending> {
    match gzip::inflate(data, max) {
        Ok(text) => Ok(text.into()),
        Err(e @ InflateError::TooBig(_)) => Err(close_with(Code::TooBig, &e)),
        Err(e) => Err(close_with(Code::Invalid, &e)),
    }
}

/// The ending for the reader's end: a bad frame gets its close code; otherwise the peer is gone.
fn ending_for(end: ReadEnd, who: Who) -> Ending {
    match end {
        ReadEnd::Frame(e @ FrameError::Protocol(_)) => close_with(Code::Protocol, &e),
        ReadEnd::Frame(e @ FrameError::TooBig) => close_with(Code::TooBig, &e),
        ReadEnd::Frame(e @ FrameError::Utf8) => close_with(Code::Invalid, &e),
        // The peer vanished without a Close: nothing to answer.
        ReadEnd::Eof => Ending::Dead("reset by peer"),
        ReadEnd::Io(e) => {
            log_io_error(&e, who);
            Ending::Dead("read failed")
        }
    }
}

/// The ending for a bad message; the "disconnected" line logs it with its reason.
fn close_with(code: Code, reason: &dyn std::fmt::Display) -> Ending {
    Ending::close_because(code, reason)
}

/// Logs how a connection ended, with the writer's part in it.
fn log_ending(who: Who, closed: &Closed, ending: Option<&Ending>) {
    let code = ending.and_then(Ending::code);
    match closed {
        Closed::Failed(e) => log_io_error(e, who),
        Closed::TimedOut => warn!(
            peer = %who.peer, key = who.key, code = code.map(Code::as_u16),
            "closing did not complete in time; queued messages for this client were dropped"
        ),
        Closed::Sent | Closed::Nothing => {}
    }
    if code == Some(Code::TooSlow) {
        warn!(peer = %who.peer, key = who.key, "client too slow: send queue overflow, closed with 4001");
    }
    debug!(peer = %who.peer, key = who.key, ?ending, "disconnected");
}

/// Sorts socket errors: a peer that left, or sent bytes TLS cannot decrypt, is its own
/// business (debug, so a flood of them cannot flood the log); anything else is ours (warn).
fn log_io_error(e: &io::Error, who: Who) {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted | InvalidData => {
            debug!(peer = %who.peer, key = who.key, %e, "peer left or sent garbage")
        }
        _ => warn!(peer = %who.peer, key = who.key, %e, "connection closed with error"),
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
