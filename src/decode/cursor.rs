//! A checked reader over a `Bytes` buffer: every read says what it was reading when the input
//! ends early, so a malformed message becomes an error that names the field.

use bytes::{Buf, Bytes};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated message: {0} is missing")]
    Truncated(&'static str),
    #[error("unknown {what} tag {tag:#04x} ({char:?})", char = *tag as char)]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{what} has invalid length {len}")]
    Length { what: &'static str, len: i64 },
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
}

pub(crate) struct Cursor {
    buf: Bytes,
}

impl Cursor {
    pub fn new(buf: Bytes) -> Self {
        Cursor { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u8())
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_i16())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u32())
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_i32())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        if self.buf.remaining() < 8 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_u64())
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        if self.buf.remaining() < 8 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.get_i64())
    }

    /// `len` bytes, without copying.
    pub fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < len {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.split_to(len))
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let raw = self.buf.split_to(nul);
        self.buf.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Utf8(what))
    }

    pub fn rest(&mut self) -> Bytes {
        self.buf.split_to(self.buf.remaining())
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}
