//! Shutdown in phases: stop accepting, stop reading, close every client with 1001 after its
//! queue, and wait for all of it within one deadline.
//!
//! Reading stops everywhere before any client is closed, so every message the daemon accepted is
//! in every queue before the queues are drained: nothing accepted is lost.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::registry::{Ending, Registry};

/// Close code and reason every client gets when the daemon stops.
pub const GOING_AWAY: (u16, &str) = (1001, "server shutting down");

/// The daemon's shutdown switches and task tracking.
#[derive(Debug, Default)]
pub struct Shutdown {
    stop_accepting: CancellationToken,
    stop_reading: CancellationToken,
    closing: CancellationToken,
    readers: TaskTracker,
    connections: TaskTracker,
    deadline: OnceLock<Instant>,
}

/// What a drain achieved, for the `drained N, cut off M` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections that were open and closed within the deadline.
    pub drained: usize,
    /// Connections still open at the deadline.
    pub cut_off: usize,
}

impl Shutdown {
    /// Resolves when the listeners must stop accepting.
    pub fn accepting_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop_accepting.cancelled()
    }

    /// Resolves when readers must stop taking new messages.
    pub fn reading_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop_reading.cancelled()
    }

    /// When the drain gives up, once it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }

    /// True once clients are being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Held by a reader while it may publish; the drain waits for all of them to be dropped.
    pub fn reader_guard(&self) -> TaskTrackerToken {
        self.readers.token()
    }

    /// Spawns a connection task that the drain waits for.
    pub fn spawn_connection<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.connections.spawn(task);
    }

    /// Runs the phases; returns when every connection is gone or the deadline passed.
    pub async fn drain(&self, registry: &Registry, timeout: Duration) -> DrainReport {
        let deadline = *self.deadline.get_or_init(|| Instant::now() + timeout);
        self.stop_accepting.cancel();
        // Counted as tasks, like the cut-off ones: handshakes and closing connections included.
        let open = self.connections.len();
        self.stop_reading.cancel();
        self.readers.close();
        let _ = tokio::time::timeout_at(deadline, self.readers.wait()).await;
        // Set the flag before the sweep: a connection registering now either is in the sweep or
        // sees the flag right after registering.
        self.closing.cancel();
        registry.for_each(|c| {
            c.control.end(Ending::close(GOING_AWAY.0, GOING_AWAY.1));
        });
        self.connections.close();
        let _ = tokio::time::timeout_at(deadline, self.connections.wait()).await;
        let cut_off = self.connections.len();
        DrainReport { drained: open.saturating_sub(cut_off), cut_off }
    }
}
