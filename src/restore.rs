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

mod direct;

use crate::event::borrowed::{DataRef, EventRef, RawColumns, RowRef};
use crate::event::draft::Op;
use crate::event::json;
use crate::event::schema::{TableSchema, TypeDef, UserType};
use crate::event::stored::{subject_key, Data};
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

/// A table whose rows go straight into it (`direct`).
struct Loaded {
    target: String,
    /// The schema event it was created from.
    schema: TableSchema,
    plan: direct::Plan,
    buf: BytesMut,
    /// Its rows since its last truncate, sent and buffered.
    rows: u64,
}

/// What the target is asked to do, in the log's order.
enum Command {
    /// Create a table loaded directly, refused if it exists.
    Create {
        target: String,
        sql: String,
        at: u64,
    },
    /// One `COPY ... FROM STDIN` of these lines.
    Copy {
        sql: String,
        data: Bytes,
    },
    Sql(String),
}

/// At most this many bytes of COPY lines go in one statement, and this many statements wait.
const CHUNK: usize = 1 << 20;
const QUEUE: usize = 4;
/// Past this many bytes buffered for direct tables together, all are sent.
const BUFFERED: usize = 8 << 20;

/// The reading side of a restore, on a thread of its own: it verifies the log, keeps the
/// newest schema event per table, writes row events as COPY lines (straight into a table's
/// target where `direct` allows it, otherwise into the staging table) and sends them to the
/// target in order.
struct Reading {
    wanted: Wanted,
    into: String,
    /// Whether tables may be loaded directly.
    direct: bool,
    schemas: BTreeMap<String, SchemaAt>,
    shapes: BTreeMap<String, Shape>,
    loaded: BTreeMap<String, Loaded>,
    buffered: usize,
    stage: BytesMut,
    /// The newest sequence taken.
    last: u64,
    tx: tokio::sync::mpsc::Sender<Command>,
    /// A line's JSON fields are written here, then COPY-escaped into `stage`.
    scratch: Vec<u8>,
}

/// What reading the log left for the end: the schema events, what the staged tables allow,
/// and the directly loaded tables with their rows.
struct Read {
    schemas: BTreeMap<String, SchemaAt>,
    shapes: BTreeMap<String, Shape>,
    loaded: BTreeMap<String, (String, u64)>,
    last: u64,
}

impl Reading {
    fn send(&self, command: Command) -> Result<(), crate::Error> {
        // A closed channel: the target side stopped, and its error says why.
        self.tx
            .blocking_send(command)
            .map_err(|_| refused("restore: the target connection stopped".into()))
    }

    /// Reads the log to `at` (and on to the signature that covers it). At the end of the
    /// log, what only the end can show (an unsigned tail, an incomplete transaction) refuses.
    fn run(mut self, mut feed: Feed, at: Option<u64>) -> Result<Read, crate::Error> {
        loop {
            let Some(m) = feed.next().map_err(refused)? else {
                feed.finish().map_err(refused)?;
                break;
            };
            let event = feed.verify(&m).map_err(refused)?;
            let (sequence, covered) = (m.sequence, m.signature.is_some());
            if at.is_some_and(|a| sequence > a) {
                if covered {
                    break;
                }
                continue;
            }
            self.take(sequence, event)?;
            if at == Some(sequence) && covered {
                break;
            }
        }
        self.flush_all_direct()?;
        self.flush_stage()?;
        Ok(Read {
            loaded: std::mem::take(&mut self.loaded)
                .into_iter()
                .map(|(name, l)| (name, (l.target, l.rows)))
                .collect(),
            schemas: std::mem::take(&mut self.schemas),
            shapes: std::mem::take(&mut self.shapes),
            last: self.last,
        })
    }

