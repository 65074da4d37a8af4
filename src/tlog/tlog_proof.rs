//! C2SP `tlog-proof` (https://c2sp.org/tlog-proof): an offline-verifiable proof that one
//! entry is in the log, made of the entry's index, its inclusion proof and the checkpoint
//! (with its cosignatures) that the proof is against:
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! [extra <base64>]
//! index <decimal>
//! <base64 hash>          (zero or more, from the leaf's sibling up to the root's child)
//!
//! <the checkpoint, verbatim>
//! ```

use base64::Engine;

use super::checkpoint::{CheckpointError, SignedCheckpoint};
use super::proof::{verify_inclusion, ProofError};
use super::tree::{leaf_hash, Hash};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, thiserror::Error)]
pub enum TlogProofError {
    #[error("not a c2sp.org/tlog-proof@v1 proof: {0}")]
    Format(String),
    #[error("its checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the inclusion proof does not verify: {0}")]
    Inclusion(#[from] ProofError),
}

/// One entry's proof of inclusion.
#[derive(Debug)]
pub struct TlogProof {
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
    /// The entry's zero-based index (stream sequence - 1).
    pub index: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: SignedCheckpoint,
}

impl TlogProof {
    pub fn to_bytes(&self) -> Vec<u8> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut out = format!("{HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", b64.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            out.push_str(&h.to_base64());
            out.push('\n');
        }
        out.push('\n');
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.checkpoint.to_bytes());
        bytes
    }

    pub fn parse(bytes: &[u8]) -> Result<TlogProof, TlogProofError> {
        let bad = |m: &str| TlogProofError::Format(m.to_owned());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad(&format!("the first line is not {HEADER}")));
        }
        let mut line = lines.next().ok_or_else(|| bad("no index line"))?;
        let mut extra = None;
        if let Some(data) = line.strip_prefix("extra ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| bad("the extra line is not base64"))?;
            extra = Some(decoded);
            line = lines.next().ok_or_else(|| bad("no index line"))?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(super::add_checkpoint::parse_decimal)
            .ok_or_else(|| bad(&format!("{line:?} is not `index N` (decimal, no leading zeros)")))?;
        let proof = lines
            .map(|l| Hash::from_base64(l).map_err(|_| bad(&format!("{l:?} is not a base64 SHA-256 hash"))))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoint = SignedCheckpoint::parse(checkpoint.as_bytes())?;
        Ok(TlogProof {
            extra,
            index,
            proof,
            checkpoint,
        })
    }

    /// Checks that `entry` (the message payload) is leaf `index` of the checkpoint's tree.
    /// The checkpoint's signatures are the caller's to check (it knows the keys).
    pub fn verify_entry(&self, entry: &[u8]) -> Result<(), TlogProofError> {
        let c = self.checkpoint.checkpoint();
        verify_inclusion(self.index, c.size(), &leaf_hash(entry), &self.proof, &c.root())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::Checkpoint;
    use super::super::note::CheckpointSigner;
    use super::super::proof::prove_inclusion;
    use super::super::tree::Frontier;
    use super::*;
    use crate::event::Signer;

    /// C2SP tlog-proof.md's example, its lines up to the checkpoint (whose signatures the
    /// document abbreviates, so it is not a note that parses).
    const C2SP_HEAD: &str = "c2sp.org/tlog-proof@v1\nextra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ\nindex 73894\ngSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=\nB95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=\nEKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=\nRoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=\nAHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=\n\n";

    fn entries() -> Vec<Vec<u8>> {
        (0..13).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    fn proof_of(index: u64, extra: Option<Vec<u8>>) -> TlogProof {
        let key = Signer::new(ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
        let leaves: Vec<Hash> = entries().iter().map(|e| leaf_hash(e)).collect();
        let root = Frontier::from_leaf_hashes(leaves.iter().copied()).root();
        let signer = CheckpointSigner::new("example.test/log", &key).unwrap();
        let checkpoint =
            SignedCheckpoint::sign(Checkpoint::new("example.test/log", 13, root).unwrap(), &signer).unwrap();
        TlogProof {
            extra,
            index,
            proof: prove_inclusion(index, 13, leaves).unwrap(),
            checkpoint,
        }
    }

    #[test]
    fn the_c2sp_example_layout_is_ours() {
        // Our writer, given the example's extra, index and hashes, writes its lines exactly.
        let mut p = proof_of(0, None);
        let b64 = &base64::engine::general_purpose::STANDARD;
        p.extra = Some(
            b64.decode("YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ")
                .unwrap(),
        );
        p.index = 73894;
        p.proof = C2SP_HEAD
            .lines()
            .skip(3)
            .take_while(|l| !l.is_empty())
            .map(|l| Hash::from_base64(l).unwrap())
            .collect();
        let bytes = p.to_bytes();
        assert!(
            bytes.starts_with(C2SP_HEAD.as_bytes()),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let back = TlogProof::parse(&bytes).unwrap();
        assert_eq!(back.index, 73894);
        assert_eq!(back.proof.len(), 5);
        assert_eq!(back.extra, p.extra);
    }

    #[test]
    fn a_proof_round_trips_and_proves_its_entry_and_no_other() {
        for index in [0, 5, 12] {
            let p = proof_of(index, None);
            let back = TlogProof::parse(&p.to_bytes()).unwrap();
            assert_eq!(back.to_bytes(), p.to_bytes());
            back.verify_entry(&entries()[index as usize]).unwrap();
            assert!(back.verify_entry(b"entry 99").is_err());
        }
        let mut wrong = proof_of(5, None);
        wrong.index = 6;
        assert!(wrong.verify_entry(&entries()[5]).is_err());
    }

    #[test]
    fn malformed_proofs_are_named() {
        let good = String::from_utf8(proof_of(3, None).to_bytes()).unwrap();
        for (bad, says) in [
            (good.replacen("@v1", "@v2", 1), "first line"),
            (good.replacen("index 3", "index 03", 1), "not `index N`"),
            (good.replacen("index 3\n", "index 3\nnot-base64!\n", 1), "not a base64"),
            (good.replace("\n\n", "\n"), "empty line"),
        ] {
            let e = TlogProof::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
