//! The flusher: writes the broadcasts of dirty mailboxes to their sockets, corked. A fan-out
//! only queues and marks; a flusher task per worker thread, woken once per fan-out, waits until
//! its worker has run every task that was ready (a `yield_now`, which tokio defers until then)
//! and then writes each dirty mailbox's whole queue in one write. What several senders
//! published meanwhile goes out together, as uWebSockets' cork does, and no connection's task
//! is woken or polled for it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::fanout::Sent;
use crate::mailbox::{Flushed, Mailbox};

/// Dirty mailboxes, in shards that flush independently.
#[derive(Debug)]
pub struct Flusher {
    shards: OnceLock<Box<[Arc<Shard>]>>,
    sent: Sent,
}

#[derive(Debug, Default)]
struct Shard {
    dirty: Mutex<Vec<Arc<Mailbox>>>,
    wake: Notify,
}

thread_local! {
    /// The shard of this thread (`usize::MAX` until first use).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Flusher {
    /// A flusher counting what it writes in `sent`. Its tasks start with the first flush.
    pub fn new(sent: Sent) -> Self {
        Self { shards: OnceLock::new(), sent }
    }

    /// Hands `dirty` (emptied) to this thread's shard. Needs a tokio runtime: the first call
    /// there starts the shards' tasks.
    pub fn add(&self, dirty: &mut Vec<Arc<Mailbox>>) {
        if dirty.is_empty() {
            return;
        }
        let shards = self.shards.get_or_init(|| self.start());
        let shard = &shards[this_thread() % shards.len()];
        let mut list = shard.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            std::mem::swap(&mut *list, dirty);
        } else {
            list.append(dirty);
        }
        drop(list);
        shard.wake.notify_one();
    }

    /// One shard per worker thread, each with its task.
    fn start(&self) -> Box<[Arc<Shard>]> {
        let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        let shards: Box<[Arc<Shard>]> = (0..workers).map(|_| Arc::new(Shard::default())).collect();
        for shard in shards.iter() {
            tokio::spawn(run(shard.clone(), self.sent.clone()));
        }
        shards
    }
}

fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        s.get()
    })
}

/// A shard's task: after each wakeup, lets the worker run what is ready, then flushes.
async fn run(shard: Arc<Shard>, sent: Sent) {
    let mut batch = Vec::new();
    loop {
        shard.wake.notified().await;
        tokio::task::yield_now().await;
        std::mem::swap(&mut *shard.dirty.lock().unwrap_or_else(|e| e.into_inner()), &mut batch);
        let mut total = Flushed::default();
        for mailbox in batch.drain(..) {
            mailbox.flush(&mut total);
        }
        sent.add(&total);
    }
}
