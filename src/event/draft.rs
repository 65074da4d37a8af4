//! The event builder's vocabulary, shared by everything that makes, carries or reads drafts:
//! a `Draft` (an event before its place in the chain), its `Op` and `Position` in the
//! stream's order, a row's identity (`EntityKey`, and `Touched`, the rows a change touches),
//! and `BuildError`, why a change cannot become an event.
//!
//! These types live apart from `builder` so that `envelope`, `sink` and `snapshot` can use
//! them without depending on how drafts are built.

use std::sync::Arc;

use async_nats::Subject;
use uuid::Uuid;

use super::value::ValueError;
use crate::decode::pgoutput::ReplicaIdentity;
use crate::lsn::Lsn;

/// A place in the stream's total order: `(commit LSN, position in the transaction)`.
/// Watermarks use index 0: a watermark at `W` covers what committed strictly before `W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub lsn: Lsn,
    pub idx: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Watermark,
    /// The record of a restart from a new slot: what lies between two positions is not in
    /// the stream.
    Resync,
    /// A row as it existed when a snapshot group was read.
    Snapshot,
    /// The last event of a snapshot group: how far the baseline of the guarded tables got.
    SnapshotProgress,
    /// A guarded table's shape (SPEC section 7), before its first event and before the first
    /// after the shape changed.
    Schema,
    /// A signed tree head of the stream (SPEC section 8): the Merkle root over every message
    /// before it, with witnesses' cosignatures.
    Checkpoint,
}

impl Op {
    #[inline]
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Watermark => "watermark",
            Op::Resync => "resync",
            Op::Snapshot => "snapshot",
            Op::SnapshotProgress => "snapshot_progress",
            Op::Schema => "schema",
            Op::Checkpoint => "checkpoint",
        }
    }

    /// walguard's own markers, which carry no row change: counted apart from row events.
    pub fn is_marker(self) -> bool {
        matches!(
            self,
            Op::Watermark | Op::Resync | Op::SnapshotProgress | Op::Schema | Op::Checkpoint
        )
    }
}

/// An event before it has a place in the chain (sequence, prevhash, signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub op: Op,
    /// Shared by every event of one table and op: cloning it does not allocate.
    pub nats_subject: Subject,
    pub id: Uuid,
    pub ce_type: Arc<str>,
    pub ce_subject: String,
    /// Microseconds since the Unix epoch.
    pub time_micros: i64,
    pub pglsn: Lsn,
    pub pgxid: u32,
    pub pgtxidx: u32,
    /// Set on the last event of a transaction (or group): its end LSN. `pgtxcnt` is then
    /// `pgtxidx`.
    pub end: Option<Lsn>,
    /// The `data` attribute, serialized.
    pub data: Vec<u8>,
    /// `schema.table`, for logs and metrics.
    pub table: Arc<str>,
}

impl Draft {
    #[inline]
    pub fn position(&self) -> Position {
        Position {
            lsn: self.pglsn,
            idx: if matches!(self.op, Op::Watermark | Op::Resync) {
                0
            } else {
                self.pgtxidx
            },
        }
    }
}

/// A row's identity: its entity key's values as PostgreSQL's text (`None` for NULL), in key
/// order. The CloudEvents subject joins the values with `,`, so `("a,b","c")` and
/// `("a","b,c")` share a subject; compared value by value they never collide. The incremental
/// snapshot's window uses it to tell which chunk rows a live change touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityKey(Vec<Option<Box<[u8]>>>);

impl EntityKey {
    pub fn new<V: AsRef<[u8]>>(values: impl IntoIterator<Item = Option<V>>) -> Self {
        EntityKey(values.into_iter().map(|v| v.map(|v| v.as_ref().into())).collect())
    }
}

/// What one change does to the rows of a guarded table, as the snapshot's window needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Rows of `table` (`schema.table`) by key: the row an insert or delete is about; for an
    /// update, the new row and, when the change carries it, the old one (an update that
    /// changes the key moves the row away from its old key).
    Rows { table: Arc<str>, keys: Vec<EntityKey> },
    /// Every row of these tables (TRUNCATE).
    Tables(Vec<Arc<str>>),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("table {table} column {column}: {source}; the change cannot be encoded, so walguard stops here (nothing is skipped)")]
    Value {
        table: Arc<str>,
        column: String,
        source: ValueError,
    },
    #[error("table {table}: key column {column} is not in the replicated row; check the table's columns and `key` in [[tables]]")]
    KeyColumnMissing { table: Arc<str>, column: String },
    #[error("table {table}: the {op} does not carry key column {column} (replica identity {identity:?}); set REPLICA IDENTITY FULL on the table or configure `key` to its replica identity columns")]
    KeyUnavailable {
        table: Arc<str>,
        op: &'static str,
        column: String,
        identity: ReplicaIdentity,
    },
    #[error("table {table}: column {column} arrived in binary format, which walguard does not request")]
    Binary { table: Arc<str>, column: String },
    #[error("replication protocol violation: {0}")]
    Protocol(String),
}
