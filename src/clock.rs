//! The wall clock as walguard writes it: microseconds since the Unix epoch, the unit of an
//! event's `time` for snapshot groups and markers, and of the standby status update's clock.
//! One place, so every stage reads the same clock the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch (0 for a clock set before 1970).
pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
