//! Token buckets: the one rate-limiting algorithm of the daemon (handshake budget, per-address
//! share, per-connection message rate).
//!
//! A bucket stores only its tokens and the time of its last refill; rate and burst come from the
//! caller's current settings, so a reload changes them without touching existing buckets.

use tokio::time::Instant;

/// Tokens that refill at a steady rate up to a burst.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket holding `burst` tokens, as if it had been idle forever.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self { tokens: burst, last: now }
    }

    /// Takes one token if there is one; `rate` is tokens per second.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens = self.level(rate, burst, now);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// True when the bucket has refilled completely: it is then the same as a fresh one and can
    /// be forgotten.
    pub fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.level(rate, burst, now) >= burst
    }

    fn level(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        (self.tokens.min(burst) + now.saturating_duration_since(self.last).as_secs_f64() * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        assert_eq!((0..10).filter(|_| b.take(2.0, 3.0, t0)).count(), 3);
        assert!(!b.is_full(2.0, 3.0, t0));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(2.0, 3.0, t1), "one token after half a second at 2/s");
        assert!(!b.take(2.0, 3.0, t1));
        assert!(b.is_full(2.0, 3.0, t1 + Duration::from_secs(2)));
        // A lower burst after a reload caps what was saved up.
        let mut saved = TokenBucket::full(100.0, t0);
        assert_eq!((0..10).filter(|_| saved.take(1.0, 2.0, t0)).count(), 2);
    }
}
