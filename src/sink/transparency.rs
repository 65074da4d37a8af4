//! The publisher's side of the transparency log (SPEC section 8, G9): the Merkle tree over
//! every stream message kept as a [`Frontier`] (one leaf hash per message, O(log n) state),
//! restored from the stream at start-up like the chain head (G7), and the checkpoints: signed
//! notes of the tree's head, cosigned by the configured witnesses and published as
//! `walguard.checkpoint` events.
//!
//! A checkpoint of size `N` is always published at sequence `N + 1`, right after the message
//! that makes the tree `N` leaves: the publisher asks for one only at a group's end (see
//! `sink::publisher`), signs it, gets it cosigned, and publishes it before anything else, so
//! the root any reader recomputes at a checkpoint is the root of every message before it.
//! The witnesses' round trip therefore pauses publishing; it is bounded by
//! [`WITNESS_TIMEOUT`] per request, requests go to all witnesses at once, and a witness that
//! failed is left out of the next checkpoints for a growing while (up to
//! [`MAX_WITNESS_BACKOFF`] intervals), so a witness that is down costs a missed quorum (a
//! metric, a log line, an alert), not a stall.
//!
//! The checkpoint message carries the frontier at its size in the `Walguard-Tree` header
//! (standard base64 of [`Frontier::to_bytes`]). It is trusted nowhere: a restart restores the
//! tree from it only if it gives the root that the log key signed, and otherwise reads the
//! whole stream.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use base64::Engine;

use super::stream::{last_on_subject, message};
use super::SinkError;
use crate::config::AuditConfig;
use crate::error::Refusal;
use crate::event::stored::{Data, StoredEvent};
use crate::event::Signer;
use crate::telemetry;
pub use crate::tlog::checkpoint::log_vkeys;
use crate::tlog::proof::{consistency_ranges, prove_consistency_from, RangeHasher};
use crate::tlog::{
    leaf_hash, Checkpoint, CheckpointData, CheckpointSigner, CompactRange, Frontier, Hash, SignedCheckpoint, Vkey,
};
use crate::witness::WitnessClient;

/// The header that carries the frontier at a checkpoint's size.
pub const HEADER_TREE: &str = "Walguard-Tree";
/// How long one `add-checkpoint` request may take, connecting included.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(3);
/// A failed witness is left out of at most this many checkpoint intervals before it is asked
/// again (doubling from one).
pub const MAX_WITNESS_BACKOFF: u32 = 6;

/// The stream's messages `from..=to`, in order, each given to `f` with its sequence; a gap is
/// an error (a tree needs every message).
pub async fn read_payloads(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, &[u8]),
) -> Result<(), SinkError> {
    if from > to {
        return Ok(());
    }
    let mut next = from;
    crate::audit::read_stream(js, stream, from, Some(to), |m| {
        if m.sequence != next {
            return false;
        }
        f(m.sequence, &m.payload);
        next += 1;
        next <= to
    })
    .await
    .map_err(SinkError::Request)?;
    if next <= to {
        return Err(SinkError::Refused(
            Refusal::UnsafeStream,
            format!("stream {stream}: message {next} is missing, so the Merkle tree over every message cannot be computed (messages were removed); run `walguard verify`"),
        ));
    }
    Ok(())
}

