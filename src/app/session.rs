//! One session, from connecting to the clean close, as named phases (`Session::run`):
//!
//! 1. `connect`: the catalog connection (and the start-up checks, `check::prepare_database`),
//!    the replication connection, NATS and the stream: the session's `Links`.
//! 2. The stream's tail read back (G7), then `open`: where to start, decided by the pure
//!    `pipeline::start::decide_start`, and acted on (the slot created when there is neither
//!    slot nor stream).
//! 3. `SnapshotTx::import`: a slot created just now exports a snapshot, the baseline; it is
//!    imported before the next command on the replication connection ends it.
//! 4. `build`: the builder, the checkpoint and the publisher, with the hand-off between them.
//! 5. `begin`: the slot taken (START_REPLICATION) before anything is published, the publisher
//!    spawned, what precedes the stream published (a snapshot group a crash left open is
//!    closed, or the initial snapshot), and replication started if it had to wait for that.
//! 6. `spawn_stages`: the WAL reader, the feedback task, the slot monitor and the incremental
//!    snapshotter; `supervise` runs them until the reader stops or another task ends.
//! 7. `Running::close`: the graceful order (drain acks, final status update, CopyDone, drain,
//!    Terminate).
//!
//! Any error ends the session; `app::run` decides what happens next from `SessionEnd`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{JoinError, JoinHandle};

use crate::check;
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::error::{Error, Refusal};
use crate::event::naming::{self, Naming};
use crate::event::shape::TableSpec;
use crate::event::value::ValueKind;
use crate::event::{ColumnHasher, Envelope, EventBuilder, Keyring, Signer};
use crate::lsn::Lsn;
use crate::pipeline::feedback::Feedback;
use crate::pipeline::handoff::{Batcher, Item, QUEUED_BATCHES};
use crate::pipeline::reader::WalReader;
use crate::pipeline::slot_monitor::SlotMonitor;
use crate::pipeline::start::{decide_start, Names, Start};
use crate::pipeline::timeline;
use crate::sink::publisher::{Publisher, ACK_TIMEOUT};
use crate::sink::stream::{self, Tail};
use crate::sink::transparency::{self, TransparencyLog};
use crate::sink::{self, SinkError};
use crate::snapshot::{self, Chunks, Progress};
use crate::source::catalog::Catalog;
use crate::source::conn::{quote_literal, ReplicationConnection, ReplicationReader, ReplicationWriter, SystemInfo};
use crate::telemetry;

/// How long the publisher may take to drain its acks at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long CopyDone, draining the server's rest and Terminate may take at shutdown.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// What every session is given: the configuration and the keys, loaded once per process.
pub struct Session<'a> {
    pub cfg: &'a Config,
    pub signer: Arc<Signer>,
    pub hasher: Option<Arc<ColumnHasher>>,
}

/// How a session ended: whether it reached streaming (before that, a server that cannot be
/// reached is likelier a misconfiguration than an outage) and with what.
pub struct SessionEnd {
    pub streamed: bool,
    pub result: Result<(), Error>,
}

