//! The all-receivers window: a message counts as done only once every client has received it,
//! so a sender never runs ahead of the slowest reader by more than the window. Unlike a window
//! counted on the sender's own copy, queues cannot grow deep, and each message costs what it
//! costs when it reaches clients a few at a time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio::sync::Semaphore;

/// Arrivals per message in flight, for one sender (its messages reach every client in order).
pub struct AllReceivers {
    clients: u64,
    /// Arrivals of message `m` at `arrivals[m % len]`; the window keeps `m` within reach.
    arrivals: RefCell<Vec<u64>>,
    /// Messages every client has received.
    done: Cell<u64>,
    window: Rc<Semaphore>,
}

impl AllReceivers {
    /// Completion for `clients` readers, releasing `window` permits as messages complete.
    pub fn new(clients: usize, window: Rc<Semaphore>, in_flight: usize) -> Self {
        Self { clients: clients as u64, arrivals: RefCell::new(vec![0; in_flight + 1]), done: Cell::new(0), window }
    }

    /// A client received its `index`-th message (0-based).
    pub fn arrived(&self, index: u64) {
        let mut arrivals = self.arrivals.borrow_mut();
        let len = arrivals.len() as u64;
        let slot = &mut arrivals[(index % len) as usize];
        *slot += 1;
        // Each client receives in order, so message m completes before m + 1 does.
        if *slot == self.clients {
            *slot = 0;
            self.done.set(self.done.get() + 1);
            self.window.add_permits(1);
        }
    }

    /// Messages every client has received.
    pub fn done(&self) -> u64 {
        self.done.get()
    }
}
