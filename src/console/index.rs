//! What the console knows without reading the stream again: built once from the stream at
//! start and extended as it grows. Per table the counts by op, its schema events' sequences
//! and its entities (key text -> the sequences of their events); per stream the first and
//! last message, the newest watermark and checkpoint, and the continuous verification's
//! state. Events themselves are not kept: a page reads the ones it shows by sequence, so
//! memory grows by 12 bytes per row event and, per entity, its key text and some 30 bytes
//! ([`Entities`]; and, per table, at most [`TimeSeries::MAX_BUCKETS`] counts of events over
//! time). A message is parsed once, by the verifier, which hands the index its event.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

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

/// One entity of a table, as a page shows it; its id in URLs is its place in
/// [`TableIndex::entities`], never its key (SPEC section 9: no row value in a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub key: String,
    pub sequences: Vec<u64>,
}

/// A table's entities, held compactly (SPEC section 9 pages them, searches them by key and
/// shows each one's events): every key once in one text, in the order the entities first
/// appeared (an entity's id is its place in that order), and every row event's sequence once
/// in one list, linked to the same entity's event before it. A hash table of ids finds an
/// entity by key. That is 12 bytes per entity, its key text and its slot in the hash table
/// (about 10), and 12 per row event: 42 bytes in all per entity of one event, where a
/// `String` and a `Vec<u64>` per entity in maps cost 230 (`cargo run --example
/// console_index`, 1,000,000 entities).
#[derive(Default, Clone)]
pub struct Entities {
    /// Every entity's key text, one after another.
    keys: String,
    /// Where entity `i`'s key ends in `keys` (it starts where entity `i - 1`'s ends).
    key_ends: Vec<u32>,
    /// Entity `i`'s newest event, a place in `sequences`.
    newest: Vec<u32>,
    /// Entity `i`'s number of events.
    counts: Vec<u32>,
    /// Every row event's sequence, in stream order.
    sequences: Vec<u64>,
    /// Per row event, the place of the same entity's event before it ([`NONE`] for its first).
    previous: Vec<u32>,
    /// Entity ids, hashed by their key.
    by_key: hashbrown::HashTable<u32>,
    hasher: std::hash::RandomState,
}

/// No event before.
const NONE: u32 = u32::MAX;

/// Entity `id`'s key in `keys`.
fn key_of<'a>(keys: &'a str, ends: &[u32], id: u32) -> &'a str {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    &keys[start..ends[id] as usize]
}

impl Entities {
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }

    /// Adds the row event at `sequence` to the entity with key text `key` (a new entity when
    /// none has it). False when the index cannot take it: more than `u32::MAX` row events or
    /// key bytes in one table (some 60 GiB of index).
    pub fn add(&mut self, key: &str, sequence: u64) -> bool {
        let Ok(event) = u32::try_from(self.sequences.len()) else {
            return false;
        };
        if event == NONE {
            return false;
        }
        let Entities {
            keys,
            key_ends,
            by_key,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(key);
        let id = match by_key.entry(
            hash,
            |&id| key_of(keys, key_ends, id) == key,
            |&id| hasher.hash_one(key_of(keys, key_ends, id)),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) => *e.get(),
            hashbrown::hash_table::Entry::Vacant(e) => {
                let (Ok(id), Ok(end)) = (u32::try_from(key_ends.len()), u32::try_from(keys.len() + key.len())) else {
                    return false;
                };
                keys.push_str(key);
                key_ends.push(end);
                e.insert(id);
                self.newest.push(NONE);
                self.counts.push(0);
                id
            }
        };
        let at = id as usize;
        self.sequences.push(sequence);
        self.previous.push(self.newest[at]);
        self.newest[at] = event;
        self.counts[at] += 1;
        true
    }

    /// The id of the entity whose key text is `key`.
    pub fn find(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.by_key
            .find(hash, |&id| key_of(&self.keys, &self.key_ends, id) == key)
            .map(|&id| id as usize)
    }

    /// Entity `id`'s key text.
    pub fn key(&self, id: usize) -> Option<&str> {
        (id < self.len()).then(|| key_of(&self.keys, &self.key_ends, id as u32))
    }

    /// Entity `id`'s number of events.
    pub fn count(&self, id: usize) -> Option<u32> {
        self.counts.get(id).copied()
    }

    /// Entity `id`'s events' sequences, in stream order.
    pub fn sequences(&self, id: usize) -> Option<Vec<u64>> {
        let mut at = *self.newest.get(id)?;
        let mut out = Vec::with_capacity(self.counts[id] as usize);
        while at != NONE {
            out.push(self.sequences[at as usize]);
            at = self.previous[at as usize];
        }
        out.reverse();
        Some(out)
    }

    /// Entity `id`: its key and its events' sequences.
    pub fn get(&self, id: usize) -> Option<Entity> {
        Some(Entity {
            key: self.key(id)?.to_owned(),
            sequences: self.sequences(id)?,
        })
    }

    /// The heap bytes held (capacities, the hash table's allocation), for the tests.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity()
            + 4 * (self.key_ends.capacity() + self.newest.capacity() + self.counts.capacity())
            + 8 * self.sequences.capacity()
            + 4 * self.previous.capacity()
            + self.by_key.allocation_size()
    }
}

