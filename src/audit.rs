//! The auditor's tools, from the stream alone: reading it in order, `export` as DSSE
//! envelopes, `restore` of a table or entity as of any sequence, `history` of an entity, and
//! `reconcile` of the stream-derived state against the live table.
//!
//! State is rebuilt by applying events in stream order: `snapshot`, `insert` and `update`
//! set the row to `after` (columns listed in `unchanged` keep their previous value), `delete`
//! removes it, `truncate` empties the table.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use async_nats::jetstream;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::Refusal;
use crate::event::draft::Op;
use crate::event::signing::PAYLOAD_TYPE;
use crate::event::stored::{self, Data, StoredEvent, StoredKey};
use crate::sink::reader::{StreamReader, Until};

pub use crate::sink::reader::Stored;

/// Reads messages `from..=to` (to the stream's last sequence when `to` is None) in order,
/// calling `f` for each; `f` returns false to stop early. The newest sequence it was to read.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    to: Option<u64>,
    mut f: impl FnMut(Stored) -> bool,
) -> Result<u64, String> {
    let until = to.map_or(Until::Last, Until::At);
    let mut reader = StreamReader::open(js, stream, from, until)
        .await
        .map_err(|e| e.to_string())?;
    let last = reader.end().unwrap_or_default();
    while let Some(m) = reader.next().await.map_err(|e| e.to_string())? {
        if !f(m) {
            break;
        }
    }
    Ok(last)
}

/// A DSSE envelope (one line of `walguard export`): `payload`, `payloadType`, `signatures`
/// in that order (as `serde_json` orders an object's keys), written directly: the payload's
/// base64 needs no escaping, so no JSON value is built for it.
pub fn dsse_line(m: &Stored) -> String {
    let mut line = Vec::with_capacity(m.payload.len() * 4 / 3 + 160);
    push_dsse_line(m, &mut line);
    // Base64 and JSON strings of UTF-8 text: UTF-8.
    String::from_utf8(line).unwrap_or_default()
}

/// `dsse_line(m)` appended to `out`, without its newline.
pub fn push_dsse_line(m: &Stored, out: &mut Vec<u8>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    out.extend_from_slice(b"{\"payload\":\"");
    let at = out.len();
    out.resize(at + m.payload.len().div_ceil(3) * 4, 0);
    let n = b64.encode_slice(&m.payload, &mut out[at..]).unwrap_or(0);
    out.truncate(at + n);
    out.extend_from_slice(b"\",\"payloadType\":");
    crate::event::json::write_str(PAYLOAD_TYPE, out);
    out.extend_from_slice(b",\"signatures\":[");
    if let Some((kid, sig)) = &m.signature {
        out.extend_from_slice(b"{\"keyid\":");
        crate::event::json::write_str(kid, out);
        out.extend_from_slice(b",\"sig\":");
        crate::event::json::write_str(sig, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// Parses one exported line back. The sequence is the one the payload claims, or 0 (where no
/// message is stored) when it claims none: a damaged event still reaches `verify`, which
/// places it after its predecessor and says what is wrong with it.
pub fn parse_dsse_line(line: &str) -> Result<Stored, String> {
    // Borrowed: the payload's base64 is decoded straight from the line.
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "payloadType", borrow)]
        payload_type: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        payload: std::borrow::Cow<'a, str>,
        signatures: Vec<Signature>,
    }
    #[derive(serde::Deserialize)]
    struct Signature {
        keyid: String,
        sig: String,
    }
    let v: Envelope<'_> = serde_json::from_str(line).map_err(|e| format!("not a JSON DSSE envelope: {e}"))?;
    if v.payload_type != PAYLOAD_TYPE {
        return Err(format!("payloadType is {:?}, expected {PAYLOAD_TYPE}", v.payload_type));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v.payload.as_bytes())
        .map_err(|e| format!("payload is not base64: {e}"))?;
    Ok(Stored {
        sequence: stored::claimed_sequence_fast(&payload).unwrap_or(0),
        signature: v.signatures.into_iter().next().map(|s| (s.keyid, s.sig)),
        payload: Bytes::from(payload),
    })
}

