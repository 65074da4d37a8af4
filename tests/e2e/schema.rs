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
