//! Pure decoding of what the walsender sends: the CopyData payloads of the replication
//! protocol (`frame`) and the pgoutput messages inside XLogData (`pgoutput`).
//!
//! Nothing here does I/O and nothing panics on input: every read is checked, unknown tags are
//! errors, and length fields are validated against the bytes actually present before anything
//! is allocated.

pub mod frame;
pub mod pgoutput;

mod cursor;
#[cfg(test)]
mod fuzz;

pub use cursor::DecodeError;
