//! `walguard prove` and `verify --proof --event` (SPEC section 8): one event shown to be in
//! the log without handing over the log. `prove` writes a C2SP `tlog-proof` of the event
//! against the newest checkpoint of the stream or archive, and the event as its export line;
//! `check` verifies both offline with nothing but the keys: the event's signature when it
//! has one, that its payload is the leaf at its sequence, the inclusion proof up to the
//! checkpoint's root, the checkpoint's signature by the log key, and a cosignature by every
//! witness key given.
//!
//! A proof needs the roots of about log2(n) ranges of leaves that cover the whole tree but
//! the event, so `prove` reads every message up to the checkpoint once, holding one
//! frontier ([`RangeHasher`]), never the leaves.

use std::path::Path;

use async_nats::jetstream;

use crate::audit::Stored;
use crate::event::stored::{Data, StoredEvent};
use crate::event::Keyring;
use crate::sink::stream::{last_on_subject, message};
use crate::sink::transparency::range_roots;
use crate::tlog::proof::{inclusion_ranges, RangeHasher};
use crate::tlog::{leaf_hash, log_vkeys, CheckpointData, TlogProof, Vkey};

/// What `prove` made: the proof and the event's export line.
pub struct Proven {
    pub proof: TlogProof,
    pub event_line: String,
    pub size: u64,
}

/// The checkpoint `data` of a stored message, if it is a checkpoint event.
fn checkpoint_of(payload: &[u8]) -> Option<CheckpointData> {
    match StoredEvent::parse(payload) {
        Ok(StoredEvent {
            data: Data::Checkpoint(c),
            ..
        }) => Some(c),
        _ => None,
    }
}

fn proof_for(
    sequence: u64,
    checkpoint: &CheckpointData,
    proof: Vec<crate::tlog::Hash>,
    event: &Stored,
) -> Result<Proven, String> {
    let signed = checkpoint.signed().map_err(|e| e.to_string())?;
    Ok(Proven {
        proof: TlogProof {
            extra: None,
            index: sequence - 1,
            proof,
            checkpoint: signed,
        },
        event_line: crate::audit::dsse_line(event),
        size: checkpoint.size,
    })
}

fn after_newest(sequence: u64, size: u64) -> String {
    format!("sequence {sequence} is not covered by the newest checkpoint (size {size}): wait for the next one (audit.checkpoint_interval) and run prove again")
}

/// The proof of stream sequence `sequence` against the stream's newest checkpoint.
pub async fn prove_stream(
    js: &jetstream::Context,
    stream: &str,
    prefix: &str,
    sequence: u64,
) -> Result<Proven, String> {
    let st = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let subject = crate::event::naming::marker_subject(prefix, crate::event::naming::CHECKPOINT);
    let (at, payload) = last_on_subject(&st, &subject)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "stream {stream} holds no checkpoint yet (walguard run publishes one every audit.checkpoint_interval)"
            )
        })?;
    let checkpoint =
        checkpoint_of(&payload).ok_or_else(|| format!("stream {stream} sequence {at} is not a checkpoint event"))?;
    if sequence == 0 || sequence > checkpoint.size {
        return Err(after_newest(sequence, checkpoint.size));
    }
    let proof = range_roots(
        js,
        stream,
        inclusion_ranges(sequence - 1, checkpoint.size).map_err(|e| e.to_string())?,
    )
    .await?;
    let msg = message(&st, sequence).await.map_err(|e| e.to_string())?;
    let event = Stored::from_raw(sequence, &msg);
    proof_for(sequence, &checkpoint, proof, &event)
}

/// The proof of sequence `sequence` against the newest checkpoint of the archive in `dir`,
/// in two verified passes: one finds the checkpoint, one hashes the proof's ranges.
pub fn prove_archive(dir: &Path, stream: &str, keyring: &Keyring, sequence: u64) -> Result<Proven, String> {
    let mut reader = crate::archive::ArchiveReader::open(dir, stream, keyring).map_err(|e| e.to_string())?;
    let mut newest = None;
    while let Some(m) = reader.next_message().map_err(|e| e.to_string())? {
        // Most messages are not checkpoints: a byte search before the parse.
        const MARK: &[u8] = br#"{"op":"checkpoint","#;
        if m.payload.windows(MARK.len()).any(|w| w == MARK) {
            if let Some(c) = checkpoint_of(&m.payload) {
                newest = Some(c);
            }
        }
    }
    let checkpoint = newest.ok_or_else(|| format!("archive {} holds no checkpoint", dir.display()))?;
    if sequence == 0 || sequence > checkpoint.size {
        return Err(after_newest(sequence, checkpoint.size));
    }
    let mut hasher = RangeHasher::new(inclusion_ranges(sequence - 1, checkpoint.size).map_err(|e| e.to_string())?);
    let mut event = None;
    let mut reader = crate::archive::ArchiveReader::open(dir, stream, keyring).map_err(|e| e.to_string())?;
    while let Some(m) = reader.next_message().map_err(|e| e.to_string())? {
        let index = m.sequence - 1;
        if index >= checkpoint.size {
            break;
        }
        if m.sequence == sequence {
            event = Some(m);
        } else if hasher.wants(index) {
            hasher.push(index, leaf_hash(&m.payload)).map_err(|e| e.to_string())?;
        }
    }
    let event = event.ok_or_else(|| format!("archive {} does not hold sequence {sequence}", dir.display()))?;
    let proof = hasher.finish().map_err(|e| e.to_string())?;
    proof_for(sequence, &checkpoint, proof, &event)
}

/// What `verify --proof --event` found.
#[derive(Debug)]
pub struct Checked {
    pub sequence: u64,
    pub size: u64,
    pub origin: String,
    pub cosigned_by: Vec<String>,
}

/// Checks an event's export line against its proof, offline: see the module's text.
pub fn check(proof: &[u8], event_line: &str, keyring: &Keyring, witnesses: &[Vkey]) -> Result<Checked, String> {
    let proof = TlogProof::parse(proof).map_err(|e| format!("the proof: {e}"))?;
    let event = crate::audit::parse_dsse_line(event_line.trim()).map_err(|e| format!("the event: {e}"))?;
    if let Some((kid, sig)) = &event.signature {
        keyring
            .verify(kid, sig, &event.payload)
            .map_err(|e| format!("the event's signature: {e}"))?;
    }
    if event.sequence != proof.index + 1 {
        return Err(format!(
            "the event is sequence {}, the proof is for sequence {}",
            event.sequence,
            proof.index + 1
        ));
    }
    proof
        .verify_entry(&event.payload)
        .map_err(|e| format!("sequence {}: {e}", event.sequence))?;
    let checkpoint = proof.checkpoint.checkpoint();
    let origin = checkpoint.origin().to_owned();
    proof
        .checkpoint
        .verify_log(&log_vkeys(keyring, &origin))
        .map_err(|e| format!("the checkpoint: {e}"))?;
    let cosignatures = proof
        .checkpoint
        .cosignatures(witnesses)
        .map_err(|e| format!("the checkpoint: {e}"))?;
    let missing: Vec<String> = witnesses
        .iter()
        .filter(|w| !cosignatures.iter().any(|c| c.id == w.id() && c.name == w.name()))
        .map(|w| w.name().to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the checkpoint of size {} lacks the cosignature of witness(es) {}",
            checkpoint.size(),
            missing.join(", ")
        ));
    }
    Ok(Checked {
        sequence: event.sequence,
        size: checkpoint.size(),
        origin,
        cosigned_by: cosignatures.into_iter().map(|c| c.name).collect(),
    })
}
