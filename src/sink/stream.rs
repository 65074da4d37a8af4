//! The stream: created when missing, checked when present (SPEC section 3), and read back at
//! start-up. Its tail is walguard's only checkpoint (G7): the newest message signed by our
//! key gives the chain head, the next sequence and the position already published; the
//! messages after it (an unsigned tail left by a crash, or anything someone else wrote) are
//! re-derived from the WAL and compared byte for byte before walguard writes behind them.

use async_nats::jetstream::{self, stream};

use super::SinkError;
use crate::config::NatsConfig;
use crate::error::Refusal;
use crate::event::chain::SIGNED_WINDOW;
use crate::event::envelope::{sha256, Hash, HEADER_KEY_ID, HEADER_SIGNATURE};
use crate::event::stored::Attributes;
use crate::event::{Keyring, Position};
use crate::lsn::Lsn;

pub fn stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        discard: stream::DiscardPolicy::New,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        duplicate_window: cfg.duplicate_window,
        description: Some("walguard: signed, hash-chained change events".into()),
        ..Default::default()
    }
}

/// Problems of an existing stream's settings, each with its fix; empty when it is fine.
/// `unsafe_ok` (nats.allow_unsafe_stream) lets memory storage and discard-old limits pass.
pub fn stream_problems(cfg: &NatsConfig, have: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let name = &cfg.stream;
    let want_subject = format!("{}.>", cfg.subject_prefix);
    if !have.subjects.iter().any(|s| s == &want_subject || s == ">") {
        out.push(format!(
            "stream {name} does not capture subjects {want_subject} (it has {:?}): add the subject to the stream or change nats.subject_prefix",
            have.subjects
        ));
    }
    if !cfg.allow_unsafe_stream {
        if have.storage == stream::StorageType::Memory {
            out.push(format!(
                "stream {name} uses memory storage, which loses events on restart: recreate it with file storage, or set nats.allow_unsafe_stream = true"
            ));
        }
        let limited =
            have.max_messages > 0 || have.max_bytes > 0 || !have.max_age.is_zero() || have.max_messages_per_subject > 0;
        if have.discard == stream::DiscardPolicy::Old && limited {
            out.push(format!(
                "stream {name} discards old messages at its limits, which breaks the chain: set discard policy new (nats stream edit {name} --discard new), or set nats.allow_unsafe_stream = true"
            ));
        }
    }
    if !have.deny_delete || !have.deny_purge {
        out.push(format!(
            "stream {name} allows deleting or purging messages: recreate it with deny_delete and deny_purge (walguard creates it so when it is missing)"
        ));
    }
    if have.allow_rollup {
        out.push(format!(
            "stream {name} allows rollups, which remove messages: disable allow_rollup_hdrs"
        ));
    }
    out
}

/// Creates the stream when missing; otherwise checks it. Returns the handle.
pub async fn ensure(js: &jetstream::Context, cfg: &NatsConfig) -> Result<stream::Stream, SinkError> {
    match js.get_stream(&cfg.stream).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| SinkError::Request(e.to_string()))?;
            let problems = stream_problems(cfg, &info.config);
            if !problems.is_empty() {
                return Err(SinkError::Refused(Refusal::UnsafeStream, problems.join("; ")));
            }
            if info.config.num_replicas != cfg.replicas {
                tracing::warn!(stream = %cfg.stream, have = info.config.num_replicas, want = cfg.replicas, "stream replicas differ from nats.replicas");
            }
            Ok(s)
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            tracing::info!(stream = %cfg.stream, "creating stream");
            js.create_stream(stream_config(cfg))
                .await
                .map_err(|e| SinkError::Request(format!("creating stream {}: {e}", cfg.stream)))
        }
        Err(e) => Err(SinkError::Request(format!("looking up stream {}: {e}", cfg.stream))),
    }
}

/// What the stream's tail says about where to go on.
#[derive(Debug, Clone)]
pub struct Tail {
    /// The sequence the next new event gets.
    pub next_sequence: u64,
    /// SHA-256 of the verified head's payload (zeros for an empty stream).
    pub prev_hash: Hash,
    /// The verified head's position: replayed changes at or before it are skipped.
    pub position: Position,
    /// The newest `pgendlsn` at or before the verified head: how far walguard may have
    /// confirmed. `None` for an empty stream.
    pub confirmed: Option<Lsn>,
    /// The stream's last sequence; messages after the verified head up to it must be
    /// re-derived and found equal.
    pub last_sequence: u64,
    /// The verified head's payload.
    pub head: Option<bytes::Bytes>,
    /// The verified head ends its group (it has a `pgendlsn`).
    pub head_ends_group: bool,
}

