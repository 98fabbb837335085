//! `hersectl recordings export`: a verified recording as asciicast v2, a transcript or
//! JSON lines, in memory that does not grow with the recording.
//!
//! The recording is read more than once instead of held ([`Checked`]): once to verify
//! it, once more for asciicast to pick the terminal channel its header describes, and
//! once to write the vouched events. An export that fails leaves no output file behind.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use herse::recordings_query::strip_ansi;
use herse::store::SessionRow;
use session_recordings::{shown, DataDirection, Event, Meta};

use crate::commands::Failure;
use crate::output;
use crate::play::TerminalFinder;
use crate::recordings::{failed, sftp_op_words, transfer_words, ExportFormat};
use crate::reread::Checked;

/// Export the recording at `path` of session `row` to `to` (a file, written whole or not
/// at all) or to standard output.
pub fn export(
    path: &Path,
    key: &VerifyingKey,
    row: &SessionRow,
    format: ExportFormat,
    to: Option<&Path>,
) -> Result<(), Failure> {
    let checked = Checked::first_read(path, key, row, "exported")?;
    let first = &checked.verified;
    let vouched = checked.vouched();
    if first.events > vouched {
        eprintln!(
            "hersectl: recording of session {} is not sealed (the session is live, or was cut \
             short): the {} events after its last checkpoint are not authenticated and are left \
             out (`hersectl recordings show` lists them apart)",
            row.id,
            first.events - vouched
        );
    }
    let mut exporter = match format {
        ExportFormat::Asciicast => {
            let mut finder = TerminalFinder::default();
            checked.read_again(true, |e, _| {
                finder.see(e);
                Ok(())
            })?;
            Exporter::Asciicast(Asciicast::new(&first.header, finder.found()))
        }
        ExportFormat::Text => Exporter::Text(Transcript::default()),
        ExportFormat::Json => Exporter::Json,
    };
    let mut write = |out: &mut dyn Write| -> Result<(), Failure> {
        exporter.start(out)?;
        checked.read_again(true, |e, _| Ok(exporter.event(e, out)?))?;
        Ok(out.flush()?)
    };
    match to {
        Some(p) => write_whole(p, write),
        None => {
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
            write(&mut out)
        }
    }
}

/// Write the export to `p`. A new file is written as a temporary file beside it (mode
/// 0600: a recording holds what was typed), renamed to `p` only once `write` succeeded,
/// so an export that fails leaves no partial file that could pass for whole. A path that
/// exists (a file, a link, `/dev/stdout`, a pipe) is written through, as before, keeping
/// its owner, mode and links; if the export fails, a regular file there is emptied.
fn write_whole(p: &Path, write: impl FnOnce(&mut dyn Write) -> Result<(), Failure>) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::symlink_metadata(p).is_ok() {
        // (Created here only if it went away since, or is a dangling link: 0600 then.)
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))?;
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let mut out = BufWriter::with_capacity(1 << 16, file);
        let done = write(&mut out).and_then(|()| Ok(out.flush()?));
        if done.is_err() && regular {
            // Without flushing again: what failed to be written stays unwritten.
            let (file, _) = out.into_parts();
            let _ = file.set_len(0);
        }
        return done;
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = p
        .file_name()
        .ok_or_else(|| failed(format!("{} is not a file name", p.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.partial", std::process::id()));
    let tmp = dir.join(tmp_name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| failed(format!("cannot create {}: {e}", tmp.display())))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let done = write(&mut out).and_then(|()| {
        let file = out.into_inner().map_err(|e| failed(e.into_error()))?;
        file.sync_all()?;
        // Not over a file that appeared meanwhile: a link fails where a rename would
        // replace it (a file system without links gets the rename).
        match std::fs::hard_link(&tmp, p) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => std::fs::rename(&tmp, p),
            r => r,
        }
        .map_err(|e| failed(format!("cannot write {}: {e}", p.display())))
    });
    let _ = std::fs::remove_file(&tmp);
    done
}

enum Exporter {
    Asciicast(Asciicast),
    Text(Transcript),
    Json,
}

impl Exporter {
    fn start(&mut self, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Exporter::Asciicast(a) => writeln!(out, "{}", a.head),
            Exporter::Text(_) | Exporter::Json => Ok(()),
        }
    }

    fn event(&mut self, e: &Event, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Exporter::Asciicast(a) => a.event(e, out),
            Exporter::Text(t) => t.event(e, out),
            Exporter::Json => json_line(e, out),
        }
    }
}

/// Assemble UTF-8 text from byte chunks that may split a character.
#[derive(Default)]
pub struct Utf8Joiner {
    carry: Vec<u8>,
}

impl Utf8Joiner {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.carry.extend_from_slice(data);
        let valid_up_to = match std::str::from_utf8(&self.carry) {
            Ok(_) => self.carry.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let rest = self.carry.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }
}

/// asciicast v2 of the terminal channel (the one with a pty, else the first with output).
struct Asciicast {
    head: serde_json::Value,
    channel: u32,
    joiner: Utf8Joiner,
}

impl Asciicast {
    fn new(header: &session_recordings::Header, (channel, term, cols, rows): (u32, String, u32, u32)) -> Self {
        let head = serde_json::json!({
            "version": 2, "width": cols, "height": rows, "timestamp": header.started_at_micros / 1_000_000,
            "env": {"TERM": term}, "title": format!("{}@{} via Herse ({})", header.login, header.target, header.user),
        });
        Asciicast {
            head,
            channel,
            joiner: Utf8Joiner::default(),
        }
    }

