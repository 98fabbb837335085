//! SFTP version 3 as OpenSSH speaks it (draft-ietf-secsh-filexfer-02): framing and the
//! parsing of every request and response, for audit and enforcement.
//!
//! Bytes arrive in arbitrary pieces; [`Framer`] reassembles whole packets and refuses
//! oversized ones. [`parse_request`] and [`parse_response`] never panic on any input.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::name::Name;

/// Largest packet accepted in either direction. OpenSSH's sftp-server refuses messages
/// above 256 KiB; a little room is left for headers.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

/// SFTP status codes (subset used by Herse).
pub const FX_OK: u32 = 0;
pub const FX_PERMISSION_DENIED: u32 = 3;

/// Open flags.
pub const FXF_READ: u32 = 0x01;
pub const FXF_WRITE: u32 = 0x02;
pub const FXF_APPEND: u32 = 0x04;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SftpError {
    #[error("SFTP packet of {0} bytes exceeds the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("malformed SFTP packet: {0}")]
    Malformed(&'static str),
    #[error("unknown SFTP packet type {0}")]
    UnknownType(u8),
    #[error("SFTP version {0}: only version 3 is audited and enforced")]
    Version(u32),
}

/// Reassembles whole packets (length prefix included) from a byte stream. Taking a
/// packet costs the same however many follow it in the buffer (a message full of tiny
/// packets is not quadratic).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, SftpError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_PACKET {
            return Err(SftpError::TooLarge(len));
        }
        if len == 0 {
            return Err(SftpError::Malformed("empty packet"));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(4 + len).freeze()))
    }

    /// Bytes of an incomplete packet still buffered.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, SftpError> {
        let (&v, rest) = self.b.split_first().ok_or(SftpError::Malformed("truncated"))?;
        self.b = rest;
        Ok(v)
    }
    fn u32(&mut self) -> Result<u32, SftpError> {
        if self.b.len() < 4 {
            return Err(SftpError::Malformed("truncated"));
        }
        let (v, rest) = self.b.split_at(4);
        self.b = rest;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }
    fn u64(&mut self) -> Result<u64, SftpError> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }
    fn bytes(&mut self) -> Result<&'a [u8], SftpError> {
        let len = self.u32()? as usize;
        if self.b.len() < len {
            return Err(SftpError::Malformed("string longer than packet"));
        }
        let (v, rest) = self.b.split_at(len);
        self.b = rest;
        Ok(v)
    }
    fn string(&mut self) -> Result<String, SftpError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
    /// A path or a name, as sftp-server reads them (`sshbuf_get_cstring`): one NUL at
    /// the end is dropped (`copy-data\0` is copy-data to it), one anywhere else is an
    /// error (it would cut the name short).
    fn cstring(&mut self) -> Result<Name, SftpError> {
        let b = self.bytes()?;
        let b = match b.iter().position(|c| *c == 0) {
            None => b,
            Some(i) if i + 1 == b.len() => &b[..i],
            Some(_) => return Err(SftpError::Malformed("a NUL inside a path or name")),
        };
        Ok(Name::new(b))
    }
    /// ATTRS as OpenSSH's `decode_attrib` reads them: flag bits it does not know are
    /// ignored, a missing field is an error (sftp-server ends the session on it).
    fn attrs(&mut self) -> Result<Attrs, SftpError> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            // Each pair is at least 8 bytes, so the count is bounded by the packet.
            let count = self.u32()?;
            for _ in 0..count {
                let name = self.cstring()?;
                self.bytes()?;
                a.extended.push(name.text().into_owned());
            }
        }
        Ok(a)
    }
}

/// File attributes a request sets (draft-02's ATTRS): what SETSTAT, FSETSTAT, lsetstat,
/// MKDIR and a creating OPEN ask the target to apply. Only what is present is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub owner: Option<(u32, u32)>,
    /// Mode bits, file type included as the client sent them.
    pub permissions: Option<u32>,
    /// Access and modification times, Unix seconds.
    pub times: Option<(u32, u32)>,
    /// Names of the extended attributes, which OpenSSH's sftp-server ignores.
    pub extended: Vec<String>,
}

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

