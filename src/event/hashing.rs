//! Column hashing for personal data (`hash_columns`, `hashing.salt_file`).
//!
//! A hashed column's value is replaced, before the event is built and signed, by a keyed hash
//! of its text, so consumers can tell that a value changed, and join on equal values, without
//! seeing it. This is about what an event says, not about who wrote it, so it lives apart from
//! `signing`: the two share only the rule for secret files (owner-only permissions) and its
//! error type.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use sha2::Sha256;

use super::signing::{refuse_loose_permissions, KeyError};
use crate::config::HashingConfig;

/// The keyed hash that replaces personal data in events: HMAC-SHA-256 over the column's
/// text with a secret salt, `hmac-sha256:` + standard base64. Equal values give equal hashes,
/// so consumers see that a value changed without seeing it.
#[derive(Clone)]
pub struct ColumnHasher {
    salt: Vec<u8>,
}

impl std::fmt::Debug for ColumnHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColumnHasher(<secret>)")
    }
}

impl ColumnHasher {
    pub fn new(salt: Vec<u8>) -> Self {
        ColumnHasher { salt }
    }

    /// The hasher for `hashing.salt_file`, or none when no salt is configured (an event with
    /// a hashed column is then refused when it is built, so nothing goes out in the clear).
    /// Loaded once and shared (`Arc`) by every session's builder, the snapshot and
    /// `reconcile`, so they all hash alike.
    pub fn from_config(cfg: &HashingConfig) -> Result<Option<Arc<ColumnHasher>>, KeyError> {
        cfg.salt_file
            .as_deref()
            .map(|path| ColumnHasher::load(path).map(Arc::new))
            .transpose()
    }

    /// Loads the salt, refusing files readable by group or others and salts under 16 bytes.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        refuse_loose_permissions(path)?;
        let salt = fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        if salt.len() < 16 {
            return Err(KeyError::Format {
                path: path.to_owned(),
                expected: "salt",
                reason: format!("{} bytes; use at least 16 random bytes", salt.len()),
            });
        }
        Ok(ColumnHasher::new(salt))
    }

    pub fn hash(&self, value: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.salt).expect("HMAC takes keys of any size");
        mac.update(value);
        format!(
            "hmac-sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HMAC_GOLDEN: &str = "W3AWzV7ie014Es/0s/ISyfQHEr9hUmipcDHtAgf+yb0=";

    #[test]
    fn column_hash_golden() {
        // Independent oracle: `printf 'a@x' | openssl dgst -sha256 -hmac 'salt-of-16-bytes!' -binary | base64`.
        let h = ColumnHasher::new(b"salt-of-16-bytes!".to_vec());
        assert_eq!(h.hash(b"a@x"), h.hash(b"a@x"));
        assert_ne!(h.hash(b"a@x"), h.hash(b"b@x"));
        assert!(h.hash(b"a@x").starts_with("hmac-sha256:"));
        assert_eq!(h.hash(b"a@x"), format!("hmac-sha256:{}", HMAC_GOLDEN));
    }
}
