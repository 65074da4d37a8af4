//! The replication connection, ours, on postgres-protocol's codecs (tokio-postgres has no
//! replication mode and no CopyBoth).
//!
//! Startup sends `replication=database` and pins the session settings every value mapping
//! depends on; authentication covers trust, cleartext, md5 and SCRAM-SHA-256. After
//! START_REPLICATION the socket is split: the reader owns the read half and the feedback task
//! owns the write half, so standby status updates go out even while the reader is stopped by
//! backpressure (see the reference, section 4.10).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use crate::lsn::Lsn;
use crate::source::hosts::{self, NoHost, ServerState};
use crate::source::tls::{describe_target, user_of, PgConfig, SslMode};

/// Refuse messages larger than this: a garbage length must not allocate gigabytes. pgoutput
/// rows are bounded by PostgreSQL's 1 GB field limit plus framing.
const MAX_MESSAGE: usize = 1 << 30;

/// Session settings that fix the text form of every value (SPEC section 2).
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex";

#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("PostgreSQL connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS to PostgreSQL at {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("PostgreSQL authentication failed for user {user}: {reason}")]
    Auth { user: String, reason: String },
    #[error("PostgreSQL: {0}")]
    Server(ServerError),
    #[error("unexpected reply from PostgreSQL: {0}")]
    Protocol(String),
    #[error("PostgreSQL sent a malformed replication message: {0}")]
    Decode(#[from] crate::decode::DecodeError),
    /// The walsender ended the copy (CopyDone): what it does when the server shuts down after
    /// everything sent was confirmed.
    #[error("PostgreSQL ended the replication stream (server shutting down?)")]
    Ended,
    /// No host of a multi-host `postgres.url` could be used (`source::hosts`); `message`
    /// names each and what it answered.
    #[error("{message}")]
    NoHost { message: String, transient: bool },
}

impl SourceError {
    /// Whether retrying later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. } | SourceError::Io(_) | SourceError::Ended => true,
            SourceError::NoHost { transient, .. } => *transient,
            SourceError::Server(e) => super::sqlstate::is_transient(&e.code),
            SourceError::Auth { .. } | SourceError::Tls { .. } | SourceError::Protocol(_) | SourceError::Decode(_) => {
                false
            }
        }
    }
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

type BoxSocket = Pin<Box<dyn Socket>>;

enum Backend {
    CopyBothResponse,
    CopyData(Bytes),
    Other(backend::Message),
}

/// Room for at least this much in each socket read: a catch-up read takes dozens of changes.
const READ_CHUNK: usize = 64 * 1024;

struct Framed<R> {
    io: R,
    buf: BytesMut,
}

impl<R> Framed<R> {
    /// The length of the first message in the buffer, tag included, once its header is read.
    fn first_len(&self) -> Result<Option<usize>, SourceError> {
        Ok(backend::Header::parse(&self.buf)?.map(|h| h.len() as usize + 1))
    }

    /// Whether a whole message is already read from the socket.
    fn has_buffered(&self) -> bool {
        matches!(self.first_len(), Ok(Some(total)) if self.buf.len() >= total)
    }
}