/// The roots of `ranges` of leaves, computed by reading those messages of the stream (leaf
/// `i` is sequence `i + 1`): how a proof is made for a size the publisher holds no state for.
pub async fn range_roots(js: &jetstream::Context, stream: &str, ranges: Vec<Range<u64>>) -> Result<Vec<Hash>, String> {
    let Some(start) = ranges.iter().map(|r| r.start).min() else {
        return Ok(Vec::new());
    };
    let mut hasher = RangeHasher::new(ranges);
    let end = hasher.end();
    let mut failed = None;
    read_payloads(js, stream, start + 1, end, |seq, payload| {
        let index = seq - 1;
        if failed.is_none() && hasher.wants(index) {
            failed = hasher.push(index, leaf_hash(payload)).err();
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e.to_string());
    }
    hasher.finish().map_err(|e| e.to_string())
}

/// The tree as the stream holds it when a session starts.
#[derive(Debug)]
pub struct Restored {
    /// Over the messages up to the verified head.
    pub frontier: Frontier,
    /// The size of the newest usable checkpoint (0: none).
    pub checkpointed: u64,
    /// With witnesses: the frontier at that size and the leaves since (for their
    /// consistency proofs).
    pub last: Option<(Frontier, CompactRange)>,
    /// The witnesses' keys that cosigned that checkpoint.
    pub cosigned_by: Vec<u32>,
}

/// Restores the tree over the stream's first `size` messages: from the newest checkpoint at
/// or before them when its frontier header gives its signed root, then the messages after it;
/// from the whole stream otherwise.
pub async fn restore(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: &str,
    size: u64,
    logs: &[Vkey],
    witnesses: &[Vkey],
) -> Result<Restored, SinkError> {
    let name = stream.cached_info().config.name.clone();
    let mut restored = Restored {
        frontier: Frontier::new(),
        checkpointed: 0,
        last: None,
        cosigned_by: Vec::new(),
    };
    if size == 0 {
        return Ok(restored);
    }
    if let Some((seq, _)) = last_on_subject(stream, subject).await? {
        if seq <= size {
            match from_checkpoint(stream, seq, logs, witnesses).await? {
                Ok((frontier, cosigned_by)) => {
                    restored.checkpointed = frontier.size();
                    if !witnesses.is_empty() {
                        restored.last = Some((frontier.clone(), CompactRange::new(frontier.size())));
                    }
                    restored.frontier = frontier;
                    restored.cosigned_by = cosigned_by;
                }
                Err(reason) => tracing::warn!(
                    sequence = seq,
                    %reason,
                    "the newest checkpoint does not restore the Merkle tree; computing it from the whole stream"
                ),
            }
        }
    }
    let from = restored.frontier.size() + 1;
    if size - restored.frontier.size() > 100_000 {
        tracing::info!(from, to = size, "computing the Merkle tree over the stream's messages");
    }
    let Restored { frontier, last, .. } = &mut restored;
    read_payloads(js, &name, from, size, |_, payload| {
        let leaf = frontier.append_payload(payload);
        if let Some((_, since)) = last.as_mut() {
            since.append(leaf);
        }
    })
    .await?;
    Ok(restored)
}

/// The frontier a checkpoint message carries, checked against its signed root, and which of
/// `witnesses` cosigned it; `Err` says why it cannot be used (the caller then reads the
/// stream), an outer error is a failed read.
async fn from_checkpoint(
    stream: &stream::Stream,
    seq: u64,
    logs: &[Vkey],
    witnesses: &[Vkey],
) -> Result<Result<(Frontier, Vec<u32>), String>, SinkError> {
    let msg = message(stream, seq).await?;
    Ok((|| {
        let event = StoredEvent::parse(&msg.payload).map_err(|e| e.to_string())?;
        let Data::Checkpoint(data) = event.data else {
            return Err("not a checkpoint event".to_owned());
        };
        if data.size != seq - 1 {
            return Err(format!(
                "it covers {} messages, not the {} before it",
                data.size,
                seq - 1
            ));
        }
        let signed = data.signed().map_err(|e| e.to_string())?;
        signed.verify_log(logs).map_err(|e| e.to_string())?;
        let header = msg
            .headers
            .get(HEADER_TREE)
            .ok_or_else(|| format!("no {HEADER_TREE} header"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(header.as_str())
            .map_err(|e| format!("{HEADER_TREE}: {e}"))?;
        let frontier = Frontier::restore(&bytes, data.size, &data.root).map_err(|e| e.to_string())?;
        let cosigned_by = signed
            .cosignatures(witnesses)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|c| c.id)
            .collect();
        Ok((frontier, cosigned_by))
    })())
}

/// One configured witness and what walguard knows of it.
#[derive(Debug)]
struct Witness {
    client: WitnessClient,
    /// The size it last cosigned, as far as walguard knows (0: unknown).
    size: u64,
    failures: u32,
    /// Left out of checkpoints until then, after a failure.
    retry_at: Option<Instant>,
}

/// A checkpoint ready to publish: its `data`, its headers and whether the quorum cosigned it.
#[derive(Debug)]
pub struct Signed {
    pub size: u64,
    pub data: Vec<u8>,
    pub headers: HeaderMap,
    pub quorum: bool,
}

/// The publisher's tree and checkpoint schedule.
pub struct TransparencyLog {
    origin: String,
    signer: Arc<Signer>,
    interval: Duration,
    quorum: usize,
    witnesses: Vec<Witness>,
    frontier: Frontier,
    /// The frontier at the newest checkpoint's size and the leaves since: the consistency
    /// proof for a witness at that size, from memory. Kept only with witnesses.
    last: Option<(Frontier, CompactRange)>,
    /// The newest checkpoint's size (0: none yet).
    last_size: u64,
    last_at: Instant,
    js: jetstream::Context,
    stream: String,
}

impl std::fmt::Debug for TransparencyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransparencyLog")
            .field("origin", &self.origin)
            .field("size", &self.frontier.size())
            .field("last_size", &self.last_size)
            .finish_non_exhaustive()
    }
}

impl TransparencyLog {
    /// The log as `restored` from the stream, with the configured witnesses (`keys`, from
    /// `AuditConfig::witness_keys`, in `cfg.witnesses`' order).
    pub fn new(
        cfg: &AuditConfig,
        keys: Vec<Vkey>,
        origin: String,
        signer: Arc<Signer>,
        restored: Restored,
        js: jetstream::Context,
        stream: String,
    ) -> Result<TransparencyLog, String> {
        let Restored {
            frontier,
            checkpointed: last_size,
            last,
            cosigned_by,
        } = restored;
        let mut witnesses = Vec::with_capacity(keys.len());
        for (w, key) in cfg.witnesses.iter().zip(keys) {
            let known = cosigned_by.contains(&key.id());
            let client = WitnessClient::new(&w.url, key, WITNESS_TIMEOUT).map_err(|e| e.to_string())?;
            witnesses.push(Witness {
                client,
                size: if known { last_size } else { 0 },
                failures: 0,
                retry_at: None,
            });
        }
        Ok(TransparencyLog {
            origin,
            signer,
            interval: cfg.checkpoint_interval,
            quorum: cfg.quorum(),
            last,
            witnesses,
            frontier,
            last_size,
            // A session's first checkpoint comes one interval after it starts.
            last_at: Instant::now(),
            js,
            stream,
        })
    }

