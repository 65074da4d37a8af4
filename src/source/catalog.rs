//! The ordinary SQL connection (tokio-postgres): preflight facts, guarded tables and their
//! keys, the publication, the slot's state, and resolving types that pgoutput names only by
//! OID (enums, domains, arrays of them).

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

use crate::decode::pgoutput::{Column, Relation, ReplicaIdentity};
use crate::event::shape::TableSpec;
use crate::event::value::ValueKind;
use crate::lsn::Lsn;
use crate::source::conn::{quote_ident, SESSION_OPTIONS};
use crate::source::hosts::{self, NoHost, ServerState};
use crate::source::tls::{PgConfig, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("PostgreSQL at {target}: {}", error_chain(source))]
    Postgres {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// An answer walguard cannot read (a setting or LSN that does not parse): never taken
    /// for a default.
    #[error("PostgreSQL at {target}: {what}")]
    Unreadable { target: String, what: String },
}

impl CatalogError {
    pub fn is_transient(&self) -> bool {
        match self {
            // No code: the connection itself failed (closed, I/O), which a new one can get past.
            CatalogError::Postgres { source, .. } => {
                source.code().is_none_or(|c| super::sqlstate::is_transient(c.code()))
            }
            CatalogError::Connect { .. } => true,
            CatalogError::Unreadable { .. } => false,
        }
    }
}

fn log_end(result: Result<(), tokio_postgres::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "catalog connection ended");
    }
}

/// An error with its causes, `a: b: c`, since tokio-postgres puts the useful part in the
/// source ("connection refused", the server's message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = cause.source();
    }
    out
}

pub struct Catalog {
    client: Client,
    target: String,
    /// The one host of `postgres.url` this connection went to (`source::hosts`).
    chosen: PgConfig,
    /// What that server said it is when connected.
    state: ServerState,
    _conn: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    /// `None` while the slot reserves no WAL (its `restart_lsn` is NULL).
    pub wal_status: Option<WalStatus>,
    /// WAL the slot keeps from being removed: current WAL position minus `restart_lsn`.
    pub retained_bytes: Option<i64>,
    /// Bytes that can still be written before the slot is in danger of losing WAL.
    pub safe_wal_size: Option<i64>,
}

/// `pg_replication_slots.wal_status`: whether the WAL the slot needs is still on the server
/// (PostgreSQL docs, "pg_replication_slots"). Only `lost` is final: the slot is unusable, a gap
/// only `walguard resync` gets past. A value a newer server may add is kept as its text, so
/// messages and logs show what the server said instead of a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalStatus {
    /// The WAL it needs is within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, but kept by the slot or `wal_keep_size`.
    Extended,
    /// Some of the WAL it needs goes at the next checkpoint (`max_slot_wal_keep_size` is
    /// exceeded); catching up in time returns it to `reserved` or `extended`.
    Unreserved,
    /// WAL it needs is gone.
    Lost,
    /// A value this walguard does not know, as the server wrote it.
    Other(String),
}

impl WalStatus {
    /// As `pg_replication_slots` shows it.
    pub fn as_str(&self) -> &str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Unreserved => "unreserved",
            WalStatus::Lost => "lost",
            WalStatus::Other(text) => text,
        }
    }
}

impl From<String> for WalStatus {
    fn from(text: String) -> WalStatus {
        match text.as_str() {
            "reserved" => WalStatus::Reserved,
            "extended" => WalStatus::Extended,
            "unreserved" => WalStatus::Unreserved,
            "lost" => WalStatus::Lost,
            _ => WalStatus::Other(text),
        }
    }
}

impl std::fmt::Display for WalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct TableFacts {
    pub oid: u32,
    pub is_table: bool,
    pub partitioned: bool,
    pub is_partition: bool,
    pub identity: ReplicaIdentity,
    pub can_select: bool,
    pub primary_key: Vec<String>,
    pub identity_index: Vec<String>,
    pub columns: Vec<String>,
    pub generated: Generated,
    /// For a partitioned table: its leaf partitions, whose identities the writers need.
    pub leaves: Vec<Leaf>,
}

