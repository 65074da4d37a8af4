//! The crate's error: each stage's error, told apart by what the operator or the process can
//! do about it, and mapped to SPEC section 5's exit codes.

use crate::config::ConfigError;
use crate::event::draft::BuildError;
use crate::event::KeyError;
use crate::sink::SinkError;
use crate::source::catalog::CatalogError;
use crate::source::conn::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// walguard refuses to go on: continuing could lose or fork events. The kind says why,
    /// for the metric and for tests; the message says what to do.
    #[error("{1}")]
    Refused(Refusal, String),
}

pub mod exit {
    pub const OK: i32 = 0;
    pub const PROBLEM: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNAVAILABLE: i32 = 69;
    pub const CONFIG: i32 = 78;
}

/// Why walguard refuses to go on: the `kind` of `walguard_errors_total` for a refusal, and
/// what tests match instead of the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The slot is gone or lost WAL it needs while the stream has events: changes may be
    /// missing (G7).
    LostSlot,
    /// The slot confirmed beyond what the stream proves (G7).
    SlotAhead,
    /// The slot belongs to another plugin or database.
    ForeignSlot,
    /// The stream holds what this walguard did not write, or lost what it wrote: a foreign
    /// or unreadable message, a tail not signed by its key, a mismatch on re-derivation.
    ForeignMessage,
    /// The stream's settings could lose or rewrite events (SPEC section 3).
    UnsafeStream,
    /// A start-up check failed (the same checks as `walguard check`).
    Preflight,
    /// The baseline snapshot cannot go on (a table vanished, a row without its key).
    Snapshot,
    /// One of walguard's own tasks failed.
    Internal,
    /// An audit tool (restore, history, reconcile) cannot go on.
    Audit,
    /// After a promotion the stream holds events beyond the new timeline's switch point: WAL
    /// the new primary may not have (SPEC section 7, "Failover").
    TimelineFork,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LostSlot => "lost_slot",
            Refusal::SlotAhead => "slot_ahead",
            Refusal::ForeignSlot => "foreign_slot",
            Refusal::ForeignMessage => "foreign_message",
            Refusal::UnsafeStream => "unsafe_stream",
            Refusal::Preflight => "preflight",
            Refusal::Snapshot => "snapshot",
            Refusal::Internal => "internal",
            Refusal::Audit => "audit",
            Refusal::TimelineFork => "timeline_fork",
        }
    }
}

/// What the daemon does when a session ends with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A server is unreachable or failed for a moment: start a new session from the stream's
    /// tail after a capped backoff (at start-up, before the first session streamed, exit 69).
    Retry,
    /// An event cannot be published or encoded (over NATS's max_payload, a value with no JSON
    /// form): progress stops at that event and nothing is skipped, but the process stays up,
    /// retries with capped backoff and says why on `/readyz` and in `walguard_errors_total`,
    /// so a raised limit or a fixed table lets it go on by itself (SPEC G3). Never an exit:
    /// under Kubernetes an exiting sidecar is a crash loop with no metrics and no reason.
    Blocked,
    /// Another walguard streams from the slot: wait as its standby.
    Standby,
    /// Only a person can fix it (a lost slot, a slot ahead of the stream, a foreign message,
    /// a bad configuration): stop with the message.
    Stop,
}

/// Every value of the `kind` label of `walguard_errors_total`, each exported at 0 from
/// start-up so that `increase()` sees the first error of a kind (SPEC section 5).
pub const ERROR_KINDS: [&str; 17] = [
    "config",
    "key",
    "postgres",
    "nats",
    "encode",
    "payload_too_large",
    "lost_slot",
    "slot_ahead",
    "foreign_slot",
    "foreign_message",
    "unsafe_stream",
    "preflight",
    "snapshot",
    "internal",
    "audit",
    "timeline_fork",
    "witness",
];

impl Error {
    pub fn recovery(&self) -> Recovery {
        match self {
            e if e.is_slot_in_use() => Recovery::Standby,
            Error::Sink(SinkError::PayloadTooLarge { .. }) | Error::Build(_) => Recovery::Blocked,
            e if e.is_transient() => Recovery::Retry,
            _ => Recovery::Stop,
        }
    }

    /// Where a blocked event stands in the stream's order, when it was built.
    pub fn blocked_at(&self) -> Option<crate::event::Position> {
        match self {
            Error::Sink(SinkError::PayloadTooLarge { at, .. }) => Some(*at),
            _ => None,
        }
    }

    /// Retrying later can succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Source(e) => e.is_transient(),
            Error::Catalog(e) => e.is_transient(),
            Error::Sink(e) => e.is_transient(),
            Error::Config(_) | Error::Key(_) | Error::Build(_) | Error::Refused(..) => false,
        }
    }

    /// The slot is active for another process (SQLSTATE 55006), or another walguard created
    /// it a moment ago (42710): this walguard is a standby.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, Error::Source(crate::source::conn::SourceError::Server(e)) if crate::source::sqlstate::is_slot_taken(&e.code))
    }

    /// A short, stable name for logs and the `walguard_errors_total` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Key(_) => "key",
            Error::Source(_) => "postgres",
            Error::Catalog(_) => "postgres",
            Error::Sink(SinkError::PayloadTooLarge { .. }) => "payload_too_large",
            Error::Sink(SinkError::Refused(kind, _)) => kind.as_str(),
            Error::Sink(_) => "nats",
            Error::Build(_) => "encode",
            Error::Refused(kind, _) => kind.as_str(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Key(_) => exit::CONFIG,
            e if e.recovery() == Recovery::Blocked => exit::UNAVAILABLE,
            e if e.is_transient() => exit::UNAVAILABLE,
            _ => exit::PROBLEM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_cannot_go_out_blocks_and_is_counted_under_a_known_kind() {
        let too_large = Error::Sink(SinkError::PayloadTooLarge {
            table: "public.ledger".into(),
            at: crate::event::Position {
                lsn: crate::lsn::Lsn(0x16_0000_0100),
                idx: 1,
            },
            id: uuid::Uuid::nil(),
            size: 10_240,
            limit: 4096,
        });
        assert_eq!(too_large.recovery(), Recovery::Blocked);
        assert_eq!(too_large.kind(), "payload_too_large");
        let message = too_large.to_string();
        for part in ["public.ledger", "10240 bytes", "max_payload of 4096", "16/100"] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        let unencodable = Error::Build(BuildError::Binary {
            table: "public.t".into(),
            column: "c".into(),
        });
        assert_eq!(unencodable.recovery(), Recovery::Blocked);
        assert_eq!(
            Error::Sink(SinkError::Request("timed out".into())).recovery(),
            Recovery::Retry
        );
        let refused = Error::Refused(Refusal::LostSlot, "replication slot s has lost required WAL".into());
        assert_eq!(refused.recovery(), Recovery::Stop);
        let foreign = Error::Sink(SinkError::Refused(
            Refusal::ForeignMessage,
            "stream sequence 7 is not ours".into(),
        ));
        assert_eq!(foreign.recovery(), Recovery::Stop);
        assert_eq!(foreign.kind(), "foreign_message");
        assert_eq!(refused.kind(), "lost_slot");
        for e in [too_large, unencodable, refused, foreign] {
            assert!(ERROR_KINDS.contains(&e.kind()), "{} is not a known kind", e.kind());
        }
    }
}
