//! The publisher: gives each draft its place in the chain (sequence, prevhash), signs per
//! SPEC's group rule, publishes with `Nats-Msg-Id` and `Nats-Expected-Last-Sequence`, keeps a
//! bounded number of acks in flight, and reports acks in stream order to the checkpoint.
//! When nothing is pending and the server has moved on, it publishes a watermark.
//!
//! After a restart, drafts whose sequence is at or below the stream's last sequence are not
//! published: they are serialized and compared with the stored message, byte for byte. A
//! mismatch means the stream holds something walguard did not write from this WAL (another
//! publisher, a changed slot); walguard stops and names the sequence.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::header::{HeaderName, NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::stream::{message, Tail};
use super::SinkError;
use crate::checkpoint::Checkpoint;
use crate::event::builder::{Naming, Op};
use crate::event::envelope::{sha256, Hash, CONTENT_TYPE, HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::{Draft, Envelope, Position, Signer};
use crate::lsn::Lsn;
use crate::telemetry;

/// Acks awaited at once; beyond it the publisher stops taking drafts, the channel fills,
/// and the WAL reader stops reading (backpressure, G5).
pub const MAX_IN_FLIGHT: usize = 1024;
/// At most this many unsigned events precede a signed one (SPEC section 2).
pub const MAX_UNSIGNED_RUN: u32 = 255;
/// How long a PubAck may take once its predecessors are acknowledged (set on the JetStream
/// context, which bounds every awaited ack).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the WAL reader hands the publisher, in WAL order.
#[derive(Debug)]
pub enum Item {
    Event(Draft),
    /// The server has sent everything before this LSN and no transaction is open.
    Position(Lsn),
}

type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
type AckFuture = Pin<Box<dyn Future<Output = AckResult> + Send>>;

/// A publish awaiting its PubAck. Acks are awaited oldest first: the JetStream server stores
/// and acknowledges one publisher's messages in order, and only the oldest one's outcome
/// decides what happens next.
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
    ack: AckFuture,
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
}