impl Attrs {
    pub fn is_empty(&self) -> bool {
        *self == Attrs::default()
    }
}

/// `mode 4755, owner 0:0, size 0, times 1700000000/1700000000`; the permission bits
/// only (sftp-server applies `mode & 07777`).
impl fmt::Display for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = self.permissions {
            parts.push(format!("mode {:04o}", m & 0o7777));
        }
        if let Some((u, g)) = self.owner {
            parts.push(format!("owner {u}:{g}"));
        }
        if let Some(n) = self.size {
            parts.push(format!("size {n}"));
        }
        if let Some((a, m)) = self.times {
            parts.push(format!("times {a}/{m}"));
        }
        // Up to a packet's worth of names: the first few say what was meant.
        if !self.extended.is_empty() {
            let shown: Vec<String> = self
                .extended
                .iter()
                .take(8)
                .map(|n| n.chars().take(64).collect())
                .collect();
            let more = match self.extended.len() - shown.len() {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            parts.push(format!("extended {shown:?}{more}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// What an extended request carries, for those whose layout is known. The others are
/// judged as writes and recorded by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtArgs {
    /// posix-rename and hardlink (two paths), statvfs and expand-path (one).
    Paths(Vec<Name>),
    /// lsetstat@openssh.com: SETSTAT that does not follow a final symlink.
    Setstat {
        path: Name,
        attrs: Attrs,
    },
    /// fsync@openssh.com and fstatvfs@openssh.com.
    Handle(Vec<u8>),
    /// copy-data: the target copies `length` bytes (0: to the end) between two open
    /// handles; the data never crosses the gateway.
    CopyData {
        from: Vec<u8>,
        from_offset: u64,
        length: u64,
        to: Vec<u8>,
        to_offset: u64,
    },
    Other,
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: Name,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        id: u32,
        handle: Vec<u8>,
    },
    Read {
        id: u32,
        handle: Vec<u8>,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
    },
    Lstat {
        id: u32,
        path: Name,
    },
    Fstat {
        id: u32,
        handle: Vec<u8>,
    },
    Setstat {
        id: u32,
        path: Name,
        attrs: Attrs,
    },
    Fsetstat {
        id: u32,
        handle: Vec<u8>,
        attrs: Attrs,
    },
    Opendir {
        id: u32,
        path: Name,
    },
    Readdir {
        id: u32,
        handle: Vec<u8>,
    },
    Remove {
        id: u32,
        path: Name,
    },
    Mkdir {
        id: u32,
        path: Name,
        attrs: Attrs,
    },
    Rmdir {
        id: u32,
        path: Name,
    },
    Realpath {
        id: u32,
        path: Name,
    },
    Stat {
        id: u32,
        path: Name,
    },
    Rename {
        id: u32,
        from: Name,
        to: Name,
    },
    Readlink {
        id: u32,
        path: Name,
    },
    Symlink {
        id: u32,
        link: Name,
        target: Name,
    },
    Extended {
        id: u32,
        name: String,
        args: ExtArgs,
    },
}

/// What an SFTP request needs from the role (see [`Request::access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// stat, list, realpath, readlink, close, and the read-only extensions.
    Metadata,
    /// A file's content.
    Read,
    /// Anything that can change the target.
    Write,
    /// A handle that both reads and writes.
    ReadWrite,
}

/// Extended requests that only read.
const READ_ONLY_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
];

impl Request {
    pub fn id(&self) -> Option<u32> {
        use Request::*;
        match self {
            Init { .. } => None,
            Open { id, .. }
            | Close { id, .. }
            | Read { id, .. }
            | Write { id, .. }
            | Lstat { id, .. }
            | Fstat { id, .. }
            | Setstat { id, .. }
            | Fsetstat { id, .. }
            | Opendir { id, .. }
            | Readdir { id, .. }
            | Remove { id, .. }
            | Mkdir { id, .. }
            | Rmdir { id, .. }
            | Realpath { id, .. }
            | Stat { id, .. }
            | Rename { id, .. }
            | Readlink { id, .. }
            | Symlink { id, .. }
            | Extended { id, .. } => Some(*id),
        }
    }

