//! What events are called: ids, NATS subjects and CloudEvents types (SPEC section 2).
//!
//! Ids are UUID v5 in RFC 4122's URL namespace over `{system_identifier}/{slot}/...`, so a
//! transaction replayed after a restart gets the ids it had, and the stream's deduplication
//! and the publisher's comparison of re-derived drafts can rely on them. walguard's own
//! markers (watermark, resync, snapshot progress) are named here too, whole, since they carry
//! no row. Names from the database become subject tokens through `subject_token`, so no table
//! name can split or widen a subject.

use std::sync::Arc;

use async_nats::Subject;
use uuid::Uuid;

use super::draft::{Draft, Op};
use super::schema::TableSchema;
use super::Position;
use crate::lsn::Lsn;

/// The names every event of one slot is built from.
#[derive(Debug, Clone)]
pub struct Naming {
    pub system_identifier: String,
    pub slot: String,
    pub subject_prefix: String,
}

/// The row ops a guarded table's events carry.
const ROW_OPS: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Snapshot];

impl Naming {
    fn event_id(&self, lsn: Lsn, suffix: std::fmt::Arguments<'_>) -> Uuid {
        uuid_v5(format_args!(
            "{}/{}/{}/{}",
            self.system_identifier, self.slot, lsn, suffix
        ))
    }

    /// A change in the transaction committed at `lsn`: `{system_identifier}/{slot}/{lsn}/{idx}`.
    #[inline]
    pub fn change_id(&self, lsn: Lsn, idx: u32) -> Uuid {
        self.event_id(lsn, format_args!("{idx}"))
    }

    /// Snapshot rows: `{system_identifier}/{slot}/snapshot/{lsn}/{idx}`, never equal to a
    /// change's id.
    #[inline]
    pub fn snapshot_id(&self, lsn: Lsn, idx: u32) -> Uuid {
        uuid_v5(format_args!(
            "{}/{}/snapshot/{}/{}",
            self.system_identifier, self.slot, lsn, idx
        ))
    }

    /// The NATS subject and CloudEvents type of each row op of a guarded table:
    /// `{subject_prefix}.{schema}.{table}.{op}` and `{type_prefix}.{past tense}`. Made once per
    /// relation; every event of the table and op shares them.
    pub(super) fn row_names(&self, schema: &str, table: &str, type_prefix: &str) -> Vec<(Op, Subject, Arc<str>)> {
        let stem = format!(
            "{}.{}.{}.",
            self.subject_prefix,
            subject_token(schema),
            subject_token(table)
        );
        ROW_OPS
            .iter()
            .map(|&op| {
                let subject = Subject::from(format!("{stem}{}", op.as_str()));
                (op, subject, format!("{type_prefix}.{}", past_tense(op)).into())
            })
            .collect()
    }

