//! Hashes and the incremental tree.
//!
//! The [`Frontier`] is what transparency-dev calls a compact range `[0, size)`: the roots of
//! the perfect subtrees that the binary digits of `size` split the leaves into, largest (left)
//! first. Appending a leaf merges as many equal-sized subtrees as `size` has trailing one bits,
//! so a message costs its leaf hash and on average one more SHA-256; the root at any size folds
//! the frontier from the right in `popcount(size) - 1` hashes.

use std::fmt;
use std::ops::Range;

use base64::Engine;
use sha2::{Digest, Sha256};

/// A SHA-256 tree hash: a leaf hash, an interior node or a root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

/// The root of the empty tree: SHA-256 of the empty string (RFC 6962 section 2.1).
pub const EMPTY_ROOT: Hash = Hash([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("tree hash {0:?} is not 32 bytes of standard base64")]
    BadHash(String),
    #[error("a frontier of a tree of size {size} holds {expected} hashes, not {found}")]
    FrontierLength { size: u64, expected: usize, found: usize },
    #[error("a saved frontier is 8 bytes of size then 32 bytes per hash, not {0} bytes")]
    FrontierBytes(usize),
    #[error("the saved frontier (size {found_size}) does not give the checkpoint's size {size} and root")]
    NotTheCheckpoint { size: u64, found_size: u64 },
}

impl Hash {
    /// Standard base64 of the 32 bytes, as checkpoints and proofs carry it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn from_base64(text: &str) -> Result<Hash, TreeError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| TreeError::BadHash(text.to_owned()))?;
        <[u8; 32]>::try_from(raw.as_slice())
            .map(Hash)
            .map_err(|_| TreeError::BadHash(text.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_base64())
    }
}

