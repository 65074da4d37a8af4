//! Checkpoints (https://c2sp.org/tlog-checkpoint): the origin, the tree size in decimal and the
//! base64 root, one per line, as a signed note signed by the log under its origin and cosigned
//! by witnesses; and the `data` of the `walguard.checkpoint` event that carries one in the
//! stream (SPEC section 8).
//!
//! The body's grammar (no leading zeros in the size, a 32-byte root, optional non-empty
//! extension lines, which walguard never writes) is `tlog_tiles::Checkpoint`'s; the note around
//! it is `signed_note`'s.

use serde::{Deserialize, Serialize};
use signed_note::{Note, VerifierList};

use super::note::{CheckpointSigner, Cosignature, KeyKind, Vkey};
use super::tree::Hash;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint origin {0:?} is empty or holds a space or a plus sign")]
    BadOrigin(String),
    #[error("not a signed note (text, a blank line, then `— name signature` lines): {0}")]
    Note(String),
    #[error("the note is not a checkpoint (origin, size in decimal, base64 root, one per line)")]
    Body,
    #[error("checkpoint of {origin} at size {size} is not signed by log key {key}")]
    NotSigned { origin: String, size: u64, key: String },
    #[error("checkpoint of {origin} at size {size} has a signature by {key} that does not verify")]
    BadSignature { origin: String, size: u64, key: String },
    #[error("checkpoint of {origin}: key {key} is a witness key, not a log key (type 01)")]
    NotALogKey { origin: String, key: String },
    #[error("checkpoint of {origin}: log key {key} is named for another origin")]
    OtherOrigin { origin: String, key: String },
    #[error("signature lines {0:?} are not `— name base64` lines")]
    BadLines(String),
    #[error(
        "checkpoint event data is not {{\"op\":\"checkpoint\",\"size\":N,\"root\":\"...\",\"note\":\"...\"}}: {0}"
    )]
    Data(String),
    #[error("checkpoint event data says size {size} and root {root}, but its note says size {note_size} and root {note_root}")]
    DataMismatch {
        size: u64,
        root: Hash,
        note_size: u64,
        note_root: Hash,
    },
}

/// A checkpoint's body: what the log states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    /// Extension lines as received, each ending in a newline; empty in walguard's own.
    extension: String,
}

