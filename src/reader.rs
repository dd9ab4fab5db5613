//! The reading half of a connection: client frames parsed by us (RFC 6455 5), read into one
//! buffer per worker thread, so an idle connection holds no read buffer at all.
//!
//! [`Parser`] is synchronous and owns the rules (masking, reserved bits and opcodes, control
//! frame limits, fragmentation, the size cap, UTF-8, close codes); it keeps only what a read cut
//! off: the rest of a frame, or a fragmented message under way, both freed once complete.
//! [`Reader`] feeds it from the socket and hands the replies a client is owed (pongs, the echo
//! of its Close) to the writer, the only code that writes to the socket.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ending;
use crate::frame;
use crate::mailbox::{self, Mailbox};

/// Bytes read from a socket at once, into the worker thread's buffer.
const READ_CHUNK: usize = 64 * 1024;
/// A partial frame's buffer keeps at most this much spare capacity once the frame is parsed.
const SPARE: usize = 4096;

thread_local! {
    /// The read buffer every connection polled on this thread shares: it is borrowed only
    /// within one poll, never across an await.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What a client sent, one complete message or control frame at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text message, valid UTF-8.
    Text(Utf8Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A Ping, with its payload.
    Ping(Bytes),
    /// A Pong.
    Pong,
    /// A Close, with its code if it carried one (already checked to be one a peer may send).
    Close(Option<u16>),
}

/// Why a client's frames were refused: each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// 1002.
    #[error("{0}")]
    Protocol(&'static str),
    /// 1009: a frame or message over the size cap.
    #[error("message too big")]
    TooBig,
    /// 1007: a text message or a close reason that is not UTF-8.
    #[error("invalid utf-8 in text message")]
    Utf8,
}

/// A fragmented message under way.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 so far (text only), so a bad fragment fails
    /// the message at once and each byte is checked once.
    checked: usize,
}

/// One frame's header, as far as the parser needs it.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

/// The client frame parser of one connection.
#[derive(Debug)]
pub struct Parser {
    /// The bytes of a frame that a read cut off; empty (and unallocated) between frames.
    partial: Vec<u8>,
    /// Boxed: rare, and every idle connection would carry its size inline.
    message: Option<Box<Fragmented>>,
    /// 32 bits: the configuration caps messages far below 4 GiB.
    max: u32,
    /// A Close arrived: whatever follows it is ignored.
    closed: bool,
}

