//! Preflight checks, shared by `walguard check` and `run`'s start-up (Vector's `validate`):
//! each yields a name, an outcome and, when something is wrong, the exact SQL or setting
//! that fixes it. `run` refuses to start on any failure; `check` prints them all.
//!
//! What `run` creates by itself (a missing publication, slot or stream) is a warning, so a
//! fresh setup that `run` can start passes (SPEC section 5).

mod failover;

use serde::Serialize;

use crate::config::{Config, TableConfig};
use crate::decode::pgoutput::ReplicaIdentity;
use crate::error::Refusal;
use crate::error::{exit, Error};
use crate::event::shape::TableSpec;
use crate::lsn::Lsn;
use crate::sink::{self, stream};
use crate::source::catalog::{Catalog, CatalogError, Generated, Leaf, PublicationFacts, TableFacts, WalStatus};
use crate::source::conn::{quote_ident, ReplicationConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A server could not be reached (exit code 69 rather than 1).
    #[serde(skip)]
    pub unavailable: bool,
}

/// What a pure judging function makes of the facts, before the report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub detail: String,
    pub fix: Option<String>,
}

impl Verdict {
    fn pass(detail: String) -> Verdict {
        Verdict {
            outcome: Outcome::Pass,
            detail,
            fix: None,
        }
    }

    fn warn(detail: String, fix: String) -> Verdict {
        Verdict {
            outcome: Outcome::Warn,
            detail,
            fix: Some(fix),
        }
    }

    fn fail(detail: String, fix: String) -> Verdict {
        Verdict {
            outcome: Outcome::Fail,
            detail,
            fix: Some(fix),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: &str, outcome: Outcome, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name: name.to_owned(),
            outcome,
            detail,
            fix,
            unavailable: false,
        });
    }

    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Outcome::Pass, detail.into(), None);
    }

    pub fn warn(&mut self, name: &str, detail: impl Into<String>, fix: impl Into<Option<String>>) {
        self.push(name, Outcome::Warn, detail.into(), fix.into());
    }

    pub fn fail(&mut self, name: &str, detail: impl Into<String>, fix: impl Into<Option<String>>) {
        self.push(name, Outcome::Fail, detail.into(), fix.into());
    }

    fn unavailable(&mut self, name: &str, detail: impl Into<String>, fix: &str) {
        self.fail(name, detail, Some(fix.to_owned()));
        if let Some(last) = self.checks.last_mut() {
            last.unavailable = true;
        }
    }

    pub fn record(&mut self, name: &str, verdict: Verdict) {
        self.push(name, verdict.outcome, verdict.detail, verdict.fix);
    }

    /// Logs the warnings, for `run`'s start-up, where nobody reads the printed report.
    pub fn log_warnings(&self) {
        for c in self.checks.iter().filter(|c| c.outcome == Outcome::Warn) {
            match &c.fix {
                Some(fix) => tracing::warn!(check = %c.name, %fix, "{}", c.detail),
                None => tracing::warn!(check = %c.name, "{}", c.detail),
            }
        }
    }

    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// The failures, one per line with their fixes, for `run`'s refusal.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .map(|c| match &c.fix {
                Some(fix) => format!("{}: {} (fix: {fix})", c.name, c.detail),
                None => format!("{}: {}", c.name, c.detail),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// 0 ready, 69 a server unreachable, 1 any other failure.
    pub fn exit_code(&self) -> i32 {
        if self.ready() {
            exit::OK
        } else if self.checks.iter().any(|c| c.unavailable) {
            exit::UNAVAILABLE
        } else {
            exit::PROBLEM
        }
    }

    pub fn render_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.outcome {
                Outcome::Pass => "PASS",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
            };
            out.push_str(&format!("{tag}  {:width$}  {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:width$}  fix: {fix}\n", ""));
            }
        }
        let (w, f) = (
            self.checks.iter().filter(|c| c.outcome == Outcome::Warn).count(),
            self.checks.iter().filter(|c| c.outcome == Outcome::Fail).count(),
        );
        out.push_str(&if f == 0 {
            format!("ready: {} checks, {w} warnings\n", self.checks.len())
        } else {
            format!("NOT ready: {f} failed, {w} warnings\n")
        });
        out
    }

    pub fn render_json(&self) -> String {
        serde_json::json!({ "ready": self.ready(), "checks": self.checks }).to_string()
    }
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The database checks `run` makes before it streams: the server, each guarded table, the
/// publication. Returns the guarded tables (when every one is usable) and the publication as
/// it is.
pub async fn database(
    catalog: &Catalog,
    cfg: &Config,
    report: &mut Report,
) -> Result<(Vec<TableSpec>, Option<PublicationFacts>), CatalogError> {
    let server = check_server(catalog, cfg, report).await?;
    retention(catalog, report).await?;
    let publication = catalog.publication(&cfg.postgres.publication).await?;
    let guarded = check_tables(catalog, cfg, &server, publication.as_ref(), report).await?;
    if catalog.in_recovery() {
        standby_source(
            &cfg.postgres.publication,
            publication.as_ref(),
            &guarded,
            &server,
            report,
        );
    } else {
        check_publication(&cfg.postgres.publication, publication.as_ref(), &guarded, report);
    }
    Ok((guarded.specs, publication))
}

/// The database checks `run` and `resync` make before they touch the slot, refusing on any
/// failure (warnings go to the log, where nobody reads a report), then the publication made
/// to cover the guarded tables. Returns the guarded tables.
pub async fn prepare_database(catalog: &Catalog, cfg: &Config) -> Result<Vec<TableSpec>, Error> {
    let mut report = Report::default();
    let (tables, publication) = database(catalog, cfg, &mut report).await?;
    report.log_warnings();
    if !report.ready() {
        return Err(Error::Refused(Refusal::Preflight, report.failures()));
    }
    catalog
        .ensure_publication(&cfg.postgres.publication, publication.as_ref(), &tables)
        .await?;
    Ok(tables)
}

/// `postgres.failover_slot`, refused on servers before PostgreSQL 17, whose
/// CREATE_REPLICATION_SLOT has no FAILOVER option. Checked on the replication connection
/// that creates the slot, whose startup parameters name the server's version. Returns whether
/// the slot is to be a failover slot.
pub fn failover_slot(cfg: &Config, repl: &ReplicationConnection, standby: bool) -> Result<bool, Error> {
    if cfg.postgres.failover_slot && standby {
        return Err(Error::Refused(
            Refusal::Preflight,
            format!(
                "postgres.failover_slot = true, but postgres.url reached a standby, where a failover slot cannot be created (PostgreSQL synchronizes failover slots from the primary to standbys, not back): point postgres.url at the primary (target_session_attrs=read-write), or remove failover_slot from {} to decode on the standby",
                cfg.file.display()
            ),
        ));
    }
    if cfg.postgres.failover_slot && repl.server_major() < 17 {
        return Err(Error::Refused(
            Refusal::Preflight,
            format!(
                "postgres.failover_slot = true needs PostgreSQL 17 or later (this server is {}); remove it from {}",
                repl.server_version,
                cfg.file.display()
            ),
        ));
    }
    Ok(cfg.postgres.failover_slot)
}