    /// Takes one verified message: a schema event is kept, a row event or truncate of a
    /// wanted table is loaded or staged, markers are skipped.
    fn take(&mut self, sequence: u64, event: EventRef<'_>) -> Result<(), crate::Error> {
        self.last = sequence;
        let EventRef { attributes, data } = event;
        let (op, table, row) = match data {
            DataRef::Other(Data::Schema(schema)) => return self.schema(sequence, schema),
            DataRef::Other(Data::Truncate(t)) => (Op::Truncate, t.qualified(), None),
            DataRef::Other(_) => return Ok(()),
            DataRef::Row(op, row) => (op, row.qualified(), Some(row)),
        };
        if !self.wanted.table(&table) {
            return Ok(());
        }
        if let (Some(want), Some(have)) = (&self.wanted.key, subject_key(&attributes.subject)) {
            if op != Op::Truncate && want != have {
                return Ok(());
            }
        }
        let Some(row) = row else {
            return self.truncate(sequence, table);
        };
        if let Some(loaded) = self.loaded.get_mut(&table) {
            if matches!(op, Op::Insert | Op::Snapshot) {
                let before = loaded.buf.len();
                match loaded.plan.push(&row, &mut loaded.buf) {
                    Ok(()) => {
                        loaded.rows += 1;
                        self.buffered += loaded.buf.len() - before;
                        if loaded.buf.len() >= CHUNK {
                            self.flush_direct(&table)?;
                        } else if self.buffered >= BUFFERED {
                            self.flush_all_direct()?;
                        }
                        return Ok(());
                    }
                    Err(direct::Refused::NotDirect) => {}
                    Err(direct::Refused::Bad(why)) => {
                        // The staging load decides, and names what it cannot take.
                        tracing::debug!(table, sequence, why, "not loaded directly");
                    }
                }
            }
            self.demote(&table, sequence)?;
        }
        self.stage_row(sequence, &table, op, &row)
    }

    /// A schema event: kept; a wanted table's first, where it qualifies, creates the table
    /// to load directly; a later one of another shape sends a direct table to staging.
    fn schema(&mut self, sequence: u64, schema: TableSchema) -> Result<(), crate::Error> {
        let table = schema.qualified();
        if self.wanted.table(&table) {
            match self.loaded.get(&table) {
                Some(l) if l.schema.columns == schema.columns && l.schema.key == schema.key => {}
                Some(_) => self.demote(&table, sequence)?,
                None if self.direct && !self.schemas.contains_key(&table) && !self.shapes.contains_key(&table) => {
                    let target = target_name(&self.into, &schema);
                    if let Some(plan) = direct::Plan::new(&schema, &target) {
                        tracing::debug!(table, "loading rows straight into the table");
                        self.send(Command::Create {
                            target: target.clone(),
                            sql: create_table_sql(&self.into, &schema),
                            at: sequence,
                        })?;
                        let loaded = Loaded {
                            target,
                            schema: schema.clone(),
                            plan,
                            buf: BytesMut::new(),
                            rows: 0,
                        };
                        self.loaded.insert(table.clone(), loaded);
                    }
                }
                None => {}
            }
        }
        self.schemas.insert(table, (sequence, schema));
        Ok(())
    }

    fn truncate(&mut self, sequence: u64, table: String) -> Result<(), crate::Error> {
        if self.loaded.contains_key(&table) {
            self.flush_direct(&table)?;
            let loaded = self.loaded.get_mut(&table).expect("loaded directly");
            loaded.rows = 0;
            loaded.plan.truncated();
            let sql = format!("TRUNCATE {}", loaded.target);
            return self.send(Command::Sql(sql));
        }
        // Nothing before a truncate is loaded.
        let shape = self.shapes.entry(table.clone()).or_default();
        shape.changed = false;
        shape.key = None;
        self.stage_line(sequence, &table, Op::Truncate, None)
    }

