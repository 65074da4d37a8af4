//! walguard: every committed change to guarded PostgreSQL tables becomes a signed,
//! hash-chained CloudEvent in a NATS JetStream stream. See ARCHITECTURE.md for the map.

pub mod app;
pub mod archive;
pub mod audit;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod decode;
pub mod demo;
pub mod error;
pub mod event;
pub mod lsn;
pub mod pipeline;
pub mod prove;
pub mod restore;
pub mod resync;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod testkit;
pub mod tlog;
pub mod verify;
pub mod witness;

pub use error::Error;
