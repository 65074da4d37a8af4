//! The relation shape cache: what every row of a relation is built from, worked out once when
//! its Relation message (or, for snapshots, the catalog's) arrives rather than per row.
//!
//! A guarded table is configured as a `TableSpec`; its `Shape` adds what the stream says:
//! the columns with their value mapping and hashing, the positions of the entity key (found
//! by name, or by the replica identity after a primary key column was renamed), the part of
//! `data` that depends only on the relation, and the subject and CloudEvents type of each
//! row op. A relation that is not guarded keeps a `Shape` without a spec, so its changes are
//! recognised and passed over. (`schema` is something else: the table's definition as schema
//! events publish it, read from the catalog.)

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::Subject;

use super::draft::{BuildError, EntityKey, Op};
use super::json::write_str;
use super::naming::Naming;
use super::schema::{EnumColumn, TableSchema};
use super::value::ValueKind;
use super::ColumnHasher;
use crate::decode::pgoutput::{self, Datum, OldKind, Relation, ReplicaIdentity, Tuple};

/// A guarded table as configured and checked against the catalog.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    pub type_prefix: String,
    /// The entity key: the configured `key`, else the primary key.
    pub key: Vec<String>,
    /// Whether `key` was configured; a primary key can be renamed while streaming, and then
    /// the replica identity columns of the new Relation message are the key.
    pub configured_key: bool,
    /// Columns replaced by a keyed hash.
    pub hashed: Vec<String>,
}

pub(super) struct Column {
    pub(super) name: String,
    pub(super) kind: ValueKind,
    /// Replaced by the keyed hash of its text.
    pub(super) hashed: bool,
    /// Part of the replica identity as the Relation message flags it.
    pub(super) identity: bool,
}

pub(super) struct Shape {
    /// `schema.table`.
    pub(super) qualified: Arc<str>,
    pub(super) hasher: Option<Arc<ColumnHasher>>,
    spec: Option<Arc<TableSpec>>,
    pub(super) identity: ReplicaIdentity,
    pub(super) columns: Vec<Column>,
    /// The entity key's column positions, in key order.
    pub(super) key: Vec<usize>,
    /// The NATS subject and CloudEvents type of each row op, made once per relation.
    names: Vec<(Op, Subject, Arc<str>)>,
    /// `,"schema":...,"table":...[,"hashed":[...]],`: what follows `"op"` in every row's
    /// `data` (`data` writes the rest).
    pub(super) data_head: Vec<u8>,
    /// The Relation this shape was made from, kept for a guarded table so that its schema
    /// can be read again without a new Relation message (a new enum label).
    pub(super) relation: Option<Arc<Relation>>,
    /// The columns holding enum labels and the labels the table's schema lists; `None`
    /// until the schema is set, empty when there are none.
    pub(super) enums: Option<Vec<EnumColumn>>,
}

/// What every draft of one table and op shares; cloning it does not allocate.
pub(super) struct DraftNames {
    pub(super) nats_subject: Subject,
    pub(super) ce_type: Arc<str>,
    /// `schema.table`.
    pub(super) table: Arc<str>,
}

impl Shape {
    #[inline]
    pub(super) fn names(&self, op: Op) -> DraftNames {
        let (nats_subject, ce_type) = self
            .names
            .iter()
            .find(|(o, _, _)| *o == op)
            .map(|(_, s, t)| (s.clone(), t.clone()))
            .expect("names are made for every row op of a guarded table");
        DraftNames {
            nats_subject,
            ce_type,
            table: self.qualified.clone(),
        }
    }

    /// The entity key `tuple` holds: a new row's (`old` is `None`) or an old row's. An old key
    /// tuple (`K`) holds only the replica identity's columns, so it gives the key only when
    /// the key is among them.
    pub(super) fn key_of(&self, old: Option<OldKind>, tuple: &Tuple) -> Option<EntityKey> {
        if old == Some(OldKind::Key) && !self.key.iter().all(|&i| self.columns[i].identity) {
            return None;
        }
        self.key_values(|i| match tuple.get(i)? {
            Datum::Text(b) => Some(Some(b.as_ref())),
            Datum::Null => Some(None),
            Datum::Binary(_) | Datum::UnchangedToast => None,
        })
    }

    /// The entity key from `value(column)`: `Some(None)` for NULL, `None` when the value is
    /// not there (then there is no key).
    pub(super) fn key_values<'a>(&self, value: impl Fn(usize) -> Option<Option<&'a [u8]>>) -> Option<EntityKey> {
        let values: Option<Vec<Option<&[u8]>>> = self.key.iter().map(|&i| value(i)).collect();
        values.map(EntityKey::new)
    }
}

/// The shapes of the relations seen so far, by OID, and what they are made from.
pub(super) struct Shapes {
    naming: Arc<Naming>,
    hasher: Option<Arc<ColumnHasher>>,
    tables: HashMap<(String, String), Arc<TableSpec>>,
    relations: HashMap<u32, Shape>,
    /// Some guarded table has enum columns: rows are looked at for new labels only then.
    pub(super) any_enums: bool,
}

impl Shapes {
    pub(super) fn new(naming: Arc<Naming>, tables: Vec<TableSpec>) -> Self {
        Shapes {
            naming,
            hasher: None,
            tables: tables
                .into_iter()
                .map(|t| ((t.schema.clone(), t.name.clone()), Arc::new(t)))
                .collect(),
            relations: HashMap::new(),
            any_enums: false,
        }
    }

