use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};

use bytes::Bytes;

use crate::chunk::{Chunk, Payload, MAX_PIECES};
use crate::crypt::DataKey;
use crate::event::{kind, DataDirection, Header, Meta};
use crate::format::{
    self, EVENTS_FRAME_TARGET, FRAME_CHECKPOINT, FRAME_EVENTS, FRAME_HEADER, FRAME_SEAL, MAX_RECORD_PAYLOAD,
};
use crate::sink::{drop_from_cache, Sink};

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
    /// A write failed earlier: nothing more is written, so the file ends where the
    /// failure left it and reads as truncated, never as a spliced frame.
    #[error("recording stopped after an earlier write error")]
    Stopped,
}

/// The interface the gateway's relay writes through. Implementations must be cheap to
/// call per packet and must return an error rather than drop anything.
pub trait Recorder: Send + Sync {
    /// Bulk bytes on a channel.
    fn data(&self, channel: u32, direction: DataDirection, bytes: &[u8]) -> Result<(), RecordError>;
    /// Bulk bytes the caller owns as [`Bytes`] (a relayed packet): a recorder may keep a
    /// reference instead of copying them.
    fn data_shared(&self, channel: u32, direction: DataDirection, bytes: Bytes) -> Result<(), RecordError> {
        self.data(channel, direction, &bytes)
    }
    /// Any other event.
    fn meta(&self, channel: u32, meta: &Meta) -> Result<(), RecordError>;
    /// Write buffered events and, when due, a signed checkpoint synced to disk. May wait
    /// for the disk: call it off the relay's thread. Recording goes on meanwhile.
    fn flush(&self) -> Result<(), RecordError>;
    /// Write the closing event and the signed seal; later calls fail with
    /// [`RecordError::Finished`].
    fn finish(&self, reason: &str) -> Result<(), RecordError>;
}

/// Source of the time stamps: microseconds since the session started.
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// How often a checkpoint is signed while events keep coming.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

struct State {
    /// The recording's file; `None` once finished or stopped.
    sink: Option<Sink>,
    /// The EVENTS frame being filled (bounded by [`EVENTS_FRAME_TARGET`] plus one record).
    chunk: Chunk,
    /// Encoded frames waiting for one `write` call.
    out: Vec<u8>,
    seq: u64,
    prev: [u8; 32],
    dirty_since_checkpoint: bool,
    last_checkpoint: Instant,
    /// Seek index (see [`crate::format`]): one entry per EVENTS frame, written beside
    /// the recording.
    index_file: Option<File>,
    index: Vec<u8>,
    /// Set by the first write error; the file is closed then.
    stopped: bool,
}

/// Writes a signed, hash-chained recording to a file it creates (never overwrites).
pub struct FileRecorder {
    path: PathBuf,
    session_id: String,
    header_hash: [u8; 32],
    key: SigningKey,
    /// Encrypts EVENTS payloads when the tier asks for it; dropped (zeroized) at the seal.
    data_key: Mutex<Option<DataKey>>,
    clock: Clock,
    state: Mutex<State>,
}

impl std::fmt::Debug for FileRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRecorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileRecorder {
    /// Create `path` and write the header and a first signed checkpoint, synced to disk,
    /// so a session never starts without an authenticated recording that names it.
    pub fn create(path: &Path, header: &Header, key: SigningKey) -> Result<Self, RecordError> {
        let started = Instant::now();
        Self::create_with_clock(
            path,
            header,
            key,
            Box::new(move || started.elapsed().as_micros() as u64),
        )
    }

    /// As [`Self::create`], encrypting events with `data_key`; `header.encryption` must
    /// carry the wrapped key.
    pub fn create_encrypted(
        path: &Path,
        header: &Header,
        key: SigningKey,
        data_key: DataKey,
    ) -> Result<Self, RecordError> {
        if header.encryption.is_none() {
            return Err(RecordError::Write(std::io::Error::other(
                "encrypted recording without an encryption header",
            )));
        }
        let rec = Self::create(path, header, key)?;
        *rec.data_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(data_key);
        Ok(rec)
    }