pub async fn export(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    to: Option<u64>,
    out: &mut impl Write,
) -> Result<u64, String> {
    let mut n = 0;
    let mut err = None;
    read_stream(js, stream, from, to, |m| {
        if let Err(e) = writeln!(out, "{}", dsse_line(&m)) {
            err = Some(e.to_string());
            return false;
        }
        n += 1;
        true
    })
    .await?;
    match err {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// An event's place and content, as far as state rebuilding needs it.
#[derive(Debug, Clone)]
pub struct Change {
    pub sequence: u64,
    pub table: String,
    /// The row the event is about (`None` for a truncate).
    pub key: Option<StoredKey>,
    /// An update that changed the entity key: the row's key before it (that row is gone).
    pub moved_from: Option<StoredKey>,
    pub op: Op,
    pub time: String,
    pub pglsn: crate::lsn::Lsn,
    pub after: Option<Map<String, Value>>,
    pub unchanged: Vec<String>,
    pub actor: Value,
}

impl Change {
    /// The change a stored message records; `None` for walguard's own markers (watermarks,
    /// snapshot progress, resync). A message that is neither is an error naming its sequence:
    /// skipping it would rebuild a table without the rows it carries.
    pub fn parse(sequence: u64, payload: &[u8]) -> Result<Option<Change>, String> {
        let bad = |why: &dyn std::fmt::Display| {
            format!("stream sequence {sequence} is not a readable walguard event ({why}): run `walguard verify`")
        };
        let event = StoredEvent::parse(payload).map_err(|e| bad(&e))?;
        Change::from_event(sequence, event)
    }

    /// The change an event already parsed (by the verifier, say) records; as `parse`.
    pub fn from_event(sequence: u64, event: StoredEvent) -> Result<Option<Change>, String> {
        let bad = |why: &dyn std::fmt::Display| {
            format!("stream sequence {sequence} is not a readable walguard event ({why}): run `walguard verify`")
        };
        let attributes = event.attributes;
        let change = |op: Op, table: String| Change {
            sequence,
            table,
            key: None,
            moved_from: None,
            op,
            time: attributes.time.clone(),
            pglsn: attributes.pglsn,
            after: None,
            unchanged: Vec::new(),
            actor: Value::Null,
        };
        match event.data {
            Data::Row(op, row) => {
                let subject_key = stored::subject_key(&attributes.subject)
                    .ok_or_else(|| bad(&format_args!("the subject of a {} names no key", op.as_str())))?;
                let table = row.qualified();
                Ok(Some(Change {
                    key: Some(row.key(subject_key)),
                    moved_from: if op == Op::Update { row.moved_from() } else { None },
                    after: row.after,
                    unchanged: row.unchanged,
                    actor: row.actor,
                    ..change(op, table)
                }))
            }
            Data::Truncate(truncate) => {
                let table = truncate.qualified();
                Ok(Some(Change {
                    actor: truncate.actor,
                    ..change(Op::Truncate, table)
                }))
            }
            Data::Watermark | Data::Resync(_) | Data::SnapshotProgress(_) | Data::Schema(_) | Data::Checkpoint(_) => {
                Ok(None)
            }
        }
    }

    /// Whether this change is part of the tables' state as of WAL position `at`: a change
    /// committed before `at`, or a snapshot row read at `at` (a snapshot group at `L` holds
    /// what committed before `L`, so on a quiet server the initial snapshot's group sits
    /// exactly at the current position).
    pub fn is_state_at(&self, at: crate::lsn::Lsn) -> bool {
        self.pglsn < at || (self.op == Op::Snapshot && self.pglsn == at)
    }

    /// Whether this change is about the entity whose key people wrote as `text` (a truncate is
    /// about every entity of its table).
    pub fn concerns(&self, text: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.text() == text) || self.moved_from.as_ref().is_some_and(|k| k.text() == text)
    }
}

/// A table's rows by entity key, rebuilt from events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableState {
    pub rows: BTreeMap<StoredKey, Map<String, Value>>,
}

