//! The legacy scp protocol (`scp -O`, exec `scp -t` / `scp -f`): recognising the command
//! and following the file stream, so a transfer is recorded with its path, size and hash.

use sha2::{Digest, Sha256};

use crate::event::Meta;
use crate::name::Name;

/// Which way files flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScpDirection {
    /// `scp -t`: the client sends files to the target.
    Upload,
    /// `scp -f`: the target sends files to the client.
    Download,
}

/// A legacy scp command the gateway follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    pub direction: ScpDirection,
    /// The path on the target, as the command names it.
    pub path: String,
    /// `-d`: the client sends several files, so the path must be a directory.
    pub into_directory: bool,
    /// `-r`: directories may be sent.
    pub recursive: bool,
}

/// The server side of a legacy scp transfer, exactly as OpenSSH's scp client asks for it:
/// `scp [-v] [-r] [-p] [-d] -t|-f [--] PATH`, words split by single spaces, `--` only
/// (and always) before a path that starts with `-`. Anything else is not scp and is
/// judged as a plain exec.
///
/// The command goes to the target's shell as it is, so it must mean there exactly what
/// it means here. Hence a closed grammar rather than a getopt look-alike, and a path made
/// only of characters no shell treats specially (letters and digits, `. _ / + - , : @`):
/// no quoting, globbing, expansion, or whitespace other than the space the shells split
/// on. Paths with other characters fall back to exec, or to scp's SFTP mode.
pub fn parse_command(command: &str) -> Option<ScpCommand> {
    let mut words = command.split(' ');
    if words.next()? != "scp" {
        return None;
    }
    let mut flags: Vec<&str> = Vec::new();
    let direction = loop {
        match words.next()? {
            "-t" => break ScpDirection::Upload,
            "-f" => break ScpDirection::Download,
            f @ ("-v" | "-r" | "-p" | "-d") if !flags.contains(&f) => flags.push(f),
            _ => return None,
        }
    };
    let path = match words.next()? {
        "--" => words.next().filter(|p| p.starts_with('-'))?,
        p if p.starts_with('-') => return None,
        p => p,
    };
    let plain = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '/' | '+' | '-' | ',' | ':' | '@');
    if words.next().is_some() || path.is_empty() || !path.chars().all(plain) {
        return None;
    }
    Some(ScpCommand {
        direction,
        path: path.to_owned(),
        into_directory: flags.contains(&"-d"),
        recursive: flags.contains(&"-r"),
    })
}

enum State {
    /// A control line, read up to its newline.
    Line(Vec<u8>),
    /// A message being skipped: a warning (`\x01`), after which the transfer goes on, or
    /// a fatal error, after which the receiver exits. One in place of the status byte
    /// after a file's data is `answered` by the receiver, like that byte.
    Message {
        len: usize,
        limit: usize,
        fatal: bool,
        answered: bool,
    },
    Data {
        name: Name,
        mode: String,
        left: u64,
        size: u64,
        hasher: Sha256,
    },
    /// The status byte that follows a file's data.
    Trailer,
    /// The receiving scp has stopped reading (a fatal error, the end of the top
    /// directory). A receiver that is not OpenSSH's might read on, so bytes after this
    /// are not followed and the recording says so.
    Ended,
    /// No longer followed (see [`Meta::Untracked`]).
    Done,
}

/// What the sender waits for the receiver to answer before it goes on.
enum Awaited {
    /// The receiver's start (it may refuse the target path).
    Start,
    /// A file: its data follows only if the receiver could open it.
    File { name: Name, size: u64, mode: String },
    /// A directory: entered only if the receiver could make it.
    Dir { name: Name, mode: String },
    /// A time record, the end of a directory, a file's data: nothing depends on it.
    Other,
}

/// Reading the receiver's answers: a status byte, and after 1 or 2 a message line.
enum Answer {
    Status,
    Message { len: usize, fatal: bool },
}

/// Follows an scp stream as OpenSSH's receiving side (`sink`) reads it, so that a file
/// is recorded exactly when that side would write it: the sender's records and data
/// through [`ScpTracker::feed`], the receiver's answers through [`ScpTracker::answer`]
/// (a record the receiver refuses, a file it cannot open, is followed by no data: the
/// sender's next bytes are its next record).
pub struct ScpTracker {
    direction: ScpDirection,
    target: Name,
    /// Whether the files land inside `target` (see [`ScpTracker::path`]).
    into_target: bool,
    recursive: bool,
    /// The directories entered below the top, by the names the sender gave them (any
    /// bytes but `/` and NUL).
    dirs: Vec<Name>,
    /// What the last `T` record asked the receiver to set on the next file or directory
    /// it writes (scp `-p`): OpenSSH's `sink` keeps it until one is written, past
    /// records it refuses, and forgets it at the end of the directory.
    times: Option<Times>,
    state: State,
    awaiting: Option<Awaited>,
    /// What the sender sent before the answer it should have waited for; read once the
    /// answer says what it is. An honest sender sends nothing ahead.
    ahead: Vec<u8>,
    answer: Answer,
}

