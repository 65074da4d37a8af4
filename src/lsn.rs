//! `Lsn`: a position in PostgreSQL's write-ahead log.
//!
//! PostgreSQL prints an LSN as two hexadecimal halves, `16/B374D848`; PostgreSQL 19 zero-pads the
//! low half (`0/016B3748`), so parsing accepts both. Ordering is plain integer ordering.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Appends the LSN as [`Display`](fmt::Display) prints it (`16/B374D848`), without the
    /// formatting machinery: it is written into every event.
    pub fn write_to(self, out: &mut Vec<u8>) {
        write_hex((self.0 >> 32) as u32, out);
        out.push(b'/');
        write_hex(self.0 as u32, out);
    }
}

/// Uppercase hexadecimal without leading zeros, as PostgreSQL prints LSN halves.
fn write_hex(v: u32, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let nibbles = (32 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        out.push(DIGITS[(v >> (i * 4)) as usize & 0xF]);
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves such as 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
    }

    #[test]
    fn writes_as_it_displays() {
        for v in [
            0,
            1,
            0xF,
            0x10,
            0x16_B374_D848,
            0x16B_3748,
            0xFFFF_FFFF,
            1 << 32,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            Lsn(v).write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), Lsn(v).to_string(), "{v:#x}");
        }
    }

    #[test]
    fn parses_both_paddings() {
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("0/016B3748".parse::<Lsn>().unwrap(), Lsn(0x16B_3748));
        for bad in ["", "/", "1/", "/1", "x/1", "1/1/1", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }
}
