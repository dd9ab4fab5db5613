//! Admission of a complete, valid upgrade request before the 101: a cap on open connections per
//! client address (trusted proxies exempt), and a daemon-wide budget of new connections per
//! second of which one address may take only its share. Both are answered with 503 and a
//! Retry-After, so well-behaved clients come back later instead of hammering.
//!
//! Nothing here runs before the request head is complete: a connection that sends nothing costs
//! nobody else a token. Addresses are counted by [`AddressKey`]: IPv4 whole, IPv6 by prefix.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::config::Config;
use crate::rate::TokenBucket;
use crate::upgrade::Rejection;

/// One address may take at most this fraction (1/N) of the daemon-wide handshake budget.
const ADDRESS_SHARE: f64 = 4.0;
/// Seconds a client over its per-address limit is asked to wait.
const PER_IP_RETRY: u64 = 10;
/// Per-address buckets are swept for refilled (forgettable) ones every this many admissions.
const SWEEP_EVERY: usize = 1024;

/// The admission limits of the current config.
#[derive(Debug, Clone)]
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

/// The unit the per-address limits count: an IPv4 address, or an IPv6 address cut to a prefix
/// (anyone with a /64 has 2^64 addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of `ip` (already canonical: IPv4-mapped IPv6 shows as IPv4) with IPv6 cut to
    /// `prefix` bits.
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
                Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }
        }
    }
}

/// Shared admission state.
#[derive(Debug)]
pub struct Admission {
    /// `server.ipv6_prefix`, fixed for the process: counts are keyed by it.
    ipv6_prefix: u8,
    /// Open connections by address, counted whatever the limits, so a limit switched on by a
    /// reload sees the connections already open.
    open: DashMap<AddressKey, usize>,
    /// The daemon-wide budget. A std Mutex: held for a few arithmetic operations, never across
    /// an await.
    budget: Mutex<TokenBucket>,
    /// Each address's share of the budget.
    shares: DashMap<AddressKey, TokenBucket>,
    admissions: AtomicUsize,
}

/// One admitted connection's place in its address's count; released on drop.
#[derive(Debug)]
pub struct Slot {
    // Owned, not borrowed, like everything a connection holds.
    admission: Arc<Admission>,
    key: AddressKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut n) = self.admission.open.get_mut(&self.key) {
            *n -= 1;
        }
        self.admission.open.remove_if(&self.key, |_, n| *n == 0);
    }
}

impl Admission {
    /// Empty state; `ipv6_prefix` is `server.ipv6_prefix`.
    pub fn new(ipv6_prefix: u8) -> Self {
        Self {
            ipv6_prefix,
            open: DashMap::new(),
            budget: Mutex::new(TokenBucket::full(f64::MAX, Instant::now())),
            shares: DashMap::new(),
            admissions: AtomicUsize::new(0),
        }
    }

    /// Admits a connection from `ip` (canonical), or says which 503 to answer.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, Rejection> {
        let key = AddressKey::new(ip, self.ipv6_prefix);
        let trusted = limits.trusted.contains(&ip);
        // The count's entry stays locked until the slot is taken, so two handshakes from one
        // address cannot both pass at the limit.
        let mut open = self.open.entry(key).or_insert(0);
        let verdict = if limits.per_ip > 0 && !trusted && *open >= limits.per_ip {
            let reason = format!("too many connections from {ip} (at most {})", limits.per_ip);
            Err(unavailable(reason, PER_IP_RETRY))
        } else if limits.per_second > 0 && !self.take_token(key, trusted, limits.per_second) {
            // Jittered, so a storm's clients do not all come back in the same second.
            Err(unavailable("too many new connections right now".into(), fastrand::u64(1..=5)))
        } else {
            *open += 1;
            Ok(Slot { admission: self.clone(), key })
        };
        drop(open);
        if verdict.is_err() {
            self.open.remove_if(&key, |_, n| *n == 0);
        }
        verdict
    }

    /// Open connections counted for `ip`'s address key.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.get(&AddressKey::new(ip, self.ipv6_prefix)).map_or(0, |n| *n)
    }

    /// The address's share first: an address over it is refused without spending anyone
    /// else's budget. Trusted proxies carry many clients and take from the budget alone.
    fn take_token(&self, key: AddressKey, trusted: bool, per_second: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(per_second);
        if !trusted {
            let share = (rate / ADDRESS_SHARE).max(1.0);
            self.sweep_shares(share, now);
            let mut bucket = self.shares.entry(key).or_insert_with(|| TokenBucket::full(share, now));
            if !bucket.take(share, share, now) {
                return false;
            }
        }
        self.budget.lock().unwrap_or_else(|e| e.into_inner()).take(rate, rate, now)
    }

    /// Forgets refilled shares now and then, so the map holds only recently active addresses.
    fn sweep_shares(&self, share: f64, now: Instant) {
        if self.admissions.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.shares.retain(|_, b| !b.is_full(share, share, now));
        }
    }
}

