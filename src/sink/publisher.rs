//! The publisher: gives each draft its place in the chain (sequence, prevhash), signs per
//! SPEC's group rule, publishes with `Nats-Msg-Id` and `Nats-Expected-Last-Sequence`, keeps a
//! bounded number of acks in flight, and reports acks in stream order to the checkpoint.
//! When nothing is pending and the server has moved on, it publishes a watermark.
//!
//! Events are published as plain NATS messages whose reply subject is
//! `{inbox}.{stream sequence}`, and one subscription to `{inbox}.*` receives the PubAcks: the
//! reply subject says which event an ack is for, and one timer (the publisher's tick) bounds
//! the oldest ack's wait. This is what JetStream publishing is on the wire; the client's
//! request API would add a channel, an inbox string, a map entry and a timer per event.
//!
//! After a restart, drafts whose sequence is at or below the stream's last sequence are not
//! published: they are serialized and compared with the stored message, byte for byte. A
//! mismatch means the stream holds something walguard did not write from this WAL (another
//! publisher, a changed slot); walguard stops and names the sequence.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderName, NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderValue, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::stream::{message, Tail};
use super::transparency::TransparencyLog;
use super::SinkError;
use crate::checkpoint::Checkpoint;
use crate::clock::unix_micros;
use crate::error::Refusal;
use crate::event::chain::MAX_UNSIGNED_RUN;
use crate::event::draft::Op;
use crate::event::envelope::{sha256, Hash, CONTENT_TYPE, HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::naming::Naming;
use crate::event::{Draft, Envelope, Position, Signer};
use crate::lsn::Lsn;
use crate::pipeline::handoff::Item;
use crate::telemetry;

/// Acks awaited at once; beyond it the publisher stops taking drafts, the channel fills,
/// and the WAL reader stops reading (backpressure, G5).
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long a PubAck may take once its predecessors are acknowledged.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// JetStream's error code for a failed `Nats-Expected-Last-Sequence` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// Room kept under `max_payload` for an event's headers (message id, expected sequence,
/// content type, key id and signature: under 300 bytes) and the protocol line.
const HEADROOM: usize = 512;

/// A PubAck as JetStream sends it: a stored message's stream and sequence, or an error.
#[derive(Debug, serde::Deserialize)]
struct PubAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What came back for one publish.
#[derive(Debug)]
enum Reply {
    Ack(PubAck),
    /// Nothing listens on the subject: no stream captures it (any more).
    NoResponders,
    Unreadable(String),
}

impl Reply {
    fn parse(message: &async_nats::Message) -> Reply {
        if message.status == Some(StatusCode::NO_RESPONDERS) {
            return Reply::NoResponders;
        }
        Reply::from_payload(&message.payload)
    }

    fn from_payload(payload: &[u8]) -> Reply {
        match serde_json::from_slice(payload) {
            Ok(ack) => Reply::Ack(ack),
            Err(e) => Reply::Unreadable(format!("unreadable PubAck {:?}: {e}", String::from_utf8_lossy(payload))),
        }
    }
}

/// The acks' reply subjects: `{prefix}{sequence}`, one subscription to `{prefix}*`.
struct Inbox {
    prefix: String,
    subscriber: Subscriber,
}

impl Inbox {
    async fn open(client: &async_nats::Client) -> Result<Inbox, SinkError> {
        let prefix = format!("{}.", client.new_inbox());
        let subscriber = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| SinkError::Request(format!("cannot subscribe to the PubAck inbox: {e}")))?;
        Ok(Inbox { prefix, subscriber })
    }

    fn reply_to(&self, sequence: u64) -> Subject {
        let mut itoa = itoa::Buffer::new();
        let token = itoa.format(sequence);
        let mut subject = String::with_capacity(self.prefix.len() + token.len());
        subject.push_str(&self.prefix);
        subject.push_str(token);
        Subject::from(subject)
    }

    /// The next reply and the sequence its subject names.
    async fn next(&mut self) -> Result<(u64, Reply), SinkError> {
        loop {
            let message = self
                .subscriber
                .next()
                .await
                .ok_or_else(|| SinkError::Request("the NATS connection closed the PubAck subscription".into()))?;
            let sequence = message
                .subject
                .strip_prefix(self.prefix.as_str())
                .and_then(|token| token.parse::<u64>().ok());
            match sequence {
                Some(sequence) => return Ok((sequence, Reply::parse(&message))),
                None => tracing::debug!(subject = %message.subject, "ignoring a message on the PubAck inbox"),
            }
        }
    }
}

