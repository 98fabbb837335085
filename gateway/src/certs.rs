//! OpenSSH certificates: the short-lived user certificates Herse logs in upstream with,
//! the host certificates it presents for targets in ProxyJump form, and the checks on a
//! target's host key or host certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, HashAlg, PrivateKey, PublicKey};

use crate::policy::HostKeyCheck;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot build certificate: {0}")]
    Build(#[from] russh::keys::ssh_key::Error),
}

/// Why a target's host key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {0} is not pinned for this target")]
    NotPinned(String),
    #[error("target presented a certificate but only pinned keys are trusted for it")]
    UnexpectedCertificate,
    #[error("target presented a plain key {0} but a host certificate is required")]
    CertificateRequired(String),
    #[error("host certificate is signed by an untrusted CA {0}")]
    UntrustedCa(String),
    #[error("certificate is a user certificate, not a host certificate")]
    WrongType,
    #[error("host certificate does not name {expected} (principals: {found})")]
    WrongPrincipal { expected: String, found: String },
    #[error("host certificate is outside its validity window")]
    Expired,
    #[error("host certificate carries critical options ({0}), which no host certificate may")]
    CriticalOptions(String),
    #[error("host certificate signature is invalid")]
    BadSignature,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Clock skew tolerated between the gateway and targets when a certificate starts.
const BACKDATE: u64 = 60;

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rng().fill(&mut n[..]);
    n
}

/// A certificate for one principal, valid from a little before now for `valid_for`.
fn builder(
    subject: &PublicKey,
    cert_type: CertType,
    key_id: &str,
    principal: &str,
    valid_for: Duration,
) -> Result<Builder, CertError> {
    let now = unix_now();
    let mut b = Builder::new(
        nonce(),
        subject.key_data().clone(),
        now.saturating_sub(BACKDATE),
        now + valid_for.as_secs().max(1),
    )?;
    b.cert_type(cert_type)?;
    b.key_id(key_id)?;
    b.valid_principal(principal)?;
    Ok(b)
}

/// What a user certificate may do on the target.
#[derive(Debug, Clone, Copy)]
pub struct UserCertRights {
    pub pty: bool,
    pub port_forwarding: bool,
    /// Only SFTP: the certificate forces `internal-sftp` (see
    /// `Authorized::runs_commands`).
    pub sftp_only: bool,
}

/// A certificate for `login`, valid for `valid_for`, whose key id names user and session;
/// with `source`, usable only from that address (OpenSSH's `source-address`).
pub fn user_certificate(
    ca: &PrivateKey,
    subject: &PublicKey,
    login: &str,
    key_id: &str,
    valid_for: Duration,
    rights: UserCertRights,
    source: Option<std::net::IpAddr>,
) -> Result<Certificate, CertError> {
    let mut b = builder(subject, CertType::User, key_id, login, valid_for)?;
    b.serial(rand::rng().random())?;
    if let Some(ip) = source {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        b.critical_option("source-address", format!("{ip}/{bits}"))?;
    }
    if rights.sftp_only {
        b.critical_option("force-command", "internal-sftp")?;
    }
    if rights.pty {
        b.extension("permit-pty", "")?;
    }
    if rights.port_forwarding {
        b.extension("permit-port-forwarding", "")?;
    }
    Ok(b.sign(ca)?)
}

/// A host certificate naming `principal`, presented by the gateway's inner SSH server.
pub fn host_certificate(
    ca: &PrivateKey,
    host_key: &PublicKey,
    principal: &str,
    valid_for: Duration,
) -> Result<Certificate, CertError> {
    let b = builder(
        host_key,
        CertType::Host,
        &format!("herse-proxy:{principal}"),
        principal,
        valid_for,
    )?;
    Ok(b.sign(ca)?)
}

