//! `walguard console` (SPEC section 9): the auditors' read-only web console, served by
//! walguard itself on hyper (the HTTP stack of `/metrics` and the witness; the few routes
//! did not call for a framework).
//!
//! One task reads the stream from its first message, feeds every message to the
//! [`Verifier`](crate::verify::Verifier) (the continuous verification) and to the
//! [`index::Index`], then polls for new messages; the request handlers ([`routes`]) read the
//! index and fetch the few events a page shows by sequence ([`Console::fetch`]), so no
//! request reads the whole stream. Pages are rendered by [`render`]; access is [`auth`].

pub mod auth;
pub mod index;
pub mod render;
pub mod routes;
pub mod timeline;
pub mod tls;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;

use crate::audit::Stored;
use crate::event::envelope::{HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::Keyring;
use crate::verify::Verifier;

/// How often the follower looks for new messages once it has read the stream.
const POLL: Duration = Duration::from_secs(1);

/// What the handlers share.
pub struct Console {
    pub index: RwLock<index::Index>,
    pub token: Option<auth::Token>,
    /// Served over TLS (the cookie gets `Secure`).
    pub tls: bool,
    js: jetstream::Context,
    stream: String,
}

impl Console {
    pub fn new(js: jetstream::Context, stream: &str, token: Option<auth::Token>, tls: bool) -> Console {
        Console {
            index: RwLock::new(index::Index::new(stream)),
            token,
            tls,
            js,
            stream: stream.to_owned(),
        }
    }

    /// The stored message at `sequence`, with its signature headers.
    pub async fn fetch(&self, sequence: u64) -> Result<Stored, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", self.stream))?;
        let m = stream
            .get_raw_message(sequence)
            .await
            .map_err(|e| format!("stream {} sequence {sequence}: {e}", self.stream))?;
        let kid = m.headers.get(HEADER_KEY_ID).map(|v| v.as_str().to_owned());
        let sig = m.headers.get(HEADER_SIGNATURE).map(|v| v.as_str().to_owned());
        Ok(Stored {
            sequence,
            signature: kid.zip(sig),
            payload: m.payload,
        })
    }

    /// Reads the stream into the index and verifier, then follows it; runs until dropped.
    pub async fn follow(self: Arc<Self>, keyring: Keyring) {
        let mut verifier = Verifier::new(&keyring);
        let mut next = 1;
        loop {
            let read = crate::audit::read_stream(&self.js, &self.stream, next, None, |m| {
                verifier.message(
                    m.sequence,
                    m.signature.as_ref().map(|(k, s)| (k.as_str(), s.as_str())),
                    &m.payload,
                );
                let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                index.add(&m);
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