impl<R: AsyncRead + Unpin> Framed<R> {
    async fn next(&mut self) -> Result<Backend, SourceError> {
        loop {
            if let Some(total) = self.first_len()? {
                if total > MAX_MESSAGE {
                    return Err(SourceError::Protocol(format!(
                        "message of {total} bytes exceeds the limit"
                    )));
                }
                if self.buf.len() >= total {
                    match self.buf[0] {
                        // postgres-protocol does not know CopyBothResponse and would consume
                        // it as an error, so it is framed here.
                        b'W' => {
                            self.buf.advance(total);
                            return Ok(Backend::CopyBothResponse);
                        }
                        b'd' => {
                            let mut m = self.buf.split_to(total);
                            m.advance(5);
                            return Ok(Backend::CopyData(m.freeze()));
                        }
                        _ => {
                            let msg = backend::Message::parse(&mut self.buf)?
                                .ok_or_else(|| SourceError::Protocol("incomplete message".into()))?;
                            return Ok(Backend::Other(msg));
                        }
                    }
                }
                self.buf.reserve((total - self.buf.len()).max(READ_CHUNK));
            } else {
                self.buf.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(SourceError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> SourceError {
    let mut e = ServerError::default();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    SourceError::Server(e)
}

/// What IDENTIFY_SYSTEM returns.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_identifier: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: String,
}

pub struct ReplicationConnection {
    framed: Framed<ReadHalf<BoxSocket>>,
    write: WriteHalf<BoxSocket>,
    pub server_version: String,
}

async fn open_socket(cfg: &tokio_postgres::Config) -> Result<BoxSocket, SourceError> {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let target = describe_target(cfg);
    let timeout = cfg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
    let connect = async {
        if let Some(addr) = cfg.get_hostaddrs().first() {
            // libpq: `hostaddr` is where to connect, `host` only the name (for TLS).
            return TcpStream::connect((*addr, port)).await.map(|s| {
                let _ = s.set_nodelay(true);
                Box::pin(s) as BoxSocket
            });
        }
        match cfg.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                UnixStream::connect(path).await.map(|s| Box::pin(s) as BoxSocket)
            }
            Some(Host::Tcp(host)) => TcpStream::connect((host.as_str(), port)).await.map(|s| {
                let _ = s.set_nodelay(true);
                Box::pin(s) as BoxSocket
            }),
            None => TcpStream::connect(("localhost", port))
                .await
                .map(|s| Box::pin(s) as BoxSocket),
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(SourceError::Connect { target, source }),
        Err(_) => Err(SourceError::Connect {
            target,
            source: io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")),
        }),
    }
}

/// SSLRequest, then the TLS handshake when the server agrees (sslmode semantics in
/// `tls.rs`). Unix sockets never use TLS, as with libpq.
async fn negotiate_tls(pg: &PgConfig, mut socket: BoxSocket) -> Result<BoxSocket, SourceError> {
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) => return Ok(socket),
        None => "localhost".to_owned(),
    };
    if pg.ssl_mode == SslMode::Disable {
        return Ok(socket);
    }
    let target = describe_target(pg);
    let tls_err = |reason: String| SourceError::Tls {
        target: target.clone(),
        reason,
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    socket.write_all(&buf).await?;
    socket.flush().await?;
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let config = pg.rustls().map_err(tls_err)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| tls_err(format!("host {host:?} is not a valid TLS server name ({e})")))?;
            let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, socket)
                .await
                .map_err(|e| tls_err(e.to_string()))?;
            Ok(Box::pin(stream))
        }
        b'N' if pg.ssl_mode.required() => Err(tls_err(format!(
            "the server does not accept TLS connections, but sslmode is {:?}",
            pg.ssl_mode
        ))),
        b'N' => Ok(socket),
        other => Err(SourceError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

impl ReplicationConnection {
    /// Connects to the first host of `pg` that is what its `target_session_attrs` asks for
    /// (`source::hosts`); the server is asked what it is in this `replication=database`
    /// session, which runs SQL.
    pub async fn connect(pg: &PgConfig) -> Result<Self, SourceError> {
        let attempt = |one: PgConfig| async move {
            let mut conn = ReplicationConnection::connect_one(&one).await?;
            let rows = conn.simple_query(ServerState::QUERY).await?;
            let row = rows.first();
            let field = |i: usize| row.and_then(|r| r.get(i)).and_then(|v| v.as_deref());
            let state = ServerState::from_text(field(0), field(1)).ok_or_else(|| {
                SourceError::Protocol(
                    "the answer to pg_is_in_recovery() or transaction_read_only is not a boolean".into(),
                )
            })?;
            Ok::<_, SourceError>((conn, state))
        };
        match hosts::connect(pg, attempt, SourceError::is_transient).await {
            Ok((conn, _)) => Ok(conn),
            Err(NoHost::Single(e)) => Err(e),
            Err(NoHost::Listed { message, transient }) => Err(SourceError::NoHost { message, transient }),
        }
    }

    /// One host, connected and authenticated.
    async fn connect_one(pg: &PgConfig) -> Result<Self, SourceError> {
        let cfg: &tokio_postgres::Config = pg;
        let socket = negotiate_tls(pg, open_socket(cfg).await?).await?;
        let (read, write) = tokio::io::split(socket);
        let mut conn = ReplicationConnection {
            framed: Framed {
                io: read,
                buf: BytesMut::with_capacity(64 * 1024),
            },
            write,
            server_version: String::new(),
        };
        let user = user_of(cfg);
        let database = cfg.get_dbname().map(str::to_owned).unwrap_or_else(|| user.clone());
        let application_name = cfg.get_application_name().unwrap_or("walguard");
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("database", database.as_str()),
                ("replication", "database"),
                ("application_name", application_name),
                ("client_encoding", "UTF8"),
                ("options", SESSION_OPTIONS),
            ],
            &mut buf,
        )?;
        conn.send(&buf).await?;
        conn.authenticate(&user, cfg.get_password()).await?;
        Ok(conn)
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), SourceError> {
        self.write.write_all(buf).await?;
        self.write.flush().await?;
        Ok(())
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), SourceError> {
        let auth_err = |reason: &str| SourceError::Auth {
            user: user.to_owned(),
            reason: reason.to_owned(),
        };
        let need_password =
            || password.ok_or_else(|| auth_err("the server asks for a password and postgres.url has none"));
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = match self.framed.next().await? {
                Backend::Other(m) => m,
                _ => return Err(SourceError::Protocol("copy message during startup".into())),
            };
            let mut buf = BytesMut::new();
            match msg {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut buf)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash =
                        postgres_protocol::authentication::md5_hash(user.as_bytes(), need_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next()? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(auth_err(
                            "the server offers no SASL mechanism walguard supports (SCRAM-SHA-256)",
                        ));
                    }
                    let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| auth_err("SASL continue before SASL start"))?;
                    s.update(body.data()).map_err(|e| auth_err(&e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut buf)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| auth_err("SASL final before SASL start"))?;
                    s.finish(body.data()).map_err(|e| auth_err(&e.to_string()))?;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi => {
                    return Err(auth_err("the server asks for an authentication method walguard does not support (use scram-sha-256, md5, password or trust)"));
                }
                backend::Message::ParameterStatus(body) => {
                    if body.name()? == "server_version" {
                        self.server_version = body.value()?.to_owned();
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => {
                    return Err(match server_error(&body) {
                        SourceError::Server(e) if e.code.starts_with("28") => SourceError::Auth {
                            user: user.to_owned(),
                            reason: e.to_string(),
                        },
                        other => other,
                    });
                }
                _ => return Err(SourceError::Protocol("unexpected message during startup".into())),
            }
            if !buf.is_empty() {
                self.send(&buf).await?;
            }
        }
    }

    /// Runs one command with the simple query protocol; rows come back as text.
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        let mut buf = BytesMut::new();
        frontend::query(query, &mut buf)?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.framed.next().await? {
                Backend::Other(backend::Message::DataRow(body)) => {
                    let data = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next()? {
                        row.push(r.map(|r| String::from_utf8_lossy(&data[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Backend::Other(backend::Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                Backend::Other(backend::Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                Backend::Other(_) => {}
                _ => return Err(SourceError::Protocol(format!("copy message in reply to {query}"))),
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemInfo {
            system_identifier: field(0),
            timeline: field(1)
                .parse()
                .map_err(|_| SourceError::Protocol("IDENTIFY_SYSTEM timeline is not a number".into()))?,
            xlogpos: field(2)
                .parse()
                .map_err(|_| SourceError::Protocol("IDENTIFY_SYSTEM xlogpos is not an LSN".into()))?,
            dbname: field(3),
        })
    }

    /// TIMELINE_HISTORY: the history file of timeline `tli` (2 and later), as text.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<String, SourceError> {
        let rows = self.simple_query(&format!("TIMELINE_HISTORY {tli}")).await?;
        rows.first()
            .and_then(|r| r.get(1).cloned().flatten())
            .map(|v| crate::pipeline::timeline::history_text(&v))
            .ok_or_else(|| SourceError::Protocol(format!("TIMELINE_HISTORY {tli} returned no content")))
    }

    /// The server's major version, from the startup parameters.
    pub fn server_major(&self) -> u32 {
        self.server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// Creates the logical slot for pgoutput; returns its consistent point and, with
    /// `export`, the name of its exported snapshot (valid until the next command on this
    /// connection). `failover` (PostgreSQL 17+) makes it a failover slot.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        export: bool,
        failover: bool,
    ) -> Result<(Lsn, Option<String>), SourceError> {
        let snapshot = if export { "export" } else { "nothing" };
        let options = match (failover, export) {
            (true, _) => format!("(SNAPSHOT '{snapshot}', FAILOVER true)"),
            (false, true) => "EXPORT_SNAPSHOT".to_owned(),
            (false, false) => "NOEXPORT_SNAPSHOT".to_owned(),
        };
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {options}",
                quote_ident(slot)
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into()))?;
        let name = row.get(2).cloned().flatten();
        if export && name.is_none() {
            return Err(SourceError::Protocol(
                "CREATE_REPLICATION_SLOT exported no snapshot".into(),
            ));
        }
        Ok((point, name))
    }

    /// Starts streaming pgoutput v1 from `start` and splits the connection.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<(ReplicationReader, ReplicationWriter), SourceError> {
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        let mut buf = BytesMut::new();
        frontend::query(&command, &mut buf)?;
        self.send(&buf).await?;
        loop {
            match self.framed.next().await? {
                Backend::CopyBothResponse => break,
                Backend::Other(backend::Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Backend::Other(backend::Message::NoticeResponse(_)) => {}
                _ => return Err(SourceError::Protocol("unexpected reply to START_REPLICATION".into())),
            }
        }
        Ok((
            ReplicationReader { framed: self.framed },
            ReplicationWriter { write: self.write },
        ))
    }
}

/// The read half of a streaming replication connection.
pub struct ReplicationReader {
    framed: Framed<ReadHalf<BoxSocket>>,
}

impl ReplicationReader {
    /// Whether the next message is already read: `next` will not wait for the server.
    pub fn has_buffered(&self) -> bool {
        self.framed.has_buffered()
    }

    /// The next CopyData payload; `None` once the server ends the copy.
    pub async fn next(&mut self) -> Result<Option<Bytes>, SourceError> {
        loop {
            match self.framed.next().await? {
                Backend::CopyData(data) => return Ok(Some(data)),
                Backend::Other(backend::Message::CopyDone) => return Ok(None),
                Backend::Other(backend::Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Backend::Other(backend::Message::CommandComplete(_)) => return Ok(None),
                Backend::Other(_) => {}
                Backend::CopyBothResponse => return Err(SourceError::Protocol("second CopyBothResponse".into())),
            }
        }
    }

    /// After CopyDone was sent: discard what is still in flight until the server is done.
    pub async fn drain(&mut self) -> Result<(), SourceError> {
        loop {
            if let Backend::Other(backend::Message::ReadyForQuery(_)) = self.framed.next().await? {
                return Ok(());
            }
        }
    }
}

/// The write half: standby status updates and the end of the stream.
pub struct ReplicationWriter {
    write: WriteHalf<BoxSocket>,
}

impl ReplicationWriter {
    pub async fn send_copy_data(&mut self, payload: Bytes) -> Result<(), SourceError> {
        let mut buf = BytesMut::with_capacity(payload.len() + 5);
        frontend::CopyData::new(payload)?.write(&mut buf);
        self.write.write_all(&buf).await?;
        self.write.flush().await?;
        Ok(())
    }

    pub async fn copy_done(&mut self) -> Result<(), SourceError> {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        self.write.write_all(&buf).await?;
        self.write.flush().await?;
        Ok(())
    }

    pub async fn terminate(mut self) -> Result<(), SourceError> {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        self.write.write_all(&buf).await?;
        self.write.shutdown().await?;
        Ok(())
    }
}

/// A double-quoted identifier, as the replication grammar and SQL expect.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("walguard"), "\"walguard\"");
        assert_eq!(quote_ident("We\"ird"), "\"We\"\"ird\"");
        assert_eq!(quote_literal(&quote_ident("it's")), "'\"it''s\"'");
    }

    #[test]
    fn a_message_counts_as_buffered_only_once_whole() {
        // CopyData ('d', length 4 + 3) with a 3-byte payload.
        let frame = [b'd', 0, 0, 0, 7, 1, 2, 3];
        let framed = |bytes: &[u8]| Framed {
            io: tokio::io::empty(),
            buf: BytesMut::from(bytes),
        };
        assert!(!framed(&[]).has_buffered());
        assert!(!framed(&frame[..4]).has_buffered());
        assert!(!framed(&frame[..7]).has_buffered());
        assert!(framed(&frame).has_buffered());
        assert!(framed(&[&frame[..], &frame[..2]].concat()).has_buffered());
    }

    #[test]
    fn transient_errors() {
        let server = |code: &str| {
            SourceError::Server(ServerError {
                code: code.into(),
                ..Default::default()
            })
        };
        // The same list as the catalog connection's (source::sqlstate).
        assert!(server("55006").is_transient());
        assert!(server("57P01").is_transient());
        assert!(server("40P01").is_transient());
        assert!(!server("57P04").is_transient(), "a dropped database needs a person");
        assert!(!server("42704").is_transient());
        assert!(!SourceError::Protocol("x".into()).is_transient());
        assert!(SourceError::Ended.is_transient());
    }
}
