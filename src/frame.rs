//! Server frames on the wire: [`Frames`], one message encoded once for every recipient, and the
//! per-connection [`Outbox`] that writes them straight from those shared buffers.
//!
//! The writer is ours, not tungstenite's: tungstenite copies each frame into an output buffer
//! that it drains but never shrinks, so every connection kept the capacity of the largest frame
//! it was ever sent. Here a connection holds references to shared frames while they are being
//! written and nothing once they are: after a large message it is back to its idle footprint.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ending::{fit_reason, Code};
use crate::gzip;

/// Continuation frame opcode.
pub const CONTINUATION: u8 = 0x0;
/// Text frame opcode.
pub const TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const BINARY: u8 = 0x2;
/// Close frame opcode.
pub const CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const PING: u8 = 0x9;
/// Pong frame opcode.
pub const PONG: u8 = 0xA;

/// Data frames a single vectored write carries at most.
pub const MAX_IOV: usize = 64;

/// The wire of up to `MAX_IOV` frames of `batch` for one vectored write, the first from byte
/// `written` on; the one rule for the writer's outbox and the flusher.
pub fn slices<'a>(
    batch: impl Iterator<Item = &'a Arc<Frames>>,
    gzip: bool,
    written: usize,
    out: &mut [IoSlice<'a>; MAX_IOV],
) -> usize {
    let mut count = 0;
    for (slot, frames) in out.iter_mut().zip(batch) {
        let wire = frames.wire(gzip);
        *slot = IoSlice::new(if count == 0 { &wire[written..] } else { wire });
        count += 1;
    }
    count
}

/// What `n` more written bytes do to `batch`, whose first frame had `written` bytes out: how
/// many frames they complete, and how far into the next one they reach.
pub fn advance<'a>(
    batch: impl Iterator<Item = &'a Arc<Frames>>,
    gzip: bool,
    mut written: usize,
    mut n: usize,
) -> (usize, usize) {
    let mut done = 0;
    for frames in batch {
        let left = frames.wire(gzip).len() - written;
        if n < left {
            return (done, written + n);
        }
        n -= left;
        written = 0;
        done += 1;
    }
    (done, 0)
}

