//! Herse session recordings: the format every proxied channel is written in.
//!
//! A recording is one file per gateway session (one upstream connection). It starts
//! with a header (who, from where, to which target, under which policy decision) and
//! continues with timestamped events: terminal input and output, resizes, exec command
//! lines, exit codes, SFTP bytes, port-forward traffic, and the reason the session ended.
//!
//! The gateway never proxies a byte that it could not first hand to a [`Recorder`]; a
//! recorder error ends the session (fail closed).
//!
//! # File layout (version 1)
//! ```text
//! magic  "HERSEREC"            8 bytes
//! version u16 big-endian        = 1
//! header_len u32 big-endian, header JSON (see [`Header`])
//! records*: kind u8 | t_micros u64 BE (since session start) | channel u32 BE | len u32 BE | payload
//! ```
//! Record kinds: 1 input (client to target), 2 output (stdout), 3 stderr, 16 a JSON
//! [`Meta`] event. Integers are big-endian. A file cut short by a crash ends at the last
//! whole record; the reader reports it as truncated (no `End` event).
#![forbid(unsafe_code)]

mod event;
mod reader;
pub mod sftp;
pub mod sftp_audit;
mod writer;

pub use event::{ChannelKind, DataDirection, Event, Header, Meta};
pub use reader::{ReadError, RecordingReader};
pub use writer::{FileRecorder, NullRecorder, RecordError, Recorder};

/// File magic of a Herse recording.
pub const MAGIC: &[u8; 8] = b"HERSEREC";
/// Format version written by this crate.
pub const VERSION: u16 = 1;
/// Largest payload a single record may carry; larger data is split.
pub const MAX_RECORD_PAYLOAD: usize = 1 << 20;
