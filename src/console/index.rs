//! What the console knows without reading the stream again: built once from the stream at
//! start and extended as it grows. Per table the counts by op, its schema events' sequences
//! and its entities (key text -> the sequences of their events); per stream the first and
//! last message, the newest watermark and checkpoint, and the continuous verification's
//! state. Events themselves are not kept: a page reads the ones it shows by sequence, so
//! memory grows by one `u64` per row event and one key per entity.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::audit::Stored;
use crate::event::stored::{self, Data, StoredEvent};
use crate::verify::Problem;

/// One entity of a table; its id in URLs is its place in [`TableIndex::entities`], never its
/// key (SPEC section 9: no row value in a URL).
#[derive(Debug, Clone)]
pub struct Entity {
    pub key: String,
    pub sequences: Vec<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct TableIndex {
    pub name: String,
    pub ops: BTreeMap<&'static str, u64>,
    pub schemas: Vec<u64>,
    pub truncates: Vec<u64>,
    pub entities: Vec<Entity>,
    by_key: HashMap<String, usize>,
}

impl TableIndex {
    pub fn events(&self) -> u64 {
        self.ops.values().sum()
    }

    /// The id of the entity whose key text is `key`.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    pub stream: String,
    pub messages: u64,
    /// (sequence, time) of the first and last message.
    pub first: Option<(u64, String)>,
    pub last: Option<(u64, String)>,
    pub tables: Vec<TableIndex>,
    by_name: HashMap<String, usize>,
    /// walguard's own markers by kind.
    pub markers: BTreeMap<String, u64>,
    /// The newest watermark's time.
    pub newest_watermark: Option<String>,
    /// The newest `walguard.checkpoint` event's sequence.
    pub newest_checkpoint: Option<u64>,
    /// The last sequence the verifier was fed.
    pub verified_to: u64,
    pub problems: Vec<Problem>,
    /// The reading of the stream failed (shown in red until it succeeds again).
    pub read_error: Option<String>,
}

impl Index {
    pub fn new(stream: &str) -> Index {
        Index {
            stream: stream.to_owned(),
            ..Index::default()
        }
    }

    pub fn table(&self, id: usize) -> Option<&TableIndex> {
        self.tables.get(id)
    }

    pub fn table_id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn table_mut(&mut self, name: String) -> &mut TableIndex {
        let next = self.tables.len();
        let id = *self.by_name.entry(name.clone()).or_insert(next);
        if id == next {
            self.tables.push(TableIndex {
                name,
                ..TableIndex::default()
            });
        }
        &mut self.tables[id]
    }

