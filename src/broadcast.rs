//! Fan-out: one published text becomes one shared set of encoded frames handed to every
//! registered connection's queue by refcount.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::registry::{Ending, Registry, TOO_SLOW};
use crate::{frame, gzip};

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
        Self { text: frame::encode(frame::TEXT, text.as_bytes()), gzip: OnceLock::new(), level }
    }

    /// The whole frame (header and payload) for a client: Binary gzip or Text.
    pub fn wire(&self, gzip: bool) -> &Bytes {
        if !gzip {
            return &self.text;
        }
        self.gzip.get_or_init(|| {
            let payload = &self.text[header_len(&self.text)..];
            frame::encode(frame::BINARY, &gzip::compress(payload, self.level))
        })
    }
}

/// The length of a server frame's header (no mask), from its second byte.
fn header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Publishes texts to every registered connection.
#[derive(Debug)]
pub struct Broadcaster {
    registry: Arc<Registry>,
    gzip_level: AtomicU32,
}

impl Broadcaster {
    /// A broadcaster over `registry` compressing at `gzip_level`.
    pub fn new(registry: Arc<Registry>, gzip_level: u32) -> Self {
        Self { registry, gzip_level: AtomicU32::new(gzip_level) }
    }

    /// Applies a reloaded `websocket.gzip_level` to the next messages.
    pub fn set_gzip_level(&self, level: u32) {
        self.gzip_level.store(level, Ordering::Relaxed);
    }

    /// Queues `text` for every registered connection, the sender included. A connection whose
    /// queue is full is ended with 4001; nobody else waits for it.
    pub fn publish(&self, text: Utf8Bytes) {
        let frames = Arc::new(Frames::new(text, self.gzip_level.load(Ordering::Relaxed)));
        if self.registry.gzip_len() > 0 {
            // Compress here, once, rather than in whichever writer runs first: that keeps the
            // cost on the sender's task and out of every recipient's latency.
            frames.wire(true);
        }
        self.registry.for_each(|client| match client.queue.try_send(frames.clone()) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                // The connection logs this itself, inside its own span (peer and key).
                client.control.end(Ending::close(TOO_SLOW, "too slow: send queue overflow"));
            }
        });
    }
}
