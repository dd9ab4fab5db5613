//! The binary envelope every node publishes on the cluster's bus channel.
//!
//! ```text
//! 0      version (1)
//! 1      kind: 1 message, 2 direct, 3 kick, 4 heartbeat
//! 2..10  origin node id (u64, big-endian; random per start)
//! 10..18 sequence (u64; per origin, over messages, directs and kicks; 0 for heartbeats)
//! 18..26 sent at (u64 microseconds since the Unix epoch, for the lag histogram)
//! 26..   message:   the text
//!        direct:    key length (u16), key, text
//!        kick:      key length (u16), key, close code (u16), reason
//!        heartbeat: the node's stats as JSON
//! ```
//!
//! Raw text travels through Redis: each node compresses once for its own gzip clients.

use std::time::{SystemTime, UNIX_EPOCH};

/// The version this node writes and the only one it reads.
pub const VERSION: u8 = 1;
const HEADER: usize = 26;

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A broadcast to every client.
    Message(String),
    /// A text for the client holding `key`, wherever it is.
    Direct {
        /// The key.
        key: String,
        /// The text.
        text: String,
    },
    /// Close the client holding `key` with `code` and `reason`.
    Kick {
        /// The key.
        key: String,
        /// The close code, 4000-4999.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A node is alive; its stats (JSON) for `/v1/stats`.
    Heartbeat(String),
}

/// One envelope as sent and received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that sent it.
    pub origin: u64,
    /// Its place in the origin's sequence (0: unsequenced).
    pub seq: u64,
    /// When the origin queued it, in microseconds since the epoch.
    pub sent_at_us: u64,
    /// The content.
    pub body: Body,
}

/// Why bytes from the bus are not an envelope this node can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header or than a length it announces.
    #[error("truncated envelope")]
    Truncated,
    /// Written by another version of wscast.
    #[error("envelope version {0} (this node reads {VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// Text that is not UTF-8 (nothing a node publishes).
    #[error("envelope text is not UTF-8")]
    Utf8,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl Envelope {
    /// The bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 64);
        out.push(VERSION);
        out.push(self.kind());
        out.extend_from_slice(&self.origin.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_at_us.to_be_bytes());
        match &self.body {
            Body::Message(text) | Body::Heartbeat(text) => out.extend_from_slice(text.as_bytes()),
            Body::Direct { key, text } => {
                put_key(&mut out, key);
                out.extend_from_slice(text.as_bytes());
            }
            Body::Kick { key, code, reason } => {
                put_key(&mut out, key);
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    /// Reads bytes received from the bus.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER {
            return Err(DecodeError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(DecodeError::Version(bytes[0]));
        }
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let rest = &bytes[HEADER..];
        let body = match bytes[1] {
            1 => Body::Message(text(rest)?),
            2 => {
                let (key, rest) = take_key(rest)?;
                Body::Direct { key, text: text(rest)? }
            }
            3 => {
                let (key, rest) = take_key(rest)?;
                let code = rest.get(..2).ok_or(DecodeError::Truncated)?;
                Body::Kick { key, code: u16::from_be_bytes([code[0], code[1]]), reason: text(&rest[2..])? }
            }
            4 => Body::Heartbeat(text(rest)?),
            other => return Err(DecodeError::Kind(other)),
        };
        Ok(Envelope { origin: word(2), seq: word(10), sent_at_us: word(18), body })
    }

    fn kind(&self) -> u8 {
        match self.body {
            Body::Message(_) => 1,
            Body::Direct { .. } => 2,
            Body::Kick { .. } => 3,
            Body::Heartbeat(_) => 4,
        }
    }
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    // Keys come from a URL query under the request-head limit: far below 64 KiB.
    let len = key.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&key.as_bytes()[..len]);
}

fn take_key(bytes: &[u8]) -> Result<(String, &[u8]), DecodeError> {
    let len = bytes.get(..2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize).ok_or(DecodeError::Truncated)?;
    let key = bytes.get(2..2 + len).ok_or(DecodeError::Truncated)?;
    Ok((text(key)?, &bytes[2 + len..]))
}

fn text(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) {
        let e = Envelope { origin: 0xdead_beef_0102_0304, seq: 42, sent_at_us: now_us(), body };
        assert_eq!(Envelope::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Body::Message("h\u{e9}llo \u{2713}".into()));
        round_trip(Body::Message(String::new()));
        round_trip(Body::Direct { key: "a b/c\u{e9}".into(), text: "only you".into() });
        round_trip(Body::Kick { key: "k".into(), code: 4100, reason: "banned".into() });
        round_trip(Body::Heartbeat(r#"{"clients":3}"#.into()));
    }

    #[test]
    fn bad_bytes_are_refused_not_misread() {
        let good = Envelope {
            origin: 1,
            seq: 1,
            sent_at_us: 1,
            body: Body::Kick { key: "key".into(), code: 4000, reason: "r".into() },
        }
        .encode();
        for cut in 0..HEADER + 2 + 3 + 2 {
            assert!(Envelope::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = good.clone();
        other[0] = 2;
        assert_eq!(Envelope::decode(&other), Err(DecodeError::Version(2)));
        other[0] = VERSION;
        other[1] = 9;
        assert_eq!(Envelope::decode(&other), Err(DecodeError::Kind(9)));
        let mut bad_text = Envelope { origin: 1, seq: 1, sent_at_us: 1, body: Body::Message("x".into()) }.encode();
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(Envelope::decode(&bad_text), Err(DecodeError::Utf8));
    }
}
