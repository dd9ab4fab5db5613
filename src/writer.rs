//! The writing half of a connection: the broadcasts and control frames of its
//! [`Mailbox`], and the close sequence. It is the only code that writes to a client's socket
//! once the upgrade is done.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{timeout, Instant};

use crate::ending::{Code, Ending};
use crate::frame::{self, Outbox};
use crate::mailbox::Mailbox;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long a closing connection gets to flush its Close frame (and, after, to hear the reply).
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Queued messages a writer takes per write.
const MAX_BATCH: usize = 64;

/// How a writer ended, for the connection to log: it knows the peer and the key, the writer
/// does not (no per-connection span carries them).
#[derive(Debug)]
pub enum Closed {
    /// A Close frame went out: a reply may come.
    Sent,
    /// No Close frame was owed (the peer closed first, or the connection is dead).
    Nothing,
    /// Writing to the socket failed.
    Failed(std::io::Error),
    /// The close sequence did not complete within its grace.
    TimedOut,
}

impl Closed {
    /// True when a Close frame went out, so a reply may come.
    pub fn sent(&self) -> bool {
        matches!(self, Closed::Sent)
    }
}

/// One connection's writer.
/// It owns what it holds (the metrics are lent to each call): a connection's state lives in its
/// task with no future around it.
pub struct Writer<W> {
    io: W,
    outbox: Outbox,
    /// What it delivers, and how the connection ends.
    mailbox: Arc<Mailbox>,
    /// Everything taken was written: only a push makes it look again.
    waiting: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer of `mailbox` to `io` for a client that wants gzip frames or text ones.
    pub fn new(io: W, mailbox: Arc<Mailbox>, gzip: bool) -> Self {
        Self { io, outbox: Outbox::new(gzip), mailbox, waiting: false }
    }

    /// The socket it writes to, for the connection's last word (its FIN).
    pub fn into_io(self) -> W {
        self.io
    }

    /// Delivers until the connection is ended, calls `leave` (out of the registry before the
    /// close handshake: nothing more is queued for us), then sends what the ending calls for.
    pub async fn run(&mut self, shutdown: &Shutdown, metrics: &Metrics, leave: impl FnOnce()) -> Closed {
        let mailbox = self.mailbox.clone();
        let delivered = poll_fn(|cx| match mailbox.control().poll_ended(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => self.poll_deliver(cx, metrics).map(Err),
        })
        .await;
        self.close_after(delivered, shutdown, metrics, leave).await
    }

    /// The writer's end once delivering stopped (the connection was ended, or `delivered` is
    /// the write that failed): calls `leave`, then sends what the ending calls for.
    pub async fn close_after(
        &mut self,
        delivered: std::io::Result<()>,
        shutdown: &Shutdown,
        metrics: &Metrics,
        leave: impl FnOnce(),
    ) -> Closed {
        leave();
        if let Err(e) = delivered {
            self.mailbox.control().end(Ending::Dead("write failed"));
            return Closed::Failed(e);
        }
        match self.mailbox.control().ending() {
            Some(Ending::Close { code, .. }) => self.close_within(*code, shutdown, metrics).await,
            // The peer closed: the reader's echo of its Close is among the replies.
            Some(Ending::PeerClosed(_)) => {
                self.outbox.discard_unstarted();
                self.mailbox.take_started(&mut self.outbox);
                self.outbox.push_control(&self.mailbox.take_replies());
                let _ = timeout(CLOSE_GRACE, self.outbox.flush(&mut self.io)).await;
                Closed::Nothing
            }
            _ => Closed::Nothing,
        }
    }

