use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use ed25519_dalek::{Signer, SigningKey};

use bytes::Bytes;

use crate::chunk::{Chunk, Digest, Payload, MAX_PIECES};
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
    /// The recording store took longer than this to accept a write (a hung disk or
    /// network volume): the session ends, as if the write had failed.
    #[error("the recording store did not accept a write within {}s", .0.as_secs_f32())]
    Stalled(Duration),
}

/// The interface the gateway's relay writes through. Implementations must be cheap to
/// call per packet and must return an error rather than drop anything.
pub trait Recorder: Send + Sync {
    /// Bulk bytes on a channel. Never waits for the disk longer than the recorder's
    /// stall limit.
    fn data(&self, channel: u32, direction: DataDirection, bytes: &[u8]) -> Result<(), RecordError>;
    /// Bulk bytes the caller owns as [`Bytes`] (a relayed packet): a recorder may keep a
    /// reference instead of copying them.
    fn data_shared(&self, channel: u32, direction: DataDirection, bytes: Bytes) -> Result<(), RecordError> {
        self.data(channel, direction, &bytes)
    }
    /// Any other event.
    fn meta(&self, channel: u32, meta: &Meta) -> Result<(), RecordError>;
    /// Whether the recording is behind, so that the next call may wait for it. A caller
    /// on a thread that serves other work too (an async runtime's) should then wait in
    /// [`Recorder::await_room`] off that thread before it records more.
    fn backlogged(&self) -> bool {
        false
    }
    /// Block until the recording is no longer behind, at most the recorder's stall
    /// limit ([`RecordError::Stalled`] past it).
    fn await_room(&self) -> Result<(), RecordError> {
        Ok(())
    }
    /// Write buffered events and, when due, a signed checkpoint synced to disk. May wait
    /// for the disk: call it off the relay's thread. Recording goes on meanwhile.
    fn flush(&self) -> Result<(), RecordError>;
    /// Write the closing event and the signed seal; later calls fail with
    /// [`RecordError::Finished`].
    fn finish(&self, reason: &str) -> Result<(), RecordError>;
}

