//! Fan-out: one message's shared frames handed to every registered connection by refcount.
//! Plain connections are left to the [`Flusher`] (dirty mailboxes, written corked); TLS
//! connections' writers are woken. A queue that is full ends its connection with 4001; nobody
//! else waits for it.

use std::cell::RefCell;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::ending::{Code, Ending};
use crate::flusher::Flusher;
use crate::frame::Frames;
use crate::mailbox::{Flushed, Mailbox, Push};
use crate::metrics::Metrics;
use crate::registry::{Client, Registry};

/// The counters of what the flusher writes (a writer counts what it writes), added once per
/// flush rather than once per recipient: shared atomics are what a fan-out must not touch a
/// thousand times.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Text frames and gzip frames written whole.
    frames: [Counter; 2],
    bytes: Counter,
}

impl Sent {
    /// The daemon's own counters.
    pub fn of(metrics: &Metrics) -> Self {
        let frames = [metrics.frames_sent(false).clone(), metrics.frames_sent(true).clone()];
        Self { frames, bytes: metrics.bytes_sent.clone() }
    }

    /// Adds what flushes wrote.
    pub fn add(&self, flushed: &Flushed) {
        for (counter, &n) in self.frames.iter().zip(&flushed.frames) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        if flushed.bytes > 0 {
            self.bytes.inc_by(flushed.bytes);
        }
    }
}

thread_local! {
    /// The mailboxes one fan-out made dirty; kept per thread so a fan-out allocates nothing.
    static DIRTY: RefCell<Vec<Arc<Mailbox>>> = const { RefCell::new(Vec::new()) };
}

/// Hands `frames` to every registered connection; returns how many took it.
pub fn to_all(registry: &Registry, frames: &Arc<Frames>, flusher: &Flusher) -> usize {
    if registry.gzip_len() > 0 {
        // Compress here, once, rather than in whichever writer runs first: that keeps the cost
        // on the sender's task and out of every recipient's latency.
        frames.wire(true);
    }
    DIRTY.with_borrow_mut(|dirty| {
        let mut taken = 0;
        registry.for_each(|client| taken += usize::from(to_one(client, frames, dirty)));
        flusher.add(dirty);
        taken
    })
}

/// Hands `frames` to one connection; false when it was not taken.
pub fn to_single(client: &Client, frames: &Arc<Frames>, flusher: &Flusher) -> bool {
    let mut dirty = Vec::new();
    let taken = to_one(client, frames, &mut dirty);
    flusher.add(&mut dirty);
    taken
}

fn to_one(client: &Client, frames: &Arc<Frames>, dirty: &mut Vec<Arc<Mailbox>>) -> bool {
    match client.mailbox.push(frames) {
        Push::Dirty => {
            dirty.push(client.mailbox.clone());
            true
        }
        Push::Taken => true,
        Push::Full => {
            // The connection logs this itself, naming its peer and key.
            client.mailbox.control().end(Ending::close(Code::TooSlow));
            false
        }
    }
}
