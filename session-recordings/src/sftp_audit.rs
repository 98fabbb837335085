//! Follows an SFTP conversation and turns it into audit events: each file opened with
//! its flags, bytes read and written, the SHA-256 of what was transferred, and every
//! changing operation (remove, rename, mkdir, rmdir, setstat and fsetstat with the
//! attributes they set, symlink, hardlink, copy-data) with its outcome.
//!
//! Memory is bounded: at most [`MAX_OUTSTANDING`] requests awaiting an answer,
//! [`MAX_HANDLES`] open handles, and [`MAX_HELD`] bytes of paths and handles kept for
//! them; beyond that the conversation is refused. (OpenSSH's sftp keeps at most 64
//! requests in flight, with short paths and 4-byte handles.)

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::event::Meta;
use crate::name::Name;
use crate::sftp::{Attrs, ExtArgs, Request, Response, SftpError, FXF_CREAT, FX_OK};

pub const MAX_OUTSTANDING: usize = 4096;
pub const MAX_HANDLES: usize = 1024;
pub const MAX_HELD: usize = 4 * 1024 * 1024;

#[derive(Debug)]
enum Pending {
    Open {
        path: Name,
        pflags: u32,
        detail: Option<String>,
    },
    Opendir {
        path: Name,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
        offset: u64,
    },
    Change {
        op: &'static str,
        path: Name,
        target: Option<Name>,
        detail: Option<String>,
        /// sftp-server goes on after a step fails and answers with the last failure, so
        /// an error does not mean nothing changed (a chmod done, then a chown refused;
        /// bytes copied, then EOF).
        partial: bool,
    },
    Other,
}

impl Pending {
    /// Bytes this entry keeps alive, for [`MAX_HELD`].
    fn held(&self) -> usize {
        match self {
            Pending::Open { path, detail, .. } => path.len() + detail.as_ref().map_or(0, String::len),
            Pending::Opendir { path } => path.len(),
            Pending::Close { handle } | Pending::Read { handle, .. } => handle.len(),
            Pending::Change {
                path, target, detail, ..
            } => path.len() + target.as_ref().map_or(0, Name::len) + detail.as_ref().map_or(0, String::len),
            Pending::Other => 0,
        }
    }
}

struct Hashing {
    hasher: Sha256,
    next: u64,
    contiguous: bool,
}

