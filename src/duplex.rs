//! A connection's socket as a read half and a write half that work at once. A plain socket is
//! shared ([`SharedTcp`]): its connection reads and writes it through borrowed halves (no lock
//! per read or write), and its mailbox holds it too, so a fan-out can write a broadcast
//! straight to it without waking the connection. TLS, whose reads and writes share one state,
//! uses tokio's split of a borrow and is always written by its own connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::server::TlsStream;

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
    /// The socket others may write whole frames to directly, when the stream has no state of
    /// its own between the socket and the frames (plain TCP).
    fn direct(&self) -> Option<Arc<TcpStream>> {
        None
    }
}

impl Halves for TcpStream {
    type Read<'a> = tcp::ReadHalf<'a>;
    type Write<'a> = tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

impl Halves for TlsStream<TcpStream> {
    type Read<'a> = ReadHalf<&'a mut Self>;
    type Write<'a> = WriteHalf<&'a mut Self>;

    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
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

    fn direct(&self) -> Option<Arc<TcpStream>> {
        Some(self.0.clone())
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
