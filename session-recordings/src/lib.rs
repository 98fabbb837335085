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
//! The file format is specified in [`format`].
#![forbid(unsafe_code)]

mod chunk;
pub mod crypt;
mod event;
mod follow;
pub mod format;
mod name;
mod reader;
pub mod scp;
pub mod sftp;
pub mod sftp_audit;
mod sink;
mod writer;

pub use event::{ChannelKind, DataDirection, Event, Header, Meta, PreviousRecording};
pub use reader::{Completeness, ReadError, RecordingReader, Verified};
pub use writer::{
    is_being_written, Clock, FileRecorder, NullRecorder, RecordError, Recorder, CHECKPOINT_EVERY, STALL_LIMIT,
};

pub use follow::TailFile;
pub use format::{MAGIC, MAX_RECORD_PAYLOAD, VERSION};
pub use name::{shown, Name};
