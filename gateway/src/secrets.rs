//! The master key and what it protects. Private keys are stored sealed (XChaCha20-Poly1305)
//! under a 256-bit master key that lives outside the data directory: in a file readable
//! only by the gateway, in a systemd credential, or on an inherited file descriptor.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngExt;
use zeroize::Zeroizing;

const PREFIX: &str = "herse-master-key-v1:";
/// The name of the systemd credential (`LoadCredential=herse-master-key:…`).
pub const CREDENTIAL_NAME: &str = "herse-master-key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read master key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("master key {0} is readable by group or others; run: chmod 600 {0}")]
    Permissions(PathBuf),
    #[error("{path} (the master key or a directory on its path) belongs to uid {owner}, not root, this process's uid {me} or the key's owner: that user could replace the key")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("the directory {0} of the master key is writable by group or others, who could replace the key; run: chmod go-w {0}")]
    DirectoryPermissions(PathBuf),
    #[error("master key {0} is malformed (expected one line \"{PREFIX}<base64 of 32 bytes>\")")]
    Malformed(PathBuf),
    #[error("master key {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write master key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("sealed secret {0:?} is malformed")]
    Sealed(String),
    #[error("cannot open sealed secret {0:?}: wrong master key, or the data was altered")]
    Open(String),
}

/// Where to read the master key from, in order of preference.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    File(PathBuf),
    /// An inherited file descriptor, read through /dev/fd.
    Fd(u32),
}

impl MasterKeySource {
    /// `$CREDENTIALS_DIRECTORY/herse-master-key` when systemd passes one, else `file`.
    pub fn resolve(fd: Option<u32>, file: &Path) -> Self {
        if let Some(fd) = fd {
            return MasterKeySource::Fd(fd);
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            if p.exists() {
                return MasterKeySource::File(p);
            }
        }
        MasterKeySource::File(file.to_owned())
    }
}

/// As OpenSSH's `StrictModes`, on the file as opened: no access for group or others;
/// owned by root, this process's user, or the owner of its directory (the gateway's user
/// when root runs `hersectl`); its directory writable by nobody else, no directory above
/// writable by others (unless sticky), and none belonging to anyone else.
fn check_file(p: &Path, file: &std::fs::File) -> Result<(), SecretError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SecretError::Read { path, source }
    };
    let meta = file.metadata().map_err(read_err(p))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::Permissions(p.to_owned()));
    }
    let real = std::fs::canonicalize(p).map_err(read_err(p))?;
    let me = rustix::process::geteuid().as_raw();
    let dir_owner = match real.parent() {
        Some(d) => std::fs::metadata(d).map_err(read_err(d))?.uid(),
        None => 0,
    };
    let owner = meta.uid();
    if owner != 0 && owner != me && owner != dir_owner {
        return Err(SecretError::Owner {
            path: p.to_owned(),
            owner,
            me,
        });
    }
    for (i, dir) in real.ancestors().skip(1).enumerate() {
        let d = std::fs::metadata(dir).map_err(read_err(dir))?;
        let mode = d.permissions().mode();
        // The key's own directory admits no group write; above it, as Debian's OpenSSH
        // allows for user-private groups (umask 002), only others' write is refused.
        let refused = if i == 0 { 0o022 } else { 0o002 };
        if mode & refused != 0 && mode & 0o1000 == 0 {
            return Err(SecretError::DirectoryPermissions(dir.to_owned()));
        }
        if d.uid() != 0 && d.uid() != me && d.uid() != owner {
            return Err(SecretError::Owner {
                path: dir.to_owned(),
                owner: d.uid(),
                me,
            });
        }
    }
    Ok(())
}

