//! From decoded pgoutput messages to event drafts: the transaction framing. One draft per row
//! change of a guarded table, numbered within its transaction, with one event of lookahead so
//! that the last event of a transaction can carry `pgtxcnt` and `pgendlsn` without buffering
//! the transaction (G5). Snapshot groups are framed the same way, closed by their progress
//! event.
//!
//! Drafts at or before the resume position (read from the stream's tail, G7) are counted but
//! not emitted: a transaction replayed after a restart yields the same ids and numbers, and
//! only what the stream lacks goes on.
//!
//! The rest is delegated: `shape` keeps what each relation's rows are built from, `data`
//! writes a row's `data`, `naming` gives ids, subjects and types.

use std::collections::HashMap;
use std::sync::Arc;

use super::data;
use super::draft::{BuildError, Draft, EntityKey, Op, Position, Touched};
use super::json::write_str;
use super::naming::Naming;
use super::schema::TableSchema;
use super::shape::{DraftNames, Shapes, TableSpec};
use super::value::ValueKind;
use super::ColumnHasher;
use crate::decode::frame::PG_EPOCH_UNIX_MICROS;
use crate::decode::pgoutput::{Begin, Commit, Datum, Message, OldKind, Relation, Tuple};
use crate::lsn::Lsn;

/// A table's schema: the current one (from the catalog, for the Relation in use) and the
/// newest one in the stream.
#[derive(Default)]
struct Schemas {
    current: Option<Arc<TableSchema>>,
    published: Option<Arc<TableSchema>>,
}

/// The open transaction, or snapshot group.
struct Tx {
    /// A snapshot group rather than a transaction: ids are `.../snapshot/{lsn}/{idx}`.
    snapshot: bool,
    commit_lsn: Lsn,
    xid: u32,
    time_micros: i64,
    next_idx: u32,
    actor: Option<Vec<u8>>,
    held: Option<Draft>,
}

impl Tx {
    fn transaction(begin: Begin) -> Tx {
        Tx {
            snapshot: false,
            commit_lsn: begin.final_lsn,
            xid: begin.xid,
            time_micros: begin.commit_time + PG_EPOCH_UNIX_MICROS,
            next_idx: 1,
            actor: None,
            held: None,
        }
    }

    fn snapshot_group(lsn: Lsn, first_idx: u32, now_unix_micros: i64) -> Tx {
        Tx {
            snapshot: true,
            commit_lsn: lsn,
            xid: 0,
            time_micros: now_unix_micros,
            next_idx: first_idx,
            actor: None,
            held: None,
        }
    }

    /// Numbers the next draft and holds it back (the lookahead); returns the draft held
    /// before, which is now known not to be the last.
    fn hold(&mut self, naming: &Naming, op: Op, names: DraftNames, ce_subject: String, data: Vec<u8>) -> Option<Draft> {
        let idx = self.next_idx;
        self.next_idx += 1;
        let draft = Draft {
            op,
            nats_subject: names.nats_subject,
            id: if self.snapshot {
                naming.snapshot_id(self.commit_lsn, idx)
            } else {
                naming.change_id(self.commit_lsn, idx)
            },
            ce_type: names.ce_type,
            ce_subject,
            time_micros: self.time_micros,
            pglsn: self.commit_lsn,
            pgxid: self.xid,
            pgtxidx: idx,
            end: None,
            data,
            table: names.table,
        };
        self.held.replace(draft)
    }
}

pub struct EventBuilder {
    naming: Arc<Naming>,
    shapes: Shapes,
    /// Each guarded table's shape as read from the catalog and as the stream last published
    /// it, by `schema.table`.
    schemas: HashMap<Arc<str>, Schemas>,
    /// Tables whose current schema is not the one published: checked before each row, so a
    /// row pays one `is_empty` when nothing changed.
    schema_pending: Vec<Arc<str>>,
    tx: Option<Tx>,
    resume: Position,
    skipped: u64,
    /// The size of the last row's `data`, so the next one is allocated once.
    data_hint: usize,
}

