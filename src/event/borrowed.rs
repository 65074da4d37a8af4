//! A stored event read without copying it: the attributes borrowed from the payload, and a
//! row's columns as their raw JSON text. For the readers that go through every message of a
//! stream and keep nothing of most of them (`verify`, `restore`): `stored::StoredEvent`
//! builds a `serde_json::Value` per column, which is most of what reading costs, and which
//! keeps neither a `json` value's bytes nor every digit of a float.
//!
//! It accepts exactly what `StoredEvent::parse` accepts: every attribute and row field
//! `stored` requires is required here too, with the same types. A row (insert, update,
//! delete, snapshot) is read here; every other kind (truncates, schema events, checkpoints,
//! walguard's markers) is few and is read in full by `stored::Data`.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::draft::Op;
use super::stored::{op_named, Data, StoredError};
use super::Position;
use crate::lsn::Lsn;

/// The attributes the checks of a stored event read, borrowed from it.
#[derive(Debug, Clone)]
pub struct AttributesRef<'a> {
    pub specversion: Cow<'a, str>,
    pub subject: Cow<'a, str>,
    /// As written (20 digits).
    pub sequence: Cow<'a, str>,
    pub prevhash: Cow<'a, str>,
    pub pglsn: Lsn,
    pub pgxid: u64,
    pub pgtxidx: u32,
    pub pgtxcnt: Option<u32>,
    pub pgendlsn: Option<Lsn>,
    /// `data.op`.
    pub op: Op,
}

impl AttributesRef<'_> {
    /// A watermark or a resync record (see `stored::Attributes::is_watermark`).
    pub fn is_watermark(&self) -> bool {
        matches!(self.op, Op::Watermark | Op::Resync)
    }

    /// Where this event stands in the total order `(pglsn, pgtxidx)`; a watermark sorts
    /// before any event at its LSN.
    pub fn position(&self) -> Position {
        Position {
            lsn: self.pglsn,
            idx: if self.is_watermark() { 0 } else { self.pgtxidx },
        }
    }

    pub fn sequence_number(&self) -> Option<u64> {
        super::stored::sequence_number(&self.sequence)
    }
}

/// A stored event, borrowed from its payload.
#[derive(Debug)]
pub struct EventRef<'a> {
    pub attributes: AttributesRef<'a>,
    pub data: DataRef<'a>,
}

/// An event's `data`: a row borrowed, any other kind read in full.
#[derive(Debug)]
pub enum DataRef<'a> {
    Row(Op, RowRef<'a>),
    Other(Data),
}

impl DataRef<'_> {
    /// `schema.table` of a row or truncate; `None` for walguard's markers.
    pub fn table(&self) -> Option<String> {
        match self {
            DataRef::Row(_, row) => Some(row.qualified()),
            DataRef::Other(data) => data.table(),
        }
    }
}

/// A row event's `data`, each column's value as the JSON text the payload holds.
#[derive(Debug)]
pub struct RowRef<'a> {
    pub schema: Cow<'a, str>,
    pub table: Cow<'a, str>,
    pub key: RawColumns<'a>,
    pub before: Option<RawColumns<'a>>,
    pub after: Option<RawColumns<'a>>,
    pub unchanged: Vec<Cow<'a, str>>,
}

impl RowRef<'_> {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A JSON object's members in the order written, each value as its JSON text (`null`
/// included).
#[derive(Debug, Default)]
pub struct RawColumns<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawColumns<'a> {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }

    /// The JSON text of member `name`; the members are usually in the order of `hint`.
    pub fn get(&self, name: &str, hint: usize) -> Option<&'a RawValue> {
        match self.0.get(hint) {
            Some((n, v)) if n == name => Some(*v),
            _ => self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawColumns<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Columns<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Columns<'a> {
            type Value = RawColumns<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The same words as `stored::KeyColumns`.
                f.write_str("an object of key columns")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawColumns<'a>, A::Error> {
                let mut columns = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    columns.push((name, value));
                }
                Ok(RawColumns(columns))
            }
        }
        d.deserialize_map(Columns(std::marker::PhantomData))
    }
}