    /// Writes what the mailbox holds; pending while there is nothing to write or the socket is
    /// full, ready only with the error a write met. The caller stops polling it once the
    /// connection is ended (a blocked write must not keep a slow client from being cut off);
    /// the outbox keeps its place.
    pub fn poll_deliver(&mut self, cx: &mut Context<'_>, metrics: &Metrics) -> Poll<std::io::Error> {
        loop {
            if self.waiting {
                // Only a push wakes an idle writer: its own reads do not make it look.
                ready!(self.mailbox.poll_pushed(cx));
                self.waiting = false;
            }
            if self.outbox.is_empty() && !self.mailbox.take(&mut self.outbox, MAX_BATCH) {
                // A direct write may have left ciphertext the socket did not take (TLS).
                if let Err(e) = ready!(Pin::new(&mut self.io).poll_flush(cx)) {
                    return Poll::Ready(e);
                }
                self.waiting = true;
                continue;
            }
            let flushed = ready!(self.outbox.poll_flush(Pin::new(&mut self.io), cx));
            self.count_sent(metrics);
            if let Err(e) = flushed {
                return Poll::Ready(e);
            }
        }
    }

    /// Adds what the outbox wrote since the last call to the metrics: two atomic adds per
    /// write, not per frame.
    fn count_sent(&mut self, metrics: &Metrics) {
        let (frames, bytes) = self.outbox.take_sent();
        metrics.frames_sent(self.outbox.gzip()).inc_by(frames);
        metrics.bytes_sent.inc_by(bytes);
    }

    /// The close sequence, bounded: a client that does not read cannot hold its task (or its
    /// socket) past the grace; at shutdown the grace is what is left of the drain timeout, so a
    /// backlog can still flush.
    async fn close_within(&mut self, code: Code, shutdown: &Shutdown, metrics: &Metrics) -> Closed {
        let grace = match shutdown.deadline() {
            Some(deadline) if code == Code::GoingAway => deadline.saturating_duration_since(Instant::now()),
            _ => CLOSE_GRACE,
        };
        // Boxed: closing happens once, and inline it would enlarge every idle connection.
        match timeout(grace, Box::pin(self.close(code, metrics))).await {
            Ok(Ok(())) => Closed::Sent,
            Ok(Err(e)) => Closed::Failed(e),
            Err(_) => Closed::TimedOut,
        }
    }

    /// Sends what was accepted before the close (unless the queue is the problem), then the
    /// Close frame.
    async fn close(&mut self, code: Code, metrics: &Metrics) -> std::io::Result<()> {
        if code == Code::TooSlow {
            metrics.slow_consumers.inc();
            self.outbox.discard_unstarted();
            self.mailbox.take_started(&mut self.outbox);
        } else {
            // Everything accepted before the close reaches the client first (shutdown, replacement).
            self.mailbox.take_broadcasts(&mut self.outbox);
        }
        let flushed = self.outbox.flush(&mut self.io).await;
        self.count_sent(metrics);
        flushed?;
        if let Some(Ending::Close { reason, .. }) = self.mailbox.control().ending() {
            self.outbox.push_control(&frame::close(code, reason));
        }
        self.outbox.flush(&mut self.io).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use crate::frame::Frames;

    /// Server frames parsed from the wire: (opcode, payload).
    fn parse(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (len, head) = match wire[1] & 0x7f {
                126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
                127 => (u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize, 10),
                n => (n as usize, 2),
            };
            frames.push((wire[0] & 0x0f, wire[head..head + len].to_vec()));
            wire = &wire[head + len..];
        }
        frames
    }