/// A publish awaiting its PubAck. Acks are taken in stream order: the oldest one's outcome
/// decides what happens next, and a later one that arrives first waits in its slot.
struct InFlight {
    sequence: u64,
    end: Option<Lsn>,
    signed: bool,
    op: Op,
    /// `walguard_events_published_total` for this event's table and op.
    counter: Counter,
    bytes: usize,
    commit_micros: i64,
    sent: Instant,
    reply: Option<Reply>,
}

pub struct Publisher {
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub envelope: Envelope,
    pub naming: Arc<Naming>,
    pub signer: Arc<Signer>,
    pub checkpoint: Arc<Checkpoint>,
    pub tail: Tail,
    pub watermark_interval: Duration,
    /// Publish a watermark at this LSN first (a new slot's consistent point).
    pub genesis: Option<Lsn>,
    /// The server's WAL position when the session started: every stored message was
    /// derived from WAL before it, so once the replay has passed it, a stored tail that was
    /// not re-derived was not written by walguard.
    pub replay_end: Lsn,
    /// The Merkle tree over the messages before `tail.next_sequence`, and the checkpoints.
    pub log: TransparencyLog,
    /// `audit.require_witness`: the slot is confirmed only past what a checkpoint the witness
    /// quorum cosigned covers.
    pub require_witness: bool,
}

struct Chain {
    next_sequence: u64,
    prev_hash: Hash,
    position: Position,
    last_end: Lsn,
    unsigned_run: u32,
    /// The last message published ends a group (or is a marker of its own): a checkpoint
    /// may follow it.
    at_boundary: bool,
    /// Every message so far as a Merkle tree (SPEC section 8).
    log: TransparencyLog,
}

impl Publisher {
    /// Publishes until the WAL reader closes the channel (on shutdown or failure), then
    /// drains the acks in flight. The work per event lives in `Ctx::publish` and
    /// `Ctx::on_ack`; the loop's own state in `Publishing`.
    pub async fn run(self, rx: mpsc::Receiver<Vec<Item>>) -> Result<(), SinkError> {
        let Publisher {
            js,
            stream,
            envelope,
            naming,
            signer,
            checkpoint,
            tail,
            watermark_interval,
            genesis,
            replay_end,
            log,
            require_witness,
        } = self;
        let client = js.client();
        let max_payload = client.server_info().max_payload;
        let inbox = Inbox::open(&client).await?;
        let ctx = Ctx {
            client: &client,
            inbox,
            oldest_since: Instant::now(),
            stream: &stream,
            envelope: &envelope,
            signer: &signer,
            checkpoint: &checkpoint,
            compare_through: tail.last_sequence,
            max_payload,
            // Blocked where no event was built (a value with no JSON form): the first event
            // past the stored tail shows the way is clear.
            blocked_after: telemetry::health().blocked_at().map(|at| {
                at.unwrap_or(Position {
                    idx: tail.position.idx + 1,
                    ..tail.position
                })
            }),
            buf: Vec::with_capacity(4096),
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            counters: HashMap::new(),
        };
        let mut publishing = Publishing {
            ctx,
            chain: Chain {
                next_sequence: tail.next_sequence,
                prev_hash: tail.prev_hash,
                position: tail.position,
                last_end: tail.confirmed.unwrap_or(Lsn::ZERO),
                unsigned_run: 0,
                // A head inside a group is followed by the group's rest (re-derived).
                at_boundary: tail.head_ends_group,
                log,
            },
            rx,
            pending: Vec::new().into_iter(),
            held: None,
            server_position: Lsn::ZERO,
            closing: false,
            naming: &naming,
            watermark_interval,
            last_watermark: Instant::now(),
            replay_end,
            require_witness,
        };
        let outcome = publishing.publish_all(genesis).await;
        if let Err(SinkError::Refused(..) | SinkError::PayloadTooLarge { .. }) = &outcome {
            // walguard stops here (for good, or until the limit is raised): at the refused
            // event, not before it, so what was sent ahead of it is stored first.
            publishing.ctx.settle().await;
        }
        outcome
    }
}