    fn event(&mut self, e: &Event, out: &mut dyn Write) -> io::Result<()> {
        if let Some((t_micros, data)) = e.output_on(self.channel) {
            let text = self.joiner.push(data);
            if !text.is_empty() {
                writeln!(out, "{}", serde_json::json!([t_micros as f64 / 1e6, "o", text]))?;
            }
        }
        Ok(())
    }
}

/// What starts each line of a session's own output in a transcript. The gateway's lines
/// start with a time, so output that imitates one (`  9.000 #0 [session ended: …]`)
/// still reads as output.
const OUTPUT_MARK: &str = "| ";

/// A readable transcript: commands, output without terminal escapes, exit codes.
#[derive(Default)]
struct Transcript {
    joiners: HashMap<u32, Utf8Joiner>,
    /// Something was written, and the last of it was not a newline.
    mid_line: bool,
}

impl Transcript {
    fn event(&mut self, e: &Event, out: &mut dyn Write) -> io::Result<()> {
        match e {
            Event::Meta {
                t_micros,
                channel,
                meta,
            } => {
                if let Some(l) = meta_line(meta) {
                    if self.mid_line {
                        out.write_all(b"\n")?;
                    }
                    let t = *t_micros as f64 / 1e6;
                    writeln!(out, "{t:>9.3} #{channel} {}", output::clean(&l))?;
                    self.mid_line = false;
                }
            }
            Event::Data {
                channel,
                direction: DataDirection::Output | DataDirection::Stderr,
                data,
                ..
            } => {
                let text = strip_ansi(&self.joiners.entry(*channel).or_default().push(data));
                let mut line = String::with_capacity(text.len() + 8);
                for c in text.chars() {
                    if !self.mid_line {
                        line.push_str(OUTPUT_MARK);
                        self.mid_line = true;
                    }
                    // Tabs and newlines are kept; what would reorder the text shown
                    // (bidirectional overrides) is written out.
                    match c {
                        '\n' => {
                            line.push('\n');
                            self.mid_line = false;
                        }
                        '\t' => line.push('\t'),
                        c => line.push_str(&output::clean(c.encode_utf8(&mut [0; 4]))),
                    }
                }
                out.write_all(line.as_bytes())?;
            }
            Event::Data { .. } => {}
        }
        Ok(())
    }
}

/// A transcript line for a meta event, `None` for those it leaves out.
fn meta_line(meta: &Meta) -> Option<String> {
    Some(match meta {
        Meta::Exec { command, command_hex } => format!("$ {}", shown(command, command_hex.as_deref())),
        Meta::Shell => "[shell]".into(),
        Meta::Subsystem { name } => format!("[subsystem {name}]"),
        Meta::ExitStatus { code } => format!("[exit {code}]"),
        Meta::ExitSignal { signal, message, .. } => match message {
            Some(m) => format!("[killed by {signal}: {m}]"),
            None => format!("[killed by {signal}]"),
        },
        Meta::Denied { request, reason } => format!("[denied: {request}: {reason}]"),
        Meta::Undelivered { reason } => format!("[the client's last input did not reach the target: {reason}]"),
        Meta::SftpOp { .. } => format!("[sftp {}]", sftp_op_words(meta)),
        Meta::FileTransfer { .. } => format!("[{}]", transfer_words(meta)),
        Meta::Untracked { protocol, reason } => format!("[{protocol} no longer followed: {reason}]"),
        Meta::SftpFile {
            path,
            path_hex,
            bytes_read,
            bytes_written,
            ..
        } => format!(
            "[sftp file {}: read {bytes_read} B, written {bytes_written} B]",
            shown(path, path_hex.as_deref())
        ),
        Meta::End { reason } => format!("[session ended: {reason}]"),
        Meta::Unrecognised => "[an event of a type this hersectl does not know]".to_owned(),
        _ => return None,
    })
}

fn json_line(e: &Event, out: &mut dyn Write) -> io::Result<()> {
    let v = match e {
        Event::Data {
            t_micros,
            channel,
            direction,
            data,
        } => serde_json::json!({
            "t": *t_micros as f64 / 1e6, "channel": channel, "type": direction, "bytes": data.len(),
            "data": String::from_utf8_lossy(data),
        }),
        Event::Meta {
            t_micros,
            channel,
            meta,
        } => serde_json::json!({
            "t": *t_micros as f64 / 1e6, "channel": channel, "type": "meta", "meta": meta,
        }),
    };
    writeln!(out, "{v}")
}

/// The transcript of `events`, whole (for tests).
#[cfg(test)]
pub fn transcript(events: &[Event]) -> String {
    let mut t = Transcript::default();
    let mut out = Vec::new();
    for e in events {
        t.event(e, &mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn a_failed_export_leaves_no_file_and_an_existing_one_is_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hersectl-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.cast");
        let r = write_whole(&p, |out| {
            out.write_all(b"half")?;
            Err(failed("broken"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "a partial file was left");
        assert!(write_whole(&p, |out| Ok(out.write_all(b"whole")?)).is_ok());
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // An existing file keeps its mode; through a link, the link stays a link.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("latest.cast");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(write_whole(&link, |out| Ok(out.write_all(b"again")?)).is_ok());
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"again");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        // A failed export into an existing file leaves it empty, not half written.
        let r = write_whole(&p, |out| {
            out.write_all(b"half")?;
            Err(failed("broken"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        // Not a regular file: written to, not replaced.
        assert!(write_whole(Path::new("/dev/null"), |out| Ok(out.write_all(b"gone")?)).is_ok());
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
