//! Issue "every kind of legacy table": the preflight, identities, partitions, quoted names,
//! schema changes while streaming, and a slot that lost WAL.

use std::time::Duration;

use serde_json::json;

use crate::harness::{self, Env, Stored};

fn check(env: &Env, format: &str) -> (i32, String) {
    let (code, out, err) = env.command(&["check", "-c", env.config.to_str().unwrap(), "--format", format]);
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_healthy_setup_and_names_the_fix_for_each_broken_one() {
    let schema = "CREATE TABLE public.good (id int PRIMARY KEY, v text);
                  CREATE TABLE public.nokey (code text, v text);
                  CREATE ROLE weak LOGIN; GRANT SELECT ON public.good TO weak;";
    let env = Env::start(schema, "[[tables]]\nname = \"public.good\"\n", "").await;

    // Healthy: what run creates by itself (publication, slot, stream) is only a warning.
    let (code, out) = check(&env, "text");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ready:"), "{out}");
    assert!(
        out.contains("WARN  postgres.publication") && out.contains("run creates it"),
        "{out}"
    );
    let (code, out) = check(&env, "json");
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["ready"], true);
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "postgres.wal_level" && c["outcome"] == "pass"));

    // A missing table.
    env.write_config("[[tables]]\nname = \"public.missing\"\n", "");
    let (code, out) = check(&env, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  table public.missing") && out.contains("does not exist"),
        "{out}"
    );

    // No primary key and replica identity DEFAULT: publishing it would break the writers.
    env.write_config("[[tables]]\nname = \"public.nokey\"\n", "");
    let (code, out) = check(&env, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fix: ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL;"),
        "{out}"
    );
    // run refuses too, and never puts the table into a publication.
    let mut wg = env.spawn();
    wg.expect_exit(1, Duration::from_secs(30), &[]).await;
    assert!(wg.output().contains("REPLICA IDENTITY FULL"), "{}", wg.output());
    let published = env
        .db
        .query_opt("SELECT 1 FROM pg_publication_tables WHERE tablename = 'nokey'", &[])
        .await
        .unwrap();
    assert!(published.is_none());
    env.db
        .batch_execute("INSERT INTO nokey VALUES ('a', 'x'); UPDATE nokey SET v = 'y'; DELETE FROM nokey;")
        .await
        .unwrap();

    // A role without REPLICATION.
    let weak_cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("postgres://postgres@", "postgres://weak@")
        .replace("public.nokey", "public.good");
    std::fs::write(&env.config, weak_cfg).unwrap();
    let (code, out) = check(&env, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  postgres.role") && out.contains("ALTER ROLE \"weak\" REPLICATION;"),
        "{out}"
    );

    // A stream with memory storage.
    env.write_config("[[tables]]\nname = \"public.good\"\n", "");
    let js = env.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: env.stream.clone(),
        subjects: vec!["wg.>".into()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let (code, out) = check(&env, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  nats.stream") && out.contains("memory storage"),
        "{out}"
    );
    assert!(out.contains("allow_unsafe_stream"), "{out}");
    js.delete_stream(&env.stream).await.unwrap();

    // wal_level replica.
    let replica = walguard::testkit::Postgres::start_with(&[("wal_level", "replica")]).unwrap();
    let env2 = Env::start_with_pg(
        replica,
        "CREATE TABLE public.good (id int PRIMARY KEY);",
        "[[tables]]\nname = \"public.good\"\n",
        "",
    )
    .await;
    let (code, out) = check(&env2, "text");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  postgres.wal_level") && out.contains("ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );

    // Servers down: exit 69.
    drop(env2);
    let mut env3 = Env::start(
        "CREATE TABLE public.good (id int PRIMARY KEY);",
        "[[tables]]\nname = \"public.good\"\n",
        "",
    )
    .await;
    env3.nats.stop();
    let (code, out) = check(&env3, "text");
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("FAIL  nats.connect"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_primary_key_and_with_index_identity_stream_correctly() {
    let schema = "CREATE TABLE public.stock (sku text NOT NULL, site text NOT NULL, qty int);
                  ALTER TABLE public.stock REPLICA IDENTITY FULL;
                  CREATE TABLE public.accounts (id serial, email text NOT NULL, name text);
                  CREATE UNIQUE INDEX accounts_email ON public.accounts (email);
                  ALTER TABLE public.accounts REPLICA IDENTITY USING INDEX accounts_email;
                  CREATE TABLE public.nothing (id int PRIMARY KEY);
                  ALTER TABLE public.nothing REPLICA IDENTITY NOTHING;";
    let tables = "[[tables]]\nname = \"public.stock\"\nkey = [\"sku\", \"site\"]\n\n\
                  [[tables]]\nname = \"public.accounts\"\nkey = [\"email\"]\n";
    let env = Env::start(schema, tables, "").await;
    let _wg = env.spawn_ready().await;
    // The outside writer's statements all succeed.
    for sql in [
        "INSERT INTO stock VALUES ('A-1', 'eu', 5), ('A-1', 'us', 7)",
        "UPDATE stock SET qty = qty - 1 WHERE sku = 'A-1' AND site = 'eu'",
        "DELETE FROM stock WHERE site = 'us'",
        "INSERT INTO accounts (email, name) VALUES ('a@x', 'Ann')",
        "UPDATE accounts SET name = 'Anne' WHERE email = 'a@x'",
        "DELETE FROM accounts WHERE email = 'a@x'",
    ] {
        env.db.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let events = env.wait_events(6, Duration::from_secs(30)).await;
    let subjects: Vec<&str> = events.iter().map(|m| m.json["subject"].as_str().unwrap()).collect();
    assert_eq!(
        subjects,
        [
            "public.stock/A-1,eu",
            "public.stock/A-1,us",
            "public.stock/A-1,eu",
            "public.stock/A-1,us",
            "public.accounts/a@x",
            "public.accounts/a@x",
            "public.accounts/a@x"
        ][..events.len()]
            .to_vec()
    );
    assert_eq!(
        events[2].data()["before"],
        json!({"sku": "A-1", "site": "eu", "qty": 5})
    );
    assert_eq!(events[2].data()["after"], json!({"sku": "A-1", "site": "eu", "qty": 4}));
    assert_eq!(
        events[3].data()["before"],
        json!({"sku": "A-1", "site": "us", "qty": 7})
    );
    assert_eq!(events[3].data()["key"], json!({"sku": "A-1", "site": "us"}));
    let events = env.wait_events(7, Duration::from_secs(30)).await;
    assert_eq!(events[6].op(), "delete");
    assert_eq!(events[6].data()["before"], json!({"email": "a@x"}));
    assert_eq!(events[6].data()["key"], json!({"email": "a@x"}));

    // REPLICA IDENTITY NOTHING is refused with an explanation.
    env.write_config("[[tables]]\nname = \"public.nothing\"\n", "");
    let (code, out, _) = env.command(&["check", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REPLICA IDENTITY NOTHING")
            && out.contains("ALTER TABLE \"public\".\"nothing\" REPLICA IDENTITY FULL;"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_are_reported_under_the_root() {
    let schema = "CREATE TABLE public.readings (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
                  CREATE TABLE public.readings_eu PARTITION OF public.readings FOR VALUES IN ('eu');
                  CREATE TABLE public.readings_us PARTITION OF public.readings FOR VALUES IN ('us');";
    let env = Env::start(schema, "[[tables]]\nname = \"public.readings\"\n", "").await;
    let _wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO readings VALUES (1, 'eu', 10)")
        .await
        .unwrap();
    env.db
        .batch_execute("INSERT INTO readings VALUES (2, 'us', 20)")
        .await
        .unwrap();
    // Moves the row to the other partition.
    env.db
        .batch_execute("UPDATE readings SET region = 'us' WHERE id = 1")
        .await
        .unwrap();
    env.db
        .batch_execute("UPDATE readings SET v = 21 WHERE id = 2")
        .await
        .unwrap();
    let events = env.wait_events(5, Duration::from_secs(30)).await;
    let got: Vec<(String, String)> = events
        .iter()
        .map(|m| (m.subject.clone(), m.json["subject"].as_str().unwrap().to_owned()))
        .collect();
    let want: Vec<(String, String)> = [
        ("wg.public.readings.insert", "public.readings/1,eu"),
        ("wg.public.readings.insert", "public.readings/2,us"),
        ("wg.public.readings.delete", "public.readings/1,eu"),
        ("wg.public.readings.insert", "public.readings/1,us"),
        ("wg.public.readings.update", "public.readings/2,us"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{events:?}");
    assert!(events.iter().all(|m| m.data()["table"] == "readings"));
    // The move is one transaction: delete and insert share it.
    assert_eq!(events[2].json["pglsn"], events[3].json["pglsn"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_need_quoting_get_escaped_subjects() {
    let schema =
        r#"CREATE SCHEMA "Sales Dept"; CREATE TABLE "Sales Dept"."Order.Lines" ("Id" int PRIMARY KEY, "Qty*" int);"#;
    let env = Env::start(schema, "[[tables]]\nname = '\"Sales Dept\".\"Order.Lines\"'\n", "").await;
    let _wg = env.spawn_ready().await;
    env.db
        .batch_execute(r#"INSERT INTO "Sales Dept"."Order.Lines" VALUES (7, 3)"#)
        .await
        .unwrap();
    let events = env.wait_events(1, Duration::from_secs(30)).await;
    assert_eq!(events[0].subject, "wg.Sales%20Dept.Order%2ELines.insert");
    assert_eq!(events[0].json["subject"], "Sales Dept.Order.Lines/7");
    assert_eq!(events[0].data()["schema"], "Sales Dept");
    assert_eq!(events[0].data()["table"], "Order.Lines");
    assert_eq!(events[0].data()["after"], json!({"Id": 7, "Qty*": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_streaming_keep_events_correct() {
    let env = Env::start(
        "CREATE TABLE public.items (id int PRIMARY KEY, a int, b text);",
        "[[tables]]\nname = \"public.items\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    let steps = [
        (
            "INSERT INTO items VALUES (1, 10, 'x')",
            json!({"id": 1, "a": 10, "b": "x"}),
        ),
        (
            "ALTER TABLE items ADD COLUMN c int DEFAULT 5; INSERT INTO items VALUES (2, 20, 'y')",
            json!({"id": 2, "a": 20, "b": "y", "c": 5}),
        ),
        (
            "ALTER TABLE items DROP COLUMN b; INSERT INTO items VALUES (3, 30, 6)",
            json!({"id": 3, "a": 30, "c": 6}),
        ),
        (
            "ALTER TABLE items ALTER COLUMN a TYPE numeric(10,2); INSERT INTO items VALUES (4, 40, 7)",
            json!({"id": 4, "a": "40.00", "c": 7}),
        ),
        (
            "ALTER TABLE items RENAME COLUMN a TO amount; INSERT INTO items VALUES (5, 50, 8)",
            json!({"id": 5, "amount": "50.00", "c": 8}),
        ),
        (
            "UPDATE items SET amount = 1 WHERE id = 1",
            json!({"id": 1, "amount": "1.00", "c": 5}),
        ),
        (
            "ALTER TABLE items RENAME COLUMN id TO item_id; INSERT INTO items VALUES (6, 60, 9)",
            json!({"item_id": 6, "amount": "60.00", "c": 9}),
        ),
    ];
    for (sql, _) in &steps {
        env.db.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let events = env.wait_events(steps.len(), Duration::from_secs(30)).await;
    assert_eq!(events.len(), steps.len(), "{}", wg.output());
    for ((sql, want), got) in steps.iter().zip(&events) {
        assert_eq!(&got.data()["after"], want, "after {sql}");
    }
    assert_eq!(events[6].data()["key"], json!({"item_id": 6}));
    assert_eq!(wg.exited(), None, "walguard must not restart:\n{}", wg.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_lost_wal_stops_walguard_until_an_explicit_resync() {
    let pg = walguard::testkit::Postgres::start_with(&[("max_slot_wal_keep_size", "'1MB'"), ("wal_keep_size", "0")])
        .unwrap();
    let env = Env::start_with_pg(
        pg,
        "CREATE TABLE public.t (id int PRIMARY KEY, pad text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    env.db.batch_execute("INSERT INTO t VALUES (1, 'a')").await.unwrap();
    env.wait_events(1, Duration::from_secs(20)).await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;

    // While walguard is down, enough WAL passes for the slot to be invalidated.
    for i in 0..6 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({}, {}) g; SELECT pg_switch_wal();",
                10 + i * 10_000,
                9 + (i + 1) * 10_000
            ))
            .await
            .unwrap();
    }
    env.db.batch_execute("CHECKPOINT").await.unwrap();
    let status: Option<String> = env
        .db
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status.as_deref(), Some("lost"));

    let mut wg = env.spawn();
    wg.expect_exit(1, Duration::from_secs(30), &[]).await;
    assert!(
        wg.output().contains("lost") && wg.output().contains("walguard resync"),
        "{}",
        wg.output()
    );
    let (code, out, _) = env.command(&["check", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  postgres.slot") && out.contains("resync"), "{out}");

    let (code, out, err) = env.command(&["resync", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("are not in the stream"), "{out}");

    let _wg = env.spawn_ready().await;
    env.db.batch_execute("INSERT INTO t VALUES (0, 'after')").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The resync re-baselines the table; verify once that snapshot is complete (a group
    // still being published is, rightly, an incomplete transaction to verify).
    let stream = loop {
        let s = env.read_stream().await;
        let baselined = s.iter().any(|m| {
            m.op() == "snapshot_progress"
                && m.data()["completed"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|t| t == "public.t"))
                && m.seq
                    > s.iter()
                        .find(|r| r.json["type"] == "walguard.resync")
                        .map_or(u64::MAX, |r| r.seq)
        });
        if (baselined && s.iter().any(|m| m.json["subject"] == "public.t/0")) || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let resync: Vec<&Stored> = stream.iter().filter(|m| m.json["type"] == "walguard.resync").collect();
    assert_eq!(resync.len(), 1, "{stream:?}");
    assert!(resync[0].signed);
    assert!(resync[0].data()["lost_after"].is_string() && resync[0].data()["resumed_at"].is_string());
    assert!(stream.iter().any(|m| m.json["subject"] == "public.t/0"), "{stream:?}");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    let _ = harness::lsn("0/0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_appear_where_the_server_publishes_them() {
    let env = Env::start(
        "CREATE TABLE public.lines (id int PRIMARY KEY, qty int, price int, total int GENERATED ALWAYS AS (qty * price) STORED);",
        "[[tables]]\nname = \"public.lines\"\n",
        "",
    )
    .await;
    let _wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO lines (id, qty, price) VALUES (1, 3, 4)")
        .await
        .unwrap();
    let events = env.wait_events(1, Duration::from_secs(30)).await;
    let version: i32 = env
        .db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    // PostgreSQL 18 publishes stored generated columns (walguard creates the publication with
    // publish_generated_columns = stored); earlier versions never send them.
    let want = if version >= 180000 {
        json!({"id": 1, "qty": 3, "price": 4, "total": 12})
    } else {
        json!({"id": 1, "qty": 3, "price": 4})
    };
    assert_eq!(events[0].data()["after"], want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_key_column_is_refused_by_check_and_run() {
    let env = Env::start(
        "CREATE TABLE public.people (id int PRIMARY KEY, email text NOT NULL, name text);
         ALTER TABLE public.people REPLICA IDENTITY FULL;",
        "",
        "",
    )
    .await;
    // The key names the entity in the CloudEvents subject, published as it is: hashing a key
    // column would leave it in clear there.
    for (tables, column, which) in [
        (
            "[[tables]]\nname = \"public.people\"\nkey = [\"email\"]\nhash_columns = [\"email\"]\n",
            "\"email\"",
            "configured `key`",
        ),
        (
            "[[tables]]\nname = \"public.people\"\nhash_columns = [\"name\", \"id\"]\n",
            "\"id\"",
            "primary key",
        ),
    ] {
        env.write_config(tables, "");
        env.add_salt();
        let (code, out) = check(&env, "text");
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  table public.people") && out.contains(column) && out.contains(which),
            "{out}"
        );
        assert!(out.contains("remove") && out.contains("hash_columns"), "{out}");

        let mut wg = env.spawn();
        wg.expect_exit(1, Duration::from_secs(30), &[]).await;
        assert!(
            wg.output().contains("table public.people") && wg.output().contains(column),
            "{}",
            wg.output()
        );
        assert!(env.read_stream().await.is_empty());
        let published = env
            .db
            .query_opt("SELECT 1 FROM pg_publication_tables WHERE tablename = 'people'", &[])
            .await
            .unwrap();
        assert!(published.is_none());
        assert_eq!(env.confirmed_flush().await, None, "no slot is created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_in_the_replica_identity_never_break_the_writers() {
    // Stored generated columns in the replica identity: every column under FULL, and a
    // primary key on one. PostgreSQL 18 fails the writers' UPDATE and DELETE of such a table
    // in a publication that does not publish generated columns.
    let env = Env::start(
        "CREATE TABLE public.lines (id int NOT NULL, qty int, price int, total int GENERATED ALWAYS AS (qty * price) STORED);
         ALTER TABLE public.lines REPLICA IDENTITY FULL;
         CREATE TABLE public.codes (raw text NOT NULL, code text GENERATED ALWAYS AS (upper(raw)) STORED PRIMARY KEY);
         CREATE TABLE public.other (id int PRIMARY KEY);
         INSERT INTO public.lines (id, qty, price) VALUES (1, 1, 1);
         INSERT INTO public.codes (raw) VALUES ('a');",
        "[[tables]]\nname = \"public.lines\"\nkey = [\"id\"]\n\n[[tables]]\nname = \"public.codes\"\n",
        "",
    )
    .await;
    let pg18 = env.server_version().await >= 180000;
    let writers = |n: i32| {
        format!(
            "UPDATE lines SET qty = qty + 1; DELETE FROM lines; INSERT INTO lines (id, qty, price) VALUES ({n}, 2, 3);
             UPDATE codes SET raw = 'b{n}'; DELETE FROM codes; INSERT INTO codes (raw) VALUES ('c{n}');"
        )
    };

    // A publication of the operator's that does not publish generated columns.
    env.db
        .batch_execute("CREATE PUBLICATION wg_pub FOR TABLE public.other")
        .await
        .unwrap();
    let (code, out) = check(&env, "text");
    if pg18 {
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  table public.lines") && out.contains("\"total\"") && out.contains("UPDATE and DELETE"),
            "{out}"
        );
        assert!(
            out.contains("FAIL  table public.codes") && out.contains("\"code\""),
            "{out}"
        );
        assert!(
            out.contains("fix: ALTER PUBLICATION \"wg_pub\" SET (publish_generated_columns = stored);"),
            "{out}"
        );
        // run refuses too, and leaves the publication as it is.
        let mut wg = env.spawn();
        wg.expect_exit(1, Duration::from_secs(30), &[]).await;
        assert!(
            wg.output().contains("publish_generated_columns = stored"),
            "{}",
            wg.output()
        );
        let published: Vec<String> = env
            .db
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'wg_pub'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(published, ["other"]);
    } else {
        // Before 18 generated columns are neither published nor checked by the server; only
        // a generated key column is refused, since no change event would carry it.
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  table public.codes") && out.contains("key column \"code\" is a generated column"),
            "{out}"
        );
        assert!(!out.contains("FAIL  table public.lines"), "{out}");
        env.write_config("[[tables]]\nname = \"public.lines\"\nkey = [\"id\"]\n", "");
    }
    env.db.batch_execute(&writers(1)).await.unwrap();

    // Created by walguard, the publication publishes stored generated columns on 18.
    env.db.batch_execute("DROP PUBLICATION wg_pub").await.unwrap();
    let wg = env.spawn_ready().await;
    if pg18 {
        let gencols: String = env
            .db
            .query_one(
                "SELECT pubgencols::text FROM pg_publication WHERE pubname = 'wg_pub'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(gencols, "s");
    }
    env.db
        .batch_execute(&writers(2))
        .await
        .unwrap_or_else(|e| panic!("the writers fail with walguard running: {e:?}"));
    let want = if pg18 { 6 } else { 3 };
    let events = env.wait_events(want, Duration::from_secs(30)).await;
    let ops: Vec<(&str, &str)> = events
        .iter()
        .map(|m| (m.data()["table"].as_str().unwrap(), m.op()))
        .collect();
    assert_eq!(
        ops,
        [
            ("lines", "update"),
            ("lines", "delete"),
            ("lines", "insert"),
            ("codes", "update"),
            ("codes", "delete"),
            ("codes", "insert")
        ][..want],
        "{}",
        wg.output()
    );
    let total = |i: usize, image: &str| events[i].data()[image].get("total").cloned();
    if pg18 {
        assert_eq!(total(2, "after"), Some(json!(6)));
        assert_eq!(total(1, "before").map(|t| t.is_number()), Some(true));
        assert_eq!(events[5].json["subject"], "public.codes/C2");
    } else {
        assert_eq!(total(2, "after"), None);
    }

    // A virtual generated column (PostgreSQL 18) is never published: under FULL its writers
    // would fail whatever the publication says.
    if pg18 {
        env.db
            .batch_execute(
                "CREATE TABLE public.doubled (id int NOT NULL, a int, d int GENERATED ALWAYS AS (a * 2) VIRTUAL);
                 ALTER TABLE public.doubled REPLICA IDENTITY FULL;",
            )
            .await
            .unwrap();
        env.write_config("[[tables]]\nname = \"public.doubled\"\nkey = [\"id\"]\n", "");
        let (code, out) = check(&env, "text");
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  table public.doubled") && out.contains("virtual generated column \"d\""),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_can_lose_the_slot_are_warned_about_in_check_and_in_runs_log() {
    let env = Env::start(
        "CREATE TABLE public.t (id int PRIMARY KEY, pad text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let pg18 = env.server_version().await >= 180000;
    // The default: unlimited.
    let (code, out) = check(&env, "text");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN  postgres.max_slot_wal_keep_size") && out.contains("-1 (unlimited)"),
        "{out}"
    );
    if pg18 {
        assert!(out.contains("PASS  postgres.idle_replication_slot_timeout"), "{out}");
    }

    // A limit far below an hour of WAL at the rate this server writes.
    env.reload_setting("max_slot_wal_keep_size", "1MB").await;
    if pg18 {
        env.reload_setting("idle_replication_slot_timeout", "1h").await;
    }
    env.db
        .batch_execute("INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g")
        .await
        .unwrap();
    // Backends report their WAL to pg_stat_wal at most once a second: wait until it counts
    // those 4 MB, so that the average since the server started is well above 1MB an hour.
    harness::eventually(Duration::from_secs(20), "pg_stat_wal to count 4 MB", || async {
        let row = env.db.query_one("SELECT wal_bytes::float8 FROM pg_stat_wal", &[]).await;
        (row.unwrap().get::<_, f64>(0) >= 4e6).then_some(())
    })
    .await;
    let (code, out) = check(&env, "text");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN  postgres.max_slot_wal_keep_size")
            && out.contains("max_slot_wal_keep_size is 1MB")
            && out.contains("loses the slot"),
        "{out}"
    );
    if pg18 {
        assert!(
            out.contains("WARN  postgres.idle_replication_slot_timeout") && out.contains("is 1h"),
            "{out}"
        );
    }

    // run makes the same checks at start-up, and logs the warnings.
    let wg = env.spawn_ready().await;
    let log = wg.output();
    assert!(
        log.contains("WARN") && log.contains("max_slot_wal_keep_size is 1MB") && log.contains("loses the slot"),
        "{log}"
    );
    if pg18 {
        assert!(log.contains("idle_replication_slot_timeout is 1h"), "{log}");
    }
}
