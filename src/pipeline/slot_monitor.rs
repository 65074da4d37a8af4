//! The slot monitor: reads the slot's state while streaming, warns when it retains more WAL
//! than `postgres.retained_wal_warn`, and stops walguard when the slot lost WAL or vanished
//! (never a silent restart from a new slot, G7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::check;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Refusal};
use crate::source::catalog::{Catalog, WalStatus};
use crate::telemetry;

/// How often the slot's health is read while streaming.
pub const SLOT_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// The slot monitor stage.
pub struct SlotMonitor {
    pub catalog: Arc<Catalog>,
    pub slot: String,
    /// `postgres.retained_wal_warn`, in bytes.
    pub warn_above: u64,
    pub checkpoint: Arc<Checkpoint>,
}

impl SlotMonitor {
    /// Watches the slot while streaming: warns when it retains more WAL than configured, and
    /// stops walguard when the slot lost WAL or vanished (never a silent restart from a new
    /// slot).
    pub async fn run(self) -> Result<(), Error> {
        let SlotMonitor {
            catalog,
            slot,
            warn_above,
            checkpoint,
        } = self;
        let mut tick = tokio::time::interval(SLOT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let confirmed = checkpoint.confirmable(Instant::now());
            match catalog.slot(&slot).await? {
                None => {
                    return Err(Error::Refused(Refusal::LostSlot, format!(
                        "replication slot {slot} was dropped while walguard streamed: changes after {confirmed} may be missing; start over explicitly with `walguard resync`"
                    )))
                }
                Some(info) if info.wal_status == Some(WalStatus::Lost) => {
                    return Err(Error::Refused(Refusal::LostSlot, format!(
                        "replication slot {slot} has lost WAL it needs (wal_status lost): changes after {confirmed} are gone from the server; start over explicitly with `walguard resync`"
                    )))
                }
                Some(info) => {
                    let retained = info.retained_bytes.unwrap_or(0);
                    telemetry::metrics().slot_retained_wal_bytes.set(retained);
                    if retained as u64 > warn_above {
                        tracing::warn!(
                            slot = %slot,
                            retained = %check::human_bytes(retained),
                            threshold = %check::human_bytes(warn_above as i64),
                            wal_status = info.wal_status.as_ref().map_or("", WalStatus::as_str),
                            "the slot retains more WAL than postgres.retained_wal_warn"
                        );
                    }
                }
            }
        }
    }
}
