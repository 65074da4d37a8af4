//! `walguard restore --into`: tables rebuilt on any PostgreSQL server from the log alone
//! (SPEC section 7, G8): from the stream, an archive or an export file, with their types from
//! the schema events, never from a live table.
//!
//! One pass over the log, verified as it is read. Row events are COPYed into a temporary
//! staging table on the target, inside one transaction, so walguard's memory does not grow with
//! the tables (the target server holds them); the newest schema event per table at or before
//! `--at` is kept (a type several tables use is made as the newest of them has it). At the end
//! of the log, and only if every message verified, the types and tables are created from the
//! schema events and each table is filled with one `INSERT ... SELECT` that takes every key's
//! newest event after the table's last truncate (an update that changed the key removes the row
//! at its old key; a column PostgreSQL did not send, listed in `unchanged`, keeps the value the
//! entity's previous event had). A table whose events since its last truncate are all inserts or snapshot
//! rows with every column is loaded one row per event instead (no newest-per-key sort), under a
//! savepoint: should that fail (a key twice), the general load runs. Values go from their JSON text to their column types through
//! `json_populate_record`, so numbers keep every digit PostgreSQL printed and `json` keeps its
//! bytes; `bytea` is decoded from base64. Then COMMIT: all tables or none.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::draft::Op;
use crate::event::schema::{TableSchema, TypeDef, UserType};
use crate::event::stored::Data;
use crate::source::catalog::{error_chain, Catalog};
use crate::source::conn::{quote_ident, quote_literal};
use crate::verify::Verified;

/// The staging table, temporary and dropped at commit.
const STAGE: &str = "walguard_restore_events";

/// What to restore.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// `schema.table` names; empty means every table with a schema event.
    pub tables: Vec<String>,
    /// Only the entity whose key values, joined by `,`, are this.
    pub key: Option<String>,
    /// The newest sequence to include (default: the end of the log).
    pub at: Option<u64>,
}

impl Wanted {
    fn table(&self, name: &str) -> bool {
        self.tables.is_empty() || self.tables.iter().any(|t| t == name)
    }
}

/// One restored table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub table: String,
    pub target: String,
    pub rows: u64,
}

/// A row event's values as the payload holds them, byte for byte. The verifier's typed event
/// has everything else (the table, the op, the subject, schema events), but its row values
/// are `serde_json::Value`s, which keep neither a `json` value's bytes and key order nor every
/// digit of a float; so the values alone are read from the payload, borrowed, once.
#[derive(Deserialize)]
struct Exact<'a> {
    #[serde(borrow)]
    data: ExactRow<'a>,
}

#[derive(Deserialize, Default)]
struct ExactRow<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unchanged: Option<&'a RawValue>,
}

/// A table's newest schema event and its sequence.
type SchemaAt = (u64, TableSchema);

/// What a table's staged events allow at the end: since its last truncate, only inserts
/// and snapshot rows with every column sent, all under one key, can be loaded as they are
/// (one row per event, no newest-per-key); any update, delete or unchanged column needs the
/// general load.
#[derive(Debug, Default)]
struct Shape {
    /// An update, a delete or an unchanged column since the last truncate.
    changed: bool,
    /// The key columns the events since the last truncate name; `None` for none yet.
    key: Option<Vec<String>>,
    /// Some event lists an unchanged column (anywhere in the log): the general load looks
    /// the entity's earlier events up, by an index on the staged events.
    unchanged: bool,
}

/// The log, read and staged: the newest schema event per table and how many row events went
/// to the staging table.
pub struct Staged {
    schemas: BTreeMap<String, SchemaAt>,
    shapes: BTreeMap<String, Shape>,
    staged: u64,
    /// The newest sequence read.
    pub last: u64,
    buf: BytesMut,
}

impl Staged {
    fn new() -> Staged {
        Staged {
            schemas: BTreeMap::new(),
            shapes: BTreeMap::new(),
            staged: 0,
            last: 0,
            buf: BytesMut::with_capacity(1 << 20),
        }
    }

