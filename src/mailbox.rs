//! A connection's mailbox: the bounded queue of broadcasts the hub hands it, and the control
//! frames its reader owes the peer (pongs, pings, the echo of a Close), under one lock with one
//! wakeup for the writer.
//!
//! It replaces a tokio mpsc channel, a separate reply buffer with its own `Notify`, and the
//! writer's ping timer: the channel alone kept about 800 bytes per connection (two cache-padded
//! halves and a first block of 32 slots that is never freed); an idle mailbox holds no buffer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::frame::{self, Frames, Outbox};

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

/// What a push came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Taken,
    /// The queue holds `websocket.send_queue` messages already: the client is too slow.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Arc<Frames>>,
    /// Whole encoded control frames.
    replies: Vec<u8>,
}

/// One connection's mailbox, shared by the hub (which pushes broadcasts), the reader (which
/// pushes replies) and the writer (which takes both).
#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    /// Wakes the writer; `notify_one` keeps a permit when it is not waiting.
    ready: Notify,
    capacity: usize,
}

impl Mailbox {
    /// A mailbox for at most `capacity` queued broadcasts.
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::default(), ready: Notify::new(), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a broadcast, unless the queue is full.
    pub fn push(&self, frames: Arc<Frames>) -> Push {
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            return Push::Full;
        }
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(frames);
        drop(inner);
        // A writer that has not emptied the queue takes this one without being woken.
        if was_empty {
            self.ready.notify_one();
        }
        Push::Taken
    }

    /// Queues whole encoded control frames for the writer.
    pub fn reply(&self, frames: &[u8]) {
        let mut inner = self.lock();
        add_bounded(&mut inner.replies, frames);
        drop(inner);
        self.ready.notify_one();
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
        self.ready.notify_one();
    }

    /// Broadcasts waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when no broadcast is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the waiting replies and up to `max` broadcasts to `outbox`; false when there was
    /// nothing to take.
    pub fn take(&self, outbox: &mut Outbox, max: usize) -> bool {
        let mut inner = self.lock();
        let took = !inner.replies.is_empty() || !inner.queue.is_empty();
        if !inner.replies.is_empty() {
            outbox.push_control(&std::mem::take(&mut inner.replies));
        }
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
        outbox.batch.extend(std::mem::take(&mut inner.queue));
    }

    /// Takes the replies alone.
    pub fn take_replies(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().replies)
    }

    /// Resolves when something was pushed since the last wait (or spuriously: check with
    /// [`take`](Self::take)).
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frames(text: &'static str) -> Arc<Frames> {
        Arc::new(Frames::new(Utf8Bytes::from_static(text), 6))
    }

    #[test]
    fn a_full_queue_refuses_and_a_drained_one_frees_its_buffer() {
        let mailbox = Mailbox::new(100);
        for _ in 0..100 {
            assert_eq!(mailbox.push(frames("m")), Push::Taken);
        }
        assert_eq!(mailbox.push(frames("one too many")), Push::Full);
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
        let mailbox = Mailbox::new(4);
        let pong = frame::encode(frame::PONG, &[b'p'; 100]);
        for _ in 0..100 {
            mailbox.reply(&pong);
        }
        let replies = mailbox.take_replies();
        assert!(replies.len() <= REPLIES_CAP && replies.len().is_multiple_of(pong.len()) && !replies.is_empty());
        mailbox.reply(&pong);
        mailbox.push(frames("m"));
        let mut outbox = Outbox::new(false);
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!(outbox.batch.len(), 1);
        assert!(mailbox.take_replies().is_empty(), "taken with the broadcast");
    }

    #[test]
    fn pings_do_not_pile_up_behind_a_blocked_writer() {
        let mailbox = Mailbox::new(4);
        for _ in 0..1000 {
            mailbox.ping();
        }
        assert_eq!(mailbox.take_replies(), frame::PING_FRAME);
        mailbox.reply(&frame::encode(frame::PONG, b"p"));
        mailbox.ping();
        assert_eq!(mailbox.take_replies(), [0x8a, 1, b'p'], "a waiting pong proves the writer is behind");
    }

    #[tokio::test]
    async fn a_push_while_the_writer_is_busy_is_not_missed() {
        let mailbox = Mailbox::new(4);
        mailbox.push(frames("a"));
        // The writer took it and is writing; a second push comes before it waits again.
        let mut outbox = Outbox::new(false);
        mailbox.take(&mut outbox, 64);
        mailbox.push(frames("b"));
        tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.pushed()).await.expect("woken");
        assert!(mailbox.take(&mut outbox, 64));
        assert_eq!(outbox.batch.len(), 2);
    }
}
