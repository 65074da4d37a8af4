//! Keys and signatures of C2SP signed notes (https://c2sp.org/signed-note): the log's Ed25519
//! note signature (type 0x01) and a witness's timestamped Ed25519 cosignature
//! (https://c2sp.org/tlog-cosignature, `cosignature/v1`, type 0x04).
//!
//! The note grammar (text, blank line, `— name base64(keyid || sig)` lines), key ids and
//! unknown-key handling are `signed_note`'s. What it lacks is the cosignature type: a
//! cosignature signs `cosignature/v1\ntime T\n` followed by the note text and carries the
//! 8-byte big-endian timestamp before the 64-byte signature, so [`KeyVerifier`] rebuilds that
//! message from the signature it is handed.
//!
//! Both sign with walguard's PKCS#8 Ed25519 keys ([`crate::event::Signer`]): the log with
//! `signing.key_file`, a witness with its `--key`. Key ids here are C2SP's 4-byte ids over
//! name, type and key, not walguard's 8-byte `Walguard-Key-Id`.

use std::fmt;

use base64::Engine;
use ed25519_dalek::{Verifier as _, VerifyingKey};

use crate::event::Signer;

/// The header line of the message a `cosignature/v1` signs.
const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error(
        "verifier key {0:?} is not `name+keyid+base64(type || key)` with an Ed25519 key of type 01 (a log) or 04 (a \
         witness)"
    )]
    BadVkey(String),
    #[error("verifier key {vkey:?} names key id {found:08x}, but its name and key give {computed:08x}")]
    VkeyId { vkey: String, found: u32, computed: u32 },
    #[error("key name {0:?} is empty or holds a space or a plus sign")]
    BadName(String),
}

/// What a key signs, by its C2SP signature type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// 0x01: Ed25519 over the note text; a log's checkpoint signature.
    Ed25519,
    /// 0x04: a timestamped Ed25519 checkpoint cosignature (`cosignature/v1`); a witness.
    CosignatureV1,
}

impl KeyKind {
    fn byte(self) -> u8 {
        match self {
            KeyKind::Ed25519 => 0x01,
            KeyKind::CosignatureV1 => 0x04,
        }
    }
}

/// A verifier key, `name+hex(keyid)+base64(type || public key)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Vkey {
    name: String,
    id: u32,
    kind: KeyKind,
    key: VerifyingKey,
}

impl fmt::Debug for Vkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vkey({self})")
    }
}

impl fmt::Display for Vkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut material = vec![self.kind.byte()];
        material.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.id,
            base64::engine::general_purpose::STANDARD.encode(material)
        )
    }
}

/// The C2SP key id: the first 4 bytes of SHA-256 over name, newline, type and key.
fn key_id(name: &str, kind: KeyKind, key: &VerifyingKey) -> u32 {
    let mut material = vec![kind.byte()];
    material.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &material)
}

impl Vkey {
    pub fn new(name: &str, kind: KeyKind, key: VerifyingKey) -> Result<Vkey, NoteError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(NoteError::BadName(name.to_owned()));
        }
        Ok(Vkey {
            name: name.to_owned(),
            id: key_id(name, kind, &key),
            kind,
            key,
        })
    }

    pub fn parse(text: &str) -> Result<Vkey, NoteError> {
        let bad = || NoteError::BadVkey(text.to_owned());
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if id_hex.len() != 8 || !signed_note::is_key_name_valid(name) {
            return Err(bad());
        }
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| bad())?;
        let material = base64::engine::general_purpose::STANDARD
            .decode(material)
            .map_err(|_| bad())?;
        let (kind, key) = match material.split_first() {
            Some((0x01, key)) => (KeyKind::Ed25519, key),
            Some((0x04, key)) => (KeyKind::CosignatureV1, key),
            _ => return Err(bad()),
        };
        let key = <[u8; 32]>::try_from(key).map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        let computed = key_id(name, kind, &key);
        if computed != id {
            return Err(NoteError::VkeyId {
                vkey: text.to_owned(),
                found: id,
                computed,
            });
        }
        Ok(Vkey {
            name: name.to_owned(),
            id,
            kind,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The note verifier for this key.
    pub fn verifier(&self) -> KeyVerifier {
        KeyVerifier(self.clone())
    }
}

/// A [`Vkey`] as `signed_note` verifies with it.
#[derive(Debug, Clone)]
pub struct KeyVerifier(Vkey);

impl signed_note::Verifier for KeyVerifier {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn key_id(&self) -> u32 {
        self.0.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (message, sig) = match self.0.kind {
            KeyKind::Ed25519 => (std::borrow::Cow::Borrowed(msg), sig),
            KeyKind::CosignatureV1 => {
                let Some((time, sig)) = sig.split_first_chunk::<8>() else {
                    return false;
                };
                let time = u64::from_be_bytes(*time);
                if time > i64::MAX as u64 {
                    return false;
                }
                (std::borrow::Cow::Owned(cosigned_message(time, msg)), sig)
            }
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.0.key.verify(&message, &sig).is_ok()
    }
}

/// What a `cosignature/v1` signs: the header line, the time line, then the checkpoint's note
/// text (its lines and final newline, no signature lines).
pub fn cosigned_message(timestamp: u64, note_text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(note_text.len() + 40);
    out.extend_from_slice(COSIGNATURE_HEADER.as_bytes());
    out.extend_from_slice(format!("time {timestamp}\n").as_bytes());
    out.extend_from_slice(note_text);
    out
}

/// The log's note signer: walguard's signing key under the log's origin (SPEC section 8).
pub struct CheckpointSigner<'k> {
    vkey: Vkey,
    signer: &'k Signer,
}

impl<'k> CheckpointSigner<'k> {
    pub fn new(origin: &str, signer: &'k Signer) -> Result<CheckpointSigner<'k>, NoteError> {
        Ok(CheckpointSigner {
            vkey: Vkey::new(origin, KeyKind::Ed25519, signer.verifying_key())?,
            signer,
        })
    }

    /// The log's verifier key, what a witness's `--log` and an auditor take.
    pub fn vkey(&self) -> &Vkey {
        &self.vkey
    }
}

impl signed_note::Signer for CheckpointSigner<'_> {
    fn name(&self) -> &str {
        &self.vkey.name
    }

    fn key_id(&self) -> u32 {
        self.vkey.id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.signer.sign_raw(msg).to_bytes().to_vec())
    }
}

