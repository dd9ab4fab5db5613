//! Shutdown in phases: stop accepting, stop reading, close every client with 1001 after its
//! queue (at once, or spread over `shutdown.spread`), and wait for all of it within one
//! deadline.
//!
//! Reading stops everywhere before any client is closed, so every message the daemon accepted is
//! in every queue before the queues are drained: nothing accepted is lost.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::ending::{Code, Ending};
use crate::hub::Hub;

/// The daemon's shutdown switches and task tracking.
#[derive(Debug, Default)]
pub struct Shutdown {
    stop_accepting: CancellationToken,
    stop_reading: CancellationToken,
    closing: CancellationToken,
    readers: TaskTracker,
    connections: TaskTracker,
    deadline: OnceLock<Instant>,
    /// The clients, for the drain summary. One lock for both counts, so a report never sees a
    /// client between them; taken once per connection and once per end, never per message.
    clients: Mutex<DrainReport>,
}

/// What a drain achieved, for the `drained N, cut off M` line. Both count clients (upgraded
/// connections), never handshakes or tasks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Clients that ended after the drain began.
    pub drained: usize,
    /// Clients still connected (or still flushing) when the drain ended or gave up.
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

    /// True once readers must stop taking new messages (the admin API's publish too).
    pub fn reading_has_stopped(&self) -> bool {
        self.stop_reading.is_cancelled()
    }

    /// True from the first moment of a drain.
    pub fn is_draining(&self) -> bool {
        self.deadline.get().is_some()
    }

    /// True once clients are being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Held by a reader while it may publish; the drain waits for all of them to be dropped.
    pub fn reader_guard(&self) -> TaskTrackerToken {
        self.readers.token()
    }

    /// Counts an upgraded connection, from its 101 to the end of its task, until its
    /// [`Shutdown::client_left`]: what the drain summary counts. A connection's guard pairs them.
    pub fn client_joined(&self) {
        self.counts().cut_off += 1;
    }

    /// The end of a client counted by [`Shutdown::client_joined`]: drained when a drain is on.
    pub fn client_left(&self) {
        let draining = self.is_draining();
        let mut counts = self.counts();
        counts.cut_off -= 1;
        if draining {
            counts.drained += 1;
        }
    }

    /// The clients drained so far, and those still connected (cut off if the drain ends now).
    pub fn report(&self) -> DrainReport {
        *self.counts()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, DrainReport> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns a connection task that the drain waits for.
    pub fn spawn_connection<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.connections.spawn(task);
    }

    /// Runs the phases; returns when every connection is gone or the deadline passed.
    pub async fn drain(&self, hub: &Hub, timeout: Duration, spread: Duration) -> DrainReport {
        let deadline = *self.deadline.get_or_init(|| Instant::now() + timeout);
        self.stop_accepting.cancel();
        self.stop_reading.cancel();
        // An idle connection polls nothing that the cancel wakes: it is woken to look.
        hub.wake_all();
        self.readers.close();
        let _ = tokio::time::timeout_at(deadline, self.readers.wait()).await;
        // What was accepted reaches the other nodes before clients are told to go.
        hub.flush_cluster(deadline).await;
        // Set the flag before the sweep: a connection registering now either is in the sweep or
        // sees the flag right after registering.
        self.closing.cancel();
        close_spread(hub, spread.min(deadline.saturating_duration_since(Instant::now()))).await;
        self.connections.close();
        let _ = tokio::time::timeout_at(deadline, self.connections.wait()).await;
        self.report()
    }
}

/// Sends every client its 1001: at once, or in small shuffled batches, each at a jittered moment
/// of its own slice of `spread`, so the clients' reconnects are spread too. Clients that join
/// meanwhile saw `closing` and end themselves.
async fn close_spread(hub: &Hub, spread: Duration) {
    let ending = Ending::close(Code::GoingAway);
    if spread.is_zero() {
        return hub.close_all(&ending);
    }
    let mut mailboxes = hub.mailboxes();
    fastrand::shuffle(&mut mailboxes);
    let batches = (spread.as_millis() / SPREAD_BATCH_EVERY.as_millis()).max(1) as usize;
    let per_batch = mailboxes.len().div_ceil(batches).max(1);
    let chunks = mailboxes.len().div_ceil(per_batch).max(1);
    let slice = spread / chunks as u32;
    let start = Instant::now();
    for (i, chunk) in mailboxes.chunks(per_batch).enumerate() {
        tokio::time::sleep_until(start + slice * i as u32 + slice.mul_f64(fastrand::f64())).await;
        for mailbox in chunk {
            mailbox.control().end(ending.clone());
        }
    }
}

/// The spread drain closes a batch about this often.
const SPREAD_BATCH_EVERY: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_clients_once_each() {
        let s = Shutdown::default();
        (0..3).for_each(|_| s.client_joined());
        s.client_left();
        assert_eq!(s.report(), DrainReport { drained: 0, cut_off: 2 }, "an end before the drain is not drained");
        s.deadline.get_or_init(Instant::now);
        s.client_left();
        assert_eq!(s.report(), DrainReport { drained: 1, cut_off: 1 });
        s.client_left();
        assert_eq!(s.report(), DrainReport { drained: 2, cut_off: 0 });
    }
}