/// Source of the time stamps: microseconds since the session started.
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Whether a writer still has the recording at `path` open (it holds the file's lock
/// from creation to close): a live session's, which nothing may remove.
pub fn is_being_written(path: &Path) -> std::io::Result<bool> {
    let file = File::open(path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// How often a checkpoint is signed while events keep coming.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// How long, by default, the recording store may take to accept a write before the
/// recorder counts it as failed (see [`FileRecorder::with_stall_limit`]).
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Records are handed to the recording's thread in batches of about this many bytes (or
/// [`BATCH_RECORDS`]), and at every flush and the seal: one wake-up of the thread per
/// batch rather than per packet (which cost the relay 0.2-0.3 CPU-s per GiB here).
const BATCH_BYTES: usize = 256 << 10;
const BATCH_RECORDS: usize = 64;
/// Batches queued for the thread beyond which the recording is [`Recorder::backlogged`]:
/// callers that can wait elsewhere do so before they record more, and a call that
/// finds [`HARD_QUEUE`] batches queued waits for the thread itself (at most the stall
/// limit). With the batch being filled, this bounds what a session's recorder holds in
/// memory beside its frame and staging buffers (about 1.3 MiB of relayed packets when
/// its callers wait, 2.3 MiB at most).
const QUEUE: usize = 4;
const HARD_QUEUE: usize = 2 * QUEUE;

/// How many batches wait for the recording's thread, and a way to wait for fewer. The
/// queue itself is unbounded, so that no caller ever waits holding the queue's lock
/// (and with it every other caller, the relay's thread among them): callers wait here
/// first, without it.
#[derive(Default)]
struct Backlog {
    /// Batches queued, and whether the thread is gone (nothing is worth waiting for).
    state: Mutex<(usize, bool)>,
    taken: Condvar,
}

impl Backlog {
    fn queued(&self) -> usize {
        locked(&self.state).0
    }

    fn add(&self) {
        locked(&self.state).0 += 1;
    }

    /// The thread took a batch.
    fn took(&self) {
        let mut st = locked(&self.state);
        st.0 = st.0.saturating_sub(1);
        self.taken.notify_all();
    }

    /// The thread stopped: whoever waits goes on (and finds the recording ended).
    fn close(&self) {
        locked(&self.state).1 = true;
        self.taken.notify_all();
    }

    /// Wait until fewer than `limit` batches are queued, or the thread is gone; false
    /// if `timeout` passed first.
    fn wait_below(&self, limit: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = locked(&self.state);
        while st.0 >= limit && !st.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.taken.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

/// A call's records, stamped.
struct Record {
    kind: u8,
    channel: u32,
    t: u64,
    data: Pieces,
}

/// What a recording's thread is asked to do, in the order the callers asked.
enum Cmd {
    Records(Vec<Record>),
    /// Write what is buffered (and a checkpoint when due); answer with the sync the
    /// caller then does itself, outside the thread.
    Flush(Sender<Result<Option<SyncJob>, RecordError>>),
    /// The caller synced everything below this offset.
    Synced(u64),
    Finish {
        end: Vec<u8>,
        t: u64,
        reply: Sender<Result<(), RecordError>>,
    },
}

/// One call's payload, already cut into records of at most [`MAX_RECORD_PAYLOAD`].
enum Pieces {
    One(Part),
    Many(Vec<Part>),
}

/// One record's data, with its hash when the caller took it (plaintext recordings: the
/// relay hashes each packet on its own thread, where the packet is still in the cache).
struct Part {
    data: Bytes,
    digest: Option<[u8; 32]>,
}

impl Part {
    fn payload(self) -> (Payload<'static>, Digest) {
        let digest = self.digest.map_or(Digest::Now, Digest::Given);
        (Payload::Shared(self.data), digest)
    }
}

/// A checkpoint's sync, done by the flushing caller so the recording's thread keeps
/// taking records while the disk catches up.
struct SyncJob {
    file: File,
    from: u64,
    to: u64,
}

/// Whether a recording still takes records, as its callers see it.
enum Status {
    Open,
    Finished,
    /// A write failed; the first caller to look is told why, later ones that it stopped.
    Stopped(Option<RecordError>),
    /// The store took longer than the stall limit to accept a write.
    Stalled(Duration),
}

/// The recording's state, owned by its thread.
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
}

/// The part of a recorder that its thread runs: it frames, signs and writes (and hashes
/// what its callers did not: encrypted frames, the end event).
struct Worker {
    session_id: String,
    key: SigningKey,
    /// Encrypts EVENTS payloads when the tier asks for it; dropped (zeroized) at the seal.
    data_key: Option<DataKey>,
    clock: Arc<Clock>,
    st: State,
    status: Arc<Mutex<Status>>,
    backlog: Arc<Backlog>,
}

/// Writes a signed, hash-chained recording to a file it creates (never overwrites).
///
/// Each recording has a thread of its own that frames, signs and writes; the callers
/// (the relay, per packet) only hash the record's data (plaintext recordings, while the
/// packet is hot in their core's cache; measured: 0.2 CPU-s/GiB less than hashing it on
/// the recording's thread in ProxyJump form, the same single hop), stamp the time and
/// queue the record. So the
/// relay's thread never waits for the disk, and a store that hangs (a stalled network
/// volume, a frozen filesystem) costs a caller at most the stall limit before the call
/// fails and the session ends: recording fails closed even when the disk does not fail
/// but stops answering.
pub struct FileRecorder {
    path: PathBuf,
    header_hash: [u8; 32],
    clock: Arc<Clock>,
    stall: Duration,
    /// Plaintext: callers hash each record's data before queueing it.
    hash_here: bool,
    tx: Mutex<Queue>,
    status: Arc<Mutex<Status>>,
    backlog: Arc<Backlog>,
}

/// The callers' side of the thread's queue.
struct Queue {
    /// `None` once the seal was queued: nothing is accepted after it.
    tx: Option<Sender<Cmd>>,
    /// Records not yet handed over, and their bytes.
    batch: Vec<Record>,
    bytes: usize,
}

impl std::fmt::Debug for FileRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRecorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Microseconds since now: the time stamps of a recording that starts now.
fn since_now() -> Clock {
    let started = Instant::now();
    Box::new(move || started.elapsed().as_micros() as u64)
}

/// The first failure wins: a recording that already ended, stopped or stalled keeps
/// what it was.
fn fail(status: &Mutex<Status>, failed: Status) {
    let mut status = locked(status);
    if matches!(*status, Status::Open) {
        *status = failed;
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileRecorder {
    /// Create `path` and write the header and a first signed checkpoint, synced to disk,
    /// so a session never starts without an authenticated recording that names it.
    pub fn create(path: &Path, header: &Header, key: SigningKey) -> Result<Self, RecordError> {
        Self::open(path, header, key, since_now(), None)
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
        Self::open(path, header, key, since_now(), Some(data_key))
    }

    /// As [`Self::create`] with an explicit clock (deterministic output for tests).
    pub fn create_with_clock(path: &Path, header: &Header, key: SigningKey, clock: Clock) -> Result<Self, RecordError> {
        Self::open(path, header, key, clock, None)
    }

    /// How long a call may wait for the recording's thread (which waits for the disk)
    /// before it fails with [`RecordError::Stalled`]; default [`STALL_LIMIT`].
    pub fn with_stall_limit(mut self, limit: Duration) -> Self {
        self.stall = limit;
        self
    }

    fn open(
        path: &Path,
        header: &Header,
        key: SigningKey,
        clock: Clock,
        data_key: Option<DataKey>,
    ) -> Result<Self, RecordError> {
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
        // Held while this writer lives (the sink keeps the file open): whoever would remove
        // a recording (retention) can tell one still being written, whatever a database
        // row says. A crash releases it.
        file.try_lock().map_err(|e| create_err(std::io::Error::from(e)))?;
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(format::MAGIC);
        out.extend_from_slice(&format::VERSION.to_be_bytes());
        let header_json = serde_json::to_vec(header)?;
        let header_hash = format::encode_frame(&mut out, &[0u8; 32], FRAME_HEADER, 0, &header_json);
        let clock = Arc::new(clock);
        let status = Arc::new(Mutex::new(Status::Open));
        let backlog = Arc::new(Backlog::default());
        let hash_here = data_key.is_none();
        let mut worker = Worker {
            session_id: header.session_id.clone(),
            key,
            data_key,
            clock: clock.clone(),
            st: State {
                sink: None,
                chunk: Chunk::with_capacity(EVENTS_FRAME_TARGET + 1024),
                out,
                seq: 1,
                prev: header_hash,
                dirty_since_checkpoint: true,
                last_checkpoint: Instant::now(),
                index_file: None,
                index: Vec::new(),
            },
            status: status.clone(),
            backlog: backlog.clone(),
        };
        worker.sign_frame(FRAME_CHECKPOINT);
        let mut sink = Sink::new(file, path);
        sink.append(&mut [IoSlice::new(&worker.st.out)]).map_err(create_err)?;
        sink.sync().map_err(create_err)?;
        worker.st.out.clear();
        worker.st.sink = Some(sink);
        let mut index = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(format::index_path(path))
            .map_err(create_err)?;
        index.write_all(format::INDEX_MAGIC).map_err(create_err)?;
        worker.st.index_file = Some(index);
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("herse-rec".into())
            .stack_size(256 << 10)
            .spawn(move || worker.run(rx))
            .map_err(create_err)?;
        Ok(FileRecorder {
            path: path.to_owned(),
            header_hash,
            clock,
            stall: STALL_LIMIT,
            hash_here,
            tx: Mutex::new(Queue {
                tx: Some(tx),
                batch: Vec::new(),
                bytes: 0,
            }),
            status,
            backlog,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of this recording's header frame: the next recording links to it.
    pub fn header_hash(&self) -> [u8; 32] {
        self.header_hash
    }

    /// Why nothing can be recorded any more, if so. A write error is reported once, to
    /// the first caller that looks.
    fn ended(&self) -> Option<RecordError> {
        match &mut *locked(&self.status) {
            Status::Open => None,
            Status::Finished => Some(RecordError::Finished),
            Status::Stopped(first) => Some(first.take().unwrap_or(RecordError::Stopped)),
            Status::Stalled(limit) => Some(RecordError::Stalled(*limit)),
        }
    }

    /// The store stopped answering: later calls fail at once. What was queued is still
    /// written if the store comes back, but the recording is never sealed.
    fn stalled(&self) -> RecordError {
        fail(&self.status, Status::Stalled(self.stall));
        RecordError::Stalled(self.stall)
    }

    /// Queue `cmd` (the queue never blocks; [`Backlog`] bounds it).
    fn send(&self, tx: &Sender<Cmd>, cmd: Cmd) -> Result<(), RecordError> {
        // Counted before it is sent: the thread may take it (and count it out) at once.
        let records = matches!(cmd, Cmd::Records(_));
        if records {
            self.backlog.add();
        }
        if tx.send(cmd).is_err() {
            if records {
                self.backlog.took();
            }
            return Err(self.ended().unwrap_or(RecordError::Stopped));
        }
        Ok(())
    }

    /// Wait, at most the stall limit, until fewer than `limit` batches are queued.
    fn room_below(&self, limit: usize) -> Result<(), RecordError> {
        if !self.backlog.wait_below(limit, self.stall) {
            return Err(self.stalled());
        }
        match self.ended() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wait at most the stall limit for the recording's thread to answer.
    fn answer<T>(&self, rx: &Receiver<Result<T, RecordError>>) -> Result<T, RecordError> {
        match rx.recv_timeout(self.stall) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(self.stalled()),
            Err(RecvTimeoutError::Disconnected) => Err(self.ended().unwrap_or(RecordError::Stopped)),
        }
    }

    /// One record's data, hashed here if the recording is plaintext.
    fn part(&self, data: Bytes) -> Part {
        let digest = self.hash_here.then(|| format::record_digest(&data));
        Part { data, digest }
    }

    fn record(&self, kind: u8, channel: u32, payload: &[u8]) -> Result<(), RecordError> {
        let data = if payload.len() <= MAX_RECORD_PAYLOAD {
            Pieces::One(self.part(Bytes::copy_from_slice(payload)))
        } else {
            Pieces::Many(
                payload
                    .chunks(MAX_RECORD_PAYLOAD)
                    .map(|c| self.part(Bytes::copy_from_slice(c)))
                    .collect(),
            )
        };
        self.queue(kind, channel, data)
    }

    fn record_shared(&self, kind: u8, channel: u32, payload: Bytes) -> Result<(), RecordError> {
        if payload.len() <= MAX_RECORD_PAYLOAD {
            return self.queue(kind, channel, Pieces::One(self.part(payload)));
        }
        let n = payload.len().div_ceil(MAX_RECORD_PAYLOAD);
        let pieces = (0..n)
            .map(|i| {
                let end = ((i + 1) * MAX_RECORD_PAYLOAD).min(payload.len());
                self.part(payload.slice(i * MAX_RECORD_PAYLOAD..end))
            })
            .collect();
        self.queue(kind, channel, Pieces::Many(pieces))
    }

    /// Stamp the records (all at the same time) and queue them for the thread.
    fn queue(&self, kind: u8, channel: u32, data: Pieces) -> Result<(), RecordError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        // A caller that did not wait in `await_room` waits here, without the lock.
        if self.backlog.queued() >= HARD_QUEUE {
            self.room_below(HARD_QUEUE)?;
        }
        // The stamp and the place in the queue are taken under one lock, so records
        // keep their order in time, and none lands after the seal.
        let mut q = locked(&self.tx);
        if q.tx.is_none() {
            return Err(RecordError::Finished);
        }
        let t = (self.clock)();
        q.bytes += match &data {
            Pieces::One(p) => p.data.len(),
            Pieces::Many(v) => v.iter().map(|p| p.data.len()).sum(),
        };
        q.batch.push(Record { kind, channel, t, data });
        if q.bytes >= BATCH_BYTES || q.batch.len() >= BATCH_RECORDS {
            self.hand_over(&mut q)?;
        }
        Ok(())
    }

    /// Hand the batch being filled to the thread.
    fn hand_over(&self, q: &mut Queue) -> Result<(), RecordError> {
        if q.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut q.batch, Vec::with_capacity(BATCH_RECORDS));
        q.bytes = 0;
        let tx = q.tx.as_ref().ok_or(RecordError::Finished)?;
        self.send(tx, Cmd::Records(batch))
    }
}

impl Worker {
    /// Serve the recording's callers until it is sealed, stopped, or dropped (its
    /// callers gone: the file then ends unsealed and reads as truncated).
    fn run(mut self, rx: Receiver<Cmd>) {
        self.serve(rx);
        self.backlog.close();
    }

    fn serve(&mut self, rx: Receiver<Cmd>) {
        for cmd in rx {
            if matches!(*locked(&self.status), Status::Stopped(_)) {
                // A caller's sync failed: nothing more is written. (After a stall, what
                // was queued before it is still written, should the store come back.)
                return;
            }
            match cmd {
                Cmd::Records(batch) => {
                    self.backlog.took();
                    for Record { kind, channel, t, data } in batch {
                        let r = match data {
                            Pieces::One(p) => self.push(kind, channel, t, std::iter::once(p.payload())),
                            Pieces::Many(v) => self.push(kind, channel, t, v.into_iter().map(Part::payload)),
                        };
                        if let Err(e) = r {
                            self.stop(Some(e));
                            return;
                        }
                    }
                }
                Cmd::Flush(reply) => {
                    let r = self.flush();
                    let failed = r.is_err();
                    match reply.send(r) {
                        Ok(()) if failed => return self.stop(None),
                        Ok(()) => {}
                        // The caller gave up waiting: it reports the stall itself.
                        Err(e) => {
                            if let Err(err) = e.into_inner() {
                                return self.stop(Some(err));
                            }
                        }
                    }
                }
                Cmd::Synced(to) => {
                    if let Some(sink) = self.st.sink.as_mut() {
                        sink.synced(to);
                    }
                }
                Cmd::Finish { end, t, reply } => {
                    let r = self.finish(&end, t);
                    if r.is_ok() {
                        *locked(&self.status) = Status::Finished;
                        // Closed (and its lock released) before the caller hears of it.
                        self.st.sink = None;
                        self.st.index_file = None;
                    } else {
                        self.stop(None);
                    }
                    let _ = reply.send(r);
                    return;
                }
            }
        }
    }

    /// After a failed write the file is in an unknown state (a frame may be half
    /// written): close it so that no later frame lands after the partial one, and tell
    /// the callers (`first`: the error no caller has seen yet).
    fn stop(&mut self, first: Option<RecordError>) {
        self.st.sink = None;
        self.st.index_file = None;
        fail(&self.status, Status::Stopped(first));
    }

    fn encrypted(&self) -> bool {
        self.data_key.is_some()
    }

    fn sign_frame(&mut self, kind: u8) {
        let st = &mut self.st;
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
    fn close_chunk(&mut self) -> Result<(), RecordError> {
        if self.st.chunk.is_empty() {
            return Ok(());
        }
        // Frames already encoded go first, so the file keeps their order.
        self.write_out()?;
        let st = &mut self.st;
        let (seq, prev) = (st.seq, st.prev);
        let first_t = st.chunk.first_t().unwrap_or(0);
        let offset = st.sink.as_ref().ok_or(RecordError::Finished)?.len();
        format::encode_index_entry(&mut st.index, seq, offset, first_t, &prev);
        let sealed = self
            .data_key
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

    fn write_out(&mut self) -> Result<(), RecordError> {
        let st = &mut self.st;
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

    /// Append records (one per piece, all at time `t`), closing frames as they fill.
    fn push<'a>(
        &mut self,
        kind: u8,
        channel: u32,
        t: u64,
        pieces: impl Iterator<Item = (Payload<'a>, Digest)>,
    ) -> Result<(), RecordError> {
        if self.st.sink.is_none() {
            return Err(RecordError::Finished);
        }
        let encrypted = self.encrypted();
        for (piece, digest) in pieces {
            // Plaintext records are hashed as they arrive (by the caller, mostly); a
            // sealed frame's hash is taken over its sealed bytes.
            let digest = if encrypted { Digest::Skip } else { digest };
            self.st.chunk.push(kind, t, channel, piece, digest);
            if self.st.chunk.len() >= EVENTS_FRAME_TARGET || self.st.chunk.pieces() >= MAX_PIECES {
                self.close_chunk()?;
                self.write_out()?;
            }
        }
        Ok(())
    }

    /// Everything queued before into the file, a checkpoint when due; the checkpoint's
    /// sync is left to the caller.
    fn flush(&mut self) -> Result<Option<SyncJob>, RecordError> {
        self.close_chunk()?;
        let checkpoint = self.st.dirty_since_checkpoint && self.st.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if checkpoint {
            self.sign_frame(FRAME_CHECKPOINT);
        }
        self.write_out()?;
        let sink = self.st.sink.as_mut().ok_or(RecordError::Finished)?;
        sink.flush()?;
        if !checkpoint {
            return Ok(None);
        }
        Ok(Some(SyncJob {
            file: sink.sync_handle()?,
            from: sink.dropped(),
            to: sink.len(),
        }))
    }

    /// The end event, the last frame and the seal, synced.
    fn finish(&mut self, end: &[u8], t: u64) -> Result<(), RecordError> {
        self.push(
            kind::META,
            u32::MAX,
            t,
            std::iter::once((Payload::Borrowed(end), Digest::Now)),
        )?;
        self.close_chunk()?;
        self.sign_frame(FRAME_SEAL);
        self.write_out()?;
        let mut sink = self.st.sink.take().ok_or(RecordError::Finished)?;
        self.st.index_file = None;
        self.data_key = None;
        sink.close()?;
        sink.sync()?;
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

    fn backlogged(&self) -> bool {
        self.backlog.queued() >= QUEUE
    }

    fn await_room(&self) -> Result<(), RecordError> {
        self.room_below(QUEUE)
    }

    fn flush(&self) -> Result<(), RecordError> {
        match self.ended() {
            None => {}
            Some(RecordError::Finished) => return Ok(()),
            Some(e) => return Err(e),
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        {
            let mut q = locked(&self.tx);
            if q.tx.is_none() {
                return Ok(());
            }
            self.hand_over(&mut q)?;
            let tx = q.tx.as_ref().ok_or(RecordError::Finished)?;
            self.send(tx, Cmd::Flush(reply))?;
        }
        let Some(job) = self.answer(&answer)? else {
            return Ok(());
        };
        // The sync goes through a second descriptor of the same file, on the caller's
        // thread: the recording's thread keeps taking records while the disk catches
        // up, and everything written up to the checkpoint is on disk when this returns.
        if let Err(e) = job.file.sync_data() {
            // Pages may be lost: the recording stops here, and the seal will not claim
            // otherwise.
            fail(&self.status, Status::Stopped(None));
            return Err(e.into());
        }
        drop_from_cache(&job.file, job.from, job.to);
        if let Some(tx) = locked(&self.tx).tx.as_ref() {
            // Only bookkeeping of the page cache: never worth waiting for.
            let _ = tx.try_send(Cmd::Synced(job.to));
        }
        Ok(())
    }

    fn finish(&self, reason: &str) -> Result<(), RecordError> {
        let end = serde_json::to_vec(&Meta::End {
            reason: reason.to_owned(),
        })?;
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        {
            // Taking the sender closes the queue: nothing recorded concurrently can land
            // after the end.
            let mut q = locked(&self.tx);
            self.hand_over(&mut q)?;
            let sender = q.tx.take().ok_or(RecordError::Finished)?;
            let t = (self.clock)();
            self.send(&sender, Cmd::Finish { end, t, reply })?;
        }
        self.answer(&answer)
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