/// The host key, or certificate, that a target presented.
pub enum Presented<'a> {
    Key(&'a PublicKey),
    Certificate(&'a Certificate),
}

/// Check what a target presented against the policy's expectation.
pub fn verify_host(check: &HostKeyCheck, presented: Presented<'_>) -> Result<(), HostKeyError> {
    verify_host_at(check, presented, unix_now())
}

pub fn verify_host_at(check: &HostKeyCheck, presented: Presented<'_>, now: u64) -> Result<(), HostKeyError> {
    match (check, presented) {
        (HostKeyCheck::Pinned(keys), Presented::Key(k)) => {
            if keys.iter().any(|p| p.key_data() == k.key_data()) {
                Ok(())
            } else {
                Err(HostKeyError::NotPinned(k.fingerprint(HashAlg::Sha256).to_string()))
            }
        }
        (HostKeyCheck::Pinned(_), Presented::Certificate(_)) => Err(HostKeyError::UnexpectedCertificate),
        (HostKeyCheck::Ca { .. }, Presented::Key(k)) => Err(HostKeyError::CertificateRequired(
            k.fingerprint(HashAlg::Sha256).to_string(),
        )),
        (HostKeyCheck::Ca { authorities, principal }, Presented::Certificate(c)) => {
            let signer = c.signature_key();
            if !authorities.iter().any(|a| a.key_data() == signer) {
                return Err(HostKeyError::UntrustedCa(
                    signer.fingerprint(HashAlg::Sha256).to_string(),
                ));
            }
            if c.cert_type() != CertType::Host {
                return Err(HostKeyError::WrongType);
            }
            // As OpenSSH's client: no critical option is defined for host certificates,
            // so one that carries any is not understood, and refused.
            if !c.critical_options().is_empty() {
                let names: Vec<&str> = c.critical_options().keys().map(String::as_str).collect();
                return Err(HostKeyError::CriticalOptions(names.join(",")));
            }
            if !c.valid_principals().iter().any(|p| p == principal) {
                return Err(HostKeyError::WrongPrincipal {
                    expected: principal.clone(),
                    found: c.valid_principals().join(","),
                });
            }
            let fps: Vec<_> = authorities.iter().map(|a| a.fingerprint(HashAlg::Sha256)).collect();
            match c.validate_at(now, fps.iter()) {
                Ok(()) => Ok(()),
                Err(russh::keys::ssh_key::Error::CertificateValidation)
                    if now < c.valid_after() || now >= c.valid_before() =>
                {
                    Err(HostKeyError::Expired)
                }
                Err(_) => Err(HostKeyError::BadSignature),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::new_ssh_key;

    #[test]
    fn user_certificate_fields() {
        let ca = new_ssh_key("ca");
        let subject = new_ssh_key("s");
        let c = user_certificate(
            &ca,
            subject.public_key(),
            "root",
            "alice/s1",
            Duration::from_secs(600),
            UserCertRights {
                pty: true,
                port_forwarding: false,
                sftp_only: false,
            },
            Some("192.0.2.7".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(c.cert_type(), CertType::User);
        assert_eq!(
            c.critical_options().get("source-address").map(String::as_str),
            Some("192.0.2.7/32")
        );
        assert_eq!(c.critical_options().len(), 1);
        assert_eq!(c.valid_principals(), ["root".to_string()]);
        assert_eq!(c.key_id(), "alice/s1");
        assert!(c.extensions().contains_key("permit-pty"));
        assert!(!c.extensions().contains_key("permit-port-forwarding"));
        assert!(c.valid_before() - c.valid_after() <= 600 + BACKDATE);
        c.validate([&ca.public_key().fingerprint(HashAlg::Sha256)]).unwrap();
        // A session that may run no command gets sshd's in-process SFTP server only.
        let sftp = user_certificate(
            &ca,
            subject.public_key(),
            "root",
            "alice/s2",
            Duration::from_secs(600),
            UserCertRights {
                pty: false,
                port_forwarding: false,
                sftp_only: true,
            },
            None,
        )
        .unwrap();
        assert_eq!(
            sftp.critical_options().get("force-command").map(String::as_str),
            Some("internal-sftp")
        );
        assert!(!sftp.extensions().contains_key("permit-pty"));
    }

    #[test]
    fn host_checks() {
        let ca = new_ssh_key("ca");
        let other_ca = new_ssh_key("other");
        let host = new_ssh_key("host");
        let check = HostKeyCheck::Ca {
            authorities: vec![ca.public_key().clone()],
            principal: "db1".into(),
        };
        let good = host_certificate(&ca, host.public_key(), "db1", Duration::from_secs(3600)).unwrap();
        assert_eq!(verify_host(&check, Presented::Certificate(&good)), Ok(()));
        let wrong_name = host_certificate(&ca, host.public_key(), "db2", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            verify_host(&check, Presented::Certificate(&wrong_name)),
            Err(HostKeyError::WrongPrincipal { .. })
        ));
        let untrusted = host_certificate(&other_ca, host.public_key(), "db1", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            verify_host(&check, Presented::Certificate(&untrusted)),
            Err(HostKeyError::UntrustedCa(_))
        ));
        let user_type = user_certificate(
            &ca,
            host.public_key(),
            "db1",
            "x",
            Duration::from_secs(60),
            UserCertRights {
                pty: false,
                port_forwarding: false,
                sftp_only: false,
            },
            None,
        )
        .unwrap();
        assert_eq!(
            verify_host(&check, Presented::Certificate(&user_type)),
            Err(HostKeyError::WrongType)
        );
        assert_eq!(
            verify_host_at(&check, Presented::Certificate(&good), unix_now() + 7200),
            Err(HostKeyError::Expired)
        );
        let mut b = builder(
            host.public_key(),
            CertType::Host,
            "herse-proxy:db1",
            "db1",
            Duration::from_secs(3600),
        )
        .unwrap();
        b.critical_option("force-command", "true").unwrap();
        let with_option = b.sign(&ca).unwrap();
        assert_eq!(
            verify_host(&check, Presented::Certificate(&with_option)),
            Err(HostKeyError::CriticalOptions("force-command".into()))
        );
        assert!(matches!(
            verify_host(&check, Presented::Key(host.public_key())),
            Err(HostKeyError::CertificateRequired(_))
        ));

        let pinned = HostKeyCheck::Pinned(vec![host.public_key().clone()]);
        assert_eq!(verify_host(&pinned, Presented::Key(host.public_key())), Ok(()));
        assert!(matches!(
            verify_host(&pinned, Presented::Key(other_ca.public_key())),
            Err(HostKeyError::NotPinned(_))
        ));
    }
}