impl EventBuilder {
    pub fn new(naming: Arc<Naming>, tables: Vec<TableSpec>, resume: Position) -> Self {
        EventBuilder {
            shapes: Shapes::new(naming.clone(), tables),
            schemas: HashMap::new(),
            schema_pending: Vec::new(),
            naming,
            tx: None,
            resume,
            skipped: 0,
            data_hint: 256,
        }
    }

    /// Hashes `hash_columns` with this salt.
    pub fn with_hasher(mut self, hasher: Option<Arc<ColumnHasher>>) -> Self {
        self.shapes.set_hasher(hasher);
        self
    }

    /// The schemas the stream holds, newest per table (up to the verified head, so that a
    /// replay derives the unsigned tail's schema events again).
    pub fn set_published_schemas(&mut self, published: impl IntoIterator<Item = TableSchema>) {
        for schema in published {
            let table: Arc<str> = schema.qualified().into();
            self.schemas.entry(table).or_default().published = Some(Arc::new(schema));
        }
    }

    /// The shape of a guarded table as its next events have it; a schema event goes before
    /// the next event of the table when it differs from the one the stream holds.
    pub fn set_schema(&mut self, schema: TableSchema) {
        let table: Arc<str> = schema.qualified().into();
        let entry = self.schemas.entry(table.clone()).or_default();
        let changed = entry.current.as_deref() != Some(&schema);
        self.shapes.set_enums(&schema, changed);
        if changed {
            entry.current = Some(Arc::new(schema));
        }
        let differs = entry.current != entry.published;
        self.schema_pending.retain(|t| *t != table);
        if differs {
            self.schema_pending.push(table);
        }
    }

    /// The Relation of a guarded table whose schema must be read again before `msg` is
    /// handled: `msg` inserts or updates a row holding an enum label that the table's schema
    /// does not list. `ALTER TYPE ... ADD VALUE` sends no Relation message, so this is how
    /// the label is noticed; the schema read then (`Catalog::describe_for`) puts a schema
    /// event before the row when it differs from the newest one in the stream. The label
    /// counts as known from then on, so one the catalog does not list either (renamed since)
    /// costs one catalog read, not one per row. Nothing is looked at while no guarded table
    /// has enum columns.
    pub fn stale_enum_labels(&mut self, msg: &Message) -> Option<Arc<Relation>> {
        if !self.shapes.any_enums {
            return None;
        }
        let (oid, tuple) = match msg {
            Message::Insert { relation, new } | Message::Update { relation, new, .. } => (*relation, new),
            _ => return None,
        };
        let shape = self.shapes.guarded_mut(oid)?;
        let mut stale = false;
        for column in shape.enums.as_mut()? {
            if let Some(Datum::Text(text)) = tuple.get(column.index) {
                stale |= column.learn(text);
            }
        }
        if stale {
            shape.relation.clone()
        } else {
            None
        }
    }

    /// The entity key's column names of relation `oid` when it is guarded (what its schema
    /// event names as `key`).
    pub fn key_names(&self, oid: u32) -> Option<Vec<String>> {
        let shape = self.shapes.guarded(oid).ok().flatten()?;
        Some(shape.key.iter().map(|&i| shape.columns[i].name.clone()).collect())
    }

