//! This node's witness of the chain: the last checkpoint up to which it walked and
//! verified the log itself, kept in `data_dir/audit_witness`, outside the database.
//!
//! Checkpoints in the database only prove what the database still holds. A writer of
//! the database alone could delete the checkpoints from some event on, rewrite the chain
//! from there (an event changed or gone, every later hash recomputed) and move the
//! head: every checkpoint left would still match, and the gateway would sign the
//! rewritten head. The witness is what the database cannot rewrite: a node signs a new
//! head only after walking the chain from its witness to that head, and the walk fails
//! when the witnessed event no longer has the witnessed hash. `hersectl audit verify`
//! and the retention ledger check the chain against it too.
//!
//! The file holds one line, `herse-audit-witness-v1 <seq> <hash> <signed_at> <signature>`:
//! a checkpoint as stored, signature included, so that a file written without the audit
//! key does not verify. It is replaced atomically (written aside, synced, renamed).
//! It does not defend against someone who can also write `data_dir` (who could put an
//! older genuine witness back); the data directory holds the sealed keys and is trusted
//! as the gateway itself is.
//!
//! Each node guards with its own witness: a node stopped while others signed trusts, on
//! its return, the chain it finds after its witness. An auditor can check the chain
//! against copies of every node's witness (`hersectl audit verify --witness FILE`, the
//! copies sent as text: the gateway reads no file for a caller).
//!
//! After restoring the database from a backup, every node's witness is ahead of the
//! chain and the nodes stop signing (an `audit.checkpoint_refused` alert). When the
//! restore is the explanation, stop each node and move `audit_witness` and `audit_seen`
//! (the last event its signer walked, [`Witness::read_seen`]) aside (kept, they name
//! what the node verified): its next checkpoint then walks and verifies the whole chain
//! from the first event. After a rewrite, that would have the rewrite signed.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::AuditCheckpoint;

/// The file's name in the data directory.
pub const FILE: &str = "audit_witness";

/// Beside it: the last event this node's signer walked to, signed or not (see
/// [`Witness::read_seen`]).
pub const SEEN_FILE: &str = "audit_seen";

const SEEN_MAGIC: &str = "herse-audit-seen-v1";

const MAGIC: &str = "herse-audit-witness-v1";

/// The longest file read: one line of bounded fields.
const MAX_LEN: u64 = 512;

/// Where this node keeps its witness.
#[derive(Debug, Clone)]
pub struct Witness {
    path: PathBuf,
}

/// What the witness file says.
#[derive(Debug, Clone)]
pub enum Witnessed {
    /// No file: this node never signed (or an operator removed it after a restore).
    Nothing,
    /// The last checkpoint this node verified the chain up to. Its signature is not
    /// checked here: the verifier does, with the key it verifies the log with.
    Checkpoint(AuditCheckpoint),
    /// The file exists but cannot be read or parsed: a verifier must report it.
    Unusable(String),
}

/// Whose witness a verification checks the chain against.
#[derive(Debug, Clone)]
pub enum WitnessOf {
    /// This node's own, in its data directory.
    ThisNode,
    /// A copy handed to the verification (`hersectl audit verify --witness FILE`),
    /// named as the caller named it.
    Copy(String),
}

impl WitnessOf {
    /// The witness, as problems name it.
    pub fn name(&self) -> String {
        match self {
            WitnessOf::ThisNode => "this node's witness of the chain".into(),
            WitnessOf::Copy(f) => format!("the witness in {f}"),
        }
    }

    /// Who verified the chain up to the point it names.
    pub fn verifier(&self) -> String {
        match self {
            WitnessOf::ThisNode => "this node".into(),
            WitnessOf::Copy(f) => format!("the node whose witness is in {f}"),
        }
    }
}

/// The longest name a copy keeps (it is the caller's, echoed back to the caller).
const MAX_NAME: usize = 200;

/// A copy of a witness file, as text: what it says, and the name to report it under
/// (control characters dropped, cut to a bounded length).
pub fn copy_from_text(name: &str, text: &str) -> (String, Witnessed) {
    let mut clean: String = name.chars().filter(|c| !c.is_control()).take(MAX_NAME).collect();
    if clean.is_empty() {
        clean = "(unnamed)".into();
    }
    let said = if text.len() as u64 > MAX_LEN {
        Witnessed::Unusable(format!("{clean} is longer than a witness line"))
    } else {
        said(text, &clean)
    };
    (clean, said)
}

/// What a witness line, read from `name`, says.
fn said(text: &str, name: &str) -> Witnessed {
    match parse(text) {
        Some(c) => Witnessed::Checkpoint(c),
        None => Witnessed::Unusable(format!("{name} is not a witness line")),
    }
}

/// A witness (or `audit_seen`) file as text, at most [`MAX_LEN`] + 1 bytes of it (more
/// cannot parse); `None` when there is none. `hersectl audit verify --witness` reads
/// copies with it too.
pub fn read_bounded(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(e)),
    };
    let mut text = String::new();
    file.take(MAX_LEN + 1).read_to_string(&mut text).map_err(cannot)?;
    Ok(Some(text))
}

