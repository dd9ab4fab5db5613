//! Fan-out: one published text becomes one shared set of frames handed to every registered
//! connection's queue by refcount.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::gzip;
use crate::registry::{Ending, Registry, TOO_SLOW};

/// One broadcast message in both encodings. The gzip form is computed on first use, so it costs
/// one compression when gzip clients exist and none when they do not.
#[derive(Debug)]
pub struct Frames {
    text: Utf8Bytes,
    gzip: OnceLock<Bytes>,
    level: u32,
}

impl Frames {
    /// The frame for a client: a Binary gzip frame or a Text frame, sharing the payload.
    pub fn message(&self, gzip: bool) -> Message {
        if gzip {
            Message::Binary(self.gzip.get_or_init(|| gzip::compress(self.text.as_bytes(), self.level)).clone())
        } else {
            Message::Text(self.text.clone())
        }
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
        let frames = Arc::new(Frames { text, gzip: OnceLock::new(), level: self.gzip_level.load(Ordering::Relaxed) });
        if self.registry.gzip_len() > 0 {
            // Compress here, once, rather than in whichever writer runs first: that keeps the
            // cost on the sender's task and out of every recipient's latency.
            frames.message(true);
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
