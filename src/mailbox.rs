//! A connection's mailbox: the bounded queue of broadcasts the hub hands it, and the control
//! frames its reader owes the peer (pongs, pings, the echo of a Close), under one lock with one
//! wakeup for the writer; and the connection's end switch ([`Control`]), which shares that wakeup.
//! It is the one allocation a connection shares with the hub.
//!
//! It also keeps the connection's heartbeat (when the client last sent a frame, when it was
//! last pinged), which one sweep over the registry reads for every connection: no timer per
//! connection. It replaces a tokio mpsc channel, a separate reply buffer with its own `Notify`,
//! and the connection's timers: the channel alone kept about 800 bytes per connection (two cache-padded
//! halves and a first block of 32 slots that is never freed); an idle mailbox holds no buffer.
//!
//! A mailbox also holds its connection's socket (plain or TLS). A broadcast pushed while the writer
//! holds nothing marks the mailbox dirty instead of waking the writer; the
//! [`Flusher`](crate::flusher::Flusher) then writes everything it has, in one write, once the
//! worker has run its ready tasks (so what many senders published in that time goes out
//! together): no task wakeup and no task poll per recipient. Only what the socket does not take
//! is left to the writer, which then owns the socket until the queue is empty. The flusher
//! writes under the mailbox's lock and only while the writer is not busy, so frames never
//! interleave and per-sender order holds.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::duplex::Socket;
use crate::ending::Control;
use crate::frame::{self, Frames, Outbox};
use crate::wakeup::Wakeup;

/// Control-frame replies buffered at most, in bytes; past it older pongs are dropped, which
/// RFC 6455 5.5.3 allows (answer only the latest ping).
const REPLIES_CAP: usize = 4096;
/// Queue slots an emptied queue keeps; a larger buffer (after a burst) is freed.
const KEPT_SLOTS: usize = 8;

/// Appends the pong of a ping with `payload` to `frames`; past [`REPLIES_CAP`] the older pongs
/// there are dropped (RFC 6455 5.5.3 allows answering only the latest ping). The one rule for
/// pongs, whether they wait in the mailbox or in what one read owes.
pub fn owe_pong(frames: &mut Vec<u8>, payload: &[u8]) {
    let pong = frame::encode(frame::PONG, payload);
    add_bounded(frames, &pong);
}

/// Appends control frames; when they start with a pong and would pass the cap, the pongs
/// waiting are dropped first (only pongs pile up: one Close at most follows them).
fn add_bounded(frames: &mut Vec<u8>, more: &[u8]) {
    if frames.len() + more.len() > REPLIES_CAP && more.first() == Some(&(0x80 | frame::PONG)) {
        frames.clear();
    }
    frames.extend_from_slice(more);
}

/// Milliseconds on a monotonic clock (tokio's, so paused test time moves it), for heartbeats.
pub fn now_ms() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What a push came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued; the mailbox has just become dirty, and the caller hands it to the flusher.
    Dirty,
    /// Queued.
    Taken,
    /// The queue holds `websocket.send_queue` messages already: the client is too slow.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Arc<Frames>>,
    /// Bytes of the queue's first frame a direct write put on the wire already.
    front_written: usize,
    /// Whole encoded control frames.
    replies: Vec<u8>,
    /// The writer holds frames it has not finished writing: nobody else writes meanwhile.
    busy: bool,
    /// A Close is on its way: nothing more is written directly (it must be the last frame).
    closing: bool,
    /// Handed to the flusher and not yet flushed.
    dirty: bool,
}

/// What flushes wrote, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Text frames and gzip frames written whole.
    pub frames: [u64; 2],
    /// Bytes written.
    pub bytes: u64,
}

/// One connection's mailbox, shared by the hub (which pushes broadcasts), the reader (which
/// pushes replies) and the writer (which takes both).
#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    /// How the connection ends; its wakeup wakes the writer too (a notification keeps a permit
    /// when it is not waiting).
    control: Control,
    capacity: usize,
    /// Gzip frames for this client, or text.
    gzip: bool,
    /// The socket, for direct writes.
    socket: Option<Socket>,
    /// When the client last sent a frame ([`now_ms`]).
    seen: AtomicU64,
    /// When the client was last pinged, or connected.
    pinged: AtomicU64,
}

