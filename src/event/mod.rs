//! The product: domain events. `value` maps column text to JSON and `json` holds the JSON
//! writers the event's bytes are made with, `builder` turns decoded
//! transactions into event drafts (ids, subjects, data, lookahead for `pgtxcnt`),
//! `envelope` serializes a draft into the CloudEvents payload with its place in the chain,
//! `chain` states the signing rule every reader relies on, `signing` holds keys, key ids
//! and the DSSE pre-authentication encoding, and `hashing` the keyed hash that stands in for
//! personal data (`hash_columns`).
//!
//! No I/O happens here except reading and writing key files in `signing` and reading the salt
//! in `hashing`.

pub mod builder;
pub mod chain;
pub mod envelope;
pub mod hashing;
pub mod json;
pub mod schema;
pub mod signing;
pub mod stored;
pub mod value;

pub use builder::{Draft, EventBuilder, Position};
pub use envelope::{subject_token, Envelope};
pub use hashing::ColumnHasher;
pub use signing::{KeyError, Keyring, Signer};
