//! Issue 15, schema events: the shape of a table as its schema event publishes it, read from a
//! real catalog, against golden payloads and against `format_type` under an empty
//! `search_path` (SPEC section 7).

use serde_json::{json, Value};
use walguard::source::catalog::Catalog;
use walguard::source::tls::PgConfig;
use walguard::testkit::Postgres;

/// Every column kind of SPEC's value table, arrays of enums and domains, composites, a domain
/// over an enum, a range, an extension type, and names that need quoting. `--` separates
/// batches: a new enum label must be committed before a domain's check can use it.
const KINDS: &str = r#"
CREATE EXTENSION citext;
CREATE TYPE public.plan AS ENUM ('pro', 'free');
ALTER TYPE public.plan ADD VALUE 'team' BEFORE 'pro';
--
CREATE DOMAIN public.positive AS integer CHECK (VALUE > 0);
CREATE DOMAIN public.tier AS public.plan NOT NULL CHECK (VALUE <> 'team') CONSTRAINT a_first CHECK (VALUE IS NOT NULL);
CREATE TYPE public.address AS (street text, zip varchar(10), plan public.plan);
CREATE SCHEMA "Odd";
CREATE TYPE "Odd"."Mood" AS ENUM ('ok');
CREATE TYPE public.span AS RANGE (subtype = float8);
CREATE TABLE public.kinds (
  id bigint PRIMARY KEY,
  b bool NOT NULL, i2 int2, i4 int4, o oid, f4 float4, f8 float8, n numeric(12,2), nn numeric,
  m money, t text, vc varchar(20), bp char(3), nm name, c "char", u uuid, ip inet, net cidr,
  mac macaddr, iv interval, bits bit(8), vb varbit(5), x xml, tv tsvector, r int4range,
  d date, tm time(3), tz timetz, ts timestamp(0), tstz timestamptz, j json, jb jsonb, by bytea,
  ia int[], ta text[][], pa public.plan[], pos public.positive, posa public.positive[],
  tier public.tier, addr public.address, mood "Odd"."Mood", sp public.span, ci citext,
  cia citext[]
);
"#;

fn golden_kinds() -> Value {
    let col = |name: &str, ty: &str, not_null: bool| json!({"name": name, "type": ty, "not_null": not_null});
    json!({
        "op": "schema", "schema": "public", "table": "kinds",
        "columns": [
            col("id", "bigint", true), col("b", "boolean", true), col("i2", "smallint", false),
            col("i4", "integer", false), col("o", "oid", false), col("f4", "real", false),
            col("f8", "double precision", false), col("n", "numeric(12,2)", false),
            col("nn", "numeric", false), col("m", "money", false), col("t", "text", false),
            col("vc", "character varying(20)", false), col("bp", "character(3)", false),
            col("nm", "name", false), col("c", "\"char\"", false), col("u", "uuid", false),
            col("ip", "inet", false), col("net", "cidr", false), col("mac", "macaddr", false),
            col("iv", "interval", false), col("bits", "bit(8)", false),
            col("vb", "bit varying(5)", false), col("x", "xml", false), col("tv", "tsvector", false),
            col("r", "int4range", false), col("d", "date", false),
            col("tm", "time(3) without time zone", false), col("tz", "time with time zone", false),
            col("ts", "timestamp(0) without time zone", false),
            col("tstz", "timestamp with time zone", false), col("j", "json", false),
            col("jb", "jsonb", false), col("by", "bytea", false), col("ia", "integer[]", false),
            col("ta", "text[]", false), col("pa", "public.plan[]", false),
            col("pos", "public.positive", false), col("posa", "public.positive[]", false),
            col("tier", "public.tier", false), col("addr", "public.address", false),
            col("mood", "\"Odd\".\"Mood\"", false), col("sp", "public.span", false),
            col("ci", "public.citext", false), col("cia", "public.citext[]", false),
        ],
        "key": ["id"], "primary_key": ["id"], "replica_identity": "default",
        "types": [
            {"name": "public.plan", "kind": "enum", "labels": ["team", "pro", "free"]},
            {"name": "public.positive", "kind": "domain", "base": "integer", "not_null": false,
             "checks": ["CHECK ((VALUE > 0))"]},
            {"name": "public.tier", "kind": "domain", "base": "public.plan", "not_null": true,
             "checks": ["CHECK ((VALUE IS NOT NULL))", "CHECK ((VALUE <> 'team'::public.plan))"]},
            {"name": "public.address", "kind": "composite", "attributes": [
                {"name": "street", "type": "text"}, {"name": "zip", "type": "character varying(10)"},
                {"name": "plan", "type": "public.plan"}]},
            {"name": "\"Odd\".\"Mood\"", "kind": "enum", "labels": ["ok"]},
            {"name": "public.span", "kind": "range", "subtype": "double precision"},
            {"name": "public.citext", "kind": "extension", "extension": "citext"},
        ],
    })
}

