//! Rows COPYed straight into their target table: each event's JSON values turned into COPY's
//! text format by walguard, so the server parses and writes every row once, as `COPY FROM` a
//! file does.
//!
//! Only where that is exact. A table qualifies when every column has a built-in scalar type
//! (no arrays, no user-defined types: their JSON is the text PostgreSQL printed, `json` and
//! `jsonb` the value itself, `bytea` base64) and its entity key columns are integers or text,
//! whose JSON is canonical. Its rows stay on this path while the events since its last
//! truncate are inserts and snapshot rows with every column, under keys that only grow (in
//! an order where two different JSON texts never compare equal): then no key can come twice
//! and no row replaces another, so the rows are the table. Anything else (an update, a
//! delete, an unchanged column, a key not above the ones before it, a new shape) sends the
//! table to the staging load, its rows so far moved there (`move_back_sql`).
//!
//! A JSON string becomes the text it holds, a number or `true`/`false` its own text,
//! `json`/`jsonb` the value's bytes, `bytea` the hex form of its base64: the same text
//! `json_populate_record`, which the staging load uses, gives the column's input function.

use std::borrow::Cow;

use base64::Engine;
use bytes::{BufMut, BytesMut};
use serde_json::value::RawValue;

use crate::event::borrowed::{RowRef, Text};
use crate::event::schema::TableSchema;
use crate::source::conn::{quote_ident, quote_literal};

/// How a column's JSON value becomes COPY text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    /// The string's text, or a number's or boolean's own.
    Scalar,
    /// The JSON value's bytes (`json`, `jsonb`).
    Json,
    /// A base64 string, written as `\x` hex.
    Bytea,
}

/// How a key column's value orders (see the module text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Int,
    Text,
}

/// A table loaded directly: how its rows become COPY text.
#[derive(Debug)]
pub struct Plan {
    columns: Vec<(String, Conv)>,
    key: Vec<(String, KeyKind)>,
    /// `COPY target (columns) FROM STDIN`.
    pub copy_sql: String,
    /// The greatest key so far (since the last truncate), encoded to compare as bytes.
    max_key: Option<Vec<u8>>,
    key_buf: Vec<u8>,
}

/// Why a row does not go in directly.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The row is fine, but not for this path: the table goes to the staging load.
    NotDirect,
    /// The row cannot be loaded at all (named, with its column).
    Bad(String),
}

impl Plan {
    /// The plan for a table of shape `t` restored as `target`, `None` when it does not
    /// qualify.
    pub fn new(t: &TableSchema, target: &str) -> Option<Plan> {
        // json_build_object in `move_back_sql` takes at most 100 arguments.
        if t.key.is_empty() || t.key.len() > 50 || !t.types.is_empty() {
            return None;
        }
        let columns = t
            .columns
            .iter()
            .map(|c| conv(&c.type_name).map(|k| (c.name.clone(), k)))
            .collect::<Option<Vec<_>>>()?;
        let key = t
            .key
            .iter()
            .map(|k| {
                let c = t.column(k)?;
                key_kind(&c.type_name).map(|kind| (k.clone(), kind))
            })
            .collect::<Option<Vec<_>>>()?;
        let names: Vec<String> = columns.iter().map(|(n, _)| quote_ident(n)).collect();
        Some(Plan {
            copy_sql: format!("COPY {target} ({}) FROM STDIN", names.join(", ")),
            columns,
            key,
            max_key: None,
            key_buf: Vec::new(),
        })
    }

    /// A truncate: keys start over.
    pub fn truncated(&mut self) {
        self.max_key = None;
    }

