//! Value mapping: pgoutput text values to JSON, per SPEC section 2's table.
//!
//! The replication session pins `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `IntervalStyle=postgres` and `bytea_output=hex`, so every text form handled here is the one
//! those settings produce. Values are written straight into the event buffer; nothing here
//! allocates per value except base64 and array unescaping. Errors never include the value
//! itself (row values must not reach logs). The JSON writers they share with the rest of the
//! event are in `json`.

use base64::Engine;
use serde_json::value::RawValue;
use tokio_postgres::types::{Kind, Type};

use super::json::write_str;

/// How a column's text is mapped to JSON; resolved once per column when a Relation arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    /// int2, int4, int8, oid: an exact JSON integer.
    Integer,
    /// float4, float8: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
    Float,
    /// timestamp without time zone: ISO 8601 with `T`.
    Timestamp,
    /// timestamptz: RFC 3339 UTC with microseconds and `Z`.
    Timestamptz,
    /// json, jsonb: embedded verbatim.
    Json,
    /// bytea: standard base64.
    Bytea,
    /// Everything printed as a string, exactly as PostgreSQL prints it (numeric, text, uuid,
    /// date, time, interval, ranges, composites, enums, unknown types ...).
    Text,
    Array {
        element: Box<ValueKind>,
        delimiter: u8,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind} value is not in the expected text form ({reason})")]
pub struct ValueError {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn bad(kind: &'static str, reason: &'static str) -> ValueError {
    ValueError { kind, reason }
}

impl ValueKind {
    /// The mapping of a built-in type, or `None` for types the catalog must resolve (OIDs of
    /// enums, domains, composites and user-defined arrays).
    pub fn builtin(oid: u32) -> Option<ValueKind> {
        let ty = Type::from_oid(oid)?;
        Some(Self::of_type(&ty))
    }

    fn of_type(ty: &Type) -> ValueKind {
        if let Kind::Array(element) = ty.kind() {
            return ValueKind::Array {
                delimiter: if *element == Type::BOX { b';' } else { b',' },
                element: Box::new(Self::of_type(element)),
            };
        }
        match *ty {
            Type::BOOL => ValueKind::Bool,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => ValueKind::Integer,
            Type::FLOAT4 | Type::FLOAT8 => ValueKind::Float,
            Type::TIMESTAMP => ValueKind::Timestamp,
            Type::TIMESTAMPTZ => ValueKind::Timestamptz,
            Type::JSON | Type::JSONB => ValueKind::Json,
            Type::BYTEA => ValueKind::Bytea,
            _ => ValueKind::Text,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            ValueKind::Bool => "bool",
            ValueKind::Integer => "integer",
            ValueKind::Float => "float",
            ValueKind::Timestamp => "timestamp",
            ValueKind::Timestamptz => "timestamptz",
            ValueKind::Json => "json",
            ValueKind::Bytea => "bytea",
            ValueKind::Text => "text",
            ValueKind::Array { .. } => "array",
        }
    }

    /// Appends the JSON for one value's text form to `out`.
    pub fn write_json(&self, text: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
        let s = std::str::from_utf8(text).map_err(|_| bad(self.name(), "not UTF-8"))?;
        match self {
            ValueKind::Bool => match s {
                "t" => out.extend_from_slice(b"true"),
                "f" => out.extend_from_slice(b"false"),
                _ => return Err(bad("bool", "expected t or f")),
            },
            ValueKind::Integer => {
                if !is_json_integer(s) {
                    return Err(bad("integer", "expected decimal digits"));
                }
                out.extend_from_slice(s.as_bytes());
            }
            ValueKind::Float => match s {
                "NaN" | "Infinity" | "-Infinity" => write_str(s, out),
                _ if is_json_number(s) => out.extend_from_slice(s.as_bytes()),
                _ => return Err(bad("float", "not a number")),
            },
            ValueKind::Timestamp => write_timestamp(s, out),
            ValueKind::Timestamptz => write_timestamptz(s, out)?,
            ValueKind::Json => {
                let raw: &RawValue = serde_json::from_str(s).map_err(|_| bad("json", "not valid JSON"))?;
                out.extend_from_slice(raw.get().as_bytes());
            }
            ValueKind::Bytea => {
                let hex = s
                    .strip_prefix("\\x")
                    .ok_or(bad("bytea", "expected hex output (\\x...)"))?;
                let bytes = decode_hex(hex).ok_or(bad("bytea", "invalid hex digits"))?;
                out.push(b'"');
                let mut b64 = String::with_capacity(bytes.len().div_ceil(3) * 4);
                base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut b64);
                out.extend_from_slice(b64.as_bytes());
                out.push(b'"');
            }
            ValueKind::Text => write_str(s, out),
            ValueKind::Array { element, delimiter } => {
                ArrayParser::new(s, *delimiter, element).write(out)?;
            }
        }
        Ok(())
    }
}