impl TableState {
    /// Applies one change; returns the row before it (for history).
    pub fn apply(&mut self, c: &Change) -> Option<Map<String, Value>> {
        match c.op {
            Op::Truncate => {
                self.rows.clear();
                None
            }
            Op::Delete => c.key.as_ref().and_then(|k| self.rows.remove(k)),
            Op::Snapshot | Op::Insert | Op::Update => {
                let key = c.key.clone()?;
                let mut row = c.after.clone().unwrap_or_default();
                // A key-changing update moves the row: the old key's row is the previous one.
                let moved = c.moved_from.as_ref().and_then(|old| self.rows.remove(old));
                let previous = moved.or_else(|| self.rows.get(&key).cloned());
                if let Some(prev) = &previous {
                    for col in &c.unchanged {
                        if let Some(v) = prev.get(col) {
                            row.insert(col.clone(), v.clone());
                        }
                    }
                }
                self.rows.insert(key, row);
                previous
            }
            // Markers are not changes: `Change::parse` returns none for them.
            Op::Watermark | Op::Resync | Op::SnapshotProgress | Op::Schema | Op::Checkpoint => None,
        }
    }
}

/// Reads the stream's changes of `table` in order, calling `f` for each; stops at the first
/// message that is not readable and returns its error.
async fn read_changes(
    js: &jetstream::Context,
    stream: &str,
    table: &str,
    to: Option<u64>,
    mut f: impl FnMut(Change),
) -> Result<(), String> {
    let mut failed = None;
    read_stream(js, stream, 1, to, |m| match Change::parse(m.sequence, &m.payload) {
        Ok(Some(c)) if c.table == table => {
            f(c);
            true
        }
        Ok(_) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    })
    .await?;
    failed.map_or(Ok(()), Err)
}

/// The state of `table` (and only entity `key`, when given) as of stream sequence `at`,
/// or of events committed before `before_lsn`.
pub async fn restore(
    js: &jetstream::Context,
    stream: &str,
    table: &str,
    key: Option<&str>,
    at: Option<u64>,
    before_lsn: Option<crate::lsn::Lsn>,
) -> Result<TableState, String> {
    let mut state = TableState::default();
    read_changes(js, stream, table, at, |c| {
        let wanted = before_lsn.is_none_or(|l| c.is_state_at(l)) && key.is_none_or(|k| c.concerns(k));
        if wanted {
            state.apply(&c);
        }
    })
    .await?;
    Ok(state)
}

/// One line per event of an entity: when, what, who, and each column that changed. `key` is
/// the key as the subject writes it; should two rows share that text, the events of both are
/// shown, each against its own row.
pub async fn history(js: &jetstream::Context, stream: &str, table: &str, key: &str) -> Result<Vec<String>, String> {
    let mut state = TableState::default();
    let mut lines = Vec::new();
    read_changes(js, stream, table, None, |c| {
        if !c.concerns(key) {
            return;
        }
        let rows: Vec<StoredKey> = match &c.key {
            Some(k) => vec![k.clone()],
            None => state.rows.keys().filter(|k| k.text() == key).cloned().collect(),
        };
        let before: Vec<Option<Map<String, Value>>> = rows.iter().map(|k| state.rows.get(k).cloned()).collect();
        state.apply(&c);
        let actor = if c.actor.is_null() {
            "unknown actor".to_owned()
        } else {
            format!("actor {}", c.actor)
        };
        lines.push(format!("seq {} {} {} by {actor}", c.sequence, c.time, c.op.as_str()));
        let empty = Map::new();
        for (k, before) in rows.iter().zip(&before) {
            let (b, a) = (before.as_ref().unwrap_or(&empty), state.rows.get(k).unwrap_or(&empty));
            let mut columns: Vec<&String> = b.keys().chain(a.keys()).collect();
            columns.sort();
            columns.dedup();
            for col in columns {
                let (old, new) = (b.get(col), a.get(col));
                if old != new {
                    let show = |v: Option<&Value>| v.map_or("(absent)".to_owned(), Value::to_string);
                    lines.push(format!("    {col}: {} -> {}", show(old), show(new)));
                }
            }
        }
    })
    .await?;
    Ok(lines)
}