/// What the server checks learn that the table checks need.
struct Server {
    /// `server_version_num`, such as 170002.
    version: i32,
    /// The connected role, named in the GRANT a table may need.
    role: String,
}

/// The server: its version, `wal_level`, the role's right to replicate, and room for one more
/// slot and WAL sender.
async fn check_server(catalog: &Catalog, cfg: &Config, report: &mut Report) -> Result<Server, CatalogError> {
    let version = catalog.server_version_num().await?;
    if version >= 140000 {
        report.pass("postgres.version", format!("server_version_num {version}"));
    } else {
        report.fail(
            "postgres.version",
            format!("server_version_num {version}: walguard needs PostgreSQL 14 or later (pgoutput messages)"),
            Some("upgrade PostgreSQL".to_owned()),
        );
    }
    let wal_level = catalog.setting("wal_level").await?;
    if wal_level == "logical" {
        report.pass("postgres.wal_level", "logical");
    } else {
        report.fail(
            "postgres.wal_level",
            format!("wal_level is {wal_level}, logical decoding needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL".to_owned()),
        );
    }
    let (role, replication) = catalog.role().await?;
    if replication {
        report.pass("postgres.role", format!("role {role} may replicate"));
    } else {
        report.fail(
            "postgres.role",
            format!("role {role} has neither REPLICATION nor SUPERUSER"),
            Some(format!("ALTER ROLE {} REPLICATION;", quote_ident(&role))),
        );
    }
    let slot_exists = catalog.slot(&cfg.postgres.slot).await?.is_some();
    let (slots, max_slots, senders, max_senders) = catalog.replication_capacity().await?;
    if slot_exists || slots < max_slots {
        report.pass("postgres.replication_slots", format!("{slots} of {max_slots} in use"));
    } else {
        report.fail(
            "postgres.replication_slots",
            format!("all {max_slots} replication slots are in use"),
            Some("raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = ...; restart) or drop an unused slot".to_owned()),
        );
    }
    if senders < max_senders {
        report.pass("postgres.wal_senders", format!("{senders} of {max_senders} in use"));
    } else {
        report.fail(
            "postgres.wal_senders",
            format!("all {max_senders} WAL senders are in use"),
            Some("raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = ...; restart)".to_owned()),
        );
    }
    Ok(Server { version, role })
}

/// What the table checks found: the usable tables, and the qualified names of the partitioned
/// ones (usable or not), which the publication must publish under their root.
#[derive(Default)]
struct Guarded {
    specs: Vec<TableSpec>,
    partitioned: Vec<String>,
}

/// Each guarded table: it exists, and `table_spec` and `generated_problem` find it usable.
async fn check_tables(
    catalog: &Catalog,
    cfg: &Config,
    server: &Server,
    publication: Option<&PublicationFacts>,
    report: &mut Report,
) -> Result<Guarded, CatalogError> {
    let pub_name = &cfg.postgres.publication;
    let mut guarded = Guarded::default();
    for (schema, name, table) in cfg.guarded() {
        let q = qualified(&schema, &name);
        let check = format!("table {schema}.{name}");
        let Some(facts) = catalog.table(&schema, &name).await? else {
            report.fail(
                &check,
                format!(
                    "does not exist in database {}",
                    cfg.pg_config().get_dbname().unwrap_or("?")
                ),
                Some(format!("create {q}, or fix [[tables]] name = {:?}", table.name)),
            );
            continue;
        };
        if facts.partitioned {
            guarded.partitioned.push(q.clone());
        }
        let judged = table_spec(&schema, &name, table, &facts, &server.role).and_then(|(spec, note)| {
            match generated_problem(server.version, pub_name, publication, &q, &facts, &spec.key) {
                Some(problem) => Err(problem),
                None => Ok((spec, note)),
            }
        });
        match judged {
            Ok((spec, note)) => {
                match note {
                    Some((detail, fix)) => report.warn(&check, detail, Some(fix)),
                    None => report.pass(
                        &check,
                        format!(
                            "key ({}), replica identity {}",
                            spec.key.join(", "),
                            identity_name(facts.identity)
                        ),
                    ),
                }
                guarded.specs.push(spec);
            }
            Err((detail, fix)) => report.fail(&check, detail, Some(fix)),
        }
    }
    Ok(guarded)
}

/// The publication, when it exists: it publishes every action, partitions under their root,
/// and exactly the guarded tables. What `run` does by itself (create the publication, add a
/// table) is a warning; each problem is reported, and a pass only when there is none.
fn check_publication(pub_name: &str, publication: Option<&PublicationFacts>, guarded: &Guarded, report: &mut Report) {
    let name = "postgres.publication";
    let Some(p) = publication else {
        report.warn(
            name,
            format!("publication {pub_name} does not exist; run creates it for the guarded tables"),
            None,
        );
        return;
    };
    let tables: Vec<(String, String)> = guarded
        .specs
        .iter()
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    let problems: Vec<Verdict> = [
        unpublished_actions(pub_name, p),
        partitions_under_own_names(pub_name, p, &guarded.partitioned),
        tables_not_yet_published(pub_name, p, &tables),
        other_tables_published(pub_name, p, &tables),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        report.pass(
            name,
            format!("publication {pub_name} publishes exactly the guarded tables"),
        );
    }
    for problem in problems {
        report.record(name, problem);
    }
}

/// The server is a hot standby (logical decoding on a standby, PostgreSQL 16+): nothing can be
/// written there, so the publication must already exist on the primary with every guarded
/// table (it reaches the standby through the WAL); what `run` would create or add on a
/// primary is a failure here, with the SQL to run on the primary.
fn standby_source(
    pub_name: &str,
    publication: Option<&PublicationFacts>,
    guarded: &Guarded,
    server: &Server,
    report: &mut Report,
) {
    let name = "postgres.publication";
    if server.version < 160000 {
        report.fail(
            "postgres.standby",
            format!(
                "the server is a standby (in recovery) and server_version_num {} has no logical decoding on standbys",
                server.version
            ),
            Some("point postgres.url at the primary (target_session_attrs=read-write), or upgrade to PostgreSQL 16 or later".to_owned()),
        );
        return;
    }
    report.pass(
        "postgres.standby",
        "the server is a hot standby: walguard decodes there, the primary carries no walsender (keep hot_standby_feedback = on)",
    );
    let tables: Vec<(String, String)> = guarded
        .specs
        .iter()
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    let list = tables
        .iter()
        .map(|(s, n)| format!("{}.{}", quote_ident(s), quote_ident(n)))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(p) = publication else {
        report.fail(
            name,
            format!("publication {pub_name} does not exist, and a standby cannot create one"),
            Some(format!(
                "on the primary: CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true);",
                quote_ident(pub_name)
            )),
        );
        return;
    };
    if let Some(Verdict { detail, .. }) = tables_not_yet_published(pub_name, p, &tables) {
        report.fail(
            name,
            format!("{detail} (a standby cannot add them)"),
            Some(format!(
                "on the primary: ALTER PUBLICATION {} ADD TABLE {list};",
                quote_ident(pub_name)
            )),
        );
    }
    check_publication(pub_name, Some(p), guarded, report);
}