impl Checkpoint {
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Checkpoint, CheckpointError> {
        if !signed_note::is_key_name_valid(origin) {
            return Err(CheckpointError::BadOrigin(origin.to_owned()));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extension: String::new(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash {
        self.root
    }

    /// The note text: `origin\nsize\nroot\n` (and any extension lines).
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n{}", self.origin, self.size, self.root, self.extension)
    }

    /// Parses a note text strictly (nothing after the body).
    pub fn parse(text: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let c = tlog_tiles::Checkpoint::from_bytes(text).map_err(|_| CheckpointError::Body)?;
        Ok(Checkpoint {
            origin: c.origin().to_owned(),
            size: c.size(),
            root: Hash(c.hash().0),
            extension: c.extension().to_owned(),
        })
    }
}

/// A checkpoint as a signed note: the body and every signature line it carries.
#[derive(Debug)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: Note,
}

impl SignedCheckpoint {
    /// Signs the checkpoint with the log's key (the signer's name is the origin).
    pub fn sign(checkpoint: Checkpoint, signer: &CheckpointSigner<'_>) -> Result<SignedCheckpoint, CheckpointError> {
        if signer.vkey().name() != checkpoint.origin {
            return Err(CheckpointError::OtherOrigin {
                origin: checkpoint.origin.clone(),
                key: signer.vkey().to_string(),
            });
        }
        let mut note =
            Note::new(checkpoint.text().as_bytes(), &[]).map_err(|e| CheckpointError::Note(e.to_string()))?;
        note.add_sigs(&[signer])
            .map_err(|e| CheckpointError::Note(e.to_string()))?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Parses a signed checkpoint note; verifies nothing.
    pub fn parse(bytes: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
        let note = Note::from_bytes(bytes).map_err(|e| CheckpointError::Note(e.to_string()))?;
        let checkpoint = Checkpoint::parse(note.text())?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The note text (what every signature covers).
    pub fn text(&self) -> &[u8] {
        self.note.text()
    }

    /// The whole signed note, signature lines included.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.note.to_bytes()
    }

    /// The note as text (a note is UTF-8 by construction).
    pub fn to_note_string(&self) -> String {
        String::from_utf8_lossy(&self.note.to_bytes()).into_owned()
    }

    /// Checks the log's signature: one by a key in `logs` named for this origin must be present
    /// and every one of theirs must verify; other signatures (witnesses) are ignored.
    pub fn verify_log(&self, logs: &[Vkey]) -> Result<(), CheckpointError> {
        let origin = &self.checkpoint.origin;
        let keys: Vec<&Vkey> = logs.iter().filter(|k| k.name() == origin).collect();
        let described = || {
            let named: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            if named.is_empty() {
                format!("(none configured for origin {origin})")
            } else {
                named.join(", ")
            }
        };
        if let Some(k) = keys.iter().find(|k| k.kind() != KeyKind::Ed25519) {
            return Err(CheckpointError::NotALogKey {
                origin: origin.clone(),
                key: k.to_string(),
            });
        }
        let list = VerifierList::new(
            keys.iter()
                .map(|k| Box::new(k.verifier()) as Box<dyn signed_note::Verifier>)
                .collect(),
        );
        match self.note.verify(&list) {
            Ok(_) => Ok(()),
            Err(signed_note::NoteError::InvalidSignature { name, id }) => Err(CheckpointError::BadSignature {
                origin: origin.clone(),
                size: self.checkpoint.size,
                key: format!("{name}+{id:08x}"),
            }),
            Err(_) => Err(CheckpointError::NotSigned {
                origin: origin.clone(),
                size: self.checkpoint.size,
                key: described(),
            }),
        }
    }

    /// The cosignatures by `witnesses` that verify. A line by a known witness that does not
    /// verify is an error (a forged or damaged cosignature), lines by unknown keys are ignored.
    pub fn cosignatures(&self, witnesses: &[Vkey]) -> Result<Vec<Cosignature>, CheckpointError> {
        let list = VerifierList::new(
            witnesses
                .iter()
                .filter(|k| k.kind() == KeyKind::CosignatureV1)
                .map(|k| Box::new(k.verifier()) as Box<dyn signed_note::Verifier>)
                .collect(),
        );
        match self.note.verify(&list) {
            Ok((verified, _)) => Ok(verified.iter().filter_map(Cosignature::from_verified).collect()),
            Err(signed_note::NoteError::UnverifiedNote) => Ok(Vec::new()),
            Err(signed_note::NoteError::InvalidSignature { name, id }) => Err(CheckpointError::BadSignature {
                origin: self.checkpoint.origin.clone(),
                size: self.checkpoint.size,
                key: format!("{name}+{id:08x}"),
            }),
            Err(e) => Err(CheckpointError::Note(e.to_string())),
        }
    }

    /// Appends signature lines (a witness's answer, or cosignatures kept from it).
    pub fn add_signature_lines(&mut self, lines: &str) -> Result<(), CheckpointError> {
        if lines.is_empty() {
            return Ok(());
        }
        if !lines.ends_with('\n') || lines.contains("\n\n") {
            return Err(CheckpointError::BadLines(lines.to_owned()));
        }
        let mut bytes = self.note.to_bytes();
        bytes.extend_from_slice(lines.as_bytes());
        self.note = Note::from_bytes(&bytes).map_err(|_| CheckpointError::BadLines(lines.to_owned()))?;
        Ok(())
    }
}

/// The log keys a checkpoint of `origin` may be signed with: every key of the keyring, named
/// for the origin (a C2SP key id covers the name, so one signing key is one vkey per origin).
pub fn log_vkeys(keyring: &crate::event::Keyring, origin: &str) -> Vec<Vkey> {
    keyring
        .keys()
        .filter_map(|key| Vkey::new(origin, KeyKind::Ed25519, *key).ok())
        .collect()
}

/// The `data` of a `walguard.checkpoint` event (SPEC section 8):
/// `{"op":"checkpoint","size":N,"root":"<base64>","note":"<signed note>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointData {
    pub size: u64,
    pub root: Hash,
    /// The whole signed note, cosignature lines included.
    pub note: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataWire {
    op: String,
    size: u64,
    root: String,
    note: String,
}

impl CheckpointData {
    /// The data of the event that publishes this checkpoint.
    pub fn new(signed: &SignedCheckpoint) -> CheckpointData {
        CheckpointData {
            size: signed.checkpoint.size,
            root: signed.checkpoint.root,
            note: signed.to_note_string(),
        }
    }

    /// Compact JSON, keys in SPEC's order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = DataWire {
            op: "checkpoint".to_owned(),
            size: self.size,
            root: self.root.to_base64(),
            note: self.note.clone(),
        };
        serde_json::to_vec(&wire).expect("a struct of strings and an integer always serializes")
    }

