//! The baseline: one `snapshot` event per existing row of every guarded table, so the stream
//! alone can rebuild any entity (issue "audit tooling", SPEC section 2 "snapshot events").
//!
//! - Initial snapshot: when walguard creates the slot it exports the slot's snapshot; every
//!   row visible at the consistent point is published, in keyset-ordered chunks, as one group
//!   at that LSN, before replication starts. So each row's first event is its snapshot or its
//!   insert: no gap (the snapshot holds every commit before the consistent point, the slot
//!   every one after) and no overlap.
//! - Incremental snapshot (a table added to `[[tables]]` later, the rest of an interrupted
//!   snapshot, a re-baseline after `resync`): the DBLog approach. Per chunk, a low and a high
//!   watermark are written into the WAL as non-transactional logical messages around a plain
//!   keyset SELECT; the WAL reader drops every chunk row that a change between the two marks
//!   touched (that change already carries newer state) and publishes the rest as a group at
//!   the high mark's LSN. No snapshot row can overwrite a newer change.
//!
//! Every group ends with a `snapshot_progress` event stating which tables are complete and
//! where the current one stands; snapshot events are always signed, so after a crash the
//! stream's verified head says exactly where to resume.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::unix_micros;
use crate::decode::pgoutput::{Message, Relation};
use crate::error::{Error, Refusal};
use crate::event::draft::{EntityKey, Op, Touched};
use crate::event::shape::TableSpec;
use crate::event::stored::{key_text, Data, StoredEvent};
use crate::event::{Draft, EventBuilder};
use crate::lsn::Lsn;
use crate::pipeline::handoff::{Batcher, PublisherGone};
use crate::source::catalog::{Catalog, CatalogError};
use crate::source::conn::{quote_ident, quote_literal};

/// Rows per chunk: bounds memory per chunk and the window in which live changes are checked.
pub const CHUNK_ROWS: usize = 5000;
/// Prefix of the watermark messages written into the WAL.
pub const MARK_PREFIX: &str = "walguard.snapshot";

pub fn qualified(spec: &TableSpec) -> String {
    format!("{}.{}", spec.schema, spec.name)
}

/// How far the baseline got, as stated by the last `snapshot_progress` event. Its format is
/// written and read in `event::stored`; what it leaves to do is decided here.
pub use crate::event::stored::SnapshotProgress as Progress;

impl Progress {
    /// Tables still to baseline, in configuration order, with the key to resume after.
    pub fn pending(&self, specs: &[TableSpec]) -> Vec<(TableSpec, Option<Vec<String>>)> {
        specs
            .iter()
            .filter(|s| !self.completed.contains(&qualified(s)))
            .map(|s| {
                let after = (self.table.as_deref() == Some(qualified(s).as_str()))
                    .then(|| self.after_key.clone())
                    .flatten();
                (s.clone(), after)
            })
            .collect()
    }

    /// The progress once a chunk of `table` is published: the table stands at `after`, or,
    /// after its last chunk, is complete.
    fn after_chunk(&self, table: &str, after: Option<&[String]>, last: bool) -> Progress {
        let mut next = self.clone();
        if last {
            next.completed.push(table.to_owned());
            next.table = None;
            next.after_key = None;
        } else {
            next.table = Some(table.to_owned());
            next.after_key = after.map(<[String]>::to_vec);
        }
        next
    }
}

