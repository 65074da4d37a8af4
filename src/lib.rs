//! walguard: every committed change to guarded PostgreSQL tables becomes a signed,
//! hash-chained CloudEvent in a NATS JetStream stream. See ARCHITECTURE.md for the map.

pub mod decode;
pub mod event;
pub mod lsn;
