//! A message read back from the stream, typed: the CloudEvents attributes walguard writes
//! (SPEC section 2) and its `data` by kind: a row (insert, update, delete, snapshot), a
//! truncate, or one of walguard's own markers (watermark, resync, snapshot progress). Every
//! reader of stored messages goes through here: the tail at start-up, the snapshot's
//! progress, `verify`, the audit tools, reconcile and the demo.
//!
//! Nothing is filled in: every attribute and data field a reader relies on is required, a
//! null is accepted only where walguard writes one, and an unknown `data.op` is an error.
//! The error names the attribute or field (serde's message, with its place in the payload);
//! callers add the stream sequence. `Attributes::parse` reads the attributes and the kind
//! alone, for readers that only follow the chain (position, `pgendlsn`, source);
//! `StoredEvent::parse` reads the data too.
//!
//! The marker data walguard writes and reads back (`Resync`, `SnapshotProgress`) is written
//! here as well, so each format lives in one place.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::draft::Op;
use super::Position;
use crate::lsn::Lsn;

/// Why a stored message is not a walguard event.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoredError(#[from] serde_json::Error);

/// The CloudEvents attributes of a stored event, and its kind (`data.op`).
#[derive(Debug, Clone)]
pub struct Attributes {
    pub specversion: String,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: String,
    pub time: String,
    /// As written (20 digits); `sequence_number` reads it. `verify` reports a sequence that
    /// is not the one the message is stored at, so the text is kept for its message.
    pub sequence: String,
    pub prevhash: String,
    pub pglsn: Lsn,
    pub pgxid: u64,
    pub pgtxidx: u32,
    /// On the last event of a transaction or group only.
    pub pgtxcnt: Option<u32>,
    /// On the last event of a transaction or group only.
    pub pgendlsn: Option<Lsn>,
    /// `data.op`: what kind of event this is.
    pub op: Op,
}

impl Attributes {
    /// The attributes and the kind; the rest of `data` is not read.
    pub fn parse(payload: &[u8]) -> Result<Attributes, StoredError> {
        let wire: Wire<Kind> = serde_json::from_slice(payload)?;
        let op = wire.data.op;
        Ok(wire.into_parts(op).0)
    }

    /// A watermark or a resync record: walguard's own markers, which cover a position
    /// rather than carry a row change.
    pub fn is_watermark(&self) -> bool {
        self.borrowed().is_watermark()
    }

    /// Where this event stands in the total order `(pglsn, pgtxidx)`. A watermark at `W`
    /// covers what committed strictly before `W`, so it sorts before any event at `W`.
    pub fn position(&self) -> Position {
        self.borrowed().position()
    }

    pub fn sequence_number(&self) -> Option<u64> {
        sequence_number(&self.sequence)
    }

    /// The attributes the checks read, borrowed (`event::borrowed`).
    pub fn borrowed(&self) -> super::borrowed::AttributesRef<'_> {
        use std::borrow::Cow::Borrowed;
        super::borrowed::AttributesRef {
            specversion: Borrowed(&self.specversion),
            subject: Borrowed(&self.subject),
            sequence: Borrowed(&self.sequence),
            prevhash: Borrowed(&self.prevhash),
            pglsn: self.pglsn,
            pgxid: self.pgxid,
            pgtxidx: self.pgtxidx,
            pgtxcnt: self.pgtxcnt,
            pgendlsn: self.pgendlsn,
            op: self.op,
        }
    }
}

/// A stored event: its attributes and its typed data.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub attributes: Attributes,
    pub data: Data,
}

impl StoredEvent {
    pub fn parse(payload: &[u8]) -> Result<StoredEvent, StoredError> {
        let wire: Wire<Data> = serde_json::from_slice(payload)?;
        let op = wire.data.op();
        let (attributes, data) = wire.into_parts(op);
        Ok(StoredEvent { attributes, data })
    }
}

/// The sequence a payload says it is stored at, read on its own: a line of an export is
/// placed by it before its event is checked, so that a damaged event still gets its place
/// and `verify` can say there what is wrong with it. `None` when the payload does not say.
pub fn claimed_sequence(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Claim {
        sequence: String,
    }
    let claim: Claim = serde_json::from_slice(payload).ok()?;
    sequence_number(&claim.sequence)
}