    /// A directly loaded table goes to the staging load: its rows so far are moved to the
    /// staging table just before `sequence` (after every truncate of it, before every event
    /// staged from now on), and the table is dropped, to be created at the end.
    fn demote(&mut self, table: &str, sequence: u64) -> Result<(), crate::Error> {
        self.flush_direct(table)?;
        let Some(loaded) = self.loaded.remove(table) else {
            return Ok(());
        };
        tracing::debug!(
            table,
            sequence,
            rows = loaded.rows,
            "loading through the staging table from here"
        );
        self.send(Command::Sql(loaded.plan.move_back_sql(
            STAGE,
            table,
            sequence - 1,
            &loaded.target,
        )))?;
        let shape = self.shapes.entry(table.to_owned()).or_default();
        shape.key = Some(loaded.schema.key.clone());
        Ok(())
    }

    fn flush_direct(&mut self, table: &str) -> Result<(), crate::Error> {
        let Some(loaded) = self.loaded.get_mut(table) else {
            return Ok(());
        };
        if loaded.buf.is_empty() {
            return Ok(());
        }
        self.buffered -= loaded.buf.len();
        let command = Command::Copy {
            sql: loaded.plan.copy_sql.clone(),
            data: loaded.buf.split().freeze(),
        };
        self.send(command)
    }

    fn flush_all_direct(&mut self) -> Result<(), crate::Error> {
        let tables: Vec<String> = self.loaded.keys().cloned().collect();
        for table in tables {
            self.flush_direct(&table)?;
        }
        Ok(())
    }

    fn flush_stage(&mut self) -> Result<(), crate::Error> {
        if self.stage.is_empty() {
            return Ok(());
        }
        let data = self.stage.split().freeze();
        self.send(Command::Copy {
            sql: format!("COPY {STAGE} FROM STDIN"),
            data,
        })
    }

    /// A row event to the staging table, with what it tells of its table's shape.
    fn stage_row(&mut self, sequence: u64, table: &str, op: Op, row: &RowRef<'_>) -> Result<(), crate::Error> {
        let shape = match self.shapes.get_mut(table) {
            Some(shape) => shape,
            None => self.shapes.entry(table.to_owned()).or_default(),
        };
        shape.changed |= !matches!(op, Op::Insert | Op::Snapshot) || !row.unchanged.is_empty();
        shape.unchanged |= !row.unchanged.is_empty();
        match &shape.key {
            Some(key) if row.key.names().eq(key.iter().map(String::as_str)) => {}
            Some(_) => shape.changed = true,
            None => shape.key = Some(row.key.names().map(str::to_owned).collect()),
        }
        self.stage_line(sequence, table, op, Some(row))
    }

    /// One line of the staging table: the sequence, table and op, and the event's key,
    /// before, after and unchanged as the JSON it holds (`before`/`after` NULL when null).
    fn stage_line(&mut self, sequence: u64, table: &str, op: Op, row: Option<&RowRef<'_>>) -> Result<(), crate::Error> {
        let (buf, scratch) = (&mut self.stage, &mut self.scratch);
        json::write_uint(sequence, scratch);
        buf.put_slice(scratch);
        scratch.clear();
        buf.put_u8(b'\t');
        direct::copy_text(table.as_bytes(), buf);
        buf.put_u8(b'\t');
        buf.put_slice(op.as_str().as_bytes());
        match row {
            None => buf.put_slice(b"\t\\N\t\\N\t\\N\t\\N"),
            Some(row) => {
                for columns in [Some(&row.key), row.before.as_ref(), row.after.as_ref()] {
                    buf.put_u8(b'\t');
                    match columns {
                        None => buf.put_slice(b"\\N"),
                        Some(columns) => {
                            object_text(columns, scratch);
                            direct::copy_text(scratch, buf);
                            scratch.clear();
                        }
                    }
                }
                buf.put_u8(b'\t');
                json::write_str_array(row.unchanged.iter().map(|c| &**c), scratch);
                direct::copy_text(scratch, buf);
                scratch.clear();
            }
        }
        buf.put_u8(b'\n');
        if self.stage.len() >= CHUNK {
            self.flush_stage()?;
        }
        Ok(())
    }
}

