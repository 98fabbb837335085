use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::event::{kind, DataDirection, Header, Meta};
use crate::{MAGIC, MAX_RECORD_PAYLOAD, VERSION};

/// Why a recorder could not record. Any of these ends the session it records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create recording {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot write recording: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot encode recording event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("recording is already finished")]
    Finished,
}

/// The interface the gateway's relay writes through. Implementations must be cheap to
/// call per packet and must return an error rather than drop anything.
pub trait Recorder: Send + Sync {
    /// Bulk bytes on a channel.
    fn data(&self, channel: u32, direction: DataDirection, bytes: &[u8]) -> Result<(), RecordError>;
    /// Any other event.
    fn meta(&self, channel: u32, meta: &Meta) -> Result<(), RecordError>;
    /// Push buffered records to stable storage.
    fn flush(&self) -> Result<(), RecordError>;
    /// Write the closing event and flush; later calls fail with [`RecordError::Finished`].
    fn finish(&self, reason: &str) -> Result<(), RecordError>;
}

struct State {
    out: Option<BufWriter<File>>,
}

/// Writes a recording to a file. The file is created exclusively (never overwritten).
pub struct FileRecorder {
    path: PathBuf,
    started: Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for FileRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRecorder").field("path", &self.path).finish()
    }
}

const BUFFER: usize = 256 * 1024;

impl FileRecorder {
    /// Create `path` (which must not exist) and write the header, synced to disk, so a
    /// session never starts without a recording that names it.
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordError> {
        let create_err = |source| RecordError::Create {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(create_err)?;
        let mut out = BufWriter::with_capacity(BUFFER, file);
        let header_json = serde_json::to_vec(header)?;
        let header_len = u32::try_from(header_json.len())
            .map_err(|_| RecordError::Write(std::io::Error::other("recording header too large")))?;
        out.write_all(MAGIC).map_err(create_err)?;
        out.write_all(&VERSION.to_be_bytes()).map_err(create_err)?;
        out.write_all(&header_len.to_be_bytes()).map_err(create_err)?;
        out.write_all(&header_json).map_err(create_err)?;
        out.flush().map_err(create_err)?;
        out.get_ref().sync_data().map_err(create_err)?;
        Ok(Self {
            path: path.to_owned(),
            started: Instant::now(),
            state: Mutex::new(State { out: Some(out) }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&self, kind: u8, channel: u32, payload: &[u8]) -> Result<(), RecordError> {
        let t = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = state.out.as_mut().ok_or(RecordError::Finished)?;
        for piece in chunks(payload) {
            let mut head = [0u8; 17];
            head[0] = kind;
            head[1..9].copy_from_slice(&t.to_be_bytes());
            head[9..13].copy_from_slice(&channel.to_be_bytes());
            // `chunks` yields at most MAX_RECORD_PAYLOAD bytes, which fits in u32.
            head[13..17].copy_from_slice(&(piece.len() as u32).to_be_bytes());
            out.write_all(&head)?;
            out.write_all(piece)?;
        }
        Ok(())
    }
}

fn chunks(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    // An empty payload still makes one record (a meta event is never empty, data may be).
    let empty: &[u8] = &[];
    let first_empty = payload.is_empty().then_some(empty);
    first_empty.into_iter().chain(payload.chunks(MAX_RECORD_PAYLOAD))
}

impl Recorder for FileRecorder {
    fn data(&self, channel: u32, direction: DataDirection, bytes: &[u8]) -> Result<(), RecordError> {
        self.write_record(direction.kind(), channel, bytes)
    }

    fn meta(&self, channel: u32, meta: &Meta) -> Result<(), RecordError> {
        let json = serde_json::to_vec(meta)?;
        self.write_record(kind::META, channel, &json)
    }

    fn flush(&self) -> Result<(), RecordError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.out.as_mut() {
            Some(out) => {
                out.flush()?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn finish(&self, reason: &str) -> Result<(), RecordError> {
        self.meta(
            u32::MAX,
            &Meta::End {
                reason: reason.to_owned(),
            },
        )?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = state.out.take().ok_or(RecordError::Finished)?;
        out.flush()?;
        out.get_ref().sync_data()?;
        Ok(())
    }
}

/// Discards everything. Only for benchmarks comparing the relay's own cost; the gateway
/// has no configuration that selects it.
#[derive(Debug, Default)]
pub struct NullRecorder;

impl Recorder for NullRecorder {
    fn data(&self, _: u32, _: DataDirection, _: &[u8]) -> Result<(), RecordError> {
        Ok(())
    }
    fn meta(&self, _: u32, _: &Meta) -> Result<(), RecordError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), RecordError> {
        Ok(())
    }
    fn finish(&self, _: &str) -> Result<(), RecordError> {
        Ok(())
    }
}
