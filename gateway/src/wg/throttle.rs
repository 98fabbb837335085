//! Handshake messages per source address under load: a token bucket per IP, as the
//! kernel's WireGuard keeps (20 a second, bursts of 5).
//!
//! The interface-wide limiter only decides when to demand cookies; a sender that holds
//! a valid cookie (anyone can fetch one from an address it really owns, and it stays
//! good for two minutes) could otherwise make the gateway do a Diffie-Hellman for every
//! datagram it sends, on the task that serves every tunnel. While the interface is
//! under load, messages over a source's rate are dropped before any public-key work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshake messages a second, per source address.
const PER_SECOND: u64 = 20;
/// Messages a quiet source may send at once.
const BURST: u64 = 5;
/// One token, in nanoseconds of waiting.
const TOKEN_NS: u64 = 1_000_000_000 / PER_SECOND;
/// Sources tracked at once; a full table first forgets sources whose bucket is full
/// again (idle for `BURST` tokens' time), then refuses new ones until some are.
const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
pub(crate) struct Throttle {
    /// Per source: nanoseconds of credit (at most `BURST * TOKEN_NS`) as of `at`.
    buckets: HashMap<IpAddr, (u64, Instant)>,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Throttle {
            buckets: HashMap::new(),
        }
    }

    /// Whether a handshake message from `source` at `now` may be processed (and spend
    /// a token if so).
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.forget_idle(now);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (credit, at) = self.buckets.entry(source).or_insert((BURST * TOKEN_NS, now));
        let earned = u64::try_from(now.saturating_duration_since(*at).as_nanos()).unwrap_or(u64::MAX);
        *credit = credit.saturating_add(earned).min(BURST * TOKEN_NS);
        *at = now;
        if *credit < TOKEN_NS {
            return false;
        }
        *credit -= TOKEN_NS;
        true
    }

    /// Drop the buckets that have refilled: a source coming back starts full anyway.
    fn forget_idle(&mut self, now: Instant) {
        let refill = Duration::from_nanos(BURST * TOKEN_NS);
        self.buckets
            .retain(|_, (credit, at)| *credit < BURST * TOKEN_NS && now.saturating_duration_since(*at) < refill);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn a_source_gets_a_burst_then_its_rate() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        for i in 0..BURST {
            assert!(t.allow(ip(1), t0), "burst message {i}");
        }
        assert!(!t.allow(ip(1), t0), "over the burst");
        // Another source is not held back by the first.
        assert!(t.allow(ip(2), t0));
        // One token every 50 ms: 20 a second, however fast the sender tries.
        let mut allowed = 0;
        for ms in 1..=1000 {
            if t.allow(ip(1), t0 + Duration::from_millis(ms)) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, PER_SECOND, "one second of a flood");
        // A quiet source is full again, and no fuller.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..BURST {
            assert!(t.allow(ip(1), later));
        }
        assert!(!t.allow(ip(1), later));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sources_first() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        for n in 0..MAX_SOURCES as u32 {
            assert!(t.allow(ip(n), t0));
        }
        assert_eq!(t.len(), MAX_SOURCES);
        // Every bucket was just used: a new source waits for room.
        assert!(!t.allow(ip(u32::MAX), t0));
        assert_eq!(t.len(), MAX_SOURCES);
        // Once they have refilled, they make room.
        let later = t0 + Duration::from_secs(1);
        assert!(t.allow(ip(u32::MAX), later));
        assert_eq!(t.len(), 1);
    }
}
