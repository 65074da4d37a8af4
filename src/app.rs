//! The composition root: the only place that connects the stages and spawns tasks.
//!
//! A session connects everything, reads the stream's tail (G7), checks it against the slot,
//! starts replication and runs reader, publisher and feedback until shutdown or an error.
//! Transient errors end the session and a new one starts after a capped backoff, from the
//! stream's tail again, so nothing is skipped and nothing is confirmed past what is stored
//! (G3). Permanent errors stop the process with a message that says what to fix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use crate::check;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::error::{Error, Recovery, Refusal};
use crate::event::builder::Naming;
use crate::event::{ColumnHasher, Envelope, EventBuilder, Signer};
use crate::lsn::Lsn;
use crate::pipeline::feedback::Feedback;
use crate::pipeline::handoff::{Batcher, QUEUED_BATCHES};
use crate::pipeline::reader::WalReader;
use crate::pipeline::slot_monitor::SlotMonitor;
use crate::pipeline::start::{decide_start, Names, Start};
use crate::sink::publisher::Publisher;
use crate::sink::{self, stream};
use crate::snapshot::{self, Chunks, Progress};
use crate::source::catalog::Catalog;
use crate::source::conn::ReplicationConnection;
use crate::telemetry;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a standby tries to take the slot over.
const STANDBY_POLL: Duration = Duration::from_secs(1);
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the daemon until `shutdown` turns true.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let signer = Arc::new(Signer::load(&cfg.signing.key_file)?);
    let hasher = ColumnHasher::from_config(&cfg.hashing)?;
    tracing::info!(key_id = signer.key_id(), slot = %cfg.postgres.slot, stream = %cfg.nats.stream, "walguard starting");
    let mut backoff = Duration::from_millis(500);
    let mut streamed_once = false;
    let mut standby_logged = false;
    loop {
        let started = Instant::now();
        let mut reached_streaming = false;
        let result = session(&cfg, &signer, hasher.clone(), shutdown.clone(), &mut reached_streaming).await;
        streamed_once |= reached_streaming;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.recovery() == Recovery::Blocked => {
                // An event cannot go out: stay up, say why, and try it again (SPEC G3). The
                // next session connects anew, so it learns a raised max_payload.
                telemetry::metrics().error(e.kind());
                telemetry::metrics().restarts.inc();
                telemetry::health().blocked(format!("{}: {e}", e.kind()), e.blocked_at());
                tracing::error!(error = %e, kind = e.kind(), retry_in = ?backoff, "progress is blocked at an event that cannot be published; nothing after it is published, retrying");
                if pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) if e.is_slot_in_use() => {
                telemetry::health().not_streaming("standby: the slot is active for another process");
                // Another walguard streams from the slot: wait as its standby and take over
                // within seconds once it is gone.
                if !standby_logged {
                    tracing::info!(slot = %cfg.postgres.slot, "the slot is active for another process; waiting as standby");
                    standby_logged = true;
                }
                if pause(STANDBY_POLL, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) if e.is_transient() && (streamed_once || *shutdown.borrow()) => {
                telemetry::metrics().error(e.kind());
                telemetry::metrics().restarts.inc();
                telemetry::health().not_streaming(format!("{}: {e}", e.kind()));
                if *shutdown.borrow() {
                    return Ok(());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                tracing::warn!(error = %e, kind = e.kind(), retry_in = ?backoff, "session failed; retrying from the stream's tail");
                if pause(backoff, &shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                telemetry::metrics().error(e.kind());
                telemetry::health().not_streaming(e.to_string());
                return Err(e);
            }
        }
    }
}

/// Waits `d` between sessions; `true` when shutdown was asked for meanwhile.
async fn pause(d: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut sd = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = sd.changed() => true,
    }
}