impl Inner {
    /// Drops the frames `n` written bytes completed; returns how many.
    fn advance(&mut self, n: usize, gzip: bool) -> u64 {
        let (done, written) = frame::advance(self.queue.iter(), gzip, self.front_written, n);
        self.queue.drain(..done);
        self.front_written = written;
        done as u64
    }
}

impl Mailbox {
    /// A mailbox for at most `capacity` queued broadcasts (gzip frames or text), flushed
    /// straight to `socket` when there is one.
    pub fn new(capacity: usize, gzip: bool, socket: Option<Socket>) -> Self {
        let now = now_ms();
        let (seen, pinged) = (now.into(), now.into());
        Self { inner: Mutex::default(), control: Control::default(), capacity, gzip, socket, seen, pinged }
    }

    /// How the connection ends.
    pub fn control(&self) -> &Control {
        &self.control
    }

    fn ready(&self) -> &Wakeup {
        self.control.wakeup()
    }

    /// The client sent a frame: it is alive.
    pub fn touch(&self) {
        self.seen_at(now_ms());
    }

    /// The client sent a frame at `now` ([`now_ms`]).
    pub fn seen_at(&self, now: u64) {
        self.seen.store(now, Ordering::Relaxed);
    }

    /// The heartbeat at `now` ([`now_ms`]): false when the client has sent nothing for
    /// `idle_timeout`; otherwise queues a ping when `ping_interval` has passed since the last.
    pub fn beat(&self, now: u64, ping_interval: Duration, idle_timeout: Duration) -> bool {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.seen.load(Ordering::Relaxed)) >= ms(idle_timeout) {
            return false;
        }
        if now.saturating_sub(self.pinged.load(Ordering::Relaxed)) >= ms(ping_interval) {
            self.pinged.store(now, Ordering::Relaxed);
            self.ping();
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a broadcast, unless the queue is full.
    pub fn push(&self, frames: &Arc<Frames>) -> Push {
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            return Push::Full;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(frames.clone());
        if self.socket.is_some() && !inner.busy {
            if inner.dirty {
                return Push::Taken;
            }
            inner.dirty = true;
            return Push::Dirty;
        }
        drop(inner);
        // A writer that has not emptied the queue takes this one without being woken.
        if was_empty {
            self.ready().notify();
        }
        Push::Taken
    }

    /// The flusher's turn: writes what is queued to the socket in one write, unless the writer
    /// owns it or control frames must go first; what the socket does not take is left to the
    /// writer, woken for it.
    pub fn flush(&self, flushed: &mut Flushed) {
        let mut inner = self.lock();
        inner.dirty = false;
        let Some(socket) = &self.socket else { return };
        if inner.busy || inner.closing || !inner.replies.is_empty() {
            // The writer's: it takes the queue after what it holds (or closes).
            return;
        }
        while !inner.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); frame::MAX_IOV];
            let count = frame::slices(inner.queue.iter(), self.gzip, inner.front_written, &mut slices);
            let wanted: usize = slices[..count].iter().map(|s| s.len()).sum();
            // Any error but a full socket is the writer's to meet (and report) on its next write.
            let n = socket.try_write_vectored(&slices[..count]).unwrap_or(0);
            flushed.bytes += n as u64;
            flushed.frames[usize::from(self.gzip)] += inner.advance(n, self.gzip);
            if n < wanted {
                break;
            }
        }
        // A TLS socket may have taken frames whose ciphertext it could not send yet.
        let left = !inner.queue.is_empty() || socket.backlog();
        if inner.queue.is_empty() && inner.queue.capacity() > KEPT_SLOTS {
            inner.queue = VecDeque::new();
        }
        drop(inner);
        if left {
            self.ready().notify();
        }
    }

    /// Queues whole encoded control frames for the writer; `closing` when they end with the
    /// echo of the peer's Close, after which no broadcast is written.
    pub fn reply(&self, frames: &[u8], closing: bool) {
        let mut inner = self.lock();
        add_bounded(&mut inner.replies, frames);
        inner.closing |= closing;
        drop(inner);
        self.ready().notify();
    }

    /// Queues the heartbeat's Ping, unless control frames are still waiting: a writer that has
    /// not taken them is blocked on a client that does not read, and pings must not pile up
    /// behind it.
    pub fn ping(&self) {
        let mut inner = self.lock();
        if !inner.replies.is_empty() {
            return;
        }
        inner.replies.extend_from_slice(&frame::PING_FRAME);
        drop(inner);
        self.ready().notify();
    }

    /// Broadcasts waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when no broadcast is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the waiting replies and up to `max` broadcasts to `outbox`, which must have
    /// written everything it held; false when there was nothing to take. Until it returns
    /// false, the writer owns the socket.
    pub fn take(&self, outbox: &mut Outbox, max: usize) -> bool {
        let mut inner = self.lock();
        let took = !inner.replies.is_empty() || !inner.queue.is_empty();
        inner.busy = took;
        if !inner.replies.is_empty() {
            outbox.push_control(&std::mem::take(&mut inner.replies));
        }
        Self::move_front(&mut inner, outbox);
        let n = inner.queue.len().min(max);
        outbox.batch.extend(inner.queue.drain(..n));
        if inner.queue.is_empty() && inner.queue.capacity() > KEPT_SLOTS {
            inner.queue = VecDeque::new();
        }
        took
    }

    /// Moves every waiting broadcast to `outbox` (the close after a replacement or a drain).
    pub fn take_broadcasts(&self, outbox: &mut Outbox) {
        let mut inner = self.lock();
        inner.closing = true;
        Self::move_front(&mut inner, outbox);
        outbox.batch.extend(std::mem::take(&mut inner.queue));
    }

    /// Moves only a broadcast a direct write began, whose rest the stream needs before any
    /// other frame; the rest of the queue is dropped (the close of a client too slow, or gone).
    pub fn take_started(&self, outbox: &mut Outbox) {
        let mut inner = self.lock();
        inner.closing = true;
        Self::move_front(&mut inner, outbox);
        inner.queue = VecDeque::new();
    }

    /// Takes the replies alone.
    pub fn take_replies(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().replies)
    }

    /// Hands the queue's first frame, if a direct write began it, to `outbox` with its offset.
    fn move_front(inner: &mut Inner, outbox: &mut Outbox) {
        if inner.front_written > 0 {
            let started = inner.queue.pop_front().expect("a started frame is queued");
            outbox.resume(started, std::mem::take(&mut inner.front_written));
        }
    }

    /// Resolves when something was pushed since the last wait (or spuriously: check with
    /// [`take`](Self::take)).
    pub async fn pushed(&self) {
        std::future::poll_fn(|cx| self.poll_pushed(cx)).await;
    }

    /// Ready when something was pushed since the last time it was ready (or spuriously); until
    /// then the task is woken by the next push.
    pub fn poll_pushed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.ready().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frames(text: &'static str) -> Arc<Frames> {
        Arc::new(Frames::new(Utf8Bytes::from_static(text), 6))
    }

    /// A connected pair on loopback: the server's end shared as a mailbox's socket, the
    /// client's end a blocking std socket with a small receive buffer.
    async fn pair() -> (Socket, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::Tcp(Arc::new(server)), client)
    }

    fn read_exactly(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut got = vec![0; n];
        client.read_exact(&mut got).unwrap();
        got
    }

    #[tokio::test]
    async fn a_flush_writes_every_queued_frame_in_one_go_and_counts_it() {
        let (socket, mut client) = pair().await;
        let mailbox = Mailbox::new(16, false, Some(socket));
        assert_eq!(mailbox.push(&frames("a")), Push::Dirty);
        assert_eq!(mailbox.push(&frames("bc")), Push::Taken, "dirty already: handed to the flusher once");
        let mut flushed = Flushed::default();
        // The reactor must have seen the socket writable once.
        for _ in 0..100 {
            mailbox.flush(&mut flushed);
            if mailbox.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            mailbox.lock().dirty = true;
        }
        assert_eq!(flushed, Flushed { frames: [2, 0], bytes: 7 });
        assert_eq!(read_exactly(&mut client, 7), b"\x81\x01a\x81\x02bc");
        assert_eq!(mailbox.push(&frames("d")), Push::Dirty, "flushed: dirty again at the next push");
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_goes_to_the_writer_whole_and_in_order() {
        let (socket, mut client) = pair().await;
        let mailbox = Mailbox::new(4096, false, Some(socket));
        let big: &'static str = "x".repeat(60_000).leak();
        // Nobody reads: the socket fills and a flush stops inside a frame.
        let mut flushed = Flushed::default();
        let mut pushed = 0;
        while mailbox.lock().front_written == 0 && pushed < 1000 {
            mailbox.push(&frames(big));
            pushed += 1;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            mailbox.flush(&mut flushed);
        }
        assert!(mailbox.lock().front_written > 0, "a flush ended inside a frame");
        // The writer takes the frame that was cut, with its offset, and the rest after it.
        let mut outbox = Outbox::new(false);
        assert!(mailbox.take(&mut outbox, 4096));
        assert_eq!(mailbox.push(&frames("after")), Push::Taken, "the writer owns the socket: not dirty");
        let before = flushed;
        mailbox.flush(&mut flushed);
        assert_eq!(flushed, before, "the flusher writes nothing while the writer is busy");
        let total = pushed * (big.len() + 4) + 7;
        let reader = std::thread::spawn(move || read_exactly(&mut client, total));
        let mut socket = mailbox.socket.clone().unwrap();
        outbox.flush(&mut socket).await.unwrap();
        assert!(mailbox.take(&mut outbox, 4096), "what came while it wrote");
        outbox.flush(&mut socket).await.unwrap();
        assert!(!mailbox.take(&mut outbox, 4096));
        let wire = reader.join().unwrap();
        let mut expected = Vec::new();
        for _ in 0..pushed {
            expected.extend_from_slice(&frame::encode(frame::TEXT, big.as_bytes()));
        }
        expected.extend_from_slice(b"\x81\x05after");
        assert!(wire == expected, "frames whole and in order");
        assert_eq!(flushed.frames[0] + outbox.take_sent().0, pushed as u64 + 1);
    }

    #[tokio::test]
    async fn a_close_on_its_way_stops_direct_writes() {
        let (socket, _client) = pair().await;
        let mailbox = Mailbox::new(16, false, Some(socket));
        mailbox.reply(&frame::close(crate::ending::Code::GoingAway, ""), true);
        mailbox.take_replies();
        assert_eq!(mailbox.push(&frames("late")), Push::Dirty);
        let mut flushed = Flushed::default();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        mailbox.flush(&mut flushed);
        assert_eq!((flushed, mailbox.len()), (Flushed::default(), 1), "nothing follows a Close");
    }

    #[test]
    fn a_full_queue_refuses_and_a_drained_one_frees_its_buffer() {
        let mailbox = Mailbox::new(100, false, None);
        for _ in 0..100 {
            assert_eq!(mailbox.push(&frames("m")), Push::Taken);
        }
        assert_eq!(mailbox.push(&frames("one too many")), Push::Full);
        let mut outbox = Outbox::new(false);
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!((outbox.batch.len(), mailbox.len()), (64, 36));
        outbox.batch.clear();
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!((outbox.batch.len(), mailbox.lock().queue.capacity()), (36, 0));
        assert!(!mailbox.take(&mut outbox, 64), "nothing left");
    }

    #[test]
    fn replies_keep_the_latest_pongs_and_come_with_the_broadcasts() {
        let mailbox = Mailbox::new(4, false, None);
        let pong = frame::encode(frame::PONG, &[b'p'; 100]);
        for _ in 0..100 {
            mailbox.reply(&pong, false);
        }
        let replies = mailbox.take_replies();
        assert!(replies.len() <= REPLIES_CAP && replies.len().is_multiple_of(pong.len()) && !replies.is_empty());
        mailbox.reply(&pong, false);
        mailbox.push(&frames("m"));
        let mut outbox = Outbox::new(false);
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!(outbox.batch.len(), 1);
        assert!(mailbox.take_replies().is_empty(), "taken with the broadcast");
    }

    #[test]
    fn pings_do_not_pile_up_behind_a_blocked_writer() {
        let mailbox = Mailbox::new(4, false, None);
        for _ in 0..1000 {
            mailbox.ping();
        }
        assert_eq!(mailbox.take_replies(), frame::PING_FRAME);
        mailbox.reply(&frame::encode(frame::PONG, b"p"), false);
        mailbox.ping();
        assert_eq!(mailbox.take_replies(), [0x8a, 1, b'p'], "a waiting pong proves the writer is behind");
    }

    #[tokio::test]
    async fn a_push_while_the_writer_is_busy_is_not_missed() {
        let mailbox = Mailbox::new(4, false, None);
        mailbox.push(&frames("a"));
        // The writer took it and is writing; a second push comes before it waits again.
        let mut outbox = Outbox::new(false);
        mailbox.take(&mut outbox, 64);
        mailbox.push(&frames("b"));
        tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.pushed()).await.expect("woken");
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!(outbox.batch.len(), 2);
    }
}
