//! Issue "audit tooling": the baseline snapshot, verify/export/restore/history/reconcile,
//! tampering and key rotation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{self, Env, Stored};

const ITEMS: &str =
    "CREATE TABLE public.items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, active bool NOT NULL);";
const GUARD_ITEMS: &str = "[[tables]]\nname = \"public.items\"\n";

fn cfg(env: &Env) -> &str {
    env.config.to_str().unwrap()
}

async fn wait_until<F: Fn(&[Stored]) -> bool>(env: &Env, within: Duration, done: F) -> Vec<Stored> {
    let deadline = Instant::now() + within;
    loop {
        let stream = env.read_stream().await;
        if done(&stream) || Instant::now() > deadline {
            return stream;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn table_completed(stream: &[Stored], table: &str) -> bool {
    stream.iter().any(|m| {
        m.op() == "snapshot_progress"
            && m.data()["completed"]
                .as_array()
                .is_some_and(|c| c.iter().any(|t| t == table))
    })
}

fn snapshot_keys(stream: &[Stored], table: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in stream.iter().filter(|m| {
        m.is_snapshot()
            && m.json["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{table}/")))
    }) {
        *seen.entry(m.json["subject"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn reconcile(env: &Env, table: &str) -> (i32, String) {
    let (code, out, err) = env.command(&["reconcile", "-c", cfg(env), table]);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_of_100k_rows_with_live_writes_reconciles() {
    let env = Env::start(ITEMS, GUARD_ITEMS, "").await;
    env.db
        .batch_execute("INSERT INTO items SELECT g, 'item ' || g, g % 100, g % 2 = 0 FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    let wg = env.spawn_ready().await;
    // Live writes while the snapshot is being published.
    let writer = harness_writer(&env, 300).await;
    let stream = wait_until(&env, Duration::from_secs(240), |s| table_completed(s, "public.items")).await;
    writer.await.unwrap();
    assert!(table_completed(&stream, "public.items"), "{}", wg.output());
    let snapshots = snapshot_keys(&stream, "public.items");
    assert_eq!(snapshots.len(), 100_000);
    assert!(snapshots.values().all(|&n| n == 1), "a row was snapshotted twice");
    // Every row's first event is its snapshot or its insert.
    let stream = wait_until(&env, Duration::from_secs(30), |s| {
        s.iter().filter(|m| m.op() == "insert").count() >= 100
    })
    .await;
    let mut first: HashMap<String, String> = HashMap::new();
    for m in stream.iter().filter(|m| !m.is_marker()) {
        first
            .entry(m.json["subject"].as_str().unwrap().to_owned())
            .or_insert_with(|| m.op().to_owned());
    }
    assert!(
        first.values().all(|op| op == "snapshot" || op == "insert"),
        "{:?}",
        first
            .values()
            .filter(|o| *o != "snapshot" && *o != "insert")
            .collect::<Vec<_>>()
    );
    // The snapshot is one group at the consistent point, before any change.
    let first_change = stream
        .iter()
        .position(|m| matches!(m.op(), "insert" | "update" | "delete"))
        .unwrap();
    let last_snapshot = stream.iter().rposition(|m| m.is_snapshot()).unwrap();
    assert!(last_snapshot < first_change);
    let (code, out) = reconcile(&env, "public.items");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("100000 rows, the stream and the table agree"), "{out}");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

/// Commits `n` small transactions of inserts (ids above 100000), updates and deletes.
async fn harness_writer(env: &Env, n: i32) -> tokio::task::JoinHandle<()> {
    let db = crate::harness::connect_db(&env.pg.url("postgres")).await;
    tokio::spawn(async move {
        for i in 0..n {
            let sql = format!(
                "BEGIN; INSERT INTO items VALUES ({}, 'new', 1, true); UPDATE items SET qty = qty + 1 WHERE id = {}; DELETE FROM items WHERE id = {}; COMMIT;",
                100_001 + i,
                1 + i * 7,
                50_000 + i
            );
            db.batch_execute(&sql).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_midway_resumes_without_duplicates() {
    let env = Env::start(ITEMS, GUARD_ITEMS, "").await;
    env.db
        .batch_execute("INSERT INTO items SELECT g, 'item ' || g, g % 100, true FROM generate_series(1, 60000) g")
        .await
        .unwrap();
    let mut wg = env.spawn();
    let js = env.js().await;
    harness::eventually(Duration::from_secs(60), "10,000 messages in the stream", || async {
        let n = match js.get_stream(&env.stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        (n >= 10_000).then_some(())
    })
    .await;
    wg.kill();
    let _wg = env.spawn();
    env.db
        .batch_execute("UPDATE items SET qty = -1 WHERE id IN (5, 59999)")
        .await
        .unwrap();
    let stream = wait_until(&env, Duration::from_secs(240), |s| table_completed(s, "public.items")).await;
    assert!(table_completed(&stream, "public.items"), "{}", env.newest_log_tail());
    let snapshots = snapshot_keys(&stream, "public.items");
    assert!(
        snapshots.values().all(|&n| n == 1),
        "duplicates: {:?}",
        snapshots.iter().filter(|(_, n)| **n > 1).take(5).collect::<Vec<_>>()
    );
    // Rows changed during the resumed part may be covered by their change event instead.
    assert!(snapshots.len() >= 59_998, "{}", snapshots.len());
    let (code, out) = reconcile(&env, "public.items");
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

/// A crash inside the initial snapshot's group leaves a snapshot row at the head, and the
/// baseline resumes after that row's key as the event holds it. A bytea key is base64 there
/// and `\x` hex in the keyset condition: every row once, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_bytea_key_killed_midway_resumes_after_the_right_row() {
    let env = Env::start(
        "CREATE TABLE public.blobs (id bytea PRIMARY KEY, v int NOT NULL);",
        "[[tables]]\nname = \"public.blobs\"\n",
        "",
    )
    .await;
    // int8send: 8 bytes big-endian, so bytea order is g's order.
    env.db
        .batch_execute("INSERT INTO blobs SELECT int8send(g), g FROM generate_series(1, 30000) g")
        .await
        .unwrap();
    let mut wg = env.spawn();
    harness::eventually(Duration::from_secs(60), "8,000 messages in the stream", || async {
        let n = match env.js().await.get_stream(&env.stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        (n >= 8_000).then_some(())
    })
    .await;
    wg.kill();
    let head = env.read_stream().await.pop().unwrap();
    assert!(
        head.is_snapshot(),
        "killed inside the group: the head is a snapshot row"
    );
    let _wg = env.spawn();
    let stream = wait_until(&env, Duration::from_secs(120), |s| table_completed(s, "public.blobs")).await;
    assert!(table_completed(&stream, "public.blobs"), "{}", env.newest_log_tail());
    let snapshots = snapshot_keys(&stream, "public.blobs");
    assert!(
        snapshots.values().all(|&n| n == 1),
        "duplicates: {:?}",
        snapshots.iter().filter(|(_, n)| **n > 1).take(5).collect::<Vec<_>>()
    );
    assert_eq!(snapshots.len(), 30_000);
    let (code, out) = reconcile(&env, "public.blobs");
    assert_eq!(code, 0, "{out}");
    env.assert_intact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_later_gets_its_baseline_while_writes_continue() {
    let env = later_table_to_add(20000).await;
    let db = crate::harness::connect_db(&env.pg.url("postgres")).await;
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            db.batch_execute(&format!(
                "UPDATE later SET v = v + 1 WHERE id = {}; INSERT INTO later VALUES ({}, 0); DELETE FROM later WHERE id = {}",
                1 + (i * 37) % 20000,
                30_000 + i,
                10_000 + i
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _wg = env.spawn();
    let stream = wait_until(&env, Duration::from_secs(120), |s| table_completed(s, "public.later")).await;
    writer.await.unwrap();
    assert!(table_completed(&stream, "public.later"), "{stream:?}");
    let (code, out) = reconcile(&env, "public.later");
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

/// A stream with a few transactions, walguard stopped cleanly.
async fn small_stream() -> Env {
    let env = Env::start(ITEMS, GUARD_ITEMS, "").await;
    let mut wg = env.spawn_ready().await;
    for i in 1..=6 {
        env.db
            .batch_execute(&format!("INSERT INTO items VALUES ({i}, 'n{i}', {i}, true)"))
            .await
            .unwrap();
    }
    env.db
        .batch_execute("UPDATE items SET qty = 100, name = 'renamed' WHERE id = 2")
        .await
        .unwrap();
    env.db.batch_execute("DELETE FROM items WHERE id = 3").await.unwrap();
    env.wait_events(8, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    env
}

fn verify_lines(env: &Env, lines: &[String]) -> (i32, String) {
    let path = env.dir.path().join(format!("tampered-{}.jsonl", lines.len()));
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (code, out, err) = env.command(&["verify", "-c", cfg(env), "--file", path.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

fn first_bad(out: &str) -> Option<u64> {
    out.split("first bad sequence ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_tampering_of_every_kind_is_caught() {
    use base64::Engine;
    let env = small_stream().await;
    let export = env.dir.path().join("export.jsonl");
    let (code, _, err) = env.command(&["export", "-c", cfg(&env), "--out", export.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(lines.len() >= 10);
    let (code, out) = verify_lines(&env, &lines);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("public.items: delete 1, insert 6, snapshot_progress 0") || out.contains("public.items:"),
        "{out}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let seq_of = |line: &str| -> u64 {
        let v: Value = serde_json::from_str(line).unwrap();
        let p: Value = serde_json::from_slice(&b64.decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
        p["sequence"].as_str().unwrap().parse().unwrap()
    };
    // Every envelope is plain DSSE.
    let v: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(v["payloadType"], "application/cloudevents+json");
    assert!(v["signatures"][0]["keyid"].is_string());

    // One byte of a signed payload changed.
    let target = lines.len() - 1;
    let mut altered = lines.clone();
    let mut v: Value = serde_json::from_str(&altered[target]).unwrap();
    let mut payload = b64.decode(v["payload"].as_str().unwrap()).unwrap();
    let at = payload.len() - 5;
    payload[at] = if payload[at] == b'1' { b'2' } else { b'1' };
    v["payload"] = b64.encode(&payload).into();
    altered[target] = v.to_string();
    let (code, out) = verify_lines(&env, &altered);
    assert_eq!(code, 1, "{out}");
    assert_eq!(first_bad(&out), Some(seq_of(&lines[target])), "{out}");
    assert!(out.contains("bad signature"), "{out}");

    // Two messages swapped.
    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    let (code, out) = verify_lines(&env, &swapped);
    assert_eq!(code, 1, "{out}");
    assert_eq!(first_bad(&out), Some(seq_of(&lines[5])), "{out}");

    // An event signed with an unknown key.
    let other = env.dir.path().join("other.key");
    let (code, _, _) = env.command(&["keygen", "--out", other.to_str().unwrap()]);
    assert_eq!(code, 0);
    let signer = walguard::event::Signer::load(&other).unwrap();
    let mut foreign = lines.clone();
    let mut v: Value = serde_json::from_str(&foreign[3]).unwrap();
    let payload = b64.decode(v["payload"].as_str().unwrap()).unwrap();
    v["signatures"] = json!([{"keyid": signer.key_id(), "sig": signer.sign(&payload)}]);
    foreign[3] = v.to_string();
    let (code, out) = verify_lines(&env, &foreign);
    assert_eq!(code, 1, "{out}");
    assert_eq!(first_bad(&out), Some(seq_of(&lines[3])), "{out}");
    assert!(out.contains("unknown key id"), "{out}");

    // A message removed: a second stream rebuilt from the first without it.
    let js = env.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "WG2".into(),
        subjects: vec!["copy.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let removed = 4;
    for (i, line) in lines.iter().enumerate() {
        if i == removed {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(sig) = v["signatures"].get(0) {
            headers.insert("Walguard-Key-Id", sig["keyid"].as_str().unwrap());
            headers.insert("Walguard-Signature", sig["sig"].as_str().unwrap());
        }
        let payload = b64.decode(v["payload"].as_str().unwrap()).unwrap();
        js.publish_with_headers("copy.x", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["verify", "-c", cfg(&env)])
        .env("WALGUARD__NATS__STREAM", "WG2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(first_bad(&text), Some(seq_of(&lines[removed])), "{text}");

    // A message published into the live stream by another client.
    let ack = js
        .publish(
            "wg.public.items.insert",
            bytes::Bytes::from_static(br#"{"specversion":"1.0"}"#),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let (code, out) = env.verify();
    assert_eq!(code, 1, "{out}");
    assert_eq!(first_bad(&out), Some(ack.sequence), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_signed_before_a_key_rotation_still_verify() {
    let env = small_stream().await;
    let old_pub = env.dir.path().join("old.pub");
    let old = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    std::fs::write(&old_pub, old.public_key_pem()).unwrap();
    std::fs::rename(env.dir.path().join("walguard.key"), env.dir.path().join("old.key")).unwrap();
    let (code, _, _) = env.command(&["keygen", "--out", env.dir.path().join("walguard.key").to_str().unwrap()]);
    assert_eq!(code, 0);
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        "key_file = \"walguard.key\"",
        "key_file = \"walguard.key\"\ntrusted_keys = [\"old.pub\"]",
    );
    std::fs::write(&env.config, config).unwrap();
    let _wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO items VALUES (50, 'after rotation', 1, true)")
        .await
        .unwrap();
    let stream = wait_until(&env, Duration::from_secs(30), |s| {
        s.iter().any(|m| m.json["subject"] == "public.items/50")
    })
    .await;
    let new = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    let last = stream.iter().rfind(|m| m.json["subject"] == "public.items/50").unwrap();
    assert!(last.signed);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    // Without the old key, the old events are signed by an unknown key.
    let new_pub = env.dir.path().join("new.pub");
    std::fs::write(&new_pub, new.public_key_pem()).unwrap();
    let (code, out, _) = env.command(&["verify", "-c", cfg(&env), "--public-key", new_pub.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("unknown key id {}", old.key_id())), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_history_rebuild_entities_and_tables_as_of_any_sequence() {
    let env = Env::start(ITEMS, GUARD_ITEMS, "").await;
    env.db
        .batch_execute("INSERT INTO items SELECT g, 'seed ' || g, g, true FROM generate_series(1, 5) g")
        .await
        .unwrap();
    let _wg = env.spawn_ready().await;
    let db = &env.db;
    db.batch_execute("BEGIN; SELECT pg_logical_emit_message(true, 'walguard.actor', '{\"user\": \"alice\"}'); UPDATE items SET qty = 42, name = 'answer' WHERE id = 2; COMMIT").await.unwrap();
    db.batch_execute("INSERT INTO items VALUES (6, 'six', 6, false)")
        .await
        .unwrap();
    db.batch_execute("DELETE FROM items WHERE id = 4").await.unwrap();
    env.wait_events(3, Duration::from_secs(30)).await;
    let state_then = table_rows(&env).await;
    let at = env.read_stream().await.last().unwrap().seq;
    db.batch_execute("UPDATE items SET qty = 0, active = false WHERE id = 2")
        .await
        .unwrap();
    db.batch_execute("TRUNCATE items").await.unwrap();
    db.batch_execute("INSERT INTO items VALUES (9, 'nine', 9, true)")
        .await
        .unwrap();
    env.wait_events(6, Duration::from_secs(30)).await;

    // The whole table as of the older sequence.
    let (code, out, err) = env.command(&[
        "restore",
        "-c",
        cfg(&env),
        "public.items",
        "--at",
        &at.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let restored: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(restored, state_then);
    // One entity.
    let (code, out, _) = env.command(&[
        "restore",
        "-c",
        cfg(&env),
        "public.items",
        "--key",
        "2",
        "--at",
        &at.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"id": 2, "name": "answer", "qty": 42, "active": true})
    );
    // The head, into a schema of the database.
    let (code, out, err) = env.command(&["restore", "-c", cfg(&env), "public.items", "--into", "restored"]);
    assert_eq!(code, 0, "{out}{err}");
    let diff: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM ((TABLE restored.items EXCEPT TABLE public.items) UNION ALL (TABLE public.items EXCEPT TABLE restored.items)) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(diff, 0);

    let (code, out, _) = env.command(&["history", "-c", cfg(&env), "public.items", "2"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(" snapshot by unknown actor"), "{out}");
    assert!(out.contains("update by actor {\"user\":\"alice\"}"), "{out}");
    assert!(
        out.contains("    qty: 2 -> 42") && out.contains("    name: \"seed 2\" -> \"answer\""),
        "{out}"
    );
    assert!(out.contains("    active: true -> false"), "{out}");
    assert!(out.contains("truncate"), "{out}");
}

/// The live table as walguard's mapping would show it (plain types map identically).
async fn table_rows(env: &Env) -> Vec<Value> {
    env.db
        .query("SELECT row_to_json(i)::text FROM items i ORDER BY id::text", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
        .collect()
}

const PAIRS: &str = "CREATE TABLE public.pairs (a text, b text, v int NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE public.later_pairs (a text, b text, v int NOT NULL, PRIMARY KEY (a, b));
INSERT INTO pairs VALUES ('a,b', 'c', 1), ('a', 'b,c', 2);
INSERT INTO later_pairs VALUES ('a,b', 'c', 1), ('a', 'b,c', 2);
INSERT INTO later_pairs SELECT 'k' || g || ',x', 'y', 0 FROM generate_series(1, 6000) g;
INSERT INTO later_pairs SELECT 'k' || g, 'x,y', 0 FROM generate_series(1, 6000) g;";
const GUARD_PAIRS: &str = "[[tables]]\nname = \"public.pairs\"\n";

/// The rows `restore --json` prints for `table`.
fn restored(env: &Env, table: &str) -> Vec<Value> {
    let (code, out, err) = env.command(&["restore", "-c", cfg(env), table, "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Two rows whose keys join to the same subject text (`a,b,c`) are two rows everywhere: in the
/// initial snapshot, in an incremental snapshot whose window a change of one of them falls
/// into, in `restore` and in `reconcile`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_that_join_to_the_same_text_stay_two_rows() {
    let env = Env::start(PAIRS, GUARD_PAIRS, "").await;
    let mut wg = env.spawn_ready().await;
    let stream = wait_until(&env, Duration::from_secs(60), |s| table_completed(s, "public.pairs")).await;
    assert!(table_completed(&stream, "public.pairs"), "{}", wg.output());
    let both = [
        json!({"a": "a", "b": "b,c", "v": 2}),
        json!({"a": "a,b", "b": "c", "v": 1}),
    ];
    assert_eq!(restored(&env, "public.pairs"), both);
    let (code, out) = reconcile(&env, "public.pairs");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 rows, the stream and the table agree"), "{out}");
    let (code, out, _) = env.command(&["history", "-c", cfg(&env), "public.pairs", "a,b,c"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches(" snapshot by unknown actor").count(), 2, "{out}");
    wg.stop_cleanly().await;

    // later_pairs is baselined incrementally. This transaction holds its primary key index
    // exclusively (REINDEX): walguard's start-up reads only the catalog, but the first
    // chunk's SELECT needs the index to be planned, so it waits, after the chunk's low mark,
    // until the updates below commit. So they fall inside that chunk's window: the rows they
    // change are dropped from the chunk (their update events carry them), and their partners
    // under the same subject text must not be.
    env.db
        .batch_execute("ALTER PUBLICATION wg_pub ADD TABLE later_pairs")
        .await
        .unwrap();
    env.write_config(
        &format!("{GUARD_PAIRS}\n[[tables]]\nname = \"public.later_pairs\"\n"),
        "",
    );
    let writer = crate::harness::connect_db(&env.pg.url("postgres")).await;
    writer
        .batch_execute("BEGIN; REINDEX INDEX later_pairs_pkey")
        .await
        .unwrap();
    let wg = env.spawn();
    harness::eventually(Duration::from_secs(60), "the snapshot to wait on later_pairs' lock", || async {
        let waiting: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%later_pairs%LIMIT%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;
    writer
        .batch_execute("UPDATE later_pairs SET v = v + 1 WHERE b IN ('y', 'c'); COMMIT")
        .await
        .unwrap();
    let stream = wait_until(&env, Duration::from_secs(120), |s| {
        table_completed(s, "public.later_pairs")
    })
    .await;
    assert!(table_completed(&stream, "public.later_pairs"), "{}", wg.output());
    // One snapshot event per subject: the untouched partner's.
    let snapshots = snapshot_keys(&stream, "public.later_pairs");
    for subject in ["public.later_pairs/a,b,c", "public.later_pairs/k1,x,y"] {
        assert_eq!(snapshots.get(subject), Some(&1), "{subject}");
    }
    let rows = restored(&env, "public.later_pairs");
    assert_eq!(rows.len(), 12_002);
    for row in [
        json!({"a": "a", "b": "b,c", "v": 2}),
        json!({"a": "a,b", "b": "c", "v": 2}),
    ] {
        assert!(rows.contains(&row), "{row} is not restored");
    }
    let (code, out) = reconcile(&env, "public.later_pairs");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12002 rows, the stream and the table agree"), "{out}");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

/// Reading the newest message on a subject fails closed: only JetStream's own "no message
/// found" means there is none; a server that does not answer is an error, never "none".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_a_subjects_last_message_is_an_error_not_none() {
    use walguard::sink::stream::last_on_subject;
    let mut nats = walguard::testkit::Nats::start().expect("start nats-server");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "LAST".into(),
            subjects: vec!["last.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ack = js
        .publish("last.progress", bytes::Bytes::from_static(b"{}"))
        .await
        .unwrap()
        .await
        .unwrap();
    let found = last_on_subject(&stream, "last.progress").await.unwrap();
    assert_eq!(found.map(|(seq, _)| seq), Some(ack.sequence));
    assert_eq!(last_on_subject(&stream, "last.resync").await.unwrap(), None);
    nats.stop();
    let err = last_on_subject(&stream, "last.resync")
        .await
        .expect_err("a server that does not answer is not \"no message\"");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("last.resync"), "{err}");
}

/// The tail's confirmed position comes from the event that ends the group before the verified
/// head; when that message is not a walguard event, the tail is refused, not read as "nothing
/// confirmed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_before_the_verified_head_is_refused() {
    use walguard::event::naming::Naming;
    use walguard::event::{Envelope, Keyring, Signer};
    let nats = walguard::testkit::Nats::start().expect("start nats-server");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "TAIL".into(),
            subjects: vec!["wg.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("wg.public.items.insert", bytes::Bytes::from_static(b"not an event"))
        .await
        .unwrap()
        .await
        .unwrap();
    // Sequence 2: a signed event opening a group (pgtxidx 1, no pgendlsn).
    let signer = Signer::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let envelope = Envelope::new("7000", "app", "walguard");
    let naming = Naming {
        system_identifier: "7000".into(),
        slot: "walguard".into(),
        subject_prefix: "wg".into(),
    };
    let mut draft = naming.watermark(walguard::lsn::Lsn(0x100), 0);
    draft.end = None;
    let mut payload = Vec::new();
    envelope.write(&draft, 2, &[0; 32], &mut payload);
    let headers = walguard::sink::publisher::headers(&draft, 2, Some(&signer), &payload);
    js.publish_with_headers(draft.nats_subject.clone(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut keyring = Keyring::default();
    keyring.add(signer.verifying_key());
    let tail = walguard::sink::stream::read_tail(&mut stream, &keyring, envelope.source()).await;
    let err = tail.expect_err("an unreadable predecessor must not read as nothing confirmed");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("sequence 1"), "{err}");
}

/// A stream of `items` written by a walguard that has stopped, and `public.later`, with `rows`
/// rows, now added to the configuration: the next walguard baselines it while it streams.
async fn later_table_to_add(rows: u32) -> Env {
    let schema = format!("{ITEMS} CREATE TABLE public.later (id int PRIMARY KEY, v int NOT NULL);");
    let env = Env::start(&schema, GUARD_ITEMS, "").await;
    env.db
        .batch_execute(&format!(
            "INSERT INTO later SELECT g, g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let mut wg = env.spawn_ready().await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;
    env.write_config(&format!("{GUARD_ITEMS}\n[[tables]]\nname = \"public.later\"\n"), "");
    env
}

/// A known defect of the incremental snapshot, kept as a failing reproduction until it is
/// fixed (stop 24's note; CI's PostgreSQL 15 pass failed
/// `a_table_added_later_gets_its_baseline_while_writes_continue` the same way). PostgreSQL
/// writes a commit record before the transaction becomes visible (after the WAL flush, and
/// after a synchronous standby's answer). A DELETE decoded before a chunk's low mark but
/// still invisible to the chunk's SELECT is not dropped from the chunk, so its row is
/// published after the delete: the stream resurrects it. Here the DELETE waits for a
/// synchronous standby that does not exist while the baseline reads its row. The fix: drop
/// chunk rows touched by any decoded transaction the chunk SELECT's snapshot cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known defect: the incremental snapshot publishes a row deleted by a transaction decoded before the chunk but not yet visible to it"]
async fn a_delete_not_yet_visible_to_a_snapshot_chunk_is_not_undone_by_it() {
    let env = later_table_to_add(60000).await;
    // Only a session that asks waits for the (missing) synchronous standby.
    env.db
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        .await
        .unwrap();
    env.db
        .batch_execute("ALTER SYSTEM SET synchronous_commit = 'local'")
        .await
        .unwrap();
    env.db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let _wg = env.spawn();
    // Polled every 5 ms (not `eventually`'s 100): the DELETE must come before the baseline
    // reaches its row.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'later'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let db2 = crate::harness::connect_db(&env.pg.url("postgres")).await;
    let pid: i32 = db2.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let del = tokio::spawn(async move {
        let r = db2
            .batch_execute("SET synchronous_commit = on; DELETE FROM later WHERE id = 55000")
            .await;
        (db2, r)
    });
    // The baseline reads row 55000 while its DELETE waits, committed but not visible.
    let stream = wait_until(&env, Duration::from_secs(120), |s| table_completed(s, "public.later")).await;
    assert!(table_completed(&stream, "public.later"));
    env.db.query("SELECT pg_cancel_backend($1)", &[&pid]).await.unwrap();
    let (_db2, r) = del.await.unwrap();
    // Cancelling the wait leaves the DELETE committed (locally), and now visible.
    r.unwrap();
    let n: i64 = env
        .db
        .query_one("SELECT count(*) FROM later WHERE id = 55000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let (code, out) = reconcile(&env, "public.later");
    assert_eq!(code, 0, "{out}");
}
