//! Keys and signatures (SPEC section 2, "Signature and chain").
//!
//! Signed bytes are DSSE's pre-authentication encoding (PAE) of the exact payload bytes, with
//! payload type `application/cloudevents+json`, so any DSSE verifier can check an exported
//! event without re-serializing JSON. Private keys are PKCS#8 PEM (what
//! `openssl genpkey -algorithm ed25519` writes); a key file readable by group or others is
//! refused, as ssh refuses such keys.
//!
//! PKCS#8 has two forms for Ed25519 (RFC 8410 section 7): v1 holds only the private key, v2
//! (RFC 5958 OneAsymmetricKey) adds the public key in `[1]`. OpenSSL 3, Python's
//! `cryptography` and most signers read only v1, so `keygen` writes v1. Walguard 0.1 wrote
//! v2; those files still load, and their public key must be the private key's.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::config::SigningConfig;

pub const PAYLOAD_TYPE: &str = "application/cloudevents+json";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is readable by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} is not an Ed25519 {expected} PEM key ({reason})")]
    Format {
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error(
        "key file {path} holds a public key that does not belong to its private key (the file is damaged or was \
         assembled from two keys): restore it from a backup, or make a new key with `walguard keygen`"
    )]
    Mismatch { path: PathBuf },
    #[error("key file {path} already exists: choose another path or remove it first")]
    Exists { path: PathBuf },
    #[error("no randomness available to generate a key: {0}")]
    Random(String),
}

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`.
pub fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    write!(out, "DSSEv1 {} {} {} ", PAYLOAD_TYPE.len(), PAYLOAD_TYPE, payload.len()).expect("vec write");
    out.extend_from_slice(payload);
    out
}

/// Refuses a secret file (a private key, the hashing salt) that group or others can read, as
/// ssh refuses such keys: a secret others could copy no longer proves who wrote an event.
pub(crate) fn refuse_loose_permissions(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Lowercase hex of the first 8 bytes of SHA-256 over the raw 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Signer { key, key_id }
    }

    /// Loads a PKCS#8 PEM private key (v1 or v2), refusing files that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        refuse_loose_permissions(path)?;
        let pem = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Signer::new(private_key_from_pem(path, &pem)?))
    }

    /// Writes a new random key as PKCS#8 v1 PEM with mode 0600; never overwrites a file.
    pub fn generate(path: &Path) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        let pem = private_key_pem(&key);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.to_owned() },
                _ => KeyError::Io {
                    path: path.to_owned(),
                    source,
                },
            })?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Signer::new(key))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("an Ed25519 public key always encodes")
    }

    /// The Ed25519 signature over `message` itself, for formats that define their own signed
    /// bytes: C2SP signed notes and cosignatures sign the note text, not a DSSE PAE.
    pub fn sign_raw(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// Standard base64 of the Ed25519 signature over `pae(payload)`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig = self.key.sign(&pae(payload));
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
    }
}

/// The private key as PKCS#8 v1 PEM, byte for byte what `openssl genpkey -algorithm ed25519`
/// writes. (`SigningKey::to_pkcs8_pem` writes v2, which OpenSSL 3 refuses as "unsupported".)
fn private_key_pem(key: &SigningKey) -> impl std::ops::Deref<Target = String> {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .expect("an Ed25519 private key always encodes")
}

/// Reads PKCS#8 v1 or v2. A v2 file's public key is compared with the one derived from its
/// private key: signing with a key whose stated public key is another would make events that
/// the stated key cannot verify.
fn private_key_from_pem(path: &Path, pem: &str) -> Result<SigningKey, KeyError> {
    let pair = KeypairBytes::from_pkcs8_pem(pem).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        expected: "PKCS#8 private",
        reason: e.to_string(),
    })?;
    let key = SigningKey::from_bytes(&pair.secret_key);
    match &pair.public_key {
        Some(public) if public.as_ref() != key.verifying_key().as_bytes() => {
            Err(KeyError::Mismatch { path: path.to_owned() })
        }
        _ => Ok(key),
    }
}

/// Public keys by key id, for verification (several ids after a key rotation).
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: HashMap<String, VerifyingKey>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signed with unknown key id {0}")]
    UnknownKey(String),
    #[error("signature is not 64 bytes of standard base64")]
    Malformed,
    #[error("signature does not match the payload")]
    Mismatch,
}

impl Keyring {
    /// The keys a stream written under this configuration may be signed with: the signing
    /// key's public key (when it was loaded) and every `signing.trusted_keys` entry, so a
    /// stream signed before a key rotation still verifies and resumes.
    pub fn from_config(cfg: &SigningConfig, signer: Option<&Signer>) -> Result<Keyring, KeyError> {
        let mut ring = Keyring::default();
        if let Some(s) = signer {
            ring.add(s.verifying_key());
        }
        for path in &cfg.trusted_keys {
            ring.add_pem_file(path)?;
        }
        Ok(ring)
    }

    pub fn add(&mut self, key: VerifyingKey) {
        self.keys.insert(key_id(&key), key);
    }

    pub fn add_pem_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let pem = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Format {
            path: path.to_owned(),
            expected: "SPKI public",
            reason: e.to_string(),
        })?;
        self.add(key);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    pub fn verify(&self, key_id: &str, signature_b64: &str, payload: &[u8]) -> Result<(), SignatureError> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SignatureError::UnknownKey(key_id.to_owned()))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(signature_b64)
            .map_err(|_| SignatureError::Malformed)?;
        let sig = Signature::from_slice(&raw).map_err(|_| SignatureError::Malformed)?;
        key.verify(&pae(payload), &sig).map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fixed test key.
    const SECRET: [u8; 32] = [
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49,
        0xc5, 0x69, 0x7b, 0x7b, 0x3a, 0x7b, 0x64, 0x6f, 0x5c, 0x6f, 0x49, 0x47, 0x57, 0x9b,
    ];

    #[test]
    fn pae_golden() {
        assert_eq!(pae(b"{}"), b"DSSEv1 28 application/cloudevents+json 2 {}".to_vec());
    }

    #[test]
    fn key_id_and_signature_golden() {
        let signer = Signer::new(SigningKey::from_bytes(&SECRET));
        // Independent oracle: `openssl pkey -pubout -outform DER | tail -c 32 | sha256sum`.
        assert_eq!(signer.key_id(), "cf4b869eab15a6b4");
        let sig = signer.sign(b"{}");
        let mut ring = Keyring::default();
        ring.add(signer.verifying_key());
        assert_eq!(ring.verify(signer.key_id(), &sig, b"{}"), Ok(()));
        assert_eq!(
            ring.verify(signer.key_id(), &sig, b"{ }"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ring.verify("0000000000000000", &sig, b"{}"),
            Err(SignatureError::UnknownKey("0000000000000000".into()))
        );
        assert_eq!(
            ring.verify(signer.key_id(), "abc", b"{}"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn keygen_writes_0600_and_refuses_loose_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let made = Signer::generate(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let loaded = Signer::load(&path).unwrap();
        assert_eq!(loaded.key_id(), made.key_id());
        assert!(matches!(Signer::generate(&path), Err(KeyError::Exists { .. })));

        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let err = Signer::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let pub_path = dir.path().join("k.pub");
        fs::write(&pub_path, made.public_key_pem()).unwrap();
        let mut ring = Keyring::default();
        ring.add_pem_file(&pub_path).unwrap();
        ring.verify(made.key_id(), &made.sign(b"x"), b"x").unwrap();
    }

    #[test]
    fn loads_openssl_style_pkcs8() {
        // `openssl genpkey -algorithm ed25519` output for the RFC 8032 test key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpe3s6e2RvXG9JR1eb\n-----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        fs::write(&path, pem).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert_eq!(Signer::load(&path).unwrap().key_id(), "cf4b869eab15a6b4");
    }

    /// PKCS#8 v1, written by `openssl genpkey -algorithm ed25519` (OpenSSL 3.0.19).
    const V1_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIK3AA+FKAeerCWADNCjn7J/lFpXMkqv32kWXLBpFJrrg\n\
        -----END PRIVATE KEY-----\n";
    /// `openssl pkey -in v1.pem -pubout`.
    const V1_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEAa5EMOpjZeEQDeh8j9h8z4Tuo8HOlF5VMnWtVjIPaqjk=\n\
        -----END PUBLIC KEY-----\n";

    /// PKCS#8 v2 (public key in `[1]`), written by `walguard keygen` of commit 624a951, with
    /// the public key PEM and key id it printed.
    const V2_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MFECAQEwBQYDK2VwBCIEIE/5lWzW+6damB+m5+I2lUZ5vHoEcAJ3XyAR3AMhGEI6\n\
        gSEA7ziE0GQCJcdSb1coyzi+nZSJ/4pKWxZwH5u70MgWhHA=\n\
        -----END PRIVATE KEY-----\n";
    const V2_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEA7ziE0GQCJcdSb1coyzi+nZSJ/4pKWxZwH5u70MgWhHA=\n\
        -----END PUBLIC KEY-----\n";

    /// `V2_PEM` with the public key of `V1_PEM` in `[1]`: a file assembled from two keys.
    const V2_WRONG_PUBLIC_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MFECAQEwBQYDK2VwBCIEIE/5lWzW+6damB+m5+I2lUZ5vHoEcAJ3XyAR3AMhGEI6\n\
        gSEAa5EMOpjZeEQDeh8j9h8z4Tuo8HOlF5VMnWtVjIPaqjk=\n\
        -----END PRIVATE KEY-----\n";

    fn key_file(dir: &tempfile::TempDir, name: &str, pem: &str) -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, pem).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn writes_pkcs8_v1_as_openssl_does_and_reads_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = Signer::load(&key_file(&dir, "v1.pem", V1_PEM)).unwrap();
        assert_eq!(v1.public_key_pem(), V1_PUBLIC_PEM);
        assert_eq!(v1.key_id(), "53d6e571760e1032");
        // What keygen writes for this key is byte for byte what openssl wrote.
        assert_eq!(private_key_pem(&v1.key).as_str(), V1_PEM);

        let v2 = Signer::load(&key_file(&dir, "v2.pem", V2_PEM)).unwrap();
        assert_eq!(v2.public_key_pem(), V2_PUBLIC_PEM);
        assert_eq!(v2.key_id(), "b08973e4dbb375b7");
        let rewritten = private_key_pem(&v2.key);
        assert!(
            rewritten.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAw"),
            "{}",
            rewritten.as_str()
        );
    }

    #[test]
    fn a_v2_key_whose_public_key_is_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, "mixed.pem", V2_WRONG_PUBLIC_PEM);
        let err = Signer::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Mismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("mixed.pem") && msg.contains("does not belong to its private key"),
            "{msg}"
        );
        assert!(msg.contains("walguard keygen"), "{msg}");
    }

    /// Runs the real `openssl` (scripts/bootstrap installs it); its absence is a failure.
    fn openssl(args: &[&str]) -> String {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("running openssl: install it (scripts/bootstrap does)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn openssl_reads_keygen_keys_and_walguard_reads_openssl_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("walguard.key");
        let made = Signer::generate(&ours).unwrap();
        let ours = ours.to_str().unwrap();
        openssl(&["pkey", "-in", ours, "-noout"]);
        // `keygen` prints `public_key_pem()`; openssl derives the same from the file.
        assert_eq!(openssl(&["pkey", "-in", ours, "-pubout"]), made.public_key_pem());

        let theirs = dir.path().join("openssl.key");
        let theirs_str = theirs.to_str().unwrap();
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", theirs_str]);
        fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let loaded = Signer::load(&theirs).unwrap();
        assert_eq!(
            loaded.public_key_pem(),
            openssl(&["pkey", "-in", theirs_str, "-pubout"])
        );
    }
}
