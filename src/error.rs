//! The crate's error: each stage's error, told apart by what the operator or the process can
//! do about it, and mapped to SPEC section 5's exit codes.

use crate::config::ConfigError;
use crate::event::builder::BuildError;
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
    /// walguard refuses to go on: continuing could lose or fork events.
    #[error("{0}")]
    Refused(String),
}

pub mod exit {
    pub const OK: i32 = 0;
    pub const PROBLEM: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNAVAILABLE: i32 = 69;
    pub const CONFIG: i32 = 78;
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
pub const ERROR_KINDS: [&str; 7] = [
    "config",
    "key",
    "postgres",
    "nats",
    "encode",
    "payload_too_large",
    "refused",
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
            Error::Config(_) | Error::Key(_) | Error::Build(_) | Error::Refused(_) => false,
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
            Error::Sink(SinkError::Refused(_)) => "refused",
            Error::Sink(_) => "nats",
            Error::Build(_) => "encode",
            Error::Refused(_) => "refused",
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
        let refused = Error::Refused("replication slot s has lost required WAL".into());
        assert_eq!(refused.recovery(), Recovery::Stop);
        let foreign = Error::Sink(SinkError::Refused("stream sequence 7 is not ours".into()));
        assert_eq!(foreign.recovery(), Recovery::Stop);
        assert_eq!(foreign.kind(), "refused");
        for e in [too_large, unencodable, refused, foreign] {
            assert!(ERROR_KINDS.contains(&e.kind()), "{} is not a known kind", e.kind());
        }
    }
}