    /// As [`Self::create`] with an explicit clock (deterministic output for tests).
    pub fn create_with_clock(path: &Path, header: &Header, key: SigningKey, clock: Clock) -> Result<Self, RecordError> {
        let create_err = |source| RecordError::Create {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(create_err)?;
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(format::MAGIC);
        out.extend_from_slice(&format::VERSION.to_be_bytes());
        let header_json = serde_json::to_vec(header)?;
        let header_hash = format::encode_frame(&mut out, &[0u8; 32], FRAME_HEADER, 0, &header_json);
        let rec = FileRecorder {
            path: path.to_owned(),
            session_id: header.session_id.clone(),
            header_hash,
            key,
            data_key: Mutex::new(None),
            clock,
            state: Mutex::new(State {
                sink: None,
                chunk: Chunk::with_capacity(EVENTS_FRAME_TARGET + 1024),
                out: Vec::new(),
                seq: 1,
                prev: header_hash,
                dirty_since_checkpoint: true,
                last_checkpoint: Instant::now(),
                index_file: None,
                index: Vec::new(),
                stopped: false,
            }),
        };
        {
            let mut st = rec.lock();
            st.out = out;
            rec.sign_frame(&mut st, FRAME_CHECKPOINT);
            let mut sink = Sink::new(file, path);
            sink.append(&mut [IoSlice::new(&st.out)]).map_err(create_err)?;
            sink.sync().map_err(create_err)?;
            st.out.clear();
            st.sink = Some(sink);
            let mut index = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(format::index_path(path))
                .map_err(create_err)?;
            index.write_all(format::INDEX_MAGIC).map_err(create_err)?;
            st.index_file = Some(index);
        }
        Ok(rec)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of this recording's header frame: the next recording links to it.
    pub fn header_hash(&self) -> [u8; 32] {
        self.header_hash
    }

    fn encrypted(&self) -> bool {
        self.data_key.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sign_frame(&self, st: &mut State, kind: u8) {
        let t = (self.clock)();
        let msg = format::checkpoint_message(kind == FRAME_SEAL, &self.session_id, st.seq, &st.prev, t);
        let sig = self.key.sign(&msg);
        let mut payload = Vec::with_capacity(72);
        payload.extend_from_slice(&t.to_be_bytes());
        payload.extend_from_slice(&sig.to_bytes());
        st.prev = format::encode_frame(&mut st.out, &st.prev, kind, st.seq, &payload);
        st.seq += 1;
        st.dirty_since_checkpoint = false;
        st.last_checkpoint = Instant::now();
    }

    /// Close the EVENTS frame being filled and hand it to the sink in one call: head,
    /// the payload's pieces from where they are (copied record heads, shared packets),
    /// hash. The sink writes them with one vectored write, or copies them once into its
    /// direct-I/O staging buffer; an encrypted tier's frame is sealed into one buffer
    /// first.
    fn close_chunk(&self, st: &mut State) -> Result<(), RecordError> {
        if st.chunk.is_empty() {
            return Ok(());
        }
        // Frames already encoded go first, so the file keeps their order.
        Self::write_out(st)?;
        let (seq, prev) = (st.seq, st.prev);
        let first_t = st.chunk.first_t().unwrap_or(0);
        let offset = st.sink.as_ref().ok_or(RecordError::Finished)?.len();
        format::encode_index_entry(&mut st.index, seq, offset, first_t, &prev);
        let sealed = self
            .data_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|k| k.seal(&self.session_id, seq, &st.chunk.contiguous()));
        let State { sink, chunk, .. } = st;
        let sink = sink.as_mut().ok_or(RecordError::Finished)?;
        let (len, hash, payload) = match &sealed {
            Some(p) => (
                p.len(),
                format::frame_hash(format::ChainHash::CURRENT, &prev, FRAME_EVENTS, seq, p),
                vec![IoSlice::new(p)],
            ),
            None => {
                let hash = chunk
                    .hash(seq, &prev)
                    .ok_or_else(|| std::io::Error::other("an events frame does not parse as its records"))?;
                (chunk.len(), hash, chunk.io_slices())
            }
        };
        let head = format::frame_head(FRAME_EVENTS, seq, len);
        let mut slices = Vec::with_capacity(payload.len() + 2);
        slices.push(IoSlice::new(&head));
        slices.extend(payload);
        slices.push(IoSlice::new(&hash));
        sink.append(&mut slices)?;
        st.prev = hash;
        st.seq += 1;
        st.chunk.clear();
        st.dirty_since_checkpoint = true;
        Ok(())
    }

    /// After a failed write the file is in an unknown state (a frame may be half
    /// written): close it so that no later frame lands after the partial one.
    fn stop_on_write_error<T>(st: &mut State, r: Result<T, RecordError>) -> Result<T, RecordError> {
        if matches!(r, Err(RecordError::Write(_))) {
            st.sink = None;
            st.index_file = None;
            st.stopped = true;
        }
        r
    }

    /// Why nothing can be recorded any more.
    fn closed(st: &State) -> RecordError {
        if st.stopped {
            RecordError::Stopped
        } else {
            RecordError::Finished
        }
    }

    /// Put everything appended into the file (see [`Sink::flush`]).
    fn sink_flush(st: &mut State) -> Result<(), RecordError> {
        st.sink.as_mut().ok_or(RecordError::Finished)?.flush()?;
        Ok(())
    }

    fn write_out(st: &mut State) -> Result<(), RecordError> {
        if st.out.is_empty() {
            return Ok(());
        }
        let sink = st.sink.as_mut().ok_or(RecordError::Finished)?;
        sink.append(&mut [IoSlice::new(&st.out)])?;
        st.out.clear();
        if !st.index.is_empty() {
            if let Some(index) = st.index_file.as_mut() {
                index.write_all(&st.index)?;
            }
            st.index.clear();
        }
        Ok(())
    }

    fn record(&self, kind: u8, channel: u32, payload: &[u8]) -> Result<(), RecordError> {
        let pieces = payload.chunks(MAX_RECORD_PAYLOAD);
        let empty = payload.is_empty().then_some(&[][..]);
        self.record_pieces(kind, channel, empty.into_iter().chain(pieces).map(Payload::Borrowed))
    }

    fn record_shared(&self, kind: u8, channel: u32, payload: Bytes) -> Result<(), RecordError> {
        if payload.len() <= MAX_RECORD_PAYLOAD {
            return self.record_pieces(kind, channel, std::iter::once(Payload::Shared(payload)));
        }
        let n = payload.len().div_ceil(MAX_RECORD_PAYLOAD);
        let pieces = (0..n).map(|i| {
            let end = ((i + 1) * MAX_RECORD_PAYLOAD).min(payload.len());
            Payload::Shared(payload.slice(i * MAX_RECORD_PAYLOAD..end))
        });
        self.record_pieces(kind, channel, pieces)
    }

    /// Append records (one per piece, all at the same time stamp), closing frames as
    /// they fill.
    fn record_pieces<'a>(
        &self,
        kind: u8,
        channel: u32,
        pieces: impl Iterator<Item = Payload<'a>>,
    ) -> Result<(), RecordError> {
        let t = (self.clock)();
        let mut st = self.lock();
        self.push_locked(&mut st, kind, channel, t, pieces)
    }

    /// [`Self::record_pieces`] under the state lock the caller holds.
    fn push_locked<'a>(
        &self,
        st: &mut State,
        kind: u8,
        channel: u32,
        t: u64,
        pieces: impl Iterator<Item = Payload<'a>>,
    ) -> Result<(), RecordError> {
        if st.sink.is_none() {
            return Err(Self::closed(st));
        }
        let encrypted = self.encrypted();
        for piece in pieces {
            // Plaintext records are hashed as they arrive; sealed frames once sealed.
            st.chunk.push(kind, t, channel, piece, !encrypted);
            if st.chunk.len() >= EVENTS_FRAME_TARGET || st.chunk.pieces() >= MAX_PIECES {
                let r = self.close_chunk(st).and_then(|()| Self::write_out(st));
                Self::stop_on_write_error(st, r)?;
            }
        }
        Ok(())
    }
}