/// The longest line OpenSSH's scp reads whole (its buffer is 2048 bytes, with the
/// newline and a NUL); it reads a longer one as two.
const MAX_LINE: usize = 2046;
/// Directories deep a stream is followed.
const MAX_DEPTH: usize = 256;
/// The largest size scp accepts (an `off_t`).
const MAX_SIZE: u64 = i64::MAX as u64;
/// Bytes a sender may send ahead of the receiver's answer before the stream is no
/// longer followed.
const MAX_AHEAD: usize = 64 * 1024;

impl ScpTracker {
    pub fn new(command: ScpCommand) -> Self {
        let ScpCommand {
            direction,
            path,
            into_directory,
            recursive,
        } = command;
        let into_target = direction == ScpDirection::Upload
            && (into_directory || path.ends_with('/') || path == "." || path.ends_with("/."));
        let target = Name::from(match path.trim_end_matches('/') {
            "" if path.starts_with('/') => "/",
            t => t,
        });
        ScpTracker {
            direction,
            target,
            into_target,
            recursive,
            dirs: Vec::new(),
            times: None,
            state: State::Line(Vec::new()),
            awaiting: Some(Awaited::Start),
            ahead: Vec::new(),
            answer: Answer::Status,
        }
    }

    /// Where the file `name` of the current directory lands on the target, and, when
    /// that depends on what the target has, the name the sender gave it.
    ///
    /// A download's first record is the target path itself (the sender names it by its
    /// last component). An upload's lands inside the target when that must be a
    /// directory (`-d`, a trailing `/`, `.`); otherwise it becomes the target, unless
    /// the target is an existing directory, which only the target knows: then the path
    /// is the target's and `sent_as` says what the sender called it.
    fn path(&self, name: &Name) -> (Name, Option<Name>) {
        let mut below: Vec<&[u8]> = self.dirs.iter().map(Name::as_bytes).collect();
        below.push(name.as_bytes());
        let sent_as = Name::new(below.join(&b'/'));
        let mut path = self.target.clone();
        for part in &below[usize::from(!self.into_target)..] {
            path = path.join(part);
        }
        let ambiguous = self.direction == ScpDirection::Upload && !self.into_target;
        (path, ambiguous.then_some(sent_as))
    }

    /// The record of `name` in the current directory: a file with its size and hash,
    /// or (`file` none) a directory, with the times a `T` record set on it.
    fn transfer(&mut self, name: &Name, mode: String, file: Option<(u64, String)>) -> Meta {
        let (path, sent_as) = self.path(name);
        let (path, path_hex) = path.recorded();
        let (sent_as, sent_as_hex) = sent_as.as_ref().map(Name::recorded).unzip();
        let directory = file.is_none();
        let (bytes, sha256) = file.map_or((0, None), |(size, hash)| (size, Some(hash)));
        let times = self.times.take();
        Meta::FileTransfer {
            protocol: "scp".into(),
            upload: self.direction == ScpDirection::Upload,
            path,
            path_hex,
            sent_as,
            sent_as_hex: sent_as_hex.flatten(),
            bytes,
            sha256,
            mode: Some(mode),
            directory,
            mtime: times.map(|t| t.mtime),
            atime: times.map(|t| t.atime),
        }
    }

    /// Feed the sender's bytes; returns finished transfers. A stream that stops making
    /// sense is no longer followed, and says so once with [`Meta::Untracked`] (the raw
    /// bytes stay recorded).
    pub fn feed(&mut self, data: &[u8]) -> Vec<Meta> {
        let mut out = Vec::new();
        self.sent(data, &mut out);
        out
    }

    /// Feed the receiver's bytes (its answers); returns what the sender's bytes held
    /// back for them complete.
    pub fn answer(&mut self, data: &[u8]) -> Vec<Meta> {
        let mut out = Vec::new();
        for &b in data {
            if matches!(self.state, State::Done) {
                break;
            }
            match &mut self.answer {
                Answer::Status => match b {
                    0 => self.answered(true, &mut out),
                    1 | 2 => self.answer = Answer::Message { len: 0, fatal: b == 2 },
                    _ => self.lose(&mut out, "the receiver answered with a byte scp never sends".into()),
                },
                Answer::Message { fatal, .. } if b == b'\n' => {
                    let fatal = *fatal;
                    self.answer = Answer::Status;
                    if fatal {
                        // The sender exits on it.
                        self.state = State::Ended;
                        self.awaiting = None;
                    } else {
                        self.answered(false, &mut out);
                    }
                }
                Answer::Message { len, .. } => {
                    *len += 1;
                    if *len > MAX_LINE {
                        self.lose(&mut out, format!("an answer longer than {MAX_LINE} bytes"));
                    }
                }
            }
        }
        out
    }

