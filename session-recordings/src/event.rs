use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Who, from where, to which target, under which decision. Written first in every recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub session_id: String,
    pub user: String,
    pub client_addr: String,
    /// The enrolled workstation the connection came from, once WireGuard binding exists.
    pub workstation: Option<String>,
    pub target: String,
    pub target_addr: String,
    pub tier: String,
    pub login: String,
    pub role: String,
    pub grant: Option<String>,
    /// The policy decision that allowed the session, in words.
    pub decision: String,
    /// Unix time in microseconds at which the session started.
    pub started_at_micros: u64,
    /// The recording this gateway created just before this one, so that a deleted
    /// recording leaves a visible gap in the chain.
    pub previous: Option<PreviousRecording>,
    /// The audit key that signs this recording's checkpoints (hex Ed25519 public key;
    /// informative only: verifiers use the key they trust).
    pub signing_key: String,
    /// Present when EVENTS frames are encrypted to auditors (see [`crate::crypt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypt::Encryption>,
}

/// A link to the previous recording of the same gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousRecording {
    pub session_id: String,
    /// Hex SHA-256 hash of that recording's header frame.
    pub header_hash: String,
}

impl Header {
    pub(crate) fn placeholder() -> Self {
        Header {
            session_id: String::new(),
            user: String::new(),
            client_addr: String::new(),
            workstation: None,
            target: String::new(),
            target_addr: String::new(),
            tier: String::new(),
            login: String::new(),
            role: String::new(),
            grant: None,
            decision: String::new(),
            started_at_micros: 0,
            previous: None,
            signing_key: String::new(),
            encryption: None,
        }
    }
}

/// What a channel is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ChannelKind {
    Session,
    DirectTcpip { host: String, port: u32 },
}

/// Direction of bytes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataDirection {
    /// From the client towards the target (keystrokes, uploads).
    Input,
    /// From the target towards the client (terminal output, stdout, downloads).
    Output,
    /// The target's stderr.
    Stderr,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Meta {
    /// The `Exec` event for a command line as the client sent it: its text, and its exact
    /// bytes too when they are not UTF-8.
    pub fn exec(command: &[u8]) -> Meta {
        let (command, command_hex) = Name::new(command).recorded();
        Meta::Exec { command, command_hex }
    }

    /// The exact bytes of an `Exec` event's command line.
    pub fn exec_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Meta::Exec { command, command_hex } => {
                Some(Name::from_recorded(command, command_hex.as_deref()).as_bytes().to_vec())
            }
            _ => None,
        }
    }
}

