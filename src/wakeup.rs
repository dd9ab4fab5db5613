//! The wakeup of one connection's task: a permit and the task's waker, in 16 bytes less than a
//! tokio `Notify` and without a future to hold. The connection polls it by hand
//! ([`Wakeup::poll`]), so nothing of it stays in the state every idle connection keeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Wakes the one task that polls it; a notification while it is not waiting is kept (as
/// `Notify::notify_one` keeps a permit).
#[derive(Debug, Default)]
pub struct Wakeup {
    permit: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    /// Leaves a permit and wakes the task.
    pub fn notify(&self) {
        self.permit.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Wakes the task without a permit: it looks again at whatever it waits for.
    pub fn nudge(&self) {
        self.waker.wake();
    }

    /// Ready (taking the permit) once notified since the last time it was ready; otherwise
    /// the task is woken by the next notification, or nudge.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.permit.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.register(cx);
        if self.permit.swap(false, Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Wakes this task at the next notification or nudge, whatever it then checks.
    pub fn register(&self, cx: &mut Context<'_>) {
        self.waker.register(cx.waker());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_permit_is_kept_until_taken_and_taken_once() {
        let w = Wakeup::default();
        w.notify();
        poll_fn(|cx| w.poll(cx)).await;
        let waker = futures_util::task::noop_waker();
        assert!(w.poll(&mut Context::from_waker(&waker)).is_pending(), "taken once");
        w.nudge();
        assert!(w.poll(&mut Context::from_waker(&waker)).is_pending(), "a nudge leaves no permit");
    }

    #[tokio::test]
    async fn a_notification_from_another_task_wakes_the_waiting_one() {
        let w = Arc::new(Wakeup::default());
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { poll_fn(|cx| w.poll(cx)).await }
        });
        tokio::task::yield_now().await;
        w.notify();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woken").unwrap();
    }
}