/// A JSON string's text, borrowed from the payload when it holds no escapes (serde's own
/// `Cow<str>` is always owned outside a derive's `#[serde(borrow)]`).
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A stored event as written, attributes borrowed, `data` kept as its text.
#[derive(Deserialize)]
struct WireRef<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow, rename = "id")]
    _id: Cow<'a, str>,
    #[serde(borrow, rename = "source")]
    _source: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    _ty: Cow<'a, str>,
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow, rename = "time")]
    _time: Cow<'a, str>,
    #[serde(borrow)]
    sequence: Cow<'a, str>,
    #[serde(borrow)]
    prevhash: Cow<'a, str>,
    #[serde(deserialize_with = "super::stored::de_lsn")]
    pglsn: Lsn,
    #[serde(deserialize_with = "super::stored::de_xid")]
    pgxid: u64,
    pgtxidx: u32,
    pgtxcnt: Option<u32>,
    #[serde(default, deserialize_with = "super::stored::de_opt_lsn")]
    pgendlsn: Option<Lsn>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A row's `data` as written; the same fields `stored::Row` requires.
#[derive(Deserialize)]
struct RowWire<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow)]
    key: RawColumns<'a>,
    #[serde(borrow, deserialize_with = "super::stored::nullable")]
    before: Option<RawColumns<'a>>,
    #[serde(borrow, deserialize_with = "super::stored::nullable")]
    after: Option<RawColumns<'a>>,
    #[serde(borrow)]
    unchanged: Vec<Cow<'a, str>>,
    #[serde(rename = "actor")]
    _actor: IgnoredAny,
}

/// `data.op`: read from the front where walguard writes it, otherwise from anywhere.
fn data_op(data: &str) -> Result<Op, StoredError> {
    let name = match data.strip_prefix(r#"{"op":""#).and_then(|rest| rest.split_once('"')) {
        Some((name, _)) if !name.contains('\\') => Cow::Borrowed(name),
        _ => {
            #[derive(Deserialize)]
            struct Kind<'a> {
                #[serde(borrow)]
                op: Cow<'a, str>,
            }
            serde_json::from_str::<Kind<'_>>(data)?.op
        }
    };
    op_named(&name).ok_or_else(|| {
        StoredError::from(<serde_json::Error as serde::de::Error>::custom(format!(
            "data.op {name:?} is not a kind of event walguard writes"
        )))
    })
}

