//! The feedback task: standby status updates on their own timer (so they flow while the
//! reader is blocked on the publisher) and at once when the server asks, always with the
//! position `checkpoint` says may be confirmed (G2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::checkpoint::Checkpoint;
use crate::clock::unix_micros;
use crate::decode::frame::standby_status_update;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::source::conn::ReplicationWriter;

/// How often a standby status update is sent: well inside the default 60 s
/// `wal_sender_timeout`, and often enough that confirmed positions reach the slot promptly.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);

/// The feedback stage: the replication connection's write half, and where its positions come
/// from.
pub struct Feedback {
    pub writer: ReplicationWriter,
    pub checkpoint: Arc<Checkpoint>,
    /// Notified when the server asks for a reply now.
    pub reply_now: Arc<Notify>,
}

impl Feedback {
    /// Sends standby status updates until told to stop, then one last one; returns the writer
    /// for the clean close.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<ReplicationWriter, Error> {
        let Feedback {
            mut writer,
            checkpoint,
            reply_now,
        } = self;
        let mut tick = tokio::time::interval(FEEDBACK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Lsn::ZERO;
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = reply_now.notified() => false,
                _ = stop.changed() => true,
            };
            let flush = checkpoint.confirmable(Instant::now());
            let written = checkpoint.written();
            let m = crate::telemetry::metrics();
            m.confirmed_lsn.set(flush.0 as i64);
            m.replication_lag_bytes.set(written.0.saturating_sub(flush.0) as i64);
            if flush != last_flush {
                tracing::debug!(%flush, "confirming to PostgreSQL");
                last_flush = flush;
            }
            let update = standby_status_update(written, flush, unix_micros(), !stopping);
            writer.send_copy_data(update).await?;
            if stopping {
                return Ok(writer);
            }
        }
    }
}
