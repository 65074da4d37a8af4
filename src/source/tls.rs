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
use tokio_postgres::config::Host;

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
            .field("target", &describe_target(&self.inner))
            .field("password", &self.inner.get_password().map(|_| "<redacted>"))
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

/// Where a libpq-style configuration points, for messages (never with the password).
pub fn describe_target(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port} (user {}, database {})",
        user_of(cfg),
        cfg.get_dbname().unwrap_or(user_of(cfg).as_str())
    )
}

/// The user a configuration connects as, as libpq picks it.
pub fn user_of(cfg: &tokio_postgres::Config) -> String {
    cfg.get_user()
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into())
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

/// The options tokio-postgres 0.7 reads (its `Config::param`), besides `sslmode` and
/// `sslrootcert`, which walguard takes out itself. Other names are refused here rather than
/// by tokio-postgres, whose message would print the name, and a name after a password can be
/// a piece of that password (`password=a b=c` with the quotes forgotten).
const OPTIONS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// One option of `postgres.url`: its name and value as tokio-postgres reads them (decoded,
/// unquoted), and the text it came from, which is what is passed on.
struct Param<'a> {
    key: String,
    value: String,
    raw: &'a str,
}

/// A URL split where tokio-postgres splits it: the user info ends at the first `@` (if any),
/// the query starts at the first `?` after that. (Splitting at the first `?` would cut a
/// password holding one.) Returns the part before the query and the query's options.
fn split_url(url: &str) -> Result<(&str, Vec<Param<'_>>), String> {
    let host_start = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[host_start..].find('?').map(|q| host_start + q) else {
        return Ok((url, Vec::new()));
    };
    let params = url[q + 1..]
        .split('&')
        .filter(|raw| !raw.is_empty())
        .map(|raw| match raw.split_once('=') {
            Some((k, v)) => Ok(Param {
                key: percent_decode(k),
                value: percent_decode(v),
                raw,
            }),
            None => {
                Err("a query parameter has no `=`: write key=value, and write `&` inside a value as %26".to_owned())
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((&url[..q], params))
}

/// The key=value form, read as libpq and tokio-postgres read it: spaces allowed around `=`,
/// values in single quotes may hold spaces, a backslash escapes the next character.
fn split_keywords(s: &str) -> Result<Vec<Param<'_>>, String> {
    let mut it = s.char_indices().peekable();
    let mut params = Vec::new();
    let skip_spaces = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_spaces(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return Err(format!("an `=` at byte {start} has no option name before it"));
        }
        skip_spaces(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            return Err(format!(
                "expected `=` after the option name that starts at byte {start}: write key=value, \
                 and quote values that hold spaces (password='a b')"
            ));
        }
        skip_spaces(&mut it);
        let value = if it.next_if(|&(_, c)| c == '\'').is_some() {
            quoted_value(&mut it).ok_or_else(|| format!("the quoted value after byte {start} has no closing `'`"))?
        } else {
            let mut value = String::new();
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                match c {
                    '\\' => value.extend(it.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return Err(format!(
                    "the option that starts at byte {start} has no value: write key=value"
                ));
            }
            value
        };
        let end = it.peek().map_or(s.len(), |&(i, _)| i);
        params.push(Param {
            key,
            value,
            raw: &s[start..end],
        });
    }
    Ok(params)
}

/// The rest of a value after its opening `'`, up to and without the closing one; `None` if
/// there is none.
fn quoted_value(it: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<String> {
    let mut value = String::new();
    loop {
        match it.next()?.1 {
            '\'' => return Some(value),
            '\\' => value.push(it.next()?.1),
            c => value.push(c),
        }
    }
}

/// Refuses options tokio-postgres does not know, naming them only when no password came
/// before them.
fn check_options(params: &[Param<'_>]) -> Result<(), String> {
    let mut after_password = false;
    for p in params {
        let known = p.key == "sslmode" || p.key == "sslrootcert" || OPTIONS.contains(&p.key.as_str());
        if !known && after_password {
            return Err(
                "an option after the password is not one walguard knows (its name is not shown, as it may \
                 be part of the password): quote a password that holds spaces (password='a b'), and write `&` \
                 in a URL's password as %26"
                    .to_owned(),
            );
        }
        if !known {
            return Err(format!(
                "unknown option `{}`: see libpq's connection parameters for the names",
                p.key
            ));
        }
        after_password |= p.key == "password";
    }
    Ok(())
}

/// tokio-postgres's message for a string it refuses, with its cause (its Display alone says
/// only "invalid connection string"). Options and quoting were checked above, so the cause
/// names a setting, not a value; the one cause that quotes a character of the input
/// ("but got `x`") is cut there, in case the character belongs to a password.
fn describe_refusal(e: &tokio_postgres::Error) -> String {
    let message = match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    match message.find(" but got") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    }
}

impl PgConfig {
    /// Parses a libpq URL or key=value string, taking `sslmode` and `sslrootcert` out. No
    /// error message holds a value from `url`, as any of them may be the password.
    pub fn parse(url: &str) -> Result<PgConfig, String> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let (base, params) = if is_url {
            split_url(url)?
        } else {
            ("", split_keywords(url)?)
        };
        check_options(&params)?;
        let mut mode = None;
        let mut root = None;
        let mut kept = Vec::with_capacity(params.len());
        for p in params {
            match p.key.as_str() {
                "sslmode" => mode = Some(p.value),
                "sslrootcert" => root = Some(p.value),
                _ => kept.push(p.raw),
            }
        }
        let rest = match (is_url, kept.is_empty()) {
            (true, true) => base.to_owned(),
            (true, false) => format!("{base}?{}", kept.join("&")),
            (false, _) => kept.join(" "),
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
        let mut inner = tokio_postgres::Config::from_str(&rest).map_err(|e| describe_refusal(&e))?;
        if inner
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(name) if name.contains('@')))
        {
            // `postgres://u:p@ss@db` gives password `p` and host `ss@db`, which logs would show.
            return Err("a host name holds `@`: write `@` in the user name or password as %40".to_owned());
        }
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
    fn key_value_form_is_read_as_libpq_reads_it() {
        // Spaces around `=`: `sslmode = require` used to reach tokio-postgres untaken, and
        // the default `prefer` then replaced it.
        let c = PgConfig::parse("host=db sslmode = require user = u").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.get_user(), Some("u"));
        // Quoted values keep their spaces as written, and escapes are read.
        let c = PgConfig::parse(
            r"host=db password='a  b\'c' sslmode='verify-ca' sslrootcert='/etc/my ca/ca.pem' port=5433",
        )
        .unwrap();
        assert_eq!(c.get_password(), Some(&b"a  b'c"[..]));
        assert_eq!(c.ssl_mode, SslMode::VerifyCa);
        assert_eq!(c.root_cert, Some(PathBuf::from("/etc/my ca/ca.pem")));
        assert_eq!(c.get_ports(), [5433]);
        let c = PgConfig::parse(r"host=db sslmode=require sslrootcert=/etc/my\ ca/ca.pem").unwrap();
        assert_eq!(c.root_cert, Some(PathBuf::from("/etc/my ca/ca.pem")));
    }

    #[test]
    fn the_query_starts_after_the_user_info() {
        // tokio-postgres ends the user info at the first `@`; a `?` before it is the password's.
        let c = PgConfig::parse("postgres://u:a?b@db/app?sslmode=require").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.get_password(), Some(&b"a?b"[..]));
        assert_eq!(c.get_dbname(), Some("app"));
        let c = PgConfig::parse("postgres://db/app?sslmode=require&&application_name=x&").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.get_application_name(), Some("x"));
    }

    #[test]
    fn refusals_never_quote_the_password() {
        // Each password is `pw1Zq` and `pw2Xr` with something around or between them.
        for (url, says) in [
            ("host=db password pw1Zq", "expected `=`"),
            ("host=db password=pw1Zq pw2Xr", "expected `=`"),
            ("host=db password=pw1Zq pw2Xr=1", "not shown"),
            ("host=db password='pw1Zq pw2Xr", "closing"),
            ("host=db password=pw1Zq =pw2Xr", "no option name"),
            ("postgres://u@db/app?password=pw1Zq&pw2Xr", "no `=`"),
            ("postgres://u@db/app?password=pw1Zq&pw2Xr=1", "not shown"),
            ("postgres://u:pw1Zq@pw2Xr@db/app", "%40"),
            ("postgres://u:pw1Zq@db:port/app?password=pw2Xr", "port"),
        ] {
            let err = PgConfig::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
            for piece in ["pw1", "Zq", "pw2", "Xr", "`p`", "`Z`"] {
                assert!(!err.contains(piece), "{url}: {err}");
            }
        }
        // With no password before it, an unknown option is named, to help with its spelling.
        let err = PgConfig::parse("host=db aplication_name=x password=p").unwrap_err();
        assert!(err.contains("`aplication_name`"), "{err}");
        let err = PgConfig::parse("postgres://db/app?aplication_name=x").unwrap_err();
        assert!(err.contains("`aplication_name`"), "{err}");
    }

    #[test]
    fn debug_shows_the_target_and_hides_the_password() {
        for url in [
            "postgres://u:pw1Zq@db/app",
            "postgres://u@db/app?password=pw1Zq",
            "host=db user=u password = 'pw1Zq'",
        ] {
            let shown = format!("{:?}", PgConfig::parse(url).unwrap());
            assert!(shown.contains("db:5432") && shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains("pw1Zq"), "{shown}");
        }
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
