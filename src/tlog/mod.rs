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
//! - `tree.rs`: [`Hash`], leaf and node hashing, the [`Frontier`] and its saved form.
//! - `proof.rs`: inclusion and consistency proofs: which ranges they are made of, building
//!   them from range hashes or from one pass over the leaves, and checking them.
//!
//! The tree is ours rather than `tlog_tiles`' (Cloudflare azul's port of Go's sumdb/tlog),
//! because the publisher needs the frontier and `prove` needs proofs from range hashes that it
//! computes by reading the stream, neither of which `tlog_tiles` offers (it reads a stored hash
//! for every node, as a tile server keeps them); its verifiers check ours in the tests.

pub mod proof;
pub mod tree;

pub use proof::{ProofError, RangeHasher};
pub use tree::{leaf_hash, node_hash, Frontier, Hash, TreeError, EMPTY_ROOT};
