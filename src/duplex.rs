//! A connection's socket as a read half and a write half that work at once. A plain socket is
//! shared ([`SharedTcp`]): its connection reads and writes it through borrowed halves (no lock
//! per read or write), and its mailbox holds it too, so a fan-out can write a broadcast
//! straight to it without waking the connection. A TLS socket is shared the same way
//! ([`SharedTls`](crate::tls_socket::SharedTls)), its session state under a lock.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpStream};

use crate::tls_socket::TlsSocket;

/// A stream that lends out a read half and a write half; the stream is whole again once both
/// are dropped.
pub trait Halves: AsyncRead + AsyncWrite + Unpin {
    /// The read half.
    type Read<'a>: AsyncRead + Unpin
    where
        Self: 'a;
    /// The write half.
    type Write<'a>: AsyncWrite + Unpin
    where
        Self: 'a;
    /// Both halves, borrowing the stream.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// The socket others may write whole frames to directly, when there is one.
    fn direct(&self) -> Option<Direct> {
        None
    }
}

/// A socket a fan-out writes whole frames to without waking its connection: plain, or TLS
/// (encrypted on the way).
#[derive(Debug, Clone)]
pub enum Direct {
    /// A plain socket.
    Tcp(Arc<TcpStream>),
    /// A TLS socket and its session.
    Tls(Arc<TlsSocket>),
}

impl Direct {
    /// Writes what the socket takes now, without waiting; returns the bytes of `bufs` taken.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Direct::Tcp(tcp) => tcp.try_write_vectored(bufs),
            Direct::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// True when bytes taken still wait to reach the socket (TLS' ciphertext): the connection's
    /// writer must finish them.
    pub fn backlog(&self) -> bool {
        match self {
            Direct::Tcp(_) => false,
            Direct::Tls(tls) => tls.backlog(),
        }
    }
}

impl Halves for TcpStream {
    type Read<'a> = tcp::ReadHalf<'a>;
    type Write<'a> = tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

/// A plain socket shared by its connection and its mailbox.
#[derive(Debug, Clone)]
pub struct SharedTcp(pub Arc<TcpStream>);

/// A borrowed half of a shared socket: reads and writes on readiness, as tokio's own halves do.
#[derive(Debug, Clone, Copy)]
pub struct TcpRef<'a>(&'a TcpStream);

impl Halves for SharedTcp {
    type Read<'a> = TcpRef<'a>;
    type Write<'a> = TcpRef<'a>;

    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        (TcpRef(&self.0), TcpRef(&self.0))
    }

    fn direct(&self) -> Option<Direct> {
        Some(Direct::Tcp(self.0.clone()))
    }
}

impl AsyncRead for TcpRef<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A WouldBlock clears the readiness, so the next poll waits for the reactor.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TcpRef<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0).shutdown(std::net::Shutdown::Write))
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut TcpRef(&self.0)).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut TcpRef(&self.0)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut TcpRef(&self.0)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut TcpRef(&self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut TcpRef(&self.0)).poll_shutdown(cx)
    }
}
