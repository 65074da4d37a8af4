//! Property tests standing in for fuzzing in CI (issue "prove it under faults"): the decoders
//! take arbitrary bytes and mutations of valid messages without panicking, and no length
//! field makes them allocate beyond the input. (The value parsers' properties are in
//! `event::value`'s tests, `postgres.url`'s in `config`'s.)

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::ServerFrame;
use super::pgoutput::tests as fx;
use super::pgoutput::Message;

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
}
