//! From decoded pgoutput messages to event drafts: one draft per row change of a guarded
//! table, numbered within its transaction, with one event of lookahead so that the last
//! event of a transaction can carry `pgtxcnt` and `pgendlsn` without buffering the
//! transaction (G5).
//!
//! Drafts at or before the resume position (read from the stream's tail, G7) are counted but
//! not emitted: a transaction replayed after a restart yields the same ids and numbers, and
//! only what the stream lacks goes on.
//!
//! The types it makes are in `draft`; ids, subjects and types come from `naming`.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Subject;

use super::draft::{BuildError, Draft, EntityKey, Op, Position, Touched};
use super::json::write_str;
use super::naming::Naming;
use super::value::ValueKind;
use crate::decode::frame::PG_EPOCH_UNIX_MICROS;
use crate::decode::pgoutput::{Begin, Datum, Message, OldKind, Relation, ReplicaIdentity, Tuple};
use crate::lsn::Lsn;

/// A guarded table as configured and checked against the catalog.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    pub type_prefix: String,
    /// The entity key: the configured `key`, else the primary key.
    pub key: Vec<String>,
    /// Whether `key` was configured; a primary key can be renamed while streaming, and then
    /// the replica identity columns of the new Relation message are the key.
    pub configured_key: bool,
    /// Columns replaced by a keyed hash.
    pub hashed: Vec<String>,
}

struct Column {
    name: String,
    kind: ValueKind,
    /// Replaced by the keyed hash of its text.
    hashed: bool,
    /// Part of the replica identity as the Relation message flags it.
    identity: bool,
}

struct Shape {
    qualified: Arc<str>,
    hasher: Option<Arc<super::ColumnHasher>>,
    spec: Option<Arc<TableSpec>>,
    identity: ReplicaIdentity,
    columns: Vec<Column>,
    key: Vec<usize>,
    /// The NATS subject and CloudEvents type of each row op, made once per relation.
    names: Vec<(Op, Subject, Arc<str>)>,
    data_head: Vec<u8>,
}

impl Shape {
    fn names(&self, op: Op) -> (Subject, Arc<str>) {
        self.names
            .iter()
            .find(|(o, _, _)| *o == op)
            .map(|(_, s, t)| (s.clone(), t.clone()))
            .expect("names are made for every row op of a guarded table")
    }
}

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

pub struct EventBuilder {
    naming: Arc<Naming>,
    hasher: Option<Arc<super::ColumnHasher>>,
    tables: HashMap<(String, String), Arc<TableSpec>>,
    relations: HashMap<u32, Shape>,
    tx: Option<Tx>,
    resume: Position,
    skipped: u64,
    /// The size of the last row's `data`, so the next one is allocated once.
    data_hint: usize,
}

impl EventBuilder {
    pub fn new(naming: Arc<Naming>, tables: Vec<TableSpec>, resume: Position) -> Self {
        EventBuilder {
            naming,
            hasher: None,
            tables: tables
                .into_iter()
                .map(|t| ((t.schema.clone(), t.name.clone()), Arc::new(t)))
                .collect(),
            relations: HashMap::new(),
            tx: None,
            resume,
            skipped: 0,
            data_hint: 256,
        }
    }

