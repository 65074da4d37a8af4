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

use crate::source::hosts::SessionAttrs;

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
    /// `target_session_attrs`, which walguard honours itself (`source::hosts`).
    pub session_attrs: SessionAttrs,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &describe_target(&self.inner))
            .field("password", &self.inner.get_password().map(|_| "<redacted>"))
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .field("session_attrs", &self.session_attrs)
            .finish()
    }
}

impl Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.inner
    }
}

/// Where a libpq-style configuration points, for messages (never with the password): every
/// host with its port, `h1:5432,h2:5433 (user u, database app)`.
pub fn describe_target(cfg: &tokio_postgres::Config) -> String {
    format!(
        "{} (user {}, database {})",
        host_labels(cfg).join(","),
        user_of(cfg),
        cfg.get_dbname().unwrap_or(user_of(cfg).as_str())
    )
}

/// Each host as `host:port`, as libpq pairs them: one port for every host, or one each (an
/// empty one is 5432); a `hostaddr` stands in for a missing host name; no host is localhost.
fn host_labels(cfg: &tokio_postgres::Config) -> Vec<String> {
    let count = cfg.get_hosts().len().max(cfg.get_hostaddrs().len()).max(1);
    (0..count)
        .map(|i| {
            let host = match (cfg.get_hosts().get(i), cfg.get_hostaddrs().get(i)) {
                (Some(Host::Tcp(h)), _) => h.clone(),
                (Some(Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(addr)) => addr.to_string(),
                (None, None) => "localhost".into(),
            };
            format!("{host}:{}", port_of(cfg, i))
        })
        .collect()
}

/// The port of the `i`th host: its own, else the only one given, else 5432.
fn port_of(cfg: &tokio_postgres::Config, i: usize) -> u16 {
    let ports = cfg.get_ports();
    ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432)
}

