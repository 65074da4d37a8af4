//! Witnesses (SPEC section 8; C2SP `tlog-witness`, https://c2sp.org/tlog-witness): the client
//! the publisher uses to get a checkpoint cosigned, and `walguard witness`, the server.
//!
//! The server keeps, per log, the latest checkpoint it cosigned, in one file per log under
//! `--state` (named by the SHA-256 of the origin, as the protocol's monitoring path names a
//! log). A request is checked and the new checkpoint written (temporary file, fsync, rename,
//! fsync of the folder) under that log's lock before the cosignature is returned, so a witness
//! killed at any point and restarted answers from what it last promised: it never cosigns two
//! roots for one size, nor a size below one it cosigned. A lock file keeps a second witness
//! off the same folder.
//!
//! With `-c` ([`StreamAudit`]) the witness is the auditors' own: before cosigning it reads the
//! log's stream up to the checkpoint with `verify`'s checker and recomputes the root, so it
//! vouches for the content, not only for the log's append-only promise.
//!
//! HTTP is hyper's, already walguard's for `/metrics`: one route does not need a framework.
//! The client holds one keep-alive HTTP/1.1 connection per witness (the protocol's SHOULD) and
//! speaks TLS with the system's roots for `https://` witnesses.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex};

use crate::tlog::add_checkpoint::{parse_size_body, size_body, SIZE_CONTENT_TYPE};
use crate::tlog::proof::verify_consistency;
use crate::tlog::{AddCheckpoint, Cosignature, Cosigner, Hash, KeyKind, SignedCheckpoint, Vkey, EMPTY_ROOT};

/// The largest request body the witness reads: a note of 100 signatures is far below it.
const MAX_BODY: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// The client.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("witness {url}: {reason}; check `[[audit.witnesses]] url`")]
    Url { url: String, reason: String },
    #[error("witness key {0} is not a witness key (type 04, `cosignature/v1`)")]
    NotAWitnessKey(String),
    #[error("witness {url}: cannot connect: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("witness {url} did not answer within {0:?}", .timeout)]
    Timeout { url: String, timeout: Duration },
    #[error("witness {url} answered {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("witness {url} holds size {size}, beyond the checkpoint's {checkpoint}: it saw a longer log than ours")]
    Ahead { url: String, size: u64, checkpoint: u64 },
    #[error("witness {url} answered 409 again after retrying from its size {size}")]
    Conflict { url: String, size: u64 },
    #[error("witness {url}: no consistency proof from size {old}: {reason}")]
    Proof { url: String, old: u64, reason: String },
    #[error("witness {url} answered without a valid cosignature by {key}: {reason}")]
    BadAnswer { url: String, key: String, reason: String },
}

impl ClientError {
    /// Whether trying again later may succeed (a witness down or slow), as opposed to a
    /// witness that refuses this log's history or is misconfigured.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } | ClientError::Conflict { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// One configured witness: `[[audit.witnesses]] url` and `key`.
pub struct WitnessClient {
    url: String,
    endpoint: hyper::Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    vkey: Vkey,
    timeout: Duration,
    conn: Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for WitnessClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitnessClient")
            .field("url", &self.url)
            .field("vkey", &self.vkey)
            .finish_non_exhaustive()
    }
}

/// What a witness said to one request.
#[derive(Debug)]
pub enum Answer {
    /// Its cosignatures (by the configured key) on the checkpoint.
    Cosigned(Vec<Cosignature>),
    /// `409 Conflict`: the old size was not its size, which it gives.
    Conflict(u64),
}