fn is_json_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'))
}

/// The JSON number grammar (RFC 8259 section 6).
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == int_start || (b[int_start] == b'0' && i - int_start > 1) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == frac {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp {
            return false;
        }
    }
    i == b.len()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let b = hex.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// `2026-11-29 09:48:11.767852` -> `2026-11-29T09:48:11.767852`. `infinity` and BC dates
/// (which ISO 8601 strings in JSON cannot carry unambiguously) stay as PostgreSQL prints them.
fn write_timestamp(s: &str, out: &mut Vec<u8>) {
    if s.len() >= 19 && s.as_bytes()[10] == b' ' && !s.ends_with(" BC") {
        let mut owned = s.to_owned();
        owned.replace_range(10..11, "T");
        write_str(&owned, out);
    } else {
        write_str(s, out);
    }
}

/// `2026-11-29 09:48:11.7678+00` -> `2026-11-29T09:48:11.767800Z` (always six fraction
/// digits, as the event `time` attribute). The session's TimeZone is UTC, so any other
/// offset means the session settings were not applied and is an error.
fn write_timestamptz(s: &str, out: &mut Vec<u8>) -> Result<(), ValueError> {
    if s == "infinity" || s == "-infinity" || s.ends_with(" BC") {
        write_str(s, out);
        return Ok(());
    }
    let body = s
        .strip_suffix("+00")
        .ok_or(bad("timestamptz", "expected a UTC offset (+00)"))?;
    // The year has four digits up to 9999 and more after (PostgreSQL goes to 294276): the
    // date is everything before the space.
    let shape = || bad("timestamptz", "expected YYYY-MM-DD HH:MM:SS");
    let (date, time) = body.split_once(' ').ok_or_else(shape)?;
    let d = date.as_bytes();
    let year_digits = d.len().checked_sub(6).filter(|&n| n >= 4).ok_or_else(shape)?;
    let date_ok = d.iter().enumerate().all(|(i, &c)| {
        if i == year_digits || i == year_digits + 3 {
            c == b'-'
        } else {
            c.is_ascii_digit()
        }
    });
    let t = time.as_bytes();
    let time_ok = t.len() >= 8
        && t[..8].iter().enumerate().all(|(i, &c)| {
            if i == 2 || i == 5 {
                c == b':'
            } else {
                c.is_ascii_digit()
            }
        });
    if !date_ok || !time_ok {
        return Err(shape());
    }
    // Bytes 0..8 of the time are ASCII (checked above), so 8 is a character boundary.
    let frac = match &time[8..] {
        "" => "",
        f => f
            .strip_prefix('.')
            .filter(|d| d.len() <= 6 && d.bytes().all(|c| c.is_ascii_digit()))
            .ok_or(bad("timestamptz", "invalid fraction of a second"))?,
    };
    out.push(b'"');
    out.extend_from_slice(d);
    out.push(b'T');
    out.extend_from_slice(&t[..8]);
    out.push(b'.');
    out.extend_from_slice(frac.as_bytes());
    out.extend(std::iter::repeat_n(b'0', 6 - frac.len()));
    out.extend_from_slice(b"Z\"");
    Ok(())
}