impl Recorder for FileRecorder {
    fn data(&self, channel: u32, direction: DataDirection, bytes: &[u8]) -> Result<(), RecordError> {
        self.record(direction.kind(), channel, bytes)
    }

    fn data_shared(&self, channel: u32, direction: DataDirection, bytes: Bytes) -> Result<(), RecordError> {
        self.record_shared(direction.kind(), channel, bytes)
    }

    fn meta(&self, channel: u32, meta: &Meta) -> Result<(), RecordError> {
        let json = serde_json::to_vec(meta)?;
        self.record(kind::META, channel, &json)
    }

    fn flush(&self) -> Result<(), RecordError> {
        let mut st = self.lock();
        if st.sink.is_none() {
            return if st.stopped { Err(RecordError::Stopped) } else { Ok(()) };
        }
        let r = self.close_chunk(&mut st);
        Self::stop_on_write_error(&mut st, r)?;
        let checkpoint = st.dirty_since_checkpoint && st.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if checkpoint {
            self.sign_frame(&mut st, FRAME_CHECKPOINT);
        }
        let r = Self::write_out(&mut st).and_then(|()| Self::sink_flush(&mut st));
        Self::stop_on_write_error(&mut st, r)?;
        if !checkpoint {
            return Ok(());
        }
        // The sync goes through a second descriptor of the same file, outside the lock:
        // the relay keeps appending while the disk catches up, and everything written
        // up to the checkpoint is on disk when this returns.
        let sync = st
            .sink
            .as_ref()
            .map(|s| s.sync_handle().map(|f| (f, s.dropped(), s.len())));
        let sync = Self::stop_on_write_error(&mut st, sync.transpose().map_err(RecordError::from))?;
        drop(st);
        if let Some((f, from, to)) = sync {
            if let Err(e) = f.sync_data() {
                // Pages may be lost: the recording stops here, and the seal will not
                // claim otherwise.
                let mut st = self.lock();
                return Self::stop_on_write_error(&mut st, Err(e.into()));
            }
            drop_from_cache(&f, from, to);
            if let Some(sink) = self.lock().sink.as_mut() {
                sink.synced(to);
            }
        }
        Ok(())
    }

    fn finish(&self, reason: &str) -> Result<(), RecordError> {
        let end = serde_json::to_vec(&Meta::End {
            reason: reason.to_owned(),
        })?;
        let t = (self.clock)();
        // The end event, the last frame and the seal in one critical section: nothing
        // recorded concurrently can land after the end.
        let mut st = self.lock();
        self.push_locked(
            &mut st,
            kind::META,
            u32::MAX,
            t,
            std::iter::once(Payload::Borrowed(&end)),
        )?;
        let r = self.close_chunk(&mut st);
        Self::stop_on_write_error(&mut st, r)?;
        self.sign_frame(&mut st, FRAME_SEAL);
        let r = Self::write_out(&mut st).and_then(|()| {
            let sink = st.sink.as_mut().ok_or(RecordError::Finished)?;
            sink.close()?;
            Ok(sink.sync()?)
        });
        Self::stop_on_write_error(&mut st, r)?;
        st.sink = None;
        *self.data_key.lock().unwrap_or_else(|p| p.into_inner()) = None;
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