impl WitnessClient {
    /// `url` is the submission prefix (`http://` or `https://`, `/add-checkpoint` is appended);
    /// `timeout` bounds each request, connecting included.
    pub fn new(url: &str, vkey: Vkey, timeout: Duration) -> Result<WitnessClient, ClientError> {
        if vkey.kind() != KeyKind::CosignatureV1 {
            return Err(ClientError::NotAWitnessKey(vkey.to_string()));
        }
        let bad = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let base: hyper::Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let secure = match base.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = base.host().ok_or_else(|| bad("no host"))?.to_owned();
        let port = base.port_u16().unwrap_or(if secure { 443 } else { 80 });
        if base.query().is_some() {
            return Err(bad("a witness URL has no query"));
        }
        let prefix = base.path().trim_end_matches('/');
        let endpoint: hyper::Uri = format!("{prefix}/add-checkpoint")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = if secure {
            Some(tls_connector().map_err(|r| bad(&r))?)
        } else {
            None
        };
        Ok(WitnessClient {
            url: url.to_owned(),
            endpoint,
            host,
            port,
            tls,
            vkey,
            timeout,
            conn: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn vkey(&self) -> &Vkey {
        &self.vkey
    }

    /// Gets `checkpoint` cosigned: sends it with the consistency proof from `known_size` (the
    /// witness's size as far as the caller knows; 0 when it does not), and on `409 Conflict`
    /// once more from the size the witness gives. `proof_from(old)` gives the consistency proof
    /// from `old` to the checkpoint's size (the publisher computes it from the stream).
    /// Returns the witness's verified cosignatures; the witness's size is then the
    /// checkpoint's.
    pub async fn cosign<F, Fut, E>(
        &self,
        checkpoint: &SignedCheckpoint,
        known_size: u64,
        mut proof_from: F,
    ) -> Result<Vec<Cosignature>, ClientError>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Hash>, E>>,
        E: std::fmt::Display,
    {
        let size = checkpoint.checkpoint().size();
        let mut old = known_size.min(size);
        for attempt in 0..2 {
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                proof_from(old).await.map_err(|e| ClientError::Proof {
                    url: self.url.clone(),
                    old,
                    reason: e.to_string(),
                })?
            };
            let request = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: checkpoint.to_bytes(),
            };
            match self.add_checkpoint(&request).await? {
                Answer::Cosigned(cosignatures) => return Ok(cosignatures),
                Answer::Conflict(theirs) if theirs > size => {
                    return Err(ClientError::Ahead {
                        url: self.url.clone(),
                        size: theirs,
                        checkpoint: size,
                    })
                }
                Answer::Conflict(theirs) if attempt == 0 => old = theirs,
                Answer::Conflict(theirs) => {
                    return Err(ClientError::Conflict {
                        url: self.url.clone(),
                        size: theirs,
                    })
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// One `add-checkpoint` request, bounded by the timeout.
    pub async fn add_checkpoint(&self, request: &AddCheckpoint) -> Result<Answer, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The connection may hold half a request: never reuse it.
                *self.conn.lock().await = None;
                Err(ClientError::Timeout {
                    url: self.url.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    async fn exchange(&self, request: &AddCheckpoint) -> Result<Answer, ClientError> {
        let checkpoint = SignedCheckpoint::parse(&request.checkpoint).map_err(|e| ClientError::BadAnswer {
            url: self.url.clone(),
            key: self.vkey.to_string(),
            reason: format!("the request's own checkpoint does not parse: {e}"),
        })?;
        let mut conn = self.conn.lock().await;
        let reusable = match conn.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *conn = Some(self.connect().await?);
        }
        let sender = conn.as_mut().expect("connected above");
        let host = if self.port == 80 || self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let req = Request::post(self.endpoint.clone())
            .header(hyper::header::HOST, host)
            .body(Full::new(Bytes::from(request.to_bytes())))
            .expect("a request from a parsed URI is valid");
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                *conn = None;
                return Err(unreachable(&e));
            }
        };
        let status = resp.status();
        let body = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                *conn = None;
                return Err(unreachable(&e));
            }
        };
        drop(conn);
        match status {
            StatusCode::OK => {
                let lines = std::str::from_utf8(&body).map_err(|_| self.bad_answer("the body is not UTF-8"))?;
                let mut cosigned = checkpoint;
                cosigned
                    .add_signature_lines(lines)
                    .map_err(|e| self.bad_answer(&e.to_string()))?;
                let mine = cosigned
                    .cosignatures(std::slice::from_ref(&self.vkey))
                    .map_err(|e| self.bad_answer(&e.to_string()))?;
                if mine.is_empty() {
                    return Err(self.bad_answer("no cosignature line by this key"));
                }
                Ok(Answer::Cosigned(mine))
            }
            StatusCode::CONFLICT => parse_size_body(&body)
                .map(Answer::Conflict)
                .ok_or_else(|| self.bad_answer("409 without a size")),
            _ => Err(ClientError::Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(512)])
                    .trim_end()
                    .to_owned(),
            }),
        }
    }

    fn bad_answer(&self, reason: &str) -> ClientError {
        ClientError::BadAnswer {
            url: self.url.clone(),
            key: self.vkey.to_string(),
            reason: reason.to_owned(),
        }
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.tls {
            None => handshake(tcp).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| unreachable(e.to_string()))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| unreachable(e.to_string()))?;
                handshake(stream).await
            }
        };
        sender.map_err(|e| unreachable(e.to_string()))
    }
}

