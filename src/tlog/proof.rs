//! Inclusion and consistency proofs (RFC 6962 section 2.1.1 and 2.1.2; checked as RFC 9162
//! section 2.1.3.2 and 2.1.4.2 say).
//!
//! Every hash in a proof is the root of a range of leaves `[lo, hi)`, and the ranges of one
//! proof do not overlap. So a proof is made in two steps: [`inclusion_ranges`] or
//! [`consistency_ranges`] say which ranges (pure, O(log n)), and the caller hashes each, either
//! with a function of its own ([`prove`]: from stored subtree roots, or reading each range of
//! the stream) or by feeding every leaf once, in order, to a [`RangeHasher`], which holds one
//! [`Frontier`] at a time: a proof over a stream of a million events then costs one read of the
//! stream and O(log n) memory, never the leaves.

use std::ops::Range;

use super::tree::{node_hash, CompactRange, Frontier, Hash};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from size {old} to size {new}: the old size must be between 1 and the new size")]
    Sizes { old: u64, new: u64 },
    #[error("the proof has {found} hashes, not as many as the tree sizes need")]
    Length { found: usize },
    #[error("the proof does not lead to the root {expected}: it gives {computed}")]
    RootMismatch { expected: Hash, computed: Hash },
    #[error("the proof does not lead to the old root {expected}: it gives {computed}")]
    OldRootMismatch { expected: Hash, computed: Hash },
    #[error("the range hasher was given leaf {index} after leaf {previous}: leaves go in order")]
    OutOfOrder { index: u64, previous: u64 },
    #[error("the range hasher misses leaf {missing} of range {range:?}")]
    MissingLeaf { missing: u64, range: Range<u64> },
}