impl Parser {
    /// A parser for messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max: u32::try_from(max).unwrap_or(u32::MAX), partial: Vec::new(), message: None, closed: false }
    }

    /// Parses `bytes`, handing every complete message or control frame to `on`. After an
    /// error, the frames before it have been handed over and the parser must not be fed again.
    pub fn absorb(&mut self, bytes: &[u8], on: &mut dyn FnMut(Incoming)) -> Result<(), FrameError> {
        if self.partial.is_empty() {
            let (used, next) = self.parse_all(bytes, on)?;
            self.keep(&bytes[used..], next);
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(bytes);
        let (used, _) = self.parse_all(&buf, on)?;
        if used < buf.len() && !self.closed {
            // Shrunk only once a frame is done: shrinking a frame still growing would copy it
            // again at every read.
            if used > 0 {
                buf.drain(..used);
                if buf.capacity() > buf.len() + SPARE {
                    buf.shrink_to(buf.len() + SPARE);
                }
            }
            self.partial = buf;
        }
        Ok(())
    }

    /// Keeps the start of a frame cut off by the read, reserving room for the whole frame up to
    /// one read's worth: a client that announces a large frame and sends it slowly gets the
    /// room as the bytes come, not on its word.
    fn keep(&mut self, rest: &[u8], whole: usize) {
        if rest.is_empty() || self.closed {
            return;
        }
        self.partial.reserve_exact(whole.max(rest.len()).min(READ_CHUNK));
        self.partial.extend_from_slice(rest);
    }

    /// Parses every complete frame in `buf`; returns the bytes used, and the size of the frame
    /// it stopped in when its header was complete (else 0).
    fn parse_all(&mut self, buf: &[u8], on: &mut dyn FnMut(Incoming)) -> Result<(usize, usize), FrameError> {
        let mut used = 0;
        while !self.closed {
            let Some(h) = self.header(&buf[used..])? else { break };
            let end = used + h.len + h.payload;
            if buf.len() < end {
                return Ok((used, h.len + h.payload));
            }
            let masked = &buf[used + h.len..end];
            used = end;
            if let Some(incoming) = self.frame(&h, masked)? {
                on(incoming);
            }
        }
        Ok((used, 0))
    }

    /// The header at the start of `buf`, none while it is incomplete. Refuses what no later
    /// byte can make valid as soon as it is seen.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        let short = usize::from(b1 & 0x7f);
        match opcode {
            frame::CONTINUATION | frame::TEXT | frame::BINARY => {}
            frame::CLOSE | frame::PING | frame::PONG if !fin => {
                return Err(FrameError::Protocol("fragmented control frame"))
            }
            frame::CLOSE | frame::PING | frame::PONG if short > 125 => {
                return Err(FrameError::Protocol("control frame over 125 bytes"))
            }
            frame::CLOSE | frame::PING | frame::PONG => {}
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        let (payload, at) = match short {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        if payload >> 63 != 0 {
            return Err(FrameError::Protocol("frame length with its top bit set"));
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.data.len() as u64);
        if opcode < frame::CLOSE && so_far + payload > u64::from(self.max) {
            return Err(FrameError::TooBig);
        }
        let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
        let mask = mask.try_into().expect("4 bytes");
        Ok(Some(Header { fin, opcode, mask, len: at + 4, payload: payload as usize }))
    }

    /// What one whole frame means; `masked` is its payload as it came.
    fn frame(&mut self, h: &Header, masked: &[u8]) -> Result<Option<Incoming>, FrameError> {
        let unmasked = || {
            let mut payload = masked.to_vec();
            unmask(&mut payload, h.mask);
            payload
        };
        match (h.opcode, self.message.as_mut()) {
            (frame::PING, _) => Ok(Some(Incoming::Ping(unmasked().into()))),
            (frame::PONG, _) => Ok(Some(Incoming::Pong)),
            (frame::CLOSE, _) => {
                self.closed = true;
                close_code(&unmasked()).map(|code| Some(Incoming::Close(code)))
            }
            (frame::CONTINUATION, None) => Err(FrameError::Protocol("continuation without a message")),
            (frame::CONTINUATION, Some(m)) => {
                // Unmasked where it lands: one copy of each fragment, not two.
                let start = m.data.len();
                m.data.extend_from_slice(masked);
                unmask(&mut m.data[start..], h.mask);
                // The last fragment is checked with the whole message, in `whole`.
                if m.text && !h.fin {
                    m.checked = check_utf8(&m.data, m.checked)?;
                }
                if !h.fin {
                    return Ok(None);
                }
                let m = self.message.take().expect("a message under way");
                Ok(Some(whole(m.text, m.data)?))
            }
            (_, Some(_)) => Err(FrameError::Protocol("a new message before the last one ended")),
            (opcode, None) if h.fin => Ok(Some(whole(opcode == frame::TEXT, unmasked())?)),
            (opcode, None) => {
                let (text, data) = (opcode == frame::TEXT, unmasked());
                let checked = if text { check_utf8(&data, 0)? } else { 0 };
                self.message = Some(Box::new(Fragmented { text, data, checked }));
                Ok(None)
            }
        }
    }
}

/// A complete data message.
fn whole(text: bool, data: Vec<u8>) -> Result<Incoming, FrameError> {
    if text {
        Utf8Bytes::try_from(data).map(Incoming::Text).map_err(|_| FrameError::Utf8)
    } else {
        Ok(Incoming::Binary(data.into()))
    }
}

/// Checks `data[from..]` of a message still under way; returns how far it is valid. An
/// incomplete character at the end is allowed: the next fragment may complete it.
fn check_utf8(data: &[u8], from: usize) -> Result<usize, FrameError> {
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(data.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(FrameError::Utf8),
    }
}

/// The code of a Close payload: none, or two bytes of a code a peer may send, then UTF-8.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !ending::peer_may_send(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some(code))
        }
    }
}

/// Unmasks a client payload in place, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Why reading ended.
#[derive(Debug)]
pub enum ReadEnd {
    /// The client broke the protocol or sent a bad message.
    Frame(FrameError),
    /// Reading the socket failed.
    Io(io::Error),
    /// The peer closed the connection without a Close frame.
    Eof,
}

/// A connection's reader: its socket's read half, its parser, and what one read parsed.
pub struct Reader<R> {
    io: R,
    parser: Parser,
    /// Parsed, not yet taken: one read can carry many frames. Freed when emptied.
    parsed: VecDeque<Incoming>,
    end: Option<ReadEnd>,
    replies: Arc<Mailbox>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of `io`, starting with `tail` (bytes that came after the upgrade request), for
    /// messages of at most `max` bytes; pongs and close echoes go to `replies`.
    pub fn new(io: R, tail: &[u8], max: usize, replies: Arc<Mailbox>) -> Self {
        let mut reader = Self { io, parser: Parser::new(max), parsed: VecDeque::new(), end: None, replies };
        reader.absorb(tail);
        reader
    }