async fn handshake<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "witness connection ended");
        }
    });
    Ok(sender)
}

/// TLS with the system's root certificates, as a browser would trust the witness.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no system root certificates to check the witness's TLS certificate with".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness state folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("witness state folder {0} is used by another running witness: stop it, or pass another --state")]
    Locked(PathBuf),
    #[error("witness state file {path} for log {origin} is damaged ({reason}): restore it from a backup; never delete it, or the witness would cosign a rolled-back log")]
    Damaged {
        path: PathBuf,
        origin: String,
        reason: String,
    },
    #[error("--log {0}: a log key is type 01 (Ed25519 note signature), not a witness key")]
    NotALogKey(String),
    #[error("no --log key has origin {0}")]
    NoSuchLog(String),
}

/// What the witness answers to one request: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Reply {
    fn new(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
        }
    }
}

/// The latest checkpoint cosigned for one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latest {
    size: u64,
    root: Hash,
}

struct Log {
    keys: Vec<Vkey>,
    path: PathBuf,
    /// With `-c`: the stream itself, checked up to each checkpoint before cosigning it.
    audit: Option<StreamAudit>,
    /// Held across check, store and cosign: two requests for one log never interleave.
    latest: Mutex<Option<Latest>>,
}

/// A witness: its cosigner, the logs it serves and their stored state.
pub struct Witness {
    cosigner: Cosigner,
    logs: HashMap<String, Log>,
    dir: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("cosigner", &self.cosigner)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The state file of a log: the hex SHA-256 of its origin (the protocol's "origin hash").
fn origin_hash(origin: &str) -> String {
    Sha256::digest(origin.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Witness {
    /// Opens (creating it when missing) and locks the state folder and reads every log's
    /// latest checkpoint.
    pub fn open(cosigner: Cosigner, logs: Vec<Vkey>, dir: &Path) -> Result<Witness, WitnessError> {
        let io = |source| WitnessError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| WitnessError::Locked(dir.to_owned()))?;
        let mut by_origin: HashMap<String, Vec<Vkey>> = HashMap::new();
        for key in logs {
            if key.kind() != KeyKind::Ed25519 {
                return Err(WitnessError::NotALogKey(key.to_string()));
            }
            by_origin.entry(key.name().to_owned()).or_default().push(key);
        }
        let mut served = HashMap::new();
        for (origin, keys) in by_origin {
            let path = dir.join(format!("{}.checkpoint", origin_hash(&origin)));
            let latest = read_latest(&path, &origin)?;
            served.insert(
                origin,
                Log {
                    keys,
                    path,
                    audit: None,
                    latest: Mutex::new(latest),
                },
            );
        }
        Ok(Witness {
            cosigner,
            logs: served,
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn vkey(&self) -> &Vkey {
        self.cosigner.vkey()
    }

    /// The verifying mode for one log: before cosigning a checkpoint of `origin`, read its
    /// stream up to the checkpoint's size and check it ([`StreamAudit::check`]).
    pub fn audit(&mut self, origin: &str, audit: StreamAudit) -> Result<(), WitnessError> {
        let log = self
            .logs
            .get_mut(origin)
            .ok_or_else(|| WitnessError::NoSuchLog(origin.to_owned()))?;
        log.audit = Some(audit);
        Ok(())
    }

    /// `add-checkpoint` (C2SP tlog-witness), every check in the order the protocol lists them;
    /// `now` is the cosignature's timestamp in seconds. Kept as one function (about 100
    /// lines) so that the order of the checks, which the protocol fixes, reads top to bottom.
    pub async fn add_checkpoint(&self, body: &[u8], now: u64) -> Reply {
        let request = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return Reply::new(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let signed = match SignedCheckpoint::parse(&request.checkpoint) {
            Ok(s) => s,
            Err(e) => return Reply::new(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let cp = signed.checkpoint();
        let Some(log) = self.logs.get(cp.origin()) else {
            return Reply::new(StatusCode::NOT_FOUND, format!("unknown log origin {}\n", cp.origin()));
        };
        if let Err(e) = signed.verify_log(&log.keys) {
            return Reply::new(StatusCode::FORBIDDEN, format!("{e}\n"));
        }
        if request.old_size > cp.size() {
            return Reply::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "old size {} is beyond the checkpoint's size {}\n",
                    request.old_size,
                    cp.size()
                ),
            );
        }
        let mut latest = log.latest.lock().await;
        let stored = latest.map_or(0, |l| l.size);
        if request.old_size != stored {
            return Reply {
                status: StatusCode::CONFLICT,
                body: size_body(stored),
            };
        }
        if cp.size() == 0 && cp.root() != EMPTY_ROOT {
            return Reply::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a tree of size 0 has the empty root\n",
            );
        }
        match *latest {
            Some(old) if old.size > 0 => {
                if let Err(e) = verify_consistency(old.size, cp.size(), &old.root, &cp.root(), &request.proof) {
                    tracing::warn!(origin = cp.origin(), old = old.size, new = cp.size(), error = %e, "refused an inconsistent checkpoint");
                    return Reply::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "checkpoint at size {} is not consistent with size {} cosigned before: {e}\n",
                            cp.size(),
                            old.size
                        ),
                    );
                }
            }
            _ if !request.proof.is_empty() => {
                return Reply::new(StatusCode::UNPROCESSABLE_ENTITY, "a proof from size 0 must be empty\n");
            }
            _ => {}
        }
        if let Some(audit) = &log.audit {
            match audit.check(cp.size(), &cp.root()).await {
                Ok(()) => {}
                Err(AuditError::Unavailable(e)) => {
                    tracing::warn!(origin = cp.origin(), error = %e, "cannot read the log's stream");
                    return Reply::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
                }
                Err(AuditError::Refused(e)) => {
                    tracing::warn!(origin = cp.origin(), size = cp.size(), error = %e, "the log's stream does not back the checkpoint");
                    return Reply::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("the stream does not back checkpoint {}: {e}\n", cp.size()),
                    );
                }
            }
        }
        let line = self.cosigner.cosign(signed.text(), now);
        let mut kept = signed;
        if let Err(e) = kept.add_signature_lines(&line) {
            return Reply::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
        }
        let new = Latest {
            size: kept.checkpoint().size(),
            root: kept.checkpoint().root(),
        };
        let path = log.path.clone();
        let bytes = kept.to_bytes();
        let stored = tokio::task::spawn_blocking(move || write_durably(&path, &bytes)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %log.path.display(), error = %e, "cannot store the witness state");
                return Reply::new(StatusCode::SERVICE_UNAVAILABLE, "the witness cannot store its state\n");
            }
            Err(e) => {
                tracing::error!(error = %e, "the witness's state writer failed");
                return Reply::new(StatusCode::SERVICE_UNAVAILABLE, "the witness cannot store its state\n");
            }
        }
        *latest = Some(new);
        tracing::info!(origin = kept.checkpoint().origin(), size = new.size, "cosigned");
        Reply::new(StatusCode::OK, line)
    }

    /// `GET /{origin hash}/checkpoint`: the latest checkpoint cosigned for a log, with the
    /// log's and this witness's signatures.
    pub async fn latest_checkpoint(&self, origin_hex: &str) -> Reply {
        for (origin, log) in &self.logs {
            if origin_hash(origin) == origin_hex && log.latest.lock().await.is_some() {
                return match fs::read_to_string(&log.path) {
                    Ok(note) => Reply::new(StatusCode::OK, note),
                    Err(_) => Reply::new(StatusCode::SERVICE_UNAVAILABLE, "cannot read the witness state\n"),
                };
            }
        }
        Reply::new(StatusCode::NOT_FOUND, "no checkpoint cosigned for that log\n")
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let path = req.uri().path().to_owned();
        let reply = match (req.method(), path.as_str()) {
            (&Method::POST, "/add-checkpoint") => match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => {
                    let now = u64::try_from(crate::clock::unix_micros() / 1_000_000).unwrap_or(0);
                    self.add_checkpoint(&body.to_bytes(), now).await
                }
                Err(_) => Reply::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            },
            (_, "/add-checkpoint") => Reply::new(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"),
            (&Method::GET, p) => match p.strip_prefix('/').and_then(|p| p.strip_suffix("/checkpoint")) {
                Some(hex) => self.latest_checkpoint(hex).await,
                None => Reply::new(StatusCode::NOT_FOUND, "not found\n"),
            },
            _ => Reply::new(StatusCode::NOT_FOUND, "not found\n"),
        };
        let content_type = match reply.status {
            StatusCode::CONFLICT => SIZE_CONTENT_TYPE,
            _ => "text/plain; charset=utf-8",
        };
        Ok(Response::builder()
            .status(reply.status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(reply.body)))
            .expect("a response with a valid status and header"))
    }
}