/// What a session is connected to.
struct Links {
    catalog: Arc<Catalog>,
    /// The guarded tables, checked and in the publication (`check::prepare_database`).
    tables: Vec<TableSpec>,
    repl: ReplicationConnection,
    system: SystemInfo,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

/// Where the session starts streaming, and what the stream gets first.
struct Opening {
    /// START_REPLICATION's position.
    at: Lsn,
    /// A new stream: its first message is a watermark at this LSN.
    genesis: Option<Lsn>,
    /// The exported snapshot of the slot created just now: the baseline.
    exported: Option<String>,
}

/// The session's stages as built, before any of them runs.
struct Stages {
    /// Not yet streaming: START_REPLICATION takes the slot.
    repl: ReplicationConnection,
    /// Spawned only once the slot is taken, with the receiving end of the hand-off.
    publisher: Publisher,
    rx: mpsc::Receiver<Vec<Item>>,
    producer: Producer,
    checkpoint: Arc<Checkpoint>,
}

/// What produces the publisher's drafts: the builder with the types it has resolved, the
/// catalog it resolves them from, and the hand-off. The baseline uses it before replication
/// starts; then the WAL reader takes it over.
struct Producer {
    catalog: Arc<Catalog>,
    tables: Vec<TableSpec>,
    builder: EventBuilder,
    types: HashMap<u32, ValueKind>,
    /// How far the baseline got: the incremental snapshot goes on from here.
    progress: Progress,
    tx: Batcher,
}

/// The replication connection while the session begins: started before anything is
/// published, or pending until the initial snapshot is.
enum Replication {
    /// START_REPLICATION waits: it would end the exported snapshot still being published.
    Pending(ReplicationConnection),
    Started(ReplicationReader, ReplicationWriter),
}

/// A session on a started replication stream: the publisher runs, the other stages are still
/// to spawn.
struct Started {
    producer: Producer,
    checkpoint: Arc<Checkpoint>,
    publisher: JoinHandle<Result<(), SinkError>>,
    reader: ReplicationReader,
    writer: ReplicationWriter,
}

/// The session's tasks beside the WAL reader (which `supervise` runs itself), and what the
/// close needs.
struct Running {
    publisher: JoinHandle<Result<(), SinkError>>,
    snapshotter: JoinHandle<Result<(), Error>>,
    feedback: JoinHandle<Result<ReplicationWriter, Error>>,
    monitor: JoinHandle<Result<(), Error>>,
    stop_feedback: watch::Sender<bool>,
    checkpoint: Arc<Checkpoint>,
    /// The SQL connection, closed when the session ends (after the replication stream).
    _catalog: Arc<Catalog>,
}

/// A session's tasks never outlive it: a task still running when the session ends (the
/// reader failed, or another task ended first) is aborted, so it cannot hold the catalog
/// connection or publish beside the next session's publisher. After `close` every task has
/// already ended and this is a no-op.
impl Drop for Running {
    fn drop(&mut self) {
        self.publisher.abort();
        self.snapshotter.abort();
        self.feedback.abort();
        self.monitor.abort();
    }
}

/// How supervision ended.
enum Supervised {
    /// The WAL reader stopped (shutdown, or the publisher went away): close in order.
    Close(ReplicationReader),
    /// The reader failed, or another task ended first: the session ends with this.
    End(Result<(), Error>),
}

impl Session<'_> {
    /// One session, from connecting to the clean close.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> SessionEnd {
        match self.start().await {
            Ok(started) => SessionEnd {
                streamed: true,
                result: self.stream(started, shutdown).await,
            },
            Err(e) => SessionEnd {
                streamed: false,
                result: Err(e),
            },
        }
    }

    /// Everything up to a started replication stream.
    async fn start(&self) -> Result<Started, Error> {
        let cfg = self.cfg;
        let mut links = self.connect().await?;
        let envelope = Envelope::new(
            &links.system.system_identifier,
            &links.system.dbname,
            &cfg.postgres.slot,
        );
        let keyring = Keyring::from_config(&cfg.signing, Some(&self.signer))?;
        let tail = stream::read_tail(&mut links.stream, &keyring, envelope.source()).await?;
        let opening = self.open(&mut links, &tail).await?;
        // The exported snapshot must be imported before the next command on the replication
        // connection (START_REPLICATION) ends it.
        let snapshot = match &opening.exported {
            Some(name) => Some(SnapshotTx::import(cfg, name).await?),
            None => None,
        };
        let (progress, open_group) = match snapshot {
            Some(_) => (Progress::default(), None),
            None => snapshot_state(&links.stream, &tail, &cfg.nats.subject_prefix, &links.tables).await?,
        };
        // The tables' shapes as the stream holds them up to the verified head, so a schema
        // event is published only when a shape differs (and the unsigned tail's are derived
        // again, byte for byte).
        let schema_subject = naming::marker_subject(&cfg.nats.subject_prefix, "schema");
        let schemas = stream::read_schemas(&links.stream, &schema_subject, tail.next_sequence - 1).await?;
        let log = self
            .transparency_log(&links.system, &links.js, &links.stream, &keyring, &tail)
            .await?;
        let (next_sequence, last_sequence) = (tail.next_sequence, tail.last_sequence);
        let resume_after = tail.position.lsn;
        let at = opening.at;
        let mut stages = self.build(links, envelope, tail, &opening, progress, log);
        stages.producer.builder.set_published_schemas(schemas);
        let started = self.begin(stages, at, snapshot, open_group).await?;
        telemetry::health().streaming();
        tracing::info!(start = %at, next_sequence, last_sequence, resume_after = %resume_after, "streaming");
        Ok(started)
    }

    /// Connects, in this order: the catalog (and the start-up checks on it), the replication
    /// connection, NATS, the stream (created or checked).
    async fn connect(&self) -> Result<Links, Error> {
        let pg = self.cfg.pg_config();
        let catalog = Arc::new(Catalog::connect(&pg).await?);
        let tables = check::prepare_database(&catalog, self.cfg).await?;
        let mut repl = ReplicationConnection::connect(catalog.chosen()).await?;
        let system = repl.identify_system().await?;
        let client = sink::connect(&self.cfg.nats).await?;
        // The timeout bounds every awaited PubAck (and API request) of the publisher.
        let js = jetstream::context::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        let stream = stream::ensure(&js, &self.cfg.nats).await?;
        Ok(Links {
            catalog,
            tables,
            repl,
            system,
            js,
            stream,
        })
    }

    /// Decides where to start from the slot and the stream's tail (`decide_start`) and acts
    /// on it: creates the slot when there is neither slot nor stream.
    async fn open(&self, links: &mut Links, tail: &Tail) -> Result<Opening, Error> {
        let slot_name = &self.cfg.postgres.slot;
        let slot = links.catalog.slot(slot_name).await?;
        let names = Names {
            slot: slot_name,
            stream: &self.cfg.nats.stream,
            database: &links.system.dbname,
        };
        let opening = match decide_start(slot.as_ref(), tail.is_empty(), tail.confirmed, names)? {
            Start::CreateSlot => {
                let failover = check::failover_slot(self.cfg, &links.repl, links.catalog.in_recovery())?;
                if links.catalog.in_recovery() {
                    tracing::info!(slot = %slot_name, "creating the slot on a standby: it waits for the primary's next running-xacts record (written at its checkpoints and every 15 s by the background writer while it is busy); `SELECT pg_log_standby_snapshot()` on the primary writes one now");
                }
                let (point, exported) = links.repl.create_slot(slot_name, true, failover).await?;
                tracing::info!(slot = %slot_name, consistent_point = %point, "created replication slot");
                Opening {
                    at: point,
                    genesis: Some(point),
                    exported,
                }
            }
            Start::NewStream { at } => {
                tracing::warn!(slot = %slot_name, confirmed_flush = %at, "the slot exists but the stream is empty: events start at the slot's confirmed position");
                Opening {
                    at,
                    genesis: Some(at),
                    exported: None,
                }
            }
            Start::Resume { at } => {
                let confirmed = slot.as_ref().and_then(|s| s.confirmed_flush).unwrap_or(Lsn::ZERO);
                self.check_timeline(links, at, confirmed, tail.last_sequence).await?;
                Opening {
                    at,
                    genesis: None,
                    exported: None,
                }
            }
        };
        Ok(opening)
    }

    /// The Merkle tree over the stream up to the verified head (restored from the newest
    /// checkpoint, SPEC section 8) and the checkpoint schedule with the configured witnesses.
    async fn transparency_log(
        &self,
        system: &SystemInfo,
        js: &jetstream::Context,
        stream: &jetstream::stream::Stream,
        keyring: &Keyring,
        tail: &Tail,
    ) -> Result<TransparencyLog, Error> {
        let cfg = self.cfg;
        let origin = cfg
            .audit
            .origin_for(&system.system_identifier, &system.dbname, &cfg.postgres.slot);
        let logs = transparency::log_vkeys(keyring, &origin);
        let witnesses = cfg
            .audit
            .witness_keys()
            .map_err(|e| Error::Refused(Refusal::Internal, e))?;
        let subject = naming::marker_subject(&cfg.nats.subject_prefix, naming::CHECKPOINT);
        let size = tail.next_sequence - 1;
        let restored = transparency::restore(js, stream, &subject, size, &logs, &witnesses).await?;
        tracing::debug!(size, root = %restored.frontier.root(), "Merkle tree restored");
        TransparencyLog::new(
            &cfg.audit,
            witnesses,
            origin,
            self.signer.clone(),
            restored,
            js.clone(),
            cfg.nats.stream.clone(),
        )
        .map_err(|e| Error::Refused(Refusal::Internal, e))
    }

    /// After a promotion (timeline 2 or later): refuses when the stream holds events beyond
    /// the switch point that nothing on this timeline confirmed (`pipeline::timeline`),
    /// naming the range and the tables.
    async fn check_timeline(
        &self,
        links: &mut Links,
        stream_end: Lsn,
        confirmed: Lsn,
        last_sequence: u64,
    ) -> Result<(), Error> {
        let tli = links.system.timeline;
        if tli <= 1 {
            return Ok(());
        }
        let content = links.repl.timeline_history(tli).await?;
        let history = timeline::parse_history(&content)
            .map_err(|e| Error::Refused(Refusal::Internal, format!("TIMELINE_HISTORY {tli}: {e}")))?;
        let Some(fork) = timeline::check(tli, &history, stream_end, confirmed) else {
            return Ok(());
        };
        let tables = tables_after(&links.stream, last_sequence, fork.from).await?;
        Err(Error::Refused(
            Refusal::TimelineFork,
            format!(
                "the server is on timeline {} since {}, but stream {} holds events up to {} (tables: {}): the changes committed between {} and {} came from WAL the promoted server does not have, and its own changes there would be skipped as already published. Nothing is published on top of this fork: `walguard reconcile` shows the rows that differ; then start over explicitly with `walguard resync`",
                fork.timeline,
                fork.from,
                self.cfg.nats.stream,
                fork.to,
                tables,
                fork.from,
                fork.to,
            ),
        ))
    }

    /// Builds the builder, the checkpoint and the publisher from the links and the tail; none
    /// of them runs yet.
    fn build(
        &self,
        links: Links,
        envelope: Envelope,
        tail: Tail,
        opening: &Opening,
        progress: Progress,
        log: TransparencyLog,
    ) -> Stages {
        let cfg = self.cfg;
        let Links {
            catalog,
            tables,
            repl,
            system,
            js,
            stream,
        } = links;
        let mut checkpoint = Checkpoint::new(tail.confirmed.unwrap_or(opening.at), cfg.nats.durability_delay);
        if cfg.audit.require_witness {
            checkpoint = checkpoint.require_witness();
        }
        let checkpoint = Arc::new(checkpoint);
        let naming = Arc::new(Naming {
            system_identifier: system.system_identifier.clone(),
            slot: cfg.postgres.slot.clone(),
            subject_prefix: cfg.nats.subject_prefix.clone(),
        });
        let builder = EventBuilder::new(naming.clone(), tables.clone(), tail.position).with_hasher(self.hasher.clone());
        let publisher = Publisher {
            js,
            stream,
            envelope,
            naming,
            signer: self.signer.clone(),
            checkpoint: checkpoint.clone(),
            tail,
            watermark_interval: cfg.nats.watermark_interval,
            genesis: opening.genesis,
            replay_end: system.xlogpos,
            log,
            require_witness: cfg.audit.require_witness,
        };
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let producer = Producer {
            catalog,
            tables,
            builder,
            types: HashMap::new(),
            progress,
            tx: Batcher::new(tx),
        };
        Stages {
            repl,
            publisher,
            rx,
            producer,
            checkpoint,
        }
    }

    /// Takes the slot, spawns the publisher and publishes what precedes the stream: the close
    /// of a snapshot group a crash left open (`open_group`: its LSN and index), or the
    /// initial snapshot under `snapshot`. Replication starts at `at`.
    async fn begin(
        &self,
        stages: Stages,
        at: Lsn,
        snapshot: Option<SnapshotTx>,
        open_group: Option<(Lsn, u32)>,
    ) -> Result<Started, Error> {
        let Stages {
            repl,
            publisher,
            rx,
            mut producer,
            checkpoint,
        } = stages;
        // Take the slot before publishing anything, so a second walguard waits here as a standby
        // (SQLSTATE 55006) instead of writing into the stream. Only a slot created just now, whose
        // snapshot must be published first, is started after the initial snapshot.
        let replication = match snapshot {
            None => {
                let (reader, writer) = start_replication(repl, self.cfg, at).await?;
                Replication::Started(reader, writer)
            }
            Some(_) => Replication::Pending(repl),
        };
        let mut publisher = tokio::spawn(publisher.run(rx));
        if let Some(group) = open_group {
            producer.close_open_group(group).await?;
        }
        if let Some(snapshot) = snapshot {
            producer.initial_snapshot(snapshot, at, &mut publisher).await?;
        }
        let (reader, writer) = match replication {
            Replication::Started(reader, writer) => (reader, writer),
            Replication::Pending(repl) => start_replication(repl, self.cfg, at).await?,
        };
        Ok(Started {
            producer,
            checkpoint,
            publisher,
            reader,
            writer,
        })
    }

    /// Streams until shutdown or an error: the stages spawned and supervised, then, when the
    /// WAL reader stopped, the graceful close.
    async fn stream(&self, started: Started, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let (reading, mut running) = self.spawn_stages(started, shutdown);
        match supervise(&mut running, reading).await {
            Supervised::Close(reader) => running.close(reader).await,
            Supervised::End(result) => result,
        }
    }

    /// Spawns the tasks beside the WAL reader (the incremental snapshot, feedback, the slot
    /// monitor) and returns the reader's run, which `supervise` drives.
    fn spawn_stages(
        &self,
        started: Started,
        shutdown: watch::Receiver<bool>,
    ) -> (impl Future<Output = Result<ReplicationReader, Error>>, Running) {
        let Started {
            producer,
            checkpoint,
            publisher,
            reader,
            writer,
        } = started;
        let Producer {
            catalog,
            tables,
            builder,
            types,
            progress,
            tx,
        } = producer;
        let chunks = Arc::new(Chunks::default());
        let snapshotter = spawn_snapshotter(catalog.clone(), chunks.clone(), types.clone(), &tables, progress);
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
        let (stop_feedback, stop) = watch::channel(false);
        let feedback = tokio::spawn(
            Feedback {
                writer,
                checkpoint: checkpoint.clone(),
                reply_now,
            }
            .run(stop),
        );
        let monitor = tokio::spawn(
            SlotMonitor {
                catalog: catalog.clone(),
                slot: self.cfg.postgres.slot.clone(),
                warn_above: self.cfg.postgres.retained_wal_warn,
                checkpoint: checkpoint.clone(),
            }
            .run(),
        );
        let running = Running {
            publisher,
            snapshotter,
            feedback,
            monitor,
            stop_feedback,
            checkpoint,
            _catalog: catalog,
        };
        (wal_reader.run(tx, shutdown), running)
    }
}