    /// Takes one verified message: a schema event is kept, a row event of a wanted table is
    /// staged as one COPY line, markers are skipped. A row whose values cannot be read is an
    /// error naming its sequence: skipping it would rebuild tables without its row.
    fn take(&mut self, v: Verified, wanted: &Wanted) -> Result<(), String> {
        let Verified { stored: m, event } = v;
        self.last = m.sequence;
        let (op, table, row) = match event.data {
            Data::Schema(schema) => {
                self.schemas.insert(schema.qualified(), (m.sequence, schema));
                return Ok(());
            }
            Data::Row(op, row) => (op, row.qualified(), Some(row)),
            Data::Truncate(t) => (Op::Truncate, t.qualified(), None),
            Data::Watermark | Data::Resync(_) | Data::SnapshotProgress(_) | Data::Checkpoint(_) => return Ok(()),
        };
        if !wanted.table(&table) {
            return Ok(());
        }
        let subject_key = event.attributes.subject.split_once('/').map(|(_, k)| k);
        if let (Some(want), Some(have)) = (&wanted.key, subject_key) {
            if op != Op::Truncate && want != have {
                return Ok(());
            }
        }
        let shape = match self.shapes.get_mut(&table) {
            Some(shape) => shape,
            None => self.shapes.entry(table.clone()).or_default(),
        };
        match &row {
            None => {
                // Nothing before a truncate is loaded.
                shape.changed = false;
                shape.key = None;
            }
            Some(row) => {
                shape.changed |= !matches!(op, Op::Insert | Op::Snapshot) || !row.unchanged.is_empty();
                shape.unchanged |= !row.unchanged.is_empty();
                match &shape.key {
                    Some(key) if row.key.names().eq(key.iter().map(String::as_str)) => {}
                    Some(_) => shape.changed = true,
                    None => shape.key = Some(row.key.names().map(str::to_owned).collect()),
                }
            }
        }
        let values = if op == Op::Truncate {
            ExactRow::default()
        } else {
            let exact: Exact<'_> = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("stream sequence {} is not a readable walguard event ({e})", m.sequence))?;
            exact.data
        };
        let fields = [
            Some(m.sequence.to_string()),
            Some(table),
            Some(op.as_str().to_owned()),
            raw(values.key),
            raw(values.before),
            raw(values.after),
            raw(values.unchanged),
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.buf.put_u8(b'\t');
            }
            match f {
                Some(text) => copy_text(text, &mut self.buf),
                None => self.buf.put_slice(b"\\N"),
            }
        }
        self.buf.put_u8(b'\n');
        self.staged += 1;
        Ok(())
    }
}

/// A JSON value's text, `None` for JSON `null`.
fn raw(v: Option<&RawValue>) -> Option<String> {
    v.map(RawValue::get).filter(|t| *t != "null").map(str::to_owned)
}

/// `text` as a field of COPY's text format.
fn copy_text(text: &str, out: &mut BytesMut) {
    for b in text.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\t' => out.put_slice(b"\\t"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            _ => out.put_u8(b),
        }
    }
}

/// Splits a type name as schema events spell it (`public.plan`, `"Odd"."Mood"`) into its
/// schema and name, unquoted.
pub fn split_qualified(name: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            '[' if !quoted => break,
            c => cur.push(c),
        }
    }
    parts.push(cur);
    match parts.as_slice() {
        [schema, name] if !schema.is_empty() && !name.is_empty() => Some((schema.clone(), name.clone())),
        _ => None,
    }
}

/// The statement that creates `t` where it is missing (`None` for an extension's type: the
/// extension creates it).
pub fn create_type_sql(t: &UserType) -> Option<String> {
    let name = &t.name;
    Some(match &t.def {
        TypeDef::Enum { labels } => {
            let labels: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
            format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "))
        }
        TypeDef::Domain { base, not_null, checks } => {
            let mut sql = format!("CREATE DOMAIN {name} AS {base}");
            if *not_null {
                sql.push_str(" NOT NULL");
            }
            for c in checks {
                sql.push(' ');
                sql.push_str(c);
            }
            sql
        }
        TypeDef::Composite { attributes } => {
            let attrs: Vec<String> = attributes
                .iter()
                .map(|a| format!("{} {}", quote_ident(&a.name), a.type_name))
                .collect();
            format!("CREATE TYPE {name} AS ({})", attrs.join(", "))
        }
        TypeDef::Range { subtype } => format!("CREATE TYPE {name} AS RANGE (subtype = {subtype})"),
        TypeDef::Extension { .. } => return None,
    })
}

