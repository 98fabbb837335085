use std::collections::VecDeque;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::event::{kind, DataDirection, Event, Header, Meta};
use crate::format::{
    self, FRAME_CHECKPOINT, FRAME_EVENTS, FRAME_HEADER, FRAME_SEAL, MAX_FRAME_PAYLOAD, RECORD_HEADER_LEN,
};

/// Why a recording could not be read or verified. Positions name the frame number and
/// its byte offset in the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Herse recording (bad magic)")]
    BadMagic,
    #[error("unsupported recording version {0}")]
    Version(u16),
    #[error("recording is empty or cut before its header")]
    NoHeader,
    #[error("frame {frame} at byte {offset}: {what}")]
    Corrupt { frame: u64, offset: u64, what: String },
    #[error("frame {frame} at byte {offset}: signature does not verify with the audit key")]
    BadSignature { frame: u64, offset: u64 },
    #[error("the recording is encrypted: give an auditor identity file (--identity)")]
    Encrypted,
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
}

/// Whether a recording is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    /// Sealed: every byte is authenticated.
    Complete { sealed_at_micros: u64 },
    /// Ends without a seal (a crash or a cut). Authenticated up to the last checkpoint;
    /// `unauthenticated_bytes` follow it.
    Truncated {
        authenticated_until_micros: u64,
        unauthenticated_bytes: u64,
    },
}

/// The result of a successful verification.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: Header,
    pub header_hash: [u8; 32],
    pub completeness: Completeness,
    pub frames: u64,
    pub events: u64,
    /// How many of `events` a checkpoint or the seal covers: all of them in a complete
    /// recording; in a truncated one, those before its last checkpoint (the rest were
    /// read, but nothing signed vouches for them).
    pub authenticated_events: u64,
}

/// Reads a recording frame by frame, checking the hash chain as it goes and, when given
/// the audit public key, every checkpoint signature.
pub struct RecordingReader<R> {
    input: R,
    /// The chain's hash function, from the file's version.
    hash: format::ChainHash,
    offset: u64,
    seq: u64,
    prev: [u8; 32],
    header: Header,
    header_hash: [u8; 32],
    key: Option<VerifyingKey>,
    pending: VecDeque<Event>,
    truncated: bool,
    sealed_at: Option<u64>,
    last_checkpoint_t: Option<u64>,
    bytes_since_checkpoint: u64,
    frames: u64,
    events: u64,
    events_at_checkpoint: u64,
    data_key: Option<crate::crypt::DataKey>,
    /// After a jump through the seek index: the time its entry claims for the first
    /// event of the frame it landed on, checked against that frame's real first event.
    landing_claim: Option<u64>,
    /// The index entry a seek landed on.
    landed_on: Option<format::IndexEntry>,
}

impl RecordingReader<BufReader<std::fs::File>> {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::new(BufReader::with_capacity(1 << 20, std::fs::File::open(path)?), None)
    }

    /// Open positioned at the EVENTS frame that holds time `t_micros` (from the seek
    /// index; without an index, from the start). Events before `t_micros` in that frame
    /// are still returned; the caller skips them.
    pub fn open_at(path: &Path, t_micros: u64) -> Result<Self, ReadError> {
        Self::seek_to(Self::open(path)?, path, t_micros)
    }

    /// [`Self::open_at`], checking every checkpoint and the seal from there on against
    /// `key`. The seek index is not trusted: an entry that does not lead into the signed
    /// chain (a wrong offset, frame number or previous hash) makes the read fail at that
    /// frame or at the next checkpoint, at most a checkpoint interval later; one that
    /// leads into it at a later frame than it claims (skipping what came between) fails
    /// at the first EVENTS frame, whose first event is not at the time the entry says.
    /// The header is not tied to the chain after a jump: read from the start for that.
    pub fn open_at_verified(path: &Path, t_micros: u64, key: &VerifyingKey) -> Result<Self, ReadError> {
        Self::seek_to(Self::open_verified(path, key)?, path, t_micros)
    }

    fn seek_to(r: Self, path: &Path, t_micros: u64) -> Result<Self, ReadError> {
        let Ok(bytes) = std::fs::read(format::index_path(path)) else {
            return Ok(r);
        };
        let Some(entries) = format::decode_index(&bytes) else {
            return Ok(r);
        };
        let i = entries.partition_point(|e| e.first_t <= t_micros);
        match i.checked_sub(1).map(|i| entries[i]) {
            Some(e) => Self::land(r, e),
            None => Ok(r),
        }
    }

    /// [`Self::open_at_verified`] landing on `entry` (one [`Self::landed_on`] gave), not
    /// on what the index says now: a later read of a recording that is still growing
    /// starts where the first did. The entry is as untrusted as the index it came from.
    pub fn open_at_entry_verified(
        path: &Path,
        entry: format::IndexEntry,
        key: &VerifyingKey,
    ) -> Result<Self, ReadError> {
        Self::land(Self::open_verified(path, key)?, entry)
    }

    fn land(mut r: Self, e: format::IndexEntry) -> Result<Self, ReadError> {
        use std::io::{Seek, SeekFrom};
        if e.offset > r.offset && e.seq >= r.seq {
            r.input.seek(SeekFrom::Start(e.offset))?;
            r.offset = e.offset;
            r.seq = e.seq;
            r.prev = e.prev;
            r.landing_claim = Some(e.first_t);
            r.landed_on = Some(e);
        }
        Ok(r)
    }

    pub fn open_verified(path: &Path, key: &VerifyingKey) -> Result<Self, ReadError> {
        Self::new(
            BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
            Some(*key),
        )
    }
}