/// 32 secret bytes; zeroized on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut k[..]);
        MasterKey(k)
    }

    /// A key from 32 raw bytes (a sub-key unsealed from the store).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let k: [u8; 32] = b.try_into().ok()?;
        Some(MasterKey(Zeroizing::new(k)))
    }

    /// The raw bytes, to seal this key under another.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.0)
    }

    pub fn load(source: &MasterKeySource) -> Result<Self, SecretError> {
        let path = match source {
            MasterKeySource::File(p) => p.clone(),
            MasterKeySource::Fd(fd) => PathBuf::from(format!("/dev/fd/{fd}")),
        };
        let read_err = |source| SecretError::Read {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(read_err)?;
        if let MasterKeySource::File(p) = source {
            check_file(p, &file)?;
        }
        let mut text = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read_err)?;
        let b64 = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| SecretError::Malformed(path.clone()))?;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| SecretError::Malformed(path.clone()))?,
        );
        let arr: [u8; 32] = bytes[..].try_into().map_err(|_| SecretError::Malformed(path.clone()))?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    /// Write the key to a new file with mode 0600; never overwrites.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        if path.exists() {
            return Err(SecretError::Exists(path.to_owned()));
        }
        let write_err = |source| SecretError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A directory made here is private; an existing one is left as it is.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(write_err)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        let line = Zeroizing::new(format!(
            "{PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(&self.0[..])
        ));
        f.write_all(line.as_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0[..]).into())
    }

    /// A key for one purpose, derived from this one (BLAKE3's key derivation); `context`
    /// names the purpose, globally unique and fixed in the code.
    pub fn derive(&self, context: &'static str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &self.0[..]))
    }

    /// Encrypt `plaintext`, bound to `label` (a different label cannot open it).
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill(&mut nonce[..]);
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: label.as_bytes(),
                },
            )
            // Encryption of an in-memory buffer cannot fail for sizes below 256 GiB.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, label: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretError::Sealed(label.to_owned()))?;
        if raw.len() < 24 + 16 {
            return Err(SecretError::Sealed(label.to_owned()));
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: label.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::Open(label.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = MasterKey::generate();
        let s = k.seal("a", b"secret");
        assert_eq!(&k.open("a", &s).unwrap()[..], b"secret");
        assert!(k.open("b", &s).is_err(), "label is bound");
        assert!(MasterKey::generate().open("a", &s).is_err(), "other key");
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&s).unwrap();
        raw[30] ^= 1;
        let t = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(k.open("a", &t).is_err(), "tamper detected");
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn file_round_trip_and_permissions() {
        let dir = std::env::temp_dir().join(format!("herse-mk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("master.key");
        let k = MasterKey::generate();
        k.write_new(&p).unwrap();
        assert!(matches!(k.write_new(&p), Err(SecretError::Exists(_))));
        let l = MasterKey::load(&MasterKeySource::File(p.clone())).unwrap();
        assert_eq!(&l.0[..], &k.0[..]);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load(&MasterKeySource::File(p.clone())),
            Err(SecretError::Permissions(_))
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The directory it made is private; one others may write to is refused.
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            MasterKey::load(&MasterKeySource::File(p.clone())),
            Err(SecretError::DirectoryPermissions(_))
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        MasterKey::load(&MasterKeySource::File(p.clone())).unwrap();
        // A file of another (non-root) user is refused: its owner could replace it.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            assert!(matches!(
                MasterKey::load(&MasterKeySource::File(p.clone())),
                Err(SecretError::Owner { owner: 65534, .. })
            ));
            // The gateway's user owning its directory and key, read by root (hersectl).
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            MasterKey::load(&MasterKeySource::File(p.clone())).unwrap();
            // A link to the key is judged by the key's real directory.
            let link = std::env::temp_dir().join(format!("herse-mk-link-{}", std::process::id()));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&p, &link).unwrap();
            MasterKey::load(&MasterKeySource::File(link.clone())).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
            assert!(matches!(
                MasterKey::load(&MasterKeySource::File(link.clone())),
                Err(SecretError::DirectoryPermissions(_))
            ));
            // Above the key's directory, group write (a umask-002 clone) is allowed,
            // others' write is not.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
            let inner = dir.join("secrets");
            std::fs::create_dir(&inner).unwrap();
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
            let q = inner.join("master.key");
            MasterKey::generate().write_new(&q).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
            MasterKey::load(&MasterKeySource::File(q.clone())).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            assert!(matches!(
                MasterKey::load(&MasterKeySource::File(q.clone())),
                Err(SecretError::DirectoryPermissions(_))
            ));
            std::fs::remove_file(&link).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
