//! The stream read back in order, in one place: every reader of the stored log (the audit
//! tools and what is built on them: `export`, `verify`, `history`, the console, the witness;
//! `archive`; `restore -c`) takes its messages from a [`StreamReader`], one ordered consumer
//! from a start sequence to the stream's last sequence when it was opened, or on without end
//! (`archive --follow`).
//!
//! An ordered consumer is ephemeral, unacknowledged and recreated by async-nats after a gap,
//! so a reader needs nothing but read access (`deploy/nats/archive-reader.conf`). Creating it
//! is tried again for a while: a cluster electing a leader times such requests out. A reader
//! with an end gives up when the server sends nothing for 30 s, naming the stream; one that
//! follows waits, since no new message is not a fault.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;

use crate::event::envelope::{HEADER_KEY_ID, HEADER_SIGNATURE};

/// How long a reader with an end waits for the next message before it gives up.
const SILENCE: Duration = Duration::from_secs(30);

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
        };
        if end.is_some_and(|end| reader.state.messages == 0 || start > end) {
            reader.done = true;
            return Ok(reader);
        }
        let mut attempts = 0;
        let consumer = loop {
            let created = st
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
        let messages = consumer.messages().await.map_err(|e| ReadError::Read {
            stream: stream.to_owned(),
            reason: e.to_string(),
        })?;
        reader.messages = Some(messages);
        Ok(reader)
    }

    /// The stream's state when the reader was opened (first and last sequence, count).
    pub fn state(&self) -> &jetstream::stream::State {
        &self.state
    }

    /// The last sequence this reader reads (`None` when it follows).
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// The next message, `None` after the end. Cancel-safe: a call dropped while it waits
    /// loses nothing (the archive waits on it alongside its timer and shutdown).
    pub async fn next(&mut self) -> Result<Option<Stored>, ReadError> {
        let Some(messages) = self.messages.as_mut().filter(|_| !self.done) else {
            return Ok(None);
        };
        let next = match self.end {
            Some(_) => tokio::time::timeout(SILENCE, messages.next())
                .await
                .map_err(|_| ReadError::Silent {
                    stream: self.stream.clone(),
                })?,
            None => messages.next().await,
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
        if self.end.is_some_and(|end| sequence >= end) {
            self.done = true;
        }
        Ok(Some(Stored::from_message(sequence, &msg)))
    }
}