impl<'a> EventRef<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<EventRef<'a>, StoredError> {
        let wire: WireRef<'a> = serde_json::from_slice(payload)?;
        let text = wire.data.get();
        let op = data_op(text)?;
        let data = match op {
            Op::Insert | Op::Update | Op::Delete | Op::Snapshot => {
                let row: RowWire<'a> = serde_json::from_str(text)?;
                // Every row but a deleted one is in `after` (as `stored::Data` requires).
                if op != Op::Delete && row.after.is_none() {
                    return Err(StoredError::from(<serde_json::Error as serde::de::Error>::custom(
                        format!("a {} without data.after", op.as_str()),
                    )));
                }
                DataRef::Row(
                    op,
                    RowRef {
                        schema: row.schema,
                        table: row.table,
                        key: row.key,
                        before: row.before,
                        after: row.after,
                        unchanged: row.unchanged,
                    },
                )
            }
            _ => DataRef::Other(Data::parse(text.as_bytes())?),
        };
        Ok(EventRef {
            attributes: AttributesRef {
                specversion: wire.specversion,
                subject: wire.subject,
                sequence: wire.sequence,
                prevhash: wire.prevhash,
                pglsn: wire.pglsn,
                pgxid: wire.pgxid,
                pgtxidx: wire.pgtxidx,
                pgtxcnt: wire.pgtxcnt,
                pgendlsn: wire.pgendlsn,
                op,
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::stored::{test_event, StoredEvent};
    use serde_json::{json, Value};

    fn payload(data: Value) -> Vec<u8> {
        serde_json::to_vec(&test_event(json!({ "data": data }))).unwrap()
    }

    fn row(op: &str) -> Value {
        json!({"op": op, "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
               "after": {"id": 1, "v": "x"}, "unchanged": [], "actor": null})
    }

    /// What `StoredEvent::parse` accepts, this accepts, and the other way round.
    #[test]
    fn accepts_what_the_full_reader_accepts() {
        let mut cases = vec![
            row("insert"),
            row("update"),
            row("snapshot"),
            json!({"op": "delete", "schema": "public", "table": "t", "key": {"id": 1},
                   "before": {"id": 1}, "after": null, "unchanged": [], "actor": {"user": "a"}}),
            json!({"op": "watermark"}),
            json!({"op": "upsert"}),
            json!({"schema": "public"}),
            json!({"op": "insert", "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
                   "after": null, "unchanged": [], "actor": null}),
            json!({"op": "update", "schema": "public", "table": "t", "key": null, "before": null,
                   "after": {}, "unchanged": [], "actor": null}),
            json!({"op": "update", "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
                   "after": {"id": 2}, "unchanged": ["big"], "actor": null}),
            json!({"op": "update", "schema": "public", "table": "t", "key": {"id": 1}, "before": null,
                   "after": {"id": 2}, "unchanged": [1], "actor": null}),
            json!({"op": "insert", "schema": 5, "table": "t", "key": {"id": 1}, "before": null,
                   "after": {"id": 2}, "unchanged": [], "actor": null}),
            json!({"op": "schema", "schema": "public", "table": "t",
                   "columns": [{"name": "id", "type": "bigint", "not_null": true}],
                   "key": ["id"], "primary_key": ["id"], "replica_identity": "default", "types": []}),
        ];
        for field in ["schema", "table", "key", "before", "after", "unchanged", "actor"] {
            let mut data = row("insert");
            data.as_object_mut().unwrap().remove(field);
            cases.push(data);
        }
        for data in cases {
            let p = payload(data.clone());
            let full = StoredEvent::parse(&p);
            let borrowed = EventRef::parse(&p);
            assert_eq!(full.is_ok(), borrowed.is_ok(), "{data}: {full:?} / {borrowed:?}");
            if let (Ok(full), Ok(borrowed)) = (full, borrowed) {
                assert_eq!(full.attributes.op, borrowed.attributes.op);
                assert_eq!(full.data.table(), borrowed.data.table());
            }
        }
        // The op not first: read from anywhere.
        let text = r#"{"schema":"public","op":"insert","table":"t","key":{"id":1},"before":null,
            "after":{"id":1},"unchanged":[],"actor":null}"#;
        let p = payload(serde_json::from_str(text).unwrap());
        assert_eq!(EventRef::parse(&p).unwrap().attributes.op, Op::Insert);
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
            let err = EventRef::parse(event.to_string().as_bytes()).unwrap_err().to_string();
            assert!(err.contains(attribute), "{attribute}: {err}");
        }
    }

    #[test]
    fn values_are_the_bytes_the_payload_holds() {
        let p = br#"{"specversion":"1.0","id":"x","source":"s","type":"t","subject":"public.t/1","time":"t",
            "sequence":"00000000000000000001","prevhash":"AA==","pglsn":"0/1","pgxid":"7","pgtxidx":1,
            "data":{"op":"insert","schema":"public","table":"t","key":{"id":1},"before":null,
            "after":{"id":1,"f":-1.5e-300,"j":{"b":2.50,"a":1},"s":"a\"b"},"unchanged":[],"actor":null}}"#;
        let e = EventRef::parse(p).unwrap();
        assert_eq!(e.attributes.pgxid, 7);
        assert_eq!(e.attributes.subject, "public.t/1");
        let DataRef::Row(Op::Insert, row) = e.data else {
            panic!("a row")
        };
        assert_eq!(row.qualified(), "public.t");
        let after = row.after.unwrap();
        assert_eq!(after.names().collect::<Vec<_>>(), ["id", "f", "j", "s"]);
        assert_eq!(after.get("f", 1).unwrap().get(), "-1.5e-300");
        assert_eq!(after.get("j", 0).unwrap().get(), r#"{"b":2.50,"a":1}"#);
        assert_eq!(after.get("s", 3).unwrap().get(), r#""a\"b""#);
        assert!(after.get("x", 0).is_none());
        assert!(
            after.0.iter().all(|(n, _)| matches!(n, Cow::Borrowed(_))),
            "names are borrowed"
        );
    }
}
