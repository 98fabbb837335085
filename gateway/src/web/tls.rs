//! The portal's TLS certificate: files named in the configuration, or a self-signed
//! certificate made on first start (its key sealed under the master key like the
//! gateway's other private keys).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::keys::KeyError;
use crate::secrets::MasterKey;
use crate::store::{Store, StoreError};

const NAME: &str = "web-tls";

fn label() -> &'static str {
    "herse-gateway-key:web-tls"
}

/// `(certificate PEM, private key PEM)` of the self-signed portal certificate, made for
/// `names` (DNS names or IP addresses) the first time.
pub async fn self_signed(
    store: &Store,
    master: &MasterKey,
    names: &[String],
) -> Result<(String, Zeroizing<String>), KeyError> {
    match store.gateway_key(NAME).await {
        Ok((cert, sealed)) => {
            let key = master.open(label(), &sealed)?;
            let key = String::from_utf8(key.to_vec()).map_err(|_| KeyError::Invalid(NAME))?;
            Ok((cert, Zeroizing::new(key)))
        }
        Err(StoreError::NotFound(_)) => {
            let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|_| KeyError::Invalid(NAME))?;
            let cert = ck.cert.pem();
            let key = Zeroizing::new(ck.signing_key.serialize_pem());
            store
                .put_gateway_key(NAME, &cert, &master.seal(label(), key.as_bytes()))
                .await?;
            Ok((cert, key))
        }
        Err(e) => Err(e.into()),
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, http/1.1).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("portal certificate: {e}"))?;
    if certs.is_empty() {
        return Err("portal certificate: no certificate in the PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("portal key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("portal certificate and key: {e}"))?;
    // HTTP/1.1 only: the portal is a few small forms, and HTTP/2 resets a stream whose
    // body a refusal did not read (curl, browsers then report a protocol error).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
