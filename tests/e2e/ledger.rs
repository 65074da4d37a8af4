//! The ledger workload the exactly-once tests share: an outside writer committing mixed
//! transactions, the verdict that the stream holds them once and in order, and a sampler of
//! the slot's confirmed position (it must never pass what the stream held).

use std::time::Duration;

use crate::harness::{self, Env, Stored};

/// What the outside writer committed, in commit order: per transaction, its (op, id) list.
pub type Committed = Vec<Vec<(&'static str, i64)>>;

/// Commits `n` transactions of mixed sizes (inserts, updates, deletes) on `ledger`.
pub async fn write_ledger(db: &tokio_postgres::Client, first_tx: i64, n: i64, next_id: &mut i64, log: &mut Committed) {
    for tx in first_tx..first_tx + n {
        let mut sql = String::from("BEGIN;");
        let mut events = Vec::new();
        let size = 1 + (tx * 7919 % 5);
        for _ in 0..size {
            *next_id += 1;
            sql.push_str(&format!("INSERT INTO ledger VALUES ({}, {tx}, 0);", *next_id));
            events.push(("insert", *next_id));
        }
        if tx % 3 == 0 && *next_id > 2 {
            let id = *next_id - 1;
            sql.push_str(&format!("UPDATE ledger SET v = v + 1 WHERE id = {id};"));
            events.push(("update", id));
        }
        if tx % 11 == 0 && *next_id > 3 {
            let id = *next_id - 2;
            sql.push_str(&format!("DELETE FROM ledger WHERE id = {id};"));
            events.push(("delete", id));
        }
        sql.push_str("COMMIT;");
        db.batch_execute(&sql).await.expect("the outside writer never fails");
        log.push(events);
    }
}

pub fn assert_exactly_once_in_order(stream: &[Stored], committed: &Committed) {
    let events: Vec<&Stored> = stream.iter().filter(|m| !m.is_marker()).collect();
    let got: Vec<(String, i64)> = events
        .iter()
        .map(|m| (m.op().to_owned(), m.data()["key"]["id"].as_i64().unwrap()))
        .collect();
    let want: Vec<(String, i64)> = committed
        .iter()
        .flatten()
        .map(|(op, id)| (op.to_string(), *id))
        .collect();
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "stream differs from what was committed at event {first}: got {} events, want {}; got {:?}, want {:?}",
            got.len(),
            want.len(),
            got.get(first.saturating_sub(2)..(first + 3).min(got.len())),
            want.get(first.saturating_sub(2)..(first + 3).min(want.len()))
        );
    }
    // Transaction boundaries: each transaction's events share pglsn, number 1..n, and the
    // last carries pgtxcnt = n.
    let mut i = 0;
    for tx in committed {
        let group = &events[i..i + tx.len()];
        for (k, m) in group.iter().enumerate() {
            assert_eq!(m.json["pglsn"], group[0].json["pglsn"]);
            assert_eq!(m.json["pgtxidx"].as_u64(), Some(k as u64 + 1));
        }
        assert_eq!(group[tx.len() - 1].json["pgtxcnt"].as_u64(), Some(tx.len() as u64));
        i += tx.len();
    }
}

/// For every sample (time, confirmed_flush_lsn): a message carrying a `pgendlsn` at or past
/// it was already stored in the stream at that time.
pub fn assert_confirmed_never_ahead(stream: &[Stored], samples: &[(std::time::SystemTime, u64)]) {
    let ends: Vec<(std::time::SystemTime, u64)> = stream
        .iter()
        .filter_map(|m| m.json["pgendlsn"].as_str().map(|l| (m.time, harness::lsn(l))))
        .collect();
    for (t, confirmed) in samples {
        let stored = ends
            .iter()
            .filter(|(at, _)| at <= t)
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        assert!(
            stored >= *confirmed,
            "confirmed_flush_lsn {confirmed:X} at {t:?} passed what the stream held ({stored:X})"
        );
    }
}

/// Samples the slot's confirmed_flush_lsn every 100 ms until stopped.
pub struct Sampler {
    handle: tokio::task::JoinHandle<Vec<(std::time::SystemTime, u64)>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Sampler {
    /// Stops sampling: (time, confirmed_flush_lsn) pairs, oldest first.
    pub async fn finish(self) -> Vec<(std::time::SystemTime, u64)> {
        let _ = self.stop.send(true);
        self.handle.await.unwrap()
    }
}

pub fn spawn_sampler(env: &Env) -> Sampler {
    let url = env.pg.url("postgres");
    let slot = env.slot.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut db = harness::connect_db(&url).await;
        let mut samples = Vec::new();
        while !*stopped.borrow() {
            match db
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                Ok(row) => {
                    let at = std::time::SystemTime::now();
                    if let Some(l) = row.get::<_, Option<String>>(0) {
                        samples.push((at, harness::lsn(&l)));
                    }
                }
                // PostgreSQL restarting under a fault test: reconnect when it is back.
                Err(_) => {
                    if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        tokio::spawn(conn);
                        db = c;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopped.changed() => {}
            }
        }
        samples
    });
    Sampler { handle, stop }
}