/// `claimed_sequence`, read where walguard writes it: the first `"sequence":"` of a payload
/// is its attribute (walguard writes the attributes before `data`, and those bytes cannot
/// occur inside a JSON string). Where that does not give 20 digits, the payload is read.
/// A payload whose first such member is not the attribute is not one walguard wrote, and its
/// check says so: the verifier compares the attribute with the place it is stored at.
pub fn claimed_sequence_fast(payload: &[u8]) -> Option<u64> {
    first_member(payload, SEQUENCE_MEMBER)
        .and_then(sequence_number)
        .or_else(|| claimed_sequence(payload))
}

/// The `sequence` and `prevhash` a payload claims, as written, read where walguard writes
/// them: the first `"sequence":"` and `"prevhash":"` members are the attributes (see
/// `claimed_sequence_fast`). `None` when either is not there as walguard writes it.
pub fn claimed_chain(payload: &[u8]) -> Option<(&str, &str)> {
    Some((
        first_member(payload, SEQUENCE_MEMBER)?,
        first_member(payload, b"\"prevhash\":\"")?,
    ))
}

const SEQUENCE_MEMBER: &[u8] = b"\"sequence\":\"";

/// The text of the first string member written `"name":"` (`member` holds those bytes),
/// when it holds no escape.
fn first_member<'p>(payload: &'p [u8], member: &[u8]) -> Option<&'p str> {
    let at = payload.windows(member.len()).position(|w| w == member)? + member.len();
    let len = payload[at..].iter().position(|&b| b == b'"' || b == b'\\')?;
    (payload[at + len] == b'"').then(|| std::str::from_utf8(&payload[at..at + len]).ok())?
}

/// `sequence` is the stream sequence zero-padded to 20 digits (SPEC section 2).
pub(crate) fn sequence_number(text: &str) -> Option<u64> {
    (text.len() == 20).then(|| text.parse().ok()).flatten()
}

/// A stored event as it is written: the attributes and a `data` read as `D`.
#[derive(Deserialize)]
struct Wire<D> {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    ty: String,
    subject: String,
    time: String,
    sequence: String,
    prevhash: String,
    #[serde(deserialize_with = "de_lsn")]
    pglsn: Lsn,
    #[serde(deserialize_with = "de_xid")]
    pgxid: u64,
    pgtxidx: u32,
    pgtxcnt: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_lsn")]
    pgendlsn: Option<Lsn>,
    data: D,
}

impl<D> Wire<D> {
    fn into_parts(self, op: Op) -> (Attributes, D) {
        let attributes = Attributes {
            specversion: self.specversion,
            id: self.id,
            source: self.source,
            ty: self.ty,
            subject: self.subject,
            time: self.time,
            sequence: self.sequence,
            prevhash: self.prevhash,
            pglsn: self.pglsn,
            pgxid: self.pgxid,
            pgtxidx: self.pgtxidx,
            pgtxcnt: self.pgtxcnt,
            pgendlsn: self.pgendlsn,
            op,
        };
        (attributes, self.data)
    }
}

/// `data.op` alone.
#[derive(Deserialize)]
struct Kind {
    #[serde(deserialize_with = "de_op")]
    op: Op,
}

/// Every kind of event walguard writes; `data.op` is its `Op::as_str`.
const OPS: [Op; 10] = [
    Op::Insert,
    Op::Update,
    Op::Delete,
    Op::Truncate,
    Op::Watermark,
    Op::Resync,
    Op::Snapshot,
    Op::SnapshotProgress,
    Op::Schema,
    Op::Checkpoint,
];

/// The op whose `data.op` is `name`.
pub fn op_named(name: &str) -> Option<Op> {
    OPS.into_iter().find(|op| op.as_str() == name)
}

fn de_op<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
    let name = String::deserialize(d)?;
    op_named(&name)
        .ok_or_else(|| serde::de::Error::custom(format!("data.op {name:?} is not a kind of event walguard writes")))
}

/// An event's `data`, by kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Tagged")]
pub enum Data {
    /// A row change or a snapshot row: the op is insert, update, delete or snapshot.
    Row(Op, Row),
    Truncate(Truncate),
    Watermark,
    Resync(Resync),
    SnapshotProgress(SnapshotProgress),
    /// A guarded table's shape (SPEC section 7).
    Schema(crate::event::schema::TableSchema),
    /// A signed tree head (SPEC section 8); its note is parsed, not verified.
    Checkpoint(crate::tlog::CheckpointData),
}

