//! The shape of a guarded table as a schema event publishes it (SPEC section 7): its columns
//! with their types as `format_type` prints them schema-qualified, NOT NULL, stored generated
//! columns, the entity key, the primary key, the replica identity, and every user-defined type
//! the columns use, each listed before the types that use it. Enough to create the table on an
//! empty server with nothing but the log. Pure: `source::schema` reads it from the catalog.

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
    fn unknown_fields_and_kinds_are_refused() {
        let extra = compact(SPEC_EXAMPLE).replacen("\"key\":", "\"keys\":[],\"key\":", 1);
        assert!(TableSchema::parse(extra.as_bytes()).is_err());
        let kind = compact(SPEC_EXAMPLE).replace("\"kind\":\"enum\"", "\"kind\":\"set\"");
        assert!(TableSchema::parse(kind.as_bytes()).is_err());
        assert!(TableSchema::parse(b"{\"op\":\"insert\"}").is_err());
    }
}