    /// The next message or control frame. Cancel-safe: a read happens within one poll.
    pub async fn next(&mut self) -> Result<Incoming, ReadEnd> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The next message or control frame, or the end, when one has come; until then the task
    /// is woken when the socket is readable.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, ReadEnd>> {
        loop {
            if let Some(incoming) = self.parsed.pop_front() {
                if self.parsed.is_empty() {
                    self.parsed = VecDeque::new();
                }
                return Poll::Ready(Ok(incoming));
            }
            if let Some(end) = self.end.take() {
                return Poll::Ready(Err(end));
            }
            ready!(self.poll_fill(cx));
        }
    }

    /// The mailbox its replies go to.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.replies
    }

    /// One read into the thread's buffer, parsed at once; the buffer is not held past it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        READ_BUF.with_borrow_mut(|buf| {
            let mut read = ReadBuf::new(buf);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
                Err(e) => self.end = Some(ReadEnd::Io(e)),
                Ok(()) if read.filled().is_empty() => self.end = Some(ReadEnd::Eof),
                Ok(()) => self.absorb(read.filled()),
            }
            Poll::Ready(())
        })
    }

    /// Parses one read. What it owes the peer goes to the mailbox once per read: a pong for
    /// every ping (bounded by [`mailbox::owe_pong`]), then the echo of a Close. A run of
    /// pings and pongs comes out as one: the connection needs only the liveness they prove, and
    /// a flood of them costs neither a lock nor an entry each.
    fn absorb(&mut self, bytes: &[u8]) {
        let parsed = &mut self.parsed;
        let mut owed = Vec::new();
        let mut closing = false;
        let mut on = |incoming: Incoming| {
            let control = matches!(incoming, Incoming::Ping(_) | Incoming::Pong);
            match &incoming {
                Incoming::Ping(payload) => mailbox::owe_pong(&mut owed, payload),
                Incoming::Close(code) => {
                    closing = true;
                    let echo = code.map(u16::to_be_bytes);
                    owed.extend_from_slice(&frame::encode(frame::CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..])));
                }
                _ => {}
            }
            if !(control && matches!(parsed.back(), Some(Incoming::Ping(_) | Incoming::Pong))) {
                parsed.push_back(incoming);
            }
        };
        if let Err(e) = self.parser.absorb(bytes, &mut on) {
            self.end = Some(ReadEnd::Frame(e));
        }
        if !owed.is_empty() {
            self.replies.reply(&owed, closing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn parse(bytes: &[u8], max: usize) -> (Vec<Incoming>, Result<(), FrameError>) {
        let mut p = Parser::new(max);
        let mut got = Vec::new();
        let r = p.absorb(bytes, &mut |i| got.push(i));
        (got, r)
    }

    #[test]
    fn messages_and_control_frames_in_one_read() {
        let mut bytes = client(0x81, b"hello");
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x02, b"gz"));
        bytes.extend(client(0x8a, b""));
        bytes.extend(client(0x80, b"ip"));
        bytes.extend(client(0x88, &1000u16.to_be_bytes()));
        bytes.extend(client(0x81, b"after the close: ignored"));
        let (got, r) = parse(&bytes, 1024);
        r.unwrap();
        assert_eq!(
            got,
            [
                Incoming::Text("hello".into()),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Pong,
                Incoming::Binary(Bytes::from_static(b"gzip")),
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn any_cut_gives_the_same_messages_and_leaves_nothing_behind() {
        let long = "é".repeat(40_000);
        let mut bytes = client(0x01, &long.as_bytes()[..1001]);
        bytes.extend(client(0x80, &long.as_bytes()[1001..]));
        bytes.extend(client(0x81, b"short"));
        for cut in [1, 2, 3, 7, 14, 1000, 1015, 1016, 40_000, bytes.len() - 1] {
            let mut p = Parser::new(1 << 20);
            let mut got = Vec::new();
            p.absorb(&bytes[..cut], &mut |i| got.push(i)).unwrap();
            p.absorb(&bytes[cut..], &mut |i| got.push(i)).unwrap();
            assert_eq!(got, [Incoming::Text(long.as_str().into()), Incoming::Text("short".into())], "cut at {cut}");
            assert_eq!((p.partial.capacity(), p.message.is_none()), (0, true), "cut at {cut}");
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let protocol = |why| Err(FrameError::Protocol(why));
        let table: [(Vec<u8>, Result<(), FrameError>); 12] = [
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], protocol("unmasked client frame")),
            (client(0xc1, b"x"), protocol("reserved bits set")),
            (client(0x83, b"x"), protocol("reserved opcode")),
            (client(0x09, b"x"), protocol("fragmented control frame")),
            (client(0x89, &[0; 126]), protocol("control frame over 125 bytes")),
            (client(0x80, b"x"), protocol("continuation without a message")),
            ([client(0x01, b"a"), client(0x81, b"b")].concat(), protocol("a new message before the last one ended")),
            (client(0x88, &[3]), protocol("close frame of one byte")),
            (client(0x88, &1005u16.to_be_bytes()), protocol("invalid close code")),
            (client(0x81, &[0xff]), Err(FrameError::Utf8)),
            (client(0x81, &[b'a'; 65]), Err(FrameError::TooBig)),
            ([client(0x01, &[b'a'; 40]), client(0x80, &[b'a'; 40])].concat(), Err(FrameError::TooBig)),
        ];
        for (bytes, want) in table {
            assert_eq!(parse(&bytes, 64).1, want, "{bytes:02x?}");
        }
        // The size cap is known from the header: refused before the payload arrives.
        assert_eq!(parse(&[0x81, 0xff, 0, 0, 0, 0, 0, 0, 0x10, 0], 64).1, Err(FrameError::TooBig));
    }

    #[test]
    fn bad_utf8_fails_at_its_fragment_and_a_character_may_span_fragments() {
        let e = "é".as_bytes();
        let split = [client(0x01, &e[..1]), client(0x80, &e[1..])].concat();
        assert_eq!(parse(&split, 64).0, [Incoming::Text("é".into())]);
        let bad = client(0x01, &[b'a', 0xc3, 0x28]);
        assert_eq!(parse(&bad, 64).1, Err(FrameError::Utf8));
        let unfinished = [client(0x01, &e[..1]), client(0x80, b"")].concat();
        assert_eq!(parse(&unfinished, 64).1, Err(FrameError::Utf8));
        let bad_reason = client(0x88, &[0x03, 0xe8, 0xff]);
        assert_eq!(parse(&bad_reason, 64).1, Err(FrameError::Utf8));
    }

    #[test]
    fn unmask_matches_the_bytewise_rule() {
        let mask = [1, 2, 3, 250];
        for len in [0, 1, 7, 8, 9, 31] {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "{len}");
        }
    }

    #[tokio::test]
    async fn a_ping_flood_in_one_read_is_one_event_and_one_pong() {
        let flood: Vec<u8> = (0..2000u16).flat_map(|i| client(0x89, &i.to_be_bytes())).collect();
        let replies = Arc::new(Mailbox::new(1, false, None));
        let mut reader =
            Reader::new(tokio::io::empty(), &[flood, client(0x81, b"after")].concat(), 1024, replies.clone());
        assert_eq!(reader.next().await.unwrap(), Incoming::Ping(Bytes::from_static(&[0, 0])));
        assert_eq!(reader.next().await.unwrap(), Incoming::Text("after".into()));
        let owed = replies.take_replies();
        assert!(owed.len() <= 4096 && owed.ends_with(&[0x8a, 2, 0x07, 0xcf]), "bounded, the latest last");
    }

    #[test]
    fn a_large_frame_announced_is_not_reserved_before_it_comes() {
        let mut p = Parser::new(32 << 20);
        let header = [0x81, 0xff, 0, 0, 0, 0, 0x01, 0, 0, 0, 1, 2, 3, 4];
        p.absorb(&header, &mut |_| {}).unwrap();
        assert!(p.partial.capacity() <= READ_CHUNK, "{}", p.partial.capacity());
    }

    #[test]
    fn a_frame_over_many_reads_grows_its_buffer_geometrically() {
        let bytes = client(0x82, &vec![7; 1 << 20]);
        let mut p = Parser::new(2 << 20);
        let mut capacities = std::collections::BTreeSet::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(READ_CHUNK) {
            p.absorb(chunk, &mut |i| got.push(i)).unwrap();
            capacities.insert(p.partial.capacity());
        }
        assert!(capacities.len() <= 8, "reallocated at {} reads: {capacities:?}", capacities.len());
        assert_eq!(got, [Incoming::Binary(vec![7; 1 << 20].into())]);
    }

    #[tokio::test]
    async fn the_reader_answers_pings_and_echoes_the_close() {
        use tokio::io::AsyncWriteExt;
        let (mut client_side, server_side) = tokio::io::duplex(1024);
        let replies = Arc::new(Mailbox::new(1, false, None));
        let mut reader = Reader::new(server_side, &client(0x81, b"tail"), 1024, replies.clone());
        client_side.write_all(&[client(0x89, b"hi"), client(0x88, &4000u16.to_be_bytes())].concat()).await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Incoming::Text("tail".into()));
        assert_eq!(reader.next().await.unwrap(), Incoming::Ping(Bytes::from_static(b"hi")));
        assert_eq!(reader.next().await.unwrap(), Incoming::Close(Some(4000)));
        assert_eq!(replies.take_replies(), [0x8a, 2, b'h', b'i', 0x88, 2, 0x0f, 0xa0]);
        drop(client_side);
        assert!(matches!(reader.next().await, Err(ReadEnd::Eof)));
    }
}
