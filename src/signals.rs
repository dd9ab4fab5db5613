//! Process signals turned into daemon events.

use std::io;

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// What the outside world asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT: drain and exit (a second one: exit at once).
    Terminate,
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// Installs the handlers; the stream yields one event per signal received.
pub fn listen() -> io::Result<impl Stream<Item = Event> + Unpin + Send> {
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(signals.map(|sig| if sig == SIGHUP { Event::Reload } else { Event::Terminate }))
}
