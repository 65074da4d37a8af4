//! Who may look (SPEC section 9): the bearer token of `console.token_file`, given as an
//! `Authorization: Bearer` header or through the login form, which sets an HttpOnly,
//! SameSite=Strict session cookie; or, with TLS, a client certificate the configured CA
//! issued (checked by rustls before any request is read). Comparisons run in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The name of the session cookie.
pub const COOKIE: &str = "walguard_console";

/// The token, kept as two digests: what a caller presents is hashed and compared with them,
/// so the token itself is never compared byte by byte nor put in a cookie.
#[derive(Clone)]
pub struct Token {
    token: [u8; 32],
    session: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    pub fn new(token: &str) -> Result<Token, String> {
        if token.len() < 16 {
            return Err("is shorter than 16 characters: write a long random token, e.g. `openssl rand -hex 32`".into());
        }
        Ok(Token {
            token: Sha256::digest(token.as_bytes()).into(),
            session: session_of(token),
        })
    }

    /// Reads `console.token_file`: one line, readable by its owner only (as the signing key).
    pub fn load(path: &Path) -> Result<Token, String> {
        let say = |m: String| format!("console.token_file {}: {m}", path.display());
        crate::event::signing::refuse_loose_permissions(path).map_err(|e| say(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| say(e.to_string()))?;
        Token::new(text.trim()).map_err(say)
    }

    /// Whether `presented` is the token.
    pub fn is(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&digest, &self.token)
    }

    /// The cookie's value: a digest of the token, not the token.
    pub fn session_value(&self) -> String {
        hex(&self.session)
    }

    /// Whether a request's `Cookie` header carries the session cookie.
    pub fn cookie_ok(&self, header: &str) -> bool {
        header
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .any(|(_, value)| constant_time_eq(value.as_bytes(), hex(&self.session).as_bytes()))
    }

    /// Whether an `Authorization` header carries the token.
    pub fn bearer_ok(&self, header: &str) -> bool {
        header.strip_prefix("Bearer ").is_some_and(|t| self.is(t.trim()))
    }

    /// The `Set-Cookie` header of a successful login; `Secure` when served over TLS.
    pub fn set_cookie(&self, secure: bool) -> String {
        let secure = if secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
            self.session_value()
        )
    }
}

fn session_of(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"walguard console session\0");
    h.update(token.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time that depends on the lengths only, never on where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether an address is loopback, where the console may serve without access control.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const T: &str = "0123456789abcdef-token";

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"xbc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_bearer_and_cookie() {
        let t = Token::new(T).unwrap();
        assert!(t.is(T));
        assert!(!t.is("0123456789abcdef-tokeN"));
        assert!(t.bearer_ok(&format!("Bearer {T}")));
        assert!(!t.bearer_ok(T));
        assert!(!t.bearer_ok("Bearer wrong"));
        let cookie = t.set_cookie(false);
        assert_eq!(
            cookie,
            format!(
                "walguard_console={}; Path=/; HttpOnly; SameSite=Strict",
                t.session_value()
            )
        );
        assert!(t.set_cookie(true).ends_with("; Secure"));
        assert!(!cookie.contains(T), "the cookie carries the token itself");
        let sent = format!("other=1; {COOKIE}={}", t.session_value());
        assert!(t.cookie_ok(&sent));
        assert!(!t.cookie_ok(&format!("{COOKIE}={T}")));
        assert!(!t.cookie_ok("other=1"));
        assert!(format!("{t:?}") == "Token(..)");
    }

    #[test]
    fn short_tokens_and_loose_files_are_refused() {
        assert!(Token::new("short").unwrap_err().contains("16 characters"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.token");
        std::fs::write(&path, format!("{T}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::load(&path).unwrap_err();
        assert!(err.contains("console.token_file") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::load(&path).unwrap().is(T));
    }
}
