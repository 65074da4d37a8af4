//! The shape of a guarded table as a schema event publishes it (SPEC section 7): its columns
//! with their types as `format_type` prints them schema-qualified, NOT NULL, stored generated
//! columns, the entity key, the primary key, the replica identity, and every user-defined type
//! the columns use, each listed before the types that use it. Enough to create the table on an
//! empty server with nothing but the log. Pure: `source::schema` reads it from the catalog.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::decode::pgoutput::ReplicaIdentity;

/// `data` of a `walguard.schema` event. Field order is the order of the JSON object, so the
/// payload bytes (and the chain over them) are the same for the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Always `"schema"` (absent when read through `stored::Data`, which takes the tag).
    #[serde(default)]
    pub op: SchemaOp,
    pub schema: String,
    pub table: String,
    /// In the order pgoutput sends them.
    pub columns: Vec<ColumnSchema>,
    /// The entity key: the columns of `key` in every row event.
    pub key: Vec<String>,
    /// The table's primary key, `[]` when it has none.
    pub primary_key: Vec<String>,
    pub replica_identity: Identity,
    /// Every user-defined type the columns use, directly or through arrays, domains and
    /// composites, dependencies first.
    pub types: Vec<UserType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaOp {
    #[default]
    Schema,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    pub name: String,
    /// `format_type(atttypid, atttypmod)` with an empty `search_path`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
    /// Only on stored generated columns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated: bool,
}

/// The replica identity as schema events spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    Default,
    Full,
    Index,
    Nothing,
}

impl From<ReplicaIdentity> for Identity {
    fn from(r: ReplicaIdentity) -> Identity {
        match r {
            ReplicaIdentity::Default => Identity::Default,
            ReplicaIdentity::Full => Identity::Full,
            ReplicaIdentity::Index => Identity::Index,
            ReplicaIdentity::Nothing => Identity::Nothing,
        }
    }
}

/// A user-defined type: its schema-qualified name and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserType {
    pub name: String,
    #[serde(flatten)]
    pub def: TypeDef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TypeDef {
    /// Labels in sort order (`enumsortorder`).
    Enum {
        labels: Vec<String>,
    },
    /// `checks` as `pg_get_constraintdef` prints them, in constraint name order.
    Domain {
        base: String,
        not_null: bool,
        checks: Vec<String>,
    },
    Composite {
        attributes: Vec<Attribute>,
    },
    /// A range over `subtype` (not in SPEC's example; needed to recreate such a column).
    Range {
        subtype: String,
    },
    /// A type that belongs to an extension: restoring needs the extension.
    Extension {
        extension: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

impl TableSchema {
    /// `schema.table`, the schema event's CloudEvents `subject`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The `data` bytes: compact JSON in field order.
    pub fn to_data(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TableSchema is plain strings, booleans and lists")
    }

    /// Reads a schema event's `data`.
    pub fn parse(data: &[u8]) -> Result<TableSchema, String> {
        serde_json::from_slice(data).map_err(|e| format!("a walguard.schema event's data is not a table schema ({e})"))
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns whose values hold labels of an enum this schema lists: of the enum itself,
    /// of a domain over it, arrays of either, and composites with such attributes (at any
    /// depth). Worked out once per schema, so rows of a table without such columns are never
    /// looked at. (A range over an enum is not looked into.)
    pub fn enum_columns(&self) -> Vec<EnumColumn> {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(index, c)| {
                Some(EnumColumn {
                    index,
                    labels: self.labels_in(&c.type_name, 0)?,
                })
            })
            .collect()
    }

    /// Where values of `type_name` hold enum labels, and the labels known for each enum;
    /// `None` when they hold none.
    fn labels_in(&self, type_name: &str, depth: usize) -> Option<Labels> {
        // Domains over domains and composites in composites are allowed, cycles are not; the
        // bound is for a log that lies.
        if depth > 8 {
            return None;
        }
        if let Some(element) = type_name.strip_suffix("[]") {
            return Some(Labels::Array(Box::new(self.labels_in(element, depth + 1)?)));
        }
        match &self.types.iter().find(|t| t.name == type_name)?.def {
            TypeDef::Enum { labels } => Some(Labels::Enum(labels.iter().cloned().collect())),
            TypeDef::Domain { base, .. } => self.labels_in(base, depth + 1),
            TypeDef::Composite { attributes } => {
                let inner: Vec<(usize, Labels)> = attributes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| Some((i, self.labels_in(&a.type_name, depth + 1)?)))
                    .collect();
                (!inner.is_empty()).then_some(Labels::Composite(inner))
            }
            _ => None,
        }
    }
}

/// A column whose values hold enum labels, and the labels known for it. pgoutput sends no
/// Relation message when `ALTER TYPE ... ADD VALUE` gives an enum a label, so a row holding a
/// label not known here is how a schema event that lacks it is found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumColumn {
    /// The column's position in the row, as in the schema's `columns`.
    pub index: usize,
    labels: Labels,
}