impl Hashing {
    fn new() -> Self {
        Hashing {
            hasher: Sha256::new(),
            next: 0,
            contiguous: true,
        }
    }
    fn feed(&mut self, offset: u64, data: &[u8]) {
        if self.contiguous && offset == self.next {
            self.hasher.update(data);
            self.next += data.len() as u64;
        } else {
            self.contiguous = false;
        }
    }
    fn finish(self) -> Option<String> {
        (self.contiguous && self.next > 0).then(|| hex(&self.hasher.finalize()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct OpenFile {
    path: Name,
    pflags: u32,
    read: u64,
    written: u64,
    read_hash: Hashing,
    write_hash: Hashing,
}

impl OpenFile {
    /// What was transferred through this handle.
    fn summary(self) -> Meta {
        let (path, path_hex) = self.path.recorded();
        Meta::SftpFile {
            path,
            path_hex,
            flags: self.pflags,
            bytes_read: self.read,
            bytes_written: self.written,
            sha256_read: self.read_hash.finish(),
            sha256_written: self.write_hash.finish(),
        }
    }
}

/// What an open handle names.
enum Named<'a> {
    File(&'a mut OpenFile),
    /// A directory, by the path its OPENDIR named. OpenSSH's sftp-server answers
    /// FAILURE to a write, FSETSTAT or copy-data through one, but a target may do
    /// otherwise: such a request is forwarded and recorded against the directory.
    Dir(&'a Name),
}

impl Named<'_> {
    fn path(&self) -> &Name {
        match self {
            Named::File(f) => &f.path,
            Named::Dir(p) => p,
        }
    }
}

/// Tracks one SFTP channel.
#[derive(Default)]
pub struct SftpAudit {
    pending: HashMap<u32, Pending>,
    files: HashMap<Vec<u8>, OpenFile>,
    /// Directory handles an OPENDIR was answered with, and the path it named.
    dirs: HashMap<Vec<u8>, Name>,
    /// Handles with a CLOSE awaiting its answer: they name no file any more (the target
    /// may give the same handle to the next OPEN), so nothing may be sent through them.
    closing: std::collections::HashSet<Vec<u8>>,
    /// Bytes of paths and handles held by `pending`, `files` and `dirs`.
    held: usize,
}

impl std::fmt::Debug for SftpAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpAudit")
            .field("pending", &self.pending.len())
            .field("files", &self.files.len())
            .field("dirs", &self.dirs.len())
            .field("held", &self.held)
            .finish()
    }
}

impl SftpAudit {
    /// A request the gateway forwards to the target.
    pub fn request(&mut self, req: &Request) -> Result<(), SftpError> {
        let Some(id) = req.id() else { return Ok(()) };
        if self.pending.len() >= MAX_OUTSTANDING {
            return Err(SftpError::Malformed("too many outstanding SFTP requests"));
        }
        // The answer could not be told apart from the earlier request's, and the earlier
        // one's audit event would be lost.
        if self.pending.contains_key(&id) {
            return Err(SftpError::Malformed(
                "request id reused while still awaiting its answer",
            ));
        }
        let p = match req {
            Request::Open {
                path, pflags, attrs, ..
            } => Pending::Open {
                path: path.clone(),
                pflags: *pflags,
                // Attributes apply only to a file the OPEN creates.
                detail: (pflags & FXF_CREAT != 0).then(|| requested_mode(attrs)).flatten(),
            },
            Request::Opendir { path, .. } => Pending::Opendir { path: path.clone() },
            Request::Close { handle, .. } => {
                if !self.closing.insert(handle.clone()) {
                    return Err(SftpError::Malformed("SFTP handle closed twice"));
                }
                Pending::Close { handle: handle.clone() }
            }
            Request::Read { handle, offset, .. } => {
                if self.closing.contains(handle) {
                    return Err(SftpError::Malformed("read from an SFTP handle being closed"));
                }
                Pending::Read {
                    handle: handle.clone(),
                    offset: *offset,
                }
            }
            // Counted now, to the file the handle names. A handle no OPEN answered with
            // (guessed ahead of the answer), or one being closed (whose number the target
            // may give the next OPEN, pipelined behind it), would have the bytes counted
            // to the wrong file or to none, and the recording's file summaries lie. No
            // client sends either.
            Request::Write {
                handle, offset, data, ..
            } => match self.named(handle, "write to an SFTP handle that is not open")? {
                Named::File(f) => {
                    f.written += data.len() as u64;
                    f.write_hash.feed(*offset, data);
                    Pending::Other
                }
                Named::Dir(path) => Pending::Change {
                    op: "write",
                    path: path.clone(),
                    target: None,
                    detail: Some(format!("{} bytes at offset {offset}", data.len())),
                    partial: false,
                },
            },
            Request::Remove { path, .. } => change("remove", path, None),
            Request::Mkdir { path, attrs, .. } => Pending::Change {
                op: "mkdir",
                path: path.clone(),
                target: None,
                detail: requested_mode(attrs),
                partial: false,
            },
            Request::Rmdir { path, .. } => change("rmdir", path, None),
            Request::Setstat { path, attrs, .. } => setting("setstat", path, attrs),
            // Named by the file or directory its handle was opened on, under the rule
            // WRITE follows.
            Request::Fsetstat { handle, attrs, .. } => {
                let named = self.named(handle, "attributes set through an SFTP handle that is not open")?;
                setting("fsetstat", named.path(), attrs)
            }
            Request::Rename { from, to, .. } => change("rename", from, Some(to)),
            Request::Symlink { link, target, .. } => change("symlink", link, Some(target)),
            Request::Extended { name, args, .. } if req.is_write() => match (name.as_str(), args) {
                ("posix-rename@openssh.com", ExtArgs::Paths(p)) => {
                    change("rename", p.first().unwrap_or(&Name::default()), p.get(1))
                }
                ("hardlink@openssh.com", ExtArgs::Paths(p)) => {
                    change("hardlink", p.first().unwrap_or(&Name::default()), p.get(1))
                }
                (_, ExtArgs::Setstat { path, attrs }) => setting("lsetstat", path, attrs),
                // fsync only flushes; a handle the gateway does not know is the target's
                // to refuse.
                (_, ExtArgs::Handle(handle)) => {
                    let path = match self.files.get(handle) {
                        Some(f) => f.path.clone(),
                        None => self.dirs.get(handle).cloned().unwrap_or_default(),
                    };
                    change("fsync", &path, None)
                }
                (
                    _,
                    ExtArgs::CopyData {
                        from,
                        from_offset,
                        length,
                        to,
                        to_offset,
                    },
                ) => {
                    let source = self
                        .named(from, "copy from an SFTP handle that is not open")?
                        .path()
                        .clone();
                    let mut dest = self.named(to, "copy to an SFTP handle that is not open")?;
                    // Bytes the gateway never sees land in the file: no hash can
                    // vouch for what was written through this handle any more.
                    if let Named::File(f) = &mut dest {
                        f.write_hash.contiguous = false;
                    }
                    let range = match length {
                        0 => format!("from offset {from_offset} to the end"),
                        n => format!("{n} bytes from offset {from_offset}"),
                    };
                    Pending::Change {
                        op: "copy-data",
                        path: source,
                        target: Some(dest.path().clone()),
                        detail: Some(format!("{range}, to offset {to_offset}")),
                        partial: true,
                    }
                }
                _ => change("extended", &Name::from(name.as_str()), None),
            },
            _ => Pending::Other,
        };
        self.hold(p.held())?;
        self.pending.insert(id, p);
        Ok(())
    }

    /// The file an OPEN, or the directory an OPENDIR, answered `handle` with. A handle
    /// not (or no longer) open is refused for the same reason as a WRITE through it: the
    /// operation would be recorded against the wrong file, or none.
    fn named(&mut self, handle: &[u8], refusal: &'static str) -> Result<Named<'_>, SftpError> {
        if self.closing.contains(handle) {
            return Err(SftpError::Malformed(refusal));
        }
        if let Some(f) = self.files.get_mut(handle) {
            return Ok(Named::File(f));
        }
        match self.dirs.get(handle) {
            Some(p) => Ok(Named::Dir(p)),
            None => Err(SftpError::Malformed(refusal)),
        }
    }

    /// `handle` names something new: whatever it named before (a target handing out a
    /// handle still open) is forgotten, a file's summary written now rather than lost.
    fn forget(&mut self, handle: &[u8], out: &mut Vec<Meta>) {
        if let Some(earlier) = self.files.remove(handle) {
            self.release(handle.len() + earlier.path.len());
            out.push(earlier.summary());
        }
        if let Some(path) = self.dirs.remove(handle) {
            self.release(handle.len() + path.len());
        }
    }

    fn hold(&mut self, bytes: usize) -> Result<(), SftpError> {
        if self.held + bytes > MAX_HELD {
            return Err(SftpError::Malformed(
                "SFTP requests awaiting answers hold too many bytes",
            ));
        }
        self.held += bytes;
        Ok(())
    }

    fn release(&mut self, bytes: usize) {
        debug_assert!(self.held >= bytes, "held {} < {bytes}", self.held);
        self.held = self.held.saturating_sub(bytes);
    }

    /// A response from the target; returns the audit events it completes.
    pub fn response(&mut self, resp: &Response) -> Result<Vec<Meta>, SftpError> {
        let mut out = Vec::new();
        let (id, status) = match resp {
            // Requests are judged by version 3's layout (a later version's OPEN, for
            // one, carries its access rights elsewhere).
            Response::Version { version } if *version != 3 => return Err(SftpError::Version(*version)),
            Response::Version { .. } => return Ok(out),
            Response::Status { id, code, message } => (*id, Some((*code, message))),
            Response::Handle { id, .. }
            | Response::Data { id, .. }
            | Response::Name { id }
            | Response::Attrs { id }
            | Response::ExtendedReply { id } => (*id, None),
        };
        let Some(p) = self.pending.remove(&id) else {
            return Ok(out);
        };
        self.release(p.held());
        let outcome = |s: Option<(u32, &String)>| match s {
            None | Some((FX_OK, _)) => "ok".to_owned(),
            Some((code, msg)) => format!("error {code}: {msg}"),
        };
        match (p, resp) {
            (Pending::Open { path, pflags, detail }, Response::Handle { handle, .. }) => {
                self.forget(handle, &mut out);
                if self.files.len() + self.dirs.len() >= MAX_HANDLES {
                    return Err(SftpError::Malformed("too many open SFTP handles"));
                }
                self.hold(handle.len() + path.len())?;
                out.push(op_event("open", &path, None, Some(pflags), detail, "ok".into()));
                let file = OpenFile {
                    path,
                    pflags,
                    read: 0,
                    written: 0,
                    read_hash: Hashing::new(),
                    write_hash: Hashing::new(),
                };
                self.files.insert(handle.clone(), file);
            }
            (Pending::Opendir { path }, Response::Handle { handle, .. }) => {
                self.forget(handle, &mut out);
                if self.files.len() + self.dirs.len() >= MAX_HANDLES {
                    return Err(SftpError::Malformed("too many open SFTP handles"));
                }
                self.hold(handle.len() + path.len())?;
                self.dirs.insert(handle.clone(), path);
            }
            (Pending::Open { path, pflags, detail }, _) => {
                out.push(op_event("open", &path, None, Some(pflags), detail, outcome(status)));
            }
            (Pending::Read { handle, offset }, Response::Data { data, .. }) => {
                if let Some(f) = self.files.get_mut(&handle) {
                    f.read += data.len() as u64;
                    f.read_hash.feed(offset, data);
                }
            }
            (Pending::Close { handle }, _) => {
                self.closing.remove(&handle);
                self.forget(&handle, &mut out);
            }
            (
                Pending::Change {
                    op,
                    path,
                    target,
                    detail,
                    partial,
                },
                _,
            ) => {
                let mut outcome = outcome(status);
                if partial && outcome != "ok" {
                    outcome.push_str(" (steps before the failure may be done)");
                }
                out.push(op_event(op, &path, target.as_ref(), None, detail, outcome));
            }
            _ => {}
        }
        Ok(out)
    }

    /// Files still open when the channel ends, as summaries.
    pub fn finish(&mut self) -> Vec<Meta> {
        self.held = self.pending.values().map(Pending::held).sum();
        self.dirs.clear();
        self.files.drain().map(|(_, f)| f.summary()).collect()
    }
}

/// The event of an operation the target answered, its paths exact (see [`Name`]).
fn op_event(
    op: &str,
    path: &Name,
    target: Option<&Name>,
    flags: Option<u32>,
    detail: Option<String>,
    outcome: String,
) -> Meta {
    let (path, path_hex) = path.recorded();
    let (target, target_hex) = target.map(Name::recorded).unzip();
    Meta::SftpOp {
        op: op.into(),
        path,
        path_hex,
        target,
        target_hex: target_hex.flatten(),
        flags,
        detail,
        outcome,
    }
}

fn change(op: &'static str, path: &Name, target: Option<&Name>) -> Pending {
    Pending::Change {
        op,
        path: path.clone(),
        target: target.cloned(),
        detail: None,
        partial: false,
    }
}

/// A change that sets `attrs` on `path`, each attribute in turn.
fn setting(op: &'static str, path: &Name, attrs: &Attrs) -> Pending {
    let steps = [
        attrs.size.is_some(),
        attrs.owner.is_some(),
        attrs.permissions.is_some(),
        attrs.times.is_some(),
    ];
    Pending::Change {
        op,
        path: path.clone(),
        target: None,
        detail: (!attrs.is_empty()).then(|| attrs.to_string()),
        partial: steps.iter().filter(|s| **s).count() > 1,
    }
}

/// A creating OPEN and MKDIR take only the mode from their attributes.
fn requested_mode(attrs: &Attrs) -> Option<String> {
    attrs.permissions.map(|m| {
        Attrs {
            permissions: Some(m),
            ..Attrs::default()
        }
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sftp::{FXF_CREAT, FXF_READ, FXF_TRUNC, FXF_WRITE};

    #[test]
    fn upload_and_download_are_summarised_with_hashes() {
        let mut a = SftpAudit::default();
        let h = b"h1".to_vec();
        a.request(&Request::Open {
            id: 1,
            path: "/tmp/f".into(),
            pflags: FXF_WRITE | FXF_CREAT | FXF_TRUNC,
            attrs: Attrs::default(),
        })
        .unwrap();
        let ev = a
            .response(&Response::Handle {
                id: 1,
                handle: h.clone(),
            })
            .unwrap();
        assert!(matches!(&ev[0], Meta::SftpOp { op, path, .. } if op == "open" && path == "/tmp/f"));
        a.request(&Request::Write {
            id: 2,
            handle: h.clone(),
            offset: 0,
            data: b"hello ".to_vec(),
        })
        .unwrap();
        a.request(&Request::Write {
            id: 3,
            handle: h.clone(),
            offset: 6,
            data: b"world".to_vec(),
        })
        .unwrap();
        a.response(&Response::Status {
            id: 2,
            code: 0,
            message: String::new(),
        })
        .unwrap();
        a.response(&Response::Status {
            id: 3,
            code: 0,
            message: String::new(),
        })
        .unwrap();
        a.request(&Request::Close {
            id: 4,
            handle: h.clone(),
        })
        .unwrap();
        let ev = a
            .response(&Response::Status {
                id: 4,
                code: 0,
                message: String::new(),
            })
            .unwrap();
        let want = hex(&Sha256::digest(b"hello world"));
        assert_eq!(
            ev,
            vec![Meta::SftpFile {
                path: "/tmp/f".into(),
                path_hex: None,
                flags: FXF_WRITE | FXF_CREAT | FXF_TRUNC,
                bytes_read: 0,
                bytes_written: 11,
                sha256_read: None,
                sha256_written: Some(want)
            }]
        );

        a.request(&Request::Open {
            id: 5,
            path: "/etc/motd".into(),
            pflags: FXF_READ,
            attrs: Attrs::default(),
        })
        .unwrap();
        a.response(&Response::Handle {
            id: 5,
            handle: h.clone(),
        })
        .unwrap();
        a.request(&Request::Read {
            id: 6,
            handle: h.clone(),
            offset: 0,
            len: 4,
        })
        .unwrap();
        a.request(&Request::Read {
            id: 7,
            handle: h.clone(),
            offset: 4,
            len: 4,
        })
        .unwrap();
        a.response(&Response::Data {
            id: 6,
            data: b"abcd".to_vec(),
        })
        .unwrap();
        a.response(&Response::Data {
            id: 7,
            data: b"ef".to_vec(),
        })
        .unwrap();
        a.request(&Request::Close {
            id: 8,
            handle: h.clone(),
        })
        .unwrap();
        let ev = a
            .response(&Response::Status {
                id: 8,
                code: 0,
                message: String::new(),
            })
            .unwrap();
        assert!(
            matches!(&ev[0], Meta::SftpFile { bytes_read: 6, sha256_read: Some(s), .. } if *s == hex(&Sha256::digest(b"abcdef")))
        );
    }

    #[test]
    fn changes_carry_their_outcome_and_state_is_bounded() {
        let mut a = SftpAudit::default();
        a.request(&Request::Rename {
            id: 1,
            from: "a".into(),
            to: "b".into(),
        })
        .unwrap();
        let ev = a
            .response(&Response::Status {
                id: 1,
                code: 2,
                message: "No such file".into(),
            })
            .unwrap();
        assert!(
            matches!(&ev[0], Meta::SftpOp { op, target: Some(t), outcome, .. } if op == "rename" && t == "b" && outcome.contains("No such file"))
        );
        for i in 0..MAX_OUTSTANDING as u32 {
            a.request(&Request::Stat {
                id: i,
                path: "x".into(),
            })
            .unwrap();
        }
        assert!(a
            .request(&Request::Stat {
                id: u32::MAX,
                path: "x".into()
            })
            .is_err());
    }

    fn status(id: u32) -> Response {
        Response::Status {
            id,
            code: 0,
            message: String::new(),
        }
    }

    #[test]
    fn a_request_id_still_awaiting_its_answer_cannot_be_reused() {
        let mut a = SftpAudit::default();
        let remove = Request::Remove {
            id: 5,
            path: "/srv/app/config".into(),
        };
        a.request(&remove).unwrap();
        let err = a
            .request(&Request::Stat {
                id: 5,
                path: "x".into(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("reused"), "{err}");
        // The remove is still followed, and its answer still audited.
        let ev = a.response(&status(5)).unwrap();
        assert!(matches!(&ev[..], [Meta::SftpOp { op, path, .. }] if op == "remove" && path == "/srv/app/config"));
        // Once answered, the id is free again.
        a.request(&remove).unwrap();
    }

    #[test]
    fn the_bytes_held_for_answers_are_bounded_and_given_back() {
        let mut a = SftpAudit::default();
        let long = "p".repeat(200 * 1024);
        let mut id = 0;
        let err = loop {
            id += 1;
            let open = Request::Open {
                id,
                path: long.clone().into(),
                pflags: crate::sftp::FXF_READ,
                attrs: Attrs::default(),
            };
            if let Err(e) = a.request(&open) {
                break e;
            }
            assert!(id < 100, "never refused");
        };
        assert!(err.to_string().contains("too many bytes"), "{err}");
        assert_eq!(id as usize, MAX_HELD / long.len() + 1);
        // Answers give the room back: paths move to open files, closes free them.
        for i in 1..id {
            a.response(&Response::Handle {
                id: i,
                handle: i.to_be_bytes().to_vec(),
            })
            .unwrap();
            a.request(&Request::Close {
                id: 1000 + i,
                handle: i.to_be_bytes().to_vec(),
            })
            .unwrap();
            assert_eq!(a.response(&status(1000 + i)).unwrap().len(), 1);
        }
        assert_eq!(a.held, 0);
        assert!(a.pending.is_empty() && a.files.is_empty());
    }

    /// A handle being closed may be given to the next OPEN: a write sent through it
    /// (pipelined behind both) would be counted to the file closed, and the new file's
    /// summary would say nothing was written. Refused, as a write to a handle no OPEN
    /// answered with.
    #[test]
    fn writes_through_a_handle_not_open_are_refused() {
        let mut a = SftpAudit::default();
        let h = b"\0\0\0\0".to_vec();
        a.request(&Request::Open {
            id: 1,
            path: "/tmp/a".into(),
            pflags: FXF_WRITE | FXF_CREAT,
            attrs: Attrs::default(),
        })
        .unwrap();
        a.response(&Response::Handle {
            id: 1,
            handle: h.clone(),
        })
        .unwrap();
        a.request(&Request::Close {
            id: 2,
            handle: h.clone(),
        })
        .unwrap();
        a.request(&Request::Open {
            id: 3,
            path: "/home/u/.bashrc".into(),
            pflags: FXF_WRITE | FXF_CREAT | FXF_TRUNC,
            attrs: Attrs::default(),
        })
        .unwrap();
        let write = |id| Request::Write {
            id,
            handle: h.clone(),
            offset: 0,
            data: b"evil".to_vec(),
        };
        assert!(matches!(a.request(&write(4)), Err(SftpError::Malformed(m)) if m.contains("not open")));
        assert!(a
            .request(&Request::Read {
                id: 5,
                handle: h.clone(),
                offset: 0,
                len: 4
            })
            .is_err());
        assert!(
            a.request(&Request::Close {
                id: 6,
                handle: h.clone()
            })
            .is_err(),
            "closed twice"
        );
        // A handle guessed before any OPEN answered with it.
        assert!(SftpAudit::default().request(&write(7)).is_err());
        // Once the CLOSE and the new OPEN are answered, the handle names the new file.
        a.response(&status(2)).unwrap();
        a.response(&Response::Handle {
            id: 3,
            handle: h.clone(),
        })
        .unwrap();
        a.request(&write(8)).unwrap();
        a.response(&status(8)).unwrap();
        a.request(&Request::Close {
            id: 9,
            handle: h.clone(),
        })
        .unwrap();
        let ev = a.response(&status(9)).unwrap();
        assert!(
            matches!(&ev[..], [Meta::SftpFile { path, bytes_written: 4, .. }] if path == "/home/u/.bashrc"),
            "{ev:?}"
        );
    }

    #[test]
    fn a_handle_given_out_twice_still_gets_its_first_files_summary() {
        let mut a = SftpAudit::default();
        for (id, path) in [(1, "/a"), (2, "/b")] {
            a.request(&Request::Open {
                id,
                path: path.into(),
                pflags: crate::sftp::FXF_READ,
                attrs: Attrs::default(),
            })
            .unwrap();
        }
        a.response(&Response::Handle {
            id: 1,
            handle: b"h".to_vec(),
        })
        .unwrap();
        let ev = a
            .response(&Response::Handle {
                id: 2,
                handle: b"h".to_vec(),
            })
            .unwrap();
        assert!(
            ev.iter()
                .any(|m| matches!(m, Meta::SftpFile { path, .. } if path == "/a")),
            "{ev:?}"
        );
        assert_eq!(a.held, 1 + "/b".len());
    }

    #[test]
    fn only_sftp_version_3_is_followed() {
        let mut a = SftpAudit::default();
        assert!(a.response(&Response::Version { version: 3 }).unwrap().is_empty());
        let err = a.response(&Response::Version { version: 6 }).unwrap_err();
        assert_eq!(err, SftpError::Version(6));
    }

    fn op_of(ev: &[Meta]) -> (String, String, Option<String>, Option<String>) {
        match ev {
            [Meta::SftpOp {
                op,
                path,
                target,
                detail,
                ..
            }] => (op.clone(), path.clone(), target.clone(), detail.clone()),
            other => panic!("{other:?}"),
        }
    }

    /// An open file, `/srv/{name}` on handle `name`, answered.
    fn opened(a: &mut SftpAudit, id: u32, name: &str, pflags: u32) {
        a.request(&Request::Open {
            id,
            path: format!("/srv/{name}").into(),
            pflags,
            attrs: Attrs::default(),
        })
        .unwrap();
        a.response(&Response::Handle {
            id,
            handle: name.as_bytes().to_vec(),
        })
        .unwrap();
    }

    #[test]
    fn attribute_changes_and_copies_name_their_files_and_what_they_set() {
        let mut a = SftpAudit::default();
        let mode = |m| Attrs {
            permissions: Some(m),
            ..Attrs::default()
        };
        // chmod: the path and the mode.
        a.request(&Request::Setstat {
            id: 1,
            path: "/srv/tool".into(),
            attrs: mode(0o104755),
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&status(1)).unwrap()),
            ("setstat".into(), "/srv/tool".into(), None, Some("mode 4755".into()))
        );
        // put -p sets mode and times through the handle: named by the handle's file.
        opened(&mut a, 2, "up", FXF_WRITE | FXF_CREAT);
        let both = Attrs {
            permissions: Some(0o100600),
            times: Some((1, 2)),
            ..Attrs::default()
        };
        a.request(&Request::Fsetstat {
            id: 3,
            handle: b"up".to_vec(),
            attrs: both,
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&status(3)).unwrap()),
            (
                "fsetstat".into(),
                "/srv/up".into(),
                None,
                Some("mode 0600, times 1/2".into())
            )
        );
        // A creating OPEN and a MKDIR say the mode they ask for; a plain OPEN says none.
        a.request(&Request::Open {
            id: 4,
            path: "/srv/new".into(),
            pflags: FXF_WRITE | FXF_CREAT,
            attrs: mode(0o6755),
        })
        .unwrap();
        assert_eq!(op_of(&a.response(&status(4)).unwrap()).3.as_deref(), Some("mode 6755"));
        a.request(&Request::Open {
            id: 5,
            path: "/srv/old".into(),
            pflags: FXF_READ,
            attrs: mode(0o777),
        })
        .unwrap();
        assert_eq!(op_of(&a.response(&status(5)).unwrap()).3, None);
        // ...and nothing else: sftp-server takes only the mode from them.
        a.request(&Request::Mkdir {
            id: 6,
            path: "/srv/d".into(),
            attrs: Attrs {
                owner: Some((0, 0)),
                ..mode(0o700)
            },
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&status(6)).unwrap()),
            ("mkdir".into(), "/srv/d".into(), None, Some("mode 0700".into()))
        );
        // lsetstat: its path, and its attributes as attributes.
        a.request(&Request::Extended {
            id: 7,
            name: "lsetstat@openssh.com".into(),
            args: ExtArgs::Setstat {
                path: "/srv/link".into(),
                attrs: Attrs {
                    owner: Some((0, 0)),
                    ..Attrs::default()
                },
            },
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&status(7)).unwrap()),
            ("lsetstat".into(), "/srv/link".into(), None, Some("owner 0:0".into()))
        );
        // copy-data names both files and its range; what it puts in the destination
        // never crossed the gateway, so the destination's written hash is withdrawn.
        opened(&mut a, 8, "src", FXF_READ);
        a.request(&Request::Write {
            id: 9,
            handle: b"up".to_vec(),
            offset: 0,
            data: b"abc".to_vec(),
        })
        .unwrap();
        a.response(&status(9)).unwrap();
        let copy = |id, from: &[u8], to: &[u8]| Request::Extended {
            id,
            name: "copy-data".into(),
            args: ExtArgs::CopyData {
                from: from.to_vec(),
                from_offset: 0,
                length: 0,
                to: to.to_vec(),
                to_offset: 3,
            },
        };
        a.request(&copy(10, b"src", b"up")).unwrap();
        assert_eq!(
            op_of(&a.response(&status(10)).unwrap()),
            (
                "copy-data".into(),
                "/srv/src".into(),
                Some("/srv/up".into()),
                Some("from offset 0 to the end, to offset 3".into())
            )
        );
        a.request(&Request::Close {
            id: 11,
            handle: b"up".to_vec(),
        })
        .unwrap();
        assert!(matches!(
            &a.response(&status(11)).unwrap()[..],
            [Meta::SftpFile { path, bytes_written: 3, sha256_written: None, .. }] if path == "/srv/up"
        ));
        // Through a handle closed, being closed or never opened: refused, like a WRITE.
        let fsetstat = |id, h: &[u8]| Request::Fsetstat {
            id,
            handle: h.to_vec(),
            attrs: mode(0o4755),
        };
        for req in [fsetstat(12, b"up"), copy(13, b"src", b"up"), copy(14, b"up", b"src")] {
            assert!(
                matches!(a.request(&req), Err(SftpError::Malformed(m)) if m.contains("not open")),
                "{req:?}"
            );
        }
        a.request(&Request::Close {
            id: 15,
            handle: b"src".to_vec(),
        })
        .unwrap();
        assert!(a.request(&fsetstat(16, b"src")).is_err(), "being closed");
        assert!(a.pending.keys().all(|id| *id == 15), "refusals left nothing pending");
        // sftp-server applies each attribute in turn and answers with the last failure:
        // an error on several attributes may leave some of them set.
        let refused = |id| Response::Status {
            id,
            code: 3,
            message: "Permission denied".into(),
        };
        a.request(&Request::Setstat {
            id: 17,
            path: "/srv/tool".into(),
            attrs: Attrs {
                owner: Some((0, 0)),
                ..mode(0o4755)
            },
        })
        .unwrap();
        let outcome = |ev: Vec<Meta>| match &ev[..] {
            [Meta::SftpOp { outcome, .. }] => outcome.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            outcome(a.response(&refused(17)).unwrap()),
            "error 3: Permission denied (steps before the failure may be done)"
        );
        a.request(&Request::Setstat {
            id: 18,
            path: "/srv/tool".into(),
            attrs: mode(0o4755),
        })
        .unwrap();
        assert_eq!(outcome(a.response(&refused(18)).unwrap()), "error 3: Permission denied");
        opened(&mut a, 19, "from", FXF_READ);
        opened(&mut a, 20, "to", FXF_WRITE);
        a.request(&copy(21, b"from", b"to")).unwrap();
        let eof = Response::Status {
            id: 21,
            code: 1,
            message: "EOF".into(),
        };
        assert_eq!(
            outcome(a.response(&eof).unwrap()),
            "error 1: EOF (steps before the failure may be done)",
            "bytes up to the end were copied"
        );
    }

    /// A directory handle is one the target gave out: what goes through it is forwarded
    /// and recorded against the directory (OpenSSH answers FAILURE to a write, FSETSTAT
    /// or copy-data there), not taken as a reason to end the channel.
    #[test]
    fn requests_through_a_directory_handle_are_recorded_against_it() {
        let mut a = SftpAudit::default();
        let failure = |id| Response::Status {
            id,
            code: 4,
            message: "Failure".into(),
        };
        a.request(&Request::Opendir {
            id: 1,
            path: "/srv/d".into(),
        })
        .unwrap();
        assert!(a
            .response(&Response::Handle {
                id: 1,
                handle: b"d".to_vec()
            })
            .unwrap()
            .is_empty());
        opened(&mut a, 2, "f", FXF_READ);

        a.request(&Request::Fsetstat {
            id: 3,
            handle: b"d".to_vec(),
            attrs: Attrs {
                permissions: Some(0o1777),
                ..Attrs::default()
            },
        })
        .unwrap();
        let ev = a.response(&failure(3)).unwrap();
        assert_eq!(
            op_of(&ev),
            ("fsetstat".into(), "/srv/d".into(), None, Some("mode 1777".into()))
        );
        assert!(matches!(&ev[..], [Meta::SftpOp { outcome, .. }] if outcome == "error 4: Failure"));

        a.request(&Request::Write {
            id: 4,
            handle: b"d".to_vec(),
            offset: 7,
            data: b"abc".to_vec(),
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&failure(4)).unwrap()),
            (
                "write".into(),
                "/srv/d".into(),
                None,
                Some("3 bytes at offset 7".into())
            )
        );

        a.request(&Request::Extended {
            id: 5,
            name: "copy-data".into(),
            args: ExtArgs::CopyData {
                from: b"f".to_vec(),
                from_offset: 0,
                length: 10,
                to: b"d".to_vec(),
                to_offset: 0,
            },
        })
        .unwrap();
        assert_eq!(
            op_of(&a.response(&failure(5)).unwrap()),
            (
                "copy-data".into(),
                "/srv/f".into(),
                Some("/srv/d".into()),
                Some("10 bytes from offset 0, to offset 0".into())
            )
        );

        a.request(&Request::Extended {
            id: 6,
            name: "fsync@openssh.com".into(),
            args: ExtArgs::Handle(b"d".to_vec()),
        })
        .unwrap();
        assert_eq!(op_of(&a.response(&failure(6)).unwrap()).1, "/srv/d");

        // Closed: the handle names nothing any more, and nothing is held for it.
        a.request(&Request::Close {
            id: 7,
            handle: b"d".to_vec(),
        })
        .unwrap();
        assert!(a.response(&status(7)).unwrap().is_empty());
        let fsetstat = Request::Fsetstat {
            id: 8,
            handle: b"d".to_vec(),
            attrs: Attrs::default(),
        };
        assert!(matches!(a.request(&fsetstat), Err(SftpError::Malformed(m)) if m.contains("not open")));
        assert_eq!(a.held, "f".len() + "/srv/f".len());

        // A target giving a directory's handle to an OPEN: the handle names the file.
        a.request(&Request::Opendir {
            id: 9,
            path: "/srv/e".into(),
        })
        .unwrap();
        a.response(&Response::Handle {
            id: 9,
            handle: b"e".to_vec(),
        })
        .unwrap();
        opened(&mut a, 10, "e", FXF_WRITE);
        a.request(&Request::Write {
            id: 11,
            handle: b"e".to_vec(),
            offset: 0,
            data: b"xy".to_vec(),
        })
        .unwrap();
        assert!(
            a.pending.get(&11).is_some_and(|p| matches!(p, Pending::Other)),
            "counted to the file"
        );
        let ends = a.finish();
        assert!(ends
            .iter()
            .any(|m| matches!(m, Meta::SftpFile { path, bytes_written: 2, .. } if path == "/srv/e")));
        assert!(a.dirs.is_empty());
    }

    /// Directory handles count towards the bound on open handles.
    #[test]
    fn directory_handles_count_towards_the_bound() {
        let mut a = SftpAudit::default();
        for i in 0..MAX_HANDLES as u32 {
            a.request(&Request::Opendir {
                id: i,
                path: "/".into(),
            })
            .unwrap();
            a.response(&Response::Handle {
                id: i,
                handle: i.to_be_bytes().to_vec(),
            })
            .unwrap();
        }
        let id = MAX_HANDLES as u32;
        a.request(&Request::Open {
            id,
            path: "/f".into(),
            pflags: FXF_READ,
            attrs: Attrs::default(),
        })
        .unwrap();
        assert!(matches!(
            a.response(&Response::Handle { id, handle: b"new".to_vec() }),
            Err(SftpError::Malformed(m)) if m.contains("too many")
        ));
    }

    /// Names are bytes: one that is not UTF-8 is recorded with its exact bytes beside
    /// its text, so that two names differing only in such bytes stay apart, from the
    /// wire (the parser) to the events.
    #[test]
    fn paths_that_are_not_utf8_are_recorded_exactly() {
        let packet = |kind: u8, id: u32, fields: &[&[u8]], tail: &[u8]| {
            let mut body = vec![kind];
            body.extend_from_slice(&id.to_be_bytes());
            for f in fields {
                body.extend_from_slice(&(f.len() as u32).to_be_bytes());
                body.extend_from_slice(f);
            }
            body.extend_from_slice(tail);
            let mut p = (body.len() as u32).to_be_bytes().to_vec();
            p.extend_from_slice(&body);
            crate::sftp::parse_request(&p).unwrap()
        };
        let mut a = SftpAudit::default();
        // OPEN "/srv/caf\xe9" for writing, no attributes; then four bytes and CLOSE.
        let mut flags = (FXF_WRITE | FXF_CREAT).to_be_bytes().to_vec();
        flags.extend_from_slice(&0u32.to_be_bytes());
        a.request(&packet(3, 1, &[b"/srv/caf\xe9"], &flags)).unwrap();
        let ev = a
            .response(&Response::Handle {
                id: 1,
                handle: b"h".to_vec(),
            })
            .unwrap();
        assert!(
            matches!(&ev[..], [Meta::SftpOp { op, path, path_hex: Some(h), target: None, target_hex: None, .. }]
                if op == "open" && path == "/srv/caf\u{fffd}" && h == "2f7372762f636166e9"),
            "{ev:?}"
        );
        a.request(&Request::Write {
            id: 2,
            handle: b"h".to_vec(),
            offset: 0,
            data: b"data".to_vec(),
        })
        .unwrap();
        a.request(&Request::Close {
            id: 3,
            handle: b"h".to_vec(),
        })
        .unwrap();
        let ev = a.response(&status(3)).unwrap();
        assert!(
            matches!(&ev[..], [Meta::SftpFile { path_hex: Some(h), bytes_written: 4, .. }] if h == "2f7372762f636166e9"),
            "{ev:?}"
        );
        // RENAME "a\xff" -> "a\xfe": the texts are the same, the bytes are not.
        a.request(&packet(18, 4, &[b"a\xff", b"a\xfe"], b"")).unwrap();
        let ev = a.response(&status(4)).unwrap();
        let [Meta::SftpOp {
            path,
            path_hex,
            target,
            target_hex,
            ..
        }] = &ev[..]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(path, target.as_ref().unwrap());
        assert_eq!(
            (path_hex.as_deref(), target_hex.as_deref()),
            (Some("61ff"), Some("61fe"))
        );
        // A UTF-8 name carries no bytes, and is written as before.
        a.request(&packet(13, 5, &["/srv/été".as_bytes()], b"")).unwrap();
        let ev = a.response(&status(5)).unwrap();
        assert_eq!(
            serde_json::to_string(&ev[0]).unwrap(),
            r#"{"event":"sftp_op","op":"remove","path":"/srv/été","target":null,"flags":null,"outcome":"ok"}"#
        );
    }
}
