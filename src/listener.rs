//! The accept loop: a connection permit before each accept, backoff on accept errors, and the
//! connection handed to its own task at once (TLS and upgrade never run here).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::connection::{self, Context};

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

/// Accepts until shutdown; each connection holds one of `permits` for its whole life.
pub async fn run(listener: TcpListener, ctx: Arc<Context>, permits: Arc<Semaphore>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the permit semaphore is never closed"),
            () = ctx.shutdown.accepting_stopped() => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = ctx.shutdown.accepting_stopped() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
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