/// Where a value holds enum labels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Labels {
    /// The value is a label of an enum with these labels known.
    Enum(HashSet<String>),
    /// The value is an array (of any dimension) whose elements hold labels so.
    Array(Box<Labels>),
    /// The value is a composite whose attributes at these positions hold labels so.
    Composite(Vec<(usize, Labels)>),
}

impl EnumColumn {
    /// Whether `text` (the column's value as PostgreSQL prints it) holds a label not known so
    /// far; such labels are known from now on. A value that does not read as the array or
    /// composite it should be is left to the value mapping to refuse.
    pub fn learn(&mut self, text: &[u8]) -> bool {
        self.labels.learn(text)
    }
}

impl Labels {
    fn learn(&mut self, text: &[u8]) -> bool {
        match self {
            Labels::Enum(known) => match std::str::from_utf8(text) {
                Ok(label) if !known.contains(label) => known.insert(label.to_owned()),
                _ => false,
            },
            Labels::Array(element) => {
                let kind = super::value::ValueKind::Array {
                    element: Box::new(super::value::ValueKind::Text),
                    delimiter: b',',
                };
                let mut json = Vec::with_capacity(text.len() + 8);
                if kind.write_json(text, &mut json).is_err() {
                    return false;
                }
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else {
                    return false;
                };
                let mut new = false;
                let mut pending = vec![&value];
                while let Some(v) = pending.pop() {
                    match v {
                        serde_json::Value::Array(items) => pending.extend(items),
                        serde_json::Value::String(item) => new |= element.learn(item.as_bytes()),
                        _ => {}
                    }
                }
                new
            }
            Labels::Composite(attributes) => {
                let Some(fields) = record_fields(text) else {
                    return false;
                };
                let mut new = false;
                for (i, labels) in attributes {
                    if let Some(Some(field)) = fields.get(*i) {
                        new |= labels.learn(field);
                    }
                }
                new
            }
        }
    }
}