/// The incremental snapshot of the tables the baseline does not cover yet, beside the WAL
/// reader, which publishes its chunks (`snapshot::incremental`). Once done, the task stays
/// pending: only a failure ends it, and with it the session.
fn spawn_snapshotter(
    catalog: Arc<Catalog>,
    chunks: Arc<Chunks>,
    types: HashMap<u32, ValueKind>,
    tables: &[TableSpec],
    progress: Progress,
) -> JoinHandle<Result<(), Error>> {
    let pending = progress.pending(tables);
    tokio::spawn(async move {
        if !pending.is_empty() {
            snapshot::incremental(catalog, chunks, pending, progress, types).await?;
        }
        std::future::pending::<()>().await;
        Ok::<(), Error>(())
    })
}

/// Sends START_REPLICATION: the slot is taken (SQLSTATE 55006 while another process has it).
async fn start_replication(
    repl: ReplicationConnection,
    cfg: &Config,
    at: Lsn,
) -> Result<(ReplicationReader, ReplicationWriter), Error> {
    Ok(repl
        .start_replication(&cfg.postgres.slot, at, &cfg.postgres.publication)
        .await?)
}

/// A transaction on the exported snapshot of the slot created just now: it sees exactly what
/// was committed before the slot's consistent point, which the initial snapshot publishes.
struct SnapshotTx(Catalog);