/// An action the publication leaves out is a change the stream would silently miss.
fn unpublished_actions(pub_name: &str, p: &PublicationFacts) -> Option<Verdict> {
    let labels = ["insert", "update", "delete", "truncate"];
    let missing: Vec<&str> = labels
        .iter()
        .zip(p.actions)
        .filter(|(_, on)| !on)
        .map(|(l, _)| *l)
        .collect();
    (!missing.is_empty()).then(|| {
        Verdict::fail(
            format!("publication {pub_name} does not publish {}", missing.join(", ")),
            format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                quote_ident(pub_name)
            ),
        )
    })
}

/// Without `publish_via_partition_root` a partitioned table's changes arrive under the names
/// of its partitions, which are not guarded.
fn partitions_under_own_names(pub_name: &str, p: &PublicationFacts, partitioned: &[String]) -> Option<Verdict> {
    (!p.via_root && !partitioned.is_empty()).then(|| {
        Verdict::fail(
            format!(
                "publication {pub_name} publishes partitions under their own names, but {} is partitioned",
                partitioned.join(", ")
            ),
            format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true);",
                quote_ident(pub_name)
            ),
        )
    })
}

/// Guarded tables the publication lacks: `run` adds them.
fn tables_not_yet_published(pub_name: &str, p: &PublicationFacts, guarded: &[(String, String)]) -> Option<Verdict> {
    let absent: Vec<String> = guarded
        .iter()
        .filter(|g| !p.all_tables && !p.tables.contains(g))
        .map(|(s, n)| format!("{s}.{n}"))
        .collect();
    (!absent.is_empty()).then(|| Verdict {
        outcome: Outcome::Warn,
        detail: format!("{} not in publication {pub_name} yet; run adds them", absent.join(", ")),
        fix: None,
    })
}

/// Tables published besides the guarded ones cost WAL decoding walguard throws away, and
/// their writers need a replica identity too: PostgreSQL refuses UPDATE and DELETE on a
/// published table without one.
fn other_tables_published(pub_name: &str, p: &PublicationFacts, guarded: &[(String, String)]) -> Option<Verdict> {
    if p.all_tables {
        return Some(Verdict::warn(
            format!("publication {pub_name} is FOR ALL TABLES: every table without a replica identity fails its UPDATEs and DELETEs"),
            format!("use a publication FOR TABLE the guarded tables only (DROP PUBLICATION {}; run recreates it)", quote_ident(pub_name)),
        ));
    }
    let extra: Vec<String> = p
        .tables
        .iter()
        .filter(|t| !guarded.contains(t))
        .map(|(s, n)| qualified(s, n))
        .collect();
    (!extra.is_empty()).then(|| {
        Verdict::warn(
            format!("publication {pub_name} also publishes {}: walguard ignores their changes, and their writers need a replica identity too", extra.join(", ")),
            format!("ALTER PUBLICATION {} DROP TABLE {};", quote_ident(pub_name), extra.join(", ")),
        )
    })
}

/// As ALTER TABLE ... REPLICA IDENTITY spells it.
fn identity_name(identity: ReplicaIdentity) -> &'static str {
    match identity {
        ReplicaIdentity::Default => "DEFAULT",
        ReplicaIdentity::Full => "FULL",
        ReplicaIdentity::Index => "USING INDEX",
        ReplicaIdentity::Nothing => "NOTHING",
    }
}

type Problem = (String, String);

/// Decides whether a table can be guarded without breaking its writers and what its entity
/// key is. `Ok` may carry a warning (detail, fix). The checks run in this order and the first
/// problem is the one reported.
fn table_spec(
    schema: &str,
    name: &str,
    table: &TableConfig,
    facts: &TableFacts,
    role: &str,
) -> Result<(TableSpec, Option<Problem>), Problem> {
    let q = qualified(schema, name);
    if let Some(problem) = access_problem(&q, facts, role).or_else(|| identity_problem(&q, facts)) {
        return Err(problem);
    }
    let key = entity_key(schema, name, table, facts)?;
    if let Some(problem) = hash_problem(schema, name, table, facts, &key).or_else(|| key_problem(&q, facts, &key)) {
        return Err(problem);
    }
    Ok((
        TableSpec {
            type_prefix: table.type_prefix.clone().unwrap_or_else(|| format!("{schema}.{name}")),
            schema: schema.to_owned(),
            name: name.to_owned(),
            key,
            configured_key: table.key.is_some(),
            hashed: table.hash_columns.clone(),
        },
        identity_note(&q, facts),
    ))
}

/// Only a table, or a partitioned one, that the role can read can be guarded (snapshots
/// SELECT it).
fn access_problem(q: &str, facts: &TableFacts, role: &str) -> Option<Problem> {
    if !facts.is_table {
        return Some((
            "is not a table; only tables and partitioned tables can be guarded".into(),
            format!("guard the table behind {q}"),
        ));
    }
    if !facts.can_select {
        return Some((
            format!("role {role} cannot SELECT it"),
            format!("GRANT SELECT ON {q} TO {};", quote_ident(role)),
        ));
    }
    None
}

