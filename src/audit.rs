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

use async_nats::jetstream::{self, consumer};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::event::envelope::{HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::signing::PAYLOAD_TYPE;

/// One stored message as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub signature: Option<(String, String)>,
    pub payload: Bytes,
}

/// Reads messages `from..=to` (to the stream's last sequence when `to` is None) in order,
/// calling `f` for each; `f` returns false to stop early.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    to: Option<u64>,
    mut f: impl FnMut(Stored) -> bool,
) -> Result<u64, String> {
    let mut st = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let info = st.info().await.map_err(|e| format!("stream {stream}: {e}"))?.clone();
    let last = to.unwrap_or(info.state.last_sequence).min(info.state.last_sequence);
    if info.state.messages == 0 || last < from.max(info.state.first_sequence) {
        return Ok(last);
    }
    // A cluster that is electing a leader can time out a consumer creation: try again for
    // a while before giving up.
    let mut attempts = 0;
    let consumer = loop {
        let created = st
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: if from <= 1 {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::ByStartSequence { start_sequence: from }
                },
                ..Default::default()
            })
            .await;
        match created {
            Ok(c) => break c,
            Err(e) if attempts < 20 => {
                attempts += 1;
                tracing::debug!(error = %e, "creating a consumer failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("creating a consumer on {stream}: {e}")),
        }
    };
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading {stream}: {e}"))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| format!("reading {stream}: no message within 30 s"))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| format!("reading {stream}: {e}"))?;
        let sequence = msg
            .info()
            .map_err(|e| format!("reading {stream}: {e}"))?
            .stream_sequence;
        let headers = msg.headers.as_ref();
        let kid = headers
            .and_then(|h| h.get(HEADER_KEY_ID))
            .map(|v| v.as_str().to_owned());
        let sig = headers
            .and_then(|h| h.get(HEADER_SIGNATURE))
            .map(|v| v.as_str().to_owned());
        let keep_going = f(Stored {
            sequence,
            signature: kid.zip(sig),
            payload: msg.payload.clone(),
        });
        if !keep_going || sequence >= last {
            break;
        }
    }
    Ok(last)
}

/// A DSSE envelope (one line of `walguard export`).
pub fn dsse_line(m: &Stored) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let signatures: Vec<Value> = m
        .signature
        .iter()
        .map(|(kid, sig)| serde_json::json!({"keyid": kid, "sig": sig}))
        .collect();
    serde_json::json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": b64.encode(&m.payload),
        "signatures": signatures,
    })
    .to_string()
}

