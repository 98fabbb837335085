//! The wg-quick configuration an enrolled workstation installs.

use std::net::Ipv4Addr;

use zeroize::Zeroizing;

use super::key::WgPublicKey;

pub struct QuickConfig<'a> {
    /// Base64 private key, when the gateway generated the pair (shown once).
    pub private_key: Option<&'a str>,
    pub address: Ipv4Addr,
    pub gateway_public_key: WgPublicKey,
    pub gateway_address: Ipv4Addr,
    pub endpoint: &'a str,
    pub persistent_keepalive: u16,
}

impl QuickConfig<'_> {
    /// The file text. Without a generated private key, a placeholder tells the
    /// workstation's owner where theirs goes.
    pub fn render(&self) -> Zeroizing<String> {
        let private = self.private_key.unwrap_or("<the workstation's own private key>");
        Zeroizing::new(format!(
            "[Interface]\n\
             PrivateKey = {private}\n\
             Address = {}/32\n\
             \n\
             [Peer]\n\
             # the Herse gateway\n\
             PublicKey = {}\n\
             Endpoint = {}\n\
             AllowedIPs = {}/32\n\
             PersistentKeepalive = {}\n",
            self.address, self.gateway_public_key, self.endpoint, self.gateway_address, self.persistent_keepalive
        ))
    }
}