    /// Appends `row` (an insert or snapshot row with every column) to `out` as one COPY line,
    /// or says why not; `out` is unchanged then.
    pub fn push(&mut self, row: &RowRef<'_>, out: &mut BytesMut) -> Result<(), Refused> {
        if !row.unchanged.is_empty() {
            return Err(Refused::NotDirect);
        }
        self.key_buf.clear();
        for (i, (name, kind)) in self.key.iter().enumerate() {
            let value = row.key.get(name, i).ok_or(Refused::NotDirect)?;
            if !encode_key(*kind, value.get(), &mut self.key_buf) {
                return Err(Refused::NotDirect);
            }
        }
        if self.max_key.as_ref().is_some_and(|max| self.key_buf <= *max) {
            return Err(Refused::NotDirect);
        }
        let after = row.after.as_ref().ok_or(Refused::NotDirect)?;
        let start = out.len();
        for (i, (name, conv)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.put_u8(b'\t');
            }
            let written = match after.get(name, i) {
                None => {
                    out.put_slice(b"\\N");
                    Ok(())
                }
                Some(value) => push_value(*conv, value, out),
            };
            if let Err(why) = written {
                out.truncate(start);
                return Err(Refused::Bad(format!("column {name:?}: {why}")));
            }
        }
        out.put_u8(b'\n');
        match &mut self.max_key {
            Some(max) => std::mem::swap(max, &mut self.key_buf),
            None => self.max_key = Some(std::mem::take(&mut self.key_buf)),
        }
        Ok(())
    }
}

/// The conversion for a column of type `type_name` (`format_type`'s text), `None` for a
/// type this path does not take: arrays and user-defined types (schema-qualified).
fn conv(type_name: &str) -> Option<Conv> {
    if type_name.ends_with(']') || (type_name.contains('.') || type_name.starts_with('"')) && type_name != "\"char\"" {
        return None;
    }
    Some(match type_name {
        "json" | "jsonb" => Conv::Json,
        "bytea" => Conv::Bytea,
        _ => Conv::Scalar,
    })
}

fn key_kind(type_name: &str) -> Option<KeyKind> {
    match type_name {
        "smallint" | "integer" | "bigint" => Some(KeyKind::Int),
        "text" | "name" | "uuid" => Some(KeyKind::Text),
        t if t.starts_with("character varying") || t.starts_with("character(") || t == "character" => {
            Some(KeyKind::Text)
        }
        _ => None,
    }
}

/// A key value encoded so that byte order is an order of the values in which two different
/// values never compare equal: an integer as 16 bytes, sign flipped, big-endian; text as its
/// JSON text (which holds no zero byte) and a zero byte.
fn encode_key(kind: KeyKind, json: &str, out: &mut Vec<u8>) -> bool {
    match kind {
        KeyKind::Int => match json.parse::<i128>() {
            Ok(n) => {
                out.extend_from_slice(&((n as u128) ^ (1 << 127)).to_be_bytes());
                true
            }
            Err(_) => false,
        },
        KeyKind::Text => {
            if !json.starts_with('"') {
                return false;
            }
            out.extend_from_slice(json.as_bytes());
            out.push(0);
            true
        }
    }
}

fn string_text(value: &RawValue) -> Result<Cow<'_, str>, String> {
    serde_json::from_str::<Text<'_>>(value.get())
        .map(|t| t.0)
        .map_err(|e| format!("not a JSON string ({e})"))
}

/// One value as a COPY text field.
fn push_value(conv: Conv, value: &RawValue, out: &mut BytesMut) -> Result<(), String> {
    let json = value.get();
    if json == "null" {
        out.put_slice(b"\\N");
        return Ok(());
    }
    match conv {
        Conv::Json => copy_text(json.as_bytes(), out),
        Conv::Bytea => {
            let text = string_text(value)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("bytea is not standard base64 ({e})"))?;
            // `\x` hex, its backslash escaped for COPY.
            out.put_slice(b"\\\\x");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in bytes {
                out.put_u8(HEX[(b >> 4) as usize]);
                out.put_u8(HEX[(b & 15) as usize]);
            }
        }
        Conv::Scalar => match json.as_bytes()[0] {
            b'"' => copy_text(string_text(value)?.as_bytes(), out),
            b'{' | b'[' => {
                return Err(format!(
                    "a JSON {} where its type takes a scalar",
                    if json.starts_with('{') { "object" } else { "array" }
                ))
            }
            // A number, true or false: its own text.
            _ => out.put_slice(json.as_bytes()),
        },
    }
    Ok(())
}