impl SnapshotTx {
    async fn import(cfg: &Config, name: &str) -> Result<SnapshotTx, Error> {
        let reader = Catalog::connect(&cfg.pg_config()).await?;
        reader
            .client()
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(name)
            ))
            .await
            .map_err(|e| Error::Refused(Refusal::Snapshot, format!("importing the slot's snapshot: {e}")))?;
        Ok(SnapshotTx(reader))
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.0.client()
    }

    /// Ends the read-only transaction; if that fails, it ends with the connection.
    async fn commit(self) {
        let _ = self.0.client().batch_execute("COMMIT").await;
    }
}

impl Producer {
    /// Closes the snapshot group a previous run left open at `lsn`: its `snapshot_progress`
    /// event takes index `idx`.
    async fn close_open_group(&mut self, (lsn, idx): (Lsn, u32)) -> Result<(), Error> {
        tracing::info!(%lsn, "closing the snapshot group a previous run left open; the rest follows incrementally");
        let mut out = Vec::new();
        self.builder
            .begin_snapshot_group(lsn, idx, crate::clock::unix_micros())?;
        self.builder.end_snapshot_group(self.progress.data(), &mut out)?;
        // A stopped publisher reports its own failure when the session supervises it.
        let _ = snapshot::send_all(&mut self.tx, &mut out).await;
        Ok(())
    }