/// Why the verifying witness would not cosign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The stream could not be read (NATS down): try again.
    #[error("{0}")]
    Unavailable(String),
    /// The stream does not back the checkpoint: a broken chain or signature, a gap, too few
    /// messages, or another root.
    #[error("{0}")]
    Refused(String),
}

/// The verifying mode (`walguard witness -c`): the auditors' own witness reads the log's
/// stream and checks it (chain, signatures, transactions and order, as `walguard verify` does,
/// and the tree root) before it cosigns. It keeps the verifier and the frontier in memory, so
/// each checkpoint costs only the messages after the previous one; after a restart the first
/// checkpoint reads the stream from sequence 1.
///
/// The messages after the newest signature up to the checkpoint are covered by the
/// checkpoint's own signature (the log's key over their root), so an unsigned tail at the
/// checkpoint's size is no problem here, nor an open transaction.
pub struct StreamAudit {
    js: async_nats::jetstream::Context,
    stream: String,
    keyring: &'static crate::event::Keyring,
    state: Mutex<Audited>,
}

struct Audited {
    verifier: crate::verify::Verifier<'static>,
    frontier: crate::tlog::Frontier,
}

impl StreamAudit {
    /// `keyring` lives as long as the process (the witness serves until it exits).
    pub fn new(js: async_nats::jetstream::Context, stream: &str, keyring: crate::event::Keyring) -> StreamAudit {
        let keyring: &'static crate::event::Keyring = Box::leak(Box::new(keyring));
        StreamAudit {
            js,
            stream: stream.to_owned(),
            keyring,
            state: Mutex::new(Audited {
                verifier: crate::verify::Verifier::new(keyring),
                frontier: crate::tlog::Frontier::new(),
            }),
        }
    }

