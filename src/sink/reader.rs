//! The stream read back in order, in one place: every reader of the stored log (the audit
//! tools and what is built on them: `export`, `verify`, `history`, the console, the witness;
//! `archive`; `restore -c`) takes its messages from a [`StreamReader`], one ordered consumer
//! from a start sequence to the stream's last sequence when it was opened, or on without end
//! (`archive --follow`).
//!
//! An ordered consumer is ephemeral, unacknowledged and recreated by async-nats after a gap,
//! so a reader needs nothing but read access (`deploy/nats/archive-reader.conf`). Creating it
//! is tried again for a while: a cluster electing a leader times such requests out. A reader
//! with an end replaces a consumer the server leaves silent for 30 s (one whose server left a
//! cluster can stay so), twice, reading on from the next sequence, and then gives up naming the
//! stream; one that follows waits, since no new message is not a fault.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::event::envelope::{HEADER_KEY_ID, HEADER_SIGNATURE};

/// How long a reader with an end waits for the next message before it gives up.
const SILENCE: Duration = Duration::from_secs(30);

/// How many times a silent consumer is replaced before a reader with an end gives up.
const RENEWALS: u32 = 2;

/// One stored message as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub signature: Option<(String, String)>,
    pub payload: Bytes,
}

impl Stored {
    /// The message JetStream stored at `sequence`, with its signature headers if any.
    pub fn from_message(sequence: u64, msg: &jetstream::Message) -> Stored {
        Stored {
            sequence,
            signature: signature_of(msg.headers.as_ref()),
            payload: msg.payload.clone(),
        }
    }

    /// A message fetched by sequence (`sink::stream::message`).
    pub fn from_raw(sequence: u64, msg: &jetstream::message::StreamMessage) -> Stored {
        Stored {
            sequence,
            signature: signature_of(Some(&msg.headers)),
            payload: msg.payload.clone(),
        }
    }
}

/// The key id and signature headers, when both are there.
fn signature_of(headers: Option<&async_nats::HeaderMap>) -> Option<(String, String)> {
    let kid = headers
        .and_then(|h| h.get(HEADER_KEY_ID))
        .map(|v| v.as_str().to_owned());
    let sig = headers
        .and_then(|h| h.get(HEADER_SIGNATURE))
        .map(|v| v.as_str().to_owned());
    kid.zip(sig)
}

/// Why the stream could not be read; every one names the stream and is worth retrying
/// (the server or the stream is unavailable), none is a fault of a message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("creating a consumer on {stream}: {reason}")]
    Consumer { stream: String, reason: String },
    #[error("reading {stream}: {reason}")]
    Read { stream: String, reason: String },
    #[error("reading {stream}: no message within {} s", SILENCE.as_secs())]
    Silent { stream: String },
}

/// Where a [`StreamReader`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The stream's last sequence when the reader was opened.
    Last,
    /// This sequence, or the last one when the stream ends before it.
    At(u64),
    /// Never: new messages are read as they arrive.
    Follow,
}

/// The stream's messages in order from a start sequence (see the module doc).
pub struct StreamReader {
    stream: String,
    state: jetstream::stream::State,
    /// The last sequence to read; `None` when following.
    end: Option<u64>,
    /// `None` when there was nothing to read.
    messages: Option<consumer::pull::Ordered>,
    done: bool,
    /// The stream, to create the consumer again after a silence.
    handle: jetstream::stream::Stream,
    /// The sequence the next message read must be at least.
    next: u64,
    /// Consumers created again after a silence so far.
    renewed: u32,
}