    /// The tree's size: the messages published (or found stored) so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// One more message: its leaf joins the tree.
    #[inline]
    pub fn append(&mut self, payload: &[u8]) {
        let leaf = self.frontier.append_payload(payload);
        if let Some((_, since)) = self.last.as_mut() {
            since.append(leaf);
        }
    }

    /// Whether a checkpoint is due: messages other than the newest checkpoint itself since
    /// it, and the interval passed (or the publisher is closing).
    pub fn due(&self, now: Instant, closing: bool) -> bool {
        let new_messages = self.frontier.size() > self.last_size + u64::from(self.last_size > 0);
        new_messages && (closing || now.duration_since(self.last_at) >= self.interval)
    }

    /// Signs the checkpoint of the tree as it is, gets it cosigned by the witnesses that are
    /// not backing off, and returns what to publish. A missed quorum is counted and logged;
    /// the checkpoint is published all the same.
    pub async fn checkpoint(&mut self) -> Result<Signed, SinkError> {
        let size = self.frontier.size();
        let root = self.frontier.root();
        let internal = |e: &dyn std::fmt::Display| {
            SinkError::Refused(
                Refusal::Internal,
                format!("cannot sign the checkpoint of size {size}: {e}"),
            )
        };
        let body = Checkpoint::new(&self.origin, size, root).map_err(|e| internal(&e))?;
        let signer = CheckpointSigner::new(&self.origin, &self.signer).map_err(|e| internal(&e))?;
        let mut signed = SignedCheckpoint::sign(body, &signer).map_err(|e| internal(&e))?;
        let cosigned = self.cosign(&signed).await;
        for line in &cosigned {
            signed.add_signature_lines(line).map_err(|e| internal(&e))?;
        }
        let quorum = cosigned.len() >= self.quorum;
        let m = telemetry::metrics();
        m.checkpoint_size.set(size as i64);
        if quorum {
            m.witnessed_size.set(size as i64);
        } else {
            m.witness_quorum_missed.inc();
            tracing::warn!(
                size,
                cosigned = cosigned.len(),
                quorum = self.quorum,
                "checkpoint published without its witness quorum"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_TREE,
            base64::engine::general_purpose::STANDARD
                .encode(self.frontier.to_bytes())
                .as_str(),
        );
        let data = CheckpointData::new(&signed).to_bytes();
        self.last_size = size;
        self.last_at = Instant::now();
        if !self.witnesses.is_empty() {
            self.last = Some((self.frontier.clone(), CompactRange::new(size)));
        }
        Ok(Signed {
            size,
            data,
            headers,
            quorum,
        })
    }

    /// Asks every witness that is not backing off, at once; returns the cosignature lines.
    async fn cosign(&mut self, signed: &SignedCheckpoint) -> Vec<String> {
        let now = Instant::now();
        let size = signed.checkpoint().size();
        let last = self.last.as_ref();
        let (js, stream) = (&self.js, self.stream.as_str());
        let asks = self
            .witnesses
            .iter()
            .enumerate()
            .filter(|(_, w)| w.retry_at.is_none_or(|at| now >= at))
            .map(|(i, w)| async move {
                let answer = w
                    .client
                    .cosign(signed, w.size, |old| consistency(last, js, stream, old, size))
                    .await;
                (i, answer)
            });
        let answers = futures::future::join_all(asks).await;
        let mut lines = Vec::new();
        for (i, answer) in answers {
            let w = &mut self.witnesses[i];
            match answer {
                Ok(cosignatures) => {
                    w.size = size;
                    w.failures = 0;
                    w.retry_at = None;
                    lines.extend(cosignatures.into_iter().map(|c| c.line));
                }
                Err(e) => {
                    w.failures += 1;
                    let intervals = (1u32 << (w.failures - 1).min(3)).min(MAX_WITNESS_BACKOFF);
                    w.retry_at = Some(now + self.interval * intervals);
                    telemetry::metrics().error("witness");
                    tracing::warn!(witness = w.client.url(), error = %e, size, "witness did not cosign");
                }
            }
        }
        lines
    }
}

/// The consistency proof from `old` to `new`: from memory when `old` is the newest
/// checkpoint's size, else from the stream.
async fn consistency(
    last: Option<&(Frontier, CompactRange)>,
    js: &jetstream::Context,
    stream: &str,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, String> {
    if let Some((at, since)) = last {
        if at.size() == old && since.end() == new {
            return prove_consistency_from(at, since).map_err(|e| e.to_string());
        }
    }
    let ranges = consistency_ranges(old, new).map_err(|e| e.to_string())?;
    range_roots(js, stream, ranges).await
}
