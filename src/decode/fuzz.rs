//! Property tests standing in for fuzzing in CI (issue "prove it under faults"): the decoders
//! and value parsers take arbitrary bytes and mutations of valid messages without panicking,
//! and no length field makes them allocate beyond the input. Text that is sliced at byte
//! offsets (timestamps, `postgres.url`) also gets multibyte characters where the offsets fall.

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::ServerFrame;
use super::pgoutput::tests as fx;
use super::pgoutput::Message;
use crate::event::value::ValueKind;

/// Strings dense in what trips byte-offset slicing and URL parsing: `%`, separators, quotes,
/// backslashes and characters of two, three and four bytes; or any printable text.
fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof!["[%a-fA-F0-9=&?@:/' \\\\éß€中😀]{0,24}", "\\PC{0,24}"]
}

/// `url` as the `postgres.url` of an otherwise valid config file, loaded the way `run` loads it.
fn load_with_postgres_url(url: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("walguard.toml");
    // A TOML basic string: `\PC` has no control characters, so only `\\` and `"` need escapes.
    let quoted = url.replace('\\', "\\\\").replace('"', "\\\"");
    let body =
        format!("[postgres]\nurl = \"{quoted}\"\n[[tables]]\nname = \"public.t\"\n[signing]\nkey_file = \"k\"\n");
    std::fs::write(&path, body).expect("write config");
    crate::config::Config::load(&path)
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut update = vec![b'U'];
    update.extend_from_slice(&7u32.to_be_bytes());
    update.push(b'O');
    update.extend(fx::tuple_bytes(&[Some("1"), None]));
    update.push(b'N');
    update.extend(fx::tuple_bytes(&[Some("1"), Some("\u{1}toast")]));
    vec![
        fx::begin(0x100, 5, 9),
        fx::commit(0x100, 0x130, 5),
        fx::relation(7, "public", "t", b'd', &[(true, "id", 23), (false, "v", 25)]),
        fx::insert(7, &[Some("1"), Some("abc")]),
        update,
    ]
}

proptest! {
    // 4,000 cases per property in CI; PROPTEST_CASES sets more for the long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::parse(Bytes::from(data.clone()));
        let _ = ServerFrame::parse(Bytes::from(data));
    }

    #[test]
    fn mutated_messages_never_panic(which in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let mut msg = valid_messages()[which].clone();
        for (at, byte) in flips {
            let n = msg.len();
            msg[at % n] = byte;
        }
        let keep = cut % (msg.len() + 1);
        msg.truncate(keep);
        let _ = Message::parse(Bytes::from(msg));
    }

    #[test]
    fn huge_length_fields_are_refused(len in 1024i32..i32::MAX) {
        // A text value claiming more bytes than the message holds.
        let mut msg = vec![b'I', 0, 0, 0, 7, b'N', 0, 1, b't'];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(b"short");
        prop_assert!(Message::parse(Bytes::from(msg)).is_err());
    }

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

    #[test]
    fn postgres_url_with_multibyte_characters_never_panics(value in tricky_text(), form in 0usize..5) {
        // The `sslmode` and `sslrootcert` values are percent-decoded by walguard itself.
        let url = match form {
            0 => format!("postgres://u@db/app?sslrootcert={value}"),
            1 => format!("postgres://u:{value}@db/app?sslmode={value}&application_name=x"),
            2 => format!("host=db sslrootcert={value} sslmode=require"),
            3 => format!("postgresql://{value}"),
            _ => value,
        };
        let _ = load_with_postgres_url(&url);
    }
}