/// `CREATE TABLE` for `t` in schema `into`: its columns with their types and NOT NULL (stored
/// generated columns as plain columns), the entity key as primary key.
pub fn create_table_sql(into: &str, t: &TableSchema) -> String {
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let not_null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", quote_ident(&c.name), c.type_name)
        })
        .collect();
    if !t.key.is_empty() {
        let key: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
        cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!("CREATE TABLE {} ({})", target_name(into, t), cols.join(", "))
}

fn target_name(into: &str, t: &TableSchema) -> String {
    format!("{}.{}", quote_ident(into), quote_ident(&t.table))
}

/// The value of column `c` from the JSON `row` (an SQL expression of type `json`) of an event
/// of the table `target`, as that column's type; `populated` is the record
/// `json_populate_record` made of `row` when there is one.
fn column_value(target: &str, c: &crate::event::schema::ColumnSchema, row: &str, populated: Option<&str>) -> String {
    let field = quote_literal(&c.name);
    match c.type_name.as_str() {
        // Events carry bytea as standard base64.
        "bytea" => format!("decode(({row}) ->> {field}, 'base64')"),
        "bytea[]" => format!(
            "CASE WHEN json_typeof(({row}) -> {field}) = 'array' THEN \
             ARRAY(SELECT decode(x, 'base64') FROM json_array_elements_text(({row}) -> {field}) x) END"
        ),
        _ => match populated {
            Some(record) => format!("{record}.{}", quote_ident(&c.name)),
            None => format!(
                "(json_populate_record(NULL::{target}, json_build_object({field}, ({row}) -> {field}))).{}",
                quote_ident(&c.name)
            ),
        },
    }
}

/// The `INSERT ... SELECT` that fills `target` from the staged events of `table`.
pub fn load_sql(table: &str, target: &str, t: &TableSchema) -> String {
    let tbl = quote_literal(table);
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let field = quote_literal(&c.name);
            // An unchanged TOASTed value: the newest earlier event of the entity that has it.
            let previous = format!(
                "(SELECT p.after FROM {STAGE} p WHERE p.tbl = {tbl} AND p.key = f.key AND p.seq < f.seq \
                 AND p.after IS NOT NULL AND (p.after::jsonb) ? {field} ORDER BY p.seq DESC LIMIT 1)"
            );
            format!(
                "CASE WHEN f.unchanged IS NOT NULL AND (f.unchanged::jsonb) ? {field} THEN {} ELSE {} END",
                column_value(target, c, &previous, None),
                column_value(target, c, "f.after", Some("r"))
            )
        })
        .collect();
    format!(
        "WITH live AS (
           SELECT * FROM {STAGE} WHERE tbl = {tbl}
             AND seq > coalesce((SELECT max(seq) FROM {STAGE} WHERE tbl = {tbl} AND op = 'truncate'), 0)),
         moved AS (
           SELECT l.seq, m.key, 'delete'::text AS op, NULL::json AS after, NULL::json AS unchanged
           FROM live l, LATERAL (SELECT jsonb_object_agg(k, l.before -> k) AS key FROM jsonb_object_keys(l.key) k) m
           WHERE l.op = 'update' AND l.before IS NOT NULL AND l.before ?& ARRAY(SELECT jsonb_object_keys(l.key))
             AND m.key IS DISTINCT FROM l.key),
         newest AS (
           SELECT DISTINCT ON (key) key, seq, op, after, unchanged FROM (
             SELECT seq, key, op, after, unchanged FROM live WHERE op <> 'truncate'
             UNION ALL SELECT seq, key, op, after, unchanged FROM moved) e
           ORDER BY key, seq DESC)
         INSERT INTO {target} ({})
         SELECT {} FROM newest f, LATERAL json_populate_record(NULL::{target}, f.after) r
         WHERE f.op IN ('insert', 'update', 'snapshot')",
        cols.join(", "),
        values.join(",\n  ")
    )
}