/// A JSON object of `columns`, each value the bytes the event holds.
fn object_text(columns: &RawColumns<'_>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (name, value)) in columns.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(name, out);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
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

/// A restore into `into` on `target`: the transaction and the staging table.
pub struct Loader {
    catalog: Catalog,
    wanted: Wanted,
    into: String,
    /// Schema `into` was made (`CREATE SCHEMA IF NOT EXISTS`, once: again, it notices).
    schema_made: std::cell::Cell<bool>,
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
        Ok(Loader {
            catalog,
            wanted,
            into: into.to_owned(),
            schema_made: std::cell::Cell::new(false),
        })
    }

    /// Runs what the reading side sends, in order, until it is done.
    async fn execute(&self, mut rx: tokio::sync::mpsc::Receiver<Command>) -> Result<(), crate::Error> {
        let client = self.catalog.client();
        let failed = |what: &str, e: tokio_postgres::Error| refused(format!("restore: {what}: {}", error_chain(&e)));
        while let Some(command) = rx.recv().await {
            match command {
                Command::Create { target, sql, at } => {
                    self.refuse_existing(&target).await?;
                    self.make_schema().await?;
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| failed(&format!("creating {target} from the schema event at sequence {at}"), e))?;
                }
                Command::Copy { sql, data } => {
                    let copied = async {
                        let sink = client.copy_in::<_, Bytes>(&sql).await?;
                        let mut sink = std::pin::pin!(sink);
                        sink.send(data).await?;
                        sink.finish().await
                    };
                    copied.await.map_err(|e| failed("loading the events", e))?;
                }
                Command::Sql(sql) => client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| failed("loading the events", e))?,
            }
        }
        Ok(())
    }

    async fn make_schema(&self) -> Result<(), crate::Error> {
        if !self.schema_made.replace(true) {
            self.catalog
                .client()
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&self.into)))
                .await
                .map_err(|e| refused(format!("restore: creating schema {}: {}", self.into, error_chain(&e))))?;
        }
        Ok(())
    }

    async fn refuse_existing(&self, target: &str) -> Result<(), crate::Error> {
        let exists = self
            .catalog
            .client()
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&target])
            .await
            .map_err(|e| refused(format!("restore: looking for {target}: {}", error_chain(&e))))?;
        if exists.get::<_, bool>(0) {
            return Err(refused(format!(
                "restore: {target} already exists; restore never writes an existing table (choose another --into schema, or drop it)"
            )));
        }
        Ok(())
    }

    /// The log ended and every message verified: creates the staged tables' types and
    /// tables and fills them, then commits. On any error the transaction is rolled back:
    /// nothing is written.
    async fn finish(self, read: Result<Read, crate::Error>) -> Result<(Vec<Restored>, u64), crate::Error> {
        let result = match read {
            Ok(read) => self.create_and_fill(&read).await.map(|restored| (restored, read.last)),
            Err(e) => Err(e),
        };
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.catalog.client().batch_execute(end).await;
        let restored = result?;
        ended.map_err(|e| refused(format!("restore: {end}: {}", error_chain(&e))))?;
        Ok(restored)
    }

    async fn create_and_fill(&self, read: &Read) -> Result<Vec<Restored>, crate::Error> {
        let client = self.catalog.client();
        let sql_failed =
            |what: String| move |e: tokio_postgres::Error| refused(format!("restore: {what}: {}", error_chain(&e)));
        let tables = self.tables(&read.schemas)?;
        let (loaded, tables): (Vec<_>, Vec<_>) = tables
            .into_iter()
            .partition(|(name, _)| read.loaded.contains_key(*name));
        let shapes = &read.shapes;
        if !tables.is_empty() {
            // The index serves the look-up of an unchanged column's earlier value only.
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
        }
        self.make_schema().await?;
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
        let mut out: Vec<Restored> = loaded
            .into_iter()
            .filter_map(|(name, _)| {
                let (target, rows) = read.loaded.get(name)?;
                Some(Restored {
                    table: name.clone(),
                    target: target.clone(),
                    rows: *rows,
                })
            })
            .collect();
        for (name, (seq, schema)) in tables {
            let target = target_name(&self.into, schema);
            self.refuse_existing(&target).await?;
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
            let rows = match self.load_inserts(shapes, name, &target, schema).await? {
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
        out.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(out)
    }

    /// Loads `target` one row per event when the staged events allow it (see [`Shape`]);
    /// `None` when they do not, or when that load failed (a key twice): then nothing of it
    /// stays, and the general load runs (and names any error).
    async fn load_inserts(
        &self,
        shapes: &BTreeMap<String, Shape>,
        name: &str,
        target: &str,
        schema: &TableSchema,
    ) -> Result<Option<u64>, crate::Error> {
        let simple = shapes
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
    fn tables<'s>(
        &self,
        schemas: &'s BTreeMap<String, SchemaAt>,
    ) -> Result<Vec<(&'s String, &'s SchemaAt)>, crate::Error> {
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
        lines: ExportLines,
        verifier: Option<crate::verify::Verifier<'k>>,
        keyring: &'k crate::event::Keyring,
    },
}

/// A `walguard export` file's messages, one DSSE line each (blank lines skipped).
struct ExportLines {
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    path: std::path::PathBuf,
    line: usize,
}

impl ExportLines {
    fn open(path: &std::path::Path) -> Result<ExportLines, String> {
        use std::io::BufRead;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ExportLines {
            lines: std::io::BufReader::new(file).lines(),
            path: path.to_owned(),
            line: 0,
        })
    }

    fn next(&mut self) -> Result<Option<crate::audit::Stored>, String> {
        loop {
            let Some(text) = self.lines.next() else { return Ok(None) };
            self.line += 1;
            let text = text.map_err(|e| format!("{}: {e}", self.path.display()))?;
            if text.trim().is_empty() {
                continue;
            }
            return crate::audit::parse_dsse_line(&text)
                .map(Some)
                .map_err(|e| format!("{} line {}: {e}", self.path.display(), self.line));
        }
    }
}

