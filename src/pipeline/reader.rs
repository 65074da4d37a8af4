//! The WAL reader: the stage that runs on a started replication stream, decodes pgoutput,
//! builds event drafts and hands them to the publisher through the bounded hand-off
//! (`pipeline::handoff`). It blocks on the channel when the publisher is behind, so
//! backpressure reaches the socket and the server simply waits (G5).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::checkpoint::Checkpoint;
use crate::decode::frame::ServerFrame;
use crate::decode::pgoutput::Message;
use crate::error::Error;
use crate::event::value::ValueKind;
use crate::event::{Draft, EventBuilder};
use crate::lsn::Lsn;
use crate::pipeline::handoff::{Batcher, Item, PublisherGone};
use crate::source::catalog::Catalog;
use crate::source::conn::{ReplicationReader, SourceError};

/// Whether a step's items reached the publisher: `Err` when it has stopped.
type Handed = Result<(), PublisherGone>;

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
    /// socket, and the server simply waits. A publisher that went away ends the reader as
    /// shutdown does: the publisher reports its own failure.
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
            let handed = match ServerFrame::parse(payload).map_err(SourceError::from)? {
                ServerFrame::XLogData { wal_end, data, .. } => {
                    self.on_xlog_data(wal_end, data, &mut tx, &mut out).await?
                }
                ServerFrame::Keepalive {
                    wal_end,
                    reply_requested,
                } => self.on_keepalive(wal_end, reply_requested, &mut tx).await,
                ServerFrame::Other(tag) => {
                    tracing::debug!(tag, "ignoring unknown replication message");
                    Ok(())
                }
            };
            if handed.is_err() {
                return Ok(self.reader);
            }
        }
    }

    /// One pgoutput message: a snapshot watermark, or a change for the builder, whose drafts
    /// go to the publisher, followed at a commit by the commit's end position.
    async fn on_xlog_data(
        &mut self,
        wal_end: Lsn,
        data: Bytes,
        tx: &mut Batcher,
        out: &mut Vec<Draft>,
    ) -> Result<Handed, Error> {
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
                return self.on_snapshot_mark(*lsn, content, tx, out).await;
            }
        }
        let mut relation = None;
        let commit_end = match &msg {
            Message::Relation(rel) => {
                let missing: Vec<u32> = EventBuilder::unresolved_types(rel, &self.types).collect();
                if !missing.is_empty() {
                    self.catalog.resolve_types(missing, &mut self.types).await?;
                }
                relation = Some(rel.clone());
                None
            }
            Message::Commit(c) => Some(c.end_lsn),
            _ => None,
        };
        if let Some(rel) = self.builder.stale_enum_labels(&msg) {
            // A row with an enum label the table's schema lacks (ADD VALUE sends no Relation
            // message): the schema is read again, so its schema event goes before the row.
            self.catalog.describe_for(&mut self.builder, &rel).await?;
        }
        self.chunks.observe(&self.builder, &msg);
        self.builder.handle(msg, &self.types, out)?;
        if let Some(rel) = relation {
            // A Relation message comes before the first change after every shape change: the
            // table's schema, for the schema event its next event may need.
            self.catalog.describe_for(&mut self.builder, &rel).await?;
        }
        if let Err(gone) = tx.push_events(out).await {
            return Ok(Err(gone));
        }
        Ok(match commit_end {
            Some(end) => tx.push(Item::Position(end)).await,
            None => Ok(()),
        })
    }

    /// A watermark of the incremental snapshot (`snapshot::Chunks`): at a high mark, the
    /// chunk's rows that no change in its window touched are published.
    async fn on_snapshot_mark(
        &mut self,
        lsn: Lsn,
        content: &[u8],
        tx: &mut Batcher,
        out: &mut Vec<Draft>,
    ) -> Result<Handed, Error> {
        let Some(chunk) = self.chunks.mark(content) else {
            return Ok(Ok(()));
        };
        let missing: Vec<u32> = EventBuilder::unresolved_types(&chunk.relation, &self.types).collect();
        self.catalog.resolve_types(missing, &mut self.types).await?;
        self.builder.add_relation(chunk.relation.clone(), &self.types)?;
        self.catalog.describe_for(&mut self.builder, &chunk.relation).await?;
        chunk.publish(&mut self.builder, &self.types, lsn, crate::clock::unix_micros(), out)?;
        Ok(tx.push_events(out).await)
    }

    /// The server's keepalive: its position, handed over between transactions (the publisher
    /// may publish a watermark there), and a reply now if it asks for one.
    async fn on_keepalive(&mut self, wal_end: Lsn, reply_requested: bool, tx: &mut Batcher) -> Handed {
        self.checkpoint.received(wal_end);
        if !self.builder.in_transaction() {
            tx.push(Item::Position(wal_end)).await?;
        }
        if reply_requested {
            self.reply_now.notify_one();
        }
        Ok(())
    }
}