/// The `INSERT ... SELECT` that fills `target` when every staged event of `table` after its
/// last truncate is an insert or snapshot row with every column, under the target's key: each
/// is a row of its own (a key twice fails the primary key, and the general load decides). The
/// values are what [`load_sql`] takes from the same events.
pub fn load_inserts_sql(table: &str, target: &str, t: &TableSchema) -> String {
    let tbl = quote_literal(table);
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = t
        .columns
        .iter()
        .map(|c| column_value(target, c, "f.after", Some("r")))
        .collect();
    format!(
        "INSERT INTO {target} ({})
         SELECT {} FROM {STAGE} f, LATERAL json_populate_record(NULL::{target}, f.after) r
         WHERE f.tbl = {tbl} AND f.op IN ('insert', 'snapshot')
           AND f.seq > coalesce((SELECT max(seq) FROM {STAGE} WHERE tbl = {tbl} AND op = 'truncate'), 0)",
        cols.join(", "),
        values.join(",\n  ")
    )
}

/// Why a restore refused or failed; nothing is written in any case.
fn refused(message: String) -> crate::Error {
    crate::Error::Refused(crate::error::Refusal::Audit, message)
}

/// A restore into `into` on `target`, fed the log one verified message at a time.
pub struct Loader {
    catalog: Catalog,
    wanted: Wanted,
    into: String,
    staged: Staged,
    sink: Option<std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>>,
}

impl Loader {
    /// Opens the transaction and the staging table on `target`.
    pub async fn begin(
        target: &crate::source::tls::PgConfig,
        into: &str,
        wanted: Wanted,
    ) -> Result<Loader, crate::Error> {
        let catalog = Catalog::connect(target).await?;
        let client = catalog.client();
        let failed = |e: tokio_postgres::Error| refused(format!("restore: {}", error_chain(&e)));
        client
            .batch_execute(&format!(
                "BEGIN; CREATE TEMPORARY TABLE {STAGE} (seq bigint, tbl text, op text, key jsonb, \
                 before jsonb, after json, unchanged json) ON COMMIT DROP"
            ))
            .await
            .map_err(failed)?;
        let sink = client
            .copy_in(&format!("COPY {STAGE} FROM STDIN"))
            .await
            .map_err(failed)?;
        Ok(Loader {
            catalog,
            wanted,
            into: into.to_owned(),
            staged: Staged::new(),
            sink: Some(Box::pin(sink)),
        })
    }

    /// Takes the next verified message.
    pub async fn message(&mut self, m: Verified) -> Result<(), crate::Error> {
        self.staged.take(m, &self.wanted).map_err(refused)?;
        if self.staged.buf.len() >= 1 << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), crate::Error> {
        let chunk = self.staged.buf.split().freeze();
        let sink = self.sink.as_mut().expect("the COPY is open until finish");
        sink.send(chunk)
            .await
            .map_err(|e| refused(format!("restore: staging the events: {}", error_chain(&e))))
    }