impl std::fmt::Debug for Entities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entities")
            .field("entities", &self.len())
            .field("events", &self.sequences.len())
            .finish()
    }
}

#[derive(Debug, Default, Clone)]
pub struct TableIndex {
    pub name: String,
    pub ops: BTreeMap<&'static str, u64>,
    pub schemas: Vec<u64>,
    pub truncates: Vec<u64>,
    pub entities: Entities,
    /// Row events the index could not take (see [`Entities::add`]): counted, not listed.
    pub unindexed: u64,
    /// Row and truncate events over time.
    pub over_time: TimeSeries,
}

impl TableIndex {
    pub fn events(&self) -> u64 {
        self.ops.values().sum()
    }

    /// The id of the entity whose key text is `key`.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.entities.find(key)
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

    /// Adds one message, already fed to the verifier (whose problems are passed on);
    /// `event` is the event the verifier parsed from it (`Verifier::message`,
    /// `Verified::event`), `None` when it is not one, so that no message is parsed twice.
    pub fn add(&mut self, m: &Stored, event: Option<&StoredEvent>) {
        self.messages += 1;
        let raw_time;
        let time = match event {
            Some(e) => e.attributes.time.as_str(),
            None => {
                raw_time = raw_field(&m.payload, "time").unwrap_or_default();
                raw_time.as_str()
            }
        };
        if self.first.is_none() {
            self.first = Some((m.sequence, time.to_owned()));
        }
        match &mut self.last {
            Some((sequence, last)) => {
                *sequence = m.sequence;
                last.clear();
                last.push_str(time);
            }
            None => self.last = Some((m.sequence, time.to_owned())),
        }
        let Some(event) = event else {
            // Not an event this walguard reads: a checkpoint (written by a newer walguard
            // than the reader knows) is still shown; anything else is the verifier's to name.
            if raw_field(&m.payload, "type").as_deref() == Some("walguard.checkpoint") {
                self.newest_checkpoint = Some(m.sequence);
                *self.markers.entry("checkpoint".into()).or_default() += 1;
            }
            return;
        };
        let unix = unix_seconds(time);
        match &event.data {
            Data::Row(op, row) => {
                let key = stored::subject_key(&event.attributes.subject).unwrap_or_default();
                let table = self.table_mut(row.qualified());
                *table.ops.entry(op.as_str()).or_default() += 1;
                if let Some(t) = unix {
                    table.over_time.add(t);
                }
                if !table.entities.add(key, m.sequence) {
                    table.unindexed += 1;
                }
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
                self.checkpoint = Some(CheckpointView::of(m.sequence, time, c, &self.witnesses));
                *self.markers.entry("checkpoint".into()).or_default() += 1;
            }
            Data::Watermark => {
                self.newest_watermark = Some(time.to_owned());
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

    /// Adds `m` as the console does: parsed once, as the verifier parses it.
    pub(crate) fn add(index: &mut Index, m: &Stored) {
        index.add(m, StoredEvent::parse(&m.payload).ok().as_ref());
    }

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
        add(
            &mut index,
            &message(1, "_walguard", serde_json::json!({"op": "watermark"})),
        );
        add(
            &mut index,
            &message(2, "public.customers/1", row("insert", 1, Value::Null, name("a"))),
        );
        add(
            &mut index,
            &message(3, "public.customers/2", row("insert", 2, Value::Null, name("b"))),
        );
        add(
            &mut index,
            &message(4, "public.customers/1", row("update", 1, name("a"), name("c"))),
        );
        add(
            &mut index,
            &message(5, "public.customers/1", row("delete", 1, name("c"), Value::Null)),
        );
        add(
            &mut index,
            &message(6, "_walguard", serde_json::json!({"op": "watermark"})),
        );
        assert_eq!(index.messages, 6);
        assert_eq!(index.first.as_ref().unwrap().0, 1);
        assert_eq!(index.last.as_ref().unwrap().0, 6);
        assert_eq!(index.newest_watermark.as_deref(), Some("2026-12-02T10:00:06.000000Z"));
        assert_eq!(index.markers["watermark"], 2);
        let t = index.table(index.table_id("public.customers").unwrap()).unwrap();
        assert_eq!(t.events(), 4);
        assert_eq!((t.ops["insert"], t.ops["update"], t.ops["delete"]), (2, 1, 1));
        assert_eq!(t.entities.sequences(t.find("1").unwrap()).unwrap(), vec![2, 4, 5]);
        assert_eq!(t.entities.sequences(t.find("2").unwrap()).unwrap(), vec![3]);
        assert_eq!(t.find("3"), None);
    }

    #[test]
    fn entities_keep_their_order_keys_and_sequences() {
        let mut e = Entities::default();
        // Interleaved: keys that share prefixes, an empty key, one entity with many events.
        let keys = ["1", "12", "", "121", "\"a\"", "1"];
        for (n, key) in keys.iter().enumerate() {
            assert!(e.add(key, 10 + n as u64));
        }
        for s in 100..200 {
            assert!(e.add("12", s));
        }
        assert_eq!(e.len(), 5);
        let ids: Vec<usize> = ["1", "12", "", "121", "\"a\""]
            .iter()
            .map(|k| e.find(k).unwrap())
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4], "ids in the order of first appearance");
        assert_eq!(e.find("2"), None);
        assert_eq!(e.key(3), Some("121"));
        assert_eq!(e.key(2), Some(""));
        assert_eq!(e.key(5), None);
        assert_eq!(e.sequences(0), Some(vec![10, 15]));
        let twelve = e.get(1).unwrap();
        assert_eq!(twelve.key, "12");
        assert_eq!(twelve.sequences[0], 11);
        assert_eq!(twelve.sequences[1..], (100..200).collect::<Vec<u64>>()[..]);
        assert_eq!(e.count(1), Some(101));
        assert_eq!(e.sequences(4), Some(vec![14]));
        assert_eq!(e.get(5), None);
    }