    /// What the request can do to the target's files, for the role check. Unknown
    /// extensions count as writes (fail closed).
    ///
    /// An OPEN reads unless it only writes: OpenSSH's sftp-server opens a file read-only
    /// for any flags without WRITE (`READ | APPEND`, `READ | CREAT`, even no flags at
    /// all), so those handles give the file's content. READ on a handle reads, whatever
    /// the handle was opened for.
    pub fn access(&self) -> Access {
        use Request::*;
        match self {
            Open { pflags, .. } => {
                let writes = pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC) != 0;
                let reads = pflags & FXF_READ != 0 || pflags & FXF_WRITE == 0;
                match (reads, writes) {
                    (true, true) => Access::ReadWrite,
                    (false, true) => Access::Write,
                    _ => Access::Read,
                }
            }
            Read { .. } => Access::Read,
            Write { .. }
            | Setstat { .. }
            | Fsetstat { .. }
            | Remove { .. }
            | Mkdir { .. }
            | Rmdir { .. }
            | Rename { .. }
            | Symlink { .. } => Access::Write,
            Extended { name, .. } if READ_ONLY_EXTENSIONS.contains(&name.as_str()) => Access::Metadata,
            Extended { .. } => Access::Write,
            Init { .. }
            | Close { .. }
            | Lstat { .. }
            | Fstat { .. }
            | Opendir { .. }
            | Readdir { .. }
            | Realpath { .. }
            | Stat { .. }
            | Readlink { .. } => Access::Metadata,
        }
    }

    /// Whether the request can change the target's filesystem.
    pub fn is_write(&self) -> bool {
        matches!(self.access(), Access::Write | Access::ReadWrite)
    }

    /// A short name for the operation.
    pub fn op(&self) -> &'static str {
        use Request::*;
        match self {
            Init { .. } => "init",
            Open { .. } => "open",
            Close { .. } => "close",
            Read { .. } => "read",
            Write { .. } => "write",
            Lstat { .. } => "lstat",
            Fstat { .. } => "fstat",
            Setstat { .. } => "setstat",
            Fsetstat { .. } => "fsetstat",
            Opendir { .. } => "opendir",
            Readdir { .. } => "readdir",
            Remove { .. } => "remove",
            Mkdir { .. } => "mkdir",
            Rmdir { .. } => "rmdir",
            Realpath { .. } => "realpath",
            Stat { .. } => "stat",
            Rename { .. } => "rename",
            Readlink { .. } => "readlink",
            Symlink { .. } => "symlink",
            Extended { .. } => "extended",
        }
    }
}

/// A client's INIT (a whole packet) asking for a version after 3, rewritten to ask for
/// version 3; `None` for any other packet. Requests are judged in version 3's layout,
/// and a target that speaks a later version would read those a client pipelines
/// before its VERSION answer in that version's layout (a v6 OPEN carries its access
/// rights where v3 has the open flags): asked for 3, a server answers with 3 at most.
pub fn init_as_version_3(packet: &[u8]) -> Option<Bytes> {
    let version = packet.get(5..9)?;
    if packet.get(4) != Some(&1) || u32::from_be_bytes([version[0], version[1], version[2], version[3]]) <= 3 {
        return None;
    }
    let mut v = packet.to_vec();
    v[5..9].copy_from_slice(&3u32.to_be_bytes());
    Some(Bytes::from(v))
}