/// Everything that is not bulk data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Meta {
    ChannelOpen {
        kind: ChannelKind,
    },
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        /// The size in pixels, when the client gave one (absent when zero, and in older
        /// recordings).
        #[serde(default, skip_serializing_if = "is_zero")]
        pix_width: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        pix_height: u32,
        /// The terminal modes asked for (RFC 4254 section 8: opcode, value), in the
        /// client's order. Absent when none, and in older recordings.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        modes: Vec<(u8, u32)>,
    },
    Resize {
        cols: u32,
        rows: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        pix_width: u32,
        #[serde(default, skip_serializing_if = "is_zero")]
        pix_height: u32,
    },
    Shell,
    Exec {
        /// The command line as text; bytes that are not UTF-8 show as U+FFFD.
        command: String,
        /// The exact bytes the target was asked to run, hex-encoded, when they are not
        /// UTF-8 (`command` cannot hold them). Absent otherwise, and in older recordings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_hex: Option<String>,
    },
    Subsystem {
        name: String,
    },
    Env {
        name: String,
        value: String,
    },
    Signal {
        name: String,
    },
    ExitStatus {
        code: u32,
    },
    ExitSignal {
        signal: String,
        core_dumped: bool,
        /// The target's words with the signal (OpenSSH's sshd sends none). Absent when
        /// empty, and in older recordings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Eof {
        from_client: bool,
    },
    /// A port-forward channel's totals, just before its `Close`.
    ForwardClosed {
        bytes_in: u64,
        bytes_out: u64,
    },
    Close,
    /// An SFTP operation and how the target answered it.
    SftpOp {
        op: String,
        /// Paths as text; bytes that are not UTF-8 show as U+FFFD, and the `_hex` field
        /// beside each then holds its exact bytes (see [`crate::Name`]). The `_hex`
        /// fields are absent otherwise, and in older recordings.
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_hex: Option<String>,
        target: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_hex: Option<String>,
        flags: Option<u32>,
        /// What the operation sets or moves beyond its paths: the attributes of a
        /// setstat, a mkdir or a creating open (`mode 4755, owner 0:0`), or the range of
        /// a copy-data. Absent in recordings made before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        outcome: String,
    },
    /// A file handle closed: what was transferred through it.
    SftpFile {
        path: String,
        /// `path`'s exact bytes when they are not UTF-8, as in `SftpOp`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_hex: Option<String>,
        flags: u32,
        bytes_read: u64,
        bytes_written: u64,
        /// SHA-256 of the bytes read, when they were read in order from the start.
        sha256_read: Option<String>,
        /// SHA-256 of the bytes written, when they were written in order from the start.
        sha256_written: Option<String>,
    },
    /// A file moved by a protocol other than SFTP (legacy scp).
    FileTransfer {
        protocol: String,
        upload: bool,
        /// Where the file is on the target.
        path: String,
        /// `path`'s exact bytes when they are not UTF-8 (a name the sender gave may be
        /// any bytes but `/` and NUL), as in `SftpOp`; likewise `sent_as_hex`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_hex: Option<String>,
        /// For an upload into a path that may or may not be an existing directory: the
        /// name the sender gave the file. The file is at `path`, or at `path/sent_as`
        /// if `path` was a directory. Absent when `path` is certain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent_as: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent_as_hex: Option<String>,
        bytes: u64,
        sha256: Option<String>,
        /// The mode the sender gave, four octal digits as scp sends them (`0644`,
        /// `4755`). OpenSSH's receiver creates a file or directory with it (less its
        /// umask), and under `-p` sets it exactly, on existing ones too: a setuid bit
        /// shows here. Absent in recordings made before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        /// A directory (scp `-r`'s `D` record) the receiver made or entered, rather than
        /// a file: no bytes and no hash. Absent (false) in older recordings.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        directory: bool,
        /// The modification and access times (Unix seconds) the sender asked the
        /// receiver to set (scp `-p`'s `T` record): any time the sender chooses, so an
        /// auditor sees a file given a back-dated time. Absent without `-p`, and in
        /// older recordings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        atime: Option<i64>,
    },
    /// A file stream (legacy scp) stopped making sense to the gateway: the files after
    /// this point have no `FileTransfer` summary. Their bytes are still recorded.
    Untracked {
        protocol: String,
        reason: String,
    },
    /// What the client sent last on this channel (the data or request recorded just
    /// before in that direction) did not all reach the target: it had closed its
    /// connection. Nothing more from the client is forwarded on the channel; the
    /// target's last output still is.
    Undelivered {
        reason: String,
    },
    /// A request refused by policy; nothing of it reached the target.
    Denied {
        request: String,
        reason: String,
    },
    /// The session ended; the last event of a whole recording.
    End {
        reason: String,
    },
    /// An event of a type this version does not know: a newer gateway wrote it. Its
    /// bytes are covered by the hash chain and the signatures like any other's, so the
    /// recording still verifies and reads; readers count such events rather than
    /// refuse the recording. Never written.
    #[serde(other)]
    Unrecognised,
}

/// One event as read back from a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Data {
        t_micros: u64,
        channel: u32,
        direction: DataDirection,
        data: Vec<u8>,
    },
    Meta {
        t_micros: u64,
        channel: u32,
        meta: Meta,
    },
}

