//! `walguard demo` end to end: the real binary, its own private servers. It must show the
//! events, the verification, and the table restored from the stream alone equal to the live
//! one.

use std::process::Command;

use crate::harness::BIN;

#[test]
fn the_demo_streams_verifies_and_restores_its_table_equal_to_the_live_one() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("intact: chain, signatures"), "{text}");
    assert!(
        text.contains("cosigned by 1 witness (demo.witness/w1)"),
        "the witness cosigned a checkpoint: {text}"
    );
    assert!(text.contains("== walguard restore --into restored"), "{text}");
    // ada was deleted, bob updated: one row, restored from the events alone.
    assert!(
        text.contains("restored 1 rows of public.customers into \"restored\".\"customers\" as of sequence"),
        "{text}"
    );
    assert!(
        text.contains("restored.customers equals public.customers: 7 columns (types, NOT NULL), 1 rows (row_to_json)"),
        "{text}"
    );
}
