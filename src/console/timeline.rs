//! An entity's timeline from its events, read by sequence: per event its time, op, actor,
//! signature state and each column's old and new value (the old value is the row as the
//! events before made it, so a DEFAULT replica identity's key-only `before` does not hide
//! what a column held). Also its downloads, as JSON and as CSV.

use serde_json::{Map, Value};

use crate::audit::Stored;
use crate::event::stored::{Data, StoredEvent};
use crate::verify::Problem;

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub column: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub sequence: u64,
    pub time: String,
    pub op: String,
    pub actor: Value,
    /// `signed`, `covered by a later signature`, or the verifier's problem at this sequence.
    pub signature: String,
    pub problem: Option<String>,
    pub changes: Vec<Change>,
}

/// The timeline of the events `messages` (one entity's, in stream order).
pub fn build(messages: &[Stored], problems: &[Problem]) -> Vec<Entry> {
    let mut row: Option<Map<String, Value>> = None;
    let mut entries = Vec::with_capacity(messages.len());
    for m in messages {
        let problem = problems
            .iter()
            .find(|p| p.sequence == m.sequence)
            .map(|p| p.reason.clone());
        let signature = match (&problem, &m.signature) {
            (Some(_), _) => "problem".to_owned(),
            (None, Some(_)) => "signed".to_owned(),
            (None, None) => "covered by a later signature".to_owned(),
        };
        let mut entry = Entry {
            sequence: m.sequence,
            time: String::new(),
            op: "unreadable".into(),
            actor: Value::Null,
            signature,
            problem,
            changes: Vec::new(),
        };
        match StoredEvent::parse(&m.payload) {
            Ok(StoredEvent {
                attributes,
                data: Data::Row(op, r),
            }) => {
                entry.time = attributes.time;
                entry.op = op.as_str().to_owned();
                entry.actor = r.actor.clone();
                let old = row.take().or(r.before.clone()).unwrap_or_default();
                let new = r.after.clone().map(|mut after| {
                    for col in &r.unchanged {
                        if let Some(v) = old.get(col) {
                            after.insert(col.clone(), v.clone());
                        }
                    }
                    after
                });
                entry.changes = changes(&old, new.as_ref());
                row = new;
            }
            Ok(other) => entry.op = other.data.op().as_str().to_owned(),
            Err(e) => entry.problem = entry.problem.or(Some(format!("not a walguard event: {e}"))),
        }
        entries.push(entry);
    }
    entries
}

/// Every column of either row, in the new row's order, then the old row's.
fn changes(old: &Map<String, Value>, new: Option<&Map<String, Value>>) -> Vec<Change> {
    let empty = Map::new();
    let new = new.unwrap_or(&empty);
    let mut columns: Vec<&String> = new.keys().collect();
    columns.extend(old.keys().filter(|k| !new.contains_key(*k)));
    columns
        .into_iter()
        .map(|c| Change {
            column: c.clone(),
            old: old.get(c).cloned(),
            new: new.get(c).cloned(),
        })
        .collect()
}

/// The timeline as one JSON document.
pub fn to_json(table: &str, key: &str, entries: &[Entry]) -> String {
    let events: Vec<Value> = entries
        .iter()
        .map(|e| {
            let changes: Vec<Value> = e
                .changes
                .iter()
                .map(|c| serde_json::json!({"column": c.column, "old": c.old, "new": c.new}))
                .collect();
            serde_json::json!({
                "sequence": e.sequence, "time": e.time, "op": e.op, "actor": e.actor,
                "signature": e.signature, "problem": e.problem, "changes": changes,
            })
        })
        .collect();
    let doc = serde_json::json!({"table": table, "key": key, "events": events});
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The timeline as CSV (RFC 4180): one line per column of each event.
pub fn to_csv(entries: &[Entry]) -> String {
    let mut out = String::from("sequence,time,op,actor,signature,column,old,new\r\n");
    let show = |v: &Option<Value>| v.as_ref().map(json_text).unwrap_or_default();
    for e in entries {
        let actor = json_text(&e.actor);
        let lead = [
            e.sequence.to_string(),
            e.time.clone(),
            e.op.clone(),
            actor,
            e.signature.clone(),
        ];
        if e.changes.is_empty() {
            let fields: Vec<String> = lead.iter().cloned().chain(["".into(), "".into(), "".into()]).collect();
            push_record(&mut out, &fields);
        }
        for c in &e.changes {
            let fields: Vec<String> = lead
                .iter()
                .cloned()
                .chain([c.column.clone(), show(&c.old), show(&c.new)])
                .collect();
            push_record(&mut out, &fields);
        }
    }
    out
}

/// A value as people read it: strings without quotes, the rest as JSON.
pub fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn push_record(out: &mut String, fields: &[String]) {
    let quoted: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&quoted.join(","));
    out.push_str("\r\n");
}