impl Data {
    /// A `data` on its own (as a draft carries it).
    pub fn parse(data: &[u8]) -> Result<Data, StoredError> {
        Ok(serde_json::from_slice(data)?)
    }

    pub fn op(&self) -> Op {
        match self {
            Data::Row(op, _) => *op,
            Data::Truncate(_) => Op::Truncate,
            Data::Watermark => Op::Watermark,
            Data::Resync(_) => Op::Resync,
            Data::SnapshotProgress(_) => Op::SnapshotProgress,
            Data::Schema(_) => Op::Schema,
            Data::Checkpoint(_) => Op::Checkpoint,
        }
    }

    /// `schema.table` of a row or truncate; `None` for walguard's markers.
    pub fn table(&self) -> Option<String> {
        match self {
            Data::Row(_, row) => Some(row.qualified()),
            Data::Truncate(t) => Some(t.qualified()),
            Data::Watermark | Data::Resync(_) | Data::SnapshotProgress(_) | Data::Schema(_) | Data::Checkpoint(_) => {
                None
            }
        }
    }
}

/// `data` as written, tagged by `op`; `Data` checks what the tag alone cannot say.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Tagged {
    Insert(Row),
    Update(Row),
    Delete(Row),
    Snapshot(Row),
    Truncate(Truncate),
    Watermark,
    Resync(Resync),
    SnapshotProgress(SnapshotProgress),
    Schema(crate::event::schema::TableSchema),
    Checkpoint(CheckpointFields),
}

/// A checkpoint's `data` as written: `{"op":"checkpoint","size":N,"root":"...","note":"..."}`.
#[derive(Deserialize)]
struct CheckpointFields {
    size: u64,
    root: String,
    note: String,
}

impl TryFrom<Tagged> for Data {
    type Error = String;

    fn try_from(tagged: Tagged) -> Result<Data, String> {
        let (op, row) = match tagged {
            Tagged::Insert(row) => (Op::Insert, row),
            Tagged::Update(row) => (Op::Update, row),
            Tagged::Delete(row) => (Op::Delete, row),
            Tagged::Snapshot(row) => (Op::Snapshot, row),
            Tagged::Truncate(t) => return Ok(Data::Truncate(t)),
            Tagged::Watermark => return Ok(Data::Watermark),
            Tagged::Resync(r) => return Ok(Data::Resync(r)),
            Tagged::SnapshotProgress(p) => return Ok(Data::SnapshotProgress(p)),
            Tagged::Schema(s) => return Ok(Data::Schema(s)),
            Tagged::Checkpoint(c) => {
                return crate::tlog::CheckpointData::from_fields(c.size, &c.root, c.note)
                    .map(Data::Checkpoint)
                    .map_err(|e| e.to_string())
            }
        };
        // Every row but a deleted one is in `after`; state is rebuilt from it.
        if op != Op::Delete && row.after.is_none() {
            return Err(format!("a {} without data.after", op.as_str()));
        }
        Ok(Data::Row(op, row))
    }
}

/// The `data` of a row event (SPEC section 2 "data").
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub schema: String,
    pub table: String,
    pub key: KeyColumns,
    /// The old row (FULL) or its key columns (DEFAULT/INDEX); null for inserts and
    /// snapshot rows.
    #[serde(deserialize_with = "nullable")]
    pub before: Option<Map<String, Value>>,
    /// The new row; null for deletes.
    #[serde(deserialize_with = "nullable")]
    pub after: Option<Map<String, Value>>,
    /// Columns left out of `after` because PostgreSQL did not send them (unchanged TOAST).
    pub unchanged: Vec<String>,
    /// The `walguard.actor` object of the transaction, or null.
    pub actor: Value,
}

impl Row {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The row's identity; `subject_key` is the CloudEvents subject's text after `/`.
    pub fn key(&self, subject_key: &str) -> StoredKey {
        StoredKey::new(self.key.0.iter().map(|(_, v)| v.to_string()).collect(), subject_key)
    }

