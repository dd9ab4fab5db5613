//! systemd notifications (`Type=notify`). Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! sd_notify writes to a blocking datagram socket, and the kernel queues only a few datagrams
//! (`net.unix.max_dgram_qlen`, 10 by default): a manager that stops reading would block a
//! runtime worker. So messages go through a bounded queue to one thread of their own; when that
//! queue is full, the message is dropped and said so once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;

/// Messages waiting for the notifier thread at most.
const QUEUE: usize = 64;

/// One message, owned so it can cross to the notifier thread.
enum Message {
    Ready(String),
    Status(String),
    Reloading,
    Stopping(String),
    Watchdog,
}

fn queue() -> Option<&'static SyncSender<Message>> {
    static QUEUE_TX: OnceLock<Option<SyncSender<Message>>> = OnceLock::new();
    QUEUE_TX
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = sync_channel(QUEUE);
            let spawned = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
                for message in rx {
                    deliver(message);
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

fn deliver(message: Message) {
    let result = match &message {
        Message::Ready(s) => sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(s)]),
        Message::Status(s) => sd_notify::notify(&[NotifyState::Status(s)]),
        // systemd 253+ wants the monotonic timestamp with RELOADING=1.
        Message::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(&[NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
        },
        Message::Stopping(s) => sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(s)]),
        Message::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
    };
    if let Err(e) = result {
        warn_once(&format!("sd_notify failed: {e}"));
    }
}

fn warn_once(msg: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{msg} (further notify problems are not logged)");
    }
}

fn send(message: Message) {
    if let Some(tx) = queue() {
        match tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => warn_once("the service manager is not reading notifications; dropped one"),
            Err(TrySendError::Disconnected(_)) => warn_once("the notifier thread is gone"),
        }
    }
}

/// Every listener is bound and the daemon serves.
pub fn ready(status: &str) {
    send(Message::Ready(status.into()));
}

/// Free-form status shown by `systemctl status`.
pub fn status(status: &str) {
    send(Message::Status(status.into()));
}

/// A reload has started.
pub fn reloading() {
    send(Message::Reloading);
}

/// The drain has started.
pub fn stopping(status: &str) {
    send(Message::Stopping(status.into()));
}

/// The keep-alive ping, when systemd's watchdog is on.
pub fn watchdog() {
    send(Message::Watchdog);
}

/// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3) advises.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
