//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring):
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (libpq's default) | when the server offers it | no |
//! | `require` | always | no (as libpq without `sslrootcert`) |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain and host name |
//!
//! `sslmode` and `sslrootcert` are read from `postgres.url` (URL query or key=value form)
//! and removed before the rest goes to tokio-postgres, which knows only three modes. Both the
//! catalog connection and our replication connection use the same rustls configuration.

use std::ops::Deref;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

impl SslMode {
    pub fn required(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// A PostgreSQL connection configuration with its TLS settings.
#[derive(Clone)]
pub struct PgConfig {
    inner: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &super::conn::describe_target(&self.inner))
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.inner
    }
}

/// `%XX` decoding of a URL query value, as libpq does. It works on bytes, so a `%` before a
/// multibyte character is kept as written instead of slicing the string inside a character.
fn percent_decode(s: &str) -> String {
    let hex = |c: &u8| char::from(*c).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                // Two hex digits make one byte (at most 0xff).
                out.push((hi << 4 | lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgConfig {
    /// Parses a libpq URL or key=value string, taking `sslmode` and `sslrootcert` out.
    pub fn parse(url: &str) -> Result<PgConfig, String> {
        let mut mode = None;
        let mut root = None;
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url.split_once('?') {
                Some((base, query)) => {
                    let kept: Vec<&str> = query
                        .split('&')
                        .filter(|kv| match kv.split_once('=') {
                            Some(("sslmode", v)) => {
                                mode = Some(percent_decode(v));
                                false
                            }
                            Some(("sslrootcert", v)) => {
                                root = Some(percent_decode(v));
                                false
                            }
                            _ => true,
                        })
                        .collect();
                    if kept.is_empty() {
                        base.to_owned()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
                None => url.to_owned(),
            }
        } else {
            url.split_whitespace()
                .filter(|kv| match kv.split_once('=') {
                    Some(("sslmode", v)) => {
                        mode = Some(v.trim_matches('\'').to_owned());
                        false
                    }
                    Some(("sslrootcert", v)) => {
                        root = Some(v.trim_matches('\'').to_owned());
                        false
                    }
                    _ => true,
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let ssl_mode = mode
            .as_deref()
            .map(SslMode::from_str)
            .transpose()?
            .unwrap_or(SslMode::Prefer);
        let root_cert = root.map(PathBuf::from);
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert=FILE (the CA that signed the server's certificate)",
                mode.unwrap_or_default()
            ));
        }
        let mut inner = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
        inner.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConfig {
            inner,
            ssl_mode,
            root_cert,
        })
    }

    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.inner
    }

    /// The rustls configuration for this sslmode.
    pub fn rustls(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self.ssl_mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = self.root_cert.as_ref().expect("checked at parse");
                let mut roots = RootCertStore::empty();
                let certs =
                    CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("sslrootcert {} holds no certificate", path.display()));
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        inner: webpki,
                        check_name: self.ssl_mode == SslMode::VerifyFull,
                    }))
                    .with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        Ok(config)
    }
}

/// verify-ca and verify-full: the chain against `sslrootcert`, the host name only for
/// verify-full.
#[derive(Debug)]
struct Verifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }))
                if !self.check_name =>
            {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// prefer and require: encrypted, the certificate not checked (libpq's behaviour without
/// `sslrootcert`). Handshake signatures are still verified.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_root_cert_come_out_of_the_url() {
        let c = PgConfig::parse(
            "postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.get_application_name(), Some("x"));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = PgConfig::parse("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem").unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyCa);
        assert_eq!(c.get_user(), Some("u"));
        let c = PgConfig::parse("postgres://u@db/app").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert!(PgConfig::parse("postgres://u@db/app?sslmode=verify-full")
            .unwrap_err()
            .contains("sslrootcert"));
        assert!(PgConfig::parse("postgres://u@db/app?sslmode=sometimes")
            .unwrap_err()
            .contains("sslmode"));
    }

    #[test]
    fn percent_decoding_never_slices_inside_a_character() {
        assert_eq!(percent_decode("%2Fetc%2fca.pem"), "/etc/ca.pem");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        // A `%` before a multibyte character, or too close to the end, stays as written.
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%é1"), "%é1");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%"), "%");
        // Only hex digits: `from_str_radix` would have read `+1` as 1.
        assert_eq!(percent_decode("%+1"), "%+1");
        assert!(PgConfig::parse("postgres://u@db/app?sslrootcert=%aé").is_ok());
    }

    #[test]
    fn every_mode_builds_a_client_config() {
        for mode in ["disable", "prefer", "require"] {
            PgConfig::parse(&format!("postgres://u@db/app?sslmode={mode}"))
                .unwrap()
                .rustls()
                .unwrap();
        }
        let missing = PgConfig::parse("postgres://u@db/app?sslmode=verify-ca&sslrootcert=/nonexistent.pem").unwrap();
        assert!(missing.rustls().unwrap_err().contains("/nonexistent.pem"));
    }
}
