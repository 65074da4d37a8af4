//! Generic JSON writers for the event's bytes: strings with serde_json's escaping, unsigned
//! and zero-padded integers, and RFC 3339 times, appended to a reused buffer without
//! intermediate strings. `value` (a column's JSON), `shape` and `data` (an event's `data`) and
//! `envelope` (the CloudEvents attributes) write with them; none of them knows PostgreSQL.

/// A JSON string with serde_json's escaping, written without an intermediate `String`.
#[inline]
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A JSON array of strings: `["a","b"]`.
pub fn write_str_array<'a>(items: impl IntoIterator<Item = &'a str>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (n, s) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_str(s, out);
    }
    out.push(b']');
}

/// Appends microseconds since the Unix epoch as RFC 3339 UTC with microseconds
/// (`2026-11-28T09:48:11.767852Z`).
pub fn write_rfc3339_micros(unix_micros: i64, out: &mut Vec<u8>) {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000) as u64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u64;
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        write_padded(y as u64, 4, out);
    } else {
        // Years outside 0..=9999 keep their sign and all their digits.
        use std::io::Write;
        let _ = write!(out, "{y:04}");
    }
    out.push(b'-');
    write_padded(m.into(), 2, out);
    out.push(b'-');
    write_padded(d.into(), 2, out);
    out.push(b'T');
    write_padded(sod / 3600, 2, out);
    out.push(b':');
    write_padded(sod % 3600 / 60, 2, out);
    out.push(b':');
    write_padded(sod % 60, 2, out);
    out.push(b'.');
    write_padded(micros, 6, out);
    out.push(b'Z');
}

/// Appends `v` in decimal.
#[inline]
pub fn write_uint(v: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `v` in decimal, zero-padded on the left to `width` digits (more if it needs more).
#[inline]
pub fn write_padded(v: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v).as_bytes();
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339_micros(unix_micros: i64) -> String {
        let mut out = Vec::new();
        write_rfc3339_micros(unix_micros, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1_795_859_291_767_852), "2026-11-28T09:48:11.767852Z");
        assert_eq!(rfc3339_micros(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
        // PostgreSQL timestamps reach past 9999.
        assert_eq!(rfc3339_micros(253_402_300_800_000_000), "10000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn padded_numbers() {
        let padded = |v, w| {
            let mut out = Vec::new();
            write_padded(v, w, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(padded(7, 20), "00000000000000000007");
        assert_eq!(padded(u64::MAX, 20), "18446744073709551615");
        assert_eq!(padded(0, 2), "00");
        assert_eq!(padded(12345, 4), "12345");
        let mut out = Vec::new();
        write_uint(0, &mut out);
        write_uint(731, &mut out);
        assert_eq!(out, b"0731");
    }
}
