//! Encryption at rest for recordings of tiers that ask for it.
//!
//! Each recording gets a fresh 256-bit data key, wrapped with age to the auditors' X25519
//! recipients and stored in the header. EVENTS frame payloads are XChaCha20-Poly1305 with
//! that key; the nonce is the frame number (unique per key, as the key is unique per
//! recording) and the associated data binds session and frame. The hash chain and the
//! signatures cover the ciphertext, so anyone with the audit public key can verify a
//! recording; only an auditor's identity can read it. The gateway forgets the data key
//! when the recording is sealed, so the gateway host alone cannot read past recordings.

use std::io::{Read, Write};
use std::str::FromStr;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What the header says about encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// The age recipients the data key is wrapped to.
    pub recipients: Vec<String>,
    /// The data key, age-encrypted, base64.
    pub wrapped_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("not an age X25519 recipient: {0:?}")]
    Recipient(String),
    #[error("cannot wrap the recording key: {0}")]
    Wrap(String),
    #[error("none of the given identities can open this recording")]
    NoIdentity,
    #[error("recording key is malformed")]
    Malformed,
    #[error("frame {0} does not decrypt (altered, or the wrong key)")]
    Frame(u64),
}

/// A recording's data key: zeroized on drop, never printed.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Parse age recipients (`age1…`).
pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, CryptError> {
    list.iter()
        .map(|r| age::x25519::Recipient::from_str(r.trim()).map_err(|_| CryptError::Recipient(r.clone())))
        .collect()
}

/// A fresh data key and its [`Encryption`] header entry.
pub fn new_key(recipients: &[age::x25519::Recipient]) -> Result<(DataKey, Encryption), CryptError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom_fill(&mut key[..]);
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| CryptError::Wrap(e.to_string()))?;
    let mut wrapped = Vec::new();
    let mut w = enc
        .wrap_output(&mut wrapped)
        .map_err(|e| CryptError::Wrap(e.to_string()))?;
    w.write_all(&key[..]).map_err(|e| CryptError::Wrap(e.to_string()))?;
    w.finish().map_err(|e| CryptError::Wrap(e.to_string()))?;
    Ok((
        DataKey(key),
        Encryption {
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped),
        },
    ))
}

fn getrandom_fill(buf: &mut [u8]) {
    use chacha20poly1305::aead::rand_core::RngCore;
    chacha20poly1305::aead::OsRng.fill_bytes(buf);
}

/// Load age identities (an auditor's identity file).
pub fn load_identities(path: &std::path::Path) -> Result<Vec<Box<dyn age::Identity>>, std::io::Error> {
    age::IdentityFile::from_file(path.to_string_lossy().into_owned())?
        .into_identities()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Unwrap a recording's data key with one of `identities`.
pub fn open_key(enc: &Encryption, identities: &[Box<dyn age::Identity>]) -> Result<DataKey, CryptError> {
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&enc.wrapped_key)
        .map_err(|_| CryptError::Malformed)?;
    let dec = age::Decryptor::new(&wrapped[..]).map_err(|_| CryptError::Malformed)?;
    let mut r = dec
        .decrypt(identities.iter().map(|i| i.as_ref()))
        .map_err(|_| CryptError::NoIdentity)?;
    let mut key = Zeroizing::new([0u8; 32]);
    r.read_exact(&mut key[..]).map_err(|_| CryptError::Malformed)?;
    Ok(DataKey(key))
}

fn nonce(seq: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[16..].copy_from_slice(&seq.to_be_bytes());
    *XNonce::from_slice(&n)
}

fn aad(session_id: &str, seq: u64) -> Vec<u8> {
    let mut a = b"herse-events-v1".to_vec();
    a.extend_from_slice(session_id.as_bytes());
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

impl DataKey {
    pub fn seal(&self, session_id: &str, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        XChaCha20Poly1305::new((&self.0[..]).into())
            .encrypt(
                &nonce(seq),
                Payload {
                    msg: plaintext,
                    aad: &aad(session_id, seq),
                },
            )
            // In-memory encryption of a bounded frame cannot fail.
            .unwrap_or_default()
    }

    pub fn open(&self, session_id: &str, seq: u64, ciphertext: &[u8]) -> Result<Vec<u8>, CryptError> {
        XChaCha20Poly1305::new((&self.0[..]).into())
            .decrypt(
                &nonce(seq),
                Payload {
                    msg: ciphertext,
                    aad: &aad(session_id, seq),
                },
            )
            .map_err(|_| CryptError::Frame(seq))
    }
}