/// The outcome of reconciling one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub table: String,
    pub rows: usize,
    /// `(key, what differs)`.
    pub differences: Vec<(String, String)>,
    pub at: crate::lsn::Lsn,
}

/// The live table at a consistent point (a REPEATABLE READ snapshot whose WAL position is
/// `L`), against the state rebuilt from every event committed before `L`. Waits up to
/// `wait` for the stream to cover `L` (walguard must be running).
pub async fn reconcile_table(
    pg: &crate::source::tls::PgConfig,
    js: &jetstream::Context,
    stream: &str,
    spec: &crate::event::shape::TableSpec,
    hasher: Option<std::sync::Arc<crate::event::ColumnHasher>>,
    wait: Duration,
) -> Result<Reconciled, crate::Error> {
    let table = crate::snapshot::qualified(spec);
    let (at, live) = live_state(pg, spec, hasher).await?;
    // Wait until the stream proves everything committed before `at`.
    let covered = wait_until_covered(js, stream, at, wait).await?;
    // On one timeline the stream never goes beyond the server's WAL, as it is decoded from
    // it. Beyond it, the stream holds a history this server does not have (a standby promoted
    // behind what was published, SPEC section 7): compare with all of the stream, so the rows
    // the server lacks show.
    let upto = if covered > server_position(pg, &table).await? {
        None
    } else {
        Some(at)
    };
    let derived = restore(js, stream, &table, None, None, upto)
        .await
        .map_err(|e| crate::Error::Refused(Refusal::Audit, e))?;
    Ok(Reconciled {
        table,
        rows: live.rows.len(),
        differences: differences(&live, &derived),
        at,
    })
}

/// The live table in a REPEATABLE READ snapshot and that snapshot's WAL position, its rows
/// read in keyset chunks as a snapshot reads them and mapped to JSON by the same code that
/// maps events.
async fn live_state(
    pg: &crate::source::tls::PgConfig,
    spec: &crate::event::shape::TableSpec,
    hasher: Option<std::sync::Arc<crate::event::ColumnHasher>>,
) -> Result<(crate::lsn::Lsn, TableState), crate::Error> {
    use crate::event::draft::Position;
    use crate::event::naming::Naming;
    use crate::event::EventBuilder;
    use crate::snapshot::{Keyset, TableRead};
    use crate::source::catalog::Catalog;
    let table = crate::snapshot::qualified(spec);
    let catalog = Catalog::connect(pg).await?;
    let reader = Catalog::connect(pg).await?;
    let failed = |e: tokio_postgres::Error| crate::Error::Refused(Refusal::Audit, format!("reading {table}: {e}"));
    reader
        .client()
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(failed)?;
    let at = wal_position(
        &table,
        &reader
            .client()
            .query_one(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
                &[],
            )
            .await
            .map_err(failed)?
            .get::<_, String>(0),
    )?;
    let naming = std::sync::Arc::new(Naming {
        system_identifier: String::new(),
        slot: String::new(),
        subject_prefix: "reconcile".into(),
    });
    let mut builder = EventBuilder::new(naming, vec![spec.clone()], Position::default()).with_hasher(hasher);
    let mut types = std::collections::HashMap::new();
    let read = TableRead::fetch(&catalog, spec, &mut types)
        .await?
        .ok_or_else(|| crate::Error::Refused(Refusal::Audit, format!("table {table} does not exist")))?;
    builder.add_relation(read.relation.clone(), &types)?;
    builder.begin_snapshot_group(crate::lsn::Lsn(1), 1, 0)?;
    let mut live = TableState::default();
    let mut out = Vec::new();
    let mut keyset = Keyset::new(spec, &read, None);
    while !keyset.is_done() {
        for row in keyset.next_chunk(reader.client()).await? {
            builder.snapshot_row(read.relation.oid, row, &mut out)?;
            take_live_rows(&table, &mut out, &mut live)?;
        }
    }
    builder.end_snapshot_group(b"{}".to_vec(), &mut out)?;
    take_live_rows(&table, &mut out, &mut live)?;
    // A read-only transaction: nothing is lost if its end fails.
    let _ = reader.client().batch_execute("COMMIT").await;
    Ok((at, live))
}

