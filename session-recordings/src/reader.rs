use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use crate::event::{kind, DataDirection, Event, Header, Meta};
use crate::{MAGIC, MAX_RECORD_PAYLOAD, VERSION};

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Herse recording (bad magic)")]
    BadMagic,
    #[error("unsupported recording version {0}")]
    Version(u16),
    #[error("corrupt recording at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
}

/// Reads a recording written by [`crate::FileRecorder`], event by event.
pub struct RecordingReader<R> {
    input: R,
    offset: u64,
    header: Header,
    /// Set when the file ended inside a record (a crash while writing).
    truncated: bool,
}

impl RecordingReader<BufReader<std::fs::File>> {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::new(BufReader::new(std::fs::File::open(path)?))
    }
}

impl<R: Read> RecordingReader<R> {
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(ReadError::BadMagic);
        }
        let mut v = [0u8; 2];
        input.read_exact(&mut v)?;
        let version = u16::from_be_bytes(v);
        if version != VERSION {
            return Err(ReadError::Version(version));
        }
        let mut l = [0u8; 4];
        input.read_exact(&mut l)?;
        let len = u32::from_be_bytes(l) as usize;
        if len > MAX_RECORD_PAYLOAD {
            return Err(ReadError::Corrupt {
                offset: 10,
                what: format!("header length {len} too large"),
            });
        }
        let mut json = vec![0u8; len];
        input.read_exact(&mut json)?;
        let header = serde_json::from_slice(&json).map_err(|e| ReadError::Corrupt {
            offset: 14,
            what: format!("header: {e}"),
        })?;
        Ok(Self {
            input,
            offset: 14 + len as u64,
            header,
            truncated: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// True once [`Self::next_event`] met a record cut short by the end of the file.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The next event, `Ok(None)` at the end of the file.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        let mut head = [0u8; 17];
        match read_full(&mut self.input, &mut head)? {
            0 => return Ok(None),
            17 => {}
            _ => {
                self.truncated = true;
                return Ok(None);
            }
        }
        let at = self.offset;
        let kind_byte = head[0];
        let t_micros = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
        let channel = u32::from_be_bytes(head[9..13].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[13..17].try_into().unwrap_or_default()) as usize;
        if len > MAX_RECORD_PAYLOAD {
            return Err(ReadError::Corrupt {
                offset: at,
                what: format!("record length {len} too large"),
            });
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut self.input, &mut payload)? != len {
            self.truncated = true;
            return Ok(None);
        }
        self.offset += 17 + len as u64;
        let direction = match kind_byte {
            kind::INPUT => DataDirection::Input,
            kind::OUTPUT => DataDirection::Output,
            kind::STDERR => DataDirection::Stderr,
            kind::META => {
                let meta: Meta = serde_json::from_slice(&payload).map_err(|e| ReadError::Corrupt {
                    offset: at,
                    what: format!("event: {e}"),
                })?;
                return Ok(Some(Event::Meta {
                    t_micros,
                    channel,
                    meta,
                }));
            }
            other => {
                return Err(ReadError::Corrupt {
                    offset: at,
                    what: format!("unknown record kind {other}"),
                })
            }
        };
        Ok(Some(Event::Data {
            t_micros,
            channel,
            direction,
            data: payload,
        }))
    }

    /// Every remaining event.
    pub fn events(mut self) -> Result<(Header, Vec<Event>, bool), ReadError> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event()? {
            events.push(e);
        }
        Ok((self.header, events, self.truncated))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FileRecorder, Recorder};

    fn header() -> Header {
        Header {
            session_id: "s1".into(),
            user: "alice".into(),
            client_addr: "127.0.0.1:5000".into(),
            workstation: None,
            target: "db1".into(),
            target_addr: "127.0.0.1:22".into(),
            tier: "db".into(),
            login: "root".into(),
            role: "dba".into(),
            grant: None,
            decision: "role dba allows root on db1".into(),
            started_at_micros: 1,
        }
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("herse-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.herserec");
        let _ = std::fs::remove_file(&path);
        let rec = FileRecorder::create(&path, &header()).unwrap();
        rec.meta(0, &Meta::Exec { command: "ls".into() }).unwrap();
        rec.data(0, DataDirection::Output, b"file\n").unwrap();
        rec.meta(0, &Meta::ExitStatus { code: 3 }).unwrap();
        rec.finish("client closed").unwrap();
        assert!(FileRecorder::create(&path, &header()).is_err(), "never overwrites");

        let (h, events, truncated) = RecordingReader::open(&path).unwrap().events().unwrap();
        assert_eq!(h, header());
        assert!(!truncated);
        assert_eq!(events.len(), 4);
        assert!(matches!(&events[1], Event::Data { data, direction: DataDirection::Output, .. } if data == b"file\n"));
        assert!(matches!(&events[3], Event::Meta { meta: Meta::End { reason }, .. } if reason == "client closed"));

        // Cut the file inside the last record: the reader stops and says so.
        let bytes = std::fs::read(&path).unwrap();
        let cut = &bytes[..bytes.len() - 3];
        let (_, events, truncated) = RecordingReader::new(cut).unwrap().events().unwrap();
        assert!(truncated);
        assert_eq!(events.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            RecordingReader::new(&b"NOTHERSE.."[..]),
            Err(ReadError::BadMagic)
        ));
        let mut bad = Vec::new();
        bad.extend_from_slice(MAGIC);
        bad.extend_from_slice(&VERSION.to_be_bytes());
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(RecordingReader::new(&bad[..]), Err(ReadError::Corrupt { .. })));
    }
}