/// PostgreSQL's array output (`array_out`): `{a,"b c",NULL,{1,2}}`, optionally prefixed by
/// dimension bounds (`[0:1]={1,2}`). Elements are quoted when they contain special
/// characters, with backslash escapes inside quotes; an unquoted `NULL` is SQL NULL.
struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
    delimiter: u8,
    element: &'a ValueKind,
    scratch: Vec<u8>,
}

impl<'a> ArrayParser<'a> {
    fn new(s: &'a str, delimiter: u8, element: &'a ValueKind) -> Self {
        ArrayParser {
            s: s.as_bytes(),
            pos: 0,
            delimiter,
            element,
            scratch: Vec::new(),
        }
    }

    fn write(mut self, out: &mut Vec<u8>) -> Result<(), ValueError> {
        if self.s.first() == Some(&b'[') {
            let eq = self
                .s
                .iter()
                .position(|&c| c == b'=')
                .ok_or(bad("array", "dimension bounds without '='"))?;
            self.pos = eq + 1;
        }
        self.array(out, 0)?;
        if self.pos != self.s.len() {
            return Err(bad("array", "trailing characters"));
        }
        Ok(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), ValueError> {
        if depth > 6 {
            return Err(bad("array", "more than 6 dimensions"));
        }
        if self.s.get(self.pos) != Some(&b'{') {
            return Err(bad("array", "expected '{'"));
        }
        self.pos += 1;
        out.push(b'[');
        if self.s.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            match self.s.get(self.pos) {
                Some(b'{') => self.array(out, depth + 1)?,
                Some(b'"') => {
                    self.quoted()?;
                    self.element_json(out)?;
                }
                Some(_) => {
                    let start = self.pos;
                    while let Some(&c) = self.s.get(self.pos) {
                        if c == self.delimiter || c == b'}' {
                            break;
                        }
                        self.pos += 1;
                    }
                    let raw = &self.s[start..self.pos];
                    if raw.eq_ignore_ascii_case(b"NULL") {
                        out.extend_from_slice(b"null");
                    } else {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(raw);
                        self.element_json(out)?;
                    }
                }
                None => return Err(bad("array", "unterminated")),
            }
            match self.s.get(self.pos) {
                Some(&c) if c == self.delimiter => {
                    self.pos += 1;
                    out.push(b',');
                }
                Some(b'}') => {
                    self.pos += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(bad("array", "expected a delimiter or '}'")),
            }
        }
    }

    fn quoted(&mut self) -> Result<(), ValueError> {
        self.pos += 1;
        self.scratch.clear();
        loop {
            match self.s.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    let c = *self.s.get(self.pos + 1).ok_or(bad("array", "unterminated escape"))?;
                    self.scratch.push(c);
                    self.pos += 2;
                }
                Some(&c) => {
                    self.scratch.push(c);
                    self.pos += 1;
                }
                None => return Err(bad("array", "unterminated quoted element")),
            }
        }
    }

    fn element_json(&mut self, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let text = std::mem::take(&mut self.scratch);
        let result = self.element.write_json(&text, out);
        self.scratch = text;
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    fn json(oid: u32, text: &str) -> String {
        let mut out = Vec::new();
        ValueKind::builtin(oid)
            .unwrap()
            .write_json(text.as_bytes(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fails(oid: u32, text: &str) -> bool {
        ValueKind::builtin(oid)
            .unwrap()
            .write_json(text.as_bytes(), &mut Vec::new())
            .is_err()
    }

    #[test]
    fn golden_scalars() {
        let cases: &[(u32, &str, &str)] = &[
            (16, "t", "true"),
            (16, "f", "false"),
            (21, "-32768", "-32768"),
            (23, "42", "42"),
            (20, "-9223372036854775808", "-9223372036854775808"),
            (26, "4294967295", "4294967295"),
            (700, "1.5", "1.5"),
            (701, "0.30000000000000004", "0.30000000000000004"),
            (701, "1e+100", "1e+100"),
            (701, "-0", "-0"),
            (701, "NaN", "\"NaN\""),
            (701, "Infinity", "\"Infinity\""),
            (700, "-Infinity", "\"-Infinity\""),
            (1700, "12.30", "\"12.30\""),
            (1700, "NaN", "\"NaN\""),
            (790, "$1,234.50", "\"$1,234.50\""),
            (25, "a \"quoted\"\n\\ line", "\"a \\\"quoted\\\"\\n\\\\ line\""),
            (1043, "héllo", "\"héllo\""),
            (1042, "ab  ", "\"ab  \""),
            (19, "name", "\"name\""),
            (18, "c", "\"c\""),
            (
                2950,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"",
            ),
            (869, "192.168.0.1/24", "\"192.168.0.1/24\""),
            (650, "10.0.0.0/8", "\"10.0.0.0/8\""),
            (829, "08:00:2b:01:02:03", "\"08:00:2b:01:02:03\""),
            (
                1186,
                "1 year 2 mons 3 days 04:05:06",
                "\"1 year 2 mons 3 days 04:05:06\"",
            ),
            (1560, "101", "\"101\""),
            (142, "<a>b</a>", "\"<a>b</a>\""),
            (3614, "'a' 'b'", "\"'a' 'b'\""),
            (3904, "[1,10)", "\"[1,10)\""),
            (1082, "2026-11-29", "\"2026-11-29\""),
            (1083, "09:48:11.767852", "\"09:48:11.767852\""),
            (1266, "09:48:11+02", "\"09:48:11+02\""),
            (1114, "2026-11-29 09:48:11.767852", "\"2026-11-29T09:48:11.767852\""),
            (1114, "infinity", "\"infinity\""),
            (1184, "2026-11-29 09:48:11.767852+00", "\"2026-11-29T09:48:11.767852Z\""),
            (1184, "2026-11-29 09:48:11.7+00", "\"2026-11-29T09:48:11.700000Z\""),
            (1184, "2026-11-29 09:48:11+00", "\"2026-11-29T09:48:11.000000Z\""),
            // Past 9999 PostgreSQL prints more year digits; they are kept (the envelope's
            // `time` does the same).
            (1184, "10000-01-01 00:00:00+00", "\"10000-01-01T00:00:00.000000Z\""),
            (
                1184,
                "294276-12-31 23:59:59.999999+00",
                "\"294276-12-31T23:59:59.999999Z\"",
            ),
            (1184, "infinity", "\"infinity\""),
            (1184, "-infinity", "\"-infinity\""),
            (114, "{\"b\": 1,  \"a\": [1, 2]}", "{\"b\": 1,  \"a\": [1, 2]}"),
            (3802, "{\"a\": null}", "{\"a\": null}"),
            (3802, "\"s\"", "\"s\""),
            (17, "\\x", "\"\""),
            (17, "\\xdeadbeef", "\"3q2+7w==\""),
        ];
        for (oid, text, want) in cases {
            assert_eq!(json(*oid, text), *want, "oid {oid} text {text:?}");
        }
    }

    #[test]
    fn golden_arrays() {
        let cases: &[(u32, &str, &str)] = &[
            (1007, "{1,2,NULL}", "[1,2,null]"),
            (1007, "{}", "[]"),
            (1007, "{{1,2},{3,4}}", "[[1,2],[3,4]]"),
            (1007, "[0:1]={5,6}", "[5,6]"),
            (
                1009,
                "{a,\"b c\",\"NULL\",NULL,\"q\\\"x\\\\\"}",
                "[\"a\",\"b c\",\"NULL\",null,\"q\\\"x\\\\\"]",
            ),
            (1000, "{t,f}", "[true,false]"),
            (1022, "{1.5,NaN,-Infinity}", "[1.5,\"NaN\",\"-Infinity\"]"),
            (1231, "{1.10,NaN}", "[\"1.10\",\"NaN\"]"),
            (3807, "{\"{\\\"a\\\": 1}\",\"[1, 2]\"}", "[{\"a\": 1},[1, 2]]"),
            (1001, "{\"\\\\xdead\"}", "[\"3q0=\"]"),
            (
                1185,
                "{\"2026-11-29 09:48:11.767852+00\"}",
                "[\"2026-11-29T09:48:11.767852Z\"]",
            ),
            (1020, "{(1,1),(0,0);(2,2),(1,1)}", "[\"(1,1),(0,0)\",\"(2,2),(1,1)\"]"),
        ];
        for (oid, text, want) in cases {
            assert_eq!(json(*oid, text), *want, "oid {oid} text {text:?}");
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(fails(16, "yes"));
        assert!(fails(23, "1.5"));
        assert!(fails(23, "01"));
        assert!(fails(23, ""));
        assert!(fails(701, "1."));
        assert!(fails(701, "inf"));
        assert!(fails(1184, "2026-11-29 09:48:11+02"));
        assert!(fails(1184, "2026-11-29 09:48:11.1234567+00"));
        // A multibyte character across byte 19 (the review's panic).
        assert!(fails(1184, "2026-11-29 09:48:1é+00"));
        assert!(fails(1184, "2026-11-29 09:48:€1+00"));
        assert!(fails(1184, "202-11-29 09:48:11+00"));
        assert!(fails(1184, "2026-1-129 09:48:11+00"));
        assert!(fails(1184, "2026-11-29 09:4:811+00"));
        assert!(fails(1184, "2026-11-29T09:48:11+00"));
        assert!(fails(1184, "2026-11-29 09:48+00"));
        assert!(fails(114, "{bad json"));
        assert!(fails(17, "\\xabc"));
        assert!(fails(17, "abc"));
        assert!(fails(1007, "{1,2"));
        assert!(fails(1007, "{1,2}x"));
        assert!(fails(1007, "[0:1]{1}"));
        assert!(fails(1009, "{\"abc}"));
        assert!(fails(1007, "{{{{{{{{1}}}}}}}}"));
        let mut out = Vec::new();
        assert!(ValueKind::Text.write_json(&[0xff, 0xfe], &mut out).is_err());
    }

    /// The property tests' settings: 4,000 cases per property in CI; PROPTEST_CASES sets
    /// more for the long run. `config`'s property uses them too.
    pub(crate) fn ci_config() -> ProptestConfig {
        ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4000),
            ..ProptestConfig::default()
        }
    }

    /// Strings dense in what trips byte-offset slicing and URL parsing: `%`, separators, quotes,
    /// backslashes and characters of two, three and four bytes; or any printable text. Shared
    /// with `config`'s `postgres.url` property.
    pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
        prop_oneof!["[%a-fA-F0-9=&?@:/' \\\\éß€中😀]{0,24}", "\\PC{0,24}"]
    }

    // Standing in for fuzzing in CI (issue "prove it under faults"), as `decode::fuzz` does for
    // the decoders: the value parsers take arbitrary text without panicking, and text sliced
    // at byte offsets (timestamps) also gets multibyte characters where the offsets fall.
    proptest! {
        #![proptest_config(ci_config())]

        #[test]
        fn value_parsers_never_panic(text in "\\PC{0,40}", oid in prop::sample::select(vec![16u32, 17, 20, 23, 700, 701, 1007, 1009, 1022, 1114, 1184, 1185, 3802, 3807, 1020])) {
            let kind = ValueKind::builtin(oid).unwrap();
            let _ = kind.write_json(text.as_bytes(), &mut Vec::new());
        }

        #[test]
        fn array_literals_never_panic(text in "[{}\\\\\",a-zNUL0-9\\[\\]:=; ]{0,40}") {
            for oid in [1007u32, 1009, 3807, 1020] {
                let _ = ValueKind::builtin(oid).unwrap().write_json(text.as_bytes(), &mut Vec::new());
            }
        }

        #[test]
        fn timestamptz_with_multibyte_characters_never_panics(at in 0usize..=29, insert in tricky_text()) {
            // Characters inserted anywhere in a valid text, so that some straddle byte 19 (after
            // `HH:MM:SS`), where the fraction is sliced off.
            let mut text = String::from("2026-11-29 09:48:11.767852+00");
            text.insert_str(at, &insert);
            for oid in [1184u32, 1114, 1185] {
                let value = if oid == 1185 { format!("{{\"{text}\"}}") } else { text.clone() };
                let _ = ValueKind::builtin(oid).unwrap().write_json(value.as_bytes(), &mut Vec::new());
            }
        }
    }
}