/// `SHA-256(0x00 || payload)`: the leaf hash of one stream message's payload.
pub fn leaf_hash(payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(payload);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

/// The incremental tree: O(log n) hashes that give the root at the current size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// The perfect subtree roots, left to right; one per set bit of `size`.
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtree roots, left to right: what [`Frontier::from_parts`] takes back.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash.
    pub fn append(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a subtree of the new leaf's height: merge.
        while size & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// Appends the leaf of one message payload and returns its leaf hash.
    pub fn append_payload(&mut self, payload: &[u8]) -> Hash {
        let leaf = leaf_hash(payload);
        self.append(leaf);
        leaf
    }

    /// The root of the tree of the leaves appended so far (RFC 6962's MTH).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return EMPTY_ROOT;
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The tree of these leaf hashes, in order.
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Frontier {
        let mut f = Frontier::new();
        for leaf in leaves {
            f.append(leaf);
        }
        f
    }

    /// The leaf ranges whose subtree roots make up the frontier at `size`, left to right:
    /// hash each (by reading that range of the stream) and pass them to
    /// [`Frontier::from_parts`] to restore the tree without holding its leaves.
    pub fn ranges(size: u64) -> Vec<Range<u64>> {
        let mut out = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0;
        for bit in (0..64).rev() {
            let width = 1u64 << bit;
            if size & width != 0 {
                out.push(start..start + width);
                start += width;
            }
        }
        out
    }

    /// A frontier from its parts: the size and the roots of [`Frontier::ranges`]`(size)`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Frontier, TreeError> {
        let expected = size.count_ones() as usize;
        if nodes.len() != expected {
            return Err(TreeError::FrontierLength {
                size,
                expected,
                found: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    /// The saved form: the size as 8 bytes big-endian, then each node's 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for n in &self.nodes {
            out.extend_from_slice(&n.0);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Frontier, TreeError> {
        let bad = || TreeError::FrontierBytes(bytes.len());
        let (size, rest) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
        if rest.len() % 32 != 0 {
            return Err(bad());
        }
        let nodes = rest
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).map(Hash).map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        Frontier::from_parts(u64::from_be_bytes(*size), nodes)
    }
}

impl Frontier {
    /// A saved frontier checked against a signed head: `bytes` (from [`Frontier::to_bytes`],
    /// kept anywhere, trusted nowhere) restore the tree only if they give `size` and `root`,
    /// the size and root of a checkpoint whose signature was checked.
    pub fn restore(bytes: &[u8], size: u64, root: &Hash) -> Result<Frontier, TreeError> {
        let f = Frontier::from_bytes(bytes)?;
        if f.size != size || f.root() != *root {
            return Err(TreeError::NotTheCheckpoint {
                size,
                found_size: f.size,
            });
        }
        Ok(f)
    }
}

/// The compact range `[begin, end)`: the roots of the maximal aligned perfect subtrees that
/// cover those leaves, left to right. The publisher keeps one from the size a witness last
/// cosigned: with the [`Frontier`] at that size it answers every hash of the consistency proof
/// the witness needs ([`crate::tlog::proof::prove_consistency_from`]) without reading the
/// stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactRange {
    begin: u64,
    end: u64,
    /// (height, root), left to right; node i covers `[start, start + 2^height)`.
    nodes: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// The empty range at `begin`.
    pub fn new(begin: u64) -> CompactRange {
        CompactRange {
            begin,
            end: begin,
            nodes: Vec::new(),
        }
    }

    pub fn begin(&self) -> u64 {
        self.begin
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends the leaf at index `end`.
    pub fn append(&mut self, leaf: Hash) {
        let (mut height, mut index, mut hash) = (0u32, self.end, leaf);
        // A right child whose left sibling is the last node merges with it, up the tree.
        while index & 1 == 1 {
            match self.nodes.last() {
                Some(&(h, left)) if h == height => {
                    self.nodes.pop();
                    hash = node_hash(&left, &hash);
                    height += 1;
                    index >>= 1;
                }
                _ => break,
            }
        }
        self.nodes.push((height, hash));
        self.end += 1;
    }

    /// The nodes with the leaf range each covers, left to right.
    pub fn nodes(&self) -> impl Iterator<Item = (Range<u64>, Hash)> + '_ {
        let mut start = self.begin;
        self.nodes.iter().map(move |&(height, hash)| {
            let r = start..start + (1u64 << height);
            start = r.end;
            (r, hash)
        })
    }

    /// The RFC 6962 root of `range` if the range is exactly a run of this range's nodes (any
    /// subtree of the log that lies inside `[begin, end)` and ends at a node boundary).
    pub fn root_of(&self, range: Range<u64>) -> Option<Hash> {
        let inside: Vec<Hash> = self
            .nodes()
            .filter(|(r, _)| r.start >= range.start && r.end <= range.end)
            .map(|(_, h)| h)
            .collect();
        let covered: u64 = self
            .nodes()
            .filter(|(r, _)| r.start >= range.start && r.end <= range.end)
            .map(|(r, _)| r.end - r.start)
            .sum();
        if inside.is_empty() || covered != range.end - range.start {
            return None;
        }
        let mut rev = inside.iter().rev();
        let last = *rev.next()?;
        Some(rev.fold(last, |right, left| node_hash(left, &right)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// transparency-dev/merkle, testonly/constants.go (commit 417fb0c3), `LeafInputs()`: the
    /// leaves of the 8-leaf tree of Certificate Transparency's merkle_tree_test.
    pub const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// The same file's `RootHashes()`: the root at each size 0..=8.
    pub const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// The same file's `NodeHashes()` level 0: the leaf hashes.
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];

    /// The same file's `CompactTrees()`, as indexes into `NodeHashes()` (level, index): the
    /// frontier at each size 0..=8.
    const COMPACT: [&[(usize, usize)]; 9] = [
        &[],
        &[(0, 0)],
        &[(1, 0)],
        &[(1, 0), (0, 2)],
        &[(2, 0)],
        &[(2, 0), (0, 4)],
        &[(2, 0), (1, 2)],
        &[(2, 0), (1, 2), (0, 6)],
        &[(3, 0)],
    ];

    /// `NodeHashes()` levels 1 to 3.
    const NODES_ABOVE: [&[&str]; 3] = [
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    pub fn h(s: &str) -> Hash {
        Hash(hex(s).try_into().unwrap())
    }

    pub fn leaf_hashes() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&hex(l))).collect()
    }

    fn node(level: usize, index: usize) -> Hash {
        match level {
            0 => h(LEAF_HASHES[index]),
            l => h(NODES_ABOVE[l - 1][index]),
        }
    }

    #[test]
    fn leaf_hashes_roots_and_frontiers_are_the_published_ones() {
        assert_eq!(EMPTY_ROOT, leaf_hash_of_nothing());
        let leaves = leaf_hashes();
        for (leaf, want) in leaves.iter().zip(LEAF_HASHES) {
            assert_eq!(*leaf, h(want));
        }
        let mut f = Frontier::new();
        for size in 0..=8usize {
            assert_eq!(f.size(), size as u64);
            assert_eq!(f.root(), h(ROOTS[size]), "root at size {size}");
            let want: Vec<Hash> = COMPACT[size].iter().map(|&(l, i)| node(l, i)).collect();
            assert_eq!(f.nodes(), want.as_slice(), "frontier at size {size}");
            if size < 8 {
                f.append(leaves[size]);
            }
        }
    }

    fn leaf_hash_of_nothing() -> Hash {
        Hash(Sha256::digest(b"").into())
    }

    #[test]
    fn a_frontier_restores_from_its_bytes_and_from_its_range_roots() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        for (n, leaf) in leaves.iter().enumerate() {
            let saved = Frontier::from_bytes(&f.to_bytes()).unwrap();
            assert_eq!(saved, f);
            let parts: Vec<Hash> = Frontier::ranges(n as u64)
                .into_iter()
                .map(|r| Frontier::from_leaf_hashes(leaves[r.start as usize..r.end as usize].iter().copied()).root())
                .collect();
            assert_eq!(Frontier::from_parts(n as u64, parts).unwrap(), f);
            f.append(*leaf);
        }
        assert_eq!(
            Frontier::from_parts(3, vec![EMPTY_ROOT]),
            Err(TreeError::FrontierLength {
                size: 3,
                expected: 2,
                found: 1
            })
        );
        assert_eq!(Frontier::from_bytes(&[0; 7]), Err(TreeError::FrontierBytes(7)));
        assert_eq!(Frontier::from_bytes(&[0; 9]), Err(TreeError::FrontierBytes(9)));
        assert!(Frontier::from_bytes(&[0; 8]).unwrap().nodes().is_empty());
    }

    #[test]
    fn hashes_read_and_print_as_standard_base64() {
        let root = h(ROOTS[8]);
        assert_eq!(root.to_base64(), "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=");
        assert_eq!(Hash::from_base64(&root.to_string()), Ok(root));
        assert!(Hash::from_base64("ZG9uJ3QgY2FyZSAy").is_err());
        assert!(Hash::from_base64("not base64!").is_err());
    }

    #[test]
    fn a_saved_frontier_restores_only_against_its_checkpoint() {
        let f = Frontier::from_leaf_hashes(leaf_hashes());
        let saved = f.to_bytes();
        assert_eq!(Frontier::restore(&saved, 8, &h(ROOTS[8])), Ok(f));
        assert_eq!(
            Frontier::restore(&saved, 8, &h(ROOTS[7])),
            Err(TreeError::NotTheCheckpoint { size: 8, found_size: 8 })
        );
        assert!(Frontier::restore(&saved, 7, &h(ROOTS[8])).is_err());
    }

    #[test]
    fn a_compact_range_from_any_start_holds_the_maximal_aligned_subtrees() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let root =
            |r: Range<u64>| Frontier::from_leaf_hashes(leaves[r.start as usize..r.end as usize].iter().copied()).root();
        for begin in 0..40u64 {
            let mut c = CompactRange::new(begin);
            for end in begin + 1..70 {
                c.append(leaves[end as usize - 1]);
                assert_eq!((c.begin(), c.end()), (begin, end));
                let mut at = begin;
                for (r, hash) in c.nodes() {
                    assert_eq!(r.start, at);
                    let width = r.end - r.start;
                    assert!(width.is_power_of_two() && r.start % width == 0, "{r:?} is aligned");
                    assert_eq!(hash, root(r.clone()));
                    at = r.end;
                }
                assert_eq!(at, end);
                if begin == 0 {
                    assert_eq!(c.root_of(0..end), Some(root(0..end)));
                }
            }
        }
        let mut c = CompactRange::new(4);
        for l in &leaves[4..8] {
            c.append(*l);
        }
        assert_eq!(c.root_of(4..8), Some(root(4..8)));
        assert_eq!(c.root_of(4..6), None, "inside one node");
        assert_eq!(c.root_of(2..8), None, "beyond the range");
    }
}
