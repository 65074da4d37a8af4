//! What the console's index costs in memory: builds `console::index::Index` from N synthetic
//! row events (default 1,000,000) over `ENTITIES` distinct entities (default N) of one table,
//! keys as walguard writes them (`{"id":123456}`, subject `public.customers/123456`), and
//! prints the process's resident memory (VmRSS, /proc/self/status) before and after, per
//! entity, and the time taken. Each message is made, parsed, added and dropped, so what grows
//! is the index's.
//!
//! `cargo run --example console_index [EVENTS [ENTITIES]]` (memory is the same in release).

use std::time::Instant;

use bytes::Bytes;
use walguard::audit::Stored;
use walguard::console::index::Index;
use walguard::event::stored::StoredEvent;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix(" kB")?.trim().parse().ok())
        .map_or(0, |kb: u64| kb * 1024)
}

fn message(sequence: u64, id: u64, op: &str) -> Stored {
    let row = serde_json::json!({"id": id, "name": format!("customer {id}"), "balance": sequence % 1000});
    let (before, after) = match op {
        "insert" => (serde_json::Value::Null, row),
        _ => (row.clone(), row),
    };
    let payload = serde_json::json!({
        "specversion": "1.0", "id": format!("id-{sequence}"), "source": "walguard/bench",
        "type": format!("walguard.{op}"), "subject": format!("public.customers/{id}"),
        "time": format!("2026-12-02T{:02}:{:02}:{:02}.000000Z", sequence / 3600 % 24, sequence / 60 % 60, sequence % 60),
        "datacontenttype": "application/json",
        "sequence": format!("{sequence:020}"), "prevhash": "00",
        "pglsn": "0/16B3748", "pgxid": "7", "pgtxidx": 1, "pgtxcnt": 1, "pgendlsn": "0/16B3800",
        "data": {"op": op, "schema": "public", "table": "customers", "key": {"id": id},
            "before": before, "after": after, "unchanged": [], "actor": {"user": "alice"}},
    });
    Stored {
        sequence,
        signature: None,
        payload: Bytes::from(serde_json::to_vec(&payload).expect("json")),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let events = args.next().unwrap_or(1_000_000);
    let entities = args.next().unwrap_or(events).max(1);
    let mut index = Index::new("WG");
    let before = status("VmRSS:");
    let started = Instant::now();
    for sequence in 1..=events {
        // Keys from 100000 up, each entity's first event an insert.
        let n = (sequence - 1) % entities;
        let id = 100_000 + n;
        let op = if sequence <= entities { "insert" } else { "update" };
        let m = message(sequence, id, op);
        // Parsed once, as the console's verifier does (`Verifier::message`).
        let event = StoredEvent::parse(&m.payload).expect("a walguard event");
        index.add(&m, Some(&event));
    }
    let took = started.elapsed();
    let after = status("VmRSS:");
    let table = &index.tables[0];
    assert_eq!(table.entities.len() as u64, entities.min(events));
    let grown = after.saturating_sub(before);
    println!(
        "{events} events, {} entities: VmRSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB, {:.0} bytes per entity, {:.1} per event), peak {:.1} MiB, {:.2} s",
        table.entities.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        grown as f64 / table.entities.len().max(1) as f64,
        grown as f64 / events.max(1) as f64,
        status("VmHWM:") as f64 / 1048576.0,
        took.as_secs_f64(),
    );
}