struct Frame {
    kind: u8,
    seq: u64,
    offset: u64,
    payload: Vec<u8>,
}

impl<R: Read> RecordingReader<R> {
    pub fn new(mut input: R, key: Option<VerifyingKey>) -> Result<Self, ReadError> {
        let mut pre = [0u8; 10];
        if read_full(&mut input, &mut pre)? < 10 {
            return Err(ReadError::NoHeader);
        }
        if &pre[..8] != format::MAGIC {
            return Err(ReadError::BadMagic);
        }
        let version = u16::from_be_bytes([pre[8], pre[9]]);
        let hash = format::ChainHash::of_version(version).ok_or(ReadError::Version(version))?;
        let mut r = RecordingReader {
            input,
            offset: format::PREAMBLE_LEN,
            hash,
            seq: 0,
            prev: [0u8; 32],
            header: Header::placeholder(),
            header_hash: [0u8; 32],
            key,
            pending: VecDeque::new(),
            truncated: false,
            sealed_at: None,
            last_checkpoint_t: None,
            bytes_since_checkpoint: 0,
            frames: 0,
            events: 0,
            events_at_checkpoint: 0,
            data_key: None,
            landing_claim: None,
            landed_on: None,
        };
        let f = r.next_frame()?.ok_or(ReadError::NoHeader)?;
        if f.kind != FRAME_HEADER {
            return Err(ReadError::Corrupt {
                frame: 0,
                offset: f.offset,
                what: "first frame is not the header".into(),
            });
        }
        r.header = serde_json::from_slice(&f.payload).map_err(|e| ReadError::Corrupt {
            frame: 0,
            offset: f.offset,
            what: format!("header: {e}"),
        })?;
        r.header_hash = r.prev;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn header_hash(&self) -> [u8; 32] {
        self.header_hash
    }

    /// Unlock an encrypted recording with an auditor's identities (no-op if plain).
    pub fn unlock(&mut self, identities: &[Box<dyn age::Identity>]) -> Result<(), ReadError> {
        if let Some(enc) = &self.header.encryption {
            self.data_key = Some(crate::crypt::open_key(enc, identities)?);
        }
        Ok(())
    }

    /// True once the seal frame was read: the recording is whole and nothing follows.
    pub fn sealed(&self) -> bool {
        self.sealed_at.is_some()
    }

    /// Bytes of the file consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many of the events read so far a verified checkpoint (or the seal) covers.
    pub fn vouched_events(&self) -> u64 {
        self.events_at_checkpoint
    }

    /// The index entry this reader jumped to, if it did.
    pub fn landed_on(&self) -> Option<format::IndexEntry> {
        self.landed_on
    }

    /// True once the end of the file was reached without a seal.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn corrupt(&self, frame: u64, offset: u64, what: impl Into<String>) -> ReadError {
        ReadError::Corrupt {
            frame,
            offset,
            what: what.into(),
        }
    }

