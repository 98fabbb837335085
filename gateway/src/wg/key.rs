//! WireGuard keys: Curve25519 key pairs in the base64 form `wg` and wg-quick use.

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::RngExt;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a WireGuard key (44 characters of base64 encoding 32 bytes)")]
pub struct BadKey;

/// A peer's public key. Displayed in base64, as `wg show` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgPublicKey([u8; 32]);

impl WgPublicKey {
    pub fn parse(s: &str) -> Result<Self, BadKey> {
        let s = s.trim();
        if s.len() != 44 {
            return Err(BadKey);
        }
        let bytes = B64.decode(s).map_err(|_| BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| BadKey)?;
        // The all-zero key is what an unset key looks like; it can never be a peer.
        if key == [0u8; 32] {
            return Err(BadKey);
        }
        Ok(WgPublicKey(key))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        WgPublicKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_x25519(self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl std::fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl std::fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

/// A private key. Zeroized on drop (x25519-dalek), never printed by `Debug`.
#[derive(Clone)]
pub struct WgSecret(StaticSecret);

impl WgSecret {
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut seed[..]);
        WgSecret(StaticSecret::from(*seed))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        WgSecret(StaticSecret::from(b))
    }

    pub fn public(&self) -> WgPublicKey {
        WgPublicKey(PublicKey::from(&self.0).to_bytes())
    }

    /// The raw scalar, for sealing under the master key.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The base64 form for a wg-quick `PrivateKey =` line, shown once to the enrolling admin.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0.as_bytes()))
    }

    pub(crate) fn x25519(&self) -> &StaticSecret {
        &self.0
    }
}

impl std::fmt::Debug for WgSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgSecret(public {}, private redacted)", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = WgSecret::generate();
        let p = s.public();
        assert_eq!(WgPublicKey::parse(&p.to_string()).unwrap(), p);
        assert!(!format!("{s:?}").contains(s.to_base64().as_str()));
        assert_eq!(WgPublicKey::parse("short"), Err(BadKey));
        assert_eq!(WgPublicKey::parse(&"A".repeat(44)), Err(BadKey));
        assert_eq!(
            WgPublicKey::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(BadKey),
            "all-zero key"
        );
        assert_eq!(
            WgPublicKey::parse("!!!!AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(BadKey)
        );
    }
}