    /// Hashes `hash_columns` with this salt.
    pub fn with_hasher(mut self, hasher: Option<Arc<super::ColumnHasher>>) -> Self {
        self.hasher = hasher;
        self
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
                    .filter_map(|oid| self.guarded(*oid).ok().flatten())
                    .map(|shape| shape.qualified.clone())
                    .collect();
                return (!tables.is_empty()).then_some(Touched::Tables(tables));
            }
            _ => return None,
        };
        let shape = self.guarded(oid).ok().flatten()?;
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
        let shape = self.guarded(oid).ok().flatten()?;
        key_values(shape, |i| values.get(i).map(|v| v.as_deref().map(str::as_bytes)))
    }

    /// The entity key `tuple` holds: a new row's (`old` is `None`) or an old row's. An old key
    /// tuple (`K`) holds only the replica identity's columns, so it gives the key only when
    /// the key is among them.
    fn key_of(&self, oid: u32, old: Option<OldKind>, tuple: &Tuple) -> Option<EntityKey> {
        let shape = self.guarded(oid).ok().flatten()?;
        if old == Some(OldKind::Key) && !shape.key.iter().all(|&i| shape.columns[i].identity) {
            return None;
        }
        key_values(shape, |i| match tuple.get(i)? {
            Datum::Text(b) => Some(Some(b.as_ref())),
            Datum::Null => Some(None),
            Datum::Binary(_) | Datum::UnchangedToast => None,
        })
    }

    /// Handles one message; drafts ready to publish are appended to `out` in order.
    pub fn handle(
        &mut self,
        msg: Message,
        types: &HashMap<u32, ValueKind>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        match msg {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            }) => {
                if self.tx.is_some() {
                    return Err(BuildError::Protocol("Begin inside a transaction".into()));
                }
                self.tx = Some(Tx {
                    snapshot: false,
                    commit_lsn: final_lsn,
                    xid,
                    time_micros: commit_time + PG_EPOCH_UNIX_MICROS,
                    next_idx: 1,
                    actor: None,
                    held: None,
                });
            }
            Message::Commit(commit) => {
                let mut tx = self
                    .tx
                    .take()
                    .ok_or_else(|| BuildError::Protocol("Commit outside a transaction".into()))?;
                if tx.commit_lsn != commit.commit_lsn {
                    return Err(BuildError::Protocol(format!(
                        "Commit at {} does not match Begin at {}",
                        commit.commit_lsn, tx.commit_lsn
                    )));
                }
                if let Some(mut last) = tx.held.take() {
                    last.end = Some(commit.end_lsn);
                    self.emit(last, out);
                }
            }
            Message::Relation(rel) => {
                let shape = self.shape(rel, types)?;
                self.relations.insert(shape.0, shape.1);
            }
            Message::Type { .. } | Message::Origin { .. } => {}
            Message::Insert { relation, new } => self.row(relation, Op::Insert, None, Some(new), out)?,
            Message::Update { relation, old, new } => self.row(relation, Op::Update, old, Some(new), out)?,
            Message::Delete { relation, kind, old } => self.row(relation, Op::Delete, Some((kind, old)), None, out)?,
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                for oid in relations {
                    let Some(shape) = self.guarded(oid)? else { continue };
                    let mut data = b"{\"op\":\"truncate\"".to_vec();
                    data.extend_from_slice(&shape.data_head);
                    data.extend_from_slice(b"\"key\":null,\"before\":null,\"after\":null,\"unchanged\":[],\"actor\":");
                    let ce_subject = shape.qualified.to_string();
                    self.write_actor(&mut data);
                    data.extend_from_slice(
                        format!(",\"cascade\":{cascade},\"restart_identity\":{restart_identity}}}").as_bytes(),
                    );
                    self.push(oid, Op::Truncate, ce_subject, data, out)?;
                }
            }
            Message::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                if transactional && prefix == "walguard.actor" {
                    if let Some(tx) = self.tx.as_mut() {
                        let mut actor = Vec::with_capacity(content.len());
                        match serde_json::from_slice::<&serde_json::value::RawValue>(&content) {
                            Ok(raw) if raw.get().starts_with('{') => actor.extend_from_slice(raw.get().as_bytes()),
                            _ => {
                                // Not a JSON object: kept losslessly as a string rather than
                                // dropped, so the audit trail still shows what was claimed.
                                tracing::warn!(
                                    xid = tx.xid,
                                    "walguard.actor message is not a JSON object; recorded as a string"
                                );
                                write_str(&String::from_utf8_lossy(&content), &mut actor);
                            }
                        }
                        tx.actor = Some(actor);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds the shape of a guarded table read from the catalog, for snapshot rows (a later
    /// Relation message for the same table replaces it with an equal one).
    pub fn add_relation(&mut self, rel: Relation, types: &HashMap<u32, ValueKind>) -> Result<(), BuildError> {
        let (oid, shape) = self.shape(rel, types)?;
        self.relations.insert(oid, shape);
        Ok(())
    }

    /// Opens a snapshot group read at `lsn`, numbering from `first_idx` (1, or past the events
    /// of an interrupted group being closed).
    pub fn begin_snapshot_group(&mut self, lsn: Lsn, first_idx: u32, now_unix_micros: i64) -> Result<(), BuildError> {
        if self.tx.is_some() {
            return Err(BuildError::Protocol("snapshot group inside a transaction".into()));
        }
        self.tx = Some(Tx {
            snapshot: true,
            commit_lsn: lsn,
            xid: 0,
            time_micros: now_unix_micros,
            next_idx: first_idx,
            actor: None,
            held: None,
        });
        Ok(())
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
        let tx = self
            .tx
            .as_mut()
            .filter(|t| t.snapshot)
            .ok_or_else(|| BuildError::Protocol("no snapshot group is open".into()))?;
        let idx = tx.next_idx;
        tx.next_idx += 1;
        let lsn = tx.commit_lsn;
        let progress = self.naming.snapshot_progress(lsn, idx, tx.time_micros, data);
        let mut tx = self.tx.take().expect("checked above");
        if let Some(prev) = tx.held.replace(progress) {
            self.emit(prev, out);
        }
        let mut last = tx.held.take().expect("just placed");
        last.end = Some(lsn);
        self.emit(last, out);
        Ok(())
    }

    fn shape(&self, rel: Relation, types: &HashMap<u32, ValueKind>) -> Result<(u32, Shape), BuildError> {
        let schema = if rel.namespace.is_empty() {
            "pg_catalog".to_owned()
        } else {
            rel.namespace
        };
        let qualified: Arc<str> = format!("{schema}.{}", rel.name).into();
        let spec = self.tables.get(&(schema.clone(), rel.name.clone())).cloned();
        let columns: Vec<Column> = rel
            .columns
            .into_iter()
            .map(|c| Column {
                hashed: spec.as_ref().is_some_and(|s| s.hashed.contains(&c.name)),
                kind: ValueKind::builtin(c.type_oid)
                    .or_else(|| types.get(&c.type_oid).cloned())
                    .unwrap_or(ValueKind::Text),
                name: c.name,
                identity: c.key,
            })
            .collect();
        let mut key = Vec::new();
        if let Some(spec) = &spec {
            let by_name: Option<Vec<usize>> = spec
                .key
                .iter()
                .map(|k| columns.iter().position(|c| &c.name == k))
                .collect();
            key = match by_name {
                Some(k) => k,
                // The primary key was renamed (ALTER TABLE ... RENAME COLUMN): under DEFAULT
                // identity the Relation flags the new names.
                None if !spec.configured_key && rel.replica_identity == ReplicaIdentity::Default => columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.identity)
                    .map(|(i, _)| i)
                    .collect(),
                None => Vec::new(),
            };
            if key.is_empty() {
                let missing = spec
                    .key
                    .iter()
                    .find(|k| !columns.iter().any(|c| &c.name == *k))
                    .cloned()
                    .unwrap_or_default();
                return Err(BuildError::KeyColumnMissing {
                    table: qualified.clone(),
                    column: missing,
                });
            }
        }
        let mut head = Vec::new();
        head.extend_from_slice(b",\"schema\":");
        write_str(&schema, &mut head);
        head.extend_from_slice(b",\"table\":");
        write_str(&rel.name, &mut head);
        let hashed: Vec<&Column> = columns.iter().filter(|c| c.hashed).collect();
        if !hashed.is_empty() {
            head.extend_from_slice(b",\"hashed\":[");
            for (n, c) in hashed.iter().enumerate() {
                if n > 0 {
                    head.push(b',');
                }
                write_str(&c.name, &mut head);
            }
            head.push(b']');
        }
        head.push(b',');
        let names = match &spec {
            Some(spec) => self.naming.row_names(&schema, &rel.name, &spec.type_prefix),
            None => Vec::new(),
        };
        Ok((
            rel.oid,
            Shape {
                hasher: self.hasher.clone(),
                names,
                qualified,
                spec,
                identity: rel.replica_identity,
                columns,
                key,
                data_head: head,
            },
        ))
    }

    fn guarded(&self, oid: u32) -> Result<Option<&Shape>, BuildError> {
        let shape = self
            .relations
            .get(&oid)
            .ok_or_else(|| BuildError::Protocol(format!("change for relation {oid} before its Relation message")))?;
        Ok(shape.spec.is_some().then_some(shape))
    }

    fn write_actor(&self, out: &mut Vec<u8>) {
        match self.tx.as_ref().and_then(|t| t.actor.as_deref()) {
            Some(actor) => out.extend_from_slice(actor),
            None => out.extend_from_slice(b"null"),
        }
    }

    fn row(
        &mut self,
        oid: u32,
        op: Op,
        old: Option<(OldKind, Tuple)>,
        new: Option<Tuple>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        let Some(shape) = self.guarded(oid)? else { return Ok(()) };
        let width = shape.columns.len();
        for t in old.iter().map(|(_, t)| t).chain(new.iter()) {
            if t.len() != width {
                return Err(BuildError::Protocol(format!(
                    "table {}: tuple has {} columns, Relation has {width}",
                    shape.qualified,
                    t.len()
                )));
            }
        }
        let text = |t: &Tuple, i: usize| match &t[i] {
            Datum::Text(b) => Some(b.clone()),
            _ => None,
        };
        let mut data = Vec::with_capacity(self.data_hint);
        data.extend_from_slice(b"{\"op\":\"");
        data.extend_from_slice(op.as_str().as_bytes());
        data.push(b'"');
        data.extend_from_slice(&shape.data_head);
        data.extend_from_slice(b"\"key\":{");
        // The entity key, from the new row, else the old one: into `data` and into the
        // CloudEvents subject `{schema}.{table}/{key}`.
        let mut ce_subject = String::with_capacity(shape.qualified.len() + 24);
        ce_subject.push_str(&shape.qualified);
        ce_subject.push('/');
        for (n, &i) in shape.key.iter().enumerate() {
            let value = new
                .as_ref()
                .and_then(|t| text(t, i))
                .or_else(|| old.as_ref().and_then(|(_, t)| text(t, i)));
            let Some(value) = value else {
                if new.as_ref().is_some_and(|t| t[i] == Datum::Null) {
                    // A NULL key value in a new row: legal for a configured key.
                    data.extend_from_slice(if n == 0 { b"" } else { b"," });
                    write_str(&shape.columns[i].name, &mut data);
                    data.extend_from_slice(b":null");
                    if n > 0 {
                        ce_subject.push(',');
                    }
                    continue;
                }
                return Err(BuildError::KeyUnavailable {
                    table: shape.qualified.clone(),
                    op: op.as_str(),
                    column: shape.columns[i].name.clone(),
                    identity: shape.identity,
                });
            };
            if n > 0 {
                data.push(b',');
                ce_subject.push(',');
            }
            write_str(&shape.columns[i].name, &mut data);
            data.push(b':');
            write_value(shape, i, &value, &mut data)?;
            ce_subject.push_str(&String::from_utf8_lossy(&value));
        }
        data.extend_from_slice(b"},\"before\":");
        match (&old, &new) {
            (Some((OldKind::Full, t)), _) => write_row(shape, t, |_| true, None, &mut data, &mut Vec::new())?,
            (Some((OldKind::Key, t)), _) => write_row(shape, t, |c| c.identity, None, &mut data, &mut Vec::new())?,
            // UPDATE under DEFAULT/INDEX with the key unchanged: the old key is the new key.
            (None, Some(t)) if op == Op::Update => {
                write_row(shape, t, |c| c.identity, None, &mut data, &mut Vec::new())?
            }
            _ => data.extend_from_slice(b"null"),
        }
        data.extend_from_slice(b",\"after\":");
        let mut unchanged = Vec::new();
        match &new {
            Some(t) => {
                let fill = old.as_ref().map(|(_, o)| o);
                write_row(shape, t, |_| true, fill, &mut data, &mut unchanged)?;
            }
            None => data.extend_from_slice(b"null"),
        }
        data.extend_from_slice(b",\"unchanged\":[");
        for (n, &i) in unchanged.iter().enumerate() {
            if n > 0 {
                data.push(b',');
            }
            write_str(&shape.columns[i].name, &mut data);
        }
        data.extend_from_slice(b"],\"actor\":");
        self.write_actor(&mut data);
        data.push(b'}');
        self.data_hint = (data.len() + 64).clamp(256, 64 * 1024);
        self.push(oid, op, ce_subject, data, out)
    }

    fn push(
        &mut self,
        oid: u32,
        op: Op,
        ce_subject: String,
        data: Vec<u8>,
        out: &mut Vec<Draft>,
    ) -> Result<(), BuildError> {
        let shape = &self.relations[&oid];
        let (nats_subject, ce_type) = shape.names(op);
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| BuildError::Protocol("row change outside a transaction".into()))?;
        let idx = tx.next_idx;
        tx.next_idx += 1;
        let draft = Draft {
            op,
            nats_subject,
            id: if tx.snapshot {
                self.naming.snapshot_id(tx.commit_lsn, idx)
            } else {
                self.naming.change_id(tx.commit_lsn, idx)
            },
            ce_type,
            ce_subject,
            time_micros: tx.time_micros,
            pglsn: tx.commit_lsn,
            pgxid: tx.xid,
            pgtxidx: idx,
            end: None,
            data,
            table: shape.qualified.clone(),
        };
        if let Some(prev) = tx.held.replace(draft) {
            self.emit(prev, out);
        }
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

/// The entity key of `shape` from `value(column)`: `Some(None)` for NULL, `None` when the
/// value is not there (then there is no key).
fn key_values<'a>(shape: &Shape, value: impl Fn(usize) -> Option<Option<&'a [u8]>>) -> Option<EntityKey> {
    let values: Option<Vec<Option<&[u8]>>> = shape.key.iter().map(|&i| value(i)).collect();
    values.map(EntityKey::new)
}

fn write_value(shape: &Shape, i: usize, value: &[u8], out: &mut Vec<u8>) -> Result<(), BuildError> {
    if shape.columns[i].hashed {
        let hasher = shape.hasher.as_ref().ok_or_else(|| {
            BuildError::Protocol(format!(
                "table {}: column {} is to be hashed but no hashing.salt_file is loaded",
                shape.qualified, shape.columns[i].name
            ))
        })?;
        write_str(&hasher.hash(value), out);
        return Ok(());
    }
    shape.columns[i]
        .kind
        .write_json(value, out)
        .map_err(|source| BuildError::Value {
            table: shape.qualified.clone(),
            column: shape.columns[i].name.clone(),
            source,
        })
}

/// Writes the columns of `tuple` selected by `include` as a JSON object. An unchanged TOAST
/// value is taken from `fill` (the old row) when it has it, else left out and its index added
/// to `unchanged`.
fn write_row(
    shape: &Shape,
    tuple: &Tuple,
    include: impl Fn(&Column) -> bool,
    fill: Option<&Tuple>,
    out: &mut Vec<u8>,
    unchanged: &mut Vec<usize>,
) -> Result<(), BuildError> {
    out.push(b'{');
    let mut first = true;
    for (i, column) in shape.columns.iter().enumerate() {
        if !include(column) {
            continue;
        }
        let datum = match &tuple[i] {
            Datum::UnchangedToast => match fill.map(|t| &t[i]) {
                Some(d @ Datum::Text(_)) => d,
                _ => {
                    unchanged.push(i);
                    continue;
                }
            },
            d => d,
        };
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(&column.name, out);
        out.push(b':');
        match datum {
            Datum::Null => out.extend_from_slice(b"null"),
            Datum::Text(b) => write_value(shape, i, b, out)?,
            Datum::Binary(_) => {
                return Err(BuildError::Binary {
                    table: shape.qualified.clone(),
                    column: column.name.clone(),
                })
            }
            Datum::UnchangedToast => unreachable!("resolved above"),
        }
    }
    out.push(b'}');
    Ok(())
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
}