    /// The index's point (issue: 252 bytes per entity before, the console at 251 MiB over a
    /// stream of 1,000,000 entities): 100,000 entities of one event each, keys as walguard
    /// writes them, cost at most 64 bytes each on the heap (capacities, hash table included).
    #[test]
    fn entities_are_compact() {
        let mut index = Index::new("WG");
        let n = 100_000;
        for i in 0..n {
            let id = 100_000 + i as i64;
            let m = message(
                i + 1,
                &format!("public.customers/{id}"),
                row("insert", id, Value::Null, serde_json::json!({"id": id})),
            );
            add(&mut index, &m);
        }
        let t = &index.tables[0];
        assert_eq!(t.entities.len(), n as usize);
        assert_eq!(t.entities.key(54_321), Some("154321"));
        assert_eq!(t.entities.sequences(t.find("154321").unwrap()), Some(vec![54_322]));
        let per_entity = t.entities.heap_bytes() / t.entities.len();
        assert!(per_entity <= 64, "{per_entity} bytes per entity");
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
        add(
            &mut index,
            &Stored {
                sequence: 1,
                signature: None,
                payload: Bytes::from_static(cp),
            },
        );
        add(
            &mut index,
            &Stored {
                sequence: 2,
                signature: None,
                payload: Bytes::from_static(b"not json"),
            },
        );
        assert_eq!(index.newest_checkpoint, Some(1));
        assert_eq!(index.messages, 2);
        assert_eq!(index.last.as_ref().unwrap().0, 2);
        assert!(index.tables.is_empty());
    }
}
