//! `check`'s failover readiness (SPEC section 7, "Failover"), with `postgres.failover_slot =
//! true`: on the primary, the slot is a failover slot and `synchronized_standby_slots` names
//! a standby's physical slot (without it the primary's walsender may send walguard changes a
//! standby has not received, and a promotion loses them behind what is already published);
//! on every standby reachable through `postgres.url`, what slot synchronization needs
//! (`sync_replication_slots`, `hot_standby_feedback`, `primary_slot_name`) and the synced
//! slot's state.

use super::Report;
use crate::config::Config;
use crate::source::catalog::{Catalog, CatalogError};
use crate::source::conn::quote_literal;
use crate::source::hosts::SessionAttrs;

const NAME: &str = "postgres.failover";

/// The failover checks; nothing when `failover_slot` is off.
pub async fn check(catalog: &Catalog, cfg: &Config, report: &mut Report) -> Result<(), CatalogError> {
    if !cfg.postgres.failover_slot {
        return Ok(());
    }
    if catalog.server_version_num().await? < 170000 {
        // `run` refuses it (check::failover_slot); nothing more to say.
        report.fail(
            NAME,
            "postgres.failover_slot = true needs PostgreSQL 17 or later",
            Some("upgrade PostgreSQL, or remove postgres.failover_slot".to_owned()),
        );
        return Ok(());
    }
    if !catalog.in_recovery() {
        primary(catalog, cfg, report).await?;
    }
    for candidate in cfg.pg_config().candidates() {
        if candidate.host_label() == catalog.chosen().host_label() {
            continue;
        }
        let mut any = candidate.clone();
        any.session_attrs = SessionAttrs::Any;
        match Catalog::connect(&any).await {
            Ok(other) if other.in_recovery() => standby(&other, &candidate.host_label(), cfg, report).await?,
            Ok(_) => report.warn(
                NAME,
                format!(
                    "{} is a primary too: two primaries in postgres.url",
                    candidate.host_label()
                ),
                Some("list the primary and its standbys only".to_owned()),
            ),
            Err(e) => report.warn(
                NAME,
                format!(
                    "{} is not reachable, so its readiness is unknown: {e}",
                    candidate.host_label()
                ),
                None,
            ),
        }
    }
    Ok(())
}

/// The primary: the slot is a failover slot, and `synchronized_standby_slots` names
/// physical slots that exist.
async fn primary(catalog: &Catalog, cfg: &Config, report: &mut Report) -> Result<(), CatalogError> {
    let client = catalog.client();
    let slot = &cfg.postgres.slot;
    let failover: Option<bool> = client
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(catalog.err())?
        .map(|r| r.get(0));
    match failover {
        Some(true) => report.pass(NAME, format!("slot {slot} is a failover slot")),
        Some(false) => report.fail(
            NAME,
            format!("slot {slot} is not a failover slot: a promoted standby would not have it"),
            Some(format!(
                "on a replication connection (psql \"dbname=... replication=database\"): ALTER_REPLICATION_SLOT {} (FAILOVER true)",
                crate::source::conn::quote_ident(slot)
            )),
        ),
        None => report.warn(NAME, format!("slot {slot} does not exist; run creates it as a failover slot"), None),
    }
    let physical: Vec<String> = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1",
            &[],
        )
        .await
        .map_err(catalog.err())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let named = catalog
        .shown_setting("synchronized_standby_slots")
        .await?
        .unwrap_or_default();
    let fix = match physical.as_slice() {
        [] => "give each standby a physical slot (primary_slot_name), then ALTER SYSTEM SET synchronized_standby_slots = 'SLOT'; SELECT pg_reload_conf();".to_owned(),
        slots => format!(
            "ALTER SYSTEM SET synchronized_standby_slots = {}; SELECT pg_reload_conf();",
            quote_literal(&slots.join(","))
        ),
    };
    if named.trim().is_empty() {
        report.fail(
            NAME,
            "synchronized_standby_slots is empty: walguard may receive, publish and confirm changes no standby has yet, and a standby promoted then is behind the stream (the fork walguard refuses after the promotion)",
            Some(fix),
        );
        return Ok(());
    }
    let missing: Vec<&str> = named
        .split(',')
        .map(str::trim)
        .filter(|n| !physical.iter().any(|p| p == n))
        .collect();
    if missing.is_empty() {
        report.pass(NAME, format!("synchronized_standby_slots = {named}"));
    } else {
        report.fail(
            NAME,
            format!(
                "synchronized_standby_slots names {}, which is not a physical slot here: the walsender waits for it forever",
                missing.join(", ")
            ),
            Some(fix),
        );
    }
    Ok(())
}

/// A standby reachable through `postgres.url`: what slot synchronization needs, and the
/// synced slot.
async fn standby(other: &Catalog, label: &str, cfg: &Config, report: &mut Report) -> Result<(), CatalogError> {
    let setting = |name: &'static str| async move { other.shown_setting(name).await.map(Option::unwrap_or_default) };
    let sync = setting("sync_replication_slots").await?;
    let feedback = setting("hot_standby_feedback").await?;
    let primary_slot = setting("primary_slot_name").await?;
    let conninfo = setting("primary_conninfo").await?;
    let mut missing = Vec::new();
    if sync != "on" {
        missing.push("sync_replication_slots = on");
    }
    if feedback != "on" {
        missing.push("hot_standby_feedback = on");
    }
    if primary_slot.is_empty() {
        missing.push("primary_slot_name = 'SLOT' (a physical slot on the primary)");
    }
    if !conninfo.contains("dbname=") {
        missing.push("dbname=... in primary_conninfo");
    }
    if !missing.is_empty() {
        report.fail(
            NAME,
            format!(
                "standby {label} cannot synchronize the failover slot: it lacks {}",
                missing.join(", ")
            ),
            Some(format!(
                "on standby {label}: ALTER SYSTEM SET each of them; SELECT pg_reload_conf();"
            )),
        );
        return Ok(());
    }
    let slot = &cfg.postgres.slot;
    let row = other
        .client()
        .query_opt(
            "SELECT synced, conflicting, invalidation_reason FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(other.err())?;
    match row.map(|r| (r.get::<_, bool>(0), r.get::<_, Option<bool>>(1), r.get::<_, Option<String>>(2))) {
        None => report.warn(
            NAME,
            format!("standby {label} is set up for slot synchronization, but has no slot {slot} yet"),
            Some("wait for the slot sync worker (the slot must be a failover slot that walguard has confirmed on)".to_owned()),
        ),
        Some((true, Some(false) | None, None)) => report.pass(
            NAME,
            format!("standby {label} synchronizes slot {slot} (primary_slot_name {primary_slot}, hot_standby_feedback on)"),
        ),
        Some((synced, conflicting, reason)) => report.fail(
            NAME,
            format!(
                "slot {slot} on standby {label} is not usable after a promotion: synced {synced}, conflicting {conflicting:?}, invalidation_reason {reason:?}"
            ),
            Some(format!("on standby {label}: SELECT pg_drop_replication_slot({}); the sync worker makes it again", quote_literal(slot))),
        ),
    }
    Ok(())
}
