//! HTTPS with client certificates for the console (SPEC section 9): `console.tls_cert_file`
//! and `console.tls_key_file` are the console's own certificate and key, and only a client
//! whose certificate `console.tls_client_ca_file` issued completes the handshake (rustls's
//! `WebPkiClientVerifier`: chain, validity, the clientAuth usage), before any request is read.
//! The provider is ring, as for the TLS to PostgreSQL (`source::tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let say = |e: String| format!("{key} {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| say(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| say(e.to_string()))?;
    if certs.is_empty() {
        return Err(say("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// The acceptor of the three `console.tls_*` files; errors name the key and file at fault.
pub fn acceptor(cert_file: &Path, key_file: &Path, client_ca_file: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certs("console.tls_client_ca_file", client_ca_file)? {
        roots
            .add(ca)
            .map_err(|e| format!("console.tls_client_ca_file {}: {e}", client_ca_file.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("console.tls_client_ca_file {}: {e}", client_ca_file.display()))?;
    let chain = certs("console.tls_cert_file", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "console.tls_key_file {}: {e} (expected a PEM private key, unencrypted)",
            key_file.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "console.tls_cert_file {} and console.tls_key_file {}: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&empty, &empty, &empty).err().unwrap();
        assert!(
            err.starts_with("console.tls_client_ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = acceptor(&empty, &empty, &missing).err().unwrap();
        assert!(
            err.starts_with("console.tls_client_ca_file") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