fn unavailable(reason: String, retry_after: u64) -> Rejection {
    let mut r = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}; retry in {retry_after}s"));
    r.header = Some(("Retry-After", retry_after.to_string()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: usize, per_second: u32) -> Limits {
        Limits { per_ip, trusted: vec!["192.0.2.9".parse().unwrap()], per_second }
    }

    #[test]
    fn per_ip_cap_counts_open_slots_and_exempts_trusted() {
        let a = Arc::new(Admission::new(64));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = a.admit(ip, &limits(2, 0)).unwrap();
        let _s2 = a.admit(ip, &limits(2, 0)).unwrap();
        let r = a.admit(ip, &limits(2, 0)).unwrap_err();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header, Some(("Retry-After", "10".into())));
        drop(s1);
        let _s3 = a.admit(ip, &limits(2, 0)).expect("a slot was freed");
        let trusted: IpAddr = "192.0.2.9".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| a.admit(trusted, &limits(2, 0)).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }

    #[test]
    fn connections_admitted_without_a_limit_count_once_one_is_set() {
        let a = Arc::new(Admission::new(64));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| a.admit(ip, &limits(0, 0)).unwrap()).collect();
        assert_eq!(a.open_from(ip), 3);
        assert!(a.admit(ip, &limits(3, 0)).is_err(), "three already open");
        drop(held);
        assert_eq!(a.open_from(ip), 0);
        assert!(a.admit(ip, &limits(3, 0)).is_ok());
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let a = Arc::new(Admission::new(64));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _s = a.admit(one, &limits(1, 0)).unwrap();
        assert!(a.admit(same_64, &limits(1, 0)).is_err(), "same /64");
        assert!(a.admit(other_64, &limits(1, 0)).is_ok(), "another /64");
        assert_eq!(AddressKey::new(one, 128), AddressKey(one));
        assert_eq!(AddressKey::new(one, 0), AddressKey("::".parse().unwrap()));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(AddressKey::new(v4, 48), AddressKey(v4));
    }

    #[test]
    fn handshake_budget_admits_a_burst_and_one_address_only_its_share() {
        let a = Arc::new(Admission::new(64));
        let greedy: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..50).filter(|_| a.admit(greedy, &limits(0, 40)).is_ok()).count();
        assert_eq!(admitted, 10, "a quarter of 40");
        let r = a.admit(greedy, &limits(0, 40)).unwrap_err();
        let retry: u64 = r.header.unwrap().1.parse().unwrap();
        assert!((1..=5).contains(&retry));
        // Another address still finds the budget: the greedy one spent only its share.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| a.admit(other, &limits(0, 40)).is_ok()).count(), 10);
        // A trusted proxy takes from the budget alone: the 20 tokens left.
        let proxy: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!((0..50).filter(|_| a.admit(proxy, &limits(0, 40)).is_ok()).count(), 20);
    }
}
