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

/// A strictly parsed `scp -t|-f [opts] PATH` command; anything else (extra words, shell
/// syntax) is not scp and is judged as a plain exec.
pub fn parse_command(command: &str) -> Option<(ScpDirection, String)> {
    const SHELL: &[char] = &[
        ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '*', '?', '[', ']', '\'', '"', '\\', '\n', '\r', '#',
        '~',
    ];
    if command.contains(SHELL) {
        return None;
    }
    let mut words = command.split_whitespace();
    if words.next()? != "scp" {
        return None;
    }
    let mut direction = None;
    let mut path = None;
    for w in words {
        match w {
            "-t" => direction = direction.xor(Some(ScpDirection::Upload)).or(None),
            "-f" => direction = direction.xor(Some(ScpDirection::Download)).or(None),
            "-r" | "-p" | "-d" | "-v" | "-q" | "--" => {}
            w if w.starts_with('-') => return None,
            w => {
                if path.replace(w.to_owned()).is_some() {
                    return None;
                }
            }
        }
    }
    Some((direction?, path.unwrap_or_else(|| ".".into())))
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
                    (Some(size), Some(name)) if !name.contains('/') => {
                        self.state = if size == 0 {
                            State::Data {
                                name,
                                left: 0,
                                size,
                                hasher: Sha256::new(),
                            }
                        } else {
                            State::Data {
                                name,
                                left: size,
                                size,
                                hasher: Sha256::new(),
                            }
                        };
                        if size == 0 {
                            // Zero-length file: finish at once through the data path.
                            if let State::Data { .. } = self.state {}
                        }
                    }
                    _ => self.broken = true,
                }
            }
            Some('D') => match parts.nth(1) {
                Some(name) if !name.contains('/') && name != ".." => self.dirs.push(name.to_owned()),
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
        for bad in [
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
    fn garbage_stops_following_without_panicking() {
        let mut t = ScpTracker::new(ScpDirection::Download, "x".into());
        assert!(t.feed(b"Cnot-a-number name\n").is_empty());
        assert!(t.feed(&[0xff; 10000]).is_empty());
    }
}
