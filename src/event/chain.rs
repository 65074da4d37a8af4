//! The chain's rules (SPEC section 2), in one place for the writer and every reader: an
//! event is signed when nothing is ready behind it or when `MAX_UNSIGNED_RUN` unsigned events
//! precede it, so a reader finds a signed event among any `SIGNED_WINDOW` consecutive ones.

/// At most this many unsigned events precede a signed one.
pub const MAX_UNSIGNED_RUN: u32 = 255;

/// How far back from the newest message a signed one must be found: a longer unsigned run
/// was not written by walguard.
pub const SIGNED_WINDOW: u64 = MAX_UNSIGNED_RUN as u64 + 1;