struct Chain {
    next_sequence: u64,
    prev_hash: Hash,
    position: Position,
    last_end: Lsn,
    unsigned_run: u32,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Publisher {
    /// Publishes until the WAL reader closes the channel (on shutdown or failure), then
    /// drains the acks in flight.
    pub async fn run(self, mut rx: mpsc::Receiver<Item>) -> Result<(), SinkError> {
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
        } = self;
        let max_payload = js_max_payload(&js);
        let mut chain = Chain {
            next_sequence: tail.next_sequence,
            prev_hash: tail.prev_hash,
            position: tail.position,
            last_end: tail.confirmed.unwrap_or(Lsn::ZERO),
            unsigned_run: 0,
        };
        let mut ctx = Ctx {
            js: &js,
            stream: &stream,
            envelope: &envelope,
            signer: &signer,
            checkpoint: &checkpoint,
            compare_through: tail.last_sequence,
            max_payload,
            buf: Vec::with_capacity(4096),
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            counters: HashMap::new(),
        };
        let outcome: Result<(), SinkError> = async {
            if let Some(lsn) = genesis {
                let wm = naming.watermark(lsn, now_micros());
                ctx.publish(&mut chain, wm, true).await?;
            }
            let mut server_position = Lsn::ZERO;
            let mut last_watermark = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut closing = false;
            let mut held: Option<Draft> = None;
            loop {
                tokio::select! {
                    biased;
                    result = oldest_ack(&mut ctx.in_flight), if !ctx.in_flight.is_empty() => {
                        ctx.on_ack(result)?;
                    }
                    item = rx.recv(), if !closing && ctx.in_flight.len() < MAX_IN_FLIGHT => {
                        match item {
                            Some(Item::Event(draft)) => {
                                // Another event is ready behind the held one, so it need not be
                                // signed (unless the unsigned run is full).
                                if let Some(prev) = held.replace(draft) {
                                    ctx.publish(&mut chain, prev, false).await?;
                                }
                            }
                            Some(Item::Position(lsn)) => server_position = server_position.max(lsn),
                            None => closing = true,
                        }
                        // No further event is ready: the held one is signed now, so no unsigned
                        // tail remains while the publisher is idle.
                        if rx.is_empty() || closing {
                            if let Some(last) = held.take() {
                                ctx.publish(&mut chain, last, true).await?;
                            }
                        }
                    }
                    _ = tick.tick() => {
                        // The held draft takes the next sequence; it counts as re-derived.
                        let rederiving = chain.next_sequence + u64::from(held.is_some()) <= ctx.compare_through;
                        if rederiving && server_position >= replay_end && server_position > Lsn::ZERO {
                            return Err(SinkError::Refused(format!(
                                "stream messages {} to {} were not re-derived from the WAL up to {replay_end}: they were not written by this walguard from this slot (another publisher?); run `walguard verify` to see them",
                                chain.next_sequence, ctx.compare_through
                            )));
                        }
                        let quiet = !rederiving && ctx.in_flight.is_empty() && rx.is_empty();
                        let moved = server_position > chain.last_end && server_position > chain.position.lsn;
                        if !closing && quiet && moved && last_watermark.elapsed() >= watermark_interval {
                            let wm = naming.watermark(server_position, now_micros());
                            ctx.publish(&mut chain, wm, true).await?;
                            last_watermark = Instant::now();
                        }
                    }
                }
                if closing && ctx.in_flight.is_empty() {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(SinkError::Refused(_)) = &outcome {
            // walguard stops here for good: at the refused event, not before it, so what was
            // sent ahead of it is stored before the process exits.
            ctx.settle().await;
        }
        outcome
    }
}

fn js_max_payload(js: &jetstream::Context) -> usize {
    js.client().server_info().max_payload
}

/// The oldest publish's ack (the queue is not empty).
async fn oldest_ack(in_flight: &mut VecDeque<InFlight>) -> AckResult {
    std::future::poll_fn(|cx| {
        let oldest = in_flight.front_mut().expect("awaited only when acks are in flight");
        oldest.ack.as_mut().poll(cx)
    })
    .await
}

struct Ctx<'a> {
    js: &'a jetstream::Context,
    stream: &'a stream::Stream,
    envelope: &'a Envelope,
    signer: &'a Signer,
    checkpoint: &'a Checkpoint,
    /// Sequences up to here are already stored and must equal what is derived now.
    compare_through: u64,
    max_payload: usize,
    buf: Vec<u8>,
    /// Oldest first.
    in_flight: VecDeque<InFlight>,
    /// Per table and op, so that counting an ack neither allocates nor locks the registry.
    counters: HashMap<(Arc<str>, Op), Counter>,
}

impl Ctx<'_> {
    /// `idle`: no further draft is ready behind this one, so it is signed.
    async fn publish(&mut self, chain: &mut Chain, draft: Draft, idle: bool) -> Result<(), SinkError> {
        let sequence = chain.next_sequence;
        self.envelope.write(&draft, sequence, &chain.prev_hash, &mut self.buf);
        let hash = sha256(&self.buf);
        if sequence <= self.compare_through {
            let stored = message(self.stream, sequence).await?;
            if stored.payload[..] != self.buf[..] {
                return Err(SinkError::Refused(format!(
                    "stream sequence {sequence} is not the event walguard derives from the WAL at {} (table {}, event id {}): it was not written by this walguard from this slot; run `walguard verify` to see the damage",
                    draft.pglsn, draft.table, draft.id
                )));
            }
            tracing::debug!(sequence, "stored event re-derived and found equal");
            chain.unsigned_run += 1;
            self.checkpoint.acked(draft.end, false, Instant::now());
        } else {
            // walguard's own markers and snapshot events are always signed: after a crash the
            // snapshot's progress is read from the verified head, and snapshot rows cannot be
            // re-derived from the WAL.
            let always = matches!(
                draft.op,
                Op::Watermark | Op::Resync | Op::Snapshot | Op::SnapshotProgress
            );
            let sign = idle || always || chain.unsigned_run >= MAX_UNSIGNED_RUN;
            let headers = headers(&draft, sequence, sign.then_some(self.signer), &self.buf);
            if sign {
                chain.unsigned_run = 0;
            } else {
                chain.unsigned_run += 1;
            }
            let size = self.buf.len() + 512;
            if size > self.max_payload {
                return Err(SinkError::Refused(format!(
                    "event for table {} at {} (event id {}) is {} bytes, over the NATS server's max_payload of {} bytes: raise max_payload in the nats-server configuration; walguard stops here and skips nothing",
                    draft.table, draft.pglsn, draft.id, self.buf.len(), self.max_payload
                )));
            }
            let publish = PublishMessage::build()
                .payload(Bytes::copy_from_slice(&self.buf))
                .headers(headers);
            let ack = self
                .js
                .send_publish(draft.nats_subject.clone(), publish)
                .await
                .map_err(|e| SinkError::Publish {
                    sequence,
                    reason: e.to_string(),
                })?;
            let counter = self
                .counters
                .entry((draft.table.clone(), draft.op))
                .or_insert_with(|| {
                    telemetry::metrics()
                        .events_published
                        .get_or_create(&telemetry::TableOp {
                            table: draft.table.to_string(),
                            op: draft.op.as_str().to_owned(),
                        })
                        .clone()
                })
                .clone();
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
                ack: ack.into_future(),
            });
            if self.in_flight.len() == 1 {
                telemetry::health().oldest_unacked(Some(sent));
            }
            telemetry::metrics().acks_in_flight.set(self.in_flight.len() as i64);
        }
        chain.next_sequence += 1;
        chain.prev_hash = hash;
        chain.position = chain.position.max(draft.position());
        if let Some(end) = draft.end {
            chain.last_end = chain.last_end.max(end);
        }
        Ok(())
    }

    /// Awaits the acks in flight, for at most `ACK_TIMEOUT` in all, on the way out after a
    /// refusal. Outcomes are only logged: nothing unacknowledged was confirmed to PostgreSQL.
    async fn settle(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        let settled = tokio::time::timeout(ACK_TIMEOUT, async {
            for pending in in_flight {
                if let Err(e) = pending.ack.await {
                    tracing::warn!(sequence = pending.sequence, error = %e, "no PubAck for an event sent before the refusal");
                }
            }
        });
        if settled.await.is_err() {
            tracing::warn!("acks for events sent before the refusal did not all arrive");
        }
    }

    /// The oldest publish's ack has arrived.
    fn on_ack(&mut self, result: AckResult) -> Result<(), SinkError> {
        let InFlight {
            sequence,
            end,
            signed,
            op,
            counter,
            bytes,
            commit_micros,
            sent,
            ack: _,
        } = self.in_flight.pop_front().expect("an ack was awaited");
        telemetry::health().oldest_unacked(self.in_flight.front().map(|f| f.sent));
        let m = telemetry::metrics();
        m.acks_in_flight.set(self.in_flight.len() as i64);
        match result {
            Ok(ack) if ack.sequence == sequence => {
                self.checkpoint.acked(end, signed, Instant::now());
                m.publish_ack_seconds.observe(sent.elapsed().as_secs_f64());
                m.bytes_published.inc_by(bytes as u64);
                counter.inc();
                let lag = if op == Op::Watermark {
                    0.0
                } else {
                    ((now_micros() - commit_micros) as f64 / 1e6).max(0.0)
                };
                m.replication_lag_seconds.set(lag);
                Ok(())
            }
            Ok(ack) => Err(SinkError::Publish {
                sequence,
                reason: format!(
                    "the stream stored it as sequence {} (duplicate: {}); re-reading the stream's tail",
                    ack.sequence, ack.duplicate
                ),
            }),
            Err(e) => Err(SinkError::Publish {
                sequence,
                reason: match e.kind() {
                    PublishErrorKind::WrongLastSequence => format!(
                        "the stream's last sequence is not {}: another publisher wrote into the stream ({e})",
                        sequence - 1
                    ),
                    _ => e.to_string(),
                },
            }),
        }
    }
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
