//! A connection's socket, plain or TLS, read and written at once. The socket is shared
//! ([`Socket`]): its connection's reader and writer each hold it (no lock per plain read or
//! write), and its mailbox holds it too, so a fan-out can write a broadcast straight to it
//! without waking the connection. A TLS socket's session state sits under a lock in
//! [`TlsSocket`].

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls_socket::TlsSocket;

/// A connection's socket, shared by the connection and its mailbox.
#[derive(Debug, Clone)]
pub enum Socket {
    /// A plain socket.
    Tcp(Arc<TcpStream>),
    /// A TLS socket and its session.
    Tls(Arc<TlsSocket>),
}

/// A borrowed half of a [`Socket`]: reads and writes on readiness, as tokio's own halves do.
#[derive(Debug, Clone, Copy)]
pub enum SocketRef<'a> {
    /// A plain socket.
    Tcp(&'a TcpStream),
    /// A TLS socket.
    Tls(&'a TlsSocket),
}

impl Socket {
    /// Writes what the socket takes now, without waiting; returns the bytes of `bufs` taken.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Tcp(tcp) => tcp.try_write_vectored(bufs),
            Socket::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// True when bytes taken still wait to reach the socket (TLS' ciphertext): the connection's
    /// writer must finish them.
    pub fn backlog(&self) -> bool {
        match self {
            Socket::Tcp(_) => false,
            Socket::Tls(tls) => tls.backlog(),
        }
    }

    fn by_ref(&self) -> SocketRef<'_> {
        match self {
            Socket::Tcp(tcp) => SocketRef::Tcp(tcp),
            Socket::Tls(tls) => SocketRef::Tls(tls),
        }
    }
}

impl AsyncRead for SocketRef<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = match *self {
            SocketRef::Tls(tls) => return tls.poll_read(cx, buf),
            SocketRef::Tcp(tcp) => tcp,
        };
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // A WouldBlock clears the readiness, so the next poll waits for the reactor.
            match tcp.try_read(buf.initialize_unfilled()) {
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

impl AsyncWrite for SocketRef<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = match *self {
            SocketRef::Tls(tls) => return tls.poll_write_vectored(cx, bufs),
            SocketRef::Tcp(tcp) => tcp,
        };
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {
            SocketRef::Tls(tls) => tls.poll_flush(cx),
            SocketRef::Tcp(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {
            SocketRef::Tls(tls) => tls.poll_shutdown(cx),
            SocketRef::Tcp(tcp) => Poll::Ready(socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write)),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.by_ref()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.by_ref()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.by_ref()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.by_ref()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.by_ref()).poll_shutdown(cx)
    }
}