impl Tail {
    pub fn is_empty(&self) -> bool {
        self.last_sequence == 0
    }
}

/// Fetches one stored message.
pub async fn message(stream: &stream::Stream, seq: u64) -> Result<jetstream::message::StreamMessage, SinkError> {
    stream
        .get_raw_message(seq)
        .await
        .map_err(|e| SinkError::Request(format!("reading stream sequence {seq}: {e}")))
}

/// Whether a stored message carries a valid signature by a key in `keyring`.
pub fn signed_by(msg: &jetstream::message::StreamMessage, keyring: &Keyring) -> bool {
    let (Some(kid), Some(sig)) = (msg.headers.get(HEADER_KEY_ID), msg.headers.get(HEADER_SIGNATURE)) else {
        return false;
    };
    keyring.verify(kid.as_str(), sig.as_str(), &msg.payload).is_ok()
}

pub async fn read_tail(stream: &mut stream::Stream, keyring: &Keyring, source: &str) -> Result<Tail, SinkError> {
    let name = stream.cached_info().config.name.clone();
    let state = stream
        .info()
        .await
        .map_err(|e| SinkError::Request(e.to_string()))?
        .state
        .clone();
    if state.messages == 0 {
        if state.last_sequence != 0 {
            return Err(SinkError::Refused(Refusal::ForeignMessage, format!(
                "stream {name} is empty but its last sequence is {}: its messages were removed; the chain cannot be continued (start a new stream)",
                state.last_sequence
            )));
        }
        return Ok(Tail {
            next_sequence: 1,
            prev_hash: [0; 32],
            position: Position::default(),
            confirmed: None,
            last_sequence: 0,
            head: None,
            head_ends_group: false,
        });
    }
    let last = state.last_sequence;
    let lowest = state.first_sequence.max(last.saturating_sub(SIGNED_WINDOW));
    let mut seq = last;
    let head = loop {
        let msg = message(stream, seq).await?;
        if signed_by(&msg, keyring) {
            break msg;
        }
        if seq <= lowest {
            return Err(SinkError::Refused(Refusal::ForeignMessage, format!(
                "stream {name}: none of messages {lowest} to {last} is signed by walguard's key: the tail was not written by this walguard (or the key changed); run `walguard verify` and investigate"
            )));
        }
        seq -= 1;
    };
    let attrs = Attributes::parse(&head.payload).map_err(|e| {
        SinkError::Refused(
            Refusal::ForeignMessage,
            format!("stream {name} sequence {seq} is signed but not a walguard event: {e}"),
        )
    })?;
    if attrs.source != source {
        return Err(SinkError::Refused(Refusal::ForeignMessage, format!(
            "stream {name} holds events of source {}, not of this database and slot ({source}): use a stream of its own for each slot",
            attrs.source
        )));
    }
    let confirmed = match attrs.pgendlsn {
        Some(end) => Some(end),
        None => end_of_group_before(stream, seq, &attrs, state.first_sequence).await?,
    };
    Ok(Tail {
        next_sequence: seq + 1,
        prev_hash: sha256(&head.payload),
        position: attrs.position(),
        confirmed,
        last_sequence: last,
        head: Some(head.payload.clone()),
        head_ends_group: attrs.pgendlsn.is_some(),
    })
}

/// The `pgendlsn` of the group before the one the verified head at `seq` belongs to (the
/// head does not end its group); `None` when that group is not in the stream.
async fn end_of_group_before(
    stream: &stream::Stream,
    seq: u64,
    head: &Attributes,
    first_sequence: u64,
) -> Result<Option<Lsn>, SinkError> {
    // The previous group's last event stands just before this group's first, which is
    // `pgtxidx - 1` events back; schema events (markers placed inside groups, never counted)
    // move the first further back by one each, so step over them and over this group's own
    // events until the message before the group.
    let mut prev = seq.saturating_sub(u64::from(head.pgtxidx));
    loop {
        if prev < first_sequence || prev == 0 {
            return Ok(None);
        }
        let msg = message(stream, prev).await?;
        let attrs = Attributes::parse(&msg.payload).map_err(|e| {
            SinkError::Refused(Refusal::ForeignMessage, format!(
                "stream {} sequence {prev}, which ends the group before the verified head {seq}, is not a walguard event ({e}): run `walguard verify` and investigate",
                stream.cached_info().config.name
            ))
        })?;
        let same_group = attrs.pglsn == head.pglsn && attrs.pgxid == head.pgxid && attrs.pgendlsn.is_none();
        if attrs.op != crate::event::draft::Op::Schema && !same_group {
            return Ok(attrs.pgendlsn);
        }
        prev -= 1;
    }
}

