//! A connection's socket as a read half and a write half that work at once: for plain TCP the
//! kernel socket's own borrowed halves (no allocation, no lock per read or write); for TLS,
//! whose reads and writes share one state, tokio's split of a borrow.

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
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