    /// Checks messages 1..=`size` of the stream and that their tree root is `root`.
    pub async fn check(&self, size: u64, root: &Hash) -> Result<(), AuditError> {
        let mut state = self.state.lock().await;
        if state.frontier.size() > size {
            *state = Audited {
                verifier: crate::verify::Verifier::new(self.keyring),
                frontier: crate::tlog::Frontier::new(),
            };
        }
        let from = state.frontier.size() + 1;
        if from <= size {
            let mut gap = None;
            let Audited { verifier, frontier } = &mut *state;
            crate::audit::read_stream(&self.js, &self.stream, from, Some(size), |m| {
                if m.sequence != frontier.size() + 1 {
                    gap = Some((frontier.size() + 1, m.sequence));
                    return false;
                }
                let sig = m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str()));
                verifier.message(m.sequence, sig, &m.payload);
                frontier.append_payload(&m.payload);
                true
            })
            .await
            .map_err(AuditError::Unavailable)?;
            if let Some((want, got)) = gap {
                return Err(AuditError::Refused(format!(
                    "stream {} skips from sequence {want} to {got}",
                    self.stream
                )));
            }
        }
        if let Some(p) = state.verifier.problems.first() {
            return Err(AuditError::Refused(p.to_string()));
        }
        if state.frontier.size() < size {
            return Err(AuditError::Refused(format!(
                "stream {} holds {} messages, fewer than the checkpoint's {size}",
                self.stream,
                state.frontier.size()
            )));
        }
        let computed = state.frontier.root();
        if computed != *root {
            return Err(AuditError::Refused(format!(
                "the root of its first {size} messages is {computed}, not the checkpoint's {root}"
            )));
        }
        Ok(())
    }
}