/// The verifier for a log whose first message is `first`.
fn verifier_from(first: &crate::audit::Stored, keyring: &crate::event::Keyring) -> crate::verify::Verifier<'static> {
    let verifier = if first.sequence > 1 {
        crate::verify::Verifier::partial(keyring)
    } else {
        crate::verify::Verifier::new(keyring)
    };
    verifier.into_owned()
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
            Source::File(path) => Inner::File {
                lines: ExportLines::open(path)?,
                verifier: None,
                keyring,
            },
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
                verifier,
                keyring,
            } => {
                let Some(m) = lines.next()? else { return Ok(None) };
                let verifier = verifier.get_or_insert_with(|| verifier_from(&m, keyring));
                checked(verifier, m).map(Some)
            }
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
        end_of_log(verifier)
    }

    /// The log as the reading thread of `into_schema` takes it, and for the live stream the
    /// task that reads it.
    fn into_feed(self) -> (Feed, Option<Pump>) {
        match self.inner {
            Inner::Archive(reader) => (Feed::Archive(reader.into_owned()), None),
            Inner::File {
                lines,
                verifier,
                keyring,
            } => (
                Feed::File {
                    lines,
                    verifier: verifier.map(crate::verify::Verifier::into_owned),
                    keyring: keyring.clone(),
                },
                None,
            ),
            Inner::Stream { reader, verifier } => {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                (
                    Feed::Stream {
                        rx,
                        verifier: verifier.into_owned(),
                    },
                    Some(Pump { reader, tx }),
                )
            }
        }
    }
}

