//! The WireGuard front door: the gateway's only public surface.
//!
//! - [`key`]: Curve25519 keys in wg's base64 form.
//! - [`engine`]: boringtun tunnels + the userspace TCP/IP stack, live peer changes.
//! - [`stream`]: tunnel TCP connections as tokio streams.
//! - [`quick`]: the wg-quick configuration handed to an enrolled workstation.
//! - [`pool`]: tunnel address allocation.
//! - [`throttle`]: handshake messages per source address.
//! - [`uapi`]: the read-only UAPI socket `wg show` reads.

pub mod engine;
pub mod key;
pub mod pool;
pub mod quick;
pub mod stream;
mod throttle;
pub mod uapi;

pub use engine::{Accepted, CounterSnapshot, Liveness, PeerSpec, PeerStatus, WgConfig, WireGuard};
pub use key::{BadKey, WgPublicKey, WgSecret};
pub use stream::TunnelStream;
