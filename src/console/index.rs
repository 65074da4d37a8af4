//! What the console knows without reading the stream again: built once from the stream at
//! start and extended as it grows. Per table the counts by op, its schema events' sequences
//! and its entities (key text -> the sequences of their events); per stream the first and
//! last message, the newest watermark and checkpoint, and the continuous verification's
//! state. Events themselves are not kept: a page reads the ones it shows by sequence, so
//! memory grows by one `u64` per row event and one key per entity (and, per table, at most
//! [`TimeSeries::MAX_BUCKETS`] counts of events over time).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::audit::Stored;
use crate::event::stored::{self, Data, StoredEvent};
use crate::tlog::Vkey;
use crate::verify::Problem;

/// A table's events over time: counts in equal buckets from `start`, `width` seconds wide.
/// When the events span more than [`TimeSeries::MAX_BUCKETS`] buckets the width doubles and
/// neighbours merge, so it stays bounded however long the stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimeSeries {
    /// Unix seconds of the first bucket's start (a multiple of `width`).
    pub start: u64,
    pub width: u64,
    pub counts: Vec<u64>,
}

impl TimeSeries {
    pub const MAX_BUCKETS: usize = 64;

    /// Counts one event at `time` (Unix seconds); one earlier than the first bucket counts
    /// in the first bucket (the stream is in commit order, its times nearly so).
    pub fn add(&mut self, time: u64) {
        if self.counts.is_empty() {
            self.width = 1;
            self.start = time;
        }
        loop {
            let at = (time.saturating_sub(self.start) / self.width) as usize;
            if at < Self::MAX_BUCKETS {
                if self.counts.len() <= at {
                    self.counts.resize(at + 1, 0);
                }
                self.counts[at] += 1;
                return;
            }
            self.coarsen();
        }
    }

    /// Doubles the width: the start aligns down to the new width, buckets merge in pairs.
    fn coarsen(&mut self) {
        let width = self.width * 2;
        let start = self.start - self.start % width;
        let mut counts = vec![0; self.counts.len() / 2 + 1];
        for (i, n) in self.counts.iter().enumerate() {
            let t = self.start + i as u64 * self.width;
            counts[((t - start) / width) as usize] += n;
        }
        while counts.last() == Some(&0) {
            counts.pop();
        }
        (self.start, self.width, self.counts) = (start, width, counts);
    }
}

/// The newest checkpoint event: what it states and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointView {
    pub sequence: u64,
    pub time: String,
    pub size: u64,
    pub origin: String,
    /// Cosignatures that verify by a configured witness key: (name, Unix seconds).
    pub cosigned: Vec<(String, u64)>,
    /// Names on the note's other signature lines than the log's (no key here to check them).
    pub unchecked: Vec<String>,
}

impl CheckpointView {
    fn of(sequence: u64, time: &str, c: &crate::tlog::CheckpointData, witnesses: &[Vkey]) -> CheckpointView {
        let signed = c.signed().ok();
        let origin = signed
            .as_ref()
            .map(|s| s.checkpoint().origin().to_owned())
            .unwrap_or_default();
        let cosigned: Vec<(String, u64)> = signed
            .as_ref()
            .and_then(|s| s.cosignatures(witnesses).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.timestamp))
            .collect();
        // A note's signature lines follow its blank line: `— NAME BASE64`.
        let unchecked = c
            .note
            .split_once("\n\n")
            .map_or("", |(_, sigs)| sigs)
            .lines()
            .filter_map(|l| l.strip_prefix("\u{2014} ")?.split(' ').next())
            .filter(|name| *name != origin && !cosigned.iter().any(|(n, _)| n == name))
            .map(str::to_owned)
            .collect();
        CheckpointView {
            sequence,
            time: time.to_owned(),
            size: c.size,
            origin,
            cosigned,
            unchecked,
        }
    }
}

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
    /// Row and truncate events over time.
    pub over_time: TimeSeries,
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
    /// The newest checkpoint event walguard reads, with its cosignatures.
    pub checkpoint: Option<CheckpointView>,
    /// The witness keys cosignatures are checked with (`[[audit.witnesses]]`).
    pub witnesses: Vec<Vkey>,
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
        let unix = unix_seconds(&time);
        match &event.data {
            Data::Row(op, row) => {
                let key = stored::subject_key(&event.attributes.subject)
                    .unwrap_or_default()
                    .to_owned();
                let table = self.table_mut(row.qualified());
                *table.ops.entry(op.as_str()).or_default() += 1;
                if let Some(t) = unix {
                    table.over_time.add(t);
                }
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
                if let Some(t) = unix {
                    table.over_time.add(t);
                }
            }
            Data::Schema(s) => {
                self.table_mut(format!("{}.{}", s.schema, s.table))
                    .schemas
                    .push(m.sequence);
                *self.markers.entry("schema".into()).or_default() += 1;
            }
            Data::Checkpoint(c) => {
                self.newest_checkpoint = Some(m.sequence);
                self.checkpoint = Some(CheckpointView::of(m.sequence, &time, c, &self.witnesses));
                *self.markers.entry("checkpoint".into()).or_default() += 1;
            }
            Data::Watermark => {
                self.newest_watermark = Some(time);
                *self.markers.entry("watermark".into()).or_default() += 1;
            }
            other => *self.markers.entry(other.op().as_str().into()).or_default() += 1,
        }
    }
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_seconds(time: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(time).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
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
    fn events_over_time_stay_bounded_and_keep_every_count() {
        let mut ts = TimeSeries::default();
        for t in [100, 100, 101, 105] {
            ts.add(t);
        }
        assert_eq!((ts.start, ts.width), (100, 1));
        assert_eq!(ts.counts, vec![2, 1, 0, 0, 0, 1]);
        // Earlier than the first bucket: counted in it.
        ts.add(50);
        assert_eq!(ts.counts[0], 3);
        // A day later: the width doubles until a day fits in the buckets; nothing is lost.
        ts.add(100 + 86_400);
        assert!(ts.counts.len() <= TimeSeries::MAX_BUCKETS);
        assert_eq!(ts.counts.iter().sum::<u64>(), 6);
        assert!(ts.width >= 86_400 / TimeSeries::MAX_BUCKETS as u64, "{ts:?}");
        assert_eq!(ts.start % ts.width, 0);
        assert_eq!(ts.counts[0], 5);
        assert_eq!(*ts.counts.last().unwrap(), 1);
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