    /// The log ended and every message verified: creates the types and tables and fills
    /// them, then commits. On any error the transaction is rolled back: nothing is written.
    pub async fn finish(mut self) -> Result<Vec<Restored>, crate::Error> {
        self.flush().await?;
        let mut sink = self.sink.take().expect("open");
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| refused(format!("restore: staging the events: {}", error_chain(&e))))?;
        let result = self.create_and_fill().await;
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.catalog.client().batch_execute(end).await;
        let restored = result?;
        ended.map_err(|e| refused(format!("restore: {end}: {}", error_chain(&e))))?;
        Ok(restored)
    }

    async fn create_and_fill(&self) -> Result<Vec<Restored>, crate::Error> {
        let client = self.catalog.client();
        let sql_failed =
            |what: String| move |e: tokio_postgres::Error| refused(format!("restore: {what}: {}", error_chain(&e)));
        let tables = self.tables()?;
        // The index serves the look-up of an unchanged column's earlier value only.
        let shapes = &self.staged.shapes;
        let index = if tables
            .iter()
            .any(|(name, _)| shapes.get(*name).is_some_and(|s| s.unchanged))
        {
            format!("CREATE INDEX ON {STAGE} (tbl, key, seq); ")
        } else {
            String::new()
        };
        client
            .batch_execute(&format!("{index}ANALYZE {STAGE}"))
            .await
            .map_err(sql_failed("indexing the staged events".into()))?;
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&self.into)))
            .await
            .map_err(sql_failed(format!("creating schema {}", self.into)))?;
        // A type several tables use is created as the newest schema event of any of them
        // lists it: an enum gains labels while streaming (`ALTER TYPE ... ADD VALUE`), and a
        // table whose rows never held the new label still has a schema event without it.
        let mut types: BTreeMap<&str, (u64, &UserType)> = BTreeMap::new();
        for (_, (seq, schema)) in &tables {
            for t in &schema.types {
                let newest = types.entry(&t.name).or_insert((*seq, t));
                if *seq > newest.0 {
                    *newest = (*seq, t);
                }
            }
        }
        let mut out = Vec::new();
        for (name, (seq, schema)) in tables {
            let target = target_name(&self.into, schema);
            let exists = client
                .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&target])
                .await
                .map_err(sql_failed(format!("looking for {target}")))?;
            if exists.get::<_, bool>(0) {
                return Err(refused(format!(
                    "restore: {target} already exists; restore never writes an existing table (choose another --into schema, or drop it)"
                )));
            }
            for t in &schema.types {
                self.ensure_type(types.get(t.name.as_str()).map_or(t, |(_, newest)| newest))
                    .await?;
            }
            client
                .batch_execute(&create_table_sql(&self.into, schema))
                .await
                .map_err(sql_failed(format!(
                    "creating {target} from the schema event at sequence {seq}"
                )))?;
            let rows = match self.load_inserts(name, &target, schema).await? {
                Some(rows) => rows,
                None => client
                    .execute(&load_sql(name, &target, schema), &[])
                    .await
                    .map_err(sql_failed(format!("loading {target}")))?,
            };
            out.push(Restored {
                table: name.clone(),
                target,
                rows,
            });
        }
        Ok(out)
    }

    /// Loads `target` one row per event when the staged events allow it (see [`Shape`]);
    /// `None` when they do not, or when that load failed (a key twice): then nothing of it
    /// stays, and the general load runs (and names any error).
    async fn load_inserts(&self, name: &str, target: &str, schema: &TableSchema) -> Result<Option<u64>, crate::Error> {
        let simple = self
            .staged
            .shapes
            .get(name)
            .is_some_and(|s| !s.changed && s.key.as_ref().is_none_or(|k| *k == schema.key))
            // The target's primary key (the entity key, `create_table_sql`) is what turns a key
            // twice into the failure that sends the table to the general load.
            && !schema.key.is_empty();
        if !simple {
            return Ok(None);
        }
        let client = self.catalog.client();
        let failed = |e: tokio_postgres::Error| refused(format!("restore: loading {target}: {}", error_chain(&e)));
        client
            .batch_execute("SAVEPOINT walguard_inserts")
            .await
            .map_err(failed)?;
        match client.execute(&load_inserts_sql(name, target, schema), &[]).await {
            Ok(rows) => {
                client
                    .batch_execute("RELEASE SAVEPOINT walguard_inserts")
                    .await
                    .map_err(failed)?;
                Ok(Some(rows))
            }
            Err(e) => {
                tracing::debug!(table = name, error = %error_chain(&e), "loading the inserts as they are failed; loading newest per key");
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT walguard_inserts")
                    .await
                    .map_err(failed)?;
                Ok(None)
            }
        }
    }

    /// The tables to restore with the schema event each is created from.
    fn tables(&self) -> Result<Vec<(&String, &SchemaAt)>, crate::Error> {
        let schemas = &self.staged.schemas;
        for t in &self.wanted.tables {
            if !schemas.contains_key(t) {
                let at = self
                    .wanted
                    .at
                    .map_or(String::new(), |a| format!(" at or before sequence {a}"));
                return Err(refused(format!(
                    "restore: the log holds no schema event for {t}{at}, so its columns and types are unknown"
                )));
            }
        }
        Ok(schemas.iter().filter(|(name, _)| self.wanted.table(name)).collect())
    }

    /// Creates `t` when missing, reuses it when it exists with the same definition, and
    /// refuses (naming the difference) otherwise.
    async fn ensure_type(&self, t: &UserType) -> Result<(), crate::Error> {
        let client = self.catalog.client();
        let existing = self.catalog.user_type(&t.name).await?;
        match existing {
            Some(have) if have.def == t.def => return Ok(()),
            Some(have) => {
                return Err(refused(format!(
                    "restore: type {} exists on the target as {:?}, the log has {:?}; restore into a server without it, or drop it",
                    t.name, have.def, t.def
                )))
            }
            None => {}
        }
        let (schema, _) = split_qualified(&t.name)
            .ok_or_else(|| refused(format!("restore: type name {} is not schema.name", t.name)))?;
        let failed =
            |e: tokio_postgres::Error| refused(format!("restore: creating type {}: {}", t.name, error_chain(&e)));
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&schema)))
            .await
            .map_err(failed)?;
        match (&t.def, create_type_sql(t)) {
            (TypeDef::Extension { extension }, _) => {
                let available = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)",
                        &[extension],
                    )
                    .await
                    .map_err(failed)?;
                if !available.get::<_, bool>(0) {
                    return Err(refused(format!(
                        "restore: type {} belongs to extension {extension}, which the target server does not have \
                         (not in pg_available_extensions); install the extension's package on that server \
                         (contrib extensions such as citext ship with PostgreSQL's contrib package) and run \
                         CREATE EXTENSION {extension} in the target database, or restore to a server that has it; \
                         nothing restored",
                        t.name
                    )));
                }
                client
                    .batch_execute(&format!(
                        "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                        quote_ident(extension),
                        quote_ident(&schema)
                    ))
                    .await
                    .map_err(failed)
            }
            (_, Some(sql)) => client.batch_execute(&sql).await.map_err(failed),
            (_, None) => Ok(()),
        }
    }
}