impl Event {
    pub fn t_micros(&self) -> u64 {
        match self {
            Event::Data { t_micros, .. } | Event::Meta { t_micros, .. } => *t_micros,
        }
    }

    /// What the target wrote to `channel` (output or stderr), with its time: what a
    /// player or an export of that channel's terminal takes.
    pub fn output_on(&self, channel: u32) -> Option<(u64, &[u8])> {
        match self {
            Event::Data {
                t_micros,
                channel: c,
                direction: DataDirection::Output | DataDirection::Stderr,
                data,
            } if *c == channel => Some((*t_micros, data)),
            _ => None,
        }
    }

    /// The event's `Meta`, if it is one.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Event::Meta { meta, .. } => Some(meta),
            Event::Data { .. } => None,
        }
    }
}

pub(crate) mod kind {
    pub const INPUT: u8 = 1;
    pub const OUTPUT: u8 = 2;
    pub const STDERR: u8 = 3;
    pub const META: u8 = 16;
}

impl DataDirection {
    pub(crate) fn kind(self) -> u8 {
        match self {
            DataDirection::Input => kind::INPUT,
            DataDirection::Output => kind::OUTPUT,
            DataDirection::Stderr => kind::STDERR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newer gateway's event type reads as `Unrecognised` (the recording stays
    /// readable); a known type that does not parse is still an error, and so is an
    /// event without a type.
    #[test]
    fn events_of_unknown_types_are_read_as_unrecognised() {
        let read = |json: &str| serde_json::from_str::<Meta>(json);
        assert_eq!(
            read(r#"{"event":"sftp_lock","path":"/x","n":1}"#).unwrap(),
            Meta::Unrecognised
        );
        assert_eq!(
            read(r#"{"event":"exit_status","code":3}"#).unwrap(),
            Meta::ExitStatus { code: 3 }
        );
        assert!(read(r#"{"event":"exit_status","code":"3"}"#).is_err());
        assert!(read(r#"{"event":"denied","request":"exec"}"#).is_err());
        assert!(read(r#"{"code":3}"#).is_err());
        assert!(read(r#"{"event":7}"#).is_err());
        // Fields added to a known type are ignored by readers that predate them.
        assert_eq!(
            read(r#"{"event":"resize","cols":80,"rows":24,"pixels":[640,480]}"#).unwrap(),
            Meta::Resize {
                cols: 80,
                rows: 24,
                pix_width: 0,
                pix_height: 0
            }
        );
    }

    #[test]
    fn exec_keeps_the_exact_bytes_of_a_command_that_is_not_utf8() {
        let plain = Meta::exec(b"ls /srv");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"event":"exec","command":"ls /srv"}"#,
            "a UTF-8 command is written as before"
        );
        let raw = b"cat /srv/caf\xe9 \xff";
        let m = Meta::exec(raw);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"command\":\"cat /srv/caf\u{fffd} \u{fffd}\""), "{json}");
        assert!(
            json.contains("\"command_hex\":\"636174202f7372762f636166e920ff\""),
            "{json}"
        );
        let back: Meta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.exec_bytes().unwrap(), raw);
        assert_eq!(plain.exec_bytes().unwrap(), b"ls /srv");
    }

    #[test]
    fn pixel_sizes_and_terminal_modes_are_kept_and_optional() {
        let pty = Meta::Pty {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
            pix_width: 640,
            pix_height: 480,
            modes: vec![(53, 0), (128, 38400)],
        };
        let json = serde_json::to_string(&pty).unwrap();
        assert_eq!(serde_json::from_str::<Meta>(&json).unwrap(), pty);
        // Older recordings have none of them.
        assert_eq!(
            serde_json::from_str::<Meta>(r#"{"event":"pty","term":"vt100","cols":80,"rows":24}"#).unwrap(),
            Meta::Pty {
                term: "vt100".into(),
                cols: 80,
                rows: 24,
                pix_width: 0,
                pix_height: 0,
                modes: Vec::new()
            }
        );
    }
}
