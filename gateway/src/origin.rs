//! Where a connection comes from: an enrolled workstation through the WireGuard tunnel,
//! or the optional loopback listener on the gateway host itself.

use std::net::SocketAddr;

use crate::ident::WorkstationName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Decrypted by this workstation's WireGuard key (cryptokey routing: the tunnel
    /// source address proves the workstation).
    Workstation(WorkstationName),
    /// The loopback listener (`ssh.listen`), for the local admin; only loopback
    /// addresses are accepted there.
    Loopback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub addr: SocketAddr,
    pub via: Via,
}

impl Origin {
    pub fn workstation(&self) -> Option<&WorkstationName> {
        match &self.via {
            Via::Workstation(w) => Some(w),
            Via::Loopback => None,
        }
    }

    /// Where a second-factor proof made from here is remembered: the workstation, or
    /// the loopback listener ('@' cannot appear in a workstation name).
    pub fn proof_place(&self) -> &str {
        self.workstation().map(|w| w.as_str()).unwrap_or("@loopback")
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.via {
            Via::Workstation(w) => write!(f, "workstation {w} ({})", self.addr),
            Via::Loopback => write!(f, "loopback {}", self.addr),
        }
    }
}