impl TableFacts {
    /// The columns the replica identity holds, which an UPDATE or DELETE carries as the old
    /// row: the primary key (DEFAULT), the identity index (USING INDEX), every column (FULL).
    pub fn identity_columns(&self) -> &[String] {
        match self.identity {
            ReplicaIdentity::Default => &self.primary_key,
            ReplicaIdentity::Index => &self.identity_index,
            ReplicaIdentity::Full => &self.columns,
            ReplicaIdentity::Nothing => &[],
        }
    }
}

/// `pg_class.relreplident`, which is always one of the four letters (PostgreSQL docs,
/// "pg_class"). Anything else would come from a server walguard does not know, and is read as
/// NOTHING, which `check` refuses, rather than guessed usable.
fn identity_of(relreplident: String) -> ReplicaIdentity {
    let code = relreplident.bytes().next().unwrap_or(b'n');
    ReplicaIdentity::from_code(code).unwrap_or(ReplicaIdentity::Nothing)
}

#[derive(Debug, Clone)]
pub struct Leaf {
    pub name: String,
    pub identity: ReplicaIdentity,
    pub has_pk: bool,
    pub has_identity_index: bool,
    pub generated: Generated,
}

/// A relation's generated columns, which PostgreSQL 18 weighs on every published UPDATE and
/// DELETE (see `check::generated_problem`). Before 18 there are only stored ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    /// `GENERATED ALWAYS AS (...) STORED`, in attnum order.
    pub stored: Vec<String>,
    /// `GENERATED ALWAYS AS (...) VIRTUAL` (PostgreSQL 18), never published.
    pub virtual_columns: Vec<String>,
    /// The stored ones that are part of the replica identity: every one under FULL, those
    /// in the primary key (DEFAULT) or the identity index (USING INDEX).
    pub stored_in_identity: Vec<String>,
}

/// The three `Generated` arrays of the relation `c`, for a SELECT list.
const GENERATED_COLUMNS: &str = "
    ARRAY(SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 's' ORDER BY a.attnum),
    ARRAY(SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 'v' ORDER BY a.attnum),
    ARRAY(SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 's'
            AND (c.relreplident = 'f' OR EXISTS (
                 SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey)
                 AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))))
          ORDER BY a.attnum)";

fn generated_at(row: &tokio_postgres::Row, first: usize) -> Generated {
    Generated {
        stored: row.get(first),
        virtual_columns: row.get(first + 1),
        stored_in_identity: row.get(first + 2),
    }
}

#[derive(Debug, Clone)]
pub struct PublicationFacts {
    /// insert, update, delete, truncate.
    pub actions: [bool; 4],
    pub via_root: bool,
    pub all_tables: bool,
    /// Publishes stored generated columns: `publish_generated_columns = stored`
    /// (`pg_publication.pubgencols = 's'`, PostgreSQL 18). Always false before 18, which never
    /// publishes generated columns.
    pub generated_stored: bool,
    pub tables: Vec<(String, String)>,
}

impl Catalog {
    /// Connects to the first host of `pg` that is what its `target_session_attrs` asks for
    /// (`source::hosts`).
    pub async fn connect(pg: &PgConfig) -> Result<Catalog, CatalogError> {
        match hosts::connect(pg, Catalog::connect_one, |_| true).await {
            Ok((catalog, _)) => Ok(catalog),
            Err(NoHost::Single(e)) => Err(e),
            Err(NoHost::Listed { message, .. }) => Err(CatalogError::Connect {
                target: super::tls::describe_target(pg),
                reason: message,
            }),
        }
    }