/// Parses one exported line back; the sequence comes from the payload's `sequence`.
pub fn parse_dsse_line(line: &str) -> Result<Stored, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON DSSE envelope: {e}"))?;
    if v["payloadType"] != PAYLOAD_TYPE {
        return Err(format!("payloadType is {}, expected {PAYLOAD_TYPE}", v["payloadType"]));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap_or(""))
        .map_err(|e| format!("payload is not base64: {e}"))?;
    let sequence = serde_json::from_slice::<Value>(&payload)
        .ok()
        .and_then(|p| p["sequence"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let signature = v["signatures"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|s| Some((s["keyid"].as_str()?.to_owned(), s["sig"].as_str()?.to_owned())));
    Ok(Stored {
        sequence,
        signature,
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
    /// The entity key: the text after `/` in the CloudEvents `subject`.
    pub key: Option<String>,
    pub op: String,
    pub time: String,
    pub pglsn: crate::lsn::Lsn,
    pub after: Option<Map<String, Value>>,
    pub unchanged: Vec<String>,
    pub actor: Value,
}

impl Change {
    pub fn parse(sequence: u64, payload: &[u8]) -> Option<Change> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let data = &v["data"];
        let schema = data["schema"].as_str()?;
        let table = data["table"].as_str()?;
        let subject = v["subject"].as_str().unwrap_or("");
        Some(Change {
            sequence,
            table: format!("{schema}.{table}"),
            key: subject.split_once('/').map(|(_, k)| k.to_owned()),
            op: data["op"].as_str()?.to_owned(),
            time: v["time"].as_str().unwrap_or("").to_owned(),
            pglsn: v["pglsn"].as_str().and_then(|l| l.parse().ok()).unwrap_or_default(),
            after: data["after"].as_object().cloned(),
            unchanged: data["unchanged"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            actor: data["actor"].clone(),
        })
    }
}

/// A table's rows by entity key, rebuilt from events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableState {
    pub rows: BTreeMap<String, Map<String, Value>>,
}

impl TableState {
    /// Applies one change; returns the row before it (for history).
    pub fn apply(&mut self, c: &Change) -> Option<Map<String, Value>> {
        match c.op.as_str() {
            "truncate" => {
                self.rows.clear();
                None
            }
            "delete" => c.key.as_ref().and_then(|k| self.rows.remove(k)),
            "snapshot" | "insert" | "update" => {
                let key = c.key.clone()?;
                let mut row = c.after.clone().unwrap_or_default();
                let previous = self.rows.get(&key).cloned();
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
            _ => None,
        }
    }
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
    read_stream(js, stream, 1, at, |m| {
        if let Some(c) = Change::parse(m.sequence, &m.payload) {
            let wanted = c.table == table
                && before_lsn.is_none_or(|l| c.pglsn < l)
                && (key.is_none() || c.op == "truncate" || c.key.as_deref() == key);
            if wanted {
                state.apply(&c);
            }
        }
        true
    })
    .await?;
    Ok(state)
}

/// One line per event of an entity: when, what, who, and each column that changed.
pub async fn history(js: &jetstream::Context, stream: &str, table: &str, key: &str) -> Result<Vec<String>, String> {
    let mut state = TableState::default();
    let mut lines = Vec::new();
    read_stream(js, stream, 1, None, |m| {
        let Some(c) = Change::parse(m.sequence, &m.payload) else {
            return true;
        };
        if c.table != table || (c.op != "truncate" && c.key.as_deref() != Some(key)) {
            return true;
        }
        let before = state.rows.get(key).cloned();
        state.apply(&c);
        let after = state.rows.get(key);
        let actor = if c.actor.is_null() {
            "unknown actor".to_owned()
        } else {
            format!("actor {}", c.actor)
        };
        lines.push(format!("seq {} {} {} by {actor}", c.sequence, c.time, c.op));
        let empty = Map::new();
        let (b, a) = (before.as_ref().unwrap_or(&empty), after.unwrap_or(&empty));
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
        true
    })
    .await?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: &str, key: &str, after: Value, unchanged: &[&str]) -> Change {
        Change {
            sequence: 1,
            table: "public.t".into(),
            key: Some(key.into()),
            op: op.into(),
            time: String::new(),
            pglsn: Default::default(),
            after: after.as_object().cloned(),
            unchanged: unchanged.iter().map(|s| s.to_string()).collect(),
            actor: Value::Null,
        }
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
            s.rows["1"],
            *serde_json::json!({"id": 1, "big": "x", "n": 5}).as_object().unwrap()
        );
        s.apply(&change("delete", "2", Value::Null, &[]));
        assert_eq!(s.rows.len(), 1);
        s.apply(&change("truncate", "", Value::Null, &[]));
        assert!(s.rows.is_empty());
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
    }
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
    spec: &crate::event::builder::TableSpec,
    hasher: Option<std::sync::Arc<crate::event::ColumnHasher>>,
    wait: Duration,
) -> Result<Reconciled, crate::Error> {
    use crate::event::builder::{Naming, Position};
    use crate::event::EventBuilder;
    use crate::source::catalog::Catalog;
    let table = crate::snapshot::qualified(spec);
    let catalog = Catalog::connect(pg).await?;
    let reader = Catalog::connect(pg).await?;
    let failed = |e: tokio_postgres::Error| crate::Error::Refused(format!("reading {table}: {e}"));
    reader
        .client()
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(failed)?;
    let at: crate::lsn::Lsn = reader
        .client()
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(failed)?
        .get::<_, String>(0)
        .parse()
        .unwrap_or_default();
    // The live rows, mapped to JSON by the same code that maps events.
    let naming = std::sync::Arc::new(Naming {
        system_identifier: String::new(),
        slot: String::new(),
        subject_prefix: "reconcile".into(),
    });
    let mut builder = EventBuilder::new(naming, vec![spec.clone()], Position::default()).with_hasher(hasher);
    let rel = catalog
        .relation(&spec.schema, &spec.name)
        .await?
        .ok_or_else(|| crate::Error::Refused(format!("table {table} does not exist")))?;
    let mut types = std::collections::HashMap::new();
    let missing: Vec<u32> = EventBuilder::unresolved_types(&rel, &types).collect();
    catalog.resolve_types(missing, &mut types).await?;
    builder.add_relation(rel.clone(), &types)?;
    builder.begin_snapshot_group(crate::lsn::Lsn(1), 1, 0)?;
    let columns: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
    let positions: Vec<usize> = spec
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|c| c == k))
        .collect();
    let mut live = TableState::default();
    let mut out = Vec::new();
    let take = |out: &mut Vec<crate::event::Draft>, live: &mut TableState| {
        for d in out.drain(..) {
            let v: Value = serde_json::from_slice(&d.data).unwrap_or_default();
            if let (Some(after), Some((_, key))) = (v["after"].as_object(), d.ce_subject.split_once('/')) {
                live.rows.insert(key.to_owned(), after.clone());
            }
        }
    };
    let mut after: Option<Vec<String>> = None;
    loop {
        let rows = crate::snapshot::read_chunk(
            reader.client(),
            spec,
            &columns,
            after.as_deref(),
            crate::snapshot::CHUNK_ROWS,
        )
        .await?;
        let n = rows.len();
        if let Some(last) = rows.last() {
            after = Some(positions.iter().map(|&i| last[i].clone().unwrap_or_default()).collect());
        }
        for row in rows {
            builder.snapshot_row(rel.oid, row, &mut out)?;
            take(&mut out, &mut live);
        }
        if n < crate::snapshot::CHUNK_ROWS {
            break;
        }
    }
    builder.end_snapshot_group(b"{}".to_vec(), &mut out)?;
    take(&mut out, &mut live);
    let _ = reader.client().batch_execute("COMMIT").await;

    // Wait until the stream proves everything committed before `at`.
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut covered = false;
        if let Ok(mut st) = js.get_stream(stream).await {
            if let Ok(info) = st.info().await {
                let last = info.state.last_sequence;
                if let Ok(m) = st.get_raw_message(last).await {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    let end: Option<crate::lsn::Lsn> = v["pgendlsn"].as_str().and_then(|l| l.parse().ok());
                    let lsn: Option<crate::lsn::Lsn> = v["pglsn"].as_str().and_then(|l| l.parse().ok());
                    covered = end.max(lsn).is_some_and(|l| l >= at);
                }
            }
        }
        if covered {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(crate::Error::Refused(format!(
                "stream {stream} does not cover {at} yet: is walguard running? (it publishes a watermark within nats.watermark_interval)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let derived = restore(js, stream, &table, None, None, Some(at))
        .await
        .map_err(crate::Error::Refused)?;
    let mut differences = Vec::new();
    for (key, row) in &live.rows {
        match derived.rows.get(key) {
            None => differences.push((key.clone(), "in the table, not in the stream".to_owned())),
            Some(d) if d != row => {
                let mut cols: Vec<&String> = row
                    .keys()
                    .chain(d.keys())
                    .filter(|c| row.get(*c) != d.get(*c))
                    .collect();
                cols.sort();
                cols.dedup();
                differences.push((
                    key.clone(),
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
            differences.push((key.clone(), "in the stream, not in the table".to_owned()));
        }
    }
    Ok(Reconciled {
        table,
        rows: live.rows.len(),
        differences,
        at,
    })
}

/// Creates `schema.table` like the live table and fills it with `state`'s rows. Returns the
/// target's name.
pub async fn restore_into(
    pg: &crate::source::tls::PgConfig,
    table: &str,
    schema: &str,
    state: &TableState,
) -> Result<String, crate::Error> {
    use crate::source::conn::quote_ident;
    let (src_schema, src_table) = table.split_once('.').unwrap_or(("public", table));
    let catalog = crate::source::catalog::Catalog::connect(pg).await?;
    let client = catalog.client();
    let source = format!("{}.{}", quote_ident(src_schema), quote_ident(src_table));
    let target = format!("{}.{}", quote_ident(schema), quote_ident(src_table));
    let failed = |e: tokio_postgres::Error| {
        crate::Error::Refused(format!(
            "restoring into {target}: {}",
            crate::source::catalog::error_chain(&e)
        ))
    };
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {target} (LIKE {source} INCLUDING DEFAULTS)",
            quote_ident(schema)
        ))
        .await
        .map_err(failed)?;
    // bytea travels as base64 in events; jsonb_populate_record wants PostgreSQL's hex form.
    let bytea: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND atttypid = 'bytea'::regtype AND attnum > 0 AND NOT attisdropped",
            &[&target],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let insert = format!("INSERT INTO {target} SELECT * FROM jsonb_populate_record(NULL::{target}, $1::text::jsonb)");
    for row in state.rows.values() {
        let mut row = row.clone();
        for col in &bytea {
            if let Some(Value::String(b64)) = row.get(col) {
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) {
                    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                    row.insert(col.clone(), Value::String(format!("\\x{hex}")));
                }
            }
        }
        client
            .execute(&insert, &[&Value::Object(row).to_string()])
            .await
            .map_err(failed)?;
    }
    Ok(target)
}
