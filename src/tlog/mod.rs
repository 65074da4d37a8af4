//! The transparency log (SPEC section 8, G9), pure: the RFC 6962 Merkle tree over every stream
//! message, its proofs, and the C2SP formats that carry its heads to auditors and witnesses.
//!
//! Leaf `n` is the payload of stream sequence `n + 1`; a leaf hash is `SHA-256(0x00 || payload)`
//! and an interior node `SHA-256(0x01 || left || right)` (RFC 6962 section 2.1, unchanged in
//! RFC 9162 section 2.1.1). The tree is never stored: the publisher keeps a [`Frontier`] (the
//! roots of the perfect subtrees covering the leaves so far, O(log n) hashes), and a proof is
//! made from the hashes of a few leaf ranges, each computed by reading that range of the stream
//! ([`proof`]). Nothing here does I/O; `crate::witness` speaks HTTP.
//!
//! - `tree.rs`: [`Hash`], leaf and node hashing, the [`Frontier`] and its saved form, and the
//!   [`CompactRange`] of the leaves since a given size.
//! - `proof.rs`: inclusion and consistency proofs: which ranges they are made of, building
//!   them from range hashes, from one pass over the leaves or (consistency) from memory, and
//!   checking them.
//! - `note.rs`: C2SP signed notes with Ed25519 (`signed-note`), the keys of the log and of
//!   witnesses (`name+keyid+base64` vkeys) and timestamped cosignatures (`tlog-cosignature/v1`).
//! - `checkpoint.rs`: the checkpoint (`tlog-checkpoint`) as a signed note, and the `data` of a
//!   `walguard.checkpoint` event.
//! - `add_checkpoint.rs`: the body of a `tlog-witness` `add-checkpoint` request.
//!
//! The note and checkpoint grammar are the kept implementations of Cloudflare's azul
//! (`signed_note`, `tlog_tiles`, ports of Go's `golang.org/x/mod/sumdb`); the tree is ours,
//! because the publisher needs the frontier and `prove` needs proofs from range hashes that it
//! computes by reading the stream, neither of which `tlog_tiles` offers (it reads a stored hash
//! for every node, as a tile server keeps them).

pub mod add_checkpoint;
pub mod checkpoint;
pub mod note;
pub mod proof;
pub mod tlog_proof;
pub mod tree;

pub use add_checkpoint::AddCheckpoint;
pub use checkpoint::{log_vkeys, Checkpoint, CheckpointData, CheckpointError, SignedCheckpoint};
pub use note::{CheckpointSigner, Cosignature, Cosigner, KeyKind, NoteError, Vkey};
pub use proof::{ProofError, RangeHasher};
pub use tlog_proof::{TlogProof, TlogProofError};
pub use tree::{leaf_hash, node_hash, CompactRange, Frontier, Hash, TreeError, EMPTY_ROOT};