    /// For an update that changed the entity key: the key the row had before (from
    /// `before`, which holds the old key columns under every replica identity).
    pub fn moved_from(&self) -> Option<StoredKey> {
        let before = self.before.as_ref()?;
        let values: Option<Vec<&Value>> = self.key.0.iter().map(|(name, _)| before.get(name)).collect();
        let values = values?;
        if values.iter().zip(&self.key.0).all(|(old, (_, new))| *old == new) {
            return None;
        }
        let text: Vec<String> = values.iter().map(|v| key_text(v)).collect();
        Some(StoredKey::new(
            values.iter().map(|v| v.to_string()).collect(),
            text.join(","),
        ))
    }
}

/// The `data` of a truncate: one per truncated guarded table.
#[derive(Debug, Clone, Deserialize)]
pub struct Truncate {
    pub schema: String,
    pub table: String,
    pub cascade: bool,
    pub restart_identity: bool,
    pub actor: Value,
}

impl Truncate {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The `data` of a `walguard.resync` record: what the stream lacks after a restart from a
/// new slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Resync {
    /// The last position the stream proves.
    #[serde(deserialize_with = "de_lsn")]
    pub lost_after: Lsn,
    /// The new slot's consistent point.
    #[serde(deserialize_with = "de_lsn")]
    pub resumed_at: Lsn,
    /// Messages after the last signed one, which could not be re-derived: `[first, last]`.
    #[serde(deserialize_with = "nullable")]
    pub unverified_sequences: Option<[u64; 2]>,
}

impl Resync {
    pub fn data(&self) -> Vec<u8> {
        let unverified = match self.unverified_sequences {
            Some([first, last]) => format!("[{first},{last}]"),
            None => "null".to_owned(),
        };
        format!(
            r#"{{"op":"resync","lost_after":"{}","resumed_at":"{}","unverified_sequences":{unverified}}}"#,
            self.lost_after, self.resumed_at
        )
        .into_bytes()
    }
}

/// The `data` of a `snapshot_progress` event: how far the baseline got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// Tables (`schema.table`) whose baseline is complete.
    pub completed: Vec<String>,
    /// The table in progress and the key of its last published row (text values).
    #[serde(deserialize_with = "nullable")]
    pub table: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub after_key: Option<Vec<String>>,
}

impl SnapshotProgress {
    pub fn data(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(self).expect("plain data");
        v["op"] = "snapshot_progress".into();
        serde_json::to_vec(&v).expect("plain data")
    }
}

/// `data.key` as written: column names and values in key order (a `serde_json::Map` would
/// sort them by name).
#[derive(Debug, Clone)]
pub struct KeyColumns(Vec<(String, Value)>);

impl KeyColumns {
    /// The key's column names, in key order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The value of key column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for KeyColumns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Columns;
        impl<'de> serde::de::Visitor<'de> for Columns {
            type Value = KeyColumns;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of key columns")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeyColumns, A::Error> {
                let mut columns = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    columns.push(entry);
                }
                Ok(KeyColumns(columns))
            }
        }
        d.deserialize_map(Columns)
    }
}

/// A row's identity in a stored event: the values of its `data.key`, each as its JSON text,
/// in key order. The CloudEvents `subject` joins the key's values with `,`, which is the
/// form people read and type (`history TABLE KEY`); `("a,b","c")` and `("a","b,c")` share
/// that text, but never a `StoredKey`, so two rows are never merged into one.
///
/// It is the stored side's `event::draft::EntityKey`, which identifies rows by the text
/// PostgreSQL sends before value mapping. A stored event has only the mapped JSON (`true`
/// for `t`, RFC 3339 times, base64 bytea, hashed columns as their HMAC), so the two never
/// compare with each other, and two types keep them from being compared.
#[derive(Debug, Clone)]
pub struct StoredKey {
    values: Vec<String>,
    /// The key as the subject writes it, for people.
    text: String,
}

impl StoredKey {
    pub fn new(values: Vec<String>, text: impl Into<String>) -> Self {
        StoredKey {
            values,
            text: text.into(),
        }
    }

    /// The key as the CloudEvents `subject` writes it (values joined by `,`).
    pub fn text(&self) -> &str {
        &self.text
    }
}

// Identity is the values alone: the text is derived from them for display.
impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}
impl Eq for StoredKey {}
impl PartialOrd for StoredKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for StoredKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.values.cmp(&other.values)
    }
}