async fn catalog(pg: &Postgres) -> Catalog {
    Catalog::connect(&PgConfig::parse(&pg.url("postgres")).unwrap())
        .await
        .unwrap()
}

async fn schema_of(catalog: &Catalog, table: &str, key: &[&str]) -> Value {
    let rel = catalog
        .relation("public", table)
        .await
        .unwrap()
        .expect("the table exists");
    let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    let schema = catalog.table_schema(&rel, &key).await.unwrap();
    let data = schema.to_data();
    // What is published reads back as the same schema.
    assert_eq!(walguard::event::schema::TableSchema::parse(&data).unwrap(), schema);
    serde_json::from_slice(&data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_kind_reads_as_its_golden_schema_and_as_format_type_prints_it() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let catalog = catalog(&pg).await;
    for batch in KINDS.split("\n--\n") {
        catalog.client().batch_execute(batch).await.unwrap();
    }
    let got = schema_of(&catalog, "kinds", &["id"]).await;
    assert_eq!(got, golden_kinds(), "\n{}", serde_json::to_string_pretty(&got).unwrap());

    // The oracle: PostgreSQL's own format_type with an empty search_path, for every column and
    // every type the walk listed.
    let client = catalog.client();
    client.batch_execute("SET search_path = ''").await.unwrap();
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
             WHERE attrelid = 'public.kinds'::pg_catalog.regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap();
    let columns = got["columns"].as_array().unwrap();
    assert_eq!(rows.len(), columns.len());
    for (row, column) in rows.iter().zip(columns) {
        assert_eq!(column["name"], row.get::<_, String>(0));
        assert_eq!(column["type"], row.get::<_, String>(1), "{column}");
    }
    for ty in got["types"].as_array().unwrap() {
        let name = ty["name"].as_str().unwrap();
        let row = client
            .query_one(
                &format!(
                    "SELECT pg_catalog.format_type('{}'::pg_catalog.regtype, NULL)",
                    name.replace('\'', "''")
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(name, row.get::<_, String>(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_identities_generated_columns_and_partitioned_roots() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap().unwrap();
    let catalog = catalog(&pg).await;
    let v18 = catalog.server_version_num().await.unwrap() >= 180000;
    catalog
        .client()
        .batch_execute(
            "CREATE TABLE public.ledger (a text NOT NULL, b int NOT NULL, amount numeric,
               total numeric GENERATED ALWAYS AS (amount * 2) STORED, PRIMARY KEY (b, a));
             ALTER TABLE public.ledger REPLICA IDENTITY FULL;
             CREATE TABLE public.nopk (code text NOT NULL, v text);
             CREATE UNIQUE INDEX nopk_code ON public.nopk (code);
             ALTER TABLE public.nopk REPLICA IDENTITY USING INDEX nopk_code;
             CREATE TABLE public.parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE public.parted_eu PARTITION OF public.parted FOR VALUES IN ('eu');",
        )
        .await
        .unwrap();

    let ledger = schema_of(&catalog, "ledger", &["b", "a"]).await;
    assert_eq!(ledger["primary_key"], json!(["b", "a"]));
    assert_eq!(ledger["key"], json!(["b", "a"]));
    assert_eq!(ledger["replica_identity"], "full");
    let names: Vec<&str> = ledger["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    if v18 {
        // PostgreSQL 18 can publish stored generated columns; they are marked.
        assert_eq!(names, ["a", "b", "amount", "total"]);
        assert_eq!(
            ledger["columns"][3],
            json!({"name": "total", "type": "numeric", "not_null": false, "generated": true})
        );
    } else {
        assert_eq!(names, ["a", "b", "amount"]);
    }
    assert_eq!(
        ledger["columns"][0],
        json!({"name": "a", "type": "text", "not_null": true})
    );
    assert_eq!(ledger["types"], json!([]));

    let nopk = schema_of(&catalog, "nopk", &["code"]).await;
    assert_eq!(nopk["primary_key"], json!([]));
    assert_eq!(nopk["replica_identity"], "index");

    // A partitioned table is published under its root (publish_via_partition_root).
    let parted = schema_of(&catalog, "parted", &["id", "region"]).await;
    assert_eq!(parted["table"], "parted");
    assert_eq!(parted["primary_key"], json!(["id", "region"]));
    assert_eq!(
        parted["columns"][1],
        json!({"name": "region", "type": "text", "not_null": true})
    );
}

/// The labels of `public.mood` in a schema event.
fn mood_labels(schema: &Value) -> Vec<String> {
    schema["types"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "public.mood")
        .map(|t| {
            t["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// For every row event of `table`: the labels of the newest schema event of the table before
/// it, by the row's id (`None` when no schema event precedes it).
fn labels_before_rows(stream: &[crate::harness::Stored], table: &str) -> Vec<(i64, Option<Vec<String>>)> {
    let mut newest: Option<Vec<String>> = None;
    let mut out = Vec::new();
    for m in stream {
        if m.json["type"] == "walguard.schema" && m.json["subject"] == table {
            newest = Some(mood_labels(m.data()));
        } else if !m.is_marker()
            && format!(
                "{}.{}",
                m.data()["schema"].as_str().unwrap_or(""),
                m.data()["table"].as_str().unwrap_or("")
            ) == table
        {
            out.push((m.data()["key"]["id"].as_i64().unwrap(), newest.clone()));
        }
    }
    out
}

/// SPEC section 7: `ALTER TYPE ... ADD VALUE` while streaming sends no Relation message, yet
/// the first row holding the new label (directly, in an array, through a domain, in a
/// composite and in an array of composites) is preceded
/// by a schema event listing it; the stream verifies; a restart adds no duplicate; a restore
/// into a new schema creates the enum with the label and holds the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_enum_label_while_streaming_puts_a_schema_event_before_the_row_that_uses_it() {
    use crate::harness::Env;
    use std::time::Duration;
    let env = Env::start(
        "CREATE TYPE public.mood AS ENUM ('sad', 'ok');
         CREATE DOMAIN public.dmood AS public.mood;
         CREATE TABLE public.moods (id int PRIMARY KEY, m public.mood, ms public.mood[], d public.dmood);
         CREATE TABLE public.others (id int PRIMARY KEY, m public.mood);
         CREATE TYPE public.visit AS (n int, m public.mood);
         CREATE TABLE public.visits (id int PRIMARY KEY, v public.visit, vs public.visit[]);",
        "[[tables]]\nname = \"public.moods\"\n\n[[tables]]\nname = \"public.others\"\n\n\
         [[tables]]\nname = \"public.visits\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    let db = &env.db;
    db.batch_execute(
        "INSERT INTO moods VALUES (1, 'ok', '{sad}', 'sad'); INSERT INTO others VALUES (1, 'ok');
         INSERT INTO visits VALUES (0, ROW(0, 'ok'), NULL)",
    )
    .await
    .unwrap();
    // The schema is read from the catalog as it is when walguard decodes, so each row is in
    // the stream before the next label is added (else an earlier schema event would already
    // list it). Each label is committed before a row uses it, as PostgreSQL requires.
    env.wait_events(3, Duration::from_secs(60)).await;
    for (n, (label, insert)) in [
        ("glad", "moods VALUES (2, 'glad', NULL, NULL)"),
        ("meh", "moods VALUES (3, 'ok', '{ok,meh}', NULL)"),
        ("zen", "moods VALUES (4, NULL, NULL, 'zen')"),
        ("calm", "visits VALUES (1, ROW(1, 'calm'), NULL)"),
        (
            "warm",
            "visits VALUES (2, NULL, ARRAY[ROW(2, 'ok'), ROW(3, 'warm')]::visit[])",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        db.batch_execute(&format!("ALTER TYPE mood ADD VALUE '{label}'"))
            .await
            .unwrap();
        db.batch_execute(&format!("INSERT INTO {insert}")).await.unwrap();
        env.wait_events(4 + n, Duration::from_secs(60)).await;
    }
    // A row with a label its schema already lists needs no new schema event.
    db.batch_execute("INSERT INTO moods VALUES (5, 'glad', '{meh}', 'zen')")
        .await
        .unwrap();
    env.wait_events(9, Duration::from_secs(60)).await;
    let stream = env.read_stream().await;
    let labels = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        labels_before_rows(&stream, "public.moods"),
        [
            (1, labels(&["sad", "ok"])),
            (2, labels(&["sad", "ok", "glad"])),
            (3, labels(&["sad", "ok", "glad", "meh"])),
            (4, labels(&["sad", "ok", "glad", "meh", "zen"])),
            (5, labels(&["sad", "ok", "glad", "meh", "zen"])),
        ],
        "{stream:#?}"
    );
    let schema_events = |s: &[crate::harness::Stored], table: &str| {
        s.iter()
            .filter(|m| m.json["type"] == "walguard.schema" && m.json["subject"] == table)
            .count()
    };
    assert_eq!(
        labels_before_rows(&stream, "public.visits"),
        [
            (0, labels(&["sad", "ok"])),
            (1, labels(&["sad", "ok", "glad", "meh", "zen", "calm"])),
            (2, labels(&["sad", "ok", "glad", "meh", "zen", "calm", "warm"])),
        ],
        "{stream:#?}"
    );
    assert_eq!(schema_events(&stream, "public.moods"), 4, "{stream:#?}");
    assert_eq!(schema_events(&stream, "public.visits"), 3, "{stream:#?}");
    // The other table never held a new label: its one schema event stands.
    assert_eq!(schema_events(&stream, "public.others"), 1, "{stream:#?}");

    // A restart with the shape unchanged adds no schema event (visits); moods' newest lacks
    // the labels its rows never held but the catalog now lists, so its next row has one.
    wg.stop_cleanly().await;
    let mut wg = env.spawn();
    db.batch_execute(
        "INSERT INTO moods VALUES (6, 'zen', '{glad}', 'meh'); INSERT INTO others VALUES (2, 'zen');
         INSERT INTO visits VALUES (3, ROW(4, 'warm'), NULL)",
    )
    .await
    .unwrap();
    let stream = env.wait_events(12, Duration::from_secs(60)).await;
    let stream_all = env.read_stream().await;
    assert_eq!(schema_events(&stream_all, "public.visits"), 3, "{stream_all:#?}");
    assert_eq!(schema_events(&stream_all, "public.moods"), 5, "{stream_all:#?}");
    // The other table's row uses a label its schema event lacks: a schema event for it.
    assert_eq!(schema_events(&stream_all, "public.others"), 2, "{stream_all:#?}");
    assert_eq!(
        labels_before_rows(&stream_all, "public.others").last(),
        Some(&(2, labels(&["sad", "ok", "glad", "meh", "zen", "calm", "warm"])))
    );
    drop(stream);
    wg.stop_cleanly().await;

    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");

    // Restored on a brand-new server, so the enum is created from the schema events alone.
    // First as of row 5, when the other table's newest schema event still lacked the later
    // labels: the enum is created with the newest labels any table's schema event lists, and
    // both tables restore.
    let at_row5 = stream_all
        .iter()
        .find(|m| !m.is_marker() && m.data()["table"] == "moods" && m.data()["key"]["id"] == 5)
        .expect("row 5 is in the stream")
        .seq
        .to_string();
    let fresh = tokio::task::spawn_blocking(walguard::testkit::Postgres::start)
        .await
        .unwrap()
        .unwrap();
    let target = fresh.url("postgres");
    let config = env.config.to_str().unwrap();
    let restore = |into: &'static str, at: Option<&str>| {
        let mut args = vec!["restore", "-c", config, "--into", into, "--target", &target];
        if let Some(at) = at {
            args.extend(["--at", at]);
        }
        let (code, stdout, stderr) = env.command(&args);
        assert_eq!(code, 0, "{stdout}{stderr}");
    };
    restore("asof5", Some(&at_row5));
    restore("restored", None);
    let restored_db = crate::harness::connect_db(&target).await;
    let enum_labels = texts(
        &restored_db,
        "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = 'public.mood'::regtype ORDER BY enumsortorder",
    )
    .await;
    assert_eq!(enum_labels, ["sad", "ok", "glad", "meh", "zen", "calm", "warm"]);
    let rows = |client: &'static str, schema: &'static str, table: &'static str, upto: i32| {
        let db = if client == "source" { db } else { &restored_db };
        let sql = format!("SELECT row_to_json(x)::text FROM {schema}.{table} x WHERE id <= {upto} ORDER BY 1");
        async move { texts(db, &sql).await }
    };
    for table in ["moods", "others", "visits"] {
        let all = rows("source", "public", table, 100).await;
        assert!(!all.is_empty());
        assert_eq!(rows("target", "restored", table, 100).await, all, "{table}");
    }
    assert_eq!(
        rows("target", "asof5", "moods", 100).await,
        rows("source", "public", "moods", 5).await
    );
    assert_eq!(
        rows("target", "asof5", "others", 100).await,
        rows("source", "public", "others", 1).await
    );
    assert_eq!(
        rows("target", "asof5", "visits", 100).await,
        rows("source", "public", "visits", 2).await
    );
}

/// The first column of every row of `sql`, as text.
async fn texts(db: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    db.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}
