//! The keyed registry: one live connection per `specialKey`.
//!
//! Entries carry a per-connection id so that a replaced connection, when it finally goes away,
//! removes only itself and never its successor. Only the [`Hub`](crate::hub::Hub) uses it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ending::{Code, Ending};
use crate::mailbox::Mailbox;

/// What the admin API shows of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Connected over TLS.
    pub tls: bool,
    /// Wants gzip Binary frames.
    pub gzip: bool,
    /// When its upgrade completed.
    pub connected_at: std::time::SystemTime,
    /// Its token's `exp` (seconds since the Unix epoch); 0 without a token. 32 bits (enough until
    /// 2106) keep this struct, one per connection, as small as it was without tokens.
    pub expires: u32,
}

/// A registered connection as the fan-out sees it.
#[derive(Debug)]
pub struct Client {
    /// Unique per connection for the daemon's lifetime.
    pub id: u64,
    /// Where it comes from and since when.
    pub info: ClientInfo,
    /// The connection's bounded send queue (and its control replies), and how to end it.
    pub mailbox: Arc<Mailbox>,
    /// Its cluster-wide generation (0 until Redis gave it one, or without a cluster).
    pub generation: AtomicU64,
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
        let gzip = client.info.gzip;
        match self.clients.insert(key, client) {
            Some(old) => {
                if old.info.gzip {
                    self.gzip_count.fetch_sub(1, Ordering::Relaxed);
                }
                old.mailbox.control().end(Ending::close(Code::Replaced));
            }
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        if gzip {
            self.gzip_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes `key` only if it still belongs to connection `id`; returns its generation if it
    /// did.
    pub fn unregister(&self, key: &str, id: u64) -> Option<u64> {
        let (_, c) = self.clients.remove_if(key, |_, c| c.id == id)?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        if c.info.gzip {
            self.gzip_count.fetch_sub(1, Ordering::Relaxed);
        }
        Some(c.generation.load(Ordering::Relaxed))
    }

    /// Calls `f` with the connection registered under `key`, if any. `f` must not block or
    /// touch the registry: the shard's read lock is held meanwhile.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&Client) -> R) -> Option<R> {
        self.clients.get(key).map(|c| f(c.value()))
    }

    /// Calls `f` for every registered connection, under the same rule as [`Registry::with`].
    pub fn for_each(&self, mut f: impl FnMut(&Client)) {
        for entry in self.clients.iter() {
            f(entry.value());
        }
    }

    /// Like [`Registry::for_each`], with each connection's key.
    pub fn for_each_keyed(&self, mut f: impl FnMut(&str, &Client)) {
        for entry in self.clients.iter() {
            f(entry.key(), entry.value());
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

    fn client(reg: &Registry, gzip: bool) -> (Client, Arc<Mailbox>) {
        let mailbox = Arc::new(Mailbox::new(1, false, None));
        let info = ClientInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            tls: false,
            gzip,
            connected_at: std::time::SystemTime::UNIX_EPOCH,
            expires: 0,
        };
        let generation = AtomicU64::new(0);
        (Client { id: reg.next_id(), info, mailbox: mailbox.clone(), generation }, mailbox)
    }

    #[test]
    fn replacement_closes_the_old_and_never_removes_the_new() {
        let reg = Registry::default();
        let (a, a_mailbox) = client(&reg, true);
        let a_id = a.id;
        reg.register("k".into(), a);
        assert_eq!((reg.len(), reg.gzip_len()), (1, 1));
        let (b, b_mailbox) = client(&reg, false);
        let b_id = b.id;
        reg.register("k".into(), b);
        assert_eq!(a_mailbox.control().ending().and_then(Ending::code), Some(Code::Replaced));
        assert_eq!(b_mailbox.control().ending(), None);
        assert_eq!((reg.len(), reg.gzip_len()), (1, 0));
        assert!(reg.unregister("k", a_id).is_none(), "the late removal of the old must not remove the new");
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.with("k", |c| c.id), Some(b_id));
        assert_eq!(reg.unregister("k", b_id), Some(0));
        assert!(reg.is_empty());
        assert!(reg.unregister("k", b_id).is_none());
    }
}
