//! The product: domain events. `draft` holds the event types (`Draft`, `Op`, `Position`,
//! `EntityKey`). `builder` turns decoded transactions into event drafts (framing, numbering,
//! lookahead for `pgtxcnt`) with `shape` (per relation: key, subjects, types), `data` (a
//! row's `data`) and `naming` (ids, subjects, types); `value` maps column text to JSON and
//! `json` holds the JSON writers. `schema` is a table's definition as schema events publish
//! it. `envelope` serializes a draft into the CloudEvents payload with its place in the
//! chain and `stored` reads a stored one back, `chain` states the signing rule every reader
//! relies on, `signing` holds keys, key ids and the DSSE pre-authentication encoding, and
//! `hashing` the keyed hash that stands in for personal data (`hash_columns`).
//!
//! No I/O happens here except reading and writing key files in `signing` and reading the salt
//! in `hashing`.

pub mod borrowed;
pub mod builder;
pub mod chain;
mod data;
pub mod draft;
pub mod envelope;
pub mod hashing;
pub mod json;
pub mod naming;
pub mod schema;
pub mod shape;
pub mod signing;
pub mod stored;
pub mod value;

pub use builder::EventBuilder;
pub use draft::{Draft, Position};
pub use envelope::Envelope;
pub use hashing::ColumnHasher;
pub use naming::subject_token;
pub use signing::{KeyError, Keyring, Signer};