/// A CSV field, quoted when it must be; a leading `=`, `+`, `-` or `@` is prefixed with `'`
/// so that a spreadsheet never runs a row value as a formula.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@']) && f.parse::<f64>().is_err() {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::index::tests::{message, row};
    use serde_json::json;

    #[test]
    fn old_values_come_from_the_row_before() {
        let msgs = [
            message(
                2,
                "public.customers/1",
                row("insert", 1, Value::Null, json!({"id": 1, "name": "a"})),
            ),
            // DEFAULT replica identity: `before` holds the key only.
            message(
                4,
                "public.customers/1",
                row("update", 1, json!({"id": 1}), json!({"id": 1, "name": "b"})),
            ),
            message(5, "public.customers/1", row("delete", 1, json!({"id": 1}), Value::Null)),
        ];
        let problems = [Problem {
            sequence: 4,
            reason: "signature does not verify".into(),
        }];
        let t = build(&msgs, &problems);
        assert_eq!(t.len(), 3);
        let name = |e: &Entry| e.changes.iter().find(|c| c.column == "name").cloned().unwrap();
        assert_eq!(
            name(&t[0]),
            Change {
                column: "name".into(),
                old: None,
                new: Some(json!("a"))
            }
        );
        assert_eq!(
            name(&t[1]),
            Change {
                column: "name".into(),
                old: Some(json!("a")),
                new: Some(json!("b"))
            }
        );
        assert_eq!(
            name(&t[2]),
            Change {
                column: "name".into(),
                old: Some(json!("b")),
                new: None
            }
        );
        assert_eq!(t[1].signature, "problem");
        assert_eq!(t[1].problem.as_deref(), Some("signature does not verify"));
        assert_eq!(t[0].signature, "covered by a later signature");
        assert_eq!(t[0].actor, json!({"user": "alice"}));
        assert_eq!(t[2].op, "delete");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas_json_keeps_values() {
        let msgs = [message(
            2,
            "public.customers/1",
            row(
                "insert",
                1,
                Value::Null,
                json!({"id": 1, "name": "a, \"b\"\nc", "f": "=1+2"}),
            ),
        )];
        let t = build(&msgs, &[]);
        let csv = to_csv(&t);
        assert!(csv.starts_with("sequence,time,op,actor,signature,column,old,new\r\n"));
        assert!(csv.contains(",name,,\"a, \"\"b\"\"\nc\"\r\n"), "{csv}");
        assert!(csv.contains(",f,,'=1+2\r\n"), "{csv}");
        assert!(csv.contains(",id,,1\r\n"), "{csv}");
        let doc: Value = serde_json::from_str(&to_json("public.customers", "1", &t)).unwrap();
        let changes = doc["events"][0]["changes"].as_array().unwrap();
        let name = changes.iter().find(|c| c["column"] == "name").unwrap();
        assert_eq!(name["new"], json!("a, \"b\"\nc"));
        assert_eq!(doc["events"][0]["sequence"], 2);
        assert_eq!(doc["key"], "1");
    }
}
