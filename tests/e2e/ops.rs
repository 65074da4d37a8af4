//! Issue "run it as ops would": metrics, readiness, graceful shutdown under load, a standby
//! taking over, and logs that never show row values or passwords.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Env, Walguard};

const LEDGER: &str = "CREATE TABLE public.ledger (id bigint PRIMARY KEY, tx int NOT NULL, v int NOT NULL);";
const GUARD_LEDGER: &str = "[[tables]]\nname = \"public.ledger\"\n";

/// A plain HTTP/1.0 GET: (status, body).
pub(crate) async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub(crate) async fn wait_status(port: u16, path: &str, want: u16, within: Duration) -> (u16, String) {
    wait_state(port, path, want, "", within).await
}

/// Polls until `path` answers `want` with a body containing `body_has` (or the time is up).
pub(crate) async fn wait_state(port: u16, path: &str, want: u16, body_has: &str, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = get(port, path).await.unwrap_or((0, String::new()));
        if (got.0 == want && got.1.contains(body_has)) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_written_and_readiness_follows_nats() {
    let mut env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let wg = env.spawn_ready().await;
    let port = env.listen_port;
    for tx in 0..20 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO ledger SELECT g, {tx}, 0 FROM generate_series({}, {}) g",
                tx * 10,
                tx * 10 + 9
            ))
            .await
            .unwrap();
    }
    env.db
        .batch_execute("UPDATE ledger SET v = 1 WHERE id < 5")
        .await
        .unwrap();
    env.wait_events(205, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, text) = get(port, "/metrics").await.expect("metrics endpoint");
        assert_eq!(status, 200);
        let inserts = metric(
            &text,
            "walguard_events_published_total{table=\"public.ledger\",op=\"insert\"}",
        );
        if inserts == Some(200.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metric(
            &text,
            "walguard_events_published_total{table=\"public.ledger\",op=\"insert\"}"
        ),
        Some(200.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "walguard_events_published_total{table=\"public.ledger\",op=\"update\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert!(
        metric(&text, "walguard_publish_ack_seconds_count").unwrap_or(0.0) >= 205.0,
        "{text}"
    );
    assert!(
        metric(&text, "walguard_published_bytes_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    for name in [
        "walguard_replication_lag_bytes",
        "walguard_slot_retained_wal_bytes",
        "walguard_confirmed_lsn",
        "walguard_acks_in_flight",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(metric(&text, "walguard_confirmed_lsn").unwrap_or(0.0) > 0.0, "{text}");
    // Every error kind is there at 0 before its first error, so increase() sees the first one.
    for kind in [
        "payload_too_large",
        "nats",
        "postgres",
        "encode",
        "lost_slot",
        "foreign_message",
    ] {
        assert_eq!(
            metric(&text, &format!("walguard_errors_total{{kind=\"{kind}\"}}")),
            Some(0.0),
            "{text}"
        );
    }
    // Row events only under a table; walguard's own markers are counted apart.
    assert!(!text.contains("table=\"_walguard\""), "{text}");
    assert!(
        metric(&text, "walguard_markers_published_total{kind=\"watermark\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    assert_eq!(wait_status(port, "/readyz", 200, Duration::from_secs(10)).await.0, 200);

    // NATS down: not ready (and why); back: ready again.
    env.nats.stop();
    env.db
        .batch_execute("INSERT INTO ledger VALUES (1000, 0, 0)")
        .await
        .unwrap();
    let (status, body) = wait_status(port, "/readyz", 503, Duration::from_secs(30)).await;
    assert_eq!(status, 503, "{body}\n{}", wg.output());
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    env.nats.start_again().unwrap();
    let (status, body) = wait_status(port, "/readyz", 200, Duration::from_secs(60)).await;
    assert_eq!(status, 200, "{body}\n{}", wg.output());
    let (_, text) = get(port, "/metrics").await.unwrap();
    assert!(
        metric(&text, "walguard_errors_total{kind=\"nats\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "walguard_restarts_total").unwrap_or(0.0) >= 1.0, "{text}");
}

/// Commits `n` transactions of one to three inserts from `first`; returns the ids in order.
async fn load(url: String, first: i64, n: i64) -> Vec<i64> {
    let db = harness::connect_db(&url).await;
    let mut ids = Vec::new();
    let mut id = first;
    for tx in 0..n {
        let mut sql = String::from("BEGIN;");
        for _ in 0..(1 + tx % 3) {
            sql.push_str(&format!("INSERT INTO ledger VALUES ({id}, {tx}, 0);"));
            ids.push(id);
            id += 1;
        }
        sql.push_str("COMMIT;");
        db.batch_execute(&sql).await.unwrap();
    }
    ids
}

fn inserted_ids(stream: &[harness::Stored]) -> Vec<i64> {
    stream
        .iter()
        .filter(|m| m.op() == "insert")
        .map(|m| m.data()["key"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_nothing() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let mut wg = env.spawn_ready().await;
    let writer = tokio::spawn(load(env.pg.url("postgres"), 1, 3000));
    // Under load: the writer goes on while walguard is asked to stop.
    env.wait_events(500, Duration::from_secs(30)).await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(30), &[]).await;
    assert!(wg.output().contains("final status update sent"), "{}", wg.output());
    let _wg = env.spawn();
    let ids = writer.await.unwrap();
    env.wait_events(ids.len(), Duration::from_secs(60)).await;
    let stream = env.read_stream().await;
    assert_eq!(inserted_ids(&stream), ids);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_walguard_dies() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let mut active = env.spawn_ready().await;
    // The standby: same slot and stream, its own listen port.
    let standby_port = walguard::testkit::free_port();
    let standby_cfg = env.dir.path().join("standby.toml");
    std::fs::write(
        &standby_cfg,
        std::fs::read_to_string(&env.config).unwrap().replace(
            &format!("127.0.0.1:{}", env.listen_port),
            &format!("127.0.0.1:{standby_port}"),
        ),
    )
    .unwrap();
    let mut standby = Walguard::spawn(&standby_cfg, env.dir.path());
    // 503 "starting" first, then 503 "standby" once it waits for the slot.
    let (status, body) = wait_state(standby_port, "/readyz", 503, "standby", Duration::from_secs(20)).await;
    assert_eq!(status, 503);
    assert!(body.contains("standby"), "{body}\n{}", standby.output());
    let writer = tokio::spawn(load(env.pg.url("postgres"), 1, 2000));
    // The active one dies mid-stream, with the writer still going.
    env.wait_events(300, Duration::from_secs(30)).await;
    active.kill();
    let (status, body) = wait_status(standby_port, "/readyz", 200, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{body}\n{}", standby.output());
    let ids = writer.await.unwrap();
    env.wait_events(ids.len(), Duration::from_secs(60)).await;
    let stream = env.read_stream().await;
    assert_eq!(inserted_ids(&stream), ids);
    assert_eq!(standby.exited(), None);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_row_values_or_passwords() {
    let env = Env::start(
        "CREATE TABLE public.people (id int PRIMARY KEY, email text, big text);",
        "[[tables]]\nname = \"public.people\"\n",
        "",
    )
    .await;
    // Trust authentication ignores the password, but it is in the URL walguard is given.
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("postgres://postgres@", "postgres://postgres:Hunter2-pw@");
    std::fs::write(&env.config, config).unwrap();
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO people VALUES (424242, 'secret-person@example.com', repeat('Z', 10))")
        .await
        .unwrap();
    env.db
        .batch_execute("UPDATE people SET email = 'other-secret@example.com'")
        .await
        .unwrap();
    env.wait_events(2, Duration::from_secs(30)).await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;
    // A refused start logs its error too.
    let bad = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("public.people", "public.nothere");
    std::fs::write(&env.config, bad).unwrap();
    let mut failed = env.spawn();
    failed.expect_exit(1, Duration::from_secs(20), &[]).await;
    for log in [wg.output(), failed.output()] {
        assert!(log.contains("streaming") || log.contains("nothere"), "{log}");
        for secret in ["Hunter2-pw", "secret-person", "other-secret", "424242", "ZZZZZZZZZZ"] {
            assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_columns_never_appear_in_clear() {
    let env = Env::start(
        "CREATE TABLE public.patients (id int PRIMARY KEY, email text, ssn text, city text);",
        "[[tables]]\nname = \"public.patients\"\nhash_columns = [\"email\", \"ssn\"]\n",
        "",
    )
    .await;
    let salt = env.dir.path().join("salt");
    std::fs::write(&salt, b"0123456789abcdef-test-salt").unwrap();
    std::fs::set_permissions(&salt, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{config}\n[hashing]\nsalt_file = \"salt\"\n")).unwrap();
    let _wg = env.spawn_ready().await;
    for sql in [
        "INSERT INTO patients VALUES (1, 'jane.doe@example.com', '123-45-6789', 'Oslo')",
        "UPDATE patients SET city = 'Bergen' WHERE id = 1",
        "UPDATE patients SET city = 'Tromso', email = 'jane.doe@example.com' WHERE id = 1",
        "UPDATE patients SET email = 'jane@new.example' WHERE id = 1",
    ] {
        env.db.batch_execute(sql).await.unwrap();
    }
    let events = env.wait_events(4, Duration::from_secs(30)).await;
    let stream = env.read_stream().await;
    for m in &stream {
        let raw = String::from_utf8_lossy(&m.payload);
        for secret in ["jane.doe", "123-45-6789", "jane@new"] {
            assert!(!raw.contains(secret), "{secret} in clear: {raw}");
        }
    }
    let email = |i: usize| events[i].data()["after"]["email"].as_str().unwrap().to_owned();
    assert!(email(0).starts_with("hmac-sha256:"));
    // The same value gives the same hash; a new value a new one.
    assert_eq!(email(1), email(0));
    assert_eq!(email(2), email(0));
    assert_ne!(email(3), email(0));
    assert_eq!(events[0].data()["after"]["city"], "Oslo");
    assert_eq!(events[0].data()["hashed"], serde_json::json!(["email", "ssn"]));
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    // reconcile hashes the live rows the same way.
    let (code, out, err) = env.command(&["reconcile", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_can_be_a_failover_slot_from_postgres_17() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        "publication = \"wg_pub\"",
        "publication = \"wg_pub\"\nfailover_slot = true",
    );
    std::fs::write(&env.config, config).unwrap();
    let version: i32 = env
        .db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if version >= 170000 {
        let _wg = env.spawn_ready().await;
        let failover: bool = env
            .db
            .query_one(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&env.slot],
            )
            .await
            .unwrap()
            .get(0);
        assert!(failover);
    } else {
        let mut wg = env.spawn();
        wg.expect_exit(1, Duration::from_secs(30), &[]).await;
        assert!(
            wg.output().contains("failover_slot = true needs PostgreSQL 17"),
            "{}",
            wg.output()
        );
    }
}
