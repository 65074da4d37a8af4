//! The body of a C2SP `tlog-witness` `add-checkpoint` request (https://c2sp.org/tlog-witness):
//! `old N`, zero to 63 base64 consistency proof lines, an empty line, then the signed
//! checkpoint; and the `409 Conflict` answer's body, the witness's size and a newline
//! (`Content-Type: text/x.tlog.size`).

use super::tree::Hash;

/// The most proof lines a client may send (a consistency proof in a tree of up to 2^64 leaves).
pub const MAX_PROOF_LINES: usize = 63;

/// The media type of a `409 Conflict` answer.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("add-checkpoint body does not start with `old N` (N decimal, no leading zeros) and a newline")]
    OldSize,
    #[error("add-checkpoint body: proof line {0:?} is not a base64 SHA-256 hash")]
    ProofLine(String),
    #[error("add-checkpoint body has more than 63 proof lines")]
    TooManyLines,
    #[error("add-checkpoint body has no empty line before the checkpoint")]
    NoCheckpoint,
}

/// One `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size the client believes the witness has (0: none).
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: Vec<u8>,
}

/// A decimal with no leading zeros ("0" alone may be zero), as C2SP writes sizes.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl AddCheckpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&h.to_base64());
            out.push('\n');
        }
        out.push('\n');
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.checkpoint);
        out
    }

    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, RequestError> {
        let mut rest = body;
        let mut next_line = || -> Option<&[u8]> {
            let at = rest.iter().position(|&b| b == b'\n')?;
            let (line, tail) = rest.split_at(at);
            rest = &tail[1..];
            Some(line)
        };
        let old = next_line()
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or(RequestError::OldSize)?;
        let mut proof = Vec::new();
        loop {
            let line = next_line().ok_or(RequestError::NoCheckpoint)?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(RequestError::TooManyLines);
            }
            let text = String::from_utf8_lossy(line);
            proof.push(Hash::from_base64(&text).map_err(|_| RequestError::ProofLine(text.into_owned()))?);
        }
        Ok(AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: rest.to_vec(),
        })
    }
}

/// The body of a `409 Conflict` answer: the witness's size.
pub fn size_body(size: u64) -> String {
    format!("{size}\n")
}

pub fn parse_size_body(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_suffix('\n')
        .and_then(parse_decimal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C2SP tlog-witness.md (C2SP/C2SP commit 5ba5ee83), the example request body.
    const C2SP_REQUEST: &str = "old 20852014\n\
        PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
        jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\
        5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n\
        /6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\
        \n\
        example.com/behind-the-sofa\n\
        20852163\n\
        CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
        \n\
        — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\
        — example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n";

    #[test]
    fn the_c2sp_example_request_parses_and_writes_back_byte_for_byte() {
        let req = AddCheckpoint::parse(C2SP_REQUEST.as_bytes()).unwrap();
        assert_eq!(req.old_size, 20852014);
        assert_eq!(req.proof.len(), 4);
        assert_eq!(req.proof[3].to_base64(), "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=");
        assert!(req.checkpoint.starts_with(b"example.com/behind-the-sofa\n20852163\n"));
        assert_eq!(req.to_bytes(), C2SP_REQUEST.as_bytes());
        let cp = crate::tlog::SignedCheckpoint::parse(&req.checkpoint).unwrap();
        assert_eq!(cp.checkpoint().size(), 20852163);
    }

    #[test]
    fn malformed_requests_are_refused() {
        for (body, want) in [
            ("", RequestError::OldSize),
            ("old\n\n", RequestError::OldSize),
            ("old 01\n\n", RequestError::OldSize),
            ("old -1\n\n", RequestError::OldSize),
            ("new 1\n\n", RequestError::OldSize),
            ("old 1\n", RequestError::NoCheckpoint),
            ("old 1\nAAAA\n\n", RequestError::ProofLine("AAAA".into())),
        ] {
            assert_eq!(AddCheckpoint::parse(body.as_bytes()), Err(want), "{body:?}");
        }
        let line = format!("{}\n", crate::tlog::EMPTY_ROOT.to_base64());
        let body = format!("old 1\n{}\n", line.repeat(64));
        assert_eq!(AddCheckpoint::parse(body.as_bytes()), Err(RequestError::TooManyLines));
        let body = format!("old 1\n{}\n", line.repeat(63));
        assert_eq!(AddCheckpoint::parse(body.as_bytes()).unwrap().proof.len(), 63);
        assert_eq!(AddCheckpoint::parse(b"old 0\n\n").unwrap().checkpoint, b"");
    }

    #[test]
    fn sizes_are_decimal_without_leading_zeros() {
        assert_eq!(parse_size_body(b"20852163\n"), Some(20852163));
        assert_eq!(parse_size_body(b"0\n"), Some(0));
        for bad in [
            &b"20852163"[..],
            b"020\n",
            b"\n",
            b"1 \n",
            b"+1\n",
            b"18446744073709551616\n",
        ] {
            assert_eq!(parse_size_body(bad), None, "{bad:?}");
        }
        assert_eq!(size_body(7), "7\n");
    }
}
