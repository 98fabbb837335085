//! A recording's events, one at a time, only once the whole file verified: what `show`
//! and `export` read, in memory that does not grow with the recording.
//!
//! The recording is read more than once instead of held. The first read verifies it to
//! its end and learns how many events a checkpoint vouches for; each later read hands
//! the events over one at a time, marked vouched or not, and then checks that the file
//! still verifies as it did (the same signed header, at least as many vouched events).
//! A file changed between reads fails the command.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use herse::store::SessionRow;
use session_recordings::{Event, Verified};

use crate::commands::Failure;
use crate::output;
use crate::recordings::{failed, not_its_session, open_recording, reopen_recording};

/// A recording that verified whole and is the session's own.
pub struct Checked<'a> {
    path: &'a Path,
    key: &'a VerifyingKey,
    /// What the command does with it, for messages ("shown", "exported").
    done: &'static str,
    /// Where the reads start: the index entry the first read landed on (`None`: the
    /// start), and the file offset there, where each later read must land too.
    landed_on: Option<session_recordings::format::IndexEntry>,
    start: u64,
    pub verified: Verified,
}

impl<'a> Checked<'a> {
    /// The first read: the recording at `path` must verify with `key`, and its signed
    /// header must be `row`'s session.
    pub fn first_read(
        path: &'a Path,
        key: &'a VerifyingKey,
        row: &SessionRow,
        done: &'static str,
    ) -> Result<Checked<'a>, Failure> {
        Self::first_read_at(path, key, row, done, 0)
    }

    /// [`Self::first_read`] from `at_micros` on, through the seek index (then the events
    /// before the landing point are not read, and the header is not tied to the chain:
    /// the session check holds the header to the row all the same). An index that does
    /// not lead into the recording where it says is not trusted: the recording is then
    /// read from the start.
    pub fn first_read_at(
        path: &'a Path,
        key: &'a VerifyingKey,
        row: &SessionRow,
        done: &'static str,
        at_micros: u64,
    ) -> Result<Checked<'a>, Failure> {
        let read = |at: u64| {
            let r = open_recording(path, key, at)?;
            let (start, landed_on) = (r.offset(), r.landed_on());
            Ok::<_, session_recordings::ReadError>((r.verify()?, start, landed_on))
        };
        let (verified, start, landed_on) = match read(at_micros) {
            Ok(first) => first,
            Err(e) if at_micros > 0 => {
                eprintln!(
                    "hersectl: reading {} from the seek point failed ({}); reading it from the start",
                    path.display(),
                    output::clean(&e.to_string())
                );
                read(0).map_err(|e| does_not_verify(path, done, &e))?
            }
            Err(e) => return Err(does_not_verify(path, done, &e)),
        };
        let c = Checked {
            path,
            key,
            done,
            landed_on,
            start,
            verified,
        };
        if let Some(what) = not_its_session(&c.verified.header, row) {
            return Err(failed(format!(
                "recording {} is not the session's recording (its {what} differs from the session's), \
                 so it is not {done} (see `hersectl recordings verify`)",
                path.display()
            )));
        }
        Ok(c)
    }

    /// Events a checkpoint or the seal vouches for, as of the first read.
    pub fn vouched(&self) -> u64 {
        self.verified.authenticated_events
    }

    /// Read the recording again: `each` gets every event in order with whether the
    /// first read found it vouched for (`only_vouched` stops at the last of those).
    /// Then the rest of the file must verify as it did the first time.
    pub fn read_again(
        &self,
        only_vouched: bool,
        mut each: impl FnMut(&Event, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let vouched = self.vouched();
        let mut r = reopen_recording(self.path, self.key, self.landed_on).map_err(|e| self.does_not_verify(&e))?;
        if r.offset() != self.start {
            return Err(self.does_not_verify(&"it changed while it was being read"));
        }
        let mut n = 0u64;
        while !(only_vouched && n == vouched) {
            match r.next_event().map_err(|e| self.does_not_verify(&e))? {
                Some(e) => each(&e, n < vouched)?,
                None if n < vouched => {
                    return Err(self.does_not_verify(&"it ends before the events read the first time"));
                }
                None => break,
            }
            n += 1;
        }
        let again = r.verify().map_err(|e| self.does_not_verify(&e))?;
        if again.header_hash != self.verified.header_hash || again.authenticated_events < vouched {
            return Err(self.does_not_verify(&"the file changed while it was being read"));
        }
        Ok(())
    }

    /// When the first read started at a seek point: the time its index entry claims.
    pub fn landing_time(&self) -> Option<u64> {
        self.landed_on.map(|e| e.first_t)
    }

    /// Read from the start, handing events to `each` until it says stop or `limit` bytes
    /// of the file were read, then on until a checkpoint vouches for the last one handed
    /// over: what a read from a seek point needs to know of what came before it (a
    /// terminal requested earlier), in no more than that and one checkpoint interval.
    pub fn scan_from_start(&self, limit: u64, mut each: impl FnMut(&Event) -> bool) -> Result<(), Failure> {
        let mut r = reopen_recording(self.path, self.key, None).map_err(|e| self.does_not_verify(&e))?;
        if r.header_hash() != self.verified.header_hash {
            return Err(self.does_not_verify(&"it changed while it was being read"));
        }
        let mut handed = 0u64;
        while r.offset() < limit {
            let Some(e) = r.next_event().map_err(|e| self.does_not_verify(&e))? else {
                break;
            };
            handed += 1;
            if !each(&e) {
                break;
            }
        }
        // (The checkpoint after the last events is read on the way to the end.)
        while r.vouched_events() < handed {
            if r.next_event().map_err(|e| self.does_not_verify(&e))?.is_none() {
                break;
            }
        }
        if r.vouched_events() < handed {
            return Err(self.does_not_verify(&"no checkpoint vouches for its first events"));
        }
        Ok(())
    }

    fn does_not_verify(&self, e: &dyn std::fmt::Display) -> Failure {
        does_not_verify(self.path, self.done, e)
    }
}

fn does_not_verify(path: &Path, done: &str, e: &dyn std::fmt::Display) -> Failure {
    failed(format!(
        "recording {} does not verify, so it is not {done}: {e} (see `hersectl recordings verify`)",
        path.display()
    ))
}