    /// Parses the data and checks that the note states the same size and root.
    pub fn from_bytes(bytes: &[u8]) -> Result<CheckpointData, CheckpointError> {
        let wire: DataWire = serde_json::from_slice(bytes).map_err(|e| CheckpointError::Data(e.to_string()))?;
        if wire.op != "checkpoint" {
            return Err(CheckpointError::Data(format!("op is {:?}", wire.op)));
        }
        CheckpointData::from_fields(wire.size, &wire.root, wire.note)
    }

    /// The data from its fields as stored (the root in base64), checked as `from_bytes` does.
    pub fn from_fields(size: u64, root: &str, note: String) -> Result<CheckpointData, CheckpointError> {
        let root = Hash::from_base64(root).map_err(|e| CheckpointError::Data(e.to_string()))?;
        let data = CheckpointData { size, root, note };
        let signed = data.signed()?;
        if signed.checkpoint.size != data.size || signed.checkpoint.root != data.root {
            return Err(CheckpointError::DataMismatch {
                size: data.size,
                root: data.root,
                note_size: signed.checkpoint.size,
                note_root: signed.checkpoint.root,
            });
        }
        Ok(data)
    }

    /// The note, parsed (not verified).
    pub fn signed(&self) -> Result<SignedCheckpoint, CheckpointError> {
        SignedCheckpoint::parse(self.note.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::super::note::{Cosigner, Vkey};
    use super::super::tree::tests::{h, ROOTS};
    use super::*;
    use crate::event::Signer;
    use ed25519_dalek::SigningKey;

    /// C2SP tlog-checkpoint.md (C2SP/C2SP commit 5ba5ee83): the example checkpoint. Its key is
    /// not published; what is checked is that it parses to what it says and writes back byte
    /// for byte.
    const C2SP_CHECKPOINT: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
    /// C2SP tlog-cosignature.md: the same checkpoint with a witness's cosignature.
    const C2SP_COSIGNED: &str = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";

    fn signer(seed: u8) -> Signer {
        Signer::new(SigningKey::from_bytes(&[seed; 32]))
    }

    #[test]
    fn the_c2sp_examples_parse_and_write_back_byte_for_byte() {
        let c = SignedCheckpoint::parse(C2SP_CHECKPOINT.as_bytes()).unwrap();
        assert_eq!(c.checkpoint().origin(), "example.com/behind-the-sofa");
        assert_eq!(c.checkpoint().size(), 20852163);
        assert_eq!(
            c.checkpoint().root().to_base64(),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );
        assert_eq!(c.to_bytes(), C2SP_CHECKPOINT.as_bytes());
        assert_eq!(c.checkpoint().text().as_bytes(), c.text());

        let mut with = SignedCheckpoint::parse(C2SP_CHECKPOINT.as_bytes()).unwrap();
        let witness_line = C2SP_COSIGNED.lines().last().unwrap();
        with.add_signature_lines(&format!("{witness_line}\n")).unwrap();
        assert_eq!(with.to_bytes(), C2SP_COSIGNED.as_bytes());
        assert_eq!(
            SignedCheckpoint::parse(C2SP_COSIGNED.as_bytes()).unwrap().to_bytes(),
            C2SP_COSIGNED.as_bytes()
        );
    }

    #[test]
    fn what_walguard_signs_verifies_and_a_forgery_is_named() {
        let log_key = signer(7);
        let log = CheckpointSigner::new("walguard/7/app/walguard", &log_key).unwrap();
        let body = Checkpoint::new("walguard/7/app/walguard", 8, h(ROOTS[8])).unwrap();
        let signed = SignedCheckpoint::sign(body, &log).unwrap();
        let note = signed.to_note_string();
        assert_eq!(
            note.lines().take(4).collect::<Vec<_>>(),
            [
                "walguard/7/app/walguard",
                "8",
                "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=",
                ""
            ]
        );
        assert!(note.lines().nth(4).unwrap().starts_with("— walguard/7/app/walguard "));

        let logs = [log.vkey().clone()];
        let mut parsed = SignedCheckpoint::parse(note.as_bytes()).unwrap();
        parsed.verify_log(&logs).unwrap();

        // A witness cosigns; its line verifies, an unknown witness's line is ignored.
        let witness = Cosigner::new("audit-witness", signer(9)).unwrap();
        let stranger = Cosigner::new("stranger", signer(10)).unwrap();
        let line = witness.cosign(parsed.text(), 1_800_000_000);
        parsed.add_signature_lines(&line).unwrap();
        parsed
            .add_signature_lines(&stranger.cosign(parsed.text(), 1_800_000_001))
            .unwrap();
        parsed.verify_log(&logs).unwrap();
        let cos = parsed.cosignatures(&[witness.vkey().clone()]).unwrap();
        assert_eq!(cos.len(), 1);
        assert_eq!(cos[0].name, "audit-witness");
        assert_eq!(cos[0].timestamp, 1_800_000_000);
        assert_eq!(cos[0].line, line);
        assert!(parsed.cosignatures(&[]).unwrap().is_empty());

        // Another key under the log's name: not signed by the configured key.
        let other = signer(8);
        let impostor = CheckpointSigner::new("walguard/7/app/walguard", &other).unwrap();
        let forged = SignedCheckpoint::sign(parsed.checkpoint().clone(), &impostor).unwrap();
        assert!(matches!(
            forged.verify_log(&logs),
            Err(CheckpointError::NotSigned { size: 8, .. })
        ));

        // The right key id with a wrong signature: a bad signature, named.
        let mut tampered = note.replace("\n8\n", "\n9\n");
        tampered = tampered.replace("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=", &h(ROOTS[7]).to_base64());
        let tampered = SignedCheckpoint::parse(tampered.as_bytes()).unwrap();
        let err = tampered.verify_log(&logs).unwrap_err();
        assert!(matches!(err, CheckpointError::BadSignature { size: 9, .. }), "{err}");

        // A forged cosignature: the witness's name and key id, someone else's signature.
        let fake = Cosigner::new("audit-witness", signer(11)).unwrap();
        let fake_line = fake.cosign(parsed.text(), 1_800_000_000);
        let real_id = format!("{:08x}", witness.vkey().id());
        let forged_line = {
            use base64::Engine;
            let b64 = fake_line.trim_end().rsplit(' ').next().unwrap();
            let mut raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            raw[..4].copy_from_slice(&witness.vkey().id().to_be_bytes());
            format!(
                "— audit-witness {}\n",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        let mut with_forgery = SignedCheckpoint::parse(note.as_bytes()).unwrap();
        with_forgery.add_signature_lines(&forged_line).unwrap();
        let err = with_forgery.cosignatures(&[witness.vkey().clone()]).unwrap_err();
        assert!(err.to_string().contains(&real_id), "{err}");
        assert!(matches!(err, CheckpointError::BadSignature { .. }));

        // A witness key is no log key.
        assert!(matches!(
            SignedCheckpoint::parse(note.as_bytes())
                .unwrap()
                .verify_log(&[Vkey::new(
                    "walguard/7/app/walguard",
                    KeyKind::CosignatureV1,
                    log_key.verifying_key()
                )
                .unwrap()]),
            Err(CheckpointError::NotALogKey { .. })
        ));
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for bad in [
            "",
            "no signatures\n",
            "o\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
            "o\n08\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n— o AAAAAAE=\n",
            "o\n8\nshort=\n\n— o AAAAAAE=\n",
            "o\n8\n\n— o AAAAAAE=\n",
        ] {
            assert!(SignedCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Checkpoint::new("has space", 1, h(ROOTS[1])),
            Err(CheckpointError::BadOrigin(_))
        ));
        let mut c = SignedCheckpoint::parse(C2SP_CHECKPOINT.as_bytes()).unwrap();
        for bad in ["— x\n", "no dash AAAA\n", "— w AAAAAAE=", "\n\n"] {
            assert!(
                matches!(c.add_signature_lines(bad), Err(CheckpointError::BadLines(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn checkpoint_event_data_round_trips_and_checks_its_note() {
        let log_key = signer(7);
        let log = CheckpointSigner::new("walguard/7/app/walguard", &log_key).unwrap();
        let signed = SignedCheckpoint::sign(
            Checkpoint::new("walguard/7/app/walguard", 8, h(ROOTS[8])).unwrap(),
            &log,
        )
        .unwrap();
        let data = CheckpointData::new(&signed);
        let bytes = data.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"op":"checkpoint","size":8,"root":"XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=","note":"walguard/7/app/walguard\n8\n"#),
            "{text}"
        );
        assert_eq!(CheckpointData::from_bytes(&bytes).unwrap(), data);
        assert_eq!(data.signed().unwrap().to_bytes(), signed.to_bytes());

        let wrong_size = text.replace(r#""size":8"#, r#""size":7"#);
        assert!(matches!(
            CheckpointData::from_bytes(wrong_size.as_bytes()),
            Err(CheckpointError::DataMismatch {
                size: 7,
                note_size: 8,
                ..
            })
        ));
        for bad in [
            text.replace(r#""op":"checkpoint""#, r#""op":"watermark""#),
            text.replace(r#""size":8,"#, r#""size":8,"extra":1,"#),
            text.replace("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\",", "short\","),
            "[]".to_owned(),
        ] {
            assert!(CheckpointData::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