/// Where the log is read from.
pub enum Source {
    /// The live stream.
    Stream {
        js: async_nats::jetstream::Context,
        stream: String,
    },
    /// A folder of `walguard archive` segments of `stream`.
    Archive { dir: std::path::PathBuf, stream: String },
    /// A `walguard export` file.
    File(std::path::PathBuf),
}

/// The log, one verified message at a time, from any [`Source`].
pub struct Log<'k> {
    inner: Inner<'k>,
}

enum Inner<'k> {
    Stream {
        reader: Box<crate::sink::reader::StreamReader>,
        verifier: crate::verify::Verifier<'k>,
    },
    Archive(crate::archive::ArchiveReader<'k>),
    File {
        lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
        path: std::path::PathBuf,
        line: usize,
        verifier: Option<crate::verify::Verifier<'k>>,
        keyring: &'k crate::event::Keyring,
    },
}

impl<'k> Log<'k> {
    pub async fn open(source: &Source, keyring: &'k crate::event::Keyring) -> Result<Log<'k>, String> {
        use crate::sink::reader::{StreamReader, Until};
        let inner = match source {
            Source::Stream { js, stream } => {
                let reader = StreamReader::open(js, stream, 1, Until::Last)
                    .await
                    .map_err(|e| e.to_string())?;
                let verifier = if reader.state().first_sequence > 1 {
                    crate::verify::Verifier::partial(keyring)
                } else {
                    crate::verify::Verifier::new(keyring)
                };
                Inner::Stream {
                    reader: Box::new(reader),
                    verifier,
                }
            }
            Source::Archive { dir, stream } => {
                Inner::Archive(crate::archive::ArchiveReader::open(dir, stream, keyring).map_err(|e| e.to_string())?)
            }
            Source::File(path) => {
                use std::io::BufRead;
                let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                Inner::File {
                    lines: std::io::BufReader::new(file).lines(),
                    path: path.clone(),
                    line: 0,
                    verifier: None,
                    keyring,
                }
            }
        };
        Ok(Log { inner })
    }

    /// The next message, verified; an error names the first bad sequence (or file).
    pub async fn next(&mut self) -> Result<Option<Verified>, String> {
        match &mut self.inner {
            Inner::Stream { reader, verifier } => match reader.next().await.map_err(|e| e.to_string())? {
                Some(m) => checked(verifier, m).map(Some),
                None => Ok(None),
            },
            Inner::Archive(reader) => reader.next_message().map_err(|e| e.to_string()),
            Inner::File {
                lines,
                path,
                line,
                verifier,
                keyring,
            } => loop {
                let Some(text) = lines.next() else { return Ok(None) };
                *line += 1;
                let text = text.map_err(|e| format!("{}: {e}", path.display()))?;
                if text.trim().is_empty() {
                    continue;
                }
                let m =
                    crate::audit::parse_dsse_line(&text).map_err(|e| format!("{} line {line}: {e}", path.display()))?;
                let verifier = verifier.get_or_insert_with(|| {
                    if m.sequence > 1 {
                        crate::verify::Verifier::partial(keyring)
                    } else {
                        crate::verify::Verifier::new(keyring)
                    }
                });
                return checked(verifier, m).map(Some);
            },
        }
    }

    /// At the end of the log: what the verifier could only judge there (an unsigned tail, an
    /// incomplete transaction).
    pub fn finish(self) -> Result<(), String> {
        let verifier = match self.inner {
            Inner::Stream { verifier, .. } => Some(verifier),
            Inner::Archive(reader) => Some(reader.verifier),
            Inner::File { verifier, .. } => verifier,
        };
        let problems = verifier.map(|v| v.finish().1).unwrap_or_default();
        match problems.first() {
            None => Ok(()),
            Some(p) => Err(format!(
                "{p}; nothing restored (pass --at an earlier, signed sequence, or run `walguard verify`)"
            )),
        }
    }
}

/// Feeds `m` to the verifier; the first problem it finds refuses the message.
fn checked(verifier: &mut crate::verify::Verifier<'_>, m: crate::audit::Stored) -> Result<Verified, String> {
    let event = verifier.check(&m).map_err(|p| format!("{p}; nothing restored"))?;
    Ok(Verified { stored: m, event })
}

/// Reads the log to `wanted.at` (and on to the signature that covers it), calling `take` for
/// each message up to `at`. At the end of the log, what only the end can show (an unsigned
/// tail, an incomplete transaction) refuses too.
async fn read_log(
    log: Log<'_>,
    at: Option<u64>,
    mut take: impl AsyncFnMut(Verified) -> Result<(), crate::Error>,
) -> Result<u64, crate::Error> {
    let mut log = log;
    let mut last = 0;
    loop {
        let Some(m) = log.next().await.map_err(refused)? else {
            log.finish().map_err(refused)?;
            return Ok(last);
        };
        let (sequence, covered) = (m.stored.sequence, m.stored.signature.is_some());
        if at.is_some_and(|a| sequence > a) {
            if covered {
                return Ok(last);
            }
            continue;
        }
        take(m).await?;
        last = sequence;
        if at == Some(sequence) && covered {
            return Ok(last);
        }
    }
}

/// Restores the wanted tables into schema `into` on `target`, all in one transaction; the
/// tables restored and the newest sequence they reflect.
pub async fn into_schema(
    log: Log<'_>,
    wanted: Wanted,
    into: &str,
    target: &crate::source::tls::PgConfig,
) -> Result<(Vec<Restored>, u64), crate::Error> {
    let at = wanted.at;
    let mut loader = Loader::begin(target, into, wanted).await?;
    let last = read_log(log, at, async |m| loader.message(m).await).await?;
    Ok((loader.finish().await?, last))
}

/// One table (or one entity of it) as JSON rows, rebuilt in memory (`restore --json`).
pub async fn as_json(
    log: Log<'_>,
    table: &str,
    key: Option<&str>,
    at: Option<u64>,
) -> Result<crate::audit::TableState, crate::Error> {
    let mut state = crate::audit::TableState::default();
    read_log(log, at, async |m| {
        let change = crate::audit::Change::from_event(m.stored.sequence, m.event).map_err(refused)?;
        if let Some(c) = change.filter(|c| c.table == table && key.is_none_or(|k| c.concerns(k))) {
            state.apply(&c);
        }
        Ok(())
    })
    .await?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::schema::{Attribute, ColumnSchema, Identity, SchemaOp};

    #[test]
    fn type_names_split_as_postgres_reads_them() {
        assert_eq!(split_qualified("public.plan"), Some(("public".into(), "plan".into())));
        assert_eq!(split_qualified("\"Odd\".\"Mood\""), Some(("Odd".into(), "Mood".into())));
        assert_eq!(
            split_qualified("\"a.b\".\"c\"\"d\""),
            Some(("a.b".into(), "c\"d".into()))
        );
        assert_eq!(split_qualified("public.plan[]"), Some(("public".into(), "plan".into())));
        assert_eq!(split_qualified("integer"), None);
    }

    #[test]
    fn types_and_tables_are_created_from_the_schema_event_alone() {
        let plan = UserType {
            name: "public.plan".into(),
            def: TypeDef::Enum {
                labels: vec!["free".into(), "it's".into()],
            },
        };
        assert_eq!(
            create_type_sql(&plan).unwrap(),
            "CREATE TYPE public.plan AS ENUM ('free', 'it''s')"
        );
        let tier = UserType {
            name: "public.tier".into(),
            def: TypeDef::Domain {
                base: "public.plan".into(),
                not_null: true,
                checks: vec!["CHECK ((VALUE <> 'free'::public.plan))".into()],
            },
        };
        assert_eq!(
            create_type_sql(&tier).unwrap(),
            "CREATE DOMAIN public.tier AS public.plan NOT NULL CHECK ((VALUE <> 'free'::public.plan))"
        );
        let address = UserType {
            name: "public.address".into(),
            def: TypeDef::Composite {
                attributes: vec![Attribute {
                    name: "zip".into(),
                    type_name: "character varying(10)".into(),
                }],
            },
        };
        assert_eq!(
            create_type_sql(&address).unwrap(),
            "CREATE TYPE public.address AS (\"zip\" character varying(10))"
        );
        let citext = UserType {
            name: "public.citext".into(),
            def: TypeDef::Extension {
                extension: "citext".into(),
            },
        };
        assert_eq!(create_type_sql(&citext), None);
        let table = TableSchema {
            op: SchemaOp::Schema,
            schema: "public".into(),
            table: "Orders".into(),
            columns: vec![
                ColumnSchema {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    not_null: true,
                    generated: false,
                },
                ColumnSchema {
                    name: "total".into(),
                    type_name: "numeric(12,2)".into(),
                    not_null: false,
                    generated: true,
                },
            ],
            key: vec!["id".into()],
            primary_key: vec![],
            replica_identity: Identity::Default,
            types: vec![],
        };
        assert_eq!(
            create_table_sql("restored", &table),
            "CREATE TABLE \"restored\".\"Orders\" (\"id\" bigint NOT NULL, \"total\" numeric(12,2), PRIMARY KEY (\"id\"))"
        );
    }

    #[test]
    fn copy_fields_escape_what_copy_text_format_reads_specially() {
        let mut out = BytesMut::new();
        copy_text("a\\b\tc\nd\re", &mut out);
        assert_eq!(&out[..], b"a\\\\b\\tc\\nd\\re");
    }
}
