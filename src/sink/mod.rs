//! JetStream: the connection, the stream (created or checked per SPEC section 3), the stream's
//! tail as the checkpoint (G7), the pipelined publisher, and the stream read back in order
//! (`reader`).

pub mod publisher;
pub mod reader;
pub mod stream;
pub mod transparency;

use std::time::Duration;

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream request failed: {0}")]
    Request(String),
    #[error("publish of stream sequence {sequence} failed: {reason}")]
    Publish { sequence: u64, reason: String },
    /// An event larger than the NATS server accepts. Progress stops at it (nothing is
    /// skipped) and the session is retried, so a raised `max_payload` is picked up by the
    /// next connection without a restart.
    #[error("event for table {table} at {} (event id {id}) is {size} bytes, over the NATS server's max_payload of {limit} bytes: raise max_payload in the nats-server configuration (walguard retries and goes on by itself; nothing is skipped)", .at.lsn)]
    PayloadTooLarge {
        table: std::sync::Arc<str>,
        at: crate::event::Position,
        id: uuid::Uuid,
        size: usize,
        limit: usize,
    },
    /// Something only the operator can fix; the message says how.
    #[error("{1}")]
    Refused(crate::error::Refusal, String),
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, SinkError::Refused(..) | SinkError::PayloadTooLarge { .. })
    }
}

/// Connects with the configured credentials and TLS files.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, SinkError> {
    let err = |reason: String| SinkError::Connect {
        url: crate::config::redact_url(&cfg.url),
        reason,
    };
    let mut opts = match &cfg.nkey_file {
        Some(nkey) => {
            let seed =
                std::fs::read_to_string(nkey).map_err(|e| err(format!("nats.nkey_file {}: {e}", nkey.display())))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        }
        None => async_nats::ConnectOptions::new(),
    }
    .name("walguard")
    .connection_timeout(Duration::from_secs(5))
    .request_timeout(Some(Duration::from_secs(10)));
    if let Some(creds) = &cfg.creds_file {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| err(format!("nats.creds_file {}: {e}", creds.display())))?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        if !ca.exists() {
            return Err(err(format!("nats.tls_ca_file {} does not exist", ca.display())));
        }
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => opts = opts.add_client_certificate(cert.clone(), key.clone()),
        (None, None) => {}
        _ => return Err(err("nats.tls_cert_file and nats.tls_key_file go together".into())),
    }
    // Several servers (a cluster) are separated by commas.
    let servers: Vec<&str> = cfg.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    opts.connect(servers).await.map_err(|e| err(e.to_string()))
}
