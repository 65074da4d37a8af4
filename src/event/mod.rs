//! The product: domain events. `draft` holds the event types (`Draft`, `Op`, `Position`,
//! `EntityKey`), `value` maps column text to JSON and `json` holds the JSON writers the
//! event's bytes are made with, `builder` turns decoded transactions into event drafts
//! (data, lookahead for `pgtxcnt`) with `naming` (ids, subjects, types),
//! `envelope` serializes a draft into the CloudEvents payload with its place in the chain,
//! `chain` states the signing rule every reader relies on, `signing` holds keys, key ids
//! and the DSSE pre-authentication encoding, and `hashing` the keyed hash that stands in for
//! personal data (`hash_columns`).
//!
//! No I/O happens here except reading and writing key files in `signing` and reading the salt
//! in `hashing`.

pub mod builder;
pub mod chain;
pub mod draft;
pub mod envelope;
pub mod hashing;
pub mod json;
pub mod naming;
pub mod schema;
pub mod signing;
pub mod stored;
pub mod value;

pub use builder::EventBuilder;
pub use draft::{Draft, Position};
pub use envelope::Envelope;
pub use hashing::ColumnHasher;
pub use naming::subject_token;
pub use signing::{KeyError, Keyring, Signer};
