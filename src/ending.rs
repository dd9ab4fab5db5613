//! How a connection ends: every close code of the wire contract with its reason, the
//! [`Ending`] a connection is given, and the [`Control`] switch that decides it once.
//!
//! Nearly a leaf: it imports nothing of the daemon but [`Wakeup`], and no other module writes a
//! close-code number.

use std::borrow::Cow;
use std::future::poll_fn;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use crate::wakeup::Wakeup;

/// A close code the daemon sends (RFC 6455 7.4 and the daemon's own 4000s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1001: the daemon is shutting down.
    GoingAway,
    /// 1002: the client broke the protocol.
    Protocol,
    /// 1007: a message that is not UTF-8, or a Binary message that is not gzip.
    Invalid,
    /// 1008: the client sent faster than its message rate.
    Policy,
    /// 1009: a message over `websocket.max_message_size`.
    TooBig,
    /// 4000: a newer connection took the key.
    Replaced,
    /// 4001: the client fell `websocket.send_queue` messages behind.
    TooSlow,
    /// 4002: an operator or the application's backend closed it.
    Kicked,
    /// 4003: its connection token expired.
    TokenExpired,
    /// Another code in 4000-4999 that an operator chose for a kick.
    Application(u16),
}

impl Code {
    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            Code::GoingAway => 1001,
            Code::Protocol => 1002,
            Code::Invalid => 1007,
            Code::Policy => 1008,
            Code::TooBig => 1009,
            Code::Replaced => 4000,
            Code::TooSlow => 4001,
            Code::Kicked => 4002,
            Code::TokenExpired => 4003,
            Code::Application(n) => n,
        }
    }

    /// The reason the wire contract gives with this code.
    pub fn reason(self) -> &'static str {
        match self {
            Code::GoingAway => "server shutting down",
            Code::Protocol => "protocol error",
            Code::Invalid => "invalid message",
            Code::Policy => "policy violation",
            Code::TooBig => "message too big",
            Code::Replaced => "replaced by a newer connection",
            Code::TooSlow => "too slow: send queue overflow",
            Code::Kicked | Code::Application(_) => "closed by the server",
            Code::TokenExpired => "token expired",
        }
    }

    /// The code an operator may give a kick: 4000-4999, or `None`.
    pub fn for_kick(n: u16) -> Option<Code> {
        let code = match n {
            4000 => Code::Replaced,
            4001 => Code::TooSlow,
            4002 => Code::Kicked,
            4003 => Code::TokenExpired,
            other => Code::Application(other),
        };
        (4000..=4999).contains(&n).then_some(code)
    }
}

/// The longest close reason: a Close payload is at most 125 bytes, 2 of them the code.
pub const MAX_REASON: usize = 123;

/// `reason` cut at a character boundary to the [`MAX_REASON`] bytes a Close frame can hold.
pub fn fit_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Whether a peer may send `code` in its Close (RFC 6455 7.4): 1000-1003, 1007-1013 and
/// 3000-4999; never 1005, 1006 or 1015, which only describe a close that carried no code.
pub fn peer_may_send(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// How a connection ends; the first reason set wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Send this Close frame (after the queued messages, unless the queue is the problem).
    Close {
        /// The code.
        code: Code,
        /// At most [`MAX_REASON`] bytes.
        reason: Cow<'static, str>,
    },
    /// The peer closed, with this code if it gave one; its Close is echoed.
    PeerClosed(Option<u16>),
    /// The peer is gone or broken; nothing more is sent.
    Dead(&'static str),
}

impl Ending {
    /// A Close with the contract's reason for `code`.
    pub fn close(code: Code) -> Self {
        Ending::Close { code, reason: Cow::Borrowed(code.reason()) }
    }

    /// A Close with a reason of its own, cut at a character boundary to fit a Close frame.
    pub fn close_because(code: Code, reason: impl std::fmt::Display) -> Self {
        let reason = reason.to_string();
        Ending::Close { code, reason: Cow::Owned(fit_reason(&reason).to_string()) }
    }

    /// The close code, when this ending sends one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Ending::Close { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The shared end-of-life switch of one connection: the hub, the shutdown and the connection's
/// own reader all end it through here. It lives in the connection's mailbox, and its wakeup is
/// the one the mailbox's pushes use too: one allocation and one waker per connection.
#[derive(Debug, Default)]
pub struct Control {
    ending: OnceLock<Ending>,
    wakeup: Wakeup,
}

impl Control {
    /// Sets the ending if none is set yet; true when this call decided it.
    pub fn end(&self, ending: Ending) -> bool {
        let first = self.ending.set(ending).is_ok();
        if first {
            // The connection registers before it looks, so it cannot miss this.
            self.wakeup.nudge();
        }
        first
    }

    /// The ending, once decided.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.get()
    }

    /// Wakes the connection's task to look again at what it waits for (that reading stopped),
    /// without ending it.
    pub fn nudge(&self) {
        self.wakeup.nudge();
    }

    /// The connection's wakeup, which the mailbox shares.
    pub fn wakeup(&self) -> &Wakeup {
        &self.wakeup
    }

    /// Resolves once an ending is set.
    pub async fn ended(&self) {
        poll_fn(|cx| self.poll_ended(cx)).await;
    }

    /// Ready once an ending is set; until then the task is woken when one is.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wakeup.register(cx);
        match self.ending.get() {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_of_the_contract() {
        let table = [
            (Code::GoingAway, 1001, "server shutting down"),
            (Code::Replaced, 4000, "replaced by a newer connection"),
            (Code::TooSlow, 4001, "too slow: send queue overflow"),
            (Code::Kicked, 4002, "closed by the server"),
            (Code::TokenExpired, 4003, "token expired"),
        ];
        for (code, n, reason) in table {
            assert_eq!((code.as_u16(), code.reason()), (n, reason));
            assert_eq!(Code::for_kick(n).filter(|_| n >= 4000), (n >= 4000).then_some(code));
        }
        assert_eq!(Code::for_kick(4321), Some(Code::Application(4321)));
        assert_eq!(Code::for_kick(1000), None);
        assert_eq!(Code::for_kick(5000), None);
    }

    #[test]
    fn reasons_are_cut_to_fit_a_close_frame() {
        let Ending::Close { reason, .. } = Ending::close_because(Code::Protocol, "\u{e9}".repeat(100)) else {
            unreachable!()
        };
        assert_eq!(reason.len(), 122, "cut at a character boundary");
    }

    #[test]
    fn first_ending_wins() {
        let c = Control::default();
        assert!(c.end(Ending::close(Code::TooSlow)));
        assert!(!c.end(Ending::close(Code::Replaced)));
        assert_eq!(c.ending().and_then(Ending::code), Some(Code::TooSlow));
    }
}