/// The `i`th host of `cfg` as a configuration of its own, everything else kept.
fn one_host(cfg: &tokio_postgres::Config, i: usize) -> tokio_postgres::Config {
    let mut one = tokio_postgres::Config::new();
    if let Some(user) = cfg.get_user() {
        one.user(user);
    }
    if let Some(password) = cfg.get_password() {
        one.password(password);
    }
    if let Some(dbname) = cfg.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = cfg.get_options() {
        one.options(options);
    }
    if let Some(name) = cfg.get_application_name() {
        one.application_name(name);
    }
    match cfg.get_hosts().get(i) {
        Some(Host::Tcp(h)) => {
            one.host(h);
        }
        Some(Host::Unix(p)) => {
            one.host_path(p);
        }
        None if cfg.get_hostaddrs().get(i).is_none() => {
            one.host("localhost");
        }
        None => {}
    }
    if let Some(addr) = cfg.get_hostaddrs().get(i) {
        one.hostaddr(*addr);
    }
    one.port(port_of(cfg, i));
    if let Some(t) = cfg.get_connect_timeout() {
        one.connect_timeout(*t);
    }
    if let Some(t) = cfg.get_tcp_user_timeout() {
        one.tcp_user_timeout(*t);
    }
    one.keepalives(cfg.get_keepalives());
    one.keepalives_idle(cfg.get_keepalives_idle());
    if let Some(t) = cfg.get_keepalives_interval() {
        one.keepalives_interval(t);
    }
    if let Some(n) = cfg.get_keepalives_retries() {
        one.keepalives_retries(n);
    }
    one.ssl_mode(cfg.get_ssl_mode());
    one.ssl_negotiation(cfg.get_ssl_negotiation());
    one.channel_binding(cfg.get_channel_binding());
    one
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

/// The host list libpq would accept and walguard can follow: no `@` in a host name (a
/// password cut short), one hostaddr and one port (or one port for all) per host, and hosts
/// tried in the order written.
fn check_hosts(inner: &tokio_postgres::Config) -> Result<(), String> {
    if inner
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(name) if name.contains('@')))
    {
        // `postgres://u:p@ss@db` gives password `p` and host `ss@db`, which logs would show.
        return Err("a host name holds `@`: write `@` in the user name or password as %40".to_owned());
    }
    let hosts = inner.get_hosts().len();
    let addrs = inner.get_hostaddrs().len();
    if hosts > 0 && addrs > 0 && hosts != addrs {
        return Err(format!(
            "postgres.url names {hosts} hosts and {addrs} hostaddrs: give one hostaddr per host, or none"
        ));
    }
    let ports = inner.get_ports().len();
    if ports > 1 && ports != hosts.max(addrs) {
        return Err(format!(
            "postgres.url names {} hosts and {ports} ports: give one port for all hosts, or one per host",
            hosts.max(addrs)
        ));
    }
    if inner.get_load_balance_hosts() != tokio_postgres::config::LoadBalanceHosts::Disable {
        return Err(
            "load_balance_hosts=random is not supported: walguard tries the hosts in the order written (remove it)"
                .to_owned(),
        );
    }
    Ok(())
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
        let mut attrs = None;
        let mut kept = Vec::with_capacity(params.len());
        for p in params {
            match p.key.as_str() {
                "sslmode" => mode = Some(p.value),
                "sslrootcert" => root = Some(p.value),
                "target_session_attrs" => attrs = Some(p.value),
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
        let session_attrs = attrs
            .as_deref()
            .map(SessionAttrs::from_str)
            .transpose()?
            .unwrap_or_default();
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert=FILE (the CA that signed the server's certificate)",
                mode.unwrap_or_default()
            ));
        }
        let mut inner = tokio_postgres::Config::from_str(&rest).map_err(|e| describe_refusal(&e))?;
        check_hosts(&inner)?;
        inner.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConfig {
            inner,
            ssl_mode,
            root_cert,
            session_attrs,
        })
    }

    /// One configuration per host, in the order written, each with this one's other
    /// settings (`target_session_attrs` too): what `source::hosts::connect` tries.
    pub fn candidates(&self) -> Vec<PgConfig> {
        let count = self
            .inner
            .get_hosts()
            .len()
            .max(self.inner.get_hostaddrs().len())
            .max(1);
        (0..count)
            .map(|i| PgConfig {
                inner: one_host(&self.inner, i),
                ssl_mode: self.ssl_mode,
                root_cert: self.root_cert.clone(),
                session_attrs: self.session_attrs,
            })
            .collect()
    }

    /// This configuration's first host as `host:port`, for messages.
    pub fn host_label(&self) -> String {
        host_labels(&self.inner).swap_remove(0)
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

    /// The host:port of each candidate `url` names, in order.
    fn labels(url: &str) -> Vec<String> {
        PgConfig::parse(url)
            .unwrap()
            .candidates()
            .iter()
            .map(PgConfig::host_label)
            .collect()
    }

    /// libpq's documented connection strings (libpq-connect.html, "Connection Strings" and
    /// "Specifying Multiple Hosts"), read as libpq reads them.
    #[test]
    fn libpq_documented_examples() {
        assert_eq!(labels("postgresql://"), ["localhost:5432"]);
        assert_eq!(labels("postgresql://localhost"), ["localhost:5432"]);
        assert_eq!(labels("postgresql://localhost:5433"), ["localhost:5433"]);
        let c = PgConfig::parse("postgresql://localhost/mydb").unwrap();
        assert_eq!(c.get_dbname(), Some("mydb"));
        let c = PgConfig::parse("postgresql://user@localhost").unwrap();
        assert_eq!(c.get_user(), Some("user"));
        let c = PgConfig::parse("postgresql://user:secret@localhost").unwrap();
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        let c =
            PgConfig::parse("postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&std::time::Duration::from_secs(10)));
        assert_eq!(c.get_application_name(), Some("myapp"));
        assert_eq!(c.session_attrs, SessionAttrs::Any);
        let url = "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp";
        assert_eq!(labels(url), ["host1:123", "host2:456"]);
        let c = PgConfig::parse(url).unwrap();
        assert_eq!(c.session_attrs, SessionAttrs::Any);
        for one in c.candidates() {
            assert_eq!(one.get_dbname(), Some("somedb"));
            assert_eq!(one.get_application_name(), Some("myapp"));
        }
        let kv = "host=localhost port=5432 dbname=mydb connect_timeout=10";
        assert_eq!(labels(kv), ["localhost:5432"]);
        assert_eq!(
            PgConfig::parse(kv).unwrap().candidates()[0].get_connect_timeout(),
            Some(&std::time::Duration::from_secs(10))
        );
        assert_eq!(
            labels("postgresql://[2001:db8::1234]/database"),
            ["2001:db8::1234:5432"]
        );
        assert_eq!(
            labels("postgresql:///dbname?host=/var/lib/postgresql"),
            ["/var/lib/postgresql:5432"]
        );
        assert_eq!(
            labels("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname"),
            ["/var/lib/postgresql:5432"]
        );
    }

    #[test]
    fn several_hosts_pair_with_their_ports_and_keep_the_rest() {
        // One port for all, one each, an empty one as 5432, and a host without one in a URL.
        assert_eq!(labels("host=h1,h2 port=5433"), ["h1:5433", "h2:5433"]);
        assert_eq!(
            labels("host=h1,h2,h3 port=1234,,5678"),
            ["h1:1234", "h2:5432", "h3:5678"]
        );
        assert_eq!(
            labels("postgresql://u@h1:1234,h2,h3:5678/db"),
            ["h1:1234", "h2:5432", "h3:5678"]
        );
        let c = PgConfig::parse(
            "postgres://u:pw@h1:5432,h2:5433/app?target_session_attrs=read-write&connect_timeout=5&sslmode=require",
        )
        .unwrap();
        assert_eq!(c.session_attrs, SessionAttrs::ReadWrite);
        assert!(format!("{c:?}").contains("h1:5432,h2:5433"));
        let second = &c.candidates()[1];
        assert_eq!(second.get_hosts(), [Host::Tcp("h2".into())]);
        assert_eq!(second.get_ports(), [5433]);
        assert_eq!(second.get_user(), Some("u"));
        assert_eq!(second.get_password(), Some(&b"pw"[..]));
        assert_eq!(second.get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
        assert_eq!(second.ssl_mode, SslMode::Require);
        assert_eq!(second.session_attrs, SessionAttrs::ReadWrite);
        // Every attribute libpq knows, in both forms; tokio-postgres alone knows two.
        for attrs in ["primary", "standby", "prefer-standby", "read-only"] {
            let c = PgConfig::parse(&format!("host=h1,h2 port=1,2 target_session_attrs={attrs}")).unwrap();
            assert_eq!(c.session_attrs.to_string(), attrs);
            let c = PgConfig::parse(&format!("postgres://h1:1,h2:2/db?target_session_attrs={attrs}")).unwrap();
            assert_eq!(c.session_attrs.to_string(), attrs);
        }
        let c = PgConfig::parse("host=h1 hostaddr=127.0.0.2 port=7").unwrap();
        assert_eq!(c.candidates()[0].get_hostaddrs().len(), 1);
    }

    #[test]
    fn host_lists_that_do_not_pair_are_refused() {
        for (url, says) in [
            ("host=h1,h2,h3 port=1,2", "3 hosts and 2 ports"),
            ("host=h1,h2 hostaddr=127.0.0.1", "2 hosts and 1 hostaddrs"),
            (
                "postgres://h1,h2/db?target_session_attrs=master",
                "target_session_attrs",
            ),
            ("host=h1,h2 load_balance_hosts=random", "load_balance_hosts"),
        ] {
            let err = PgConfig::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
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
