//! `walguard console` (SPEC section 9): the auditors' read-only web console, served by
//! walguard itself on hyper (the HTTP stack of `/metrics` and the witness; the few routes
//! did not call for a framework).
//!
//! Over the stream, one task reads it from its first message, feeds every message to the
//! [`Verifier`](crate::verify::Verifier) (the continuous verification) and to the
//! [`index::Index`], then polls for new messages; over an archive ([`archive`]) the index is
//! built once from its verified segments. The request handlers ([`routes`]) read the index
//! and fetch the few events a page shows by sequence ([`Console::fetch`]), so no request
//! reads the whole stream. Pages are rendered by [`render`]; access is [`auth`] and [`tls`].

pub mod archive;
pub mod auth;
pub mod index;
pub mod render;
pub mod routes;
pub mod timeline;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;

use crate::audit::Stored;
use crate::event::envelope::{HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::Keyring;
use crate::tlog::Vkey;
use crate::verify::Verifier;

/// How often the follower looks for new messages once it has read the stream.
const POLL: Duration = Duration::from_secs(1);

/// Where the events come from.
enum Source {
    Stream {
        js: jetstream::Context,
        stream: String,
        prefix: String,
    },
    Archive {
        dir: PathBuf,
        stream: String,
        keyring: Keyring,
        lines: archive::Lines,
    },
}

/// What the handlers share.
pub struct Console {
    pub index: RwLock<index::Index>,
    pub token: Option<auth::Token>,
    /// Served over TLS (the cookie gets `Secure`).
    pub tls: bool,
    source: Source,
}

impl Console {
    /// A console over `stream` (subjects under `prefix`); [`Console::follow`] fills its index.
    pub fn new(
        js: jetstream::Context,
        stream: &str,
        prefix: &str,
        witnesses: Vec<Vkey>,
        token: Option<auth::Token>,
        tls: bool,
    ) -> Console {
        let mut index = index::Index::new(stream);
        index.witnesses = witnesses;
        Console {
            index: RwLock::new(index),
            token,
            tls,
            source: Source::Stream {
                js,
                stream: stream.to_owned(),
                prefix: prefix.to_owned(),
            },
        }
    }

    /// A console over the archive of `stream` in `dir`, its index built (and the archive
    /// verified) before this returns.
    pub fn over_archive(
        dir: &Path,
        stream: &str,
        keyring: Keyring,
        witnesses: Vec<Vkey>,
        token: Option<auth::Token>,
        tls: bool,
    ) -> Console {
        let mut index = index::Index::new(stream);
        index.witnesses = witnesses;
        let lines = archive::load(dir, stream, &keyring, &mut index);
        Console {
            index: RwLock::new(index),
            token,
            tls,
            source: Source::Archive {
                dir: dir.to_owned(),
                stream: stream.to_owned(),
                keyring,
                lines,
            },
        }
    }

    /// The stored message at `sequence`, with its signature headers.
    pub async fn fetch(&self, sequence: u64) -> Result<Stored, String> {
        let (js, stream) = match &self.source {
            Source::Stream { js, stream, .. } => (js, stream),
            // A seek and fewer than `archive::EVERY` lines of one file.
            Source::Archive { lines, .. } => return lines.fetch(sequence),
        };
        let st = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let m = st
            .get_raw_message(sequence)
            .await
            .map_err(|e| format!("stream {stream} sequence {sequence}: {e}"))?;
        let kid = m.headers.get(HEADER_KEY_ID).map(|v| v.as_str().to_owned());
        let sig = m.headers.get(HEADER_SIGNATURE).map(|v| v.as_str().to_owned());
        Ok(Stored {
            sequence,
            signature: kid.zip(sig),
            payload: m.payload,
        })
    }

    /// The inclusion proof of `sequence` against the newest checkpoint, as `walguard prove`
    /// makes it (over an archive it reads the segments again, off the async threads).
    pub async fn prove(&self, sequence: u64) -> Result<crate::prove::Proven, String> {
        match &self.source {
            Source::Stream { js, stream, prefix } => crate::prove::prove_stream(js, stream, prefix, sequence).await,
            Source::Archive {
                dir, stream, keyring, ..
            } => {
                let (dir, stream, keyring) = (dir.clone(), stream.clone(), keyring.clone());
                tokio::task::spawn_blocking(move || crate::prove::prove_archive(&dir, &stream, &keyring, sequence))
                    .await
                    .map_err(|e| format!("proving sequence {sequence}: {e}"))?
            }
        }
    }

    /// Reads the stream into the index and verifier, then follows it; runs until dropped.
    /// Over an archive the index was built by [`Console::over_archive`]: nothing to follow.
    pub async fn follow(self: Arc<Self>, keyring: Keyring) {
        let Source::Stream { js, stream, .. } = &self.source else {
            return;
        };
        let witnesses = self.index.read().unwrap_or_else(|p| p.into_inner()).witnesses.clone();
        let mut verifier = Verifier::new(&keyring).with_witnesses(witnesses);
        let mut next = 1;
        loop {
            let read = crate::audit::read_stream(js, stream, next, None, |m| {
                let event = verifier.message(
                    m.sequence,
                    m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str())),
                    &m.payload,
                );
                let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                index.add(&m, event.as_ref());
                index.verified_to = m.sequence;
                if index.problems.len() != verifier.problems.len() {
                    index.problems = verifier.problems.clone();
                }
                next = m.sequence + 1;
                true
            })
            .await;
            let read_error = read.err();
            if let Some(e) = &read_error {
                tracing::warn!(error = %e, "console: reading the stream failed; trying again");
            }
            self.index.write().unwrap_or_else(|p| p.into_inner()).read_error = read_error;
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Serves `console` on `listener` until `shutdown` turns true; over TLS with client
/// certificates when `tls` is given (a client the CA did not certify never gets to a request).
pub async fn serve(
    listener: tokio::net::TcpListener,
    console: Arc<Console>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, peer)) = accepted else { continue };
        let console = console.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(stream, console).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => connection(stream, console).await,
                    Err(error) => tracing::info!(%peer, %error, "console: TLS handshake refused"),
                },
            }
        });
    }
}

async fn connection<I>(io: I, console: Arc<Console>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let service = hyper::service::service_fn(move |req| routes::handle(console.clone(), req));
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%error, "console connection ended");
    }
}