/// The key part of a row event's subject `{schema}.{table}/{key}`.
pub fn subject_key(subject: &str) -> Option<&str> {
    subject.split_once('/').map(|(_, key)| key)
}

/// A JSON key value as the text PostgreSQL accepts for it (and the subject shows).
pub fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A field walguard always writes whose value may be null. Required: serde would read a
/// missing `Option` as `None`.
pub(crate) fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

pub(crate) fn de_lsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
    let s = <&str>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// `pgxid` is a string of decimal digits (SPEC section 2); streams written before walguard
/// followed that carry it as a JSON number, and their signed events stay readable.
pub(crate) fn de_xid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Xid<'a> {
        Text(&'a str),
        Number(u32),
    }
    match Xid::deserialize(d)? {
        Xid::Number(n) => Ok(n.into()),
        Xid::Text(s) if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<u32>()
            .map(u64::from)
            .map_err(|_| serde::de::Error::custom(format!("pgxid {s:?} is beyond a 32-bit transaction id"))),
        Xid::Text(s) => Err(serde::de::Error::custom(format!(
            "pgxid {s:?} is not a string of decimal digits"
        ))),
    }
}

pub(crate) fn de_opt_lsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
    Option::<&str>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// A stored event as JSON, for tests: walguard's attributes with `fields` over them.