impl StreamReader {
    /// Opens `stream` for reading from sequence `from` (from its first message when that is
    /// later) until `until`.
    pub async fn open(
        js: &jetstream::Context,
        stream: &str,
        from: u64,
        until: Until,
    ) -> Result<StreamReader, ReadError> {
        let failed = |e: &dyn std::fmt::Display| ReadError::Stream {
            stream: stream.to_owned(),
            reason: e.to_string(),
        };
        let mut st = js.get_stream(stream).await.map_err(|e| failed(&e))?;
        let state = st.info().await.map_err(|e| failed(&e))?.state.clone();
        let end = match until {
            Until::Last => Some(state.last_sequence),
            Until::At(at) => Some(at.min(state.last_sequence)),
            Until::Follow => None,
        };
        let start = from.max(state.first_sequence).max(1);
        let mut reader = StreamReader {
            stream: stream.to_owned(),
            state,
            end,
            messages: None,
            done: false,
            handle: st,
            next: start,
            renewed: 0,
        };
        if end.is_some_and(|end| reader.state.messages == 0 || start > end) {
            reader.done = true;
            return Ok(reader);
        }
        reader.messages = Some(StreamReader::consume(&reader.handle, stream, start).await?);
        Ok(reader)
    }

    /// An ordered consumer on `handle` from `start` on, its creation tried again for a while (a
    /// cluster electing a leader times such requests out).
    async fn consume(
        handle: &jetstream::stream::Stream,
        stream: &str,
        start: u64,
    ) -> Result<consumer::pull::Ordered, ReadError> {
        let mut attempts = 0;
        let consumer = loop {
            let created = handle
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: if start <= 1 {
                        consumer::DeliverPolicy::All
                    } else {
                        consumer::DeliverPolicy::ByStartSequence { start_sequence: start }
                    },
                    ..Default::default()
                })
                .await;
            match created {
                Ok(c) => break c,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    tracing::debug!(error = %e, stream, "creating a consumer failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(ReadError::Consumer {
                        stream: stream.to_owned(),
                        reason: e.to_string(),
                    })
                }
            }
        };
        consumer.messages().await.map_err(|e| ReadError::Read {
            stream: stream.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The stream's state when the reader was opened (first and last sequence, count).
    pub fn state(&self) -> &jetstream::stream::State {
        &self.state
    }

    /// The last sequence this reader reads (`None` when it follows).
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// No message within `SILENCE` on a reader with an end. A consumer whose server left the
    /// cluster can stay silent although messages remain: a new one from the next sequence,
    /// twice, before giving up.
    async fn silent(&mut self) -> Result<Option<Stored>, ReadError> {
        if self.renewed >= RENEWALS {
            return Err(ReadError::Silent {
                stream: self.stream.clone(),
            });
        }
        self.renewed += 1;
        tracing::warn!(
            stream = self.stream,
            from = self.next,
            "no message within {} s; reading on with a new consumer",
            SILENCE.as_secs()
        );
        self.messages = None;
        self.messages = Some(StreamReader::consume(&self.handle, &self.stream, self.next).await?);
        Box::pin(self.next()).await
    }

    /// The next message, `None` after the end. Cancel-safe: a call dropped while it waits
    /// loses nothing (the archive waits on it alongside its timer and shutdown).
    pub async fn next(&mut self) -> Result<Option<Stored>, ReadError> {
        let Some(messages) = self.messages.as_mut().filter(|_| !self.done) else {
            return Ok(None);
        };
        let next = match self.end {
            None => messages.next().await,
            // A message already received needs no timer.
            Some(_) => match messages.next().now_or_never() {
                Some(next) => next,
                None => match tokio::time::timeout(SILENCE, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => return self.silent().await,
                },
            },
        };
        let read = |e: &dyn std::fmt::Display| ReadError::Read {
            stream: self.stream.clone(),
            reason: e.to_string(),
        };
        let Some(msg) = next else {
            self.done = true;
            return Ok(None);
        };
        let msg = msg.map_err(|e| read(&e))?;
        let sequence = msg.info().map_err(|e| read(&e))?.stream_sequence;
        self.next = sequence + 1;
        if self.end.is_some_and(|end| sequence >= end) {
            self.done = true;
        }
        Ok(Some(Stored::from_message(sequence, &msg)))
    }
}
