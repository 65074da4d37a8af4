//! The composition root: the only place that connects the stages and spawns tasks.
//!
//! `run` is the retry policy: it runs one session after another (`session`: connect, decide
//! where to start, publish the baseline, stream, close) and sorts each session's error by
//! `Error::recovery`. Transient errors end the session and a new one starts after a capped
//! backoff, from the stream's tail again, so nothing is skipped and nothing is confirmed past
//! what is stored (G3). Permanent errors stop the process with a message that says what to fix.

mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Recovery};
use crate::event::{ColumnHasher, Signer};
use crate::telemetry;
use session::{Session, SessionEnd};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a standby tries to take the slot over.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Runs the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let signer = Arc::new(Signer::load(&cfg.signing.key_file)?);
    let hasher = ColumnHasher::from_config(&cfg.hashing)?;
    tracing::info!(key_id = signer.key_id(), slot = %cfg.postgres.slot, stream = %cfg.nats.stream, "walguard starting");
    let session = Session {
        cfg: &cfg,
        signer,
        hasher,
    };
    let mut backoff = Duration::from_millis(500);
    let mut streamed_once = false;
    let mut standby_logged = false;
    loop {
        let started = Instant::now();
        let SessionEnd { streamed, result } = session.run(shutdown.clone()).await;
        streamed_once |= streamed;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.recovery() == Recovery::Blocked => {
                // An event cannot go out: stay up, say why, and try it again (SPEC G3). The
                // next session connects anew, so it learns a raised max_payload.
                telemetry::metrics().error(e.kind());
                telemetry::metrics().restarts.inc();
                telemetry::health().blocked(format!("{}: {e}", e.kind()), e.blocked_at());
                tracing::error!(error = %e, kind = e.kind(), retry_in = ?backoff, "progress is blocked at an event that cannot be published; nothing after it is published, retrying");
                if pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) if e.is_slot_in_use() => {
                telemetry::health().not_streaming("standby: the slot is active for another process");
                // Another walguard streams from the slot: wait as its standby and take over
                // within seconds once it is gone.
                if !standby_logged {
                    tracing::info!(slot = %cfg.postgres.slot, "the slot is active for another process; waiting as standby");
                    standby_logged = true;
                }
                if pause(STANDBY_POLL, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) if e.is_transient() && (streamed_once || *shutdown.borrow()) => {
                telemetry::metrics().error(e.kind());
                telemetry::metrics().restarts.inc();
                telemetry::health().not_streaming(format!("{}: {e}", e.kind()));
                if *shutdown.borrow() {
                    return Ok(());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                tracing::warn!(error = %e, kind = e.kind(), retry_in = ?backoff, "session failed; retrying from the stream's tail");
                if pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                telemetry::metrics().error(e.kind());
                telemetry::health().not_streaming(e.to_string());
                return Err(e);
            }
        }
    }
}

/// Waits `d` between sessions; `true` when shutdown was asked for meanwhile.
async fn pause(d: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut sd = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = sd.changed() => true,
    }
}