/// Serves the witness on `listener` until `shutdown` turns true.
pub async fn serve(listener: tokio::net::TcpListener, witness: Arc<Witness>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "witness: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // The guard `wait_for` gives back is not Send: dropped before the arm ends.
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return,
        };
        let witness = witness.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| witness.clone().handle(req));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%error, peer = %peer, "witness connection ended");
            }
        });
    }
}

/// The listen address, which must parse as `IP:PORT`.
pub fn parse_listen(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok()
}

fn read_latest(path: &Path, origin: &str) -> Result<Option<Latest>, WitnessError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(WitnessError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let damaged = |reason: String| WitnessError::Damaged {
        path: path.to_owned(),
        origin: origin.to_owned(),
        reason,
    };
    let signed = SignedCheckpoint::parse(&bytes).map_err(|e| damaged(e.to_string()))?;
    let cp = signed.checkpoint();
    if cp.origin() != origin {
        return Err(damaged(format!("it holds a checkpoint of {}", cp.origin())));
    }
    Ok(Some(Latest {
        size: cp.size(),
        root: cp.root(),
    }))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content:
/// a temporary file written and fsynced, renamed over, then the folder fsynced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Signer;
    use crate::tlog::proof::prove_consistency;
    use crate::tlog::{leaf_hash, Checkpoint, CheckpointSigner, Frontier};
    use ed25519_dalek::SigningKey;

    const ORIGIN: &str = "walguard/1/app/walguard";

    fn signer(seed: u8) -> Signer {
        Signer::new(SigningKey::from_bytes(&[seed; 32]))
    }

    struct Log {
        key: Signer,
        leaves: Vec<Hash>,
    }

    impl Log {
        fn new(seed: u8, n: u32) -> Log {
            Log {
                key: signer(seed),
                leaves: (0..n).map(|i| leaf_hash(format!("event {i}").as_bytes())).collect(),
            }
        }

        fn vkey(&self) -> Vkey {
            CheckpointSigner::new(ORIGIN, &self.key).unwrap().vkey().clone()
        }

        fn checkpoint(&self, size: u64) -> SignedCheckpoint {
            let root = Frontier::from_leaf_hashes(self.leaves[..size as usize].iter().copied()).root();
            let signer = CheckpointSigner::new(ORIGIN, &self.key).unwrap();
            SignedCheckpoint::sign(Checkpoint::new(ORIGIN, size, root).unwrap(), &signer).unwrap()
        }

        fn request(&self, old: u64, size: u64) -> Vec<u8> {
            let proof = if old == 0 || old >= size {
                vec![]
            } else {
                prove_consistency(old, size, self.leaves.iter().copied()).unwrap()
            };
            AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: self.checkpoint(size).to_bytes(),
            }
            .to_bytes()
        }
    }

    fn witness(dir: &Path, log: &Log) -> Witness {
        Witness::open(
            Cosigner::new("test-witness", signer(42)).unwrap(),
            vec![log.vkey()],
            dir,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_protocol_checks_in_order_and_the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(1, 20);
        let w = witness(dir.path(), &log);

        let first = w.add_checkpoint(&log.request(0, 5), 1_800_000_000).await;
        assert_eq!(first.status, StatusCode::OK, "{first:?}");
        let mut cosigned = log.checkpoint(5);
        cosigned.add_signature_lines(&first.body).unwrap();
        let cos = cosigned.cosignatures(&[w.vkey().clone()]).unwrap();
        assert_eq!(cos[0].timestamp, 1_800_000_000);

        // Consistent growth.
        assert_eq!(w.add_checkpoint(&log.request(5, 9), 1).await.status, StatusCode::OK);
        // A stale old size: 409 with ours.
        let stale = w.add_checkpoint(&log.request(5, 12), 2).await;
        assert_eq!(stale, Reply::new(StatusCode::CONFLICT, "9\n"));
        // A rollback below what was cosigned.
        assert_eq!(
            w.add_checkpoint(&log.request(5, 7), 3).await.status,
            StatusCode::CONFLICT
        );
        assert_eq!(
            w.add_checkpoint(&log.request(9, 7), 3).await.status,
            StatusCode::BAD_REQUEST
        );
        // A proof that does not verify.
        let mut bad = AddCheckpoint::parse(&log.request(9, 12)).unwrap();
        bad.proof[0].0[0] ^= 1;
        let refused = w.add_checkpoint(&bad.to_bytes(), 4).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{refused:?}");
        // Another history of the same size.
        let mut fork = Log::new(1, 20);
        fork.leaves[3] = leaf_hash(b"rewritten");
        assert_eq!(
            w.add_checkpoint(&fork.request(9, 9), 5).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // The same checkpoint again is cosigned again.
        assert_eq!(w.add_checkpoint(&log.request(9, 9), 6).await.status, StatusCode::OK);

        // Unknown origin, wrong key, garbage.
        let stranger = Log::new(2, 20);
        let mut other_origin = log.request(0, 3);
        let text = String::from_utf8(other_origin.clone())
            .unwrap()
            .replace(ORIGIN, "walguard/2/app/x");
        other_origin = text.into_bytes();
        assert_eq!(w.add_checkpoint(&other_origin, 7).await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            w.add_checkpoint(&stranger.request(9, 10), 7).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(w.add_checkpoint(b"old x\n\n", 7).await.status, StatusCode::BAD_REQUEST);

        // Restarted: the state is what was last cosigned.
        drop(w);
        let w = witness(dir.path(), &log);
        assert_eq!(
            w.add_checkpoint(&log.request(0, 12), 8).await,
            Reply::new(StatusCode::CONFLICT, "9\n")
        );
        assert_eq!(
            w.add_checkpoint(&fork.request(9, 9), 8).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(w.add_checkpoint(&log.request(9, 12), 8).await.status, StatusCode::OK);
        let latest = w.latest_checkpoint(&origin_hash(ORIGIN)).await;
        assert!(latest.body.starts_with(&format!("{ORIGIN}\n12\n")), "{latest:?}");
    }

    #[test]
    fn a_second_witness_on_the_same_folder_and_a_damaged_state_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::new(1, 4);
        let w = witness(dir.path(), &log);
        let err = Witness::open(Cosigner::new("w", signer(43)).unwrap(), vec![log.vkey()], dir.path()).unwrap_err();
        assert!(matches!(err, WitnessError::Locked(_)), "{err}");
        drop(w);
        fs::write(
            dir.path().join(format!("{}.checkpoint", origin_hash(ORIGIN))),
            "garbage",
        )
        .unwrap();
        let err = Witness::open(Cosigner::new("w", signer(43)).unwrap(), vec![log.vkey()], dir.path()).unwrap_err();
        assert!(matches!(err, WitnessError::Damaged { .. }), "{err}");
        let witness_key = Cosigner::new("w", signer(44)).unwrap().vkey().clone();
        let err = Witness::open(Cosigner::new("w", signer(43)).unwrap(), vec![witness_key], dir.path()).unwrap_err();
        assert!(matches!(err, WitnessError::NotALogKey(_)), "{err}");
    }

    #[test]
    fn witness_urls_are_checked() {
        let key = Cosigner::new("w", signer(1)).unwrap().vkey().clone();
        let log_key = Vkey::new("w", KeyKind::Ed25519, signer(1).verifying_key()).unwrap();
        assert!(WitnessClient::new("http://127.0.0.1:9189", key.clone(), Duration::from_secs(1)).is_ok());
        assert!(WitnessClient::new("http://127.0.0.1:9189/prefix/", key.clone(), Duration::from_secs(1)).is_ok());
        assert!(matches!(
            WitnessClient::new("ftp://127.0.0.1", key.clone(), Duration::from_secs(1)),
            Err(ClientError::Url { .. })
        ));
        assert!(matches!(
            WitnessClient::new("http://127.0.0.1", log_key, Duration::from_secs(1)),
            Err(ClientError::NotAWitnessKey(_))
        ));
    }
}