/// One unmasked, final server frame: header and payload in one buffer.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(10 + payload.len());
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A Close frame with `code` and `reason` (cut to the bytes a close reason may hold, at a
/// character boundary).
pub fn close(code: Code, reason: &str) -> Bytes {
    let mut payload = code.as_u16().to_be_bytes().to_vec();
    payload.extend_from_slice(fit_reason(reason).as_bytes());
    encode(CLOSE, &payload)
}

/// An empty Ping, the daemon's heartbeat.
pub const PING_FRAME: [u8; 2] = [0x80 | PING, 0];

/// One broadcast message as it goes on the wire, in both encodings: a Text frame, and a Binary
/// frame of its gzip form. Each is encoded once, whatever the number of recipients; the gzip
/// form is computed on first use, so it costs nothing when no gzip client exists.
#[derive(Debug)]
pub struct Frames {
    text: Bytes,
    gzip: OnceLock<Bytes>,
    level: u32,
}

impl Frames {
    /// Encodes `text` as a Text frame; the gzip frame will use `level`.
    pub fn new(text: Utf8Bytes, level: u32) -> Self {
        Self { text: encode(TEXT, text.as_bytes()), gzip: OnceLock::new(), level }
    }

    /// The whole frame (header and payload) for a client: Binary gzip or Text.
    pub fn wire(&self, gzip: bool) -> &Bytes {
        if !gzip {
            return &self.text;
        }
        self.gzip.get_or_init(|| encode(BINARY, &gzip::compress(self.payload(), self.level)))
    }

    /// The text itself, without the frame header.
    pub fn payload(&self) -> &[u8] {
        let header = match self.text[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &self.text[header..]
    }
}

/// What one connection still has to write, and how far it got.
///
/// Control frames (pong and close replies, pings, our close) go out between data frames, never
/// inside one. The state lives here rather than in a future, so a write interrupted by a
/// `select!` resumes exactly where it stopped.
#[derive(Debug)]
pub struct Outbox {
    /// Broadcasts taken from the queue and not yet fully written; bounded by the batch size.
    pub batch: Vec<Arc<Frames>>,
    /// Bytes of `batch[0]` already written.
    written: usize,
    /// Control frames waiting for the next frame boundary, less what was written of them;
    /// empty (unallocated) when idle.
    control: Vec<u8>,
    gzip: bool,
    /// Broadcast frames and bytes written since the last [`Outbox::take_sent`].
    sent: (u64, u64),
}

impl Outbox {
    /// An empty outbox for a client that wants gzip (Binary) frames or text ones.
    pub fn new(gzip: bool) -> Self {
        Self { batch: Vec::new(), written: 0, control: Vec::new(), gzip, sent: (0, 0) }
    }

    /// Queues control frames (already encoded) for the next frame boundary.
    pub fn push_control(&mut self, frames: &[u8]) {
        self.control.extend_from_slice(frames);
    }

    /// Takes over a broadcast of which `written` bytes went out already (by a direct write); the
    /// outbox must hold no broadcast.
    pub fn resume(&mut self, frames: Arc<Frames>, written: usize) {
        debug_assert!(self.batch.is_empty() && self.written == 0);
        self.batch.insert(0, frames);
        self.written = written;
    }

    /// Drops every broadcast not yet started; one already half-written is kept, since the
    /// stream would be corrupt without its rest.
    pub fn discard_unstarted(&mut self) {
        self.batch.truncate(usize::from(self.written > 0));
    }

    /// Whether this client gets gzip frames.
    pub fn gzip(&self) -> bool {
        self.gzip
    }

    /// Broadcast frames fully written and bytes written (control frames included) since the
    /// last call.
    pub fn take_sent(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.sent)
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.control.is_empty()
    }

    /// Writes everything queued, then flushes. Cancel safe: progress is kept in `self`.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(Pin::new(&mut *io), cx)).await
    }

    /// [`flush`](Self::flush) by hand: ready once everything queued is written and flushed.
    pub fn poll_flush<W: AsyncWrite>(&mut self, mut io: Pin<&mut W>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let control_pending = !self.control.is_empty();
            if control_pending && self.written == 0 {
                let n = nonzero(ready!(io.as_mut().poll_write(cx, &self.control))?)?;
                self.sent.1 += n as u64;
                if n == self.control.len() {
                    // Released: control frames are rare, an idle connection holds no buffer.
                    self.control = Vec::new();
                } else {
                    // A few bytes at most (the mailbox caps them): moving them costs less than
                    // an offset every connection would keep.
                    self.control.drain(..n);
                }
                continue;
            }
            if self.batch.is_empty() {
                return io.poll_flush(cx);
            }
            // With a control frame waiting, finish only the current frame to reach a boundary.
            let take = if control_pending { 1 } else { MAX_IOV };
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let count = slices(self.batch.iter().take(take), self.gzip, self.written, &mut iov);
            let n = nonzero(ready!(io.as_mut().poll_write_vectored(cx, &iov[..count]))?)?;
            self.advance(n);
        }
    }

    /// Accounts for `n` written bytes of the batch.
    fn advance(&mut self, n: usize) {
        self.sent.1 += n as u64;
        let (done, written) = advance(self.batch.iter(), self.gzip, self.written, n);
        self.batch.drain(..done);
        self.written = written;
        self.sent.0 += done as u64;
    }
}

fn nonzero(n: usize) -> io::Result<usize> {
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn headers_for_each_length_class() {
        assert_eq!(&encode(TEXT, b"hi")[..], b"\x81\x02hi");
        let mid = encode(BINARY, &[7; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = encode(TEXT, &[7; 70_000]);
        assert_eq!(&big[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(&close(Code::Replaced, "bye")[..], b"\x88\x05\x0f\xa0bye");
        let long = "\u{e9}".repeat(100);
        assert_eq!(close(Code::Replaced, &long)[1], 2 + 122, "cut at a character boundary");
        let frames = Frames::new(Utf8Bytes::from_static("hello"), 6);
        assert_eq!(frames.payload(), b"hello");
        assert_eq!(&frames.wire(false)[..], b"\x81\x05hello");
        let gz = frames.wire(true);
        assert_eq!(gz[0], 0x82);
        assert_eq!(gzip::inflate(&gz[2..], 100).unwrap(), "hello");
    }

    #[tokio::test]
    async fn partial_writes_keep_frames_whole_and_control_between_them() {
        // A tiny pipe forces many partial writes.
        let (mut client, mut server) = tokio::io::duplex(7);
        let mut out = Outbox::new(false);
        for text in ["first message", "second"] {
            out.batch.push(Arc::new(Frames::new(Utf8Bytes::from_static(text), 6)));
        }
        // Nobody reads yet: the first frame is cut after 7 bytes.
        let started = tokio::time::timeout(std::time::Duration::from_millis(50), out.flush(&mut server)).await;
        assert!(started.is_err(), "the pipe is full");
        // A pong queued now must wait for the frame boundary.
        out.push_control(&encode(PONG, b"p"));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        out.flush(&mut server).await.unwrap();
        assert!(out.is_empty());
        drop(server);
        let mut expected = encode(TEXT, b"first message").to_vec();
        expected.extend_from_slice(&encode(PONG, b"p"));
        expected.extend_from_slice(&encode(TEXT, b"second"));
        assert_eq!(reader.await.unwrap(), expected);
    }
}