/// A witness's cosigner: its own Ed25519 key under its name.
pub struct Cosigner {
    vkey: Vkey,
    signer: Signer,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("vkey", &self.vkey)
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    pub fn new(name: &str, signer: Signer) -> Result<Cosigner, NoteError> {
        Ok(Cosigner {
            vkey: Vkey::new(name, KeyKind::CosignatureV1, signer.verifying_key())?,
            signer,
        })
    }

    /// The witness's verifier key (type 04), what `[[audit.witnesses]] key` takes.
    pub fn vkey(&self) -> &Vkey {
        &self.vkey
    }

    /// The cosignature line (`— name base64(keyid || timestamp || signature)\n`) over a
    /// checkpoint's note text at `timestamp` (seconds since the epoch).
    pub fn cosign(&self, note_text: &[u8], timestamp: u64) -> String {
        let sig = self.signer.sign_raw(&cosigned_message(timestamp, note_text));
        let mut raw = Vec::with_capacity(76);
        raw.extend_from_slice(&self.vkey.id.to_be_bytes());
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!(
            "— {} {}\n",
            self.vkey.name,
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A verified cosignature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's key name.
    pub name: String,
    pub id: u32,
    /// When the witness signed, seconds since the epoch.
    pub timestamp: u64,
    /// The signature line as it stands in the note, newline included.
    pub line: String,
}

impl Cosignature {
    /// From a signature `signed_note` verified with a type-04 key.
    pub(crate) fn from_verified(sig: &signed_note::Signature) -> Option<Cosignature> {
        let (time, _) = sig.signature().split_first_chunk::<8>()?;
        Some(Cosignature {
            name: sig.name().to_owned(),
            id: sig.id(),
            timestamp: u64::from_be_bytes(*time),
            line: String::from_utf8_lossy(&sig.to_bytes()).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use signed_note::{Note, VerifierList};

    fn list(keys: &[&Vkey]) -> VerifierList {
        VerifierList::new(
            keys.iter()
                .map(|k| Box::new(k.verifier()) as Box<dyn signed_note::Verifier>)
                .collect(),
        )
    }

    /// C2SP signed-note.md, "Verifier keys" example (C2SP/C2SP commit 5ba5ee83): the vkey and
    /// the note it verifies.
    const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const C2SP_NOTE: &str = "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn the_c2sp_example_note_verifies_with_its_vkey_and_nothing_else_does() {
        let vkey = Vkey::parse(C2SP_VKEY).unwrap();
        assert_eq!(vkey.name(), "example.com/foo");
        assert_eq!(vkey.id(), 0x530d903a);
        assert_eq!(vkey.kind(), KeyKind::Ed25519);
        assert_eq!(vkey.to_string(), C2SP_VKEY);
        let note = Note::from_bytes(C2SP_NOTE.as_bytes()).unwrap();
        assert_eq!(note.to_bytes(), C2SP_NOTE.as_bytes(), "byte for byte");
        let (verified, _) = note.verify(&list(&[&vkey])).unwrap();
        assert_eq!(verified.len(), 1);

        let altered = C2SP_NOTE.replace("example message", "exemplary message");
        let note = Note::from_bytes(altered.as_bytes()).unwrap();
        assert!(matches!(
            note.verify(&list(&[&vkey])),
            Err(signed_note::NoteError::InvalidSignature { .. })
        ));
    }

    /// golang.org/x/mod/sumdb/note's package documentation (the example `signed_note` ports):
    /// the key `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz`
    /// (type 01, then the 32-byte Ed25519 seed), its vkey, and the note it signs.
    const PETER_SEED_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG_LINE: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    pub(crate) fn peter_signer() -> Signer {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(PETER_SEED_B64)
            .unwrap();
        assert_eq!(raw[0], 0x01);
        Signer::new(SigningKey::from_bytes(&raw[1..].try_into().unwrap()))
    }

    #[test]
    fn walguard_keys_sign_notes_byte_for_byte_as_the_go_reference_does() {
        let signer = peter_signer();
        let log = CheckpointSigner::new("PeterNeumann", &signer).unwrap();
        assert_eq!(log.vkey().to_string(), PETER_VKEY);
        let mut note = Note::new(PETER_TEXT.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&log]).unwrap();
        assert_eq!(
            String::from_utf8(note.to_bytes()).unwrap(),
            format!("{PETER_TEXT}\n{PETER_SIG_LINE}")
        );
    }

    /// C2SP tlog-cosignature.md (commit 5ba5ee83): the example's witness line and the message
    /// its signature covers. The witness's key is not published, so what is checked is the
    /// format: key id, timestamp and the signed message byte for byte.
    const C2SP_CHECKPOINT_TEXT: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const C2SP_COSIGNATURE_LINE: &str = "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
    const C2SP_COSIGNED_MESSAGE: &str = "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn the_c2sp_cosignature_example_has_the_format_we_write() {
        let sig = signed_note::Signature::from_bytes(C2SP_COSIGNATURE_LINE.as_bytes()).unwrap();
        assert_eq!(sig.name(), "witness.example.com/w1");
        assert_eq!(sig.signature().len(), 8 + 64, "timestamp then Ed25519 signature");
        let c = Cosignature::from_verified(&sig).unwrap();
        assert_eq!(c.timestamp, 1679315147);
        assert_eq!(format!("{C2SP_COSIGNATURE_LINE}\n"), c.line);
        assert_eq!(
            cosigned_message(c.timestamp, C2SP_CHECKPOINT_TEXT.as_bytes()),
            C2SP_COSIGNED_MESSAGE.as_bytes()
        );

        // Ours, at the same time over the same checkpoint, has the same shape and verifies.
        let witness = Cosigner::new("witness.example.com/w1", peter_signer()).unwrap();
        let line = witness.cosign(C2SP_CHECKPOINT_TEXT.as_bytes(), 1679315147);
        let ours = signed_note::Signature::from_bytes(line.trim_end().as_bytes()).unwrap();
        assert_eq!(ours.id(), witness.vkey().id());
        assert_eq!(&ours.signature()[..8], &sig.signature()[..8]);
        let vkey = Vkey::parse(&witness.vkey().to_string()).unwrap();
        assert_eq!(vkey.kind(), KeyKind::CosignatureV1);
        assert!(witness.vkey().to_string().split('+').nth(2).unwrap().starts_with('B'));
        let verifier = vkey.verifier();
        use signed_note::Verifier as _;
        assert!(verifier.verify(C2SP_CHECKPOINT_TEXT.as_bytes(), ours.signature()));
        assert!(!verifier.verify(
            b"example.com/behind-the-sofa\n20852164\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            ours.signature()
        ));
        // The timestamp is signed: moving it breaks the signature.
        let mut moved = ours.signature().to_vec();
        moved[7] ^= 1;
        assert!(!verifier.verify(C2SP_CHECKPOINT_TEXT.as_bytes(), &moved));
        // A log key (type 01) with the same name and key is another key with another id.
        let as_log = Vkey::new("witness.example.com/w1", KeyKind::Ed25519, *vkey.key()).unwrap();
        assert_ne!(as_log.id(), vkey.id());
    }

    #[test]
    fn malformed_vkeys_are_refused_naming_the_problem() {
        for bad in [
            "",
            "name",
            "name+530d903a",
            "name+530d90+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "na me+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+not-base64",
            "example.com/foo+530d903a+AgkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2kAA==",
        ] {
            assert!(matches!(Vkey::parse(bad), Err(NoteError::BadVkey(_))), "{bad:?}");
        }
        assert!(matches!(
            Vkey::parse("example.com/fo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"),
            Err(NoteError::VkeyId { found: 0x530d903a, .. })
        ));
        let signer = peter_signer();
        assert!(matches!(
            CheckpointSigner::new("walguard/1 2", &signer),
            Err(NoteError::BadName(_))
        ));
    }
}
