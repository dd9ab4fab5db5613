//! The keyed registry: one live connection per `specialKey`, and the handle used to end one.
//!
//! Entries carry a per-connection id so that a replaced connection, when it finally goes away,
//! removes only itself and never its successor.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::broadcast::Frames;
use crate::frame::PONG;

/// Close code sent to a connection replaced by a newer one with the same key.
pub const REPLACED: u16 = 4000;
/// Close code sent to a client whose send queue overflowed.
pub const TOO_SLOW: u16 = 4001;

/// How a connection ends; the first reason set wins.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Send this Close frame (after the queued messages, unless the queue is the problem).
    Close(CloseFrame),
    /// The peer closed; tungstenite already answers its Close.
    PeerClosed,
    /// The peer is gone or broken; nothing more is sent.
    Dead(&'static str),
}

impl Ending {
    /// A Close frame with a static reason.
    pub fn close(code: u16, reason: &'static str) -> Self {
        Ending::Close(CloseFrame { code: CloseCode::from(code), reason: reason.into() })
    }
}

/// Control-frame replies (pongs, close echoes) buffered at most, in bytes; past it older pongs
/// are dropped, which RFC 6455 5.5.3 allows (answer only the latest ping).
const REPLIES_CAP: usize = 4096;

/// The shared end-of-life switch of one connection: the broadcaster, the registry, the
/// shutdown and the connection's own reader all end it through here. It also carries the
/// control-frame replies the reader produces to the writer, the only one that writes.
#[derive(Debug, Default)]
pub struct Control {
    ending: OnceLock<Ending>,
    notify: Notify,
    /// A std Mutex: held to append or take a few bytes, never across an await.
    replies: Mutex<Vec<u8>>,
    replied: Notify,
}

impl Control {
    /// Sets the ending if none is set yet; true when this call decided it.
    pub fn end(&self, ending: Ending) -> bool {
        let first = self.ending.set(ending).is_ok();
        if first {
            // notify_one stores a permit, so the writer sees it even if it is not waiting now.
            self.notify.notify_one();
        }
        first
    }

    /// The ending, once decided.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.get()
    }

    /// Resolves once an ending is set.
    pub async fn ended(&self) {
        while self.ending.get().is_none() {
            self.notify.notified().await;
        }
    }

    /// Queues encoded control frames for the writer.
    pub fn reply(&self, frames: &[u8]) {
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        if replies.len() + frames.len() > REPLIES_CAP && frames.first() == Some(&(0x80 | PONG)) {
            // Only pongs pile up (one close at most follows them): keep the latest.
            replies.clear();
        }
        replies.extend_from_slice(frames);
        drop(replies);
        self.replied.notify_one();
    }

    /// Takes the queued replies.
    pub fn take_replies(&self) -> Vec<u8> {
        std::mem::take(&mut *self.replies.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves when replies were queued since the last call.
    pub async fn replied(&self) {
        self.replied.notified().await
    }
}

/// A registered connection as the broadcaster sees it.
#[derive(Debug)]
pub struct Client {
    /// Unique per connection for the daemon's lifetime.
    pub id: u64,
    /// Wants gzip Binary frames.
    pub gzip: bool,
    /// The connection's bounded send queue.
    pub queue: mpsc::Sender<Arc<Frames>>,
    /// How to end it.
    pub control: Arc<Control>,
}

/// All registered connections by key, with counters that are cheap to read.
#[derive(Debug)]
pub struct Registry {
    clients: DashMap<Box<str>, Client>,
    next_id: AtomicU64,
    count: AtomicUsize,
    gzip_count: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            // Many shards: a fan-out holds each shard's read lock while it queues to that shard's
            // clients, and registrations wait for it; smaller shards mean shorter waits.
            clients: DashMap::with_shard_amount(256),
            next_id: AtomicU64::default(),
            count: AtomicUsize::default(),
            gzip_count: AtomicUsize::default(),
        }
    }
}

impl Registry {
    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `client` under `key`; a connection already there is told to close with 4000.
    pub fn register(&self, key: Box<str>, client: Client) {
        let gzip = client.gzip;
        match self.clients.insert(key, client) {
            Some(old) => {
                if old.gzip {
                    self.gzip_count.fetch_sub(1, Ordering::Relaxed);
                }
                old.control.end(Ending::close(REPLACED, "replaced by a newer connection"));
            }
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        if gzip {
            self.gzip_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes `key` only if it still belongs to connection `id`; true if it did.
    pub fn unregister(&self, key: &str, id: u64) -> bool {
        match self.clients.remove_if(key, |_, c| c.id == id) {
            Some((_, c)) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                if c.gzip {
                    self.gzip_count.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Calls `f` for every registered connection. `f` must not block or touch the registry:
    /// a shard's read lock is held meanwhile.
    pub fn for_each(&self, mut f: impl FnMut(&Client)) {
        for entry in self.clients.iter() {
            f(entry.value());
        }
    }

    /// Registered connections.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registered connections that want gzip.
    pub fn gzip_len(&self) -> usize {
        self.gzip_count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(reg: &Registry, gzip: bool) -> (Client, Arc<Control>) {
        let (queue, _rx) = mpsc::channel(1);
        let control = Arc::new(Control::default());
        (Client { id: reg.next_id(), gzip, queue, control: control.clone() }, control)
    }

    fn code(c: &Control) -> Option<u16> {
        match c.ending() {
            Some(Ending::Close(f)) => Some(f.code.into()),
            _ => None,
        }
    }

    #[test]
    fn replacement_closes_the_old_and_never_removes_the_new() {
        let reg = Registry::default();
        let (a, a_ctl) = client(&reg, true);
        let a_id = a.id;
        reg.register("k".into(), a);
        assert_eq!((reg.len(), reg.gzip_len()), (1, 1));
        let (b, b_ctl) = client(&reg, false);
        let b_id = b.id;
        reg.register("k".into(), b);
        assert_eq!(code(&a_ctl), Some(REPLACED));
        assert_eq!(code(&b_ctl), None);
        assert_eq!((reg.len(), reg.gzip_len()), (1, 0));
        assert!(!reg.unregister("k", a_id), "the late removal of the old must not remove the new");
        assert_eq!(reg.len(), 1);
        assert!(reg.unregister("k", b_id));
        assert!(reg.is_empty());
        assert!(!reg.unregister("k", b_id));
    }

    #[test]
    fn first_ending_wins() {
        let c = Control::default();
        assert!(c.end(Ending::close(TOO_SLOW, "too slow")));
        assert!(!c.end(Ending::close(REPLACED, "replaced")));
        assert_eq!(code(&c), Some(TOO_SLOW));
    }
}