    /// Events replayed by the server that the stream already holds.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Type OIDs of a Relation that have no built-in mapping and must be resolved from the
    /// catalog before the Relation is handled.
    pub fn unresolved_types<'a>(
        relation: &'a Relation,
        known: &'a HashMap<u32, ValueKind>,
    ) -> impl Iterator<Item = u32> + 'a {
        relation
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| ValueKind::builtin(*oid).is_none() && !known.contains_key(oid))
    }

    /// The rows of guarded tables that `msg` changes, by entity key; `None` for messages that
    /// change no guarded row. Call it before `handle`, which consumes the message. A key that
    /// the change does not carry is left out: `handle` refuses such a change anyway.
    pub fn touched(&self, msg: &Message) -> Option<Touched> {
        let (oid, keys) = match msg {
            Message::Insert { relation, new } => (*relation, vec![self.key_of(*relation, None, new)]),
            Message::Update { relation, old, new } => (
                *relation,
                vec![
                    self.key_of(*relation, None, new),
                    old.as_ref()
                        .and_then(|(kind, t)| self.key_of(*relation, Some(*kind), t)),
                ],
            ),
            Message::Delete { relation, kind, old } => (*relation, vec![self.key_of(*relation, Some(*kind), old)]),
            Message::Truncate { relations, .. } => {
                let tables: Vec<Arc<str>> = relations
                    .iter()
                    .filter_map(|oid| self.shapes.guarded(*oid).ok().flatten())
                    .map(|shape| shape.qualified.clone())
                    .collect();
                return (!tables.is_empty()).then_some(Touched::Tables(tables));
            }
            _ => return None,
        };
        let shape = self.shapes.guarded(oid).ok().flatten()?;
        let mut keys: Vec<EntityKey> = keys.into_iter().flatten().collect();
        keys.dedup();
        Some(Touched::Rows {
            table: shape.qualified.clone(),
            keys,
        })
    }

    /// The entity key of a snapshot row of relation `oid` (its columns as text, `None` for
    /// NULL, as `snapshot_row` takes them): the same identity `touched` gives a change.
    pub fn snapshot_key(&self, oid: u32, values: &[Option<String>]) -> Option<EntityKey> {
        let shape = self.shapes.guarded(oid).ok().flatten()?;
        shape.key_values(|i| values.get(i).map(|v| v.as_deref().map(str::as_bytes)))
    }

    /// The entity key `tuple` of relation `oid` holds (see `Shape::key_of`).
    fn key_of(&self, oid: u32, old: Option<OldKind>, tuple: &Tuple) -> Option<EntityKey> {
        self.shapes.guarded(oid).ok().flatten()?.key_of(old, tuple)
    }

    /// Handles one message; drafts ready to publish are appended to `out` in order.
    pub fn handle(
        &mut self,
        msg: Message,
        types: &HashMap<u32, ValueKind>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        match msg {
            Message::Begin(begin) => self.open(Tx::transaction(begin), "Begin"),
            Message::Commit(commit) => self.commit(commit, out),
            Message::Relation(rel) => self.shapes.insert(rel, types),
            Message::Type { .. } | Message::Origin { .. } => Ok(()),
            Message::Insert { relation, new } => self.row(relation, Op::Insert, None, Some(new), out),
            Message::Update { relation, old, new } => self.row(relation, Op::Update, old, Some(new), out),
            Message::Delete { relation, kind, old } => self.row(relation, Op::Delete, Some((kind, old)), None, out),
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => self.truncate(&relations, cascade, restart_identity, out),
            Message::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                if transactional && prefix == "walguard.actor" {
                    self.actor_message(&content);
                }
                Ok(())
            }
        }
    }

    /// Opens `tx`; `what` names it in the refusal when a transaction is already open.
    fn open(&mut self, tx: Tx, what: &str) -> Result<(), BuildError> {
        if self.tx.is_some() {
            return Err(BuildError::Protocol(format!("{what} inside a transaction")));
        }
        self.tx = Some(tx);
        Ok(())
    }

    fn commit(&mut self, commit: Commit, out: &mut Vec<Draft>) -> Result<(), BuildError> {
        let tx = self
            .tx
            .take()
            .ok_or_else(|| BuildError::Protocol("Commit outside a transaction".into()))?;
        if tx.commit_lsn != commit.commit_lsn {
            return Err(BuildError::Protocol(format!(
                "Commit at {} does not match Begin at {}",
                commit.commit_lsn, tx.commit_lsn
            )));
        }
        self.close(tx, commit.end_lsn, out);
        Ok(())
    }

    /// Ends `tx`: the draft it holds is its last and carries `end` as `pgendlsn`.
    fn close(&mut self, mut tx: Tx, end: Lsn, out: &mut Vec<Draft>) {
        if let Some(mut last) = tx.held.take() {
            last.end = Some(end);
            self.emit(last, out);
        }
    }

    /// One event per guarded table of the TRUNCATE.
    fn truncate(
        &mut self,
        relations: &[u32],
        cascade: bool,
        restart_identity: bool,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        for &oid in relations {
            let Some(shape) = self.shapes.guarded(oid)? else {
                continue;
            };
            let data = data::truncate(shape, cascade, restart_identity, self.actor());
            let ce_subject = shape.qualified.to_string();
            let names = shape.names(Op::Truncate);
            if !self.schema_pending.is_empty() {
                self.schema_before(&names.table, out)?;
            }
            self.push(Op::Truncate, names, ce_subject, data, out)?;
        }
        Ok(())
    }

    /// A `walguard.actor` message: the `actor` of the transaction's later events.
    fn actor_message(&mut self, content: &[u8]) {
        let Some(tx) = self.tx.as_mut() else { return };
        let mut actor = Vec::with_capacity(content.len());
        match serde_json::from_slice::<&serde_json::value::RawValue>(content) {
            Ok(raw) if raw.get().starts_with('{') => actor.extend_from_slice(raw.get().as_bytes()),
            _ => {
                // Not a JSON object: kept losslessly as a string rather than
                // dropped, so the audit trail still shows what was claimed.
                tracing::warn!(
                    xid = tx.xid,
                    "walguard.actor message is not a JSON object; recorded as a string"
                );
                write_str(&String::from_utf8_lossy(content), &mut actor);
            }
        }
        tx.actor = Some(actor);
    }

    /// The open transaction's actor, already JSON.
    fn actor(&self) -> Option<&[u8]> {
        self.tx.as_ref().and_then(|t| t.actor.as_deref())
    }

    /// Adds the shape of a guarded table read from the catalog, for snapshot rows (a later
    /// Relation message for the same table replaces it with an equal one).
    pub fn add_relation(&mut self, rel: Relation, types: &HashMap<u32, ValueKind>) -> Result<(), BuildError> {
        self.shapes.insert(rel, types)
    }

    /// Opens a snapshot group read at `lsn`, numbering from `first_idx` (1, or past the events
    /// of an interrupted group being closed).
    pub fn begin_snapshot_group(&mut self, lsn: Lsn, first_idx: u32, now_unix_micros: i64) -> Result<(), BuildError> {
        self.open(Tx::snapshot_group(lsn, first_idx, now_unix_micros), "snapshot group")
    }

    /// One row of relation `oid`, its columns as text (`None` for NULL), in the Relation's order.
    pub fn snapshot_row(
        &mut self,
        oid: u32,
        values: Vec<Option<String>>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        let tuple = values
            .into_iter()
            .map(|v| v.map_or(Datum::Null, |s| Datum::Text(bytes::Bytes::from(s))))
            .collect();
        self.row(oid, Op::Snapshot, None, Some(tuple), out)
    }

    /// Closes the open snapshot group with its progress event (`data`), which carries
    /// `pgtxcnt` and `pgendlsn` (= the group's LSN).
    pub fn end_snapshot_group(&mut self, data: Vec<u8>, out: &mut Vec<Draft>) -> Result<(), BuildError> {
        let mut tx = self
            .tx
            .take_if(|t| t.snapshot)
            .ok_or_else(|| BuildError::Protocol("no snapshot group is open".into()))?;
        let lsn = tx.commit_lsn;
        let progress = self.naming.snapshot_progress(lsn, tx.next_idx, tx.time_micros, data);
        if let Some(prev) = tx.held.replace(progress) {
            self.emit(prev, out);
        }
        self.close(tx, lsn, out);
        Ok(())
    }

    /// One row change of relation `oid`: passed over unless the table is guarded.
    fn row(
        &mut self,
        oid: u32,
        op: Op,
        old: Option<(OldKind, Tuple)>,
        new: Option<Tuple>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        let Some(shape) = self.shapes.guarded(oid)? else {
            return Ok(());
        };
        let (ce_subject, data) = data::row(shape, op, old.as_ref(), new.as_ref(), self.actor(), self.data_hint)?;
        self.data_hint = (data.len() + 64).clamp(256, 64 * 1024);
        let names = shape.names(op);
        if !self.schema_pending.is_empty() {
            self.schema_before(&names.table, out)?;
        }
        self.push(op, names, ce_subject, data, out)
    }

    /// Numbers a draft of the open transaction and emits the one it held before.
    fn push(
        &mut self,
        op: Op,
        names: DraftNames,
        ce_subject: String,
        data: Vec<u8>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| BuildError::Protocol("row change outside a transaction".into()))?;
        if let Some(prev) = tx.hold(&self.naming, op, names, ce_subject, data) {
            self.emit(prev, out);
        }
        Ok(())
    }

    /// The schema event `table`'s next event needs, if its shape is not the one the stream
    /// holds: placed after the draft held so far (which is then known not to be the last) and
    /// before the next one. When the next event is one the stream already has (a replay), the
    /// schema event is not made either, and waits for the first event that is new.
    fn schema_before(&mut self, table: &Arc<str>, out: &mut Vec<Draft>) -> Result<(), BuildError> {
        let Some(at) = self.schema_pending.iter().position(|t| t == table) else {
            return Ok(());
        };
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| BuildError::Protocol("row change outside a transaction".into()))?;
        let next = Position {
            lsn: tx.commit_lsn,
            idx: tx.next_idx,
        };
        if next <= self.resume {
            return Ok(());
        }
        let entry = self.schemas.get_mut(table).expect("pending tables have schemas");
        let Some(current) = entry.current.clone() else {
            return Ok(());
        };
        let (lsn, after_idx, snapshot, time) = (tx.commit_lsn, tx.next_idx - 1, tx.snapshot, tx.time_micros);
        let held = tx.held.take();
        entry.published = Some(current.clone());
        self.schema_pending.swap_remove(at);
        if let Some(prev) = held {
            self.emit(prev, out);
        }
        // Not through `emit`: its place is that of the event before it, which may be the
        // resume position itself, and it is new (the next event is).
        out.push(self.naming.schema(lsn, after_idx, snapshot, time, &current));
        Ok(())
    }

    fn emit(&mut self, draft: Draft, out: &mut Vec<Draft>) {
        if draft.position() <= self.resume {
            self.skipped += 1;
        } else {
            out.push(draft);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pgoutput::tests as fx;
    use bytes::Bytes;
    use uuid::Uuid;

    fn builder(resume: Position) -> EventBuilder {
        let naming = Arc::new(Naming {
            system_identifier: "7000".into(),
            slot: "walguard".into(),
            subject_prefix: "wg".into(),
        });
        let tables = vec![TableSpec {
            schema: "public".into(),
            name: "t".into(),
            type_prefix: "public.t".into(),
            key: vec!["id".into()],
            configured_key: false,
            hashed: Vec::new(),
        }];
        EventBuilder::new(naming, tables, resume)
    }

    fn feed(b: &mut EventBuilder, raw: Vec<u8>, out: &mut Vec<Draft>) {
        b.handle(Message::parse(Bytes::from(raw)).unwrap(), &HashMap::new(), out)
            .unwrap();
    }

    fn data(d: &Draft) -> serde_json::Value {
        serde_json::from_slice(&d.data).unwrap()
    }

    fn transaction(b: &mut EventBuilder, out: &mut Vec<Draft>) {
        feed(b, fx::begin(0x100, 0, 9), out);
        feed(
            b,
            fx::relation(16385, "public", "t", b'f', &[(true, "id", 23), (true, "v", 25)]),
            out,
        );
        feed(
            b,
            fx::relation(16390, "public", "other", b'd', &[(true, "id", 23)]),
            out,
        );
        feed(b, fx::insert(16385, &[Some("1"), Some("a")]), out);
        feed(b, fx::insert(16390, &[Some("1")]), out);
        let mut u = vec![b'U'];
        u.extend_from_slice(&16385u32.to_be_bytes());
        u.push(b'O');
        u.extend(fx::tuple_bytes(&[Some("1"), Some("a")]));
        u.push(b'N');
        u.extend(fx::tuple_bytes(&[Some("1"), Some("\u{1}toast")]));
        feed(b, u, out);
        let mut d = vec![b'D'];
        d.extend_from_slice(&16385u32.to_be_bytes());
        d.push(b'O');
        d.extend(fx::tuple_bytes(&[Some("1"), Some("a")]));
        feed(b, d, out);
    }

    #[test]
    fn lookahead_numbers_and_marks_the_last_event() {
        let mut b = builder(Position::default());
        let mut out = Vec::new();
        transaction(&mut b, &mut out);
        // The delete is held back until the commit says it is the last.
        assert_eq!(out.len(), 2);
        feed(&mut b, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out.iter().map(|d| d.pgtxidx).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            out.iter().map(|d| d.end).collect::<Vec<_>>(),
            [None, None, Some(Lsn(0x130))]
        );
        assert_eq!(out[0].nats_subject.as_str(), "wg.public.t.insert");
        assert_eq!(&*out[0].ce_type, "public.t.created");
        assert_eq!(out[0].ce_subject, "public.t/1");
        assert_eq!(
            data(&out[0]),
            serde_json::json!({"op":"insert","schema":"public","table":"t","key":{"id":1},
                "before":null,"after":{"id":1,"v":"a"},"unchanged":[],"actor":null})
        );
        // Unchanged TOAST under FULL is filled from the old row.
        assert_eq!(
            data(&out[1]),
            serde_json::json!({"op":"update","schema":"public","table":"t","key":{"id":1},
                "before":{"id":1,"v":"a"},"after":{"id":1,"v":"a"},"unchanged":[],"actor":null})
        );
        assert_eq!(data(&out[2])["after"], serde_json::Value::Null);
        assert_eq!(out[0].id, Uuid::new_v5(&Uuid::NAMESPACE_URL, b"7000/walguard/0/100/1"));
    }

    #[test]
    fn resume_skips_what_the_stream_has() {
        let mut b = builder(Position {
            lsn: Lsn(0x100),
            idx: 2,
        });
        let mut out = Vec::new();
        transaction(&mut b, &mut out);
        feed(&mut b, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(out.iter().map(|d| d.pgtxidx).collect::<Vec<_>>(), [3]);
        assert_eq!(b.skipped(), 2);

        let mut b = builder(Position {
            lsn: Lsn(0x101),
            idx: 0,
        });
        let mut out = Vec::new();
        transaction(&mut b, &mut out);
        feed(&mut b, fx::commit(0x100, 0x130, 0), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn unchanged_toast_without_old_row_is_listed() {
        let mut b = builder(Position::default());
        let mut out = Vec::new();
        feed(&mut b, fx::begin(0x200, 0, 9), &mut out);
        feed(
            &mut b,
            fx::relation(16385, "public", "t", b'd', &[(true, "id", 23), (false, "v", 25)]),
            &mut out,
        );
        let mut m = vec![b'M', 1];
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(b"walguard.actor\0");
        m.extend_from_slice(&(br#"{"user":"alice"}"#.len() as i32).to_be_bytes());
        m.extend_from_slice(br#"{"user":"alice"}"#);
        feed(&mut b, m, &mut out);
        let mut u = vec![b'U'];
        u.extend_from_slice(&16385u32.to_be_bytes());
        u.push(b'N');
        u.extend(fx::tuple_bytes(&[Some("1"), Some("\u{1}toast")]));
        feed(&mut b, u, &mut out);
        feed(&mut b, fx::commit(0x200, 0x230, 0), &mut out);
        assert_eq!(
            data(&out[0]),
            serde_json::json!({"op":"update","schema":"public","table":"t","key":{"id":1},
                "before":{"id":1},"after":{"id":1},"unchanged":["v"],"actor":{"user":"alice"}})
        );
    }

    #[test]
    fn bad_value_names_table_and_column() {
        let mut b = builder(Position::default());
        let mut out = Vec::new();
        feed(&mut b, fx::begin(0x200, 0, 9), &mut out);
        feed(
            &mut b,
            fx::relation(16385, "public", "t", b'd', &[(true, "id", 23), (false, "v", 16)]),
            &mut out,
        );
        let err = b
            .handle(
                Message::parse(Bytes::from(fx::insert(16385, &[Some("1"), Some("x")]))).unwrap(),
                &HashMap::new(),
                &mut out,
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("public.t") && msg.contains("column v"), "{msg}");
    }

    fn schema_of(v: &str) -> TableSchema {
        TableSchema::parse(
            format!(
                r#"{{"op":"schema","schema":"public","table":"t","columns":[{{"name":"id","type":"integer","not_null":true}},{{"name":"v","type":"{v}","not_null":false}}],"key":["id"],"primary_key":["id"],"replica_identity":"full","types":[]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// The transaction's drafts as `op@idx` (schema events at the index they stand after).
    fn ops(out: &[Draft]) -> Vec<String> {
        out.iter().map(|d| format!("{}@{}", d.op.as_str(), d.pgtxidx)).collect()
    }

    #[test]
    fn a_schema_event_goes_before_a_tables_first_event_and_after_every_shape_change() {
        let mut b = builder(Position::default());
        let mut out = Vec::new();
        b.set_schema(schema_of("text"));
        transaction(&mut b, &mut out);
        feed(&mut b, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(ops(&out), ["schema@0", "insert@1", "update@2", "delete@3"]);
        let schema = &out[0];
        assert_eq!(schema.nats_subject.as_str(), "wg._walguard.schema");
        assert_eq!(&*schema.ce_type, "walguard.schema");
        assert_eq!(schema.ce_subject, "public.t");
        assert_eq!((schema.pglsn, schema.pgxid, schema.end), (Lsn(0x100), 0, None));
        assert_eq!(TableSchema::parse(&schema.data).unwrap(), schema_of("text"));
        assert_ne!(schema.id, out[1].id);

        // The same shape again (a new session's Relation message): nothing.
        let mut again = Vec::new();
        b.set_schema(schema_of("text"));
        feed(&mut b, fx::begin(0x200, 0, 10), &mut again);
        feed(&mut b, fx::insert(16385, &[Some("2"), Some("b")]), &mut again);
        // A changed shape mid-transaction: the insert before it is released first, the
        // schema event stands after it, then the next row.
        b.set_schema(schema_of("character varying(5)"));
        feed(&mut b, fx::insert(16385, &[Some("3"), Some("c")]), &mut again);
        feed(&mut b, fx::commit(0x200, 0x230, 0), &mut again);
        assert_eq!(ops(&again), ["insert@1", "schema@1", "insert@2"]);
        assert_eq!(again[2].end, Some(Lsn(0x230)));

        // A stream that already holds it: a restart with the shape unchanged adds none.
        let mut restarted = builder(Position::default());
        restarted.set_published_schemas([schema_of("text")]);
        restarted.set_schema(schema_of("text"));
        let mut out = Vec::new();
        transaction(&mut restarted, &mut out);
        feed(&mut restarted, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(ops(&out), ["insert@1", "update@2", "delete@3"]);
    }

    fn mood_schema(labels: &[&str]) -> TableSchema {
        let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
        TableSchema::parse(
            format!(
                r#"{{"op":"schema","schema":"public","table":"t","columns":[{{"name":"id","type":"integer","not_null":true}},{{"name":"v","type":"public.mood","not_null":false}}],"key":["id"],"primary_key":["id"],"replica_identity":"default","types":[{{"name":"public.mood","kind":"enum","labels":[{}]}}]}}"#,
                labels.join(",")
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_row_with_an_enum_label_its_schema_lacks_asks_for_the_schema_again() {
        let mut b = builder(Position::default());
        let mut out = Vec::new();
        let parse = |raw: Vec<u8>| Message::parse(Bytes::from(raw)).unwrap();
        // No enum columns anywhere: rows are not looked at.
        feed(
            &mut b,
            fx::relation(16385, "public", "t", b'd', &[(true, "id", 23), (false, "v", 25)]),
            &mut out,
        );
        b.set_schema(schema_of("text"));
        assert!(b
            .stale_enum_labels(&parse(fx::insert(16385, &[Some("1"), Some("x")])))
            .is_none());

        // The Relation message, then its schema, as the reader gives them.
        feed(
            &mut b,
            fx::relation(16385, "public", "t", b'd', &[(true, "id", 23), (false, "v", 90001)]),
            &mut out,
        );
        b.set_schema(mood_schema(&["sad", "ok"]));
        feed(&mut b, fx::begin(0x100, 0, 9), &mut out);
        let known = parse(fx::insert(16385, &[Some("1"), Some("ok")]));
        assert!(b.stale_enum_labels(&known).is_none());
        b.handle(known, &HashMap::new(), &mut out).unwrap();
        let new = parse(fx::insert(16385, &[Some("2"), Some("happy")]));
        let rel = b.stale_enum_labels(&new).expect("a new label asks for the schema");
        assert_eq!((rel.oid, rel.name.as_str()), (16385, "t"));
        // The catalog now lists it: a schema event goes before the row.
        b.set_schema(mood_schema(&["sad", "ok", "happy"]));
        b.handle(new, &HashMap::new(), &mut out).unwrap();
        feed(&mut b, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(ops(&out), ["schema@0", "insert@1", "schema@1", "insert@2"]);
        assert_eq!(
            TableSchema::parse(&out[2].data).unwrap(),
            mood_schema(&["sad", "ok", "happy"])
        );
        assert!(b
            .stale_enum_labels(&parse(fx::insert(16385, &[Some("3"), Some("happy")])))
            .is_none());

        // A label the catalog does not list either (renamed since): asked once, not per row,
        // and no schema event.
        let renamed = parse(fx::insert(16385, &[Some("4"), Some("gone")]));
        assert!(b.stale_enum_labels(&renamed).is_some());
        b.set_schema(mood_schema(&["sad", "ok", "happy"]));
        assert!(b.stale_enum_labels(&renamed).is_none());
        // A NULL carries no label.
        assert!(b
            .stale_enum_labels(&parse(fx::insert(16385, &[Some("5"), None])))
            .is_none());
    }

    #[test]
    fn a_replay_derives_the_same_schema_event_and_never_one_before_what_is_stored() {
        let mut first = builder(Position::default());
        first.set_schema(schema_of("text"));
        let mut all = Vec::new();
        transaction(&mut first, &mut all);
        feed(&mut first, fx::commit(0x100, 0x130, 0), &mut all);
        // Resumed after the insert (the stream holds schema and insert): the schema event is
        // in the published set as of the head; nothing before the update is made again.
        let mut resumed = builder(Position {
            lsn: Lsn(0x100),
            idx: 1,
        });
        resumed.set_published_schemas([schema_of("text")]);
        resumed.set_schema(schema_of("text"));
        let mut out = Vec::new();
        transaction(&mut resumed, &mut out);
        feed(&mut resumed, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(ops(&out), ["update@2", "delete@3"]);
        // Resumed after the schema event alone (the head is the schema event at (0x100, 0)):
        // the same drafts as the first run, minus it.
        let mut resumed = builder(Position {
            lsn: Lsn(0x100),
            idx: 0,
        });
        resumed.set_published_schemas([schema_of("text")]);
        resumed.set_schema(schema_of("text"));
        let mut out = Vec::new();
        transaction(&mut resumed, &mut out);
        feed(&mut resumed, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(out, all[1..]);
        // A stream whose head is before the schema event (it was not stored): derived again,
        // byte for byte.
        let mut resumed = builder(Position::default());
        resumed.set_schema(schema_of("text"));
        let mut out = Vec::new();
        transaction(&mut resumed, &mut out);
        feed(&mut resumed, fx::commit(0x100, 0x130, 0), &mut out);
        assert_eq!(out, all);
    }
}