/// The publisher at work: the wire and the acks (`Ctx`), the chain, what the WAL reader has
/// handed over, and when the last watermark went out. One `select!` in `publish_all`
/// arbitrates acks, batches and the tick over this shared state.
struct Publishing<'a> {
    ctx: Ctx<'a>,
    chain: Chain,
    rx: mpsc::Receiver<Vec<Item>>,
    /// Items of the batch last received, taken while acks in flight are below the bound.
    pending: std::vec::IntoIter<Item>,
    /// The newest draft, held back: published unsigned once another is ready behind it, or
    /// signed when none is.
    held: Option<Draft>,
    /// The server has sent everything before this LSN (`Item::Position`).
    server_position: Lsn,
    /// The WAL reader closed the channel: drain the acks in flight, then stop.
    closing: bool,
    naming: &'a Naming,
    watermark_interval: Duration,
    last_watermark: Instant,
    /// The server's WAL position when the session started (`Publisher::replay_end`).
    replay_end: Lsn,
    require_witness: bool,
}

impl Publishing<'_> {
    /// The loop: a watermark at `genesis` first (a new stream), then acks, batches and the
    /// tick, until the channel is closed and every ack is in.
    async fn publish_all(&mut self, genesis: Option<Lsn>) -> Result<(), SinkError> {
        if let Some(lsn) = genesis {
            let wm = self.naming.watermark(lsn, unix_micros());
            self.ctx.publish(&mut self.chain, wm, true).await?;
        }
        // The watermark interval counts from here, as the tick does.
        self.last_watermark = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                reply = self.ctx.inbox.next(), if !self.ctx.in_flight.is_empty() => {
                    let (sequence, reply) = reply?;
                    self.ctx.on_reply(sequence, reply)?;
                }
                batch = self.rx.recv(), if !self.closing && self.pending.as_slice().is_empty() && self.ctx.in_flight.len() < MAX_IN_FLIGHT => {
                    match batch {
                        Some(items) => self.pending = items.into_iter(),
                        None => self.closing = true,
                    }
                }
                _ = tick.tick() => self.on_tick().await?,
            }
            self.take_pending().await?;
            self.sign_held_when_idle().await?;
            if self.closing && self.ctx.in_flight.is_empty() {
                // A clean shutdown ends with a checkpoint of everything published, once
                // its ack is in.
                if !self.checkpoint_if_due().await? {
                    return Ok(());
                }
            }
        }
    }

    /// The tick: the oldest ack's deadline, a stored tail the replay should have re-derived by
    /// now, and a watermark when the publisher is quiet and the server has moved on.
    async fn on_tick(&mut self) -> Result<(), SinkError> {
        self.ctx.check_ack_timeout()?;
        // The held draft takes the next sequence; it counts as re-derived.
        let rederiving = self.chain.next_sequence + u64::from(self.held.is_some()) <= self.ctx.compare_through;
        if rederiving && self.server_position >= self.replay_end && self.server_position > Lsn::ZERO {
            return Err(SinkError::Refused(Refusal::ForeignMessage, format!(
                "stream messages {} to {} were not re-derived from the WAL up to {}: they were not written by this walguard from this slot (another publisher?); run `walguard verify` to see them",
                self.chain.next_sequence, self.ctx.compare_through, self.replay_end
            )));
        }
        let quiet =
            !rederiving && self.ctx.in_flight.is_empty() && self.pending.as_slice().is_empty() && self.rx.is_empty();
        let moved = self.server_position > self.chain.last_end && self.server_position > self.chain.position.lsn;
        if !self.closing && quiet && moved && self.last_watermark.elapsed() >= self.watermark_interval {
            let wm = self.naming.watermark(self.server_position, unix_micros());
            self.ctx.publish(&mut self.chain, wm, true).await?;
            self.last_watermark = Instant::now();
        }
        if quiet && self.held.is_none() {
            self.checkpoint_if_due().await?;
        }
        Ok(())
    }

    /// Publishes a checkpoint of the tree when one is due and the chain stands at a group's
    /// end, so no checkpoint ever stands inside a transaction or among the stored messages
    /// a restart re-derives (`sink::transparency`). Returns whether one was published.
    async fn checkpoint_if_due(&mut self) -> Result<bool, SinkError> {
        let chain = &mut self.chain;
        let rederiving = chain.next_sequence <= self.ctx.compare_through;
        if !chain.at_boundary || rederiving || !chain.log.due(Instant::now(), self.closing) {
            return Ok(false);
        }
        let signed = chain.log.checkpoint().await?;
        debug_assert_eq!(signed.size + 1, chain.next_sequence);
        let draft = self
            .naming
            .checkpoint(chain.position, chain.last_end, unix_micros(), signed.size, signed.data);
        let covered = chain.last_end;
        self.ctx.publish_with(chain, draft, true, Some(signed.headers)).await?;
        if self.require_witness {
            if signed.quorum {
                self.ctx.checkpoint.witnessed(covered);
                telemetry::health().witnessed(None);
            } else {
                telemetry::health().witnessed(Some(format!(
                    "the checkpoint of size {} lacks its witness quorum (audit.require_witness): the slot is not confirmed past the last cosigned one",
                    signed.size
                )));
            }
        }
        Ok(true)
    }

    /// Takes the batch's items while acks in flight are below the bound: each event is held
    /// until the next one is ready, server positions are noted.
    async fn take_pending(&mut self) -> Result<(), SinkError> {
        while self.ctx.in_flight.len() < MAX_IN_FLIGHT {
            match self.pending.next() {
                Some(Item::Event(draft)) => {
                    // Another event is ready behind the held one, so it need not be
                    // signed (unless the unsigned run is full).
                    if let Some(prev) = self.held.replace(draft) {
                        self.ctx.publish(&mut self.chain, prev, false).await?;
                        self.checkpoint_if_due().await?;
                    }
                }
                Some(Item::Position(lsn)) => self.server_position = self.server_position.max(lsn),
                None => break,
            }
        }
        Ok(())
    }

    /// No further event is ready: the held one is signed now, so no unsigned tail remains
    /// while the publisher is idle.
    async fn sign_held_when_idle(&mut self) -> Result<(), SinkError> {
        if self.pending.as_slice().is_empty() && (self.rx.is_empty() || self.closing) {
            if let Some(last) = self.held.take() {
                self.ctx.publish(&mut self.chain, last, true).await?;
                self.checkpoint_if_due().await?;
            }
        }
        Ok(())
    }
}

