//! Admission before any upgrade work: a cap on open connections per client IP (trusted proxies
//! exempt) and a daemon-wide rate of new connections. Both are answered with 503 and a
//! Retry-After, so well-behaved clients come back later instead of hammering.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use dashmap::DashMap;
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::config::Config;
use crate::upgrade::Rejection;

/// The admission limits of the current config.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `server.max_connections_per_ip`, 0 = none.
    pub per_ip: usize,
    /// `server.trusted_proxies`
    pub trusted: Vec<IpAddr>,
    /// `server.max_handshakes_per_second`, 0 = none.
    pub per_second: u32,
}

impl Limits {
    /// The limits of `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            per_ip: config.server.max_connections_per_ip,
            trusted: config.server.trusted_proxies.clone(),
            per_second: config.server.max_handshakes_per_second,
        }
    }
}

/// Seconds a client over its per-IP limit is asked to wait.
const PER_IP_RETRY: u64 = 10;

/// Shared admission state.
#[derive(Debug)]
pub struct Admission {
    per_ip: DashMap<IpAddr, usize>,
    /// Token bucket of new connections: (tokens, last refill). A std Mutex: held for a few
    /// arithmetic operations, never across an await.
    bucket: Mutex<(f64, Instant)>,
}

impl Default for Admission {
    fn default() -> Self {
        Self { per_ip: DashMap::new(), bucket: Mutex::new((f64::MAX, Instant::now())) }
    }
}

/// One admitted connection's place in the per-IP count; released on drop.
#[derive(Debug)]
pub struct Slot<'a> {
    admission: &'a Admission,
    ip: Option<IpAddr>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let Some(mut n) = self.admission.per_ip.get_mut(&ip) {
                *n -= 1;
            }
            self.admission.per_ip.remove_if(&ip, |_, n| *n == 0);
        }
    }
}

impl Admission {
    /// Admits a connection from `ip`, or says which 503 to answer.
    pub fn admit(&self, ip: IpAddr, limits: &Limits) -> Result<Slot<'_>, Rejection> {
        let mut slot = Slot { admission: self, ip: None };
        if limits.per_ip > 0 && !limits.trusted.contains(&ip) {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= limits.per_ip {
                let reason = format!("too many connections from {ip} (at most {})", limits.per_ip);
                return Err(unavailable(reason, PER_IP_RETRY));
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        if limits.per_second > 0 && !self.take_token(limits.per_second) {
            // Jittered, so a storm's clients do not all come back in the same second.
            return Err(unavailable("too many new connections right now".into(), 1 + jitter() % 5));
        }
        Ok(slot)
    }

    fn take_token(&self, rate: u32) -> bool {
        let rate = f64::from(rate);
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *bucket;
        // Up to one second's worth may be taken at once.
        let tokens = (tokens.min(rate) + now.duration_since(last).as_secs_f64() * rate).min(rate);
        let admitted = tokens >= 1.0;
        *bucket = (if admitted { tokens - 1.0 } else { tokens }, now);
        admitted
    }
}

fn unavailable(reason: String, retry_after: u64) -> Rejection {
    let mut r = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}; retry in {retry_after}s"));
    r.header = Some(("Retry-After", retry_after.to_string()));
    r
}

fn jitter() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_open_slots_and_exempts_trusted() {
        let a = Admission::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let limits = Limits { per_ip: 2, trusted: vec!["192.0.2.9".parse().unwrap()], per_second: 0 };
        let s1 = a.admit(ip, &limits).unwrap();
        let _s2 = a.admit(ip, &limits).unwrap();
        let r = a.admit(ip, &limits).unwrap_err();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header, Some(("Retry-After", "10".into())));
        drop(s1);
        let _s3 = a.admit(ip, &limits).expect("a slot was freed");
        let trusted: IpAddr = "192.0.2.9".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| a.admit(trusted, &limits).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }

    #[test]
    fn handshake_rate_admits_a_burst_then_refuses_with_jittered_retry() {
        let a = Admission::default();
        let limits = Limits { per_second: 10, ..Limits::default() };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..50).filter(|_| a.admit(ip, &limits).is_ok()).count();
        assert!((10..=11).contains(&admitted), "{admitted}");
        let r = a.admit(ip, &limits).unwrap_err();
        let retry: u64 = r.header.unwrap().1.parse().unwrap();
        assert!((1..=5).contains(&retry));
    }
}
