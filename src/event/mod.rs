//! The product: domain events. `value` maps column text to JSON, `builder` turns decoded
//! transactions into event drafts (ids, subjects, data, lookahead for `pgtxcnt`),
//! `envelope` serializes a draft into the CloudEvents payload with its place in the chain,
//! `chain` states the signing rule every reader relies on, and `signing` holds keys, key ids
//! and the DSSE pre-authentication encoding.
//!
//! No I/O happens here except reading and writing key files in `signing`.

pub mod builder;
pub mod chain;
pub mod envelope;
pub mod signing;
pub mod value;

pub use builder::{Draft, EventBuilder, Position};
pub use envelope::{subject_token, Envelope};
pub use signing::{ColumnHasher, KeyError, Keyring, Signer};