    /// Publishes the initial snapshot at `at` under the exported snapshot, then ends its
    /// transaction.
    async fn initial_snapshot(
        &mut self,
        snapshot: SnapshotTx,
        at: Lsn,
        publisher: &mut JoinHandle<Result<(), SinkError>>,
    ) -> Result<(), Error> {
        let initial = snapshot::initial(
            snapshot.client(),
            &self.catalog,
            &mut self.builder,
            &mut self.types,
            &self.tables,
            &mut self.tx,
            at,
        )
        .await;
        self.progress = match initial {
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
        snapshot.commit().await;
        Ok(())
    }
}

/// Runs the WAL reader beside the session's tasks until it stops or one of them ends first.
/// Whatever still runs when the session ends is aborted as `Running` drops.
async fn supervise(
    running: &mut Running,
    reading: impl Future<Output = Result<ReplicationReader, Error>>,
) -> Supervised {
    let Running {
        publisher,
        snapshotter,
        feedback,
        monitor,
        ..
    } = running;
    tokio::select! {
        r = reading => match r {
            Ok(reader) => Supervised::Close(reader),
            Err(e) => Supervised::End(Err(e)),
        },
        s = &mut *snapshotter => {
            publisher.abort();
            feedback.abort();
            monitor.abort();
            Supervised::End(joined("snapshot task", s))
        }
        m = &mut *monitor => {
            publisher.abort();
            feedback.abort();
            Supervised::End(joined("slot monitor", m))
        }
        p = &mut *publisher => {
            feedback.abort();
            Supervised::End(joined("publisher task", p))
        }
        f = &mut *feedback => {
            publisher.abort();
            Supervised::End(joined("feedback task", f).map(drop))
        }
    }
}

/// A task's outcome: its own result, or its panic or cancellation as an internal refusal
/// naming the task.
fn joined<T, E: Into<Error>>(task: &str, outcome: Result<Result<T, E>, JoinError>) -> Result<T, Error> {
    match outcome {
        Ok(result) => result.map_err(Into::into),
        Err(join) => Err(Error::Refused(Refusal::Internal, format!("{task} failed: {join}"))),
    }
}

impl Running {
    /// The graceful close, once the WAL reader has stopped (shutdown, or the publisher went
    /// away): wait for acks in flight, confirm what is stored, end the stream; then report a
    /// publisher failure, if any.
    async fn close(mut self, reader: ReplicationReader) -> Result<(), Error> {
        self.monitor.abort();
        self.snapshotter.abort();
        let publisher_failure = match tokio::time::timeout(DRAIN_DEADLINE, &mut self.publisher).await {
            Ok(outcome) => joined("publisher task", outcome).err(),
            Err(_) => {
                tracing::warn!("acks still in flight at the shutdown deadline; they will be replayed on restart");
                self.publisher.abort();
                None
            }
        };
        // The feedback task sends the final status update as it stops.
        let _ = self.stop_feedback.send(true);
        let writer = joined("feedback task", (&mut self.feedback).await)?;
        tracing::info!(confirmed = %self.checkpoint.confirmable(Instant::now()), "final status update sent; closing the replication stream");
        end_stream(reader, writer).await;
        match publisher_failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Ends the replication stream: CopyDone, the server's rest drained, Terminate. A stream that
/// does not close cleanly within `CLOSE_DEADLINE` is only logged: the session is over anyway.
async fn end_stream(reader: ReplicationReader, mut writer: ReplicationWriter) {
    let close = async {
        writer.copy_done().await?;
        let mut reader = reader;
        reader.drain().await?;
        writer.terminate().await
    };
    if let Err(e) = tokio::time::timeout(CLOSE_DEADLINE, close).await.unwrap_or(Ok(())) {
        tracing::debug!(error = %e, "replication stream did not close cleanly");
    }
}

/// The baseline's progress as the stream records it (`snapshot::resume`): the last
/// `snapshot_progress` event unless a resync came after it, and where a group a crash left
/// open stopped. A failed read is an error (transient: the session retries), never "no
/// marker": an unread resync record would make an older snapshot marker look current.
/// The guarded tables with events after `from` in the stream, read back from its end (at
/// most `TABLES_AFTER_READ` messages: a refusal's message, not an audit).
async fn tables_after(stream: &jetstream::stream::Stream, last_sequence: u64, from: Lsn) -> Result<String, Error> {
    const TABLES_AFTER_READ: u64 = 100_000;
    let mut tables = std::collections::BTreeSet::new();
    let mut seq = last_sequence;
    let floor = last_sequence.saturating_sub(TABLES_AFTER_READ);
    while seq > floor {
        let msg = stream::message(stream, seq).await?;
        let Ok(attrs) = crate::event::stored::Attributes::parse(&msg.payload) else {
            break;
        };
        if attrs.pglsn <= from {
            return Ok(tables.into_iter().collect::<Vec<_>>().join(", "));
        }
        if !msg.subject.contains("._walguard.") {
            tables.insert(attrs.subject.split('/').next().unwrap_or_default().to_owned());
        }
        seq -= 1;
    }
    let mut listed = tables.into_iter().collect::<Vec<_>>().join(", ");
    if seq > 0 {
        listed.push_str(&format!(", and possibly more at or before sequence {seq}"));
    }
    Ok(listed)
}

async fn snapshot_state(
    stream: &jetstream::stream::Stream,
    tail: &Tail,
    prefix: &str,
    tables: &[TableSpec],
) -> Result<(Progress, Option<(Lsn, u32)>), Error> {
    let marker = stream::last_on_subject(stream, &naming::marker_subject(prefix, "snapshot")).await?;
    let resync = stream::last_on_subject(stream, &naming::marker_subject(prefix, "resync")).await?;
    let head = tail.head.as_deref().map(|p| (tail.next_sequence - 1, p));
    snapshot::resume(
        marker.as_ref().map(|(seq, p)| (*seq, &p[..])),
        resync.map(|(seq, _)| seq),
        head,
        tables,
    )
}