/// The largest power of two smaller than `n` (n >= 2): RFC 6962's split point `k`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The ranges whose roots make the inclusion proof of leaf `index` in the tree of `size`
/// leaves, in proof order (from the leaf's sibling up to the root's child).
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // RFC 6962 PATH(m, D[lo:hi]) walks down to the leaf; the proof lists the siblings bottom-up.
    let mut out = Vec::new();
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            out.push(lo + k..hi);
            hi = lo + k;
        } else {
            out.push(lo..lo + k);
            lo += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The ranges whose roots make the consistency proof from the tree of `old` leaves to the
/// tree of `new` leaves, in proof order; empty when the sizes are equal.
pub fn consistency_ranges(old: u64, new: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Sizes { old, new });
    }
    // RFC 6962 SUBPROOF(m, D[lo:hi], b), walked down iteratively; `m` is relative to `lo`, and
    // `whole` is b: whether D[lo:hi] is the old tree itself (its root the verifier has).
    let mut out = Vec::new();
    let (mut lo, mut hi, mut m, mut whole) = (0, new, old, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                out.push(lo..hi);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push(lo + k..hi);
            hi = lo + k;
        } else {
            out.push(lo..lo + k);
            lo += k;
            m -= k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// A proof from a function that gives the root of a range of leaves (the caller's storage, or
/// a read of that range of the stream).
pub fn prove<E>(
    ranges: &[Range<u64>],
    mut range_root: impl FnMut(Range<u64>) -> Result<Hash, E>,
) -> Result<Vec<Hash>, E> {
    ranges.iter().map(|r| range_root(r.clone())).collect()
}

/// The roots of a proof's ranges from one pass over the leaves: give it leaf hashes in
/// increasing index order (any leaves, for instance every leaf from 0; those outside the
/// ranges are ignored, and [`RangeHasher::wants`] says which can be skipped), then
/// [`RangeHasher::finish`]. Holds one frontier, never the leaves.
#[derive(Debug)]
pub struct RangeHasher {
    ranges: Vec<Range<u64>>,
    /// Indexes into `ranges`, by range start.
    order: Vec<usize>,
    /// Position in `order` of the range being hashed.
    current: usize,
    frontier: Frontier,
    roots: Vec<Option<Hash>>,
    last: Option<u64>,
}

impl RangeHasher {
    /// For the ranges of one proof (disjoint, as [`inclusion_ranges`] and
    /// [`consistency_ranges`] give them).
    pub fn new(ranges: Vec<Range<u64>>) -> RangeHasher {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].start);
        let roots = vec![None; ranges.len()];
        RangeHasher {
            ranges,
            order,
            current: 0,
            frontier: Frontier::new(),
            roots,
            last: None,
        }
    }

    /// One past the last leaf any range needs: read the leaves before it.
    pub fn end(&self) -> u64 {
        self.ranges.iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// Whether leaf `index` is in one of the ranges (a leaf that is not need not be read).
    pub fn wants(&self, index: u64) -> bool {
        self.ranges.iter().any(|r| r.contains(&index))
    }

    /// Takes the hash of leaf `index`.
    pub fn push(&mut self, index: u64, leaf: Hash) -> Result<(), ProofError> {
        if let Some(previous) = self.last {
            if index <= previous {
                return Err(ProofError::OutOfOrder { index, previous });
            }
        }
        self.last = Some(index);
        let Some(&at) = self.order.get(self.current) else {
            return Ok(());
        };
        let range = self.ranges[at].clone();
        let next = range.start + self.frontier.size();
        if index < next {
            return Ok(());
        }
        if index > next {
            return Err(ProofError::MissingLeaf { missing: next, range });
        }
        self.frontier.append(leaf);
        if self.frontier.size() == range.end - range.start {
            self.roots[at] = Some(std::mem::take(&mut self.frontier).root());
            self.current += 1;
        }
        Ok(())
    }

    /// The roots, in proof order.
    pub fn finish(self) -> Result<Vec<Hash>, ProofError> {
        self.roots
            .iter()
            .zip(&self.ranges)
            .map(|(root, range)| {
                root.ok_or_else(|| ProofError::MissingLeaf {
                    missing: range.start,
                    range: range.clone(),
                })
            })
            .collect()
    }
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, from its leaf hashes in
/// order (at least the first `size`).
pub fn prove_inclusion(index: u64, size: u64, leaves: impl IntoIterator<Item = Hash>) -> Result<Vec<Hash>, ProofError> {
    from_leaves(inclusion_ranges(index, size)?, leaves)
}

/// The consistency proof from `old` to `new` leaves, from the leaf hashes in order.
pub fn prove_consistency(old: u64, new: u64, leaves: impl IntoIterator<Item = Hash>) -> Result<Vec<Hash>, ProofError> {
    from_leaves(consistency_ranges(old, new)?, leaves)
}

fn from_leaves(ranges: Vec<Range<u64>>, leaves: impl IntoIterator<Item = Hash>) -> Result<Vec<Hash>, ProofError> {
    let mut hasher = RangeHasher::new(ranges);
    let end = hasher.end();
    for (index, leaf) in (0..end).zip(leaves) {
        hasher.push(index, leaf)?;
    }
    hasher.finish()
}

/// The consistency proof from the tree of `old.size()` leaves to the tree of `since.end()`
/// leaves from memory alone: `old` is the frontier at the old size and `since` the compact
/// range of every leaf after it. Every hash of such a proof is a node of `old` or a run of
/// nodes of `since`, so a publisher that keeps both from the size its witness last cosigned
/// answers a witness without reading the stream.
pub fn prove_consistency_from(old: &Frontier, since: &CompactRange) -> Result<Vec<Hash>, ProofError> {
    let (m, n) = (old.size(), since.end());
    if since.begin() != m {
        return Err(ProofError::Sizes { old: m, new: n });
    }
    let old_nodes: Vec<(Range<u64>, Hash)> = Frontier::ranges(m)
        .into_iter()
        .zip(old.nodes().iter().copied())
        .collect();
    consistency_ranges(m, n)?
        .into_iter()
        .map(|r| {
            let found = if r.end <= m {
                old_nodes.iter().find(|(o, _)| *o == r).map(|(_, h)| *h)
            } else {
                since.root_of(r.clone())
            };
            found.ok_or(ProofError::MissingLeaf {
                missing: r.start,
                range: r,
            })
        })
        .collect()
}

/// Checks that `proof` proves leaf `index` with hash `leaf` in the tree of `size` leaves whose
/// root is `root` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length { found: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length { found: proof.len() });
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            expected: *root,
            computed: r,
        });
    }
    Ok(())
}

