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
use crate::recordings::{failed, not_its_session, open_recording};

/// A recording that verified whole and is the session's own.
pub struct Checked<'a> {
    path: &'a Path,
    key: &'a VerifyingKey,
    /// What the command does with it, for messages ("shown", "exported").
    done: &'static str,
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
        let verified = open_recording(path, key)
            .and_then(|r| r.verify())
            .map_err(|e| does_not_verify(path, done, &e))?;
        let c = Checked {
            path,
            key,
            done,
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
        let mut r = open_recording(self.path, self.key).map_err(|e| self.does_not_verify(&e))?;
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