    /// Adds one message (already fed to the verifier, whose problems are passed on).
    pub fn add(&mut self, m: &Stored) {
        self.messages += 1;
        let event = StoredEvent::parse(&m.payload);
        let time = match &event {
            Ok(e) => e.attributes.time.clone(),
            Err(_) => raw_field(&m.payload, "time").unwrap_or_default(),
        };
        if self.first.is_none() {
            self.first = Some((m.sequence, time.clone()));
        }
        self.last = Some((m.sequence, time.clone()));
        let Ok(event) = event else {
            // Not an event this walguard reads: a checkpoint (written by a newer walguard
            // than the reader knows) is still shown; anything else is the verifier's to name.
            if raw_field(&m.payload, "type").as_deref() == Some("walguard.checkpoint") {
                self.newest_checkpoint = Some(m.sequence);
                *self.markers.entry("checkpoint".into()).or_default() += 1;
            }
            return;
        };
        match &event.data {
            Data::Row(op, row) => {
                let key = stored::subject_key(&event.attributes.subject)
                    .unwrap_or_default()
                    .to_owned();
                let table = self.table_mut(row.qualified());
                *table.ops.entry(op.as_str()).or_default() += 1;
                let next = table.entities.len();
                let id = *table.by_key.entry(key.clone()).or_insert(next);
                if id == next {
                    table.entities.push(Entity {
                        key,
                        sequences: Vec::new(),
                    });
                }
                table.entities[id].sequences.push(m.sequence);
            }
            Data::Truncate(t) => {
                let table = self.table_mut(t.qualified());
                *table.ops.entry("truncate").or_default() += 1;
                table.truncates.push(m.sequence);
            }
            Data::Schema(s) => {
                self.table_mut(format!("{}.{}", s.schema, s.table))
                    .schemas
                    .push(m.sequence);
                *self.markers.entry("schema".into()).or_default() += 1;
            }
            Data::Watermark => {
                self.newest_watermark = Some(time);
                *self.markers.entry("watermark".into()).or_default() += 1;
            }
            other => *self.markers.entry(other.op().as_str().into()).or_default() += 1,
        }
    }
}

/// A top-level string field of a message that is not an event walguard reads.
fn raw_field(payload: &[u8], name: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    v.get(name)?.as_str().map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    /// A stored message with `data` (what the index reads; not signed or chained).
    pub(crate) fn message(sequence: u64, subject: &str, data: Value) -> Stored {
        let op = data["op"].as_str().unwrap().to_owned();
        let payload = serde_json::json!({
            "specversion": "1.0", "id": format!("id-{sequence}"), "source": "walguard/test",
            "type": format!("walguard.{op}"), "subject": subject,
            "time": format!("2026-12-02T10:00:{:02}.000000Z", sequence % 60),
            "datacontenttype": "application/json",
            "sequence": format!("{sequence:020}"), "prevhash": "00",
            "pglsn": "0/16B3748", "pgxid": "7", "pgtxidx": 1, "pgtxcnt": 1, "pgendlsn": "0/16B3800",
            "data": data,
        });
        Stored {
            sequence,
            signature: None,
            payload: Bytes::from(serde_json::to_vec(&payload).unwrap()),
        }
    }

    pub(crate) fn row(op: &str, id: i64, before: Value, after: Value) -> Value {
        serde_json::json!({"op": op, "schema": "public", "table": "customers",
            "key": {"id": id}, "before": before, "after": after, "unchanged": [], "actor": {"user": "alice"}})
    }

    #[test]
    fn counts_tables_ops_and_entities_by_sequence() {
        let mut index = Index::new("WG");
        let name = |n: &str| serde_json::json!({"id": 1, "name": n});
        index.add(&message(1, "_walguard", serde_json::json!({"op": "watermark"})));
        index.add(&message(
            2,
            "public.customers/1",
            row("insert", 1, Value::Null, name("a")),
        ));
        index.add(&message(
            3,
            "public.customers/2",
            row("insert", 2, Value::Null, name("b")),
        ));
        index.add(&message(
            4,
            "public.customers/1",
            row("update", 1, name("a"), name("c")),
        ));
        index.add(&message(
            5,
            "public.customers/1",
            row("delete", 1, name("c"), Value::Null),
        ));
        index.add(&message(6, "_walguard", serde_json::json!({"op": "watermark"})));
        assert_eq!(index.messages, 6);
        assert_eq!(index.first.as_ref().unwrap().0, 1);
        assert_eq!(index.last.as_ref().unwrap().0, 6);
        assert_eq!(index.newest_watermark.as_deref(), Some("2026-12-02T10:00:06.000000Z"));
        assert_eq!(index.markers["watermark"], 2);
        let t = index.table(index.table_id("public.customers").unwrap()).unwrap();
        assert_eq!(t.events(), 4);
        assert_eq!((t.ops["insert"], t.ops["update"], t.ops["delete"]), (2, 1, 1));
        let one = &t.entities[t.find("1").unwrap()];
        assert_eq!(one.sequences, vec![2, 4, 5]);
        assert_eq!(t.entities[t.find("2").unwrap()].sequences, vec![3]);
        assert_eq!(t.find("3"), None);
    }

    #[test]
    fn a_checkpoint_and_an_unreadable_message_are_counted_not_fatal() {
        let mut index = Index::new("WG");
        let cp = br#"{"type":"walguard.checkpoint","time":"2026-12-02T10:00:00Z","data":{}}"#;
        index.add(&Stored {
            sequence: 1,
            signature: None,
            payload: Bytes::from_static(cp),
        });
        index.add(&Stored {
            sequence: 2,
            signature: None,
            payload: Bytes::from_static(b"not json"),
        });
        assert_eq!(index.newest_checkpoint, Some(1));
        assert_eq!(index.messages, 2);
        assert_eq!(index.last.as_ref().unwrap().0, 2);
        assert!(index.tables.is_empty());
    }
}
