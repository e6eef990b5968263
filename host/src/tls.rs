//! The TLS client configuration for `https://` providers, built once at boot:
//! Mozilla's roots (bundled, so a fresh machine needs no system store) plus any
//! extra authorities from `--tls-ca-file` (a private CA, or a test
//! certificate).

use crate::boot::BootError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

pub fn client_config(ca_file: &str) -> Result<Arc<ClientConfig>, BootError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let bad = |reason: String| BootError::TlsCa {
            path: ca_file.into(),
            reason,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BootError::TlsCa {
            path: ca_file.into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