    /// The file ends `bytes` into a frame: a recording cut short (its last frame was being
    /// written), unless it was sealed, when nothing may follow the seal, whole or not.
    fn cut_short(&mut self, offset: u64, bytes: u64) -> Result<Option<Frame>, ReadError> {
        if self.sealed_at.is_some() {
            return Err(self.corrupt(self.seq, offset, format!("{bytes} bytes after the seal")));
        }
        self.truncated = true;
        self.bytes_since_checkpoint += bytes;
        Ok(None)
    }

    /// The next frame, checked against the chain; `None` at the end of the file.
    fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        let offset = self.offset;
        let mut head = [0u8; 13];
        match read_full(&mut self.input, &mut head)? {
            0 => return Ok(None),
            13 => {}
            n => return self.cut_short(offset, n as u64),
        }
        let kind = head[0];
        let seq = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[9..13].try_into().unwrap_or_default()) as usize;
        if seq != self.seq {
            let what = match seq.cmp(&self.seq) {
                std::cmp::Ordering::Less => "duplicated or reordered",
                _ => "a frame before it was dropped, or frames were reordered",
            };
            return Err(self.corrupt(self.seq, offset, format!("found frame number {seq}: {what}")));
        }
        if len > MAX_FRAME_PAYLOAD {
            return Err(self.corrupt(seq, offset, format!("frame length {len} exceeds the limit")));
        }
        let mut payload = vec![0u8; len];
        let mut hash = [0u8; 32];
        let got = read_full(&mut self.input, &mut payload)?;
        if got < len {
            return self.cut_short(offset, (13 + got) as u64);
        }
        let got = read_full(&mut self.input, &mut hash)?;
        if got < 32 {
            return self.cut_short(offset, (13 + len + got) as u64);
        }
        let expect = if kind == FRAME_EVENTS && self.header.encryption.is_none() {
            format::events_frame_hash(self.hash, &self.prev, seq, &payload)
                .ok_or_else(|| self.corrupt(seq, offset, "events frame does not parse into records"))?
        } else {
            format::frame_hash(self.hash, &self.prev, kind, seq, &payload)
        };
        if expect != hash {
            return Err(self.corrupt(seq, offset, "hash mismatch: the frame was altered"));
        }
        if self.sealed_at.is_some() {
            return Err(self.corrupt(seq, offset, "data after the seal"));
        }
        let prev_before = self.prev;
        self.prev = hash;
        self.seq += 1;
        self.offset += (format::FRAME_OVERHEAD + len) as u64;
        self.frames += 1;
        if matches!(kind, FRAME_CHECKPOINT | FRAME_SEAL) {
            self.check_signature(kind, seq, offset, &prev_before, &payload)?;
        } else {
            self.bytes_since_checkpoint += (format::FRAME_OVERHEAD + len) as u64;
        }
        Ok(Some(Frame {
            kind,
            seq,
            offset,
            payload,
        }))
    }

    fn check_signature(
        &mut self,
        kind: u8,
        seq: u64,
        offset: u64,
        prev: &[u8; 32],
        payload: &[u8],
    ) -> Result<(), ReadError> {
        if payload.len() != 72 {
            return Err(self.corrupt(seq, offset, "checkpoint has the wrong size"));
        }
        let t = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
        if let Some(key) = &self.key {
            let sig =
                Signature::from_slice(&payload[8..]).map_err(|_| ReadError::BadSignature { frame: seq, offset })?;
            let msg = format::checkpoint_message(kind == FRAME_SEAL, &self.header.session_id, seq, prev, t);
            key.verify_strict(&msg, &sig)
                .map_err(|_| ReadError::BadSignature { frame: seq, offset })?;
        }
        self.last_checkpoint_t = Some(t);
        self.bytes_since_checkpoint = 0;
        // Every event decoded so far came from a frame this checkpoint's chain covers.
        self.events_at_checkpoint = self.events;
        if kind == FRAME_SEAL {
            self.sealed_at = Some(t);
        }
        Ok(())
    }

    fn decode_events(&mut self, f: &Frame) -> Result<(), ReadError> {
        let plain;
        let mut b = match (&self.header.encryption, &self.data_key) {
            (None, _) => &f.payload[..],
            (Some(_), Some(k)) => {
                plain = k.open(&self.header.session_id, f.seq, &f.payload)?;
                &plain[..]
            }
            (Some(_), None) => return Err(ReadError::Encrypted),
        };
        while !b.is_empty() {
            if b.len() < RECORD_HEADER_LEN {
                return Err(self.corrupt(f.seq, f.offset, "truncated event record"));
            }
            let kind_byte = b[0];
            let t_micros = u64::from_be_bytes(b[1..9].try_into().unwrap_or_default());
            let channel = u32::from_be_bytes(b[9..13].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(b[13..17].try_into().unwrap_or_default()) as usize;
            if let Some(claim) = self.landing_claim.take() {
                if claim != t_micros {
                    return Err(self.corrupt(
                        f.seq,
                        f.offset,
                        format!(
                            "the seek index does not match the recording: its entry puts this frame's \
                             first event at {claim} us, the frame has it at {t_micros} us"
                        ),
                    ));
                }
            }
            let Some(data) = b.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
                return Err(self.corrupt(f.seq, f.offset, "event record longer than its frame"));
            };
            let event = match kind_byte {
                kind::INPUT | kind::OUTPUT | kind::STDERR => Event::Data {
                    t_micros,
                    channel,
                    direction: match kind_byte {
                        kind::INPUT => DataDirection::Input,
                        kind::OUTPUT => DataDirection::Output,
                        _ => DataDirection::Stderr,
                    },
                    data: data.to_vec(),
                },
                kind::META => {
                    let meta: Meta = serde_json::from_slice(data)
                        .map_err(|e| self.corrupt(f.seq, f.offset, format!("event: {e}")))?;
                    Event::Meta {
                        t_micros,
                        channel,
                        meta,
                    }
                }
                other => return Err(self.corrupt(f.seq, f.offset, format!("unknown event kind {other}"))),
            };
            self.pending.push_back(event);
            self.events += 1;
            b = &b[RECORD_HEADER_LEN + len..];
        }
        Ok(())
    }

    /// The next event, `Ok(None)` at the end of the file.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let Some(f) = self.next_frame()? else { return Ok(None) };
            match f.kind {
                FRAME_EVENTS => self.decode_events(&f)?,
                FRAME_CHECKPOINT | FRAME_SEAL => {}
                other => return Err(self.corrupt(f.seq, f.offset, format!("unexpected frame kind {other}"))),
            }
        }
    }

    /// Every remaining event.
    pub fn events(mut self) -> Result<(Header, Vec<Event>, bool), ReadError> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event()? {
            events.push(e);
        }
        let truncated = self.sealed_at.is_none();
        Ok((self.header, events, truncated))
    }

    /// Every remaining event, and whether the recording is whole, from one read: what
    /// `show` needs, so that the events it summarises are the ones that were verified.
    pub fn events_and_verdict(mut self) -> Result<(Verified, Vec<Event>), ReadError> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event()? {
            events.push(e);
        }
        Ok((self.verdict()?, events))
    }

    /// Read to the end and say whether the recording is whole. An encrypted recording is
    /// verified without its key (the chain and signatures cover the ciphertext); its
    /// events are only counted when it was unlocked.
    pub fn verify(mut self) -> Result<Verified, ReadError> {
        let decode = self.header.encryption.is_none() || self.data_key.is_some();
        while let Some(f) = self.next_frame()? {
            match f.kind {
                FRAME_EVENTS if decode => {
                    self.decode_events(&f)?;
                    self.pending.clear();
                }
                FRAME_EVENTS | FRAME_CHECKPOINT | FRAME_SEAL => {}
                other => return Err(self.corrupt(f.seq, f.offset, format!("unexpected frame kind {other}"))),
            }
        }
        self.verdict()
    }

    /// Whole or truncated, once every frame was read.
    fn verdict(self) -> Result<Verified, ReadError> {
        let completeness = match (self.sealed_at, self.last_checkpoint_t) {
            (Some(t), _) => Completeness::Complete { sealed_at_micros: t },
            (None, Some(t)) => Completeness::Truncated {
                authenticated_until_micros: t,
                unauthenticated_bytes: self.bytes_since_checkpoint,
            },
            (None, None) => {
                return Err(self.corrupt(
                    self.seq,
                    self.offset,
                    "no checkpoint: nothing in this recording is authenticated",
                ))
            }
        };
        Ok(Verified {
            header: self.header,
            header_hash: self.header_hash,
            completeness,
            frames: self.frames + 1,
            events: self.events,
            authenticated_events: self.events_at_checkpoint,
        })
    }
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