    /// Hashes `hash_columns` with this salt, in the shapes made from now on.
    pub(super) fn set_hasher(&mut self, hasher: Option<Arc<ColumnHasher>>) {
        self.hasher = hasher;
    }

    /// Makes the shape of `rel`, replacing the one its OID had.
    pub(super) fn insert(&mut self, rel: Relation, types: &HashMap<u32, ValueKind>) -> Result<(), BuildError> {
        let oid = rel.oid;
        let shape = self.shape(rel, types)?;
        self.relations.insert(oid, shape);
        Ok(())
    }

    /// The shape of relation `oid` if it is guarded, `None` if it is not; an OID without a
    /// Relation message is a protocol violation.
    #[inline]
    pub(super) fn guarded(&self, oid: u32) -> Result<Option<&Shape>, BuildError> {
        let shape = self
            .relations
            .get(&oid)
            .ok_or_else(|| BuildError::Protocol(format!("change for relation {oid} before its Relation message")))?;
        Ok(shape.spec.is_some().then_some(shape))
    }

    /// The shape of guarded relation `oid`, to learn enum labels in.
    #[inline]
    pub(super) fn guarded_mut(&mut self, oid: u32) -> Option<&mut Shape> {
        self.relations.get_mut(&oid).filter(|s| s.spec.is_some())
    }

    /// Takes the enum columns of `schema` into the shapes of its table: always when `changed`,
    /// else only into a shape made since (a Relation message), so labels learned from rows
    /// are kept while the schema stays the same.
    pub(super) fn set_enums(&mut self, schema: &TableSchema, changed: bool) {
        let table = schema.qualified();
        for shape in self.relations.values_mut() {
            if shape.spec.is_some() && *shape.qualified == *table && (changed || shape.enums.is_none()) {
                let enums = schema.enum_columns();
                self.any_enums |= !enums.is_empty();
                shape.enums = Some(enums);
            }
        }
    }

    fn shape(&self, rel: Relation, types: &HashMap<u32, ValueKind>) -> Result<Shape, BuildError> {
        let schema = if rel.namespace.is_empty() {
            "pg_catalog".to_owned()
        } else {
            rel.namespace.clone()
        };
        let qualified: Arc<str> = format!("{schema}.{}", rel.name).into();
        let spec = self.tables.get(&(schema.clone(), rel.name.clone())).cloned();
        let relation = spec.is_some().then(|| Arc::new(rel.clone()));
        let columns = columns(rel.columns, spec.as_deref(), types);
        let key = match &spec {
            Some(spec) => key_columns(spec, &columns, rel.replica_identity, &qualified)?,
            None => Vec::new(),
        };
        let data_head = data_head(&schema, &rel.name, &columns);
        let names = match &spec {
            Some(spec) => self.naming.row_names(&schema, &rel.name, &spec.type_prefix),
            None => Vec::new(),
        };
        Ok(Shape {
            hasher: self.hasher.clone(),
            names,
            qualified,
            spec,
            identity: rel.replica_identity,
            columns,
            key,
            data_head,
            relation,
            enums: None,
        })
    }
}

/// The Relation's columns with their value mapping (built in, else resolved from the
/// catalog, else text) and whether the table's spec hashes them.
fn columns(columns: Vec<pgoutput::Column>, spec: Option<&TableSpec>, types: &HashMap<u32, ValueKind>) -> Vec<Column> {
    columns
        .into_iter()
        .map(|c| Column {
            hashed: spec.is_some_and(|s| s.hashed.contains(&c.name)),
            kind: ValueKind::builtin(c.type_oid)
                .or_else(|| types.get(&c.type_oid).cloned())
                .unwrap_or(ValueKind::Text),
            name: c.name,
            identity: c.key,
        })
        .collect()
}

/// The positions of `spec`'s entity key among `columns`, refusing a table whose key is not
/// in the replicated row.
fn key_columns(
    spec: &TableSpec,
    columns: &[Column],
    identity: ReplicaIdentity,
    qualified: &Arc<str>,
) -> Result<Vec<usize>, BuildError> {
    let by_name: Option<Vec<usize>> = spec
        .key
        .iter()
        .map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    let key = match by_name {
        Some(k) => k,
        // The primary key was renamed (ALTER TABLE ... RENAME COLUMN): under DEFAULT
        // identity the Relation flags the new names.
        None if !spec.configured_key && identity == ReplicaIdentity::Default => columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.identity)
            .map(|(i, _)| i)
            .collect(),
        None => Vec::new(),
    };
    if key.is_empty() {
        let missing = spec
            .key
            .iter()
            .find(|k| !columns.iter().any(|c| &c.name == *k))
            .cloned()
            .unwrap_or_default();
        return Err(BuildError::KeyColumnMissing {
            table: qualified.clone(),
            column: missing,
        });
    }
    Ok(key)
}

/// `,"schema":...,"table":...`, then `,"hashed":[...]` when columns are hashed, and the
/// `,` before `"key"`.
fn data_head(schema: &str, table: &str, columns: &[Column]) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(b",\"schema\":");
    write_str(schema, &mut head);
    head.extend_from_slice(b",\"table\":");
    write_str(table, &mut head);
    let hashed: Vec<&Column> = columns.iter().filter(|c| c.hashed).collect();
    if !hashed.is_empty() {
        head.extend_from_slice(b",\"hashed\":[");
        for (n, c) in hashed.iter().enumerate() {
            if n > 0 {
                head.push(b',');
            }
            write_str(&c.name, &mut head);
        }
        head.push(b']');
    }
    head.push(b',');
    head
}