/// The fields of a composite value as `record_out` prints it, `(a,"b c",,"")`: `None` for a
/// NULL (nothing between the commas), quotes and backslashes undone as `record_in` reads
/// them. `None` when `text` is not such a value.
fn record_fields(text: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let inner = text.strip_prefix(b"(")?.strip_suffix(b")")?;
    let (mut fields, mut field) = (Vec::new(), Vec::new());
    let (mut quoted, mut in_quotes) = (false, false);
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' if in_quotes && bytes.as_slice().first() == Some(&b'"') => {
                bytes.next();
                field.push(b'"');
            }
            b'"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            b'\\' => field.push(*bytes.next()?),
            b',' if !in_quotes => {
                fields.push((quoted || !field.is_empty()).then(|| std::mem::take(&mut field)));
                quoted = false;
            }
            _ => field.push(b),
        }
    }
    if in_quotes {
        return None;
    }
    fields.push((quoted || !field.is_empty()).then_some(field));
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC section 7's example, byte for byte after whitespace is removed.
    const SPEC_EXAMPLE: &str = r#"{"op":"schema","schema":"public","table":"customers",
 "columns":[{"name":"id","type":"bigint","not_null":true},
            {"name":"balance","type":"numeric(12,2)","not_null":true},
            {"name":"plan","type":"public.plan","not_null":false},
            {"name":"tags","type":"text[]","not_null":false},
            {"name":"total","type":"numeric","not_null":false,"generated":true}],
 "key":["id"],"primary_key":["id"],"replica_identity":"default",
 "types":[{"name":"public.plan","kind":"enum","labels":["free","pro"]},
          {"name":"public.positive","kind":"domain","base":"integer","not_null":false,
           "checks":["CHECK ((VALUE > 0))"]},
          {"name":"public.address","kind":"composite",
           "attributes":[{"name":"street","type":"text"},{"name":"zip","type":"character varying(10)"}]},
          {"name":"public.citext","kind":"extension","extension":"citext"}]}"#;

    fn compact(s: &str) -> String {
        // The example has no spaces inside strings except in the CHECK clause.
        let mut out = String::new();
        let mut in_string = false;
        for c in s.chars() {
            if c == '"' {
                in_string = !in_string;
            }
            if in_string || !c.is_whitespace() {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn the_spec_example_reads_and_writes_back_byte_for_byte() {
        let schema = TableSchema::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(schema.qualified(), "public.customers");
        assert_eq!(schema.replica_identity, Identity::Default);
        assert!(schema.column("total").unwrap().generated);
        assert!(!schema.column("id").unwrap().generated);
        assert_eq!(
            schema.types[1].def,
            TypeDef::Domain {
                base: "integer".into(),
                not_null: false,
                checks: vec!["CHECK ((VALUE > 0))".into()]
            }
        );
        assert_eq!(String::from_utf8(schema.to_data()).unwrap(), compact(SPEC_EXAMPLE));
    }

    #[test]
    fn enum_columns_are_found_through_arrays_and_domains_and_learn_new_labels() {
        let schema = TableSchema::parse(
            br#"{"op":"schema","schema":"public","table":"t","columns":[
                {"name":"id","type":"integer","not_null":true},
                {"name":"m","type":"public.mood","not_null":false},
                {"name":"ms","type":"public.mood[]","not_null":false},
                {"name":"d","type":"public.dmood","not_null":false},
                {"name":"ds","type":"public.dmoods","not_null":false},
                {"name":"a","type":"public.address","not_null":false},
                {"name":"p","type":"public.positive","not_null":false}],
             "key":["id"],"primary_key":["id"],"replica_identity":"default",
             "types":[{"name":"public.mood","kind":"enum","labels":["sad","ok","a b"]},
                      {"name":"public.dmood","kind":"domain","base":"public.mood","not_null":false,"checks":[]},
                      {"name":"public.dmoods","kind":"domain","base":"public.dmood[]","not_null":false,"checks":[]},
                      {"name":"public.address","kind":"composite","attributes":[{"name":"m","type":"public.mood"}]},
                      {"name":"public.positive","kind":"domain","base":"integer","not_null":false,"checks":[]}]}"#,
        )
        .unwrap();
        let mut cols = schema.enum_columns();
        let found: Vec<usize> = cols.iter().map(|c| c.index).collect();
        assert_eq!(found, [1, 2, 3, 4, 5]);
        let [m, ms, d, ds, a] = &mut cols[..] else {
            unreachable!()
        };
        assert!(!m.learn(b"ok"));
        assert!(m.learn(b"happy"));
        // Known from now on.
        assert!(!m.learn(b"happy"));
        assert!(!ms.learn(br#"{sad,"a b",NULL}"#));
        assert!(ms.learn(br#"{sad,"new, one"}"#));
        assert!(!ms.learn(br#"{"new, one"}"#));
        assert!(!d.learn(b"sad"));
        assert!(d.learn(b"glad"));
        assert!(!ds.learn(b"{{ok,sad},{sad,ok}}"));
        assert!(ds.learn(b"{{ok,sad},{sad,meh}}"));
        // Not an array: left to the value mapping.
        assert!(!ds.learn(b"{unclosed"));
        // A composite's enum attribute, quoted as record_out quotes it, and NULL.
        assert!(!a.learn(b"(ok)"));
        assert!(!a.learn(b"()"));
        assert!(!a.learn(br#"("a b")"#));
        assert!(a.learn(br#"("x ""y"" \\ z")"#));
        assert!(!a.learn(br#"("x ""y"" \\ z")"#));
        // Not a composite: left to the value mapping.
        assert!(!a.learn(b"(\"unclosed)"));
        assert!(!a.learn(b"glad"));
        assert!(schema_without_enums().enum_columns().is_empty());
    }

    /// Composites holding an enum directly, in an inner composite and in an array attribute,
    /// in an array of them; the values as PostgreSQL 15 printed them.
    #[test]
    fn enum_labels_are_found_in_composites_as_record_out_prints_them() {
        const ARRAY: &[u8] = br#"{"(\"hi, there\",ok,\"(\"\"a b\"\")\",\"{sad,\"\"a b\"\"}\")","(,,\"(\"\"x \"\"\"\"y\"\"\"\" \\\\\\\\ z\"\")\",)"}"#;
        let columns = |labels: &[&str]| {
            let labels = serde_json::to_string(labels).unwrap();
            let schema = TableSchema::parse(
                format!(
                    r#"{{"op":"schema","schema":"public","table":"t","columns":[
                    {{"name":"id","type":"integer","not_null":true}},
                    {{"name":"v","type":"public.wv","not_null":false}},
                    {{"name":"vs","type":"public.wv[]","not_null":false}}],
                 "key":["id"],"primary_key":["id"],"replica_identity":"default",
                 "types":[{{"name":"public.wm","kind":"enum","labels":{labels}}},
                          {{"name":"public.wa","kind":"composite","attributes":[{{"name":"m","type":"public.wm"}}]}},
                          {{"name":"public.wv","kind":"composite","attributes":[
                            {{"name":"note","type":"text"}},{{"name":"m","type":"public.wm"}},
                            {{"name":"inner_","type":"public.wa"}},{{"name":"ms","type":"public.wm[]"}}]}}]}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            let mut cols = schema.enum_columns();
            assert_eq!(cols.iter().map(|c| c.index).collect::<Vec<_>>(), [1, 2]);
            let vs = cols.pop().unwrap();
            (cols.pop().unwrap(), vs)
        };
        let all = ["sad", "ok", "a b", r#"x "y" \ z"#];
        let (mut v, mut vs) = columns(&all);
        assert!(!vs.learn(ARRAY));
        assert!(!v.learn(br#"("",sad,,{})"#));
        assert!(!v.learn(b"(,,,)"));
        // Each label missing in turn is found where it sits: in the inner composite, in the
        // array attribute, directly.
        for missing in all.iter().skip(1) {
            let known: Vec<&str> = all.iter().copied().filter(|l| l != missing).collect();
            let (_, mut vs) = columns(&known);
            assert!(vs.learn(ARRAY), "{missing}");
            assert!(!vs.learn(ARRAY), "{missing} is known from now on");
        }
        let (mut v, _) = columns(&["ok"]);
        assert!(v.learn(br#"("",sad,,{})"#));
        assert_eq!(
            record_fields(br#"("",sad,,{})"#),
            Some(vec![Some(vec![]), Some(b"sad".to_vec()), None, Some(b"{}".to_vec())])
        );
        assert_eq!(
            record_fields(br#"("a""b\\c,")"#),
            Some(vec![Some(br#"a"b\c,"#.to_vec())])
        );
        assert_eq!(record_fields(b"(\"open)"), None);
        assert_eq!(record_fields(b"no parens"), None);
    }

    fn schema_without_enums() -> TableSchema {
        TableSchema::parse(
            compact(SPEC_EXAMPLE)
                .replace("public.plan\",\"not_null", "text\",\"not_null")
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let extra = compact(SPEC_EXAMPLE).replacen("\"key\":", "\"keys\":[],\"key\":", 1);
        assert!(TableSchema::parse(extra.as_bytes()).is_err());
        let kind = compact(SPEC_EXAMPLE).replace("\"kind\":\"enum\"", "\"kind\":\"set\"");
        assert!(TableSchema::parse(kind.as_bytes()).is_err());
        assert!(TableSchema::parse(b"{\"op\":\"insert\"}").is_err());
    }
}