/// Parse a whole client packet (with its length prefix).
pub fn parse_request(packet: &[u8]) -> Result<Request, SftpError> {
    let mut r = Reader {
        b: packet.get(4..).ok_or(SftpError::Malformed("truncated"))?,
    };
    let ty = r.u8()?;
    if ty == 1 {
        return Ok(Request::Init { version: r.u32()? });
    }
    let id = r.u32()?;
    use Request::*;
    Ok(match ty {
        3 => Open {
            id,
            path: r.cstring()?,
            pflags: r.u32()?,
            attrs: r.attrs()?,
        },
        4 => Close {
            id,
            handle: r.bytes()?.to_vec(),
        },
        5 => Read {
            id,
            handle: r.bytes()?.to_vec(),
            offset: r.u64()?,
            len: r.u32()?,
        },
        6 => Write {
            id,
            handle: r.bytes()?.to_vec(),
            offset: r.u64()?,
            data: r.bytes()?.to_vec(),
        },
        7 => Lstat { id, path: r.cstring()? },
        8 => Fstat {
            id,
            handle: r.bytes()?.to_vec(),
        },
        9 => Setstat {
            id,
            path: r.cstring()?,
            attrs: r.attrs()?,
        },
        10 => Fsetstat {
            id,
            handle: r.bytes()?.to_vec(),
            attrs: r.attrs()?,
        },
        11 => Opendir { id, path: r.cstring()? },
        12 => Readdir {
            id,
            handle: r.bytes()?.to_vec(),
        },
        13 => Remove { id, path: r.cstring()? },
        14 => Mkdir {
            id,
            path: r.cstring()?,
            attrs: r.attrs()?,
        },
        15 => Rmdir { id, path: r.cstring()? },
        16 => Realpath { id, path: r.cstring()? },
        17 => Stat { id, path: r.cstring()? },
        18 => Rename {
            id,
            from: r.cstring()?,
            to: r.cstring()?,
        },
        19 => Readlink { id, path: r.cstring()? },
        // OpenSSH sends SYMLINK's arguments as (target, link), the reverse of the draft.
        20 => {
            let target = r.cstring()?;
            let link = r.cstring()?;
            Symlink { id, link, target }
        }
        200 => {
            // Only known names are judged by their layout; any other (one that is not
            // UTF-8 included) is a write.
            let name = r.cstring()?.text().into_owned();
            // The layouts of OpenSSH's sftp-server; a missing field is an error there too.
            let args = match name.as_str() {
                "posix-rename@openssh.com" | "hardlink@openssh.com" => ExtArgs::Paths(vec![r.cstring()?, r.cstring()?]),
                "statvfs@openssh.com" | "expand-path@openssh.com" => ExtArgs::Paths(vec![r.cstring()?]),
                "lsetstat@openssh.com" => ExtArgs::Setstat {
                    path: r.cstring()?,
                    attrs: r.attrs()?,
                },
                "fsync@openssh.com" | "fstatvfs@openssh.com" => ExtArgs::Handle(r.bytes()?.to_vec()),
                "copy-data" => ExtArgs::CopyData {
                    from: r.bytes()?.to_vec(),
                    from_offset: r.u64()?,
                    length: r.u64()?,
                    to: r.bytes()?.to_vec(),
                    to_offset: r.u64()?,
                },
                _ => ExtArgs::Other,
            };
            Extended { id, name, args }
        }
        other => return Err(SftpError::UnknownType(other)),
    })
}

/// A server response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Version { version: u32 },
    Status { id: u32, code: u32, message: String },
    Handle { id: u32, handle: Vec<u8> },
    Data { id: u32, data: Vec<u8> },
    Name { id: u32 },
    Attrs { id: u32 },
    ExtendedReply { id: u32 },
}

pub fn parse_response(packet: &[u8]) -> Result<Response, SftpError> {
    let mut r = Reader {
        b: packet.get(4..).ok_or(SftpError::Malformed("truncated"))?,
    };
    let ty = r.u8()?;
    if ty == 2 {
        return Ok(Response::Version { version: r.u32()? });
    }
    let id = r.u32()?;
    Ok(match ty {
        101 => Response::Status {
            id,
            code: r.u32()?,
            message: r.string().unwrap_or_default(),
        },
        102 => Response::Handle {
            id,
            handle: r.bytes()?.to_vec(),
        },
        103 => Response::Data {
            id,
            data: r.bytes()?.to_vec(),
        },
        104 => Response::Name { id },
        105 => Response::Attrs { id },
        201 => Response::ExtendedReply { id },
        other => return Err(SftpError::UnknownType(other)),
    })
}

