//! `walguard resync`: the explicit, logged way to start over after the slot lost WAL, was
//! dropped, or was replaced. The gap is never silent: a signed `walguard.resync` event,
//! chained after everything already in the stream, records the last position the stream
//! proves and the new slot's consistent point, and names any messages after the last signed
//! one that could not be re-derived. `run` then resumes from that event.

use std::sync::Arc;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;

use crate::check;
use crate::config::Config;
use crate::error::{Error, Refusal};
use crate::event::envelope::sha256;
use crate::event::naming::Naming;
use crate::event::stored::Resync;
use crate::event::{Envelope, Signer};
use crate::lsn::Lsn;
use crate::sink::{self, publisher, stream, SinkError};
use crate::source::catalog::{Catalog, WalStatus};
use crate::source::conn::ReplicationConnection;

pub async fn run(cfg: &Config) -> Result<String, Error> {
    let signer = Arc::new(Signer::load(&cfg.signing.key_file)?);
    let pg = cfg.pg_config();
    let catalog = Catalog::connect(&pg).await?;
    check::prepare_database(&catalog, cfg).await?;
    let mut repl = ReplicationConnection::connect(catalog.chosen()).await?;
    let system = repl.identify_system().await?;
    let js = async_nats::jetstream::new(sink::connect(&cfg.nats).await?);
    let mut st = stream::ensure(&js, &cfg.nats).await?;
    let slot = &cfg.postgres.slot;
    let envelope = Envelope::new(&system.system_identifier, &system.dbname, slot);
    let keyring = crate::event::Keyring::from_config(&cfg.signing, Some(&signer))?;
    let tail = stream::read_tail(&mut st, &keyring, envelope.source()).await?;

    drop_old_slot(&catalog, slot).await?;
    let failover = check::failover_slot(cfg, &repl, catalog.in_recovery())?;
    let (point, _) = repl.create_slot(slot, false, failover).await?;
    tracing::warn!(slot = %slot, consistent_point = %point, "resync: created a new slot");

    let lost_after = tail.confirmed.unwrap_or(Lsn::ZERO);
    // Messages after the last signed one cannot be re-derived without the old slot: the resync
    // event is chained after them and names them as unverified.
    let (sequence, prev) = if tail.last_sequence >= tail.next_sequence {
        let last = stream::message(&st, tail.last_sequence).await?;
        (tail.last_sequence + 1, sha256(&last.payload))
    } else {
        (tail.next_sequence, tail.prev_hash)
    };
    let record = Resync {
        lost_after,
        resumed_at: point,
        unverified_sequences: (tail.last_sequence >= tail.next_sequence)
            .then_some([tail.next_sequence, tail.last_sequence]),
    };
    let naming = Naming {
        system_identifier: system.system_identifier.clone(),
        slot: slot.clone(),
        subject_prefix: cfg.nats.subject_prefix.clone(),
    };
    let now = crate::clock::unix_micros();
    let draft = naming.resync(point, now, record.data());
    let mut payload = Vec::new();
    envelope.write(&draft, sequence, &prev, &mut payload);
    let headers = publisher::headers(&draft, sequence, Some(&signer), &payload);
    let message = PublishMessage::build().payload(Bytes::from(payload)).headers(headers);
    publish_at(&js, draft.nats_subject.clone(), message, sequence).await?;
    let summary = format!(
        "resync recorded at stream sequence {sequence}: changes committed between {lost_after} and {point} are not in the stream{}; slot {slot} starts again at {point}",
        match record.unverified_sequences {
            Some([first, last]) => format!(", and sequences [{first},{last}] were not verified"),
            None => String::new(),
        }
    );
    tracing::warn!("{summary}");
    Ok(summary)
}

/// Drops the slot the resync replaces, unless a process streams from it: a running walguard
/// would go on confirming from a slot that no longer exists.
async fn drop_old_slot(catalog: &Catalog, slot: &str) -> Result<(), Error> {
    let Some(info) = catalog.slot(slot).await? else {
        return Ok(());
    };
    if let Some(pid) = info.active_pid {
        return Err(Error::Refused(
            Refusal::Preflight,
            format!(
                "replication slot {slot} is in use by PID {pid}: stop walguard (and any other consumer) before resync"
            ),
        ));
    }
    tracing::warn!(slot = %slot, confirmed_flush = %info.confirmed_flush.unwrap_or(Lsn::ZERO), wal_status = info.wal_status.as_ref().map_or("", WalStatus::as_str), "resync: dropping the old slot");
    catalog
        .client()
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| Error::Refused(Refusal::Preflight, format!("dropping slot {slot}: {e}")))?;
    Ok(())
}

/// Publishes the resync event and makes sure the stream stored it at `sequence`, the place
/// its chain link was computed for.
async fn publish_at(
    js: &async_nats::jetstream::Context,
    subject: impl async_nats::subject::ToSubject,
    message: PublishMessage,
    sequence: u64,
) -> Result<(), Error> {
    let failed = |e: &dyn std::fmt::Display| SinkError::Publish {
        sequence,
        reason: e.to_string(),
    };
    let ack = js
        .send_publish(subject, message)
        .await
        .map_err(|e| failed(&e))?
        .await
        .map_err(|e| failed(&e))?;
    if ack.sequence != sequence {
        return Err(failed(&format_args!("stored as sequence {}", ack.sequence)).into());
    }
    Ok(())
}
