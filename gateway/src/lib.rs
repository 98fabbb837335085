//! Herse, a bastion gateway: the only door into production SSH.
//!
//! See ARCHITECTURE.md at the repository root for how a connection flows through these
//! modules and for the invariants they keep.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit_log;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod conn_threads;
pub mod control;
pub mod database_url;
pub mod diag;
pub mod front;
pub mod gateway;
pub mod grants;
pub mod ident;
pub mod init;
pub mod keys;
pub mod log_lines;
pub mod metrics;
pub mod mfa;
pub mod origin;
pub mod peer_endpoints;
pub mod pending;
pub mod policy;
pub mod recordings_query;
pub mod relay;
pub mod retention;
pub mod runtime;
pub mod secrets;
pub mod serve;
pub mod session;
pub mod store;
pub mod timefmt;
pub mod upstream;
pub mod web;
pub mod wg;
