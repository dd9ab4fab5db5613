//! The bounded, ordered queue of envelopes waiting to be published to Redis.
//!
//! Sequence numbers are given here, under the queue's lock, so the order of numbers is the
//! order of publishing: a replay after an outage shows receivers no false gap, and a message
//! dropped for lack of room shows them a real one.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Envelopes in publishing order, at most `capacity`.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Woken when something is queued.
    pub ready: Notify,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Bytes>,
    capacity: usize,
    next_seq: u64,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` envelopes.
    pub fn new(capacity: usize) -> Self {
        let inner = Inner { queue: VecDeque::new(), capacity: capacity.max(1), next_seq: 1 };
        Self { inner: Mutex::new(inner), ready: Notify::new() }
    }

    /// Queues the envelope `encode` writes for the next sequence number; when full, the oldest
    /// is dropped first. Returns true when one was dropped.
    pub fn push(&self, encode: impl FnOnce(u64) -> Vec<u8>) -> bool {
        let dropped = {
            let mut inner = self.inner.lock().expect("outbox lock");
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let envelope = encode(seq);
            let dropped = inner.queue.len() >= inner.capacity;
            if dropped {
                inner.queue.pop_front();
            }
            inner.queue.push_back(Bytes::from(envelope));
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The first `max` envelopes (shared, not copied), left queued until [`Outbox::done`].
    pub fn peek(&self, max: usize) -> Vec<Bytes> {
        let inner = self.inner.lock().expect("outbox lock");
        inner.queue.iter().take(max).cloned().collect()
    }

    /// Removes the first `n` envelopes: they were published. Some may have been dropped
    /// meanwhile (the queue overflowed while they were in flight): `sent` are the bytes that
    /// went out, so only those still at the front are removed.
    pub fn done(&self, sent: &[Bytes]) {
        let mut inner = self.inner.lock().expect("outbox lock");
        for envelope in sent {
            // The same allocation, not merely equal bytes.
            if inner.queue.front().is_some_and(|f| f.as_ptr() == envelope.as_ptr()) {
                inner.queue.pop_front();
            }
        }
    }

    /// Envelopes waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("outbox lock").queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    fn queued(outbox: &Outbox) -> Vec<Vec<u8>> {
        outbox.peek(10).iter().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn keeps_order_and_numbers_and_drops_the_oldest_when_full() {
        let outbox = Outbox::new(3);
        let dropped = (0..5).filter(|_| outbox.push(numbered)).count();
        assert_eq!(dropped, 2);
        assert_eq!(queued(&outbox), [numbered(3), numbered(4), numbered(5)]);
        let batch = outbox.peek(2);
        outbox.done(&batch);
        assert_eq!(queued(&outbox), [numbered(5)]);
    }

    #[test]
    fn an_overflow_during_a_publish_removes_only_what_is_still_queued() {
        let outbox = Outbox::new(2);
        outbox.push(numbered);
        outbox.push(numbered);
        let in_flight = outbox.peek(2);
        outbox.push(numbered); // drops 1
        outbox.push(numbered); // drops 2
        outbox.done(&in_flight);
        assert_eq!(queued(&outbox), [numbered(3), numbered(4)]);
    }
}