/// The newest message on `subject`: its sequence and payload, or `None` when JetStream
/// answers that the subject has none (error 10037). Any other failure is an error, never
/// "none": a resync marker that could not be read must not let an older snapshot marker
/// look current.
pub async fn last_on_subject(stream: &stream::Stream, subject: &str) -> Result<Option<(u64, bytes::Bytes)>, SinkError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some((m.sequence, m.payload))),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(SinkError::Request(format!(
            "reading the last message on {subject} of stream {}: {e}",
            stream.cached_info().config.name
        ))),
    }
}

/// The newest schema event per table among the stream's messages up to sequence `up_to` (the
/// verified head: what follows it is re-derived, schema events included), read from the
/// schema subject alone. A schema event walguard cannot read is refused, naming its sequence.
pub async fn read_schemas(
    stream: &stream::Stream,
    subject: &str,
    up_to: u64,
) -> Result<Vec<crate::event::schema::TableSchema>, SinkError> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let name = stream.cached_info().config.name.clone();
    let mut newest = std::collections::BTreeMap::new();
    if up_to == 0 {
        return Ok(Vec::new());
    }
    let request = |e: String| SinkError::Request(format!("reading the schema events of stream {name}: {e}"));
    if last_on_subject(stream, subject).await?.is_none() {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| request(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| request(e.to_string()))?;
    loop {
        // The subject holds a message (checked above), and each one says how many follow.
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| request("no message within 30 s".into()))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| request(e.to_string()))?;
        let info = msg.info().map_err(|e| request(e.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        if sequence > up_to {
            break;
        }
        let event = crate::event::stored::StoredEvent::parse(&msg.payload).map_err(|e| {
            SinkError::Refused(
                Refusal::ForeignMessage,
                format!(
                    "stream {name} sequence {sequence} is not a readable schema event ({e}): run `walguard verify`"
                ),
            )
        })?;
        if let crate::event::stored::Data::Schema(schema) = event.data {
            newest.insert(schema.qualified(), schema);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(newest.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_stream_passes_its_own_check() {
        let cfg = NatsConfig::default();
        let created = stream_config(&cfg);
        assert_eq!(created.subjects, vec!["walguard.>".to_owned()]);
        assert_eq!(created.storage, stream::StorageType::File);
        assert_eq!(created.discard, stream::DiscardPolicy::New);
        assert!(created.deny_delete && created.deny_purge && !created.allow_rollup);
        assert!(stream_problems(&cfg, &created).is_empty());
    }

    #[test]
    fn unsafe_streams_are_refused_with_the_fix() {
        let cfg = NatsConfig::default();
        let mut memory = stream_config(&cfg);
        memory.storage = stream::StorageType::Memory;
        let p = stream_problems(&cfg, &memory);
        assert!(
            p.len() == 1 && p[0].contains("memory storage") && p[0].contains("allow_unsafe_stream"),
            "{p:?}"
        );

        let mut old = stream_config(&cfg);
        old.discard = stream::DiscardPolicy::Old;
        assert!(
            stream_problems(&cfg, &old).is_empty(),
            "discard old without limits loses nothing"
        );
        old.max_messages = 1000;
        assert!(stream_problems(&cfg, &old)[0].contains("discard"));

        let mut wrong = stream_config(&cfg);
        wrong.subjects = vec!["other.>".into()];
        wrong.deny_purge = false;
        assert_eq!(stream_problems(&cfg, &wrong).len(), 2);

        let lenient = NatsConfig {
            allow_unsafe_stream: true,
            ..NatsConfig::default()
        };
        assert!(stream_problems(&lenient, &memory).is_empty());
    }
}
