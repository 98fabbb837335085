//! Handshake messages under load: a token bucket per source, as the kernel's WireGuard
//! keeps (20 a second, bursts of 5; an IPv4 address, or an IPv6 /64, which one host
//! usually holds whole), and one for the whole interface.
//!
//! The interface-wide limiter only decides when to demand cookies; a sender that holds
//! a valid cookie (anyone can fetch one from an address it really owns, and it stays
//! good for two minutes) could otherwise make the gateway do a Diffie-Hellman for every
//! datagram it sends, on the task that serves every tunnel. While the interface is
//! under load, messages over a source's rate are dropped before any public-key work,
//! and so are messages over [`GLOBAL_PER_SECOND`] from all sources together: a sender
//! with many addresses (a few hundred IPv4 ones, or many /64s) cannot take the task
//! from the tunnels already up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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
/// Handshake messages a second from all sources together, under load: each costs up to
/// four Diffie-Hellmans (about 0.2 ms), so at most about a tenth of the engine's time.
/// Enough for every workstation of a large site to come back within seconds.
const GLOBAL_PER_SECOND: u64 = 500;
const GLOBAL_TOKEN_NS: u64 = 1_000_000_000 / GLOBAL_PER_SECOND;

#[derive(Debug)]
pub(crate) struct Throttle {
    /// Per source: nanoseconds of credit (at most `BURST * TOKEN_NS`) as of `at`.
    buckets: HashMap<IpAddr, (u64, Instant)>,
    /// All sources: nanoseconds of credit (at most a second's) as of `at`, from the
    /// first message on.
    global: Option<(u64, Instant)>,
}

/// Refill `credit` (nanoseconds, at most `max`) for the time since `at`; spend `token`
/// if there is enough.
fn spend(credit: &mut u64, at: &mut Instant, now: Instant, max: u64, token: u64) -> bool {
    let earned = u64::try_from(now.saturating_duration_since(*at).as_nanos()).unwrap_or(u64::MAX);
    *credit = credit.saturating_add(earned).min(max);
    *at = now;
    if *credit < token {
        return false;
    }
    *credit -= token;
    true
}

/// The bucket a source address shares: an IPv4 address (an IPv4-mapped one included),
/// or an IPv6 address's /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        },
    }
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Throttle {
            buckets: HashMap::new(),
            global: None,
        }
    }

    /// Whether a handshake message from `source` at `now` may be processed (and spend
    /// a token of its source and one of the interface if so).
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let source = source_key(source);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            self.forget_idle(now);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (credit, at) = self.buckets.entry(source).or_insert((BURST * TOKEN_NS, now));
        if !spend(credit, at, now, BURST * TOKEN_NS, TOKEN_NS) {
            return false;
        }
        let full = GLOBAL_PER_SECOND * GLOBAL_TOKEN_NS;
        let (credit, at) = self.global.get_or_insert((full, now));
        spend(credit, at, now, full, GLOBAL_TOKEN_NS)
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

    /// One host usually holds a whole IPv6 /64: its addresses share one bucket.
    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        let v6 = |low: u64| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0000_0001_u128 << 64) | u128::from(low)));
        for i in 0..BURST {
            assert!(t.allow(v6(i + 1), t0), "burst message {i}");
        }
        assert!(!t.allow(v6(999), t0), "another address of the same /64");
        let other = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0002_u128 << 64));
        assert!(t.allow(other, t0), "another /64");
        // IPv4-mapped addresses are their IPv4 address.
        let mapped = |n: u32| IpAddr::V6(std::net::Ipv4Addr::from(n).to_ipv6_mapped());
        for _ in 0..BURST {
            assert!(t.allow(ip(7), t0));
        }
        assert!(!t.allow(mapped(7), t0));
        assert!(t.allow(mapped(8), t0));
    }

    /// Many sources together get at most the interface's rate.
    #[test]
    fn all_sources_together_are_bounded() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        let mut allowed = 0;
        for n in 0..2000u32 {
            if t.allow(ip(n), t0) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, GLOBAL_PER_SECOND, "a second's worth at once");
        // Then the rate (one every 2 ms), a new source each ms.
        let mut allowed = 0;
        for ms in 1..=1000u32 {
            if t.allow(ip(10_000 + ms), t0 + Duration::from_millis(u64::from(ms))) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, GLOBAL_PER_SECOND, "a second of the flood: the rate");
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sources_first() {
        let mut t = Throttle::new();
        let t0 = Instant::now();
        for n in 0..MAX_SOURCES as u32 {
            // Each source is tracked, allowed or not by the interface's rate.
            t.allow(ip(n), t0);
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
