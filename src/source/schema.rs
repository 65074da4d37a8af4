//! Reads a guarded table's shape from the catalog for its schema event (SPEC section 7).
//!
//! The columns, their order and their types come from the Relation message pgoutput sent, so
//! they are the shape of the WAL being decoded, not of the catalog now; NOT NULL, stored
//! generated columns and the primary key are the catalog's (matched by column name; a column
//! the catalog no longer has reads as nullable, which restores every value it held).
//!
//! Every name is printed as with an empty `search_path` (`format_type`, `pg_get_constraintdef`):
//! built-in types bare, every other one schema-qualified, so the text means the same on any
//! server. The catalog connection keeps its own `search_path` (snapshot queries resolve
//! extension types' operators through it), so these queries run as one simple-protocol
//! message whose first statement sets `search_path` for that implicit transaction only.

use std::collections::HashSet;

use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use crate::decode::pgoutput::Relation;
use crate::event::schema::{Attribute, ColumnSchema, SchemaOp, TableSchema, TypeDef, UserType};
use crate::event::EventBuilder;
use crate::source::catalog::{Catalog, CatalogError};

impl Catalog {
    /// Gives `builder` the schema of `rel` when it is a guarded table the builder has the
    /// shape of (after its Relation message, or `add_relation`); other relations need none.
    pub async fn describe_for(&self, builder: &mut EventBuilder, rel: &Relation) -> Result<(), CatalogError> {
        if let Some(key) = builder.key_names(rel.oid) {
            let schema = self.table_schema(rel, &key).await?;
            builder.set_schema(schema);
        }
        Ok(())
    }

    /// The schema event's `data` for `rel` with entity key `key`.
    pub async fn table_schema(&self, rel: &Relation, key: &[String]) -> Result<TableSchema, CatalogError> {
        let oid = rel.oid;
        let facts = self
            .bare(&format!(
                "SELECT attname, attnotnull, attgenerated = 's' FROM pg_attribute \
                 WHERE attrelid = {oid} AND attnum > 0 AND NOT attisdropped"
            ))
            .await?;
        // Every column's type in one statement, in the Relation's order.
        let oids: Vec<String> = rel.columns.iter().map(|c| c.type_oid.to_string()).collect();
        let mods: Vec<String> = rel.columns.iter().map(|c| c.type_modifier.to_string()).collect();
        let types = self
            .bare(&format!(
                "SELECT format_type(o, m) FROM unnest('{{{}}}'::oid[], '{{{}}}'::int4[]) WITH ORDINALITY AS c(o, m, n) ORDER BY n",
                oids.join(","),
                mods.join(",")
            ))
            .await?;
        let mut columns = Vec::with_capacity(rel.columns.len());
        for (c, ty) in rel.columns.iter().zip(&types) {
            let fact = facts.iter().find(|r| r.get(0) == Some(c.name.as_str()));
            columns.push(ColumnSchema {
                name: c.name.clone(),
                type_name: text(ty, 0),
                not_null: fact.is_some_and(|r| flag(r, 1)),
                generated: fact.is_some_and(|r| flag(r, 2)),
            });
        }
        let primary_key = self
            .bare(&format!(
                "SELECT a.attname FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = {oid} AND i.indisprimary ORDER BY k.ord"
            ))
            .await?
            .iter()
            .map(|r| text(r, 0))
            .collect();
        let mut walk = TypeWalk::default();
        for c in &rel.columns {
            Box::pin(walk.visit(self, c.type_oid)).await?;
        }
        Ok(TableSchema {
            op: SchemaOp::Schema,
            schema: rel.namespace.clone(),
            table: rel.name.clone(),
            columns,
            key: key.to_vec(),
            primary_key,
            replica_identity: rel.replica_identity.into(),
            types: walk.types,
        })
    }

    /// `format_type(oid, typmod)` with an empty `search_path` (`???` for a type dropped since
    /// the WAL was written, as `format_type` prints it).
    pub async fn type_name(&self, oid: u32, typmod: i32) -> Result<String, CatalogError> {
        let rows = self.bare(&format!("SELECT format_type({oid}, {typmod})")).await?;
        Ok(rows.first().map(|r| text(r, 0)).unwrap_or_default())
    }

    /// Runs `sql` with an empty `search_path`, for this statement's implicit transaction only,
    /// and returns its rows. `sql` holds only numbers walguard formatted, never outside text.
    async fn bare(&self, sql: &str) -> Result<Vec<SimpleQueryRow>, CatalogError> {
        let messages = self
            .client()
            .simple_query(&format!("SELECT pg_catalog.set_config('search_path', '', true); {sql}"))
            .await
            .map_err(self.err())?;
        let rows = messages.into_iter().filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        // The first row is set_config's.
        Ok(rows.skip(1).collect())
    }
}