    /// A watermark: every guarded change committed before `lsn` is in the stream before it.
    pub fn watermark(&self, lsn: Lsn, now_unix_micros: i64) -> Draft {
        self.marker(Op::Watermark, lsn, now_unix_micros, br#"{"op":"watermark"}"#.to_vec())
    }

    /// A resync record: walguard starts over from a new slot at `lsn`; `data` says what the
    /// stream lacks.
    pub fn resync(&self, lsn: Lsn, now_unix_micros: i64, data: Vec<u8>) -> Draft {
        self.marker(Op::Resync, lsn, now_unix_micros, data)
    }

    fn marker(&self, op: Op, lsn: Lsn, now_unix_micros: i64, data: Vec<u8>) -> Draft {
        Draft {
            op,
            nats_subject: marker_subject(&self.subject_prefix, op.as_str()).into(),
            id: self.event_id(lsn, format_args!("{}", op.as_str())),
            ce_type: format!("walguard.{}", op.as_str()).into(),
            ce_subject: self.slot.clone(),
            time_micros: now_unix_micros,
            pglsn: lsn,
            pgxid: 0,
            pgtxidx: 1,
            end: Some(lsn),
            data,
            table: "_walguard".into(),
        }
    }

    /// The schema event of `schema` placed after event `after_idx` of the transaction or
    /// snapshot group at `lsn` (0: before its first), so its `(pglsn, pgtxidx)` is that of
    /// what precedes it in the stream and the order never goes back. Its id names the table
    /// and place, so a replay derives the same one.
    pub fn schema(&self, lsn: Lsn, after_idx: u32, snapshot: bool, time_micros: i64, schema: &TableSchema) -> Draft {
        let qualified = schema.qualified();
        let group = if snapshot { "snapshot" } else { "change" };
        Draft {
            op: Op::Schema,
            nats_subject: marker_subject(&self.subject_prefix, "schema").into(),
            id: self.event_id(lsn, format_args!("schema/{group}/{after_idx}/{qualified}")),
            ce_type: "walguard.schema".into(),
            ce_subject: qualified,
            time_micros,
            pglsn: lsn,
            pgxid: 0,
            pgtxidx: after_idx,
            end: None,
            data: schema.to_data(),
            table: "_walguard".into(),
        }
    }

    /// The checkpoint event of a tree of `size` messages (SPEC section 8), published after the
    /// event at `after` (the end of a group, `end`): it takes that event's place in the order,
    /// as a schema event does, and names the same group end, so a restart resumes after it.
    /// Its id names the size: the tree has one head per size.
    pub fn checkpoint(&self, after: Position, end: Lsn, time_micros: i64, size: u64, data: Vec<u8>) -> Draft {
        Draft {
            op: Op::Checkpoint,
            nats_subject: marker_subject(&self.subject_prefix, CHECKPOINT).into(),
            id: self.event_id(after.lsn, format_args!("checkpoint/{size}")),
            ce_type: "walguard.checkpoint".into(),
            ce_subject: self.slot.clone(),
            time_micros,
            pglsn: after.lsn,
            pgxid: 0,
            pgtxidx: after.idx,
            end: Some(end),
            data,
            table: "_walguard".into(),
        }
    }

    /// The progress event that closes the snapshot group read at `lsn`, as its event `idx`.
    /// The builder sets its `end` when it closes the group, as for any group's last event.
    pub(super) fn snapshot_progress(&self, lsn: Lsn, idx: u32, time_micros: i64, data: Vec<u8>) -> Draft {
        Draft {
            op: Op::SnapshotProgress,
            nats_subject: marker_subject(&self.subject_prefix, "snapshot").into(),
            id: self.snapshot_id(lsn, idx),
            ce_type: "walguard.snapshot.progress".into(),
            ce_subject: self.slot.clone(),
            time_micros,
            pglsn: lsn,
            pgxid: 0,
            pgtxidx: idx,
            end: None,
            data,
            table: "_walguard".into(),
        }
    }
}

/// The last word of a row event's CloudEvents type.
/// The last token of the checkpoints' subject (`{prefix}._walguard.checkpoint`).
pub const CHECKPOINT: &str = "checkpoint";

/// The NATS subject of walguard's own `kind` of message (watermark, resync, schema,
/// checkpoint, snapshot progress): `{prefix}._walguard.{kind}`, SPEC section 3.
pub fn marker_subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}._walguard.{kind}")
}

fn past_tense(op: Op) -> &'static str {
    match op {
        Op::Insert => "created",
        Op::Update => "updated",
        Op::Delete => "deleted",
        Op::Truncate => "truncated",
        Op::Watermark => "watermark",
        Op::Resync => "resync",
        Op::Snapshot => "snapshotted",
        Op::SnapshotProgress => "snapshot.progress",
        Op::Schema => "schema",
        Op::Checkpoint => "checkpoint",
    }
}

/// UUID v5 in the URL namespace over `name`, formatted on the stack (one per event).
fn uuid_v5(name: std::fmt::Arguments<'_>) -> Uuid {
    use std::io::Write;
    let mut buf = [0u8; 256];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if cursor.write_fmt(name).is_ok() {
        let n = cursor.position() as usize;
        return Uuid::new_v5(&Uuid::NAMESPACE_URL, &buf[..n]);
    }
    // Longer than any system identifier, slot name and LSN make: the general path.
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.to_string().as_bytes())
}

/// Encodes a schema or table name as one subject token: bytes outside `[A-Za-z0-9_-]` become
/// `%XX` (uppercase hex), so `.`, `*`, `>` and spaces can never split or widen a subject.
pub fn subject_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::draft::Position;

    #[test]
    fn subject_tokens() {
        assert_eq!(subject_token("customers"), "customers");
        assert_eq!(subject_token("Order-Lines_2"), "Order-Lines_2");
        assert_eq!(subject_token("a.b"), "a%2Eb");
        assert_eq!(subject_token("we ird*>"), "we%20ird%2A%3E");
        assert_eq!(subject_token("é"), "%C3%A9");
    }

    #[test]
    fn watermark_draft() {
        let naming = Naming {
            system_identifier: "7000".into(),
            slot: "s".into(),
            subject_prefix: "wg".into(),
        };
        let w = naming.watermark(Lsn(0x500), 0);
        assert_eq!(w.nats_subject.as_str(), "wg._walguard.watermark");
        assert_eq!(
            w.position(),
            Position {
                lsn: Lsn(0x500),
                idx: 0
            }
        );
        assert_eq!(w.end, Some(Lsn(0x500)));
    }
}