struct Ctx<'a> {
    client: &'a async_nats::Client,
    inbox: Inbox,
    /// When the oldest publish in flight became the oldest: its ack is due `ACK_TIMEOUT` later.
    oldest_since: Instant,
    stream: &'a stream::Stream,
    envelope: &'a Envelope,
    signer: &'a Signer,
    checkpoint: &'a Checkpoint,
    /// Sequences up to here are already stored and must equal what is derived now.
    compare_through: u64,
    max_payload: usize,
    /// Where an earlier session was blocked (an oversized event): readiness stays down
    /// until an event at or past it is sent.
    blocked_after: Option<Position>,
    buf: Vec<u8>,
    /// Oldest first.
    in_flight: VecDeque<InFlight>,
    /// Per table and op, so that counting an ack neither allocates nor locks the registry.
    counters: HashMap<(Arc<str>, Op), Counter>,
}

impl Ctx<'_> {
    /// `idle`: no further draft is ready behind this one, so it is signed.
    async fn publish(&mut self, chain: &mut Chain, draft: Draft, idle: bool) -> Result<(), SinkError> {
        self.publish_with(chain, draft, idle, None).await
    }

    /// `publish` with headers beyond SPEC's (a checkpoint's frontier).
    async fn publish_with(
        &mut self,
        chain: &mut Chain,
        draft: Draft,
        idle: bool,
        extra: Option<HeaderMap>,
    ) -> Result<(), SinkError> {
        let sequence = chain.next_sequence;
        self.envelope.write(&draft, sequence, &chain.prev_hash, &mut self.buf);
        let hash = sha256(&self.buf);
        if sequence <= self.compare_through {
            self.compare_stored(sequence, &draft).await?;
            chain.unsigned_run += 1;
        } else {
            // walguard's own markers and snapshot events are always signed: after a crash the
            // snapshot's progress is read from the verified head, and snapshot rows cannot be
            // re-derived from the WAL.
            let always = matches!(
                draft.op,
                Op::Watermark | Op::Resync | Op::Snapshot | Op::SnapshotProgress | Op::Checkpoint
            );
            let sign = idle || always || chain.unsigned_run >= MAX_UNSIGNED_RUN;
            self.send_new(sequence, &draft, sign, extra).await?;
            if sign {
                chain.unsigned_run = 0;
            } else {
                chain.unsigned_run += 1;
            }
        }
        chain.log.append(&self.buf);
        chain.next_sequence += 1;
        chain.prev_hash = hash;
        chain.at_boundary = draft.end.is_some();
        chain.position = chain.position.max(draft.position());
        if let Some(end) = draft.end {
            chain.last_end = chain.last_end.max(end);
        }
        Ok(())
    }

    /// A draft that falls on an already stored sequence (after a restart): it must be the
    /// stored message, byte for byte, else the stream holds something walguard did not write.
    async fn compare_stored(&mut self, sequence: u64, draft: &Draft) -> Result<(), SinkError> {
        let stored = message(self.stream, sequence).await?;
        if stored.payload[..] != self.buf[..] {
            return Err(SinkError::Refused(Refusal::ForeignMessage, format!(
                "stream sequence {sequence} is not the event walguard derives from the WAL at {} (table {}, event id {}): it was not written by this walguard from this slot; run `walguard verify` to see the damage",
                draft.pglsn, draft.table, draft.id
            )));
        }
        tracing::debug!(sequence, "stored event re-derived and found equal");
        self.checkpoint.acked(draft.end, false, Instant::now());
        Ok(())
    }

    /// Publishes the serialized draft in `buf` at `sequence` and puts it in flight; an event
    /// over the server's max_payload blocks here (nothing after it is sent).
    async fn send_new(
        &mut self,
        sequence: u64,
        draft: &Draft,
        sign: bool,
        extra: Option<HeaderMap>,
    ) -> Result<(), SinkError> {
        if self.buf.len() + HEADROOM > self.max_payload {
            return Err(SinkError::PayloadTooLarge {
                table: draft.table.clone(),
                at: draft.position(),
                id: draft.id,
                size: self.buf.len(),
                limit: self.max_payload,
            });
        }
        if self.blocked_after.is_some_and(|at| draft.position() >= at) {
            // The event an earlier session was blocked at goes out now.
            self.blocked_after = None;
            telemetry::health().unblocked();
        }
        let mut headers = headers(draft, sequence, sign.then_some(self.signer), &self.buf);
        for (name, values) in extra.iter().flat_map(|h| h.iter()) {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
        self.client
            .publish_with_reply_and_headers(
                draft.nats_subject.clone(),
                self.inbox.reply_to(sequence),
                headers,
                Bytes::copy_from_slice(&self.buf),
            )
            .await
            .map_err(|e| SinkError::Publish {
                sequence,
                reason: e.to_string(),
            })?;
        let counter = self.counter(draft);
        let sent = Instant::now();
        self.in_flight.push_back(InFlight {
            sequence,
            end: draft.end,
            signed: sign,
            op: draft.op,
            counter,
            bytes: self.buf.len(),
            commit_micros: draft.time_micros,
            sent,
            reply: None,
        });
        if self.in_flight.len() == 1 {
            self.oldest_since = sent;
            telemetry::health().oldest_unacked(Some(sent));
        }
        telemetry::metrics().acks_in_flight.set(self.in_flight.len() as i64);
        Ok(())
    }

    /// The counter this event's ack increments: `walguard_events_published_total` for row
    /// events, `walguard_markers_published_total` for walguard's own markers (SPEC section 5:
    /// no table `_walguard` among the row counts).
    fn counter(&mut self, draft: &Draft) -> Counter {
        self.counters
            .entry((draft.table.clone(), draft.op))
            .or_insert_with(|| {
                let m = telemetry::metrics();
                if draft.op.is_marker() {
                    m.markers_published
                        .get_or_create(&telemetry::Kind {
                            kind: draft.op.as_str().to_owned(),
                        })
                        .clone()
                } else {
                    m.events_published
                        .get_or_create(&telemetry::TableOp {
                            table: draft.table.to_string(),
                            op: draft.op.as_str().to_owned(),
                        })
                        .clone()
                }
            })
            .clone()
    }

    /// Awaits the acks in flight, for at most `ACK_TIMEOUT` in all, on the way out after a
    /// refusal. Outcomes are only logged: nothing unacknowledged was confirmed to PostgreSQL.
    async fn settle(&mut self) {
        let settled = tokio::time::timeout(ACK_TIMEOUT, async {
            while self.in_flight.iter().any(|f| f.reply.is_none()) {
                let Ok((sequence, reply)) = self.inbox.next().await else {
                    return;
                };
                let Some(slot) = self.slot(sequence) else {
                    continue;
                };
                if !matches!(&reply, Reply::Ack(PubAck { error: None, .. })) {
                    tracing::warn!(sequence, ?reply, "no PubAck for an event sent before the refusal");
                }
                slot.reply = Some(reply);
            }
        });
        if settled.await.is_err() {
            tracing::warn!("acks for events sent before the refusal did not all arrive");
        }
        self.in_flight.clear();
    }

    /// The publish in flight at `sequence`, if any.
    fn slot(&mut self, sequence: u64) -> Option<&mut InFlight> {
        let first = self.in_flight.front()?.sequence;
        let index = sequence.checked_sub(first)?;
        self.in_flight.get_mut(usize::try_from(index).ok()?)
    }

    /// Fails when the oldest publish has waited `ACK_TIMEOUT` since it became the oldest.
    fn check_ack_timeout(&self) -> Result<(), SinkError> {
        match self.in_flight.front() {
            Some(oldest) if self.oldest_since.elapsed() >= ACK_TIMEOUT => Err(SinkError::Publish {
                sequence: oldest.sequence,
                reason: format!("no PubAck within {ACK_TIMEOUT:?}"),
            }),
            _ => Ok(()),
        }
    }

    /// A reply has arrived; the acks now complete at the front are taken, in stream order.
    fn on_reply(&mut self, sequence: u64, reply: Reply) -> Result<(), SinkError> {
        // Replies for sequences no longer (or never) in flight are a previous session's.
        let Some(slot) = self.slot(sequence) else {
            tracing::debug!(sequence, "ignoring a reply for an event not in flight");
            return Ok(());
        };
        slot.reply = Some(reply);
        while self.in_flight.front().is_some_and(|f| f.reply.is_some()) {
            self.on_ack()?;
        }
        Ok(())
    }

    /// The oldest publish's reply is in.
    fn on_ack(&mut self) -> Result<(), SinkError> {
        let InFlight {
            sequence,
            end,
            signed,
            op,
            counter,
            bytes,
            commit_micros,
            sent,
            reply,
        } = self.in_flight.pop_front().expect("an ack was awaited");
        self.oldest_since = Instant::now();
        telemetry::health().oldest_unacked(self.in_flight.front().map(|f| f.sent));
        let m = telemetry::metrics();
        m.acks_in_flight.set(self.in_flight.len() as i64);
        verdict(sequence, reply.expect("taken once its reply is in"))
            .map_err(|reason| SinkError::Publish { sequence, reason })?;
        self.checkpoint.acked(end, signed, Instant::now());
        m.publish_ack_seconds.observe(sent.elapsed().as_secs_f64());
        m.bytes_published.inc_by(bytes as u64);
        counter.inc();
        let lag = if op == Op::Watermark {
            0.0
        } else {
            ((unix_micros() - commit_micros) as f64 / 1e6).max(0.0)
        };
        m.replication_lag_seconds.set(lag);
        Ok(())
    }
}