/// `text` as a field of COPY's text format.
pub fn copy_text(bytes: &[u8], out: &mut BytesMut) {
    let mut from = 0;
    for (i, b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.put_slice(&bytes[from..i]);
        out.put_slice(escaped);
        from = i + 1;
    }
    out.put_slice(&bytes[from..]);
}

impl Plan {
    /// The statements that move a directly loaded table's rows to the staging table as
    /// snapshot rows at sequence `seq` (after every truncate of it, before every event staged
    /// after them) and drop it: each row's key and values in the JSON its events carried
    /// (integers and text as `to_jsonb` prints them, `bytea` as base64), which the staging
    /// load reads back to the same values.
    pub fn move_back_sql(&self, stage: &str, table: &str, seq: u64, target: &str) -> String {
        let key: Vec<String> = self
            .key
            .iter()
            .map(|(k, _)| format!("{}, to_jsonb(t.{})", quote_literal(k), quote_ident(k)))
            .collect();
        let values: Vec<String> = self
            .columns
            .iter()
            .map(|(name, conv)| {
                let col = format!("t.{}", quote_ident(name));
                let value = match conv {
                    Conv::Bytea => format!("translate(encode({col}, 'base64'), E'\\n', '')"),
                    Conv::Scalar | Conv::Json => col,
                };
                format!("{value} AS {}", quote_ident(name))
            })
            .collect();
        format!(
            "INSERT INTO {stage} (seq, tbl, op, key, before, after, unchanged) \
             SELECT {seq}, {}, 'snapshot', jsonb_build_object({}), NULL, (SELECT row_to_json(r) FROM (SELECT {}) r), NULL \
             FROM {target} t; DROP TABLE {target}",
            quote_literal(table),
            key.join(", "),
            values.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::borrowed::RawColumns;
    use crate::event::schema::{ColumnSchema, Identity, SchemaOp};

    fn schema(columns: &[(&str, &str)], key: &[&str]) -> TableSchema {
        TableSchema {
            op: SchemaOp::Schema,
            schema: "public".into(),
            table: "t".into(),
            columns: columns
                .iter()
                .map(|(n, t)| ColumnSchema {
                    name: n.to_string(),
                    type_name: t.to_string(),
                    not_null: false,
                    generated: false,
                })
                .collect(),
            key: key.iter().map(|k| k.to_string()).collect(),
            primary_key: key.iter().map(|k| k.to_string()).collect(),
            replica_identity: Identity::Default,
            types: Vec::new(),
        }
    }

    fn columns(json: &str) -> RawColumns<'_> {
        serde_json::from_str(json).unwrap()
    }

    fn row<'a>(key: &'a str, after: &'a str) -> RowRef<'a> {
        RowRef {
            schema: "public".into(),
            table: "t".into(),
            key: columns(key),
            before: None,
            after: Some(columns(after)),
            unchanged: Vec::new(),
        }
    }

    #[test]
    fn only_built_in_scalars_and_integer_or_text_keys_qualify() {
        let ok = schema(&[("id", "bigint"), ("v", "numeric(12,2)"), ("c", "\"char\"")], &["id"]);
        assert!(Plan::new(&ok, "x.t").is_some());
        for (columns, key) in [
            (vec![("id", "bigint"), ("tags", "text[]")], vec!["id"]),
            (vec![("id", "bigint"), ("mood", "public.mood")], vec!["id"]),
            (vec![("id", "bigint"), ("m", "\"Odd\".\"Mood\"")], vec!["id"]),
            (vec![("id", "numeric")], vec!["id"]),
            (vec![("at", "timestamp with time zone")], vec!["at"]),
            (vec![("id", "bigint")], vec![]),
        ] {
            assert!(
                Plan::new(&schema(&columns, &key), "x.t").is_none(),
                "{columns:?} {key:?}"
            );
        }
        let p = Plan::new(&schema(&[("id", "integer"), ("Odd name", "text")], &["id"]), "x.t").unwrap();
        assert_eq!(p.copy_sql, r#"COPY x.t ("id", "Odd name") FROM STDIN"#);
    }

    #[test]
    fn values_become_the_text_postgresql_printed() {
        let t = schema(
            &[
                ("id", "bigint"),
                ("f", "double precision"),
                ("j", "json"),
                ("b", "bytea"),
                ("s", "text"),
                ("n", "numeric"),
                ("ok", "boolean"),
                ("none", "text"),
            ],
            &["id"],
        );
        let mut p = Plan::new(&t, "x.t").unwrap();
        let mut out = BytesMut::new();
        let after = r#"{"id":1,"f":-1.5e-300,"j":{"b":2.50,"a":"x\ty"},"b":"AAH/","s":"a\\b\tc\nd\"é","n":"12.30","ok":true,"none":null}"#;
        p.push(&row(r#"{"id":1}"#, after), &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "1\t-1.5e-300\t{\"b\":2.50,\"a\":\"x\\\\ty\"}\t\\\\x0001ff\ta\\\\b\\tc\\nd\"é\t12.30\ttrue\t\\N\n"
        );
        // A column the event does not hold is NULL.
        out.clear();
        p.push(&row(r#"{"id":2}"#, r#"{"id":2,"s":""}"#), &mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2\t\\N\t\\N\t\\N\t\t\\N\t\\N\t\\N\n"
        );
        // A value its type cannot take is named, and nothing is written.
        out.clear();
        let bad = p.push(&row(r#"{"id":3}"#, r#"{"id":3,"b":"not base64!"}"#), &mut out);
        assert!(
            matches!(bad, Err(Refused::Bad(ref why)) if why.contains("\"b\"") && why.contains("base64")),
            "{bad:?}"
        );
        let bad = p.push(&row(r#"{"id":3}"#, r#"{"id":3,"s":[1]}"#), &mut out);
        assert!(
            matches!(bad, Err(Refused::Bad(ref why)) if why.contains("array")),
            "{bad:?}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn keys_must_grow_until_a_truncate() {
        let t = schema(&[("a", "integer"), ("b", "text")], &["a", "b"]);
        let mut p = Plan::new(&t, "x.t").unwrap();
        let mut out = BytesMut::new();
        let mut push = |p: &mut Plan, key: &str| p.push(&row(key, key), &mut out);
        assert_eq!(push(&mut p, r#"{"a":-5,"b":"z"}"#), Ok(()));
        assert_eq!(push(&mut p, r#"{"a":-5,"b":"za"}"#), Ok(()));
        assert_eq!(push(&mut p, r#"{"a":3,"b":"a"}"#), Ok(()));
        assert_eq!(push(&mut p, r#"{"a":3,"b":"a"}"#), Err(Refused::NotDirect));
        assert_eq!(push(&mut p, r#"{"a":2,"b":"q"}"#), Err(Refused::NotDirect));
        assert_eq!(push(&mut p, r#"{"a":10,"b":"a"}"#), Ok(()));
        p.truncated();
        assert_eq!(push(&mut p, r#"{"a":3,"b":"a"}"#), Ok(()));
        let mut unchanged = row(r#"{"a":4,"b":"a"}"#, r#"{"a":4}"#);
        unchanged.unchanged = vec!["b".into()];
        assert_eq!(p.push(&unchanged, &mut out), Err(Refused::NotDirect));
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = BytesMut::new();
        copy_text(b"a\\b\tc\nd\re", &mut out);
        assert_eq!(&out[..], b"a\\\\b\\tc\\nd\\re");
    }
}
