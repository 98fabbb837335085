//! The legacy scp protocol (`scp -O`, exec `scp -t` / `scp -f`): recognising the command
//! and following the file stream, so a transfer is recorded with its path, size and hash.

use sha2::{Digest, Sha256};

use crate::event::Meta;

/// Which way files flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScpDirection {
    /// `scp -t`: the client sends files to the target.
    Upload,
    /// `scp -f`: the target sends files to the client.
    Download,
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
pub fn parse_command(command: &str) -> Option<(ScpDirection, String)> {
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
    Some((direction, path.to_owned()))
}

enum State {
    Line(Vec<u8>),
    Data {
        name: String,
        left: u64,
        size: u64,
        hasher: Sha256,
    },
    /// The status byte that follows a file's data.
    Trailer,
}

/// Follows the data-carrying direction of an scp stream.
pub struct ScpTracker {
    direction: ScpDirection,
    target: String,
    dirs: Vec<String>,
    state: State,
    broken: bool,
}

const MAX_LINE: usize = 8192;
/// Directories deep a stream is followed (each level is a line of up to [`MAX_LINE`]).
const MAX_DEPTH: usize = 256;

impl ScpTracker {
    pub fn new(direction: ScpDirection, target: String) -> Self {
        ScpTracker {
            direction,
            target,
            dirs: Vec::new(),
            state: State::Line(Vec::new()),
            broken: false,
        }
    }

    fn path(&self, name: &str) -> String {
        let mut p = self.target.clone();
        for d in &self.dirs {
            p.push('/');
            p.push_str(d);
        }
        if self.direction == ScpDirection::Upload || !self.dirs.is_empty() {
            p.push('/');
            p.push_str(name);
        }
        p
    }

    /// Feed bytes of the data-carrying direction; returns finished transfers. A stream
    /// that stops making sense is no longer followed (the raw bytes stay recorded).
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Meta> {
        let mut out = Vec::new();
        while !data.is_empty() && !self.broken {
            match &mut self.state {
                State::Line(line) => {
                    let (chunk, rest, done) = match data.iter().position(|b| *b == b'\n') {
                        Some(i) => (&data[..i], &data[i + 1..], true),
                        None => (data, &[][..], false),
                    };
                    // A status byte (0) before a control line is an acknowledgement.
                    let chunk: Vec<u8> = if line.is_empty() {
                        chunk.iter().copied().skip_while(|b| *b == 0).collect()
                    } else {
                        chunk.to_vec()
                    };
                    line.extend_from_slice(&chunk);
                    data = rest;
                    if line.len() > MAX_LINE {
                        self.broken = true;
                        break;
                    }
                    if done {
                        let text = String::from_utf8_lossy(line).into_owned();
                        self.state = State::Line(Vec::new());
                        self.control(&text);
                    }
                }
                State::Data { left, hasher, .. } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    hasher.update(&data[..n]);
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        if let State::Data { name, size, hasher, .. } =
                            std::mem::replace(&mut self.state, State::Trailer)
                        {
                            out.push(Meta::FileTransfer {
                                protocol: "scp".into(),
                                upload: self.direction == ScpDirection::Upload,
                                path: self.path(&name),
                                bytes: size,
                                sha256: Some(hex::encode(hasher.finalize())),
                            });
                        }
                    }
                }
                State::Trailer => {
                    data = &data[1..];
                    self.state = State::Line(Vec::new());
                }
            }
        }
        out
    }

    fn control(&mut self, line: &str) {
        let mut parts = line.splitn(3, ' ');
        let head = parts.next().unwrap_or("");
        match head.chars().next() {
            Some('C') => {
                let size = parts.next().and_then(|s| s.parse::<u64>().ok());
                let name = parts.next().map(str::to_owned);
                match (size, name) {
                    // A zero-length file finishes when its trailer byte arrives.
                    (Some(size), Some(name)) if !name.contains('/') => {
                        self.state = State::Data {
                            name,
                            left: size,
                            size,
                            hasher: Sha256::new(),
                        };
                    }
                    _ => self.broken = true,
                }
            }
            Some('D') => match parts.nth(1) {
                Some(name) if !name.contains('/') && name != ".." && self.dirs.len() < MAX_DEPTH => {
                    self.dirs.push(name.to_owned())
                }
                _ => self.broken = true,
            },
            Some('E') => {
                self.dirs.pop();
            }
            Some('T') => {}
            _ => self.broken = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_strictly() {
        assert_eq!(
            parse_command("scp -t /tmp/x"),
            Some((ScpDirection::Upload, "/tmp/x".into()))
        );
        assert_eq!(
            parse_command("scp -r -p -f dir"),
            Some((ScpDirection::Download, "dir".into()))
        );
        assert_eq!(parse_command("scp -t ."), Some((ScpDirection::Upload, ".".into())));
        // What OpenSSH's scp sends, every flag on; `--` before a path that starts with -.
        assert_eq!(
            parse_command("scp -v -r -p -d -t /srv/app/releases"),
            Some((ScpDirection::Upload, "/srv/app/releases".into()))
        );
        assert_eq!(
            parse_command("scp -f -- -odd-name"),
            Some((ScpDirection::Download, "-odd-name".into()))
        );
        assert_eq!(
            parse_command("scp -f données/été.txt"),
            Some((ScpDirection::Download, "données/été.txt".into()))
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

    #[test]
    fn upload_stream_yields_path_size_hash() {
        let mut t = ScpTracker::new(ScpDirection::Upload, "/home/u".into());
        let mut stream = b"C0644 11 hello.txt\nhello world\0D0755 0 sub\nC0600 3 a\nabc\0E\n".to_vec();
        stream.insert(0, 0);
        let mut ev = Vec::new();
        for piece in stream.chunks(4) {
            ev.extend(t.feed(piece));
        }
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(
            matches!(&ev[0], Meta::FileTransfer { path, bytes: 11, sha256: Some(h), upload: true, .. }
            if path == "/home/u/hello.txt" && *h == hex::encode(Sha256::digest(b"hello world")))
        );
        assert!(matches!(&ev[1], Meta::FileTransfer { path, bytes: 3, .. } if path == "/home/u/sub/a"));
    }

    #[test]
    fn directories_are_followed_only_so_deep() {
        let mut t = ScpTracker::new(ScpDirection::Upload, "/u".into());
        let mut stream = b"D0755 0 d\n".repeat(MAX_DEPTH);
        stream.extend_from_slice(b"C0644 1 f\nx\0");
        assert_eq!(t.feed(&stream).len(), 1, "at the limit");
        let mut t = ScpTracker::new(ScpDirection::Upload, "/u".into());
        let mut stream = b"D0755 0 d\n".repeat(MAX_DEPTH + 1);
        stream.extend_from_slice(b"C0644 1 f\nx\0");
        assert!(
            t.feed(&stream).is_empty(),
            "past the limit the stream is no longer followed"
        );
        assert!(t.broken);
    }

    #[test]
    fn garbage_stops_following_without_panicking() {
        let mut t = ScpTracker::new(ScpDirection::Download, "x".into());
        assert!(t.feed(b"Cnot-a-number name\n").is_empty());
        assert!(t.feed(&[0xff; 10000]).is_empty());
    }
}