    /// One host: connects and asks what the server is.
    async fn connect_one(pg: PgConfig) -> Result<(Catalog, ServerState), CatalogError> {
        let target = super::tls::describe_target(&pg);
        let mut cfg: tokio_postgres::Config = (*pg).clone();
        cfg.options(SESSION_OPTIONS);
        if cfg.get_application_name().is_none() {
            cfg.application_name("walguard");
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(10));
        }
        let failed = |e: tokio_postgres::Error| CatalogError::Connect {
            target: target.clone(),
            reason: error_chain(&e),
        };
        let (client, handle) = if pg.ssl_mode == SslMode::Disable {
            let (client, conn) = cfg.connect(NoTls).await.map_err(failed)?;
            (client, tokio::spawn(async move { log_end(conn.await) }))
        } else {
            let tls = pg.rustls().map_err(|reason| CatalogError::Connect {
                target: target.clone(),
                reason,
            })?;
            let (client, conn) = cfg
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(failed)?;
            (client, tokio::spawn(async move { log_end(conn.await) }))
        };
        let row = client
            .query_one(ServerState::QUERY, &[])
            .await
            .map_err(|source| CatalogError::Postgres {
                target: target.clone(),
                source,
            })?;
        let state = ServerState::from_text(row.get(0), row.get(1)).ok_or_else(|| CatalogError::Connect {
            target: target.clone(),
            reason: "the server's answer to pg_is_in_recovery() or transaction_read_only is not a boolean".into(),
        })?;
        let catalog = Catalog {
            client,
            target,
            chosen: pg,
            state,
            _conn: handle,
        };
        Ok((catalog, state))
    }

    /// The one host this connection went to: the replication connection goes there too, so
    /// both talk to the same server.
    pub fn chosen(&self) -> &PgConfig {
        &self.chosen
    }

    /// Whether the server was in recovery (a standby) when connected.
    pub fn in_recovery(&self) -> bool {
        self.state.in_recovery
    }

    pub(crate) fn err(&self) -> impl Fn(tokio_postgres::Error) -> CatalogError + '_ {
        |source| CatalogError::Postgres {
            target: self.target.clone(),
            source,
        }
    }

    fn unreadable(&self, what: String) -> CatalogError {
        CatalogError::Unreadable {
            target: self.target.clone(),
            what,
        }
    }

    /// An LSN the server printed, or an error naming `what` it is.
    fn lsn(&self, text: &str, what: &str) -> Result<Lsn, CatalogError> {
        text.parse()
            .map_err(|_| self.unreadable(format!("{what} {text:?} is not an LSN")))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn setting(&self, name: &str) -> Result<String, CatalogError> {
        let row = self
            .client
            .query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
            .await
            .map_err(self.err())?;
        Ok(row.get(0))
    }

    /// A setting as `SHOW` prints it, with its unit (`1h`, `10GB`), or `None` when this
    /// server does not have it.
    pub async fn shown_setting(&self, name: &str) -> Result<Option<String>, CatalogError> {
        let row = self
            .client
            .query_one("SELECT current_setting($1, true)", &[&name])
            .await
            .map_err(self.err())?;
        Ok(row.get(0))
    }

    /// Bytes of WAL written per second: the larger of the rate over `sample` (two readings of
    /// the WAL position) and the average since `pg_stat_wal`'s statistics were reset, so that
    /// a quiet second does not hide the usual load. `None` when neither can be measured (a
    /// standby not receiving WAL). On a standby the position is what it has received.
    pub async fn wal_write_rate(&self, sample: std::time::Duration) -> Result<Option<f64>, CatalogError> {
        const POSITION: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                             ELSE pg_current_wal_lsn() END)::text";
        let read = |row: tokio_postgres::Row| row.get::<_, Option<String>>(0).and_then(|l| l.parse::<Lsn>().ok());
        let started = std::time::Instant::now();
        let first = read(self.client.query_one(POSITION, &[]).await.map_err(self.err())?);
        tokio::time::sleep(sample).await;
        let second = read(self.client.query_one(POSITION, &[]).await.map_err(self.err())?);
        let elapsed = started.elapsed().as_secs_f64();
        let sampled = match (first, second) {
            (Some(a), Some(b)) if elapsed > 0.0 => Some(b.0.saturating_sub(a.0) as f64 / elapsed),
            _ => None,
        };
        let average: Option<f64> = self
            .client
            .query_one(
                "SELECT wal_bytes::float8 / nullif(extract(epoch FROM now() - stats_reset)::float8, 0) FROM pg_stat_wal",
                &[],
            )
            .await
            .map_err(self.err())?
            .get(0);
        Ok(match (sampled, average) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    /// `max_slot_wal_keep_size` in bytes (-1: unlimited) and as SHOW prints it.
    pub async fn max_slot_wal_keep_size(&self) -> Result<(i64, String), CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size')), current_setting('max_slot_wal_keep_size')",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok((row.get(0), row.get(1)))
    }

    pub async fn server_version_num(&self) -> Result<i32, CatalogError> {
        let value = self.setting("server_version_num").await?;
        value
            .parse()
            .map_err(|_| self.unreadable(format!("server_version_num {value:?} is not a number")))
    }

    /// What the catalog says about one table, or `None` when it does not exist.
    pub async fn table(&self, schema: &str, name: &str) -> Result<Option<TableFacts>, CatalogError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT c.oid, c.relkind::text, c.relreplident::text, c.relispartition,
                        has_table_privilege(c.oid, 'SELECT'),
                        ARRAY(SELECT a.attname::text FROM pg_index i
                              JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord),
                        ARRAY(SELECT a.attname::text FROM pg_index i
                              JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisreplident ORDER BY k.ord),
                        ARRAY(SELECT a.attname::text FROM pg_attribute a
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
                        {GENERATED_COLUMNS}
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2"
                ),
                &[&schema, &name],
            )
            .await
            .map_err(self.err())?;
        let Some(row) = row else { return Ok(None) };
        let oid: u32 = row.get(0);
        let kind: String = row.get(1);
        let mut leaves = Vec::new();
        if kind == "p" {
            let rows = self
                .client
                .query(
                    &format!(
                        "SELECT c.oid::regclass::text, c.relreplident::text,
                            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                            {GENERATED_COLUMNS}
                     FROM pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid
                     WHERE t.isleaf ORDER BY 1"
                    ),
                    &[&oid],
                )
                .await
                .map_err(self.err())?;
            leaves = rows
                .iter()
                .map(|r| Leaf {
                    name: r.get(0),
                    identity: identity_of(r.get(1)),
                    has_pk: r.get(2),
                    has_identity_index: r.get(3),
                    generated: generated_at(r, 4),
                })
                .collect();
        }
        Ok(Some(TableFacts {
            oid,
            partitioned: kind == "p",
            is_table: matches!(kind.as_str(), "r" | "p"),
            is_partition: row.get(3),
            identity: identity_of(row.get(2)),
            can_select: row.get(4),
            primary_key: row.get(5),
            identity_index: row.get(6),
            columns: row.get(7),
            generated: generated_at(&row, 8),
            leaves,
        }))
    }

    /// The shape of a table as a Relation message would describe it: published columns in
    /// attnum order (stored generated ones from PostgreSQL 18 on, which `check` makes sure the
    /// publication publishes too), their types, and which belong to the replica identity.
    /// Used to build snapshot rows.
    pub async fn relation(&self, schema: &str, name: &str) -> Result<Option<Relation>, CatalogError> {
        let Some(facts) = self.table(schema, name).await? else {
            return Ok(None);
        };
        let generated = if self.server_version_num().await? >= 180000 {
            "a.attgenerated IN ('', 's')"
        } else {
            "a.attgenerated = ''"
        };
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT a.attname::text, a.atttypid, a.atttypmod FROM pg_attribute a
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND {generated} ORDER BY a.attnum"
                ),
                &[&facts.oid],
            )
            .await
            .map_err(self.err())?;
        let columns = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                Column {
                    key: facts.identity_columns().contains(&name),
                    name,
                    type_oid: r.get(1),
                    type_modifier: r.get(2),
                }
            })
            .collect();
        Ok(Some(Relation {
            oid: facts.oid,
            namespace: schema.to_owned(),
            name: name.to_owned(),
            replica_identity: facts.identity,
            columns,
        }))
    }

    /// The planner's row estimate, for progress reports.
    pub async fn estimated_rows(&self, oid: u32) -> Result<i64, CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(self.err())?;
        Ok(row.get(0))
    }

    /// Writes a non-transactional logical message and returns its LSN.
    pub async fn emit_message(&self, prefix: &str, content: &str) -> Result<Lsn, CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, $2)::text",
                &[&prefix, &content],
            )
            .await
            .map_err(self.err())?;
        self.lsn(&row.get::<_, String>(0), "pg_logical_emit_message returned")
    }

    /// The connected role and whether it may open replication connections.
    pub async fn role(&self) -> Result<(String, bool), CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT rolname::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok((row.get(0), row.get(1)))
    }

    /// `(slots in use, max_replication_slots, WAL senders in use, max_wal_senders)`.
    pub async fn replication_capacity(&self) -> Result<(i64, i64, i64, i64), CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots),
                        current_setting('max_replication_slots')::bigint,
                        (SELECT count(*) FROM pg_stat_replication),
                        current_setting('max_wal_senders')::bigint",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    pub async fn publication(&self, name: &str) -> Result<Option<PublicationFacts>, CatalogError> {
        let row = self
            .client
            .query_opt(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, puballtables
                 FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(self.err())?;
        let Some(row) = row else { return Ok(None) };
        // pubgencols exists from PostgreSQL 18 on, with publish_generated_columns.
        let generated_stored = if self.server_version_num().await? >= 180000 {
            let row = self
                .client
                .query_one(
                    "SELECT pubgencols = 's' FROM pg_publication WHERE pubname = $1",
                    &[&name],
                )
                .await
                .map_err(self.err())?;
            row.get(0)
        } else {
            false
        };
        let tables = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(self.err())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Some(PublicationFacts {
            actions: [row.get(0), row.get(1), row.get(2), row.get(3)],
            via_root: row.get(4),
            all_tables: row.get(5),
            generated_stored,
            tables,
        }))
    }

    /// Creates the publication for the guarded tables when it is missing, and adds guarded
    /// tables it lacks. Only called after `check::database` found every table's replica
    /// identity usable (generated columns in it included, on PostgreSQL 18), so adding a table
    /// never breaks its writers.
    pub async fn ensure_publication(
        &self,
        publication: &str,
        facts: Option<&PublicationFacts>,
        tables: &[TableSpec],
    ) -> Result<(), CatalogError> {
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
            .collect();
        let Some(facts) = facts else {
            let version = self.server_version_num().await?;
            let mut with = vec!["publish_via_partition_root = true"];
            if version >= 180000 {
                with.push("publish_generated_columns = stored");
            }
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH ({})",
                quote_ident(publication),
                names.join(", "),
                with.join(", ")
            );
            tracing::info!(publication, "creating publication");
            self.client.batch_execute(&sql).await.map_err(self.err())?;
            return Ok(());
        };
        if facts.all_tables {
            return Ok(());
        }
        for (t, name) in tables.iter().zip(&names) {
            if !facts.tables.contains(&(t.schema.clone(), t.name.clone())) {
                tracing::info!(publication, table = %name, "adding guarded table to the publication");
                self.client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {name}",
                        quote_ident(publication)
                    ))
                    .await
                    .map_err(self.err())?;
            }
        }
        Ok(())
    }

    pub async fn slot(&self, slot: &str) -> Result<Option<SlotInfo>, CatalogError> {
        let row = self
            .client
            .query_opt(
                "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, wal_status::text,
                        pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                                  ELSE pg_current_wal_lsn() END, restart_lsn)::bigint, safe_wal_size::bigint
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(self.err())?;
        let Some(r) = row else { return Ok(None) };
        let confirmed_flush = r
            .get::<_, Option<String>>(3)
            .map(|s| self.lsn(&s, "the slot's confirmed_flush_lsn"))
            .transpose()?;
        Ok(Some(SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active_pid: r.get(2),
            confirmed_flush,
            wal_status: r.get::<_, Option<String>>(4).map(WalStatus::from),
            retained_bytes: r.get(5),
            safe_wal_size: r.get(6),
        }))
    }

    /// Resolves type OIDs without a built-in mapping: domains to their base type, arrays to
    /// arrays of their element's mapping, enums, ranges and composites to strings.
    pub async fn resolve_types(
        &self,
        oids: impl IntoIterator<Item = u32>,
        known: &mut HashMap<u32, ValueKind>,
    ) -> Result<(), CatalogError> {
        for oid in oids {
            let kind = Box::pin(self.resolve(oid, 0)).await?;
            known.insert(oid, kind);
        }
        Ok(())
    }

    async fn resolve(&self, oid: u32, depth: usize) -> Result<ValueKind, CatalogError> {
        if let Some(kind) = ValueKind::builtin(oid) {
            return Ok(kind);
        }
        if depth > 8 {
            return Ok(ValueKind::Text);
        }
        let row = self
            .client
            .query_opt(
                "SELECT typtype::text, typbasetype, typelem, typcategory::text, typdelim::text FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(self.err())?;
        let Some(row) = row else { return Ok(ValueKind::Text) };
        let typtype: String = row.get(0);
        let base: u32 = row.get(1);
        let elem: u32 = row.get(2);
        let category: String = row.get(3);
        let delim: String = row.get(4);
        Ok(match (typtype.as_str(), category.as_str()) {
            ("d", _) => Box::pin(self.resolve(base, depth + 1)).await?,
            (_, "A") if elem != 0 => {
                let element = Box::pin(self.resolve(elem, depth + 1)).await?;
                let delimiter = self
                    .delimiter_of(elem)
                    .await?
                    .unwrap_or_else(|| delim.bytes().next().unwrap_or(b','));
                ValueKind::Array {
                    element: Box::new(element),
                    delimiter,
                }
            }
            _ => ValueKind::Text,
        })
    }

    async fn delimiter_of(&self, oid: u32) -> Result<Option<u8>, CatalogError> {
        let row = self
            .client
            .query_opt("SELECT typdelim::text FROM pg_type WHERE oid = $1", &[&oid])
            .await
            .map_err(self.err())?;
        Ok(row.and_then(|r| r.get::<_, String>(0).bytes().next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_status_reads_the_known_values_and_keeps_an_unknown_one_as_text() {
        for text in ["reserved", "extended", "unreserved", "lost", "future"] {
            let status = WalStatus::from(text.to_owned());
            assert_eq!(status.to_string(), text);
            assert_eq!(matches!(status, WalStatus::Other(_)), text == "future", "{text}");
        }
        assert_eq!(WalStatus::from("lost".to_owned()), WalStatus::Lost);
    }

    #[test]
    fn relreplident_reads_as_the_replica_identity_and_fails_closed() {
        assert_eq!(identity_of("f".into()), ReplicaIdentity::Full);
        assert_eq!(identity_of("i".into()), ReplicaIdentity::Index);
        assert_eq!(identity_of("d".into()), ReplicaIdentity::Default);
        assert_eq!(identity_of("n".into()), ReplicaIdentity::Nothing);
        assert_eq!(identity_of("x".into()), ReplicaIdentity::Nothing);
    }
}
