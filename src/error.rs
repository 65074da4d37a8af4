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

impl Error {
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
            Error::Sink(_) => "nats",
            Error::Build(_) => "encode",
            Error::Refused(_) => "refused",
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Key(_) => exit::CONFIG,
            e if e.is_transient() => exit::UNAVAILABLE,
            _ => exit::PROBLEM,
        }
    }
}