/// Moves the snapshot rows among the drafts in `out` into `live`.
fn take_live_rows(table: &str, out: &mut Vec<crate::event::Draft>, live: &mut TableState) -> Result<(), crate::Error> {
    for d in out.drain(..).filter(|d| d.op == Op::Snapshot) {
        let (key, row) =
            live_row(&d).map_err(|e| crate::Error::Refused(Refusal::Audit, format!("reconciling {table}: {e}")))?;
        live.rows.insert(key, row);
    }
    Ok(())
}

/// The keys whose rows differ between the live table and the stream, and how.
fn differences(live: &TableState, derived: &TableState) -> Vec<(String, String)> {
    let mut differences = Vec::new();
    for (key, row) in &live.rows {
        match derived.rows.get(key) {
            None => differences.push((key.text().to_owned(), "in the table, not in the stream".to_owned())),
            Some(d) if d != row => {
                let mut cols: Vec<&String> = row
                    .keys()
                    .chain(d.keys())
                    .filter(|c| row.get(*c) != d.get(*c))
                    .collect();
                cols.sort();
                cols.dedup();
                differences.push((
                    key.text().to_owned(),
                    format!(
                        "columns differ: {}",
                        cols.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    for key in derived.rows.keys() {
        if !live.rows.contains_key(key) {
            differences.push((key.text().to_owned(), "in the stream, not in the table".to_owned()));
        }
    }
    differences
}

/// The reconcile's consistent point: what `pg_current_wal_lsn()` returned, which must be an
/// LSN (defaulting to `0/0` would compare the table with an empty stream).
fn wal_position(table: &str, text: &str) -> Result<crate::lsn::Lsn, crate::Error> {
    text.parse().map_err(|e| {
        crate::Error::Refused(
            Refusal::Audit,
            format!("reading {table}: pg_current_wal_lsn() returned {text:?}, which is not an LSN ({e})"),
        )
    })
}

/// A live row as the reconcile's builder mapped it: its identity and its columns.
fn live_row(draft: &crate::event::Draft) -> Result<(StoredKey, Map<String, Value>), String> {
    let data = Data::parse(&draft.data).map_err(|e| format!("a mapped row cannot be read ({e})"))?;
    let incomplete = || "a mapped row has no key or no columns".to_owned();
    let (Data::Row(_, row), Some(subject_key)) = (data, stored::subject_key(&draft.ce_subject)) else {
        return Err(incomplete());
    };
    let key = row.key(subject_key);
    Ok((key, row.after.ok_or_else(incomplete)?))
}

/// Waits up to `wait` until the stream's newest message covers `at`, so every change
/// committed before it is in the stream. A failed read is retried until the deadline, then
/// reported as it is (not as "walguard is not running"); a newest message that is not a
/// walguard event is refused at once.
/// The server's WAL position now (on a standby, what it has replayed).
async fn server_position(pg: &crate::source::tls::PgConfig, table: &str) -> Result<crate::lsn::Lsn, crate::Error> {
    let catalog = crate::source::catalog::Catalog::connect(pg).await?;
    let text: String = catalog
        .client()
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| crate::Error::Refused(Refusal::Audit, format!("reading {table}: {e}")))?
        .get(0);
    wal_position(table, &text)
}

/// Waits until the stream's newest position is at or past `at`; returns that position.
async fn wait_until_covered(
    js: &jetstream::Context,
    stream: &str,
    at: crate::lsn::Lsn,
    wait: Duration,
) -> Result<crate::lsn::Lsn, crate::Error> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let failure = match newest_position(js, stream).await {
            Ok(Some(covered)) if covered >= at => return Ok(covered),
            Ok(_) => None,
            Err(e) if e.is_transient() => Some(e),
            Err(e) => return Err(e),
        };
        if std::time::Instant::now() > deadline {
            return Err(failure.unwrap_or_else(|| {
                crate::Error::Refused(Refusal::Audit, format!(
                    "stream {stream} does not cover {at} yet: is walguard running? (it publishes a watermark within nats.watermark_interval)"
                ))
            }));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How far the newest message of `stream` covers (its `pgendlsn`, else its `pglsn`); `None`
/// while the stream is empty.
async fn newest_position(js: &jetstream::Context, stream: &str) -> Result<Option<crate::lsn::Lsn>, crate::Error> {
    let nats = |e: String| crate::Error::from(crate::sink::SinkError::Request(format!("reading stream {stream}: {e}")));
    let mut st = js.get_stream(stream).await.map_err(|e| nats(e.to_string()))?;
    let state = st.info().await.map_err(|e| nats(e.to_string()))?.state.clone();
    if state.messages == 0 {
        return Ok(None);
    }
    let last = state.last_sequence;
    let msg = st.get_raw_message(last).await.map_err(|e| nats(e.to_string()))?;
    let attrs = stored::Attributes::parse(&msg.payload).map_err(|e| {
        crate::Error::Refused(
            Refusal::Audit,
            format!(
            "stream {stream} sequence {last}, its newest message, is not a walguard event ({e}): run `walguard verify`"
        ),
        )
    })?;
    Ok(Some(attrs.pgendlsn.map_or(attrs.pglsn, |end| end.max(attrs.pglsn))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: &str, key: &str, after: Value, unchanged: &[&str]) -> Change {
        Change {
            sequence: 1,
            table: "public.t".into(),
            key: Some(StoredKey::new(vec![key.to_owned()], key)),
            moved_from: None,
            op: stored::op_named(op).unwrap(),
            time: String::new(),
            pglsn: Default::default(),
            after: after.as_object().cloned(),
            unchanged: unchanged.iter().map(|s| s.to_string()).collect(),
            actor: Value::Null,
        }
    }

    fn stored(sequence: u64, op: &str, data: Value) -> Change {
        let subject = format!("public.t/{}", data["key"]["id"]);
        let payload = stored::test_event(serde_json::json!({
            "type": format!("public.t.{op}"), "subject": subject, "time": "2026-12-02T00:00:00.000000Z",
            "pglsn": "0/100", "data": data,
        }));
        Change::parse(sequence, payload.to_string().as_bytes())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn an_update_that_changes_the_key_moves_the_row() {
        let mut s = TableState::default();
        s.apply(&stored(
            1,
            "created",
            serde_json::json!({"op": "insert", "schema": "public", "table": "t", "key": {"id": 1},
                "before": null, "after": {"id": 1, "big": "toast", "n": 1}, "unchanged": [], "actor": null}),
        ));
        let moved = stored(
            2,
            "updated",
            serde_json::json!({"op": "update", "schema": "public", "table": "t", "key": {"id": 2},
                "before": {"id": 1}, "after": {"id": 2, "n": 1}, "unchanged": ["big"], "actor": null}),
        );
        assert!(moved.concerns("1") && moved.concerns("2"));
        assert_eq!(s.apply(&moved).unwrap()["big"], "toast");
        let keys: Vec<&str> = s.rows.keys().map(StoredKey::text).collect();
        assert_eq!(keys, vec!["2"], "the row at the old key is gone");
        assert_eq!(
            s.rows.values().next().unwrap()["big"],
            "toast",
            "unchanged TOAST carried over"
        );
        // An update that keeps its key moves nothing.
        let same = stored(
            3,
            "updated",
            serde_json::json!({"op": "update", "schema": "public", "table": "t", "key": {"id": 2},
                "before": {"id": 2}, "after": {"id": 2, "big": "b", "n": 2}, "unchanged": [], "actor": null}),
        );
        assert!(same.moved_from.is_none());
    }

    #[test]
    fn state_follows_events_and_keeps_unchanged_toast() {
        let mut s = TableState::default();
        s.apply(&change(
            "snapshot",
            "1",
            serde_json::json!({"id": 1, "big": "x", "n": 1}),
            &[],
        ));
        s.apply(&change(
            "insert",
            "2",
            serde_json::json!({"id": 2, "big": "y", "n": 2}),
            &[],
        ));
        s.apply(&change("update", "1", serde_json::json!({"id": 1, "n": 5}), &["big"]));
        assert_eq!(
            s.rows[&StoredKey::new(vec!["1".into()], "1")],
            *serde_json::json!({"id": 1, "big": "x", "n": 5}).as_object().unwrap()
        );
        s.apply(&change("delete", "2", Value::Null, &[]));
        assert_eq!(s.rows.len(), 1);
        s.apply(&change("truncate", "", Value::Null, &[]));
        assert!(s.rows.is_empty());
    }

    /// A stored row event of `public.pairs` (key `a, b`) as walguard writes it.
    fn pair_event(seq: u64, op: &str, a: &str, b: &str, v: i64) -> Vec<u8> {
        let key = serde_json::json!({"a": a, "b": b});
        let row = serde_json::json!({"a": a, "b": b, "v": v});
        let (before, after) = if op == "delete" {
            (row, Value::Null)
        } else {
            (Value::Null, row)
        };
        serde_json::to_vec(&stored::test_event(serde_json::json!({
            "specversion": "1.0", "type": format!("public.pairs.{op}"), "subject": format!("public.pairs/{a},{b}"),
            "time": "2026-11-29T09:48:11.767852Z", "sequence": format!("{seq:020}"), "pglsn": format!("0/{seq:X}"),
            "data": {"op": op, "schema": "public", "table": "pairs", "key": key,
                     "before": before, "after": after, "unchanged": [], "actor": null}
        })))
        .unwrap()
    }

    fn state_of(events: &[Vec<u8>]) -> TableState {
        let mut s = TableState::default();
        for (i, e) in events.iter().enumerate() {
            if let Some(c) = Change::parse(i as u64 + 1, e).unwrap() {
                s.apply(&c);
            }
        }
        s
    }

    #[test]
    fn composite_keys_that_join_to_the_same_text_stay_two_rows() {
        let s = state_of(&[
            pair_event(1, "snapshot", "a,b", "c", 1),
            pair_event(2, "snapshot", "a", "b,c", 2),
            pair_event(3, "update", "a,b", "c", 3),
        ]);
        let rows: Vec<&Map<String, Value>> = s.rows.values().collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.contains(&serde_json::json!({"a": "a", "b": "b,c", "v": 2}).as_object().unwrap()));
        assert!(rows.contains(&serde_json::json!({"a": "a,b", "b": "c", "v": 3}).as_object().unwrap()));
        // Deleting one leaves the other.
        let s = state_of(&[
            pair_event(1, "snapshot", "a,b", "c", 1),
            pair_event(2, "snapshot", "a", "b,c", 2),
            pair_event(3, "delete", "a", "b,c", 2),
        ]);
        assert_eq!(
            s.rows.values().collect::<Vec<_>>(),
            [serde_json::json!({"a": "a,b", "b": "c", "v": 1}).as_object().unwrap()]
        );
        assert!(s.rows.keys().all(|k| k.text() == "a,b,c"));
    }

    #[test]
    fn a_stored_key_is_its_values_in_key_order() {
        let parse = |p: &[u8]| Change::parse(1, p).unwrap().unwrap().key.unwrap();
        // Written out: a JSON value would sort the key's columns by name.
        let event = |key: &str| {
            let attributes = stored::test_event(serde_json::json!({"type": "t", "subject": "public.t/1,x", "time": "",
                "pglsn": "0/1", "data": "DATA"}));
            attributes.to_string().replace(
                r#""DATA""#,
                &format!(r#"{{"op":"insert","schema":"public","table":"t","key":{key},"before":null,"after":{{}},"unchanged":[],"actor":null}}"#),
            )
        };
        // Column names are not part of the identity (a renamed key column is the same row);
        // their order is.
        assert_eq!(
            parse(event(r#"{"b":1,"a":"x"}"#).as_bytes()),
            parse(event(r#"{"z":1,"y":"x"}"#).as_bytes())
        );
        assert_ne!(
            parse(event(r#"{"b":1,"a":"x"}"#).as_bytes()),
            parse(event(r#"{"a":"x","b":1}"#).as_bytes())
        );
        // NULL and the text "null" are different values.
        assert_ne!(
            parse(event(r#"{"a":null}"#).as_bytes()),
            parse(event(r#"{"a":"null"}"#).as_bytes())
        );
    }

    #[test]
    fn unreadable_events_are_errors_naming_the_sequence_and_markers_are_skipped() {
        let marker = stored::test_event(
            serde_json::json!({"type": "walguard.watermark", "subject": "s", "time": "",
            "pglsn": "0/10", "data": {"op": "watermark"}}),
        )
        .to_string();
        let marker = marker.as_bytes();
        assert!(Change::parse(4, marker).unwrap().is_none());
        let row = String::from_utf8(pair_event(7, "insert", "a", "b", 1)).unwrap();
        assert!(Change::parse(7, row.as_bytes()).unwrap().is_some());
        for bad in [
            "not json".to_owned(),
            r#"{"specversion":"1.0"}"#.to_owned(),
            row.replace(r#""pglsn":"0/7""#, r#""pglsn":"later""#),
            row.replace(r#""subject":"public.pairs/a,b""#, r#""subject":"public.pairs""#),
            row.replace(r#""schema":"public","#, ""),
            row.replace(r#""after":{"a":"a","b":"b","v":1}"#, r#""after":null"#),
        ] {
            let err = Change::parse(7, bad.as_bytes()).unwrap_err();
            assert!(err.contains("stream sequence 7"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_state_at_a_position_holds_a_snapshot_read_there_but_no_change_committed_there() {
        let at = crate::lsn::Lsn(0x19195C0);
        let mut c = change("snapshot", "1", serde_json::json!({"id": 1}), &[]);
        c.pglsn = at;
        assert!(c.is_state_at(at));
        c.op = Op::Insert;
        assert!(!c.is_state_at(at));
        c.pglsn = crate::lsn::Lsn(0x19195BF);
        assert!(c.is_state_at(at));
        c.op = Op::Snapshot;
        c.pglsn = crate::lsn::Lsn(0x19195C1);
        assert!(!c.is_state_at(at));
    }

    #[test]
    fn an_unreadable_wal_position_is_an_error_not_0_0() {
        assert_eq!(
            wal_position("public.t", "16/B374D848").unwrap(),
            crate::lsn::Lsn(0x16_B374_D848)
        );
        let err = wal_position("public.t", "").unwrap_err().to_string();
        assert!(err.contains("public.t") && err.contains("pg_current_wal_lsn"), "{err}");
    }

    #[test]
    fn dsse_lines_round_trip() {
        let m = Stored {
            sequence: 7,
            signature: Some(("abcd".into(), "c2ln".into())),
            payload: Bytes::from_static(br#"{"sequence":"00000000000000000007"}"#),
        };
        let line = dsse_line(&m);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payloadType"], "application/cloudevents+json");
        assert_eq!(v["signatures"][0]["keyid"], "abcd");
        let back = parse_dsse_line(&line).unwrap();
        assert_eq!(back.sequence, 7);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.signature, m.signature);
        assert!(parse_dsse_line("{}").is_err());
        // Byte for byte what a JSON value of the envelope renders, signed or not (archives
        // written before keep their bytes).
        let unsigned = Stored {
            signature: None,
            ..m.clone()
        };
        let odd = Stored {
            signature: Some(("a\"b\\".into(), "c\u{1}".into())),
            ..m.clone()
        };
        for m in [m, unsigned, odd] {
            let b64 = base64::engine::general_purpose::STANDARD;
            let signatures: Vec<Value> = m
                .signature
                .iter()
                .map(|(kid, sig)| serde_json::json!({"keyid": kid, "sig": sig}))
                .collect();
            let value = serde_json::json!({
                "payloadType": PAYLOAD_TYPE,
                "payload": b64.encode(&m.payload),
                "signatures": signatures,
            });
            assert_eq!(dsse_line(&m), value.to_string());
        }
    }
}