    fn queued(texts: &[&'static str]) -> Arc<Mailbox> {
        let mailbox = Mailbox::new(16, false, None);
        for t in texts {
            mailbox.push(&Arc::new(Frames::new(Utf8Bytes::from_static(t), 6)));
        }
        Arc::new(mailbox)
    }

    async fn read_all(mut client: DuplexStream) -> Vec<(u8, Vec<u8>)> {
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        parse(&wire)
    }

    fn close_payload(code: Code) -> Vec<u8> {
        let mut p = code.as_u16().to_be_bytes().to_vec();
        p.extend_from_slice(code.reason().as_bytes());
        p
    }

    const A: &str = "first message, long enough to be cut by the pipe";
    const B: &str = "second message";

    /// Runs a writer of A and B into a pipe of 16 bytes that nobody reads for 50 ms, ends the
    /// connection with `ending` after 20 ms (mid-frame), and returns whether a Close went out,
    /// whether it left the registry, and the frames the client got.
    async fn ended_mid_batch(ending: Ending) -> (bool, bool, Vec<(u8, Vec<u8>)>) {
        let (client, mut server) = tokio::io::duplex(16);
        let shutdown = Shutdown::default();
        let metrics = Metrics::new();
        let mailbox = queued(&[A, B]);
        let mut writer = Writer::new(&mut server, mailbox.clone(), false);
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            read_all(client).await
        });
        let end = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            mailbox.control().end(ending);
        };
        let mut left = false;
        let (closed, ()) = tokio::join!(writer.run(&shutdown, &metrics, || left = true), end);
        drop(writer);
        drop(server);
        (closed.sent(), left, reader.await.unwrap())
    }

    #[tokio::test]
    async fn an_ending_mid_batch_loses_and_doubles_nothing() {
        let (sent, left, frames) = ended_mid_batch(Ending::close(Code::Replaced)).await;
        assert!(sent && left);
        let expected = [(1, A.as_bytes().to_vec()), (1, B.as_bytes().to_vec()), (8, close_payload(Code::Replaced))];
        assert_eq!(frames, expected);
    }

    #[tokio::test]
    async fn after_a_replacement_what_was_queued_is_delivered_then_4000() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let shutdown = Shutdown::default();
        let metrics = Metrics::new();
        let mailbox = queued(&[A, B]);
        mailbox.control().end(Ending::close(Code::Replaced));
        let mut writer = Writer::new(&mut server, mailbox.clone(), true);
        assert!(writer.run(&shutdown, &metrics, || {}).await.sent());
        drop(writer);
        drop(server);
        assert_eq!(
            (metrics.frames_sent(true).get(), metrics.frames_sent(false).get()),
            (2, 0),
            "two gzip frames counted"
        );
        let frames = read_all(client).await;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].0, 2, "gzip client: Binary frames");
        assert_eq!(crate::gzip::inflate(&frames[1].1, 100).unwrap(), B);
        assert_eq!(frames[2], (8, close_payload(Code::Replaced)));
    }

    #[tokio::test]
    async fn the_4001_path_finishes_the_frame_under_way_and_sends_nothing_else() {
        let (sent, _, frames) = ended_mid_batch(Ending::close(Code::TooSlow)).await;
        assert!(sent);
        assert_eq!(frames, [(1, A.as_bytes().to_vec()), (8, close_payload(Code::TooSlow))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_cannot_be_written_is_given_up_after_the_grace() {
        // Nobody reads: the pipe fills and the Close can never go out.
        let (_client, mut server) = tokio::io::duplex(16);
        let shutdown = Shutdown::default();
        let metrics = Metrics::new();
        let mailbox = queued(&[A, B]);
        mailbox.control().end(Ending::close(Code::TooSlow));
        let mut writer = Writer::new(&mut server, mailbox.clone(), false);
        let started = Instant::now();
        let closed = writer.run(&shutdown, &metrics, || {}).await;
        assert!(matches!(closed, Closed::TimedOut), "no Close went out, no reply to wait for: {closed:?}");
        assert!(started.elapsed() >= CLOSE_GRACE && started.elapsed() < CLOSE_GRACE * 2);
    }

    #[tokio::test]
    async fn replies_go_out_between_frames() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let shutdown = Shutdown::default();
        let metrics = Metrics::new();
        let mailbox = queued(&[]);
        mailbox.reply(&frame::encode(frame::PONG, b"p"), false);
        let mut writer = Writer::new(&mut server, mailbox.clone(), false);
        let stop = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            mailbox.control().end(Ending::Dead("test over"));
        };
        let (closed, ()) = tokio::join!(writer.run(&shutdown, &metrics, || {}), stop);
        assert!(matches!(closed, Closed::Nothing), "a dead connection sends no Close: {closed:?}");
        drop(writer);
        drop(server);
        assert_eq!(read_all(client).await, [(0xA, b"p".to_vec())]);
    }
}