    /// The receiver answered: `ok` (0), or with an error message.
    fn answered(&mut self, ok: bool, out: &mut Vec<Meta>) {
        match self.awaiting.take() {
            None => return self.lose(out, "the receiver answered a record that was not sent".into()),
            // A receiver that cannot start (its target is not a directory) exits.
            Some(Awaited::Start) if !ok => self.state = State::Ended,
            Some(Awaited::File { name, size, mode }) if ok => {
                // A zero-length file finishes when its trailer byte arrives.
                self.state = State::Data {
                    name,
                    mode,
                    left: size,
                    size,
                    hasher: Sha256::new(),
                }
            }
            Some(Awaited::Dir { name, mode }) if ok => {
                out.push(self.transfer(&name, mode, None));
                self.dirs.push(name)
            }
            Some(_) => {}
        }
        let ahead = std::mem::take(&mut self.ahead);
        self.sent(&ahead, out);
    }

    fn sent(&mut self, mut data: &[u8], out: &mut Vec<Meta>) {
        while let Some(&first) = data.first() {
            if self.awaiting.is_some() && !matches!(self.state, State::Done) {
                if self.ahead.len() + data.len() > MAX_AHEAD {
                    self.lose(out, "the sender ran ahead of the receiver's answers".into());
                } else {
                    self.ahead.extend_from_slice(data);
                }
                return;
            }
            match &mut self.state {
                State::Done => break,
                // What starts a line: a message, or the control record itself.
                // The receiver reads the whole line, the status byte included, into
                // its record buffer.
                State::Line(line) if line.is_empty() && matches!(first, 1 | 2) => {
                    self.state = State::Message {
                        len: 0,
                        limit: MAX_LINE - 1,
                        fatal: first == 2,
                        answered: false,
                    };
                    data = &data[1..];
                }
                State::Ended => self.lose(out, "bytes after the receiving scp stopped reading".into()),
                State::Line(line) => {
                    let (chunk, rest, done) = match data.iter().position(|b| *b == b'\n') {
                        Some(i) => (&data[..i], &data[i + 1..], true),
                        None => (data, &[][..], false),
                    };
                    line.extend_from_slice(chunk);
                    data = rest;
                    if line.len() > MAX_LINE {
                        self.lose(out, format!("a control line longer than {MAX_LINE} bytes"));
                    } else if done {
                        // The receiver parses the line as a C string: a NUL ends it.
                        let end = line.iter().position(|b| *b == 0).unwrap_or(line.len());
                        let line = std::mem::take(line);
                        if let Err(reason) = self.control(&line[..end]) {
                            self.lose(out, reason);
                        }
                    }
                }
                // A message longer than the receiver's buffer ends where the buffer
                // does, and the rest is read as a record: not followed, and said.
                State::Message {
                    len,
                    limit,
                    fatal,
                    answered,
                } => {
                    let (n, done) = match data.iter().position(|b| *b == b'\n') {
                        Some(i) => (i, true),
                        None => (data.len(), false),
                    };
                    *len += n;
                    if *len > *limit {
                        let limit = *limit;
                        self.lose(out, format!("a message longer than {limit} bytes"));
                    } else if done {
                        data = &data[n + 1..];
                        if *answered && !*fatal {
                            self.awaiting = Some(Awaited::Other);
                        }
                        self.state = if *fatal { State::Ended } else { State::Line(Vec::new()) };
                    } else {
                        data = &[];
                    }
                }
                State::Data { left, hasher, .. } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    hasher.update(&data[..n]);
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        if let State::Data {
                            name,
                            mode,
                            size,
                            hasher,
                            ..
                        } = std::mem::replace(&mut self.state, State::Trailer)
                        {
                            let file = (size, hex::encode(hasher.finalize()));
                            out.push(self.transfer(&name, mode, Some(file)));
                        }
                    }
                }
                // 0: the file is whole; 1: the sender could not read all of it (the
                // receiver keeps what came and goes on); anything else starts a message
                // after which the receiver exits.
                State::Trailer => {
                    self.state = match first {
                        0 => {
                            self.awaiting = Some(Awaited::Other);
                            State::Line(Vec::new())
                        }
                        // The receiver's status buffer keeps any byte but 1 and 2.
                        _ => State::Message {
                            len: 0,
                            limit: if matches!(first, 1 | 2) { MAX_LINE } else { MAX_LINE - 1 },
                            fatal: first != 1,
                            answered: true,
                        },
                    };
                    data = &data[1..];
                }
            }
        }
    }

    /// Stop following the stream, and say why.
    fn lose(&mut self, out: &mut Vec<Meta>, reason: String) {
        self.state = State::Done;
        self.awaiting = None;
        self.ahead = Vec::new();
        out.push(Meta::Untracked {
            protocol: "scp".into(),
            reason,
        });
    }

    /// A control record (cut at its first NUL), checked as OpenSSH's receiving scp
    /// checks it: a record it would refuse ends the stream there, as it ends the receiver.
    fn control(&mut self, raw: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(raw);
        let line = text.as_ref();
        let refused = |why: &str| {
            let shown: String = line.chars().take(80).collect();
            Err(format!("{why}: {shown:?}"))
        };
        let Some(kind) = line.chars().next() else {
            return refused("an empty control line");
        };
        match kind {
            // The end of a directory; at the top, the end of the receiver.
            'E' => {
                if self.dirs.pop().is_none() {
                    self.state = State::Ended;
                }
                self.times = None;
                self.awaiting = Some(Awaited::Other);
            }
            'T' => match times(&line[1..]) {
                Some(t) => {
                    self.times = t;
                    self.awaiting = Some(Awaited::Other);
                }
                None => return refused("a time record scp does not read"),
            },
            'D' if !self.recursive => return refused("a directory without -r"),
            'C' | 'D' => {
                let rest = &line[1..];
                let mode_ok = rest.len() > 4 && rest.as_bytes()[..4].iter().all(|b| (b'0'..=b'7').contains(b));
                let Some((size, name)) = rest.get(4..).and_then(|r| r.strip_prefix(' ')?.split_once(' ')) else {
                    return refused("a record scp does not read");
                };
                let size = match size.parse::<u64>() {
                    Ok(n) if mode_ok && size.bytes().all(|b| b.is_ascii_digit()) && n <= MAX_SIZE => n,
                    _ => return refused("a record scp does not read"),
                };
                if name.is_empty() || name.contains('/') || name == ".." || name == "." {
                    return refused("a file name scp refuses");
                }
                // The name is the rest of the line, after fields checked to be ASCII: its
                // exact bytes start where its text does.
                let name = Name::new(&raw[line.len() - name.len()..]);
                let mode = rest[..4].to_owned();
                self.awaiting = Some(if kind == 'D' {
                    if self.dirs.len() >= MAX_DEPTH {
                        return refused(&format!("directories nested deeper than {MAX_DEPTH}"));
                    }
                    Awaited::Dir { name, mode }
                } else {
                    Awaited::File { name, size, mode }
                });
            }
            _ => return refused("not a control record"),
        }
        Ok(())
    }
}

