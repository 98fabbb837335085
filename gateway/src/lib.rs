//! Herse, a bastion gateway: the only door into production SSH.
//!
//! See ARCHITECTURE.md at the repository root for how a connection flows through these
//! modules and for the invariants they keep.
#![forbid(unsafe_code)]

pub mod config;
pub mod diag;
pub mod ident;
pub mod policy;
pub mod secrets;
pub mod store;
pub mod certs;
pub mod keys;
pub mod upstream;
pub mod gateway;
pub mod session;
pub mod relay;
pub mod front;
pub mod init;
pub mod runtime;
pub mod serve;
