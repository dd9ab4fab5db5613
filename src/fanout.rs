//! Fan-out: one message's shared frames handed to every registered connection's queue by
//! refcount. A queue that is full ends its connection with 4001; nobody else waits for it.

use std::sync::Arc;

use crate::ending::{Code, Ending};
use crate::frame::Frames;
use crate::mailbox::Push;
use crate::registry::{Client, Registry};

/// Queues `frames` for every registered connection; returns how many took it.
pub fn to_all(registry: &Registry, frames: &Arc<Frames>) -> usize {
    if registry.gzip_len() > 0 {
        // Compress here, once, rather than in whichever writer runs first: that keeps the cost
        // on the sender's task and out of every recipient's latency.
        frames.wire(true);
    }
    let mut delivered = 0;
    registry.for_each(|client| delivered += usize::from(to_one(client, frames)));
    delivered
}

/// Queues `frames` for one connection; false when it was not taken.
pub fn to_one(client: &Client, frames: &Arc<Frames>) -> bool {
    match client.mailbox.push(frames.clone()) {
        Push::Taken => true,
        Push::Full => {
            // The connection logs this itself, naming its peer and key.
            client.control.end(Ending::close(Code::TooSlow));
            false
        }
    }
}