/// Modification and access times (Unix seconds) a `T` record sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Times {
    mtime: i64,
    atime: i64,
}

/// `T`'s fields as scp writes them: `MTIME 0 ATIME 0`, seconds then microseconds. None
/// if the receiver refuses the record; `Some(None)` if it reads it but sets no times
/// (seconds beyond a `time_t`, which OpenSSH's `sink` skips).
fn times(fields: &str) -> Option<Option<Times>> {
    let f: Vec<&str> = fields.split(' ').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let read = f.len() == 4
        && number(f[0])
        && number(f[2])
        && [f[1], f[3]]
            .iter()
            .all(|u| number(u) && u.parse::<u32>().is_ok_and(|n| n <= 999_999));
    read.then(|| {
        Some(Times {
            mtime: f[0].parse().ok()?,
            atime: f[2].parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(direction: ScpDirection, path: &str, into_directory: bool) -> Option<ScpCommand> {
        Some(ScpCommand {
            direction,
            path: path.into(),
            into_directory,
            recursive: false,
        })
    }

    /// The sender's bytes, answered as an OpenSSH receiver that accepts everything
    /// answers them.
    fn acked(t: &mut ScpTracker, stream: &[u8]) -> Vec<Meta> {
        let mut ev = t.feed(stream);
        while t.awaiting.is_some() && !matches!(t.state, State::Done) {
            ev.extend(t.answer(b"\0"));
        }
        ev
    }

    /// `-r`; uploads into a directory the command makes certain (`/` at the end).
    fn tracker(direction: ScpDirection, path: &str) -> ScpTracker {
        ScpTracker::new(ScpCommand {
            recursive: true,
            ..cmd(direction, path, false).unwrap()
        })
    }

    #[test]
    fn commands_are_parsed_strictly() {
        assert_eq!(
            parse_command("scp -t /tmp/x"),
            cmd(ScpDirection::Upload, "/tmp/x", false)
        );
        assert_eq!(
            parse_command("scp -r -p -f dir"),
            Some(ScpCommand {
                recursive: true,
                ..cmd(ScpDirection::Download, "dir", false).unwrap()
            })
        );
        assert_eq!(parse_command("scp -t ."), cmd(ScpDirection::Upload, ".", false));
        // What OpenSSH's scp sends, every flag on; `--` before a path that starts with -.
        assert_eq!(
            parse_command("scp -v -r -p -d -t /srv/app/releases"),
            Some(ScpCommand {
                recursive: true,
                ..cmd(ScpDirection::Upload, "/srv/app/releases", true).unwrap()
            })
        );
        assert_eq!(
            parse_command("scp -f -- -odd-name"),
            cmd(ScpDirection::Download, "-odd-name", false)
        );
        assert_eq!(
            parse_command("scp -f données/été.txt"),
            cmd(ScpDirection::Download, "données/été.txt", false)
        );
        for bad in [
            // Words the target's shell splits differently: vertical tab, form feed and
            // Unicode spaces are one word to sh, tabs and doubled spaces are not ours.
            "scp -r -t -- -f\u{b}-f\u{b}",
            "scp -t -- -f\u{c}x",
            "scp -t a\u{a0}b",
            "scp -t\ta",
            "scp  -t a",
            "scp -t a ",
            // Direction given twice or both ways (OpenSSH's scp takes -f over -t).
            "scp -t -f -t X",
            "scp -f -f x",
            "scp -t -t x",
            // Flags after the direction, repeated, combined, or unknown.
            "scp -t -r x",
            "scp -r -r -t x",
            "scp -rt x",
            "scp -t -- x",
            "scp -t -x",
            "scp -t --",
            "scp -t",
            "scp -t -- -x y",
            // Shell syntax in the path.
            "scp -t ~/x",
            "scp -t x=1",
            "scp -t x%y",
            "scp -t x\u{fffd}",
            "scp -t /tmp/x; rm -rf /",
            "scp -t $(id)",
            "scp -t a b",
            "scp -x -t a",
            "scp -t -f a",
            "scpx -t a",
            "scp a",
            "sh -c 'scp -t a'",
        ] {
            assert_eq!(parse_command(bad), None, "{bad}");
        }
    }

    fn untracked(ev: &[Meta]) -> Vec<&str> {
        ev.iter()
            .filter_map(|m| match m {
                Meta::Untracked { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect()
    }

    fn files(ev: &[Meta]) -> Vec<(&str, u64)> {
        ev.iter()
            .filter_map(|m| match m {
                Meta::FileTransfer {
                    path,
                    bytes,
                    directory: false,
                    ..
                } => Some((path.as_str(), *bytes)),
                _ => None,
            })
            .collect()
    }

    /// Directories made or entered, with their modes; and files with theirs.
    fn modes(ev: &[Meta]) -> Vec<(&str, bool, &str)> {
        ev.iter()
            .filter_map(|m| match m {
                Meta::FileTransfer {
                    path,
                    directory,
                    mode: Some(mode),
                    ..
                } => Some((path.as_str(), *directory, mode.as_str())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn upload_stream_yields_path_size_hash() {
        let mut t = tracker(ScpDirection::Upload, "/home/u/");
        let stream = b"C0644 11 hello.txt\nhello world\0D0755 0 sub\nT1 0 2 0\nC0600 3 a\nabc\0C0600 0 empty\n\0E\n";
        let mut ev = Vec::new();
        for piece in stream.chunks(4) {
            ev.extend(acked(&mut t, piece));
        }
        assert_eq!(ev.len(), 4, "three files and a directory: {ev:?}");
        assert!(
            matches!(&ev[0], Meta::FileTransfer { path, bytes: 11, sha256: Some(h), upload: true, .. }
            if path == "/home/u/hello.txt" && *h == hex::encode(Sha256::digest(b"hello world")))
        );
        assert_eq!(files(&ev)[1..], [("/home/u/sub/a", 3), ("/home/u/sub/empty", 0)]);
    }

    /// Every file and directory carries the mode the receiver creates it with, so that
    /// a setuid file or a world-writable directory shows; a directory shows once the
    /// receiver has made or entered it, and not when it refused it.
    #[test]
    fn modes_and_directories_are_recorded() {
        let mut t = ScpTracker::new(parse_command("scp -r -p -d -t /srv").unwrap());
        let stream = b"D0777 0 pub\nT1 0 2 0\nC4755 1 su\nx\0E\nD2750 0 locked\n";
        let ev = acked(&mut t, stream);
        assert_eq!(
            modes(&ev),
            [
                ("/srv/pub", true, "0777"),
                ("/srv/pub/su", false, "4755"),
                ("/srv/locked", true, "2750")
            ]
        );
        assert!(matches!(
            &ev[0],
            Meta::FileTransfer {
                bytes: 0,
                sha256: None,
                upload: true,
                ..
            }
        ));
        // Refused (a file of that name is in the way): no directory, and the sender's
        // next record is read at the same level.
        let mut t = ScpTracker::new(parse_command("scp -r -d -t /srv").unwrap());
        let mut ev = t.answer(b"\0");
        ev.extend(t.feed(b"D0755 0 taken\n"));
        ev.extend(t.answer(b"\x01scp: /srv/taken: Not a directory\n"));
        ev.extend(acked(&mut t, b"C0644 1 f\nx\0"));
        assert_eq!(modes(&ev), [("/srv/f", false, "0644")], "{ev:?}");
    }

    /// `scp -p`'s times, on the file or directory OpenSSH's receiver sets them on.
    #[test]
    fn times_are_recorded_where_the_receiver_sets_them() {
        let times = |ev: &[Meta]| -> Vec<(String, Option<i64>, Option<i64>)> {
            ev.iter()
                .filter_map(|m| match m {
                    Meta::FileTransfer { path, mtime, atime, .. } => Some((path.clone(), *mtime, *atime)),
                    _ => None,
                })
                .collect()
        };
        let mut t = ScpTracker::new(parse_command("scp -r -p -d -t /srv").unwrap());
        // A directory's times are its own, not its files'; a T inside a directory that
        // ends before any file is forgotten with it.
        let ev = acked(
            &mut t,
            b"T1 0 2 0\nD0755 0 d\nC0644 1 f\nx\0T7 0 7 0\nE\nC0644 1 g\nx\0",
        );
        assert!(untracked(&ev).is_empty(), "{ev:?}");
        assert_eq!(
            times(&ev),
            [
                ("/srv/d".into(), Some(1), Some(2)),
                ("/srv/d/f".into(), None, None),
                ("/srv/g".into(), None, None)
            ]
        );
        // A file the receiver refuses leaves the times for the next one it writes.
        let mut t = ScpTracker::new(parse_command("scp -p -d -t /srv").unwrap());
        let mut ev = t.answer(b"\0");
        ev.extend(acked(&mut t, b"T946684800 0 5 0\n"));
        ev.extend(t.feed(b"C0644 1 taken\n"));
        ev.extend(t.answer(b"\x01scp: /srv/taken: Is a directory\n"));
        ev.extend(acked(&mut t, b"C0644 1 next\nx\0C0644 1 after\nx\0"));
        assert_eq!(
            times(&ev),
            [
                ("/srv/next".into(), Some(946_684_800), Some(5)),
                ("/srv/after".into(), None, None)
            ]
        );
        // Seconds beyond a time_t: read, and no times set (an earlier T's included).
        let mut t = ScpTracker::new(parse_command("scp -p -d -t /srv").unwrap());
        let ev = acked(&mut t, b"T1 0 1 0\nT99999999999999999999 0 1 0\nC0644 1 z\nx\0");
        assert!(untracked(&ev).is_empty(), "{ev:?}");
        assert_eq!(times(&ev), [("/srv/z".into(), None, None)]);
    }

    /// Where each file lands, as the receiving scp decides it.
    #[test]
    fn paths_are_where_the_receiver_puts_the_files() {
        let landed = |command: &str, stream: &[u8]| -> Vec<(String, Option<String>)> {
            let mut t = ScpTracker::new(parse_command(command).unwrap());
            acked(&mut t, stream)
                .into_iter()
                .filter_map(|m| match m {
                    Meta::FileTransfer {
                        path,
                        sent_as,
                        directory: false,
                        ..
                    } => Some((path, sent_as)),
                    _ => None,
                })
                .collect()
        };
        let one = b"C0644 1 local.txt\nx\0";
        let tree = b"D0755 0 tree\nC0644 1 f\nx\0D0755 0 sub\nC0644 1 g\nx\0E\nE\n";
        let at = |p: &str| (p.to_owned(), None);
        // Into a path that must be a directory.
        for into in ["scp -d -t /srv/in", "scp -t /srv/in/", "scp -t /srv/in//"] {
            assert_eq!(landed(into, one), [at("/srv/in/local.txt")], "{into}");
        }
        assert_eq!(landed("scp -t .", one), [at("./local.txt")]);
        assert_eq!(landed("scp -t /", one), [at("/local.txt")]);
        assert_eq!(
            landed("scp -r -d -t /srv/in", tree),
            [at("/srv/in/tree/f"), at("/srv/in/tree/sub/g")]
        );
        // Into a path that is a directory only if the target has one there: the path,
        // and the sender's names.
        assert_eq!(
            landed("scp -t /srv/new.txt", one),
            [("/srv/new.txt".into(), Some("local.txt".into()))]
        );
        assert_eq!(
            landed("scp -r -t /srv/copy", tree),
            [
                ("/srv/copy/f".into(), Some("tree/f".into())),
                ("/srv/copy/sub/g".into(), Some("tree/sub/g".into()))
            ]
        );
        // A download's first record is the path asked for.
        assert_eq!(landed("scp -f /etc/hosts", b"C0644 1 hosts\nx\0"), [at("/etc/hosts")]);
        assert_eq!(
            landed("scp -r -f /srv/tree/", tree),
            [at("/srv/tree/f"), at("/srv/tree/sub/g")]
        );
    }

    /// A file the sender cannot read is a warning (`\x01`), in place of a record or of
    /// the byte after a file's data; the files after it are still recorded. A fatal
    /// error (`\x02`), or any other byte after a file's data, ends the receiver.
    #[test]
    fn warnings_do_not_stop_the_files_after_them_and_fatal_errors_end_the_stream() {
        let mut t = tracker(ScpDirection::Download, "dir");
        let stream = b"D0755 0 dir\n\x01scp: dir/secret: Permission denied\nC0644 2 b\nhi\x01scp: dir/b: read error\nC0644 1 c\nx\0E\nE\n";
        let ev = acked(&mut t, stream);
        assert_eq!(files(&ev), [("dir/b", 2), ("dir/c", 1)], "{ev:?}");
        assert!(untracked(&ev).is_empty());
        assert!(matches!(t.state, State::Ended), "E at the top ends the receiver");
        // Ended by a fatal error, or by a byte after a file's data that is neither 0 nor
        // 1: quiet to the end of its message; what follows is not a file to OpenSSH's
        // receiver, and is said to be unfollowed in case the receiver is another.
        for (end, before) in [
            (&b"\x02scp: protocol error\n"[..], 0),
            (b"C0644 1 x\nx\x05oops\n", 1),
            (b"D0755 0 d\nE\nE\n", 0),
        ] {
            let mut t = tracker(ScpDirection::Upload, "/u/");
            let ev = acked(&mut t, end);
            assert!(untracked(&ev).is_empty() && files(&ev).len() == before, "{ev:?}");
            let ev = acked(&mut t, b"C0644 1 y\ny\0");
            assert!(files(&ev).is_empty(), "{ev:?}");
            assert_eq!(untracked(&ev), ["bytes after the receiving scp stopped reading"]);
        }
    }

    /// Records OpenSSH's scp refuses are not files: the stream is no longer followed,
    /// and the recording says so.
    #[test]
    fn records_scp_refuses_end_the_following_and_say_why() {
        for bad in [
            &b"C0644 +5 a\n"[..],
            b"C0644 -1 a\n",
            b"C0644 9223372036854775808 a\n",
            b"C064 5 a\n",
            b"C0648 5 a\n",
            b"C06440 5 a\n",
            b"C0644 5\n",
            b"C0644 5 \n",
            b"C0644 5 ../x\n",
            b"C0644 5 .\n",
            b"D0755 0 ..\n",
            b"\0C0644 1 a\n",
            b"\nC0644 1 a\n",
            b"Cnot-a-number name\n",
            b"X\n",
        ] {
            let mut t = tracker(ScpDirection::Upload, "/u/");
            let mut with_file = bad.to_vec();
            with_file.extend_from_slice(b"C0644 1 f\nx\0");
            let ev = acked(&mut t, &with_file);
            assert!(files(&ev).is_empty(), "{:?}: {ev:?}", String::from_utf8_lossy(bad));
            assert_eq!(untracked(&ev).len(), 1, "{:?}: {ev:?}", String::from_utf8_lossy(bad));
        }
        let mut t = tracker(ScpDirection::Upload, "/u/");
        let ok = acked(&mut t, b"C0644 9223372036854775807 big\n");
        assert!(
            ok.is_empty() && matches!(t.state, State::Data { .. }),
            "the largest size"
        );
    }

    /// What the receiver reads differently from a naive reading: a NUL ends a record, a
    /// message ends where the receiver's buffer does, a time record has a strict form,
    /// and a directory needs -r.
    #[test]
    fn records_are_read_as_the_receiver_reads_them() {
        // The file written is `.bashrc`, whatever follows the NUL.
        let mut t = tracker(ScpDirection::Upload, "/u/");
        let ev = acked(&mut t, b"C0644 1 .bashrc\0.bak\nx\0");
        assert_eq!(files(&ev), [("/u/.bashrc", 1)]);
        let mut t = tracker(ScpDirection::Upload, "/u/");
        assert_eq!(untracked(&acked(&mut t, b"C0644 1 ..\0x\nx\0")).len(), 1);
        // A warning filling the receiver's buffer, then a record inside the "message":
        // not followed, and said; one that fits is skipped whole.
        for (status, fits) in [(&b"\x01"[..], MAX_LINE - 1), (b"", MAX_LINE)] {
            let mut over = b"C0644 0 a\n\0".to_vec();
            let after_data = status.is_empty();
            if after_data {
                over = b"C0644 1 a\nx\x01".to_vec();
            } else {
                over.extend_from_slice(status);
            }
            let mut ok = over.clone();
            ok.extend(std::iter::repeat_n(b'A', fits));
            ok.extend_from_slice(b"\nC0644 1 b\ny\0");
            over.extend(std::iter::repeat_n(b'A', fits));
            over.extend_from_slice(b"C0644 0 .bashrc\n");
            let mut t = tracker(ScpDirection::Upload, "/u/");
            let ev = acked(&mut t, &ok);
            assert_eq!(files(&ev).last(), Some(&("/u/b", 1)), "{fits}: {ev:?}");
            let mut t = tracker(ScpDirection::Upload, "/u/");
            for piece in over.chunks(700) {
                acked(&mut t, piece);
            }
            assert!(matches!(t.state, State::Done), "{fits}");
        }
        for bad in [&b"T1 0 2\n"[..], b"T1 0 2 1000000\n", b"T1 x 2 0\n", b"T 1 0 2 0\n"] {
            let mut t = tracker(ScpDirection::Upload, "/u/");
            assert_eq!(
                untracked(&acked(&mut t, bad)).len(),
                1,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut t = ScpTracker::new(parse_command("scp -t /u/").unwrap());
        let ev = acked(&mut t, b"D0755 0 d\nC0644 1 f\nx\0");
        assert_eq!(untracked(&ev), ["a directory without -r: \"D0755 0 d\""]);
    }

    /// A record the receiver refuses carries no data: the sender's next bytes are its
    /// next record, whatever a reading of the sender's side alone would make of them.
    #[test]
    fn what_the_receiver_refuses_carries_no_data() {
        // The receiver cannot open `d` (a directory there) and reads on: the bytes the
        // sender sized as `d`'s data are a record of their own, and a file.
        let key = b"C0600 4 authorized_keys\nssh!\0";
        let mut stream = format!("C0644 {} d\n", key.len()).into_bytes();
        stream.extend_from_slice(key);
        let mut t = tracker(ScpDirection::Upload, "/home/u/");
        let mut ev = t.answer(b"\0");
        ev.extend(t.feed(&stream));
        assert!(ev.is_empty(), "all of it waits for the answers: {ev:?}");
        ev.extend(t.answer(b"\x01scp: /home/u/d: Is a directory\n"));
        ev.extend(t.answer(b"\0\0"));
        assert_eq!(files(&ev), [("/home/u/authorized_keys", 4)]);
        assert!(untracked(&ev).is_empty() && t.awaiting.is_none(), "{ev:?}");
        // A directory the receiver cannot make is not entered.
        let mut t = tracker(ScpDirection::Upload, "/u/");
        t.answer(b"\0");
        t.feed(b"D0755 0 d\n");
        t.answer(b"\x01scp: /u/d: Permission denied\n");
        assert_eq!(files(&acked(&mut t, b"C0644 1 f\nx\0")), [("/u/f", 1)]);
        // An answer to nothing; a sender far ahead of the answers; a receiver that
        // could not start, and a fatal answer, after which the sender sends on.
        let mut t = tracker(ScpDirection::Upload, "/u/");
        t.answer(b"\0");
        assert_eq!(
            untracked(&t.answer(b"\0")),
            ["the receiver answered a record that was not sent"]
        );
        let mut t = tracker(ScpDirection::Upload, "/u/");
        t.answer(b"\0");
        t.feed(b"C0644 100000 big\n");
        assert_eq!(
            untracked(&t.feed(&vec![0; MAX_AHEAD + 1])),
            ["the sender ran ahead of the receiver's answers"]
        );
        for answers in [&b"\x01scp: /u: Not a directory\n"[..], b"\0\x02scp: gone\n"] {
            let mut t = tracker(ScpDirection::Upload, "/u/");
            t.answer(answers);
            assert_eq!(
                untracked(&t.feed(b"C0644 1 f\nx\0")),
                ["bytes after the receiving scp stopped reading"]
            );
        }
        let mut t = tracker(ScpDirection::Upload, "/u/");
        assert_eq!(untracked(&t.answer(b"\x07")).len(), 1);
    }

    #[test]
    fn directories_are_followed_only_so_deep() {
        let mut t = tracker(ScpDirection::Upload, "/u/");
        let mut stream = b"D0755 0 d\n".repeat(MAX_DEPTH);
        stream.extend_from_slice(b"C0644 1 f\nx\0");
        assert_eq!(files(&acked(&mut t, &stream)).len(), 1, "at the limit");
        let mut t = tracker(ScpDirection::Upload, "/u/");
        let mut stream = b"D0755 0 d\n".repeat(MAX_DEPTH + 1);
        stream.extend_from_slice(b"C0644 1 f\nx\0");
        let ev = acked(&mut t, &stream);
        assert!(files(&ev).is_empty(), "past the limit the stream is no longer followed");
        assert_eq!(untracked(&ev), ["directories nested deeper than 256: \"D0755 0 d\""]);
    }

    #[test]
    fn overlong_lines_and_garbage_stop_following_without_panicking() {
        let mut t = tracker(ScpDirection::Download, "x");
        let mut long = b"C0644 1 ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        let ev = acked(&mut t, &long);
        assert_eq!(untracked(&ev), ["a control line longer than 2046 bytes"]);
        assert!(acked(&mut t, b"\nC0644 1 f\nx\0").is_empty(), "said once, then silent");
        let mut t = tracker(ScpDirection::Download, "x");
        let mut msg = vec![1u8];
        msg.extend(std::iter::repeat_n(b'm', MAX_LINE + 1));
        assert_eq!(untracked(&acked(&mut t, &msg)).len(), 1);
        let mut t = tracker(ScpDirection::Download, "x");
        assert_eq!(untracked(&acked(&mut t, &[0xff; 10000])).len(), 1);
    }

    /// A file or directory name the sender gives may be any bytes but `/` and NUL: one
    /// that is not UTF-8 is recorded with its exact bytes, in the path and the name it
    /// was sent as, down a directory that is not UTF-8 either.
    #[test]
    fn names_that_are_not_utf8_are_recorded_exactly() {
        let mut t = ScpTracker::new(parse_command("scp -r -t /srv/in").unwrap());
        let ev = acked(&mut t, b"D0755 0 d\xe9\nC0644 2 f\xff\nhi\0E\n");
        let got: Vec<_> = ev
            .iter()
            .map(|m| match m {
                Meta::FileTransfer {
                    path,
                    path_hex,
                    sent_as,
                    sent_as_hex,
                    ..
                } => (
                    Name::from_recorded(path, path_hex.as_deref()),
                    sent_as.as_ref().map(|s| Name::from_recorded(s, sent_as_hex.as_deref())),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (Name::new(b"/srv/in".to_vec()), Some(Name::new(b"d\xe9".to_vec()))),
                (
                    Name::new(b"/srv/in/f\xff".to_vec()),
                    Some(Name::new(b"d\xe9/f\xff".to_vec()))
                )
            ]
        );
        assert!(matches!(&ev[1], Meta::FileTransfer { path, path_hex: Some(h), .. }
            if path == "/srv/in/f\u{fffd}" && h == &hex::encode(b"/srv/in/f\xff")));
        // The directory's own path is the target's (UTF-8): no bytes beside it.
        assert!(matches!(
            &ev[0],
            Meta::FileTransfer {
                path_hex: None,
                sent_as_hex: Some(_),
                ..
            }
        ));
    }
}