async fn session(
    cfg: &Config,
    signer: &Arc<Signer>,
    hasher: Option<Arc<ColumnHasher>>,
    shutdown: watch::Receiver<bool>,
    reached: &mut bool,
) -> Result<(), Error> {
    let pg = cfg.pg_config();
    let catalog = Arc::new(Catalog::connect(&pg).await?);
    let tables = check::prepare_database(&catalog, cfg).await?;

    let mut repl = ReplicationConnection::connect(&pg).await?;
    let system = repl.identify_system().await?;

    let client = sink::connect(&cfg.nats).await?;
    // The timeout bounds every awaited PubAck (and API request) of the publisher.
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(crate::sink::publisher::ACK_TIMEOUT)
        .build(client);
    let mut stream = stream::ensure(&js, &cfg.nats).await?;

    let slot_name = &cfg.postgres.slot;
    let envelope = Envelope::new(&system.system_identifier, &system.dbname, slot_name);
    let keyring = crate::event::Keyring::from_config(&cfg.signing, Some(signer))?;
    let tail = stream::read_tail(&mut stream, &keyring, envelope.source()).await?;

    let slot = catalog.slot(slot_name).await?;
    let mut genesis = None;
    let mut exported = None;
    let names = Names {
        slot: slot_name,
        stream: &cfg.nats.stream,
        database: &system.dbname,
    };
    let start = match decide_start(slot.as_ref(), tail.is_empty(), tail.confirmed, names)? {
        Start::CreateSlot => {
            let failover = check::failover_slot(cfg, &repl)?;
            let (point, snapshot) = repl.create_slot(slot_name, true, failover).await?;
            tracing::info!(slot = %slot_name, consistent_point = %point, "created replication slot");
            genesis = Some(point);
            exported = snapshot;
            point
        }
        Start::NewStream { at } => {
            tracing::warn!(slot = %slot_name, confirmed_flush = %at, "the slot exists but the stream is empty: events start at the slot's confirmed position");
            genesis = Some(at);
            at
        }
        Start::Resume { at } => at,
    };

    // The exported snapshot must be imported before the next command on the replication
    // connection (START_REPLICATION) ends it.
    let snapshot_reader = match &exported {
        Some(name) => {
            let reader = Catalog::connect(&pg).await?;
            reader
                .client()
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    crate::source::conn::quote_literal(name)
                ))
                .await
                .map_err(|e| Error::Refused(Refusal::Snapshot, format!("importing the slot's snapshot: {e}")))?;
            Some(reader)
        }
        None => None,
    };

    let checkpoint = Arc::new(Checkpoint::new(
        tail.confirmed.unwrap_or(start),
        cfg.nats.durability_delay,
    ));
    let naming = Arc::new(Naming {
        system_identifier: system.system_identifier.clone(),
        slot: slot_name.clone(),
        subject_prefix: cfg.nats.subject_prefix.clone(),
    });
    let mut builder = EventBuilder::new(naming.clone(), tables.clone(), tail.position).with_hasher(hasher);
    let mut types = HashMap::new();
    let (mut progress, close) = if exported.is_some() {
        (Progress::default(), None)
    } else {
        snapshot_state(&stream, &tail, &cfg.nats.subject_prefix, &tables).await?
    };
    let resume_position = tail.position;
    let (next_sequence, last_sequence) = (tail.next_sequence, tail.last_sequence);

    let publisher = Publisher {
        js,
        stream,
        envelope,
        naming,
        signer: signer.clone(),
        checkpoint: checkpoint.clone(),
        tail,
        watermark_interval: cfg.nats.watermark_interval,
        genesis,
        replay_end: system.xlogpos,
    };
    // Take the slot before publishing anything, so a second walguard waits here as a standby
    // (SQLSTATE 55006) instead of writing into the stream. Only a slot created just now, whose
    // snapshot must be published first, is started after the initial snapshot.
    let mut repl = Some(repl);
    let mut started = None;
    if snapshot_reader.is_none() {
        let conn = repl.take().expect("not yet started");
        started = Some(
            conn.start_replication(slot_name, start, &cfg.postgres.publication)
                .await?,
        );
    }
    let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
    let mut tx = Batcher::new(tx);
    let mut publisher = tokio::spawn(publisher.run(rx));
    let mut out = Vec::new();
    if let Some((lsn, idx)) = close {
        tracing::info!(%lsn, "closing the snapshot group a previous run left open; the rest follows incrementally");
        builder.begin_snapshot_group(lsn, idx, crate::clock::unix_micros())?;
        builder.end_snapshot_group(progress.data(), &mut out)?;
        // A stopped publisher reports its own failure below.
        let _ = snapshot::send_all(&mut tx, &mut out).await;
    }
    if let Some(reader) = snapshot_reader {
        let initial = snapshot::initial(
            reader.client(),
            &catalog,
            &mut builder,
            &mut types,
            &tables,
            &mut tx,
            start,
        )
        .await;
        progress = match initial {
            Ok(progress) => progress,
            // The snapshot stopped because the publisher did: its error is the one that
            // counts (an oversized snapshot row blocks, it does not stop walguard).
            Err(e) if publisher.is_finished() => {
                return Err(match publisher.await {
                    Ok(Err(failure)) => failure.into(),
                    _ => e,
                })
            }
            Err(e) => return Err(e),
        };
        let _ = reader.client().batch_execute("COMMIT").await;
    }

    let (reader, writer) = match (started, repl) {
        (Some(streams), _) => streams,
        (None, Some(conn)) => {
            conn.start_replication(slot_name, start, &cfg.postgres.publication)
                .await?
        }
        (None, None) => unreachable!("the connection is either started or still here"),
    };
    *reached = true;
    telemetry::health().streaming();
    tracing::info!(
        %start,
        next_sequence,
        last_sequence,
        resume_after = %resume_position.lsn,
        "streaming"
    );

    let chunks = Arc::new(Chunks::default());
    let pending = progress.pending(&tables);
    let mut snapshotter = tokio::spawn({
        let (catalog, chunks, types) = (catalog.clone(), chunks.clone(), types.clone());
        async move {
            if !pending.is_empty() {
                snapshot::incremental(catalog, chunks, pending, progress, types).await?;
            }
            std::future::pending::<()>().await;
            Ok::<(), Error>(())
        }
    });
    let reply_now = Arc::new(Notify::new());
    let wal_reader = WalReader {
        reader,
        builder,
        catalog: catalog.clone(),
        types,
        checkpoint: checkpoint.clone(),
        reply_now: reply_now.clone(),
        chunks,
    };

    let (stop_feedback, feedback_stop_rx) = watch::channel(false);
    let mut feedback = tokio::spawn(
        Feedback {
            writer,
            checkpoint: checkpoint.clone(),
            reply_now,
        }
        .run(feedback_stop_rx),
    );

    let mut monitor = tokio::spawn(
        SlotMonitor {
            catalog: catalog.clone(),
            slot: slot_name.clone(),
            warn_above: cfg.postgres.retained_wal_warn,
            checkpoint: checkpoint.clone(),
        }
        .run(),
    );
    let reader = tokio::select! {
        r = wal_reader.run(tx, shutdown.clone()) => r?,
        s = &mut snapshotter => {
            publisher.abort();
            feedback.abort();
            monitor.abort();
            return match s {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Ok(()),
                Err(join) => Err(Error::Refused(Refusal::Internal, format!("snapshot task failed: {join}"))),
            };
        }
        m = &mut monitor => {
            publisher.abort();
            feedback.abort();
            return match m {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Ok(()),
                Err(join) => Err(Error::Refused(Refusal::Internal, format!("slot monitor failed: {join}"))),
            };
        }
        p = &mut publisher => {
            feedback.abort();
            return match p {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(())) => Ok(()),
                Err(join) => Err(Error::Refused(Refusal::Internal, format!("publisher task failed: {join}"))),
            };
        }
        f = &mut feedback => {
            publisher.abort();
            return match f {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Ok(()),
                Err(join) => Err(Error::Refused(Refusal::Internal, format!("feedback task failed: {join}"))),
            };
        }
    };

    monitor.abort();
    snapshotter.abort();
    // The reader stopped (shutdown, or the publisher went away): wait for acks in flight,
    // confirm what is stored, end the stream; then report a publisher failure, if any.
    let publisher_failure = match tokio::time::timeout(DRAIN_DEADLINE, &mut publisher).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(Error::from(e)),
        Ok(Err(join)) => Some(Error::Refused(
            Refusal::Internal,
            format!("publisher task failed: {join}"),
        )),
        Err(_) => {
            tracing::warn!("acks still in flight at the shutdown deadline; they will be replayed on restart");
            publisher.abort();
            None
        }
    };
    let _ = stop_feedback.send(true);
    let mut writer = match feedback.await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(e),
        Err(join) => {
            return Err(Error::Refused(
                Refusal::Internal,
                format!("feedback task failed: {join}"),
            ))
        }
    };
    tracing::info!(confirmed = %checkpoint.confirmable(Instant::now()), "final status update sent; closing the replication stream");
    let close = async {
        writer.copy_done().await?;
        let mut reader = reader;
        reader.drain().await?;
        writer.terminate().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), close)
        .await
        .unwrap_or(Ok(()))
    {
        tracing::debug!(error = %e, "replication stream did not close cleanly");
    }
    match publisher_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The baseline's progress as the stream records it (`snapshot::resume`): the last
/// `snapshot_progress` event unless a resync came after it, and where a group a crash left
/// open stopped. A failed read is an error (transient: the session retries), never "no
/// marker": an unread resync record would make an older snapshot marker look current.
async fn snapshot_state(
    stream: &async_nats::jetstream::stream::Stream,
    tail: &stream::Tail,
    prefix: &str,
    tables: &[crate::event::builder::TableSpec],
) -> Result<(Progress, Option<(Lsn, u32)>), Error> {
    let marker = stream::last_on_subject(stream, &format!("{prefix}._walguard.snapshot")).await?;
    let resync = stream::last_on_subject(stream, &format!("{prefix}._walguard.resync")).await?;
    let head = tail.head.as_deref().map(|p| (tail.next_sequence - 1, p));
    snapshot::resume(
        marker.as_ref().map(|(seq, p)| (*seq, &p[..])),
        resync.map(|(seq, _)| seq),
        head,
        tables,
    )
}