/// Where the baseline stands, from what the stream records: the last `snapshot_progress`
/// event `marker` (unless the last `resync` record, by its sequence, came after it, which
/// starts the baseline over), and, when the verified `head` is a snapshot row of a group a
/// crash left open, where that group stopped. Returns the progress and, for an open group,
/// its LSN and the index its closing event takes.
///
/// Stored messages come as `(sequence, payload)`. One that cannot be read is an error
/// naming its sequence, never a default: an empty progress would baseline every table
/// again, and a wrong one would skip rows.
pub fn resume(
    marker: Option<(u64, &[u8])>,
    resync: Option<u64>,
    head: Option<(u64, &[u8])>,
    specs: &[TableSpec],
) -> Result<(Progress, Option<(Lsn, u32)>), Error> {
    let current = marker.filter(|(seq, _)| resync.is_none_or(|r| r < *seq));
    let mut progress = match current {
        Some((seq, payload)) => stored_progress(seq, payload)?,
        None => Progress::default(),
    };
    let Some((seq, payload)) = head else {
        return Ok((progress, None));
    };
    let refused = |why: String| {
        Error::Refused(Refusal::ForeignMessage, format!(
            "stream sequence {seq}, the verified head, {why}: run `walguard verify` and investigate; walguard does not guess where the baseline stands"
        ))
    };
    let head = StoredEvent::parse(payload).map_err(|e| refused(format!("is not a readable walguard event ({e})")))?;
    let Data::Row(Op::Snapshot, row) = &head.data else {
        return Ok((progress, None));
    };
    if head.attributes.pgtxcnt.is_some() {
        return Ok((progress, None));
    }
    let unreadable = |what: &str| refused(format!("is a snapshot row without a readable {what}"));
    let next_idx = head
        .attributes
        .pgtxidx
        .checked_add(1)
        .ok_or_else(|| unreadable("pgtxidx"))?;
    let table = row.qualified();
    match specs.iter().position(|t| qualified(t) == table) {
        Some(i) => {
            // No progress event at all: the initial snapshot (one group, tables in order)
            // was interrupted, so the tables before this one are complete.
            if marker.is_none() {
                progress.completed = specs[..i].iter().map(qualified).collect();
            }
            let after = specs[i]
                .key
                .iter()
                .map(|k| {
                    row.key
                        .get(k)
                        .map(key_text)
                        .ok_or_else(|| unreadable(&format!("data.key.{k}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            progress.table = Some(table);
            progress.after_key = Some(after);
        }
        None => {
            progress.table = None;
            progress.after_key = None;
        }
    }
    Ok((progress, Some((head.attributes.pglsn, next_idx))))
}

/// The progress a stored `snapshot_progress` event states.
fn stored_progress(seq: u64, payload: &[u8]) -> Result<Progress, Error> {
    let refused = |why: String| {
        Error::Refused(Refusal::ForeignMessage, format!(
            "stream sequence {seq}, the last snapshot progress event, cannot be read ({why}): run `walguard verify` and investigate; walguard does not guess where the baseline stands"
        ))
    };
    match StoredEvent::parse(payload).map_err(|e| refused(e.to_string()))?.data {
        Data::SnapshotProgress(progress) => Ok(progress),
        other => Err(refused(format!("its data.op is {:?}", other.op().as_str()))),
    }
}

/// Reads up to `limit` rows after `after` in key order, values as text in the session's
/// formats (the same ones pgoutput sends).
async fn read_chunk(
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    columns: &[String],
    after: Option<&[String]>,
    limit: usize,
) -> Result<Vec<Vec<Option<String>>>, CatalogError> {
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let keys: Vec<String> = spec.key.iter().map(|c| quote_ident(c)).collect();
    let filter = match after {
        Some(after) => format!(
            " WHERE ({}) > ({})",
            keys.join(", "),
            after.iter().map(|v| quote_literal(v)).collect::<Vec<_>>().join(", ")
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {} FROM {}.{}{filter} ORDER BY {} LIMIT {limit}",
        cols.join(", "),
        quote_ident(&spec.schema),
        quote_ident(&spec.name),
        keys.join(", ")
    );
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(|source| CatalogError::Postgres {
            target: format!("snapshot of {}", qualified(spec)),
            source,
        })?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// A guarded table as a snapshot reads it: its relation, with the types pgoutput does not
/// describe resolved, its columns in order and where its key columns stand among them.
pub struct TableRead {
    pub relation: Relation,
    pub columns: Vec<String>,
    key_positions: Vec<usize>,
    /// Per key column, whether it is bytea (or a domain over it): events carry it as base64,
    /// the keyset condition takes PostgreSQL's `\x` hex.
    key_bytea: Vec<bool>,
}

impl TableRead {
    /// Fetches `spec`'s relation and resolves its types into `types`; `None` when the table
    /// does not exist.
    pub async fn fetch(
        catalog: &Catalog,
        spec: &TableSpec,
        types: &mut HashMap<u32, crate::event::value::ValueKind>,
    ) -> Result<Option<TableRead>, Error> {
        let Some(relation) = catalog.relation(&spec.schema, &spec.name).await? else {
            return Ok(None);
        };
        let missing: Vec<u32> = EventBuilder::unresolved_types(&relation, types).collect();
        catalog.resolve_types(missing, types).await?;
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let key_positions: Vec<usize> = spec
            .key
            .iter()
            .filter_map(|k| columns.iter().position(|c| c == k))
            .collect();
        let key_bytea = key_positions
            .iter()
            .map(|&i| {
                let oid = relation.columns[i].type_oid;
                let kind = crate::event::value::ValueKind::builtin(oid).or_else(|| types.get(&oid).cloned());
                matches!(kind, Some(crate::event::value::ValueKind::Bytea))
            })
            .collect();
        Ok(Some(TableRead {
            relation,
            columns,
            key_positions,
            key_bytea,
        }))
    }

    /// A key to resume after, as the keyset condition takes it. A progress event states it
    /// in PostgreSQL's text already; a key taken from a stored snapshot row (a group a crash
    /// left open) has bytea values in base64, which never holds the `\` that PostgreSQL's
    /// hex form starts with, and those are turned back into hex here.
    pub fn resume_key(&self, after: Vec<String>) -> Result<Vec<String>, Error> {
        use base64::Engine;
        after
            .into_iter()
            .zip(self.key_bytea.iter().chain(std::iter::repeat(&false)))
            .map(|(value, &bytea)| {
                if !bytea || value.starts_with("\\x") {
                    return Ok(value);
                }
                let bytes = base64::engine::general_purpose::STANDARD.decode(&value).map_err(|e| {
                    Error::Refused(
                        Refusal::Snapshot,
                        format!(
                            "the stored key to resume {}.{} after is not base64 bytea ({e})",
                            self.relation.namespace, self.relation.name
                        ),
                    )
                })?;
                let mut hex = String::with_capacity(2 + 2 * bytes.len());
                hex.push_str("\\x");
                for b in bytes {
                    hex.push_str(&format!("{b:02x}"));
                }
                Ok(hex)
            })
            .collect()
    }

    /// The key of a row read by `read_chunk`, as the text the next chunk's keyset condition
    /// takes. A NULL key value (possible under a configured `key`) becomes the empty text.
    fn key_of(&self, row: &[Option<String>]) -> Vec<String> {
        self.key_positions
            .iter()
            .map(|&i| row.get(i).cloned().flatten().unwrap_or_default())
            .collect()
    }
}

/// The keyset walk over one table: chunks of `CHUNK_ROWS` rows in key order, each starting
/// after the last key of the one before; the walk ends with the first short chunk.
pub struct Keyset<'a> {
    spec: &'a TableSpec,
    table: &'a TableRead,
    after: Option<Vec<String>>,
    done: bool,
}

impl<'a> Keyset<'a> {
    /// A walk starting after `after` (from the start when `None`).
    pub fn new(spec: &'a TableSpec, table: &'a TableRead, after: Option<Vec<String>>) -> Self {
        Keyset {
            spec,
            table,
            after,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The key of the last row read so far.
    pub fn after(&self) -> Option<&[String]> {
        self.after.as_deref()
    }

    /// Reads the next chunk on `client`.
    pub async fn next_chunk(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<Vec<Option<String>>>, CatalogError> {
        let rows = read_chunk(client, self.spec, &self.table.columns, self.after(), CHUNK_ROWS).await?;
        if let Some(last) = rows.last() {
            self.after = Some(self.table.key_of(last));
        }
        self.done = rows.len() < CHUNK_ROWS;
        Ok(rows)
    }
}

/// Rows/s and ETA in the log every few seconds; a live line on a terminal.
struct Meter {
    table: String,
    estimate: i64,
    done: u64,
    started: Instant,
    logged: Instant,
    tty: bool,
}

impl Meter {
    fn new(table: String, estimate: i64) -> Self {
        tracing::info!(table = %table, estimated_rows = estimate, "snapshot of table starting");
        Meter {
            table,
            estimate,
            done: 0,
            started: Instant::now(),
            logged: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, rows: usize) {
        self.done += rows as u64;
        crate::telemetry::metrics()
            .snapshot_rows
            .get_or_create(&crate::telemetry::Table {
                table: self.table.clone(),
            })
            .inc_by(rows as u64);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / elapsed;
        let left = (self.estimate as f64 - self.done as f64).max(0.0);
        let eta = Duration::from_secs_f64(if rate > 0.0 { left / rate } else { 0.0 });
        if self.tty {
            let pct = if self.estimate > 0 {
                (self.done as f64 / self.estimate as f64 * 100.0).min(100.0)
            } else {
                0.0
            };
            let filled = (pct / 5.0) as usize;
            eprint!(
                "\rsnapshot {} [{}{}] {:>5.1}% {} rows, {:.0} rows/s, eta {}s   ",
                self.table,
                "#".repeat(filled),
                " ".repeat(20 - filled.min(20)),
                pct,
                self.done,
                rate,
                eta.as_secs()
            );
        }
        if self.logged.elapsed() >= Duration::from_secs(5) {
            self.logged = Instant::now();
            tracing::info!(table = %self.table, rows = self.done, estimated_rows = self.estimate, rows_per_second = rate as u64, eta_seconds = eta.as_secs(), "snapshot progress");
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(table = %self.table, rows = self.done, seconds = format!("{secs:.1}"), rows_per_second = (self.done as f64 / secs.max(1e-3)) as u64, "snapshot of table complete");
    }
}

fn gone(_: PublisherGone) -> Error {
    Error::Refused(Refusal::Internal, "the publisher stopped during the snapshot".into())
}

/// Hands `out`'s drafts to the publisher, then flushes.
pub async fn send_all(tx: &mut Batcher, out: &mut Vec<Draft>) -> Result<(), Error> {
    tx.push_events(out).await.map_err(gone)?;
    tx.flush().await.map_err(gone)
}

/// The initial snapshot under the slot's exported snapshot (already imported into `client`'s
/// transaction): every guarded table as one group at `lsn`.
pub async fn initial(
    client: &tokio_postgres::Client,
    catalog: &Catalog,
    builder: &mut EventBuilder,
    types: &mut HashMap<u32, crate::event::value::ValueKind>,
    specs: &[TableSpec],
    tx: &mut Batcher,
    lsn: Lsn,
) -> Result<Progress, Error> {
    let mut out = Vec::new();
    builder.begin_snapshot_group(lsn, 1, unix_micros())?;
    let mut progress = Progress::default();
    for spec in specs {
        let table = TableRead::fetch(catalog, spec, types)
            .await?
            .ok_or_else(|| disappeared(spec))?;
        builder.add_relation(table.relation.clone(), types)?;
        catalog.describe_for(builder, &table.relation).await?;
        let mut meter = Meter::new(qualified(spec), catalog.estimated_rows(table.relation.oid).await?);
        let mut keyset = Keyset::new(spec, &table, None);
        while !keyset.is_done() {
            let rows = keyset.next_chunk(client).await?;
            let n = rows.len();
            for row in rows {
                builder.snapshot_row(table.relation.oid, row, &mut out)?;
                tx.push_events(&mut out).await.map_err(gone)?;
            }
            // Handed over before the next chunk's query waits on PostgreSQL.
            tx.flush().await.map_err(gone)?;
            meter.add(n);
        }
        meter.finish();
        progress.completed.push(qualified(spec));
    }
    builder.end_snapshot_group(progress.data(), &mut out)?;
    send_all(tx, &mut out).await?;
    Ok(progress)
}

fn disappeared(spec: &TableSpec) -> Error {
    Error::Refused(
        Refusal::Snapshot,
        format!("table {} disappeared during the snapshot", qualified(spec)),
    )
}

/// One incremental chunk between its low and high watermark.
pub struct Chunk {
    pub spec: TableSpec,
    pub relation: Relation,
    open: bool,
    /// Rows a live change touched in the window, by their key values (never by the joined
    /// text of the subject, which two keys can share).
    changed: HashSet<EntityKey>,
    truncated: bool,
    rows: Vec<Vec<Option<String>>>,
    progress: Progress,
    done: Option<oneshot::Sender<()>>,
}

/// Chunks in flight, shared by the snapshotter and the WAL reader.
#[derive(Default)]
pub struct Chunks {
    inner: Mutex<HashMap<String, Chunk>>,
    /// Tables with a chunk in flight, for the reader's quick check.
    tables: Mutex<HashSet<String>>,
}

/// A watermark message's content, as the snapshotter writes it into the WAL and the WAL
/// reader reads it back.
#[derive(Serialize, Deserialize)]
struct Mark {
    chunk: String,
    mark: MarkKind,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MarkKind {
    /// Before the chunk's SELECT: from here, changes to its rows drop them.
    Low,
    /// After it: the chunk is published at this mark's LSN.
    High,
}

impl Mark {
    fn content(chunk: &str, mark: MarkKind) -> String {
        serde_json::to_string(&Mark {
            chunk: chunk.to_owned(),
            mark,
        })
        .expect("plain data")
    }
}

impl Chunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Chunk>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reader is about to build the live change `msg`: the chunk rows it touches must
    /// not be published. Cheap while no chunk is in flight.
    pub fn observe(&self, builder: &EventBuilder, msg: &Message) {
        if self.tables.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return;
        }
        let Some(touched) = builder.touched(msg) else {
            return;
        };
        for chunk in self.lock().values_mut().filter(|c| c.open) {
            let table = qualified(&chunk.spec);
            match &touched {
                Touched::Rows { table: t, keys } if **t == *table => chunk.changed.extend(keys.iter().cloned()),
                Touched::Tables(tables) if tables.iter().any(|t| **t == *table) => chunk.truncated = true,
                _ => {}
            }
        }
    }

    /// The reader saw a watermark message; at a high mark, returns the chunk to publish.
    ///
    /// A message under `MARK_PREFIX` that is not a mark of ours is ignored, as is a mark of
    /// a chunk not in flight here: any role allowed to call `pg_logical_emit_message` can
    /// write one, and so does a second walguard on the same database (its chunk ids differ).
    /// Refusing them would let them stop walguard; ignoring them loses nothing, because our
    /// own marks are always readable.
    pub fn mark(&self, content: &[u8]) -> Option<Chunk> {
        let mark: Mark = serde_json::from_slice(content).ok()?;
        let mut chunks = self.lock();
        match mark.mark {
            MarkKind::Low => {
                if let Some(c) = chunks.get_mut(&mark.chunk) {
                    c.open = true;
                }
                None
            }
            MarkKind::High => {
                let chunk = chunks.remove(&mark.chunk)?;
                self.tables
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&qualified(&chunk.spec));
                Some(chunk)
            }
        }
    }
}

impl Chunk {
    /// Publishes the rows no live change touched, as a group at the high mark's LSN.
    pub fn publish(
        mut self,
        builder: &mut EventBuilder,
        types: &HashMap<u32, crate::event::value::ValueKind>,
        lsn: Lsn,
        now_unix_micros: i64,
        out: &mut Vec<Draft>,
    ) -> Result<(), Error> {
        builder.add_relation(self.relation.clone(), types)?;
        builder.begin_snapshot_group(lsn, 1, now_unix_micros)?;
        let oid = self.relation.oid;
        let rows = std::mem::take(&mut self.rows);
        for row in rows {
            if self.truncated {
                break;
            }
            let key = builder.snapshot_key(oid, &row).ok_or_else(|| {
                Error::Refused(
                    Refusal::Snapshot,
                    format!(
                        "table {}: a snapshot row has no entity key; check `key` in [[tables]]",
                        qualified(&self.spec)
                    ),
                )
            })?;
            if !self.changed.contains(&key) {
                builder.snapshot_row(oid, row, out)?;
            }
        }
        builder.end_snapshot_group(self.progress.data(), out)?;
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        Ok(())
    }
}

/// Baselines `pending` tables chunk by chunk while replication runs (DBLog).
pub async fn incremental(
    catalog: Arc<Catalog>,
    chunks: Arc<Chunks>,
    pending: Vec<(TableSpec, Option<Vec<String>>)>,
    mut progress: Progress,
    types: HashMap<u32, crate::event::value::ValueKind>,
) -> Result<(), Error> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let mut types = types;
    let mut n = 0u64;
    for (spec, after) in pending {
        let table = TableRead::fetch(&catalog, &spec, &mut types)
            .await?
            .ok_or_else(|| disappeared(&spec))?;
        let mut meter = Meter::new(qualified(&spec), catalog.estimated_rows(table.relation.oid).await?);
        let after = after.map(|a| table.resume_key(a)).transpose()?;
        let mut keyset = Keyset::new(&spec, &table, after);
        while !keyset.is_done() {
            n += 1;
            let id = format!("{nonce}-{n}");
            progress = chunk_window(&catalog, &chunks, &mut keyset, id, &progress, &mut meter).await?;
        }
        meter.finish();
    }
    tracing::info!("incremental snapshot complete");
    Ok(())
}

/// One chunk of the DBLog window: the chunk registered for the WAL reader, the low mark, the
/// keyset read, the high mark, then the reader's word that it published the chunk (which it
/// does at the high mark). Returns the progress after the chunk.
async fn chunk_window(
    catalog: &Catalog,
    chunks: &Chunks,
    keyset: &mut Keyset<'_>,
    id: String,
    progress: &Progress,
    meter: &mut Meter,
) -> Result<Progress, Error> {
    let (spec, table) = (keyset.spec, keyset.table);
    let name = qualified(spec);
    let (done_tx, done_rx) = oneshot::channel();
    chunks.lock().insert(
        id.clone(),
        Chunk {
            spec: spec.clone(),
            relation: table.relation.clone(),
            open: false,
            changed: HashSet::new(),
            truncated: false,
            rows: Vec::new(),
            progress: Progress::default(),
            done: Some(done_tx),
        },
    );
    chunks
        .tables
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone());
    catalog
        .emit_message(MARK_PREFIX, &Mark::content(&id, MarkKind::Low))
        .await?;
    let rows = keyset.next_chunk(catalog.client()).await?;
    let next = progress.after_chunk(&name, keyset.after(), keyset.is_done());
    meter.add(rows.len());
    if let Some(c) = chunks.lock().get_mut(&id) {
        c.rows = rows;
        c.progress = next.clone();
    }
    catalog
        .emit_message(MARK_PREFIX, &Mark::content(&id, MarkKind::High))
        .await?;
    done_rx
        .await
        .map_err(|_| Error::Refused(Refusal::Internal, "the WAL reader stopped during the snapshot".into()))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TableSpec {
        TableSpec {
            schema: "public".into(),
            name: name.into(),
            type_prefix: name.into(),
            key: vec!["id".into()],
            configured_key: false,
            hashed: Vec::new(),
        }
    }

    #[test]
    fn progress_round_trips_and_names_what_is_pending() {
        let p = Progress {
            completed: vec!["public.a".into()],
            table: Some("public.b".into()),
            after_key: Some(vec!["41".into()]),
        };
        let v: serde_json::Value = serde_json::from_slice(&p.data()).unwrap();
        assert_eq!(v["op"], "snapshot_progress");
        let back: Progress = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        let pending = p.pending(&[spec("a"), spec("b"), spec("c")]);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].1, Some(vec!["41".to_owned()]));
        assert_eq!(pending[1].1, None);
    }

    fn progress_event(data: serde_json::Value) -> Vec<u8> {
        let event =
            crate::event::stored::test_event(serde_json::json!({"type": "walguard.snapshot.progress", "data": data}));
        serde_json::to_vec(&event).unwrap()
    }

    #[test]
    fn unreadable_progress_is_an_error_naming_its_sequence_not_a_fresh_start() {
        let specs = [spec("a"), spec("b")];
        for garbage in [
            b"not json".to_vec(),
            progress_event(serde_json::json!({"op": "snapshot_progress", "completed": "public.a"})),
            progress_event(serde_json::json!({"op": "watermark", "completed": []})),
            br#"{"data":null}"#.to_vec(),
        ] {
            let err = resume(Some((41, &garbage)), None, None, &specs).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Refused(Refusal::ForeignMessage, _)), "{msg}");
            assert!(
                msg.contains("stream sequence 41") && msg.contains("walguard verify"),
                "{msg}"
            );
        }
    }

    #[test]
    fn progress_is_read_unless_a_resync_came_after_it() {
        let specs = [spec("a"), spec("b")];
        let stored = progress_event(serde_json::json!({"op": "snapshot_progress", "completed": ["public.a"],
            "table": "public.b", "after_key": ["7"]}));
        let (progress, close) = resume(Some((10, &stored)), Some(3), None, &specs).unwrap();
        assert_eq!(progress.completed, ["public.a"]);
        assert_eq!(progress.after_key, Some(vec!["7".to_owned()]));
        assert_eq!(close, None);
        let (progress, _) = resume(Some((10, &stored)), Some(12), None, &specs).unwrap();
        assert_eq!(progress, Progress::default());
        // A resync record makes even an unreadable older marker irrelevant.
        assert!(resume(Some((10, b"garbage")), Some(12), None, &specs).is_ok());
    }

    #[test]
    fn an_open_group_at_the_head_resumes_after_its_last_row() {
        let specs = [spec("a"), spec("b")];
        let row = crate::event::stored::test_event(serde_json::json!({"pglsn": "0/16B3748", "pgtxidx": 7,
            "data": {"op": "snapshot", "schema": "public", "table": "b", "key": {"id": 41},
                     "before": null, "after": {"id": 41}, "unchanged": [], "actor": null}}));
        let head = serde_json::to_vec(&row).unwrap();
        let (progress, close) = resume(None, None, Some((8, &head)), &specs).unwrap();
        assert_eq!(close, Some(("0/16B3748".parse().unwrap(), 8)));
        assert_eq!(progress.completed, ["public.a"]);
        assert_eq!(progress.table.as_deref(), Some("public.b"));
        assert_eq!(progress.after_key, Some(vec!["41".to_owned()]));
        // A closed group (pgtxcnt set) or a change leaves nothing to close.
        let mut closed = row.clone();
        closed["pgtxcnt"] = 7.into();
        let closed = serde_json::to_vec(&closed).unwrap();
        assert_eq!(resume(None, None, Some((8, &closed)), &specs).unwrap().1, None);
        for (field, value) in [
            ("pglsn", serde_json::json!("somewhere")),
            ("pgtxidx", serde_json::json!(-1)),
            (
                "data",
                serde_json::json!({"op": "snapshot", "schema": "public", "table": "b", "key": {},
                    "before": null, "after": {"id": 41}, "unchanged": [], "actor": null}),
            ),
            ("data", serde_json::json!({"op": "snapshot", "key": {"id": 41}})),
        ] {
            let mut bad = row.clone();
            bad[field] = value;
            let bad = serde_json::to_vec(&bad).unwrap();
            let err = resume(None, None, Some((8, &bad)), &specs).unwrap_err().to_string();
            assert!(err.contains("stream sequence 8"), "{field}: {err}");
        }
    }

    /// The DBLog window on a table whose key is two text columns, fed as the WAL reader feeds it.
    mod window {
        use super::*;
        use crate::decode::pgoutput::tests as fx;
        use crate::event::draft::Position;
        use crate::event::naming::Naming;

        const PAIRS: u32 = 16400;

        fn builder() -> EventBuilder {
            let naming = Arc::new(Naming {
                system_identifier: "7000".into(),
                slot: "walguard".into(),
                subject_prefix: "wg".into(),
            });
            let spec = TableSpec {
                key: vec!["a".into(), "b".into()],
                ..spec("pairs")
            };
            EventBuilder::new(naming, vec![spec], Position::default())
        }

        /// The Relation message of `public.pairs`: key `(a, b)`, replica identity DEFAULT.
        fn relation_message() -> Vec<u8> {
            fx::relation(
                PAIRS,
                "public",
                "pairs",
                b'd',
                &[(true, "a", 25), (true, "b", 25), (false, "v", 23)],
            )
        }

        fn relation() -> Relation {
            match Message::parse(relation_message().into()).unwrap() {
                Message::Relation(rel) => rel,
                other => panic!("{other:?}"),
            }
        }

        /// The reader's step for one WAL message: the window sees the change, the builder
        /// builds it.
        fn read(chunks: &Chunks, builder: &mut EventBuilder, raw: Vec<u8>) {
            let msg = Message::parse(raw.into()).unwrap();
            chunks.observe(builder, &msg);
            builder.handle(msg, &HashMap::new(), &mut Vec::new()).unwrap();
        }

        /// A chunk of `rows` read between its low mark (seen) and its high mark (not yet).
        fn open_chunk(chunks: &Chunks, rows: &[[&str; 3]]) {
            chunks.lock().insert(
                "c1".into(),
                Chunk {
                    spec: TableSpec {
                        key: vec!["a".into(), "b".into()],
                        ..spec("pairs")
                    },
                    relation: relation(),
                    open: false,
                    changed: HashSet::new(),
                    truncated: false,
                    rows: rows
                        .iter()
                        .map(|r| r.iter().map(|v| Some(v.to_string())).collect())
                        .collect(),
                    progress: Progress::default(),
                    done: None,
                },
            );
            chunks.tables.lock().unwrap().insert("public.pairs".into());
            assert!(chunks.mark(br#"{"chunk":"c1","mark":"low"}"#).is_none());
        }

        /// The high mark: the rows the chunk publishes, as `data.after`.
        fn close_chunk(chunks: &Chunks, builder: &mut EventBuilder) -> Vec<serde_json::Value> {
            let chunk = chunks
                .mark(br#"{"chunk":"c1","mark":"high"}"#)
                .expect("the chunk is in flight");
            let mut out = Vec::new();
            chunk
                .publish(builder, &HashMap::new(), Lsn(0x900), 0, &mut out)
                .unwrap();
            out.iter()
                .filter(|d| d.op == crate::event::draft::Op::Snapshot)
                .map(|d| serde_json::from_slice::<serde_json::Value>(&d.data).unwrap()["after"].clone())
                .collect()
        }

        fn update(old_key: Option<[&str; 2]>, new: [&str; 3]) -> Vec<u8> {
            let mut u = vec![b'U'];
            u.extend_from_slice(&PAIRS.to_be_bytes());
            if let Some([a, b]) = old_key {
                u.push(b'K');
                u.extend(fx::tuple_bytes(&[Some(a), Some(b), None]));
            }
            u.push(b'N');
            u.extend(fx::tuple_bytes(&new.map(Some)));
            u
        }

        #[test]
        fn a_change_drops_only_its_own_row_when_two_keys_join_to_the_same_text() {
            let (chunks, mut builder) = (Chunks::default(), builder());
            read(&chunks, &mut builder, relation_message());
            open_chunk(&chunks, &[["a,b", "c", "1"], ["a", "b,c", "2"]]);
            read(&chunks, &mut builder, fx::begin(0x800, 0, 9));
            read(&chunks, &mut builder, update(None, ["a,b", "c", "3"]));
            read(&chunks, &mut builder, fx::commit(0x800, 0x830, 0));
            assert_eq!(
                close_chunk(&chunks, &mut builder),
                [serde_json::json!({"a": "a", "b": "b,c", "v": 2})],
                "the untouched row is the baseline; the changed one is represented by its change"
            );
        }

        #[test]
        fn an_update_that_moves_a_row_to_another_key_drops_the_row_at_its_old_key() {
            let (chunks, mut builder) = (Chunks::default(), builder());
            read(&chunks, &mut builder, relation_message());
            open_chunk(&chunks, &[["k1", "x", "1"], ["k3", "x", "3"]]);
            read(&chunks, &mut builder, fx::begin(0x800, 0, 9));
            read(&chunks, &mut builder, update(Some(["k1", "x"]), ["k2", "x", "1"]));
            read(&chunks, &mut builder, fx::commit(0x800, 0x830, 0));
            assert_eq!(
                close_chunk(&chunks, &mut builder),
                [serde_json::json!({"a": "k3", "b": "x", "v": 3})],
                "k1 no longer exists once the update moved it to k2"
            );
        }

        #[test]
        fn a_truncate_drops_the_whole_chunk() {
            let (chunks, mut builder) = (Chunks::default(), builder());
            read(&chunks, &mut builder, relation_message());
            open_chunk(&chunks, &[["k1", "x", "1"]]);
            read(&chunks, &mut builder, fx::begin(0x800, 0, 9));
            let mut t = vec![b'T'];
            t.extend_from_slice(&1u32.to_be_bytes());
            t.push(0);
            t.extend_from_slice(&PAIRS.to_be_bytes());
            read(&chunks, &mut builder, t);
            read(&chunks, &mut builder, fx::commit(0x800, 0x830, 0));
            assert!(close_chunk(&chunks, &mut builder).is_empty());
        }
    }

    #[test]
    fn key_text_of_json_values() {
        assert_eq!(key_text(&serde_json::json!(42)), "42");
        assert_eq!(key_text(&serde_json::json!("a,b")), "a,b");
        assert_eq!(key_text(&serde_json::json!(true)), "true");
    }
}