/// Whether the reply to the publish of `sequence` says it is stored there; else why not.
fn verdict(sequence: u64, reply: Reply) -> Result<(), String> {
    Err(match reply {
        // A duplicate PubAck for this very sequence counts (SPEC G1).
        Reply::Ack(PubAck { seq, error: None, .. }) if seq == sequence => return Ok(()),
        Reply::Ack(PubAck { error: Some(e), .. }) if e.err_code == WRONG_LAST_SEQUENCE => format!(
            "the stream's last sequence is not {}: another publisher wrote into the stream ({})",
            sequence - 1,
            e.description
        ),
        Reply::Ack(PubAck { error: Some(e), .. }) => {
            format!("JetStream refused it: {} (error code {})", e.description, e.err_code)
        }
        Reply::Ack(PubAck { seq, duplicate, .. }) => {
            format!("the stream stored it as sequence {seq} (duplicate: {duplicate}); re-reading the stream's tail")
        }
        Reply::NoResponders => "no stream captures its subject (no responders): was the stream deleted?".into(),
        Reply::Unreadable(reason) => reason,
    })
}

/// The headers of an event's message (SPEC section 2); signed when `signer` is given.
pub fn headers(draft: &Draft, sequence: u64, signer: Option<&Signer>, payload: &[u8]) -> HeaderMap {
    const CONTENT_TYPE_HEADER: HeaderName = HeaderName::from_static("Content-Type");
    const KEY_ID_HEADER: HeaderName = HeaderName::from_static(HEADER_KEY_ID);
    const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(HEADER_SIGNATURE);
    let mut headers = HeaderMap::new();
    headers.insert(
        NATS_MESSAGE_ID,
        &*draft.id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    headers.insert(NATS_EXPECTED_LAST_SEQUENCE, HeaderValue::from(sequence - 1));
    headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE);
    if let Some(signer) = signer {
        headers.insert(KEY_ID_HEADER, signer.key_id());
        headers.insert(SIGNATURE_HEADER, signer.sign(payload));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PubAcks as nats-server 2.14 sends them.
    const STORED: &[u8] = br#"{"stream":"WG","seq":5}"#;
    const DUPLICATE: &[u8] = br#"{"stream":"WG","seq":5,"duplicate":true}"#;
    const ELSEWHERE: &[u8] = br#"{"stream":"WG","seq":9,"duplicate":true}"#;
    const WRONG_LAST: &[u8] =
        br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"},"stream":"WG","seq":0}"#;
    const FULL: &[u8] =
        br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"WG","seq":0}"#;

    fn verdict_of(sequence: u64, payload: &[u8]) -> Result<(), String> {
        verdict(sequence, Reply::from_payload(payload))
    }

    #[test]
    fn a_puback_for_the_sequence_counts_even_as_a_duplicate() {
        assert_eq!(verdict_of(5, STORED), Ok(()));
        assert_eq!(verdict_of(5, DUPLICATE), Ok(()));
    }

    #[test]
    fn any_other_reply_is_a_failure_that_names_the_cause() {
        let elsewhere = verdict_of(5, ELSEWHERE).unwrap_err();
        assert!(
            elsewhere.contains("stored it as sequence 9 (duplicate: true)"),
            "{elsewhere}"
        );
        let stored_later = verdict_of(4, STORED).unwrap_err();
        assert!(stored_later.contains("sequence 5"), "{stored_later}");
        let wrong = verdict_of(5, WRONG_LAST).unwrap_err();
        assert!(
            wrong.contains("last sequence is not 4: another publisher wrote into the stream (wrong last sequence: 7)"),
            "{wrong}"
        );
        let full = verdict_of(5, FULL).unwrap_err();
        assert_eq!(
            full,
            "JetStream refused it: maximum messages exceeded (error code 10077)"
        );
        let garbage = verdict_of(5, b"nope").unwrap_err();
        assert!(garbage.starts_with("unreadable PubAck \"nope\""), "{garbage}");
        assert!(verdict(5, Reply::NoResponders).unwrap_err().contains("no responders"));
    }
}
