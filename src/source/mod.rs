//! The source: the replication connection (`conn`), the SQL catalog connection (`catalog`),
//! and the two tasks that run on a started stream: the WAL reader, which decodes and builds
//! events and hands them to the publisher through a bounded channel, and the feedback task,
//! which sends standby status updates on its own timer and at once when the server asks.

pub mod catalog;
pub mod conn;
pub mod sqlstate;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use crate::checkpoint::Checkpoint;
use crate::decode::frame::{standby_status_update, ServerFrame};
use crate::decode::pgoutput::Message;
use crate::error::Error;
use crate::event::value::ValueKind;
use crate::event::EventBuilder;
use crate::lsn::Lsn;
use crate::pipeline::handoff::{Batcher, Item};
use catalog::Catalog;
use conn::{ReplicationReader, ReplicationWriter, SourceError};

/// How often a standby status update is sent: well inside the default 60 s
/// `wal_sender_timeout`, and often enough that confirmed positions reach the slot promptly.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);

pub struct WalReader {
    pub reader: ReplicationReader,
    pub builder: EventBuilder,
    pub catalog: Arc<Catalog>,
    pub types: HashMap<u32, ValueKind>,
    pub checkpoint: Arc<Checkpoint>,
    pub reply_now: Arc<Notify>,
    /// Incremental snapshot chunks in flight.
    pub chunks: Arc<crate::snapshot::Chunks>,
}

impl WalReader {
    /// Reads until shutdown (returning the connection's read half for the clean close) or an
    /// error. Blocks on the channel when the publisher is behind: backpressure reaches the
    /// socket, and the server simply waits.
    pub async fn run(
        mut self,
        mut tx: Batcher,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<ReplicationReader, Error> {
        let mut out = Vec::new();
        loop {
            // Whatever is batched goes to the publisher before the reader waits for the server.
            if !self.reader.has_buffered() && tx.flush().await.is_err() {
                return Ok(self.reader);
            }
            let payload = tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(self.reader),
                p = self.reader.next() => p?,
            };
            let Some(payload) = payload else {
                return Err(SourceError::Ended.into());
            };
            match ServerFrame::parse(payload).map_err(SourceError::from)? {
                ServerFrame::XLogData { wal_end, data, .. } => {
                    if wal_end != Lsn::ZERO {
                        self.checkpoint.received(wal_end);
                    }
                    let msg = Message::parse(data).map_err(SourceError::from)?;
                    if let Message::Message {
                        transactional: false,
                        lsn,
                        prefix,
                        content,
                    } = &msg
                    {
                        if prefix == crate::snapshot::MARK_PREFIX {
                            if let Some(chunk) = self.chunks.mark(content) {
                                let missing: Vec<u32> =
                                    EventBuilder::unresolved_types(&chunk.relation, &self.types).collect();
                                self.catalog.resolve_types(missing, &mut self.types).await?;
                                chunk.publish(&mut self.builder, &self.types, *lsn, unix_micros(), &mut out)?;
                                if tx.push_events(&mut out).await.is_err() {
                                    return Ok(self.reader);
                                }
                            }
                            continue;
                        }
                    }
                    let commit_end = match &msg {
                        Message::Relation(rel) => {
                            let missing: Vec<u32> = EventBuilder::unresolved_types(rel, &self.types).collect();
                            if !missing.is_empty() {
                                self.catalog.resolve_types(missing, &mut self.types).await?;
                            }
                            None
                        }
                        Message::Commit(c) => Some(c.end_lsn),
                        _ => None,
                    };
                    self.chunks.observe(&self.builder, &msg);
                    self.builder.handle(msg, &self.types, &mut out)?;
                    if tx.push_events(&mut out).await.is_err() {
                        return Ok(self.reader);
                    }
                    if let Some(end) = commit_end {
                        if tx.push(Item::Position(end)).await.is_err() {
                            return Ok(self.reader);
                        }
                    }
                }
                ServerFrame::Keepalive {
                    wal_end,
                    reply_requested,
                } => {
                    self.checkpoint.received(wal_end);
                    if !self.builder.in_transaction() && tx.push(Item::Position(wal_end)).await.is_err() {
                        return Ok(self.reader);
                    }
                    if reply_requested {
                        self.reply_now.notify_one();
                    }
                }
                ServerFrame::Other(tag) => tracing::debug!(tag, "ignoring unknown replication message"),
            }
        }
    }
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Sends standby status updates until told to stop, then one last one; returns the writer for
/// the clean close.
pub async fn feedback(
    mut writer: ReplicationWriter,
    checkpoint: Arc<Checkpoint>,
    reply_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> Result<ReplicationWriter, Error> {
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