/// What the verifier could only judge at the end of the log.
fn end_of_log(verifier: Option<crate::verify::Verifier<'_>>) -> Result<(), String> {
    let problems = verifier.map(|v| v.finish().1).unwrap_or_default();
    match problems.first() {
        None => Ok(()),
        Some(p) => Err(format!(
            "{p}; nothing restored (pass --at an earlier, signed sequence, or run `walguard verify`)"
        )),
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
///
/// The log is read and verified on a thread of its own, which turns row events into COPY
/// lines; this task sends them to the target as they come (and reads the live stream, when
/// that is the log), so that verifying and the server's loading overlap.
pub async fn into_schema(
    log: Log<'_>,
    wanted: Wanted,
    into: &str,
    target: &crate::source::tls::PgConfig,
) -> Result<(Vec<Restored>, u64), crate::Error> {
    let at = wanted.at;
    let loader = Loader::begin(target, into, wanted.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let reading = Reading {
        wanted,
        into: into.to_owned(),
        direct: std::env::var_os("WALGUARD_RESTORE_NO_DIRECT").is_none(),
        schemas: BTreeMap::new(),
        shapes: BTreeMap::new(),
        loaded: BTreeMap::new(),
        buffered: 0,
        stage: BytesMut::with_capacity(CHUNK + (64 << 10)),
        last: 0,
        tx,
        scratch: Vec::new(),
    };
    let (feed, pump) = log.into_feed();
    let reader = tokio::task::spawn_blocking(move || reading.run(feed, at));
    let executed = match pump {
        Some(pump) => {
            let (_, executed) = tokio::join!(pump.run(), loader.execute(rx));
            executed
        }
        None => loader.execute(rx).await,
    };
    let read = match reader.await {
        Ok(read) => read,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    // When the target failed, the reading side stopped for it: the target's error is the one.
    let read = match executed {
        Ok(()) => read,
        Err(e) => Err(e),
    };
    loader.finish(read).await
}

/// The log as the reading thread takes it: one message at a time, placed, then verified.
enum Feed {
    Archive(crate::archive::ArchiveReader<'static>),
    File {
        lines: ExportLines,
        verifier: Option<crate::verify::Verifier<'static>>,
        keyring: crate::event::Keyring,
    },
    /// The live stream, read by a `Pump` on the runtime.
    Stream {
        rx: tokio::sync::mpsc::Receiver<Result<crate::audit::Stored, String>>,
        verifier: crate::verify::Verifier<'static>,
    },
}

impl Feed {
    fn next(&mut self) -> Result<Option<crate::audit::Stored>, String> {
        match self {
            Feed::Archive(reader) => reader.next_placed().map_err(|e| e.to_string()),
            Feed::File {
                lines,
                verifier,
                keyring,
            } => {
                let m = lines.next()?;
                if let (None, Some(m)) = (&verifier, &m) {
                    *verifier = Some(verifier_from(m, keyring));
                }
                Ok(m)
            }
            Feed::Stream { rx, .. } => rx.blocking_recv().transpose(),
        }
    }

    /// Verifies `m`, the message `next` gave; the first problem refuses it.
    fn verify<'p>(&mut self, m: &'p crate::audit::Stored) -> Result<EventRef<'p>, String> {
        let verifier = match self {
            Feed::Archive(reader) => return reader.verify_ref(m).map_err(|e| e.to_string()),
            Feed::File { verifier, .. } => verifier.as_mut().expect("made with the first message"),
            Feed::Stream { verifier, .. } => verifier,
        };
        verifier.check_ref(m).map_err(|p| format!("{p}; nothing restored"))
    }

    /// At the end of the log (see `Log::finish`).
    fn finish(self) -> Result<(), String> {
        let verifier = match self {
            Feed::Archive(reader) => Some(reader.verifier),
            Feed::File { verifier, .. } => verifier,
            Feed::Stream { verifier, .. } => Some(verifier),
        };
        end_of_log(verifier)
    }
}

/// Reads the live stream into a `Feed::Stream`, on the runtime.
struct Pump {
    reader: Box<crate::sink::reader::StreamReader>,
    tx: tokio::sync::mpsc::Sender<Result<crate::audit::Stored, String>>,
}

impl Pump {
    async fn run(mut self) {
        loop {
            let next = self.reader.next().await.map_err(|e| e.to_string());
            let end = !matches!(next, Ok(Some(_)));
            let Some(item) = next.transpose() else { return };
            // A closed channel: the reading side is done (at `--at`, or failed).
            if self.tx.send(item).await.is_err() || end {
                return;
            }
        }
    }
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
}