/// Checks that `proof` proves the tree of `old` leaves with root `old_root` is a prefix of the
/// tree of `new` leaves with root `new_root` (RFC 9162 section 2.1.4.2). Equal sizes need an
/// empty proof and equal roots; an old size of 0 proves nothing and is refused (a witness
/// treats `old 0` itself).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Sizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Length { found: proof.len() });
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch {
                expected: *new_root,
                computed: *old_root,
            });
        }
        return Ok(());
    }
    // When the old tree is a perfect subtree its root is the proof's implicit first node.
    let (seed, rest) = if old.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(ProofError::Length { found: 0 }),
        }
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::Length { found: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length { found: proof.len() });
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            expected: *old_root,
            computed: fr,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            expected: *new_root,
            computed: sr,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tree::tests::{h, leaf_hashes, ROOTS};
    use super::super::tree::{leaf_hash, CompactRange, EMPTY_ROOT};
    use super::*;
    use std::path::Path;

    // transparency-dev/merkle, testonly/reference_test.go (commit 417fb0c3),
    // TestRefInclusionProof: (index, size, proof) over the 8 leaves of `LEAVES`.
    const INCLUSION: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    // The same file, TestRefConsistencyProof: (old size, new size, proof).
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn hashes(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| h(s)).collect()
    }

    #[test]
    fn inclusion_proofs_are_the_published_ones_and_verify() {
        let leaves = leaf_hashes();
        for &(index, size, want) in INCLUSION {
            let want = hashes(want);
            let proof = prove_inclusion(index, size, leaves.iter().copied()).unwrap();
            assert_eq!(proof, want, "inclusion of {index} in {size}");
            let root = h(ROOTS[size as usize]);
            verify_inclusion(index, size, &leaves[index as usize], &proof, &root).unwrap();
            let by_range = prove(&inclusion_ranges(index, size).unwrap(), |r| {
                Ok::<_, ()>(Frontier::from_leaf_hashes(leaves[r.start as usize..r.end as usize].iter().copied()).root())
            })
            .unwrap();
            assert_eq!(by_range, want);
        }
    }

    #[test]
    fn consistency_proofs_are_the_published_ones_and_verify() {
        let leaves = leaf_hashes();
        for &(old, new, want) in CONSISTENCY {
            let want = hashes(want);
            let proof = prove_consistency(old, new, leaves.iter().copied()).unwrap();
            assert_eq!(proof, want, "consistency {old} to {new}");
            verify_consistency(old, new, &h(ROOTS[old as usize]), &h(ROOTS[new as usize]), &proof).unwrap();
        }
    }

    /// Every proof between every pair of sizes up to 8 verifies, and a proof altered in any
    /// hash, or checked against another size or root, does not.
    #[test]
    fn every_proof_of_the_eight_leaf_tree_round_trips_and_no_altered_one_verifies() {
        let leaves = leaf_hashes();
        let root = |n: u64| h(ROOTS[n as usize]);
        for size in 1..=8u64 {
            for index in 0..size {
                let proof = prove_inclusion(index, size, leaves.iter().copied()).unwrap();
                let leaf = leaves[index as usize];
                verify_inclusion(index, size, &leaf, &proof, &root(size)).unwrap();
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i].0[0] ^= 1;
                    assert!(verify_inclusion(index, size, &leaf, &bad, &root(size)).is_err());
                }
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(verify_inclusion(other, size, &leaf, &proof, &root(size)).is_err());
                }
                let mut longer = proof.clone();
                longer.push(EMPTY_ROOT);
                assert!(verify_inclusion(index, size, &leaf, &longer, &root(size)).is_err());
            }
            for old in 1..=size {
                let proof = prove_consistency(old, size, leaves.iter().copied()).unwrap();
                verify_consistency(old, size, &root(old), &root(size), &proof).unwrap();
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i].0[31] ^= 0x80;
                    assert!(verify_consistency(old, size, &root(old), &root(size), &bad).is_err());
                }
                if old > 1 && old < size {
                    assert!(verify_consistency(old - 1, size, &root(old - 1), &root(size), &proof).is_err());
                    assert!(verify_consistency(old, size, &root(old - 1), &root(size), &proof).is_err());
                }
            }
        }
    }

    /// Our proofs over a larger tree check with tlog_tiles' verifiers (a port of Go's
    /// sumdb/tlog, written independently of this one).
    #[test]
    fn proofs_over_a_larger_tree_agree_with_an_independent_verifier() {
        let leaves: Vec<Hash> = (0u32..200).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let theirs = |x: &Hash| tlog_tiles::Hash(x.0);
        let mut f = Frontier::new();
        let mut roots = vec![f.root()];
        for l in &leaves {
            f.append(*l);
            roots.push(f.root());
        }
        for size in [1u64, 2, 3, 7, 64, 65, 127, 128, 129, 200] {
            for index in [0, size / 3, size / 2, size - 1] {
                let proof = prove_inclusion(index, size, leaves.iter().copied()).unwrap();
                let theirs_proof: Vec<_> = proof.iter().map(theirs).collect();
                tlog_tiles::check_record(
                    &theirs_proof,
                    size,
                    theirs(&roots[size as usize]),
                    index,
                    theirs(&leaves[index as usize]),
                )
                .unwrap();
            }
            for old in [1, size / 2, size - 1, size].into_iter().filter(|&o| o >= 1) {
                let proof = prove_consistency(old, size, leaves.iter().copied()).unwrap();
                let theirs_proof: Vec<_> = proof.iter().map(theirs).collect();
                tlog_tiles::check_tree(
                    &theirs_proof,
                    size,
                    theirs(&roots[size as usize]),
                    old,
                    theirs(&roots[old as usize]),
                )
                .unwrap();
                verify_consistency(old, size, &roots[old as usize], &roots[size as usize], &proof).unwrap();
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        assert_eq!(
            inclusion_ranges(3, 3),
            Err(ProofError::IndexOutOfRange { index: 3, size: 3 })
        );
        assert_eq!(
            inclusion_ranges(0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(consistency_ranges(0, 5), Err(ProofError::Sizes { old: 0, new: 5 }));
        assert_eq!(consistency_ranges(6, 5), Err(ProofError::Sizes { old: 6, new: 5 }));
        assert_eq!(consistency_ranges(5, 5), Ok(vec![]));
        assert_eq!(inclusion_ranges(u64::MAX - 1, u64::MAX).unwrap().len(), 63);
        assert!(consistency_ranges(u64::MAX / 3, u64::MAX).is_ok());
        let leaf = EMPTY_ROOT;
        assert!(matches!(
            verify_inclusion(0, 0, &leaf, &[], &leaf),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            verify_consistency(0, 0, &leaf, &leaf, &[]),
            Err(ProofError::Sizes { .. })
        ));
        // Too few leaves for the ranges.
        let leaves = leaf_hashes();
        assert!(matches!(
            prove_inclusion(2, 8, leaves[..5].iter().copied()),
            Err(ProofError::MissingLeaf { .. })
        ));
    }

    #[test]
    fn the_range_hasher_skips_leaves_it_does_not_want_and_refuses_gaps() {
        let leaves = leaf_hashes();
        let ranges = inclusion_ranges(5, 8).unwrap();
        let mut hasher = RangeHasher::new(ranges.clone());
        assert_eq!(hasher.end(), 8);
        assert!(!hasher.wants(5), "the proven leaf is not part of its own proof");
        for (i, leaf) in leaves.iter().enumerate() {
            if hasher.wants(i as u64) {
                hasher.push(i as u64, *leaf).unwrap();
            }
        }
        assert_eq!(
            hasher.finish().unwrap(),
            prove_inclusion(5, 8, leaves.iter().copied()).unwrap()
        );

        let mut gap = RangeHasher::new(ranges);
        gap.push(0, leaves[0]).unwrap();
        assert_eq!(
            gap.push(2, leaves[2]),
            Err(ProofError::MissingLeaf {
                missing: 1,
                range: 0..4
            })
        );
        let mut back = RangeHasher::new(inclusion_ranges(2, 4).unwrap());
        back.push(1, leaves[1]).unwrap_err();
        let mut order = RangeHasher::new(inclusion_ranges(0, 8).unwrap());
        order.push(0, leaves[0]).unwrap();
        assert_eq!(
            order.push(0, leaves[0]),
            Err(ProofError::OutOfOrder { index: 0, previous: 0 })
        );
    }

    /// From memory (the old frontier and the compact range after it) the proofs are the ones
    /// made from the leaves, for every pair of sizes up to 130.
    #[test]
    fn consistency_proofs_from_memory_are_the_proofs_from_the_leaves() {
        let leaves: Vec<Hash> = (0u32..130).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for old in 1..130u64 {
            let frontier = Frontier::from_leaf_hashes(leaves[..old as usize].iter().copied());
            let mut since = CompactRange::new(old);
            for new in old + 1..=130 {
                since.append(leaves[new as usize - 1]);
                let want = prove_consistency(old, new, leaves.iter().copied()).unwrap();
                assert_eq!(prove_consistency_from(&frontier, &since), Ok(want), "{old} to {new}");
            }
        }
        let frontier = Frontier::from_leaf_hashes(leaves[..3].iter().copied());
        assert!(prove_consistency_from(&frontier, &CompactRange::new(4)).is_err());
    }

    // ---- transparency-dev/merkle testdata probes (vendored under testdata/) ----

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct InclusionProbe {
        leaf_idx: u64,
        tree_size: u64,
        root: String,
        leaf_hash: String,
        proof: Option<Vec<String>>,
        desc: String,
        want_err: bool,
    }

    #[derive(serde::Deserialize)]
    struct ConsistencyProbe {
        size1: u64,
        size2: u64,
        root1: String,
        root2: String,
        proof: Option<Vec<String>>,
        desc: String,
        #[serde(rename = "wantErr")]
        want_err: bool,
    }

    fn probe_files(kind: &str) -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/tlog/testdata/transparency-dev")
            .join(kind);
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    /// A probe's hash as ours. Probes use values that are not 32 bytes ("don't care", empty)
    /// where a hash only has to be unequal or equal to another: where an error is wanted, such
    /// a value is one our types refuse before any check (`None`); where none is, it is mapped
    /// to 32 bytes by SHA-256, which keeps equal values equal.
    fn probe_hash(b64: &str, want_err: bool) -> Option<Hash> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        match <[u8; 32]>::try_from(raw.as_slice()) {
            Ok(a) => Some(Hash(a)),
            Err(_) if want_err => None,
            Err(_) => Some(Hash(<sha2::Sha256 as sha2::Digest>::digest(&raw).into())),
        }
    }

    fn probe_proof(proof: &Option<Vec<String>>, want_err: bool) -> Option<Vec<Hash>> {
        proof.iter().flatten().map(|p| probe_hash(p, want_err)).collect()
    }

    #[test]
    fn every_transparency_dev_inclusion_probe() {
        let files = probe_files("inclusion");
        assert!(files.len() > 80, "{} probe files", files.len());
        for (path, text) in files {
            let p: InclusionProbe = serde_json::from_str(&text).unwrap();
            let parsed = (|| {
                Some((
                    probe_hash(&p.leaf_hash, p.want_err)?,
                    probe_hash(&p.root, p.want_err)?,
                    probe_proof(&p.proof, p.want_err)?,
                ))
            })();
            let result = match parsed {
                None => Err(None),
                Some((leaf, root, proof)) => {
                    verify_inclusion(p.leaf_idx, p.tree_size, &leaf, &proof, &root).map_err(Some)
                }
            };
            assert_eq!(result.is_err(), p.want_err, "{path} ({}): {result:?}", p.desc);
        }
    }

    #[test]
    fn every_transparency_dev_consistency_probe() {
        let files = probe_files("consistency");
        assert!(files.len() > 80, "{} probe files", files.len());
        for (path, text) in files {
            let p: ConsistencyProbe = serde_json::from_str(&text).unwrap();
            let parsed = (|| {
                Some((
                    probe_hash(&p.root1, p.want_err)?,
                    probe_hash(&p.root2, p.want_err)?,
                    probe_proof(&p.proof, p.want_err)?,
                ))
            })();
            let result = match parsed {
                None => Err(None),
                Some((r1, r2, proof)) => verify_consistency(p.size1, p.size2, &r1, &r2, &proof).map_err(Some),
            };
            assert_eq!(result.is_err(), p.want_err, "{path} ({}): {result:?}", p.desc);
        }
    }
}