impl Witness {
    pub fn in_dir(data_dir: &Path) -> Witness {
        Witness {
            path: data_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Witnessed {
        match read_bounded(&self.path) {
            Ok(None) => Witnessed::Nothing,
            Ok(Some(text)) => said(&text, &self.path.display().to_string()),
            Err(e) => Witnessed::Unusable(e),
        }
    }

    /// Replace the witness with `c` (a checkpoint whose chain this node walked).
    pub fn record(&self, c: &AuditCheckpoint) -> std::io::Result<()> {
        self.replace(FILE, &line(c))
    }

    fn seen_path(&self) -> PathBuf {
        self.path.with_file_name(SEEN_FILE)
    }

    /// The last event this node's signer walked to (its seq and hash), kept across
    /// restarts: while signing is refused, the events walked are on no checkpoint and in
    /// no witness, and this is what shows that they were rewritten before the refusal's
    /// cause was undone. `Ok(None)` when there is no file.
    pub fn read_seen(&self) -> Result<Option<super::Anchor>, String> {
        let path = self.seen_path();
        let Some(text) = read_bounded(&path)? else {
            return Ok(None);
        };
        let bad = || {
            format!(
                "{} is not a line of the form `{SEEN_MAGIC} <seq> <hash>`",
                path.display()
            )
        };
        let body = text.strip_suffix('\n').ok_or_else(bad)?;
        let mut f = body.split(' ');
        match (f.next(), f.next().and_then(decimal), f.next(), f.next()) {
            (Some(SEEN_MAGIC), Some(seq), Some(hash), None) if is_hex(hash, 64) => {
                Ok((seq > 0).then(|| super::Anchor {
                    seq,
                    hash: hash.to_owned(),
                }))
            }
            _ => Err(bad()),
        }
    }

    /// Keep `a` as the last event walked.
    pub fn record_seen(&self, a: &super::Anchor) -> std::io::Result<()> {
        self.replace(SEEN_FILE, &format!("{SEEN_MAGIC} {} {}\n", a.seq, a.hash))
    }

    /// Replace `name` in the witness's directory with `text`: written aside, synced,
    /// renamed, the directory synced; mode 0600.
    fn replace(&self, name: &str, text: &str) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let target = dir.join(name);
        let aside = dir.join(format!(".{name}.new"));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&aside)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&aside, &target)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

fn line(c: &AuditCheckpoint) -> String {
    format!("{MAGIC} {} {} {} {}\n", c.seq, c.hash, c.signed_at, c.signature)
}

/// A non-negative decimal `i64`, digits only.
fn decimal(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse::<i64>().ok())
        .flatten()
}

/// `len` lowercase hex digits.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse(text: &str) -> Option<AuditCheckpoint> {
    let body = text.strip_suffix('\n')?;
    let mut f = body.split(' ');
    let (magic, seq, hash, signed_at, signature) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || magic != MAGIC || !is_hex(hash, 64) || !is_hex(signature, 128) {
        return None;
    }
    let seq = decimal(seq).filter(|s| *s > 0)?;
    Some(AuditCheckpoint {
        seq,
        hash: hash.to_owned(),
        signed_at: decimal(signed_at)?,
        node: String::new(),
        signature: signature.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> AuditCheckpoint {
        AuditCheckpoint {
            seq: 42,
            hash: "ab".repeat(32),
            signed_at: 1_700_000_000_000_000,
            node: "n1".into(),
            signature: "cd".repeat(64),
        }
    }

    #[test]
    fn a_witness_reads_back_and_bad_files_are_unusable() {
        let dir = crate::store::test_dir("witness");
        let w = Witness::in_dir(&dir);
        assert!(matches!(w.read(), Witnessed::Nothing));
        w.record(&checkpoint()).unwrap();
        let Witnessed::Checkpoint(c) = w.read() else {
            panic!("{:?}", w.read())
        };
        assert_eq!(
            (c.seq, c.hash, c.signed_at, c.signature),
            (42, "ab".repeat(32), 1_700_000_000_000_000, "cd".repeat(64))
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(w.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let good = line(&checkpoint());
        for bad in [
            String::new(),
            good.trim_end().to_owned(),
            good.replace(MAGIC, "herse-audit-witness-v2"),
            good.replace(" 42 ", " 0 "),
            good.replace(" 42 ", " -42 "),
            good.replace(" 42 ", " 99999999999999999999 "),
            good.replace(&"ab".repeat(32), &"AB".repeat(32)),
            good.replace(&"cd".repeat(64), &"cd".repeat(63)),
            good.replace('\n', " extra\n"),
            "x".repeat(MAX_LEN as usize * 2),
        ] {
            std::fs::write(w.path(), &bad).unwrap();
            assert!(matches!(w.read(), Witnessed::Unusable(_)), "{bad:?}");
        }
    }
}