fn text(r: &SimpleQueryRow, i: usize) -> String {
    r.get(i).unwrap_or_default().to_owned()
}

fn flag(r: &SimpleQueryRow, i: usize) -> bool {
    r.get(i) == Some("t")
}

fn number<T: std::str::FromStr + Default>(r: &SimpleQueryRow, i: usize) -> T {
    r.get(i).and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// What a type is, for the walk over the types a table uses.
const TYPE_FACTS: &str = "SELECT t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod, \
       t.typnotnull, t.typrelid, n.nspname, \
       (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid \
         WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid \
           AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' LIMIT 1), \
       (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid), \
       (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid) \
     FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = ";

/// The user-defined types a table uses, each listed after the types it is built from.
#[derive(Default)]
struct TypeWalk {
    seen: HashSet<u32>,
    types: Vec<UserType>,
}

impl TypeWalk {
    async fn visit(&mut self, catalog: &Catalog, oid: u32) -> Result<(), CatalogError> {
        if !self.seen.insert(oid) {
            return Ok(());
        }
        let rows = catalog.bare(&format!("{TYPE_FACTS}{oid}")).await?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let namespace = text(row, 7);
        if namespace == "pg_catalog" || namespace == "information_schema" {
            return Ok(());
        }
        let elem: u32 = number(row, 2);
        if text(row, 1) == "A" && elem != 0 {
            // An array is listed through its element type.
            return Box::pin(self.visit(catalog, elem)).await;
        }
        if let Some(range) = row.get(10).and_then(|v| v.parse().ok()) {
            // A multirange is listed through its range.
            return Box::pin(self.visit(catalog, range)).await;
        }
        let def = match (text(row, 0).as_str(), row.get(8)) {
            (_, Some(extension)) => TypeDef::Extension {
                extension: extension.to_owned(),
            },
            ("e", None) => TypeDef::Enum {
                labels: catalog
                    .texts(&format!(
                        "SELECT enumlabel FROM pg_enum WHERE enumtypid = {oid} ORDER BY enumsortorder"
                    ))
                    .await?,
            },
            ("d", None) => {
                let base: u32 = number(row, 3);
                Box::pin(self.visit(catalog, base)).await?;
                TypeDef::Domain {
                    base: catalog.type_name(base, number(row, 4)).await?,
                    not_null: flag(row, 5),
                    checks: catalog.texts(&format!("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = {oid} AND contype = 'c' ORDER BY conname")).await?,
                }
            }
            ("c", None) => TypeDef::Composite {
                attributes: self.attributes(catalog, number(row, 6)).await?,
            },
            ("r", None) => {
                let subtype: u32 = number(row, 9);
                Box::pin(self.visit(catalog, subtype)).await?;
                TypeDef::Range {
                    subtype: catalog.type_name(subtype, -1).await?,
                }
            }
            // A base type of its own (C functions, outside an extension): nothing in the log
            // could recreate it; restore names it as missing.
            _ => return Ok(()),
        };
        self.types.push(UserType {
            name: catalog.type_name(oid, -1).await?,
            def,
        });
        Ok(())
    }

    /// A composite type's attributes, the types they use visited first.
    async fn attributes(&mut self, catalog: &Catalog, relid: u32) -> Result<Vec<Attribute>, CatalogError> {
        let rows = catalog
            .bare(&format!(
                "SELECT attname, atttypid, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = {relid} AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ))
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            Box::pin(self.visit(catalog, number(r, 1))).await?;
            out.push(Attribute {
                name: text(r, 0),
                type_name: text(r, 2),
            });
        }
        Ok(out)
    }
}

impl Catalog {
    /// The first column of every row of `sql`, run with an empty `search_path`.
    async fn texts(&self, sql: &str) -> Result<Vec<String>, CatalogError> {
        Ok(self.bare(sql).await?.iter().map(|r| text(r, 0)).collect())
    }
}

impl Catalog {
    /// The user-defined type named `name` (as a schema event spells it) on this server, as a
    /// schema event would describe it; `None` when it does not exist.
    pub async fn user_type(&self, name: &str) -> Result<Option<UserType>, CatalogError> {
        let literal = crate::source::conn::quote_literal(name);
        let rows = self.bare(&format!("SELECT to_regtype({literal})::oid")).await?;
        let Some(oid) = rows.first().and_then(|r| r.get(0)).and_then(|v| v.parse::<u32>().ok()) else {
            return Ok(None);
        };
        let mut walk = TypeWalk::default();
        Box::pin(walk.visit(self, oid)).await?;
        Ok(walk.types.pop().filter(|t| t.name == name))
    }
}
