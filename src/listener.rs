//! The accept loop and the connection limit: a place in [`Capacity`] for each accepted socket,
//! backoff on accept errors, and the connection handed to its own task at once (TLS and upgrade
//! never run here).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::connection;
use crate::settings::Settings;
use crate::state::Context;

/// Pending connections the kernel may queue: a reconnect storm after a restart waits there
/// instead of being refused.
const BACKLOG: i32 = 4096;

/// Binds one listening socket. IPv6 sockets are v6-only, so `0.0.0.0:p` and `[::]:p` can both be
/// listed.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Listening sockets passed by systemd socket activation (`LISTEN_FDS`); empty when none were.
pub fn inherited() -> io::Result<Vec<TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for i in 0..fds.len() {
        if let Some(l) = fds.take_tcp_listener(i)? {
            l.set_nonblocking(true)?;
            listeners.push(TcpListener::from_std(l)?);
        }
    }
    Ok(listeners)
}

/// The open connections, held to the live `max_connections` exactly, across every listener and
/// every reload.
///
/// A count checked against the live limit rather than a semaphore: a lowered limit applies at
/// once (nothing new is served until the count is below it), and no permit sits idle in an
/// accept loop.
#[derive(Debug, Default)]
pub struct Capacity {
    open: AtomicUsize,
    freed: Notify,
}

/// One connection's place in the [`Capacity`]; released on drop.
#[derive(Debug)]
pub struct Permit(Arc<Capacity>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl Capacity {
    /// Connections holding a permit.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until the count is below the live limit, then takes a place.
    pub async fn acquire(self: &Arc<Self>, live: &mut watch::Receiver<Arc<Settings>>) -> Permit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check and the wait wakes us.
            freed.as_mut().enable();
            let max = live.borrow_and_update().max_connections;
            if self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok() {
                return Permit(self.clone());
            }
            tokio::select! {
                () = freed => {}
                // A reload may have raised the limit (no match once the daemon is gone).
                Ok(()) = live.changed() => {}
            }
        }
    }
}

/// Accepts until shutdown; a connection is served once it has a place in `capacity` and holds
/// it for its whole life. While the daemon is full, the accepted socket waits for a place and
/// the rest wait in the kernel's queue.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, capacity: Arc<Capacity>) {
    let mut live = ctx.live.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = ctx.shutdown.accepting_stopped() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                let permit = tokio::select! {
                    p = capacity.acquire(&mut live) => p,
                    () = ctx.shutdown.accepting_stopped() => return,
                };
                // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; limits and logs use a.b.c.d.
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                let ctx2 = ctx.clone();
                ctx.shutdown.spawn_connection(async move {
                    connection::serve(tcp, peer, ctx2).await;
                    drop(permit);
                });
            }
            // The peer gave up between SYN and accept: its business, not ours.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {
                debug!(%e, "accept: peer left");
            }
            // EMFILE, ENFILE, ENOBUFS...: wait for resources instead of spinning.
            Err(e) => {
                warn!(%e, backoff_ms = backoff.as_millis() as u64, "accept failed, backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = ctx.shutdown.accepting_stopped() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