#[cfg(test)]
pub(crate) fn test_event(fields: Value) -> Value {
    let mut event = serde_json::json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-000000000000",
        "source": "/walguard/7000/app/walguard", "type": "public.t.created", "subject": "public.t/1",
        "time": "2026-11-29T09:48:11.767852Z", "datacontenttype": "application/json",
        "sequence": "00000000000000000001", "prevhash": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "pglsn": "0/1", "pgxid": "0", "pgtxidx": 1,
    });
    for (name, value) in fields.as_object().expect("an object of attributes") {
        event[name] = value.clone();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(op: &str) -> Value {
        json!({"op": op, "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
               "after": {"id": 1, "v": "x"}, "unchanged": [], "actor": null})
    }

    fn parse(data: Value) -> Result<StoredEvent, StoredError> {
        StoredEvent::parse(&serde_json::to_vec(&test_event(json!({ "data": data }))).unwrap())
    }

    #[test]
    fn every_kind_reads_back_as_the_op_it_names() {
        let progress = SnapshotProgress {
            completed: vec!["public.a".into()],
            table: None,
            after_key: None,
        };
        let resync = Resync {
            lost_after: Lsn(0x10),
            resumed_at: Lsn(0x20),
            unverified_sequences: Some([4, 6]),
        };
        for op in OPS {
            let data: Value = match op {
                Op::Watermark => json!({"op": "watermark"}),
                Op::Resync => serde_json::from_slice(&resync.data()).unwrap(),
                Op::SnapshotProgress => serde_json::from_slice(&progress.data()).unwrap(),
                Op::Truncate => json!({"op": "truncate", "schema": "public", "table": "t", "key": null,
                    "before": null, "after": null, "unchanged": [], "actor": null,
                    "cascade": false, "restart_identity": true}),
                Op::Delete => json!({"op": "delete", "schema": "public", "table": "t", "key": {"id": 1},
                    "before": {"id": 1}, "after": null, "unchanged": [], "actor": {"user": "a"}}),
                Op::Insert | Op::Update | Op::Snapshot => row(op.as_str()),
                Op::Schema => json!({"op": "schema", "schema": "public", "table": "t",
                    "columns": [{"name": "id", "type": "bigint", "not_null": true}],
                    "key": ["id"], "primary_key": ["id"], "replica_identity": "default", "types": []}),
                // C2SP tlog-checkpoint's example note: parsed here, not verified.
                Op::Checkpoint => json!({"op": "checkpoint", "size": 20852163,
                    "root": "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
                    "note": "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"}),
            };
            let event = parse(data).unwrap_or_else(|e| panic!("{}: {e}", op.as_str()));
            assert_eq!(event.data.op(), op);
            assert_eq!(event.attributes.op, op);
            assert_eq!(op_named(op.as_str()), Some(op));
        }
        let Data::Resync(back) = parse(serde_json::from_slice(&resync.data()).unwrap()).unwrap().data else {
            panic!("not a resync")
        };
        assert_eq!(back, resync);
    }

    #[test]
    fn nothing_missing_is_filled_in() {
        for field in ["schema", "table", "key", "before", "after", "unchanged", "actor"] {
            let mut data = row("insert");
            data.as_object_mut().unwrap().remove(field);
            let err = parse(data).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        for attribute in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "sequence",
            "prevhash",
            "pglsn",
        ] {
            let mut event = test_event(json!({"data": row("insert")}));
            event.as_object_mut().unwrap().remove(attribute);
            let err = StoredEvent::parse(event.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(attribute), "{attribute}: {err}");
        }
        let progress = json!({"op": "snapshot_progress", "completed": []});
        assert!(parse(progress).unwrap_err().to_string().contains("table"));
        let resync = json!({"op": "resync", "lost_after": "0/1", "resumed_at": "0/2"});
        assert!(parse(resync).unwrap_err().to_string().contains("unverified_sequences"));
    }

    #[test]
    fn wrong_data_is_named() {
        let cases = [
            (json!({"op": "upsert"}), "upsert"),
            (json!({"schema": "public"}), "op"),
            (
                json!({"op": "insert", "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
                    "after": null, "unchanged": [], "actor": null}),
                "a insert without data.after",
            ),
            (
                json!({"op": "update", "schema": "public", "table": "t", "key": null, "before": null,
                    "after": {}, "unchanged": [], "actor": null}),
                "key columns",
            ),
            (
                json!({"op": "resync", "lost_after": "later", "resumed_at": "0/2", "unverified_sequences": null}),
                "later",
            ),
        ];
        for (data, named) in cases {
            let err = parse(data.clone()).unwrap_err().to_string();
            assert!(err.contains(named), "{data}: {err}");
        }
        let kind = |data: Value| Attributes::parse(&serde_json::to_vec(&test_event(json!({"data": data}))).unwrap());
        assert!(kind(json!({"op": "upsert"}))
            .unwrap_err()
            .to_string()
            .contains("upsert"));
        assert_eq!(kind(json!({"op": "resync"})).unwrap().position().idx, 0);
    }

    #[test]
    fn keys_are_their_values_in_order_and_a_moved_row_names_its_old_key() {
        let Data::Row(_, r) = Data::parse(
            br#"{"op":"update","schema":"public","table":"t","key":{"b":2,"a":"x"},"before":{"a":"y","b":2},
                "after":{"a":"x","b":2},"unchanged":[],"actor":null}"#,
        )
        .unwrap() else {
            panic!("not a row")
        };
        let key = r.key("2,x");
        assert_eq!(key, StoredKey::new(vec!["2".into(), "\"x\"".into()], "other text"));
        assert_eq!(key.text(), "2,x");
        assert_eq!(r.key.get("a"), Some(&json!("x")));
        let old = r.moved_from().unwrap();
        assert_eq!(old, StoredKey::new(vec!["2".into(), "\"y\"".into()], ""));
        assert_eq!(old.text(), "2,y");
        assert_eq!(subject_key("public.t/2,x"), Some("2,x"));
        assert_eq!(subject_key("public.t"), None);
    }

    #[test]
    fn the_claimed_sequence_is_read_from_a_damaged_event() {
        assert_eq!(
            claimed_sequence(br#"{"sequence":"00000000000000000007","x":1}"#),
            Some(7)
        );
        assert_eq!(claimed_sequence(br#"{"sequence":"7"}"#), None);
        assert_eq!(claimed_sequence(b"not json"), None);
        for payload in [
            &br#"{"sequence":"00000000000000000007","x":1}"#[..],
            br#"{"sequence" : "00000000000000000007"}"#,
            br#"{"a":{"sequence":"7"},"sequence":"00000000000000000007"}"#,
            br#"{"sequence":"7"}"#,
            b"not json",
        ] {
            assert_eq!(claimed_sequence_fast(payload), claimed_sequence(payload), "{payload:?}");
        }
        assert_eq!(
            claimed_chain(br#"{"sequence":"00000000000000000007","prevhash":"AA=="}"#),
            Some(("00000000000000000007", "AA=="))
        );
        assert_eq!(claimed_chain(br#"{"sequence":"7","prevhash":"A\"A"}"#), None);
        assert_eq!(claimed_chain(br#"{"sequence":"7"}"#), None);
    }
}
