//! The WAL reader: the stage that runs on a started replication stream, decodes pgoutput,
//! builds event drafts and hands them to the publisher through the bounded hand-off
//! (`pipeline::handoff`). It blocks on the channel when the publisher is behind, so
//! backpressure reaches the socket and the server simply waits (G5).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::checkpoint::Checkpoint;
use crate::decode::frame::ServerFrame;
use crate::decode::pgoutput::Message;
use crate::error::Error;
use crate::event::value::ValueKind;
use crate::event::EventBuilder;
use crate::lsn::Lsn;
use crate::pipeline::handoff::{Batcher, Item};
use crate::source::catalog::Catalog;
use crate::source::conn::{ReplicationReader, SourceError};

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
                                chunk.publish(
                                    &mut self.builder,
                                    &self.types,
                                    *lsn,
                                    crate::clock::unix_micros(),
                                    &mut out,
                                )?;
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