/// A STATUS packet, as the gateway sends it for a refused request.
pub fn status_packet(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut body = vec![101u8];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message.as_bytes());
    body.extend_from_slice(&2u32.to_be_bytes());
    body.extend_from_slice(b"en");
    let mut p = (body.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Request::*;
        match self {
            Open { path, pflags, .. } => write!(f, "open {path:?} flags {pflags:#x}"),
            Remove { path, .. } | Rmdir { path, .. } => write!(f, "{} {path:?}", self.op()),
            Mkdir { path, attrs, .. } | Setstat { path, attrs, .. } if !attrs.is_empty() => {
                write!(f, "{} {path:?} ({attrs})", self.op())
            }
            Mkdir { path, .. } | Setstat { path, .. } => write!(f, "{} {path:?}", self.op()),
            Rename { from, to, .. } => write!(f, "rename {from:?} -> {to:?}"),
            Symlink { link, target, .. } => write!(f, "symlink {link:?} -> {target:?}"),
            Extended {
                name,
                args: ExtArgs::Paths(paths),
                ..
            } => write!(f, "extended {name} {paths:?}"),
            Extended {
                name,
                args: ExtArgs::Setstat { path, attrs },
                ..
            } => write!(f, "extended {name} {path:?} ({attrs})"),
            Extended { name, .. } => write!(f, "extended {name}"),
            other => f.write_str(other.op()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_for_a_later_version_asks_for_version_3() {
        let init = |v: u32, ext: &[u8]| {
            let mut p = Vec::new();
            p.extend_from_slice(&(5 + ext.len() as u32).to_be_bytes());
            p.push(1);
            p.extend_from_slice(&v.to_be_bytes());
            p.extend_from_slice(ext);
            p
        };
        let v6 = init_as_version_3(&init(6, b"ext")).unwrap();
        assert_eq!(&v6[..], &init(3, b"ext")[..]);
        assert!(matches!(parse_request(&v6), Ok(Request::Init { version: 3 })));
        assert_eq!(init_as_version_3(&init(3, b"")), None);
        assert_eq!(init_as_version_3(&init(2, b"")), None);
        assert_eq!(init_as_version_3(&[0, 0, 0, 1, 1]), None, "truncated");
        // Not an INIT: untouched, whatever its bytes.
        let mut open = init(6, b"");
        open[4] = 3;
        assert_eq!(init_as_version_3(&open), None);
    }

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }
    fn s(v: &str) -> Vec<u8> {
        let mut o = (v.len() as u32).to_be_bytes().to_vec();
        o.extend_from_slice(v.as_bytes());
        o
    }

    #[test]
    fn framing_across_pieces_and_limits() {
        let mut body = vec![3u8];
        body.extend_from_slice(&7u32.to_be_bytes());
        body.extend(s("/etc/passwd"));
        body.extend_from_slice(&FXF_READ.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        let p = packet(&body);
        let mut f = Framer::default();
        for b in p.iter().chain(p.iter()) {
            f.push(&[*b]);
        }
        let a = f.next_packet().unwrap().unwrap();
        let b = f.next_packet().unwrap().unwrap();
        assert_eq!(a, p);
        assert_eq!(b, p);
        assert_eq!(f.next_packet().unwrap(), None);
        let req = parse_request(&a).unwrap();
        assert_eq!(
            req,
            Request::Open {
                id: 7,
                path: "/etc/passwd".into(),
                pflags: FXF_READ,
                attrs: Attrs::default(),
            }
        );
        assert!(!req.is_write());

        let mut big = Framer::default();
        big.push(&(MAX_PACKET as u32 + 1).to_be_bytes());
        assert!(matches!(big.next_packet(), Err(SftpError::TooLarge(_))));
    }

    #[test]
    fn a_message_of_many_small_packets_comes_out_whole_and_in_order() {
        let mut f = Framer::default();
        let mut all = Vec::new();
        for id in 0..20_000u32 {
            let mut p = Vec::new();
            p.extend_from_slice(&9u32.to_be_bytes());
            p.push(17); // STAT
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            all.extend_from_slice(&p);
        }
        f.push(&all);
        let mut n = 0u32;
        while let Some(p) = f.next_packet().unwrap() {
            assert_eq!(p.len(), 13);
            assert_eq!(p[5..9], n.to_be_bytes());
            n += 1;
        }
        assert_eq!(n, 20_000);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn write_classification() {
        let open = |flags| Request::Open {
            id: 1,
            path: "x".into(),
            pflags: flags,
            attrs: Attrs::default(),
        };
        assert!(open(FXF_WRITE | FXF_CREAT | FXF_TRUNC).is_write());
        assert!(open(FXF_READ | FXF_APPEND).is_write());
        // sftp-server opens read-only whenever WRITE is absent, so APPEND or CREAT
        // with READ (or with nothing) gives a handle that reads.
        assert_eq!(open(FXF_WRITE | FXF_CREAT | FXF_TRUNC).access(), Access::Write);
        assert_eq!(open(FXF_READ).access(), Access::Read);
        assert_eq!(open(0).access(), Access::Read);
        assert_eq!(open(FXF_EXCL).access(), Access::Read);
        assert_eq!(open(FXF_APPEND).access(), Access::ReadWrite);
        assert_eq!(open(FXF_READ | FXF_APPEND).access(), Access::ReadWrite);
        assert_eq!(open(FXF_READ | FXF_CREAT).access(), Access::ReadWrite);
        assert_eq!(open(FXF_READ | FXF_WRITE).access(), Access::ReadWrite);
        let read = Request::Read {
            id: 1,
            handle: b"h".to_vec(),
            offset: 0,
            len: 4,
        };
        assert_eq!(read.access(), Access::Read);
        assert!(Request::Remove {
            id: 1,
            path: "x".into()
        }
        .is_write());
        assert!(Request::Extended {
            id: 1,
            name: "posix-rename@openssh.com".into(),
            args: ExtArgs::Other
        }
        .is_write());
        assert!(
            Request::Extended {
                id: 1,
                name: "something-new".into(),
                args: ExtArgs::Other
            }
            .is_write(),
            "unknown = write"
        );
        assert!(!Request::Extended {
            id: 1,
            name: "statvfs@openssh.com".into(),
            args: ExtArgs::Other
        }
        .is_write());
    }

    fn request(ty: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![ty];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        packet(&body)
    }

    #[test]
    fn attributes_are_read_as_sftp_server_reads_them() {
        let mut all = Vec::new();
        all.extend_from_slice(&(0x8000_000f_u32 | 0x40).to_be_bytes()); // every field, an unknown bit
        all.extend_from_slice(&7u64.to_be_bytes());
        all.extend_from_slice(&0u32.to_be_bytes());
        all.extend_from_slice(&50u32.to_be_bytes());
        all.extend_from_slice(&0o104755u32.to_be_bytes());
        all.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        all.extend_from_slice(&1_700_000_001u32.to_be_bytes());
        all.extend_from_slice(&1u32.to_be_bytes());
        all.extend(s("user.x"));
        all.extend(s("v"));
        let want = Attrs {
            size: Some(7),
            owner: Some((0, 50)),
            permissions: Some(0o104755),
            times: Some((1_700_000_000, 1_700_000_001)),
            extended: vec!["user.x".into()],
        };
        let req = parse_request(&request(9, 1, &[&s("/srv/x"), &all])).unwrap();
        assert_eq!(
            req,
            Request::Setstat {
                id: 1,
                path: "/srv/x".into(),
                attrs: want.clone()
            }
        );
        assert_eq!(
            want.to_string(),
            "mode 4755, owner 0:50, size 7, times 1700000000/1700000001, extended [\"user.x\"]"
        );
        assert_eq!(
            req.to_string(),
            format!("setstat \"/srv/x\" ({want})"),
            "refusals name what was asked"
        );
        let mode = [&4u32.to_be_bytes()[..], &0o600u32.to_be_bytes()].concat();
        assert!(matches!(
            parse_request(&request(10, 2, &[&s("h"), &mode])).unwrap(),
            Request::Fsetstat { handle, attrs, .. } if handle == b"h" && attrs.permissions == Some(0o600)
        ));
        // lsetstat's attributes are attributes, not a second path.
        let mut ext = s("lsetstat@openssh.com");
        ext.extend(s("/srv/link"));
        ext.extend_from_slice(&mode);
        assert_eq!(
            parse_request(&request(200, 3, &[&ext])).unwrap(),
            Request::Extended {
                id: 3,
                name: "lsetstat@openssh.com".into(),
                args: ExtArgs::Setstat {
                    path: "/srv/link".into(),
                    attrs: Attrs {
                        permissions: Some(0o600),
                        ..Attrs::default()
                    }
                }
            }
        );
        let mut copy = s("copy-data");
        copy.extend(s("a"));
        copy.extend_from_slice(&1u64.to_be_bytes());
        copy.extend_from_slice(&0u64.to_be_bytes());
        copy.extend(s("b"));
        copy.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            parse_request(&request(200, 4, &[&copy])).unwrap(),
            Request::Extended {
                id: 4,
                name: "copy-data".into(),
                args: ExtArgs::CopyData {
                    from: b"a".to_vec(),
                    from_offset: 1,
                    length: 0,
                    to: b"b".to_vec(),
                    to_offset: 9
                }
            }
        );
        let many = Attrs {
            extended: (0..100).map(|i| format!("{i}{}", "n".repeat(100))).collect(),
            ..Attrs::default()
        };
        assert!(
            many.to_string().len() < 700 && many.to_string().ends_with(" and 92 more"),
            "{many}"
        );
        // Names end at a NUL for sftp-server: one at the end is not part of them, one
        // inside is an error there and here.
        let mut copy_nul = s("copy-data\0");
        copy_nul.extend_from_slice(&copy[13..]);
        assert!(matches!(
            parse_request(&request(200, 4, &[&copy_nul])).unwrap(),
            Request::Extended { name, args: ExtArgs::CopyData { .. }, .. } if name == "copy-data"
        ));
        assert_eq!(
            parse_request(&request(13, 6, &[&s("/srv/x\0")])).unwrap(),
            Request::Remove {
                id: 6,
                path: "/srv/x".into()
            }
        );
        assert!(parse_request(&request(13, 6, &[&s("/srv/x\0.bak")])).is_err());
        // A field its flags promise but the packet lacks; an extension cut short.
        for short in [
            request(9, 5, &[&s("/x"), &4u32.to_be_bytes()]),
            request(3, 5, &[&s("/x"), &FXF_READ.to_be_bytes()]),
            request(14, 5, &[&s("/x"), &0x8000_0000u32.to_be_bytes(), &2u32.to_be_bytes()]),
            request(200, 5, &[&copy[..copy.len() - 1]]),
            request(200, 5, &[&[&s("posix-rename@openssh.com")[..], &s("/a")].concat()]),
        ] {
            assert!(
                matches!(parse_request(&short), Err(SftpError::Malformed(_))),
                "{short:?}"
            );
        }
    }

    #[test]
    fn status_round_trip_and_garbage() {
        let p = status_packet(9, FX_PERMISSION_DENIED, "no");
        assert_eq!(
            parse_response(&p).unwrap(),
            Response::Status {
                id: 9,
                code: 3,
                message: "no".into()
            }
        );
        for junk in [
            &b""[..],
            b"\0\0\0\x01",
            b"\0\0\0\x05\x03\0\0\0\x01",
            b"\0\0\0\x09\x06\0\0\0\x01\xff\xff\xff\xff",
        ] {
            assert!(parse_request(junk).is_err());
            let _ = parse_response(junk);
        }
    }
}