/// PostgreSQL refuses UPDATE and DELETE on a published table whose replica identity cannot
/// name the old row: NOTHING, DEFAULT without a primary key, or, for a partitioned table, any
/// such leaf (the writers write the leaves).
fn identity_problem(q: &str, facts: &TableFacts) -> Option<Problem> {
    match facts.identity {
        ReplicaIdentity::Nothing => {
            return Some((
                "has REPLICA IDENTITY NOTHING: published, its UPDATEs and DELETEs would fail".into(),
                format!("ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            ))
        }
        ReplicaIdentity::Default if facts.primary_key.is_empty() && !facts.partitioned => {
            return Some((
                "has no primary key and REPLICA IDENTITY DEFAULT: published, every UPDATE and DELETE of its writers would fail".into(),
                format!("ALTER TABLE {q} REPLICA IDENTITY FULL; and configure key = [...] for it in [[tables]]"),
            ))
        }
        _ => {}
    }
    let leaf = facts.leaves.iter().find(|leaf| !leaf_identity_usable(leaf))?;
    Some((
        format!(
            "partition {} has no usable replica identity: published, its UPDATEs and DELETEs would fail",
            leaf.name
        ),
        format!(
            "ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key to {q})",
            leaf.name
        ),
    ))
}

fn leaf_identity_usable(leaf: &Leaf) -> bool {
    match leaf.identity {
        ReplicaIdentity::Full => true,
        ReplicaIdentity::Index => leaf.has_identity_index,
        ReplicaIdentity::Default => leaf.has_pk,
        ReplicaIdentity::Nothing => false,
    }
}

/// The entity key: the configured `key`, else the primary key.
fn entity_key(schema: &str, name: &str, table: &TableConfig, facts: &TableFacts) -> Result<Vec<String>, Problem> {
    match &table.key {
        Some(k) => Ok(k.clone()),
        None if !facts.primary_key.is_empty() => Ok(facts.primary_key.clone()),
        None => Err((
            "has no primary key, so walguard does not know the entity key".into(),
            format!("configure key = [\"col\", ...] for {schema}.{name} in [[tables]] (with REPLICA IDENTITY FULL)"),
        )),
    }
}

/// Every hash column exists and none is part of the entity key (`hashed_key_problem`).
fn hash_problem(schema: &str, name: &str, table: &TableConfig, facts: &TableFacts, key: &[String]) -> Option<Problem> {
    if let Some(col) = table.hash_columns.iter().find(|c| !facts.columns.contains(c)) {
        return Some((
            format!("hash column {col:?} does not exist"),
            "fix `hash_columns` in [[tables]]".into(),
        ));
    }
    hashed_key_problem(schema, name, table, key)
}

/// Every key column exists and is carried by the replica identity, so that a DELETE names
/// the entity it deletes. The writers of a partitioned table write its leaves, whose
/// identities may differ from the root's: there a key column is sure to be carried only when
/// every leaf is FULL or it is in the primary key, which every leaf shares.
fn key_problem(q: &str, facts: &TableFacts, key: &[String]) -> Option<Problem> {
    let leaves_full = facts.leaves.iter().all(|l| l.identity == ReplicaIdentity::Full);
    for k in key {
        if !facts.columns.contains(k) {
            return Some((
                format!("key column {k:?} does not exist"),
                "fix `key` in [[tables]]".into(),
            ));
        }
        if facts.nullable.contains(k) {
            return Some((
                format!("key column {k:?} allows NULL: a row with a NULL key names no entity, and the baseline's walk in key order would pass it over"),
                format!("ALTER TABLE {q} ALTER COLUMN {} SET NOT NULL; (once no row holds NULL there), or use NOT NULL columns as `key`", quote_ident(k)),
            ));
        }
        let carried = facts.identity_columns().contains(k)
            && (!facts.partitioned || leaves_full || facts.primary_key.contains(k));
        if !carried {
            return Some((
                format!("key column {k:?} is not part of the replica identity, so deletes would not carry it"),
                format!("ALTER TABLE {q} REPLICA IDENTITY FULL; (on every partition too), or use the replica identity columns as `key`"),
            ));
        }
    }
    None
}

/// DEFAULT and USING INDEX work, with limits a consumer should know of: a warning.
fn identity_note(q: &str, facts: &TableFacts) -> Option<Problem> {
    matches!(facts.identity, ReplicaIdentity::Default | ReplicaIdentity::Index).then(|| {
        (
            format!(
                "replica identity {}: consumers get only the old key in `before`, and unchanged TOASTed columns are left out of `after` (listed in `unchanged`)",
                identity_name(facts.identity)
            ),
            format!("ALTER TABLE {q} REPLICA IDENTITY FULL; for full before images (costs WAL on UPDATE and DELETE)"),
        )
    })
}

/// A column of the entity key may not be hashed: the key also names the entity in the
/// CloudEvents `subject` (`schema.table/value`), which is published as it is, so a hashed key
/// column would be hashed in `data.key` and in clear in `subject`.
fn hashed_key_problem(schema: &str, name: &str, table: &TableConfig, key: &[String]) -> Option<Problem> {
    let col = table.hash_columns.iter().find(|c| key.contains(c))?;
    let (what, fix) = if table.key.is_some() {
        (
            "the configured `key`",
            format!(
                "remove {col:?} from `hash_columns` of {schema}.{name} in [[tables]], or configure a `key` without it"
            ),
        )
    } else {
        (
            "the primary key, which is the entity key",
            format!("remove {col:?} from `hash_columns` of {schema}.{name} in [[tables]], or configure a `key` without it (with REPLICA IDENTITY FULL)"),
        )
    };
    Some((
        format!("hash column {col:?} is part of {what}: the key names the entity in the CloudEvents `subject`, which would carry it in clear"),
        fix,
    ))
}

/// PostgreSQL 18 checks, on every UPDATE and DELETE of a published table, that its replica
/// identity holds no generated column the publication leaves out, and otherwise fails the
/// writer's statement ("Replica identity must not contain unpublished generated columns").
/// A virtual generated column is never published, so under REPLICA IDENTITY FULL (which holds
/// every column) it always fails; a stored one fails unless the publication has
/// `publish_generated_columns = stored`, which walguard sets when it creates the publication.
/// For a partitioned table the writers write, and PostgreSQL checks, its leaf partitions.
///
/// A stored generated column outside the identity breaks no writer, but a publication that
/// leaves it out sends change events without it while snapshot rows (read with SELECT, which
/// on 18 includes them) carry it: refused too, with the same fix.
///
/// Before 18 PostgreSQL publishes no generated column and checks none, so only the entity
/// `key` matters there: a generated key column would be missing from every change event.
/// `publication` is the configured publication, `None` when run will create it.
fn generated_problem(
    version: i32,
    pub_name: &str,
    publication: Option<&PublicationFacts>,
    table: &str,
    facts: &TableFacts,
    key: &[String],
) -> Option<Problem> {
    if version < 180000 {
        let col = key.iter().find(|k| facts.generated.stored.contains(k))?;
        return Some((
            format!(
                "key column {col:?} is a generated column, which PostgreSQL before 18 never publishes: change events would not carry the entity key"
            ),
            format!(
                "configure a `key` of other columns for {table} in [[tables]] (with REPLICA IDENTITY FULL), or upgrade to PostgreSQL 18, where walguard publishes stored generated columns"
            ),
        ));
    }
    let relations: Vec<(&str, ReplicaIdentity, &Generated)> = if facts.partitioned {
        let leaves = facts.leaves.iter();
        leaves.map(|l| (l.name.as_str(), l.identity, &l.generated)).collect()
    } else {
        vec![(table, facts.identity, &facts.generated)]
    };
    for (rel, identity, generated) in &relations {
        if let (Some(col), ReplicaIdentity::Full) = (generated.virtual_columns.first(), identity) {
            return Some((
                format!(
                    "{rel} has REPLICA IDENTITY FULL and the virtual generated column {col:?}: PostgreSQL 18 never publishes virtual generated columns, so once published every UPDATE and DELETE of its writers would fail (\"Replica identity must not contain unpublished generated columns\")"
                ),
                format!(
                    "make {col:?} a STORED generated column, or ALTER TABLE {rel} REPLICA IDENTITY DEFAULT; (with a primary key, or USING INDEX a unique index)"
                ),
            ));
        }
    }
    if publication.is_none_or(|p| p.generated_stored) {
        return None;
    }
    let fix = format!(
        "ALTER PUBLICATION {} SET (publish_generated_columns = stored);",
        quote_ident(pub_name)
    );
    for (rel, _, generated) in &relations {
        if let Some(col) = generated.stored_in_identity.first() {
            return Some((
                format!(
                    "the replica identity of {rel} holds the stored generated column {col:?}, which publication {pub_name} does not publish: while the table is in it, every UPDATE and DELETE of its writers fails (\"Replica identity must not contain unpublished generated columns\")"
                ),
                fix,
            ));
        }
    }
    let col = facts.generated.stored.first()?;
    Some((
        format!(
            "publication {pub_name} does not publish the stored generated column {col:?}: change events would lack it while snapshot rows carry it"
        ),
        fix,
    ))
}

/// An outage shorter than this should not cost the slot: a `max_slot_wal_keep_size` that
/// holds less WAL than this much time's worth at the current write rate is too small.
const OUTAGE_BUDGET_SECS: f64 = 3600.0;

/// How long the slot survives walguard being down: PostgreSQL 18's
/// `idle_replication_slot_timeout` invalidates a slot nobody streams from, and
/// `max_slot_wal_keep_size` bounds the WAL a slot may hold back (unbounded, it can fill the
/// disk instead). Either way a lost slot is a gap only `walguard resync` gets past.
async fn retention(catalog: &Catalog, report: &mut Report) -> Result<(), CatalogError> {
    if let Some(shown) = catalog.shown_setting("idle_replication_slot_timeout").await? {
        report.record("postgres.idle_replication_slot_timeout", idle_timeout_verdict(&shown));
    }
    let (limit, shown) = catalog.max_slot_wal_keep_size().await?;
    let rate = if limit > 0 {
        catalog.wal_write_rate(RATE_SAMPLE).await?
    } else {
        None
    };
    report.record("postgres.max_slot_wal_keep_size", wal_keep_verdict(limit, &shown, rate));
    Ok(())
}

/// How long the WAL write rate is sampled, when `max_slot_wal_keep_size` is set.
const RATE_SAMPLE: std::time::Duration = std::time::Duration::from_secs(1);

/// `shown`: the setting as SHOW prints it (`0` when disabled, else `1h`, `90min`, ...).
fn idle_timeout_verdict(shown: &str) -> Verdict {
    if shown == "0" {
        return Verdict::pass("0: slots are never invalidated for being idle".into());
    }
    Verdict::warn(
        format!(
            "idle_replication_slot_timeout is {shown}: PostgreSQL invalidates a slot nobody has streamed from for longer than that, so a walguard outage longer than {shown} loses the slot and the gap-free history (only walguard resync gets past it)"
        ),
        "ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf(); or keep walguard's outages well below it (a standby walguard takes over within seconds)".into(),
    )
}

/// `limit`: `max_slot_wal_keep_size` in bytes (-1 unlimited), `shown` as SHOW prints it;
/// `rate`: WAL bytes written per second, when known.
fn wal_keep_verdict(limit: i64, shown: &str, rate: Option<f64>) -> Verdict {
    let set = "ALTER SYSTEM SET max_slot_wal_keep_size = '...'; SELECT pg_reload_conf();";
    if limit < 0 {
        return Verdict::warn(
            "max_slot_wal_keep_size is -1 (unlimited): the slot keeps all WAL walguard has not confirmed, so a long walguard or NATS outage can fill the disk under pg_wal and stop the database".into(),
            format!("set a limit the disk can hold ({set}) and alert on walguard_slot_retained_wal_bytes; an outage past it loses the slot instead"),
        );
    }
    if limit == 0 {
        return Verdict::warn(
            "max_slot_wal_keep_size is 0: a slot may hold back no WAL at a checkpoint, so any walguard outage across a checkpoint can lose the slot".into(),
            format!("set a limit that holds at least an hour of WAL ({set})"),
        );
    }
    let Some(rate) = rate.filter(|r| r.is_finite() && *r >= 0.0) else {
        return Verdict::pass(format!("{shown}; the WAL write rate could not be measured"));
    };
    let rate_text = format!("{}/s", human_bytes(rate as i64));
    let covered = if rate == 0.0 {
        f64::INFINITY
    } else {
        limit as f64 / rate
    };
    if covered < OUTAGE_BUDGET_SECS {
        let needed_mb = (rate * OUTAGE_BUDGET_SECS / (1024.0 * 1024.0)).ceil().max(1.0) as u64;
        return Verdict::warn(
            format!(
                "max_slot_wal_keep_size is {shown}: at the current write rate of about {rate_text} (the higher of the last second's and the average since pg_stat_wal was reset) that is {} of WAL, so a walguard outage longer than that loses the slot (walguard warns below an hour of WAL)",
                human_duration(covered)
            ),
            format!(
                "ALTER SYSTEM SET max_slot_wal_keep_size = '{needed_mb}MB'; SELECT pg_reload_conf(); (an hour at this rate) or more"
            ),
        );
    }
    Verdict::pass(format!(
        "{shown}: {} of WAL at the current write rate of about {rate_text}",
        human_duration(covered)
    ))
}

/// `45 s`, `8 min`, `2.5 h`, `3.0 days`, `unlimited time`.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() {
        "unlimited time".into()
    } else if secs < 120.0 {
        format!("{} s", secs as u64)
    } else if secs < 7200.0 {
        format!("{} min", (secs / 60.0) as u64)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// The slot's state, for `check`; `run` judges the slot against the stream itself.
pub async fn slot(catalog: &Catalog, cfg: &Config, report: &mut Report) -> Result<(), CatalogError> {
    let name = "postgres.slot";
    let slot = &cfg.postgres.slot;
    let Some(info) = catalog.slot(slot).await? else {
        report.warn(name, format!("slot {slot} does not exist; run creates it"), None);
        return Ok(());
    };
    let dbname = cfg.pg_config().get_dbname().map(str::to_owned);
    if info.plugin.as_deref() != Some("pgoutput") || (dbname.is_some() && info.database != dbname) {
        report.fail(
            name,
            format!(
                "slot {slot} is not a pgoutput slot of this database (plugin {:?}, database {:?})",
                info.plugin, info.database
            ),
            Some("choose another postgres.slot".to_owned()),
        );
        return Ok(());
    }
    let retained = info.retained_bytes.unwrap_or(0);
    let detail = format!(
        "confirmed {}, retains {} of WAL{}",
        info.confirmed_flush.unwrap_or(Lsn::ZERO),
        human_bytes(retained),
        info.safe_wal_size.map_or(String::new(), |s| format!(
            ", {} before it is in danger",
            human_bytes(s)
        ))
    );
    match info.wal_status {
        Some(WalStatus::Lost) => report.fail(
            name,
            format!(
                "slot {slot} has lost WAL it needs (wal_status lost): changes after {} are gone",
                info.confirmed_flush.unwrap_or(Lsn::ZERO)
            ),
            Some("walguard resync -c FILE (records the gap in the stream and starts from a new slot)".to_owned()),
        ),
        Some(WalStatus::Unreserved) => report.warn(
            name,
            format!("{detail}; wal_status unreserved: WAL it needs will be removed at the next checkpoint"),
            Some("make walguard catch up now, or raise max_slot_wal_keep_size".to_owned()),
        ),
        _ if retained as u64 > cfg.postgres.retained_wal_warn => report.warn(
            name,
            format!(
                "{detail}, above postgres.retained_wal_warn ({})",
                human_bytes(cfg.postgres.retained_wal_warn as i64)
            ),
            Some("check that walguard runs and NATS accepts its events".to_owned()),
        ),
        _ => match info.active_pid {
            Some(pid) => report.warn(
                name,
                format!("{detail}; active for PID {pid} (another walguard: this one would wait as its standby)"),
                None,
            ),
            None => report.pass(name, detail),
        },
    }
    Ok(())
}

pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// NATS reachable, JetStream enabled, the stream's settings.
pub async fn nats(cfg: &Config, report: &mut Report) {
    let client = match sink::connect(&cfg.nats).await {
        Ok(c) => {
            report.pass(
                "nats.connect",
                format!("connected to {}", crate::config::redact_url(&cfg.nats.url)),
            );
            c
        }
        Err(e) => {
            report.unavailable(
                "nats.connect",
                e.to_string(),
                "start nats-server or fix nats.url and its credentials",
            );
            return;
        }
    };
    let js = async_nats::jetstream::new(client);
    match js.query_account().await {
        Ok(_) => report.pass("nats.jetstream", "JetStream enabled"),
        Err(e) => {
            report.fail(
                "nats.jetstream",
                format!("JetStream is not available: {e}"),
                Some("start nats-server with JetStream (-js, or jetstream {} in its config)".to_owned()),
            );
            return;
        }
    }
    let name = "nats.stream";
    match js.get_stream(&cfg.nats.stream).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => {
                let problems = stream::stream_problems(&cfg.nats, &info.config);
                if problems.is_empty() {
                    report.pass(
                        name,
                        format!("stream {} ({} messages)", cfg.nats.stream, info.state.messages),
                    );
                }
                for p in problems {
                    let (detail, fix) = p
                        .split_once(": ")
                        .map_or((p.clone(), None), |(d, f)| (d.to_owned(), Some(f.to_owned())));
                    report.fail(name, detail, fix);
                }
            }
            Err(e) => report.fail(name, format!("stream {}: {e}", cfg.nats.stream), None),
        },
        Err(_) => report.warn(
            name,
            format!("stream {} does not exist; run creates it", cfg.nats.stream),
            None,
        ),
    }
}

/// Everything `walguard check` reports.
pub async fn preflight(cfg: &Config) -> Report {
    let mut report = Report::default();
    match crate::event::Signer::load(&cfg.signing.key_file) {
        Ok(s) => report.pass("signing.key_file", format!("key id {}", s.key_id())),
        Err(e) => report.fail(
            "signing.key_file",
            e.to_string(),
            Some("walguard keygen --out FILE, or chmod 600 the key file".to_owned()),
        ),
    }
    match Catalog::connect(&cfg.pg_config()).await {
        Err(e) => report.unavailable(
            "postgres.connect",
            e.to_string(),
            "start PostgreSQL or fix postgres.url",
        ),
        Ok(catalog) => {
            report.pass(
                "postgres.connect",
                crate::source::tls::describe_target(catalog.chosen()),
            );
            let result = async {
                database(&catalog, cfg, &mut report).await?;
                slot(&catalog, cfg, &mut report).await?;
                failover::check(&catalog, cfg, &mut report).await
            }
            .await;
            if let Err(e) = result {
                report.fail("postgres.query", e.to_string(), None);
            }
        }
    }
    nats(cfg, &mut report).await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_outcomes_and_exit_codes() {
        let mut r = Report::default();
        r.pass("a", "fine");
        r.warn("b", "hmm", None);
        assert!(r.ready());
        assert_eq!(r.exit_code(), 0);
        assert!(r.render_text().contains("ready: 2 checks, 1 warnings"));
        r.fail("c", "broken", Some("do this".into()));
        assert!(!r.ready());
        assert_eq!(r.exit_code(), 1);
        assert!(r.render_text().contains("fix: do this"));
        assert_eq!(r.failures(), "c: broken (fix: do this)");
        r.unavailable("d", "down", "start it");
        assert_eq!(r.exit_code(), 69);
        let json: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["checks"][2]["outcome"], "fail");
        assert_eq!(json["checks"][2]["fix"], "do this");
    }

    fn facts(identity: ReplicaIdentity, primary_key: &[&str], columns: &[&str]) -> TableFacts {
        let names = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        TableFacts {
            oid: 1,
            is_table: true,
            partitioned: false,
            is_partition: false,
            identity,
            can_select: true,
            primary_key: names(primary_key),
            identity_index: Vec::new(),
            columns: names(columns),
            nullable: Vec::new(),
            generated: Generated::default(),
            leaves: Vec::new(),
        }
    }

    fn table(key: Option<&[&str]>, hash_columns: &[&str]) -> TableConfig {
        TableConfig {
            name: "public.people".into(),
            type_prefix: None,
            key: key.map(|k| k.iter().map(|c| c.to_string()).collect()),
            hash_columns: hash_columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn spec(t: &TableConfig, f: &TableFacts) -> Result<TableSpec, Problem> {
        table_spec("public", "people", t, f, "walguard").map(|(spec, _)| spec)
    }

    #[test]
    fn a_hashed_column_of_the_configured_key_is_refused() {
        let f = facts(ReplicaIdentity::Full, &[], &["email", "name"]);
        let (detail, fix) = spec(&table(Some(&["email"]), &["email"]), &f).unwrap_err();
        assert!(
            detail.contains("\"email\"") && detail.contains("configured `key`"),
            "{detail}"
        );
        assert!(detail.contains("subject"), "{detail}");
        assert!(fix.contains("hash_columns") && fix.contains("public.people"), "{fix}");
        // One column of a composite key is enough.
        let f = facts(ReplicaIdentity::Full, &[], &["email", "site", "name"]);
        assert!(spec(&table(Some(&["site", "email"]), &["email"]), &f).is_err());
        // Hashing a column outside the key stays allowed.
        let s = spec(&table(Some(&["email"]), &["name"]), &f).unwrap();
        assert_eq!(s.hashed, ["name"]);
    }

    #[test]
    fn a_hashed_primary_key_column_is_refused_unless_another_key_is_configured() {
        let f = facts(ReplicaIdentity::Default, &["id"], &["id", "email"]);
        let (detail, _) = spec(&table(None, &["id"]), &f).unwrap_err();
        assert!(detail.contains("\"id\"") && detail.contains("primary key"), "{detail}");
        // With a configured key the primary key is not the entity key, and may be hashed.
        let f = facts(ReplicaIdentity::Full, &["id"], &["id", "email"]);
        assert_eq!(spec(&table(Some(&["email"]), &["id"]), &f).unwrap().key, ["email"]);
    }

    #[test]
    fn a_configured_key_column_that_allows_null_is_refused() {
        let mut f = facts(ReplicaIdentity::Full, &[], &["sku", "site", "qty"]);
        f.nullable = vec!["site".into(), "qty".into()];
        let (detail, fix) = spec(&table(Some(&["sku", "site"]), &[]), &f).unwrap_err();
        assert!(
            detail.contains("\"site\"") && detail.contains("allows NULL"),
            "{detail}"
        );
        assert!(fix.contains("ALTER COLUMN \"site\" SET NOT NULL"), "{fix}");
        // A nullable column outside the key is no concern.
        assert_eq!(spec(&table(Some(&["sku"]), &[]), &f).unwrap().key, ["sku"]);
    }

    fn generated(stored: &[&str], virtual_columns: &[&str], stored_in_identity: &[&str]) -> Generated {
        let names = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        Generated {
            stored: names(stored),
            virtual_columns: names(virtual_columns),
            stored_in_identity: names(stored_in_identity),
        }
    }

    fn publication(generated_stored: bool) -> PublicationFacts {
        PublicationFacts {
            actions: [true; 4],
            via_root: true,
            all_tables: false,
            generated_stored,
            tables: Vec::new(),
        }
    }

    const PG18: i32 = 180000;

    #[test]
    fn a_stored_generated_column_under_full_needs_a_publication_that_publishes_it() {
        let mut f = facts(ReplicaIdentity::Full, &[], &["id", "qty", "total"]);
        f.generated = generated(&["total"], &[], &["total"]);
        let t = "\"public\".\"lines\"";
        let (detail, fix) = generated_problem(PG18, "wg", Some(&publication(false)), t, &f, &[]).unwrap();
        assert!(
            detail.contains(t) && detail.contains("\"total\"") && detail.contains("UPDATE and DELETE"),
            "{detail}"
        );
        assert_eq!(
            fix,
            "ALTER PUBLICATION \"wg\" SET (publish_generated_columns = stored);"
        );
        // Published, or created by walguard (which sets the option): fine.
        assert_eq!(
            generated_problem(PG18, "wg", Some(&publication(true)), t, &f, &[]),
            None
        );
        assert_eq!(generated_problem(PG18, "wg", None, t, &f, &[]), None);
        // Before 18 nothing is published and nothing checked.
        assert_eq!(
            generated_problem(170000, "wg", Some(&publication(false)), t, &f, &[]),
            None
        );
        assert_eq!(
            generated_problem(150000, "wg", Some(&publication(false)), t, &f, &[]),
            None
        );
    }

    #[test]
    fn a_generated_key_column_before_18_is_refused() {
        let mut f = facts(ReplicaIdentity::Default, &["code"], &["code", "raw"]);
        f.generated = generated(&["code"], &[], &["code"]);
        let key = ["code".to_owned()];
        for version in [150000, 170000] {
            let (detail, fix) = generated_problem(version, "wg", None, "t", &f, &key).unwrap();
            assert!(
                detail.contains("key column \"code\"") && detail.contains("before 18"),
                "{detail}"
            );
            assert!(fix.contains("`key`") && fix.contains("PostgreSQL 18"), "{fix}");
        }
        // A generated column outside the key is simply not published before 18.
        assert_eq!(
            generated_problem(150000, "wg", None, "t", &f, &["raw".to_owned()]),
            None
        );
        // On 18 walguard's own publication publishes it.
        assert_eq!(generated_problem(PG18, "wg", None, "t", &f, &key), None);
    }

    #[test]
    fn a_stored_generated_column_in_the_primary_key_or_identity_index_breaks_writers_too() {
        for identity in [ReplicaIdentity::Default, ReplicaIdentity::Index] {
            let mut f = facts(identity, &["code"], &["code", "raw"]);
            f.generated = generated(&["code"], &[], &["code"]);
            let (detail, _) = generated_problem(PG18, "wg", Some(&publication(false)), "t", &f, &[]).unwrap();
            assert!(
                detail.contains("replica identity") && detail.contains("UPDATE and DELETE"),
                "{detail}"
            );
        }
    }

    #[test]
    fn a_stored_generated_column_outside_the_identity_must_be_published_too() {
        let mut f = facts(ReplicaIdentity::Default, &["id"], &["id", "qty", "total"]);
        f.generated = generated(&["total"], &[], &[]);
        let (detail, fix) = generated_problem(PG18, "wg", Some(&publication(false)), "t", &f, &[]).unwrap();
        assert!(
            detail.contains("change events would lack it") && !detail.contains("UPDATE and DELETE"),
            "{detail}"
        );
        assert!(fix.contains("publish_generated_columns = stored"), "{fix}");
        assert_eq!(
            generated_problem(PG18, "wg", Some(&publication(true)), "t", &f, &[]),
            None
        );
    }

    #[test]
    fn a_virtual_generated_column_under_full_is_refused_whatever_the_publication() {
        let mut f = facts(ReplicaIdentity::Full, &[], &["id", "qty", "double"]);
        f.generated = generated(&[], &["double"], &[]);
        for p in [None, Some(publication(true)), Some(publication(false))] {
            let (detail, fix) = generated_problem(PG18, "wg", p.as_ref(), "t", &f, &[]).unwrap();
            assert!(detail.contains("virtual generated column \"double\""), "{detail}");
            assert!(
                fix.contains("STORED") && fix.contains("REPLICA IDENTITY DEFAULT"),
                "{fix}"
            );
        }
        // Under DEFAULT a virtual column is simply not published.
        let mut f = facts(ReplicaIdentity::Default, &["id"], &["id", "qty", "double"]);
        f.generated = generated(&[], &["double"], &[]);
        assert_eq!(
            generated_problem(PG18, "wg", Some(&publication(false)), "t", &f, &[]),
            None
        );
    }

    #[test]
    fn partitions_are_judged_leaf_by_leaf() {
        let mut f = facts(ReplicaIdentity::Default, &[], &["id", "region", "total"]);
        f.partitioned = true;
        f.generated = generated(&["total"], &[], &[]);
        let leaf = |name: &str, identity, g| Leaf {
            name: name.into(),
            identity,
            has_pk: false,
            has_identity_index: false,
            generated: g,
        };
        f.leaves = vec![
            leaf("readings_eu", ReplicaIdentity::Default, generated(&["total"], &[], &[])),
            leaf(
                "readings_us",
                ReplicaIdentity::Full,
                generated(&["total"], &[], &["total"]),
            ),
        ];
        let (detail, _) = generated_problem(PG18, "wg", Some(&publication(false)), "root", &f, &[]).unwrap();
        assert!(
            detail.contains("readings_us") && detail.contains("UPDATE and DELETE"),
            "{detail}"
        );
        assert_eq!(
            generated_problem(PG18, "wg", Some(&publication(true)), "root", &f, &[]),
            None
        );
        f.leaves[0].generated.virtual_columns = vec!["v".into()];
        f.leaves[0].identity = ReplicaIdentity::Full;
        let (detail, _) = generated_problem(PG18, "wg", Some(&publication(true)), "root", &f, &[]).unwrap();
        assert!(detail.contains("readings_eu") && detail.contains("virtual"), "{detail}");
    }

    #[test]
    fn an_idle_slot_timeout_is_a_warning_naming_its_value() {
        assert_eq!(idle_timeout_verdict("0").outcome, Outcome::Pass);
        let v = idle_timeout_verdict("90min");
        assert_eq!(v.outcome, Outcome::Warn);
        assert!(
            v.detail.contains("90min") && v.detail.contains("loses the slot"),
            "{}",
            v.detail
        );
        assert!(v.fix.unwrap().contains("idle_replication_slot_timeout = 0"));
    }

    #[test]
    fn unlimited_or_zero_slot_wal_is_a_warning() {
        let v = wal_keep_verdict(-1, "-1", None);
        assert_eq!(v.outcome, Outcome::Warn);
        assert!(
            v.detail.contains("unlimited") && v.detail.contains("fill the disk"),
            "{}",
            v.detail
        );
        let v = wal_keep_verdict(0, "0", Some(0.0));
        assert_eq!(v.outcome, Outcome::Warn);
        assert!(v.detail.contains("any walguard outage"), "{}", v.detail);
    }

    #[test]
    fn slot_wal_below_an_hour_at_the_write_rate_is_a_warning() {
        const MIB: i64 = 1 << 20;
        // 1 GiB at 1 MiB/s is 17 minutes.
        let v = wal_keep_verdict(1024 * MIB, "1GB", Some(MIB as f64));
        assert_eq!(v.outcome, Outcome::Warn, "{v:?}");
        assert!(
            v.detail.contains("1GB") && v.detail.contains("1.0 MiB/s") && v.detail.contains("17 min"),
            "{}",
            v.detail
        );
        assert!(v.detail.contains("an hour"), "{}", v.detail);
        assert!(v.fix.unwrap().contains("'3600MB'"));
        // Just above an hour passes, and says how long it lasts.
        let v = wal_keep_verdict(3601 * MIB, "3601MB", Some(MIB as f64));
        assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
        assert!(v.detail.contains("60 min"), "{}", v.detail);
        // No writes now: any limit lasts; no measurement: said so, not judged.
        assert_eq!(wal_keep_verdict(MIB, "1MB", Some(0.0)).outcome, Outcome::Pass);
        let v = wal_keep_verdict(MIB, "1MB", None);
        assert_eq!(v.outcome, Outcome::Pass);
        assert!(v.detail.contains("could not be measured"), "{}", v.detail);
        assert_eq!(wal_keep_verdict(MIB, "1MB", Some(f64::NAN)).outcome, Outcome::Pass);
    }

    #[test]
    fn durations_for_humans() {
        assert_eq!(human_duration(45.9), "45 s");
        assert_eq!(human_duration(1020.0), "17 min");
        assert_eq!(human_duration(9000.0), "2.5 h");
        assert_eq!(human_duration(3.0 * 86400.0), "3.0 days");
        assert_eq!(human_duration(f64::INFINITY), "unlimited time");
    }

    #[test]
    fn warnings_are_recorded_with_their_fix() {
        let mut r = Report::default();
        r.record("postgres.x", wal_keep_verdict(-1, "-1", None));
        assert_eq!(r.checks[0].outcome, Outcome::Warn);
        assert!(r.checks[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("walguard_slot_retained_wal_bytes"));
        assert!(r.ready());
    }

    #[test]
    fn sizes_for_humans() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn a_standby_source_needs_the_publication_made_on_the_primary() {
        let t = table(None, &[]);
        let guarded = Guarded {
            specs: vec![spec(&t, &facts(ReplicaIdentity::Default, &["id"], &["id", "name"])).unwrap()],
            partitioned: Vec::new(),
        };
        let server = |version| Server {
            version,
            role: "walguard".into(),
        };
        // Missing: a failure with the CREATE PUBLICATION to run on the primary.
        let mut report = Report::default();
        standby_source("wg", None, &guarded, &server(170000), &mut report);
        assert!(!report.ready());
        let failures = report.failures();
        assert!(
            failures.contains("a standby cannot create one")
                && failures.contains("on the primary: CREATE PUBLICATION \"wg\" FOR TABLE \"public\".\"people\""),
            "{failures}"
        );
        // A table not in it yet: a failure with the ALTER PUBLICATION.
        let mut report = Report::default();
        standby_source("wg", Some(&publication(false)), &guarded, &server(170000), &mut report);
        assert!(
            report.failures().contains("ALTER PUBLICATION \"wg\" ADD TABLE"),
            "{}",
            report.failures()
        );
        // Complete: ready.
        let mut complete = publication(false);
        complete.tables = vec![("public".into(), "people".into())];
        let mut report = Report::default();
        standby_source("wg", Some(&complete), &guarded, &server(170000), &mut report);
        assert!(report.ready(), "{}", report.failures());
        // Before 16 there is no logical decoding on a standby.
        let mut report = Report::default();
        standby_source("wg", Some(&complete), &guarded, &server(150004), &mut report);
        assert!(
            report.failures().contains("no logical decoding on standbys"),
            "{}",
            report.failures()
        );
    }
}
