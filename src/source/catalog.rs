//! The ordinary SQL connection (tokio-postgres): preflight facts, guarded tables and their
//! keys, the publication, the slot's state, and resolving types that pgoutput names only by
//! OID (enums, domains, arrays of them).

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::event::builder::TableSpec;
use crate::event::value::ValueKind;
use crate::lsn::Lsn;
use crate::source::conn::{quote_ident, SESSION_OPTIONS};

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
    /// Something only the operator can fix; the message says how.
    #[error("{0}")]
    Refused(String),
}

impl CatalogError {
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Postgres { source, .. } => match source.code() {
                None => true,
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                }
            },
            CatalogError::Connect { .. } => true,
            CatalogError::Refused(_) => false,
        }
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
    _conn: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    pub wal_status: Option<String>,
}

impl Catalog {
    pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Catalog, CatalogError> {
        let target = super::conn::describe_target(cfg);
        let mut cfg = cfg.clone();
        cfg.options(SESSION_OPTIONS);
        if cfg.get_application_name().is_none() {
            cfg.application_name("walguard");
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(10));
        }
        let (client, conn) = cfg.connect(NoTls).await.map_err(|e| CatalogError::Connect {
            target: target.clone(),
            reason: error_chain(&e),
        })?;
        let handle = tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "catalog connection ended");
            }
        });
        Ok(Catalog {
            client,
            target,
            _conn: handle,
        })
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> CatalogError + '_ {
        |source| CatalogError::Postgres {
            target: self.target.clone(),
            source,
        }
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

    pub async fn server_version_num(&self) -> Result<i32, CatalogError> {
        Ok(self.setting("server_version_num").await?.parse().unwrap_or(0))
    }

    /// Checks everything `run` needs from the database and returns the guarded tables with
    /// their keys. Never changes anything.
    pub async fn guarded_tables(&self, cfg: &Config) -> Result<Vec<TableSpec>, CatalogError> {
        let wal_level = self.setting("wal_level").await?;
        if wal_level != "logical" {
            return Err(CatalogError::Refused(format!(
                "wal_level is {wal_level}, logical decoding needs logical: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
            )));
        }
        let mut specs = Vec::new();
        for (schema, name, table) in cfg.guarded() {
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let row = self
                .client
                .query_opt(
                    "SELECT c.relreplident::text, c.relkind::text,
                            ARRAY(SELECT a.attname::text FROM pg_index i
                                  JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                  WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord),
                            ARRAY(SELECT a.attname::text FROM pg_index i
                                  JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                  WHERE i.indrelid = c.oid AND i.indisreplident ORDER BY k.ord),
                            ARRAY(SELECT a.attname::text FROM pg_attribute a
                                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2",
                    &[&schema, &name],
                )
                .await
                .map_err(self.err())?;
            let Some(row) = row else {
                return Err(CatalogError::Refused(format!(
                    "table {qualified} (from [[tables]] name = {:?}) does not exist in database {}: create it or fix the name",
                    table.name, self.target
                )));
            };
            let identity: String = row.get(0);
            let kind: String = row.get(1);
            let pk: Vec<String> = row.get(2);
            let ident_index: Vec<String> = row.get(3);
            let columns: Vec<String> = row.get(4);
            if !matches!(kind.as_str(), "r" | "p") {
                return Err(CatalogError::Refused(format!(
                    "{qualified} is not a table (relkind {kind}); only tables can be guarded"
                )));
            }
            let identity_columns: Vec<String> = match identity.as_str() {
                "d" => pk.clone(),
                "i" => ident_index,
                "f" => columns.clone(),
                _ => Vec::new(),
            };
            if identity == "n" {
                return Err(CatalogError::Refused(format!(
                    "table {qualified} has REPLICA IDENTITY NOTHING: its updates and deletes cannot be published; run ALTER TABLE {qualified} REPLICA IDENTITY FULL (or DEFAULT with a primary key)"
                )));
            }
            if identity == "d" && pk.is_empty() {
                return Err(CatalogError::Refused(format!(
                    "table {qualified} has no primary key and replica identity DEFAULT: publishing it would make every UPDATE and DELETE of its writers fail; run ALTER TABLE {qualified} REPLICA IDENTITY FULL and configure `key` for it in [[tables]]"
                )));
            }
            let key = match &table.key {
                Some(k) => k.clone(),
                None if !pk.is_empty() => pk.clone(),
                None => {
                    return Err(CatalogError::Refused(format!(
                        "table {qualified} has no primary key: configure `key = [\"col\", ...]` for it in [[tables]]"
                    )))
                }
            };
            for k in &key {
                if !columns.contains(k) {
                    return Err(CatalogError::Refused(format!(
                        "table {qualified}: key column {k:?} from [[tables]] does not exist"
                    )));
                }
                if !identity_columns.contains(k) {
                    return Err(CatalogError::Refused(format!(
                        "table {qualified}: key column {k:?} is not part of the replica identity, so deletes would not carry it; run ALTER TABLE {qualified} REPLICA IDENTITY FULL or use the replica identity columns as `key`"
                    )));
                }
            }
            specs.push(TableSpec {
                type_prefix: table.type_prefix.clone().unwrap_or_else(|| format!("{schema}.{name}")),
                schema,
                name,
                key,
            });
        }
        Ok(specs)
    }

    /// Creates the publication for the guarded tables when it is missing, and adds guarded
    /// tables it lacks (their replica identity was checked by `guarded_tables`).
    pub async fn ensure_publication(&self, publication: &str, tables: &[TableSpec]) -> Result<(), CatalogError> {
        let exists = self
            .client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
            .await
            .map_err(self.err())?
            .is_some();
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
            .collect();
        if !exists {
            let via_root = if self.server_version_num().await? >= 130000 {
                " WITH (publish_via_partition_root = true)"
            } else {
                ""
            };
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}{via_root}",
                quote_ident(publication),
                names.join(", ")
            );
            tracing::info!(publication, "creating publication");
            self.client.batch_execute(&sql).await.map_err(self.err())?;
            return Ok(());
        }
        let published: Vec<(String, String)> = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(self.err())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (t, name) in tables.iter().zip(&names) {
            if !published.contains(&(t.schema.clone(), t.name.clone())) {
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
        let has_wal_status = self.server_version_num().await? >= 130000;
        let sql = format!(
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text, {} FROM pg_replication_slots WHERE slot_name = $1",
            if has_wal_status { "wal_status::text" } else { "NULL::text" }
        );
        let row = self.client.query_opt(&sql, &[&slot]).await.map_err(self.err())?;
        Ok(row.map(|r| SlotInfo {
            plugin: r.get(0),
            database: r.get(1),
            active_pid: r.get(2),
            confirmed_flush: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
            wal_status: r.get(4),
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
