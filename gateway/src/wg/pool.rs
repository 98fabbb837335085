//! Tunnel addresses: the gateway holds one address of an IPv4 subnet; workstations get
//! the others, one each.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The gateway's tunnel address and its subnet, e.g. `10.77.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelNet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0:?} is not an IPv4 address with a prefix length (e.g. 10.77.0.1/24)")]
    Syntax(String),
    #[error("prefix /{0} leaves no room for workstations (use /8 to /30)")]
    Prefix(u8),
    #[error("{0} is the network or broadcast address of its subnet")]
    NotAHost(Ipv4Addr),
    #[error("every address of {0} is taken")]
    Exhausted(String),
}

impl TunnelNet {
    pub fn parse(s: &str) -> Result<Self, PoolError> {
        let (a, p) = s.split_once('/').ok_or_else(|| PoolError::Syntax(s.to_owned()))?;
        let gateway: Ipv4Addr = a.parse().map_err(|_| PoolError::Syntax(s.to_owned()))?;
        let prefix: u8 = p.parse().map_err(|_| PoolError::Syntax(s.to_owned()))?;
        if !(8..=30).contains(&prefix) {
            return Err(PoolError::Prefix(prefix));
        }
        let net = TunnelNet { gateway, prefix };
        if gateway == net.network() || gateway == net.broadcast() {
            return Err(PoolError::NotAHost(gateway));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) | !self.mask())
    }

    /// Whether `a` may be given to a workstation.
    pub fn is_pool_address(&self, a: Ipv4Addr) -> bool {
        (u32::from(a) & self.mask()) == u32::from(self.network())
            && a != self.network()
            && a != self.broadcast()
            && a != self.gateway
    }

    /// The lowest pool address not in `taken`.
    pub fn allocate(&self, taken: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, PoolError> {
        let first = u32::from(self.network()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| *a != self.gateway && !taken.contains(a))
            .ok_or_else(|| PoolError::Exhausted(self.to_string()))
    }
}

impl std::fmt::Display for TunnelNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.gateway, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_the_gateway_and_taken_addresses() {
        let n = TunnelNet::parse("10.77.0.1/30").unwrap();
        let mut taken = HashSet::new();
        let a = n.allocate(&taken).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 77, 0, 2));
        taken.insert(a);
        assert!(matches!(n.allocate(&taken), Err(PoolError::Exhausted(_))));
        assert!(!n.is_pool_address(Ipv4Addr::new(10, 77, 0, 3)), "broadcast");
        assert!(!n.is_pool_address(Ipv4Addr::new(10, 77, 0, 1)), "gateway");
        assert!(!n.is_pool_address(Ipv4Addr::new(10, 78, 0, 2)), "outside");
    }

    #[test]
    fn syntax_errors() {
        assert!(matches!(TunnelNet::parse("10.77.0.1"), Err(PoolError::Syntax(_))));
        assert_eq!(TunnelNet::parse("10.77.0.1/31"), Err(PoolError::Prefix(31)));
        assert!(matches!(TunnelNet::parse("10.77.0.0/24"), Err(PoolError::NotAHost(_))));
        assert_eq!(
            TunnelNet::parse("10.77.0.5/24").unwrap().network(),
            Ipv4Addr::new(10, 77, 0, 0)
        );
    }
}
