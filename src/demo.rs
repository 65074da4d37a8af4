//! `walguard demo`: a throwaway PostgreSQL and nats-server from installed binaries, a legacy
//! table, an outside writer, and the signed events flowing, with a witness (`walguard
//! witness`'s code, in process) cosigning walguard's checkpoints; verified, then the table
//! restored from the stream alone (the code of `restore --into`) and compared with the live
//! one.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::error::exit;
use crate::event::envelope::HEADER_KEY_ID;
use crate::event::stored::Attributes;
use crate::event::{Keyring, Signer};
use crate::testkit::{Nats, Postgres};
use crate::tlog::{Cosigner, KeyKind, Vkey};
use crate::witness::Witness;

const TABLE: &str = "CREATE TABLE public.customers (
    id bigserial PRIMARY KEY,
    email text NOT NULL,
    plan text NOT NULL DEFAULT 'free',
    balance numeric(12,2) NOT NULL DEFAULT 0,
    tags text[] NOT NULL DEFAULT '{}',
    profile jsonb,
    updated_at timestamptz NOT NULL DEFAULT now())";

pub async fn run() -> i32 {
    match demo().await {
        Ok(true) => exit::OK,
        Ok(false) => exit::PROBLEM,
        Err(e) => {
            eprintln!("demo failed: {e}");
            exit::UNAVAILABLE
        }
    }
}

async fn demo() -> Result<bool, String> {
    println!("== starting a private PostgreSQL and nats-server");
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .map_err(|e| e.to_string())??;
    let nats = tokio::task::spawn_blocking(Nats::start)
        .await
        .map_err(|e| e.to_string())??;
    println!("   {} on port {}", pg.version, pg.port());
    println!("   {} at {}", nats.version, nats.url());
    let db = legacy_table(&pg).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = dir.path().join("walguard.key");
    let signer = Signer::generate(&key).map_err(|e| e.to_string())?;
    let (witness_stop, witness_stopped) = watch::channel(false);
    let witness = start_witness(dir.path(), &db, &signer, witness_stopped).await?;
    let cfg = configure(dir.path(), &pg, &nats, &signer, &witness)?;

    let client = async_nats::connect(nats.url()).await.map_err(|e| e.to_string())?;
    let mut events = client.subscribe("walguard.>").await.map_err(|e| e.to_string())?;
    let (stop, stopped) = watch::channel(false);
    let daemon = tokio::spawn(crate::app::run(cfg.clone(), stopped));
    println!("== walguard running; the outside writer starts now\n");
    let (w, p) = tokio::join!(outside_writer(&db), print_events(&mut events));
    w?;
    p?;
    println!("== the rolled-back DELETE never appears; stopping walguard");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(true);
    match daemon.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    }
    let mut keyring = Keyring::default();
    keyring.add(signer.verifying_key());
    let _ = witness_stop.send(true);
    let js = async_nats::jetstream::new(client);
    let intact = verify(&js, &cfg, &keyring, &witness).await?;
    let equal = restore_and_compare(&js, &cfg, &keyring, &db).await?;
    Ok(intact && equal)
}

/// Creates the legacy table an outside system owns; returns the connection it writes on.
async fn legacy_table(pg: &Postgres) -> Result<tokio_postgres::Client, String> {
    let (db, conn) = tokio_postgres::connect(&pg.url("postgres"), NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    db.batch_execute(TABLE).await.map_err(|e| e.to_string())?;
    println!("== legacy table public.customers created (an outside system owns it)");
    Ok(db)
}

/// The demo's witness: its key, and the URL it serves `add-checkpoint` on.
struct DemoWitness {
    vkey: Vkey,
    url: String,
}

/// `walguard witness` in process, for walguard's log on this server (its origin names the
/// server's system identifier), on a loopback port.
async fn start_witness(
    dir: &std::path::Path,
    db: &tokio_postgres::Client,
    signer: &Signer,
    stopped: watch::Receiver<bool>,
) -> Result<DemoWitness, String> {
    let row = db
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
        .map_err(|e| e.to_string())?;
    let system_identifier: String = row.get(0);
    let origin = format!("walguard/{system_identifier}/postgres/walguard_demo");
    let log = Vkey::new(&origin, KeyKind::Ed25519, signer.verifying_key()).map_err(|e| e.to_string())?;
    let key = Signer::generate(&dir.join("witness.key")).map_err(|e| e.to_string())?;
    let cosigner = Cosigner::new("demo.witness/w1", key).map_err(|e| e.to_string())?;
    let vkey = cosigner.vkey().clone();
    let witness = Witness::open(cosigner, vec![log], &dir.join("witness-state")).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(crate::witness::serve(listener, Arc::new(witness), stopped));
    println!("== witness {} listening at {url}", vkey.name());
    Ok(DemoWitness { vkey, url })
}

/// A config file in `dir` (with the witness), loaded as `run` loads it.
fn configure(
    dir: &std::path::Path,
    pg: &Postgres,
    nats: &Nats,
    signer: &Signer,
    witness: &DemoWitness,
) -> Result<Config, String> {
    let config_path = dir.join("walguard.toml");
    std::fs::write(
        &config_path,
        format!(
            "[postgres]\nurl = \"{}\"\nslot = \"walguard_demo\"\npublication = \"walguard_demo\"\n\n\
             [[tables]]\nname = \"public.customers\"\ntype_prefix = \"com.acme.customer\"\n\n\
             [nats]\nurl = \"{}\"\nstream = \"WALGUARD_DEMO\"\nwatermark_interval = \"1s\"\n\n\
             [signing]\nkey_file = \"walguard.key\"\n\n\
             [audit]\ncheckpoint_interval = \"1s\"\n\n\
             [[audit.witnesses]]\nurl = \"{}\"\nkey = \"{}\"\n",
            pg.url("postgres"),
            nats.url(),
            witness.url,
            witness.vkey
        ),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "== signing key {} generated; config at {}",
        signer.key_id(),
        config_path.display()
    );
    Config::load(&config_path).map_err(|e| e.to_string())
}

/// The outside system: inserts, an update under a declared actor, a rolled-back delete and
/// a committed one.
async fn outside_writer(db: &tokio_postgres::Client) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steps: [&str; 4] = [
        "INSERT INTO customers (email, plan, balance, tags, profile) VALUES
           ('ada@example.com', 'pro', 120.50, '{vip,early}', '{\"lang\": \"en\"}'),
           ('bob@example.com', 'free', 0, '{}', NULL)",
        "BEGIN; SELECT pg_logical_emit_message(true, 'walguard.actor', '{\"user\": \"billing-batch\", \"job\": 7}');
         UPDATE customers SET balance = balance + 10, plan = 'pro' WHERE email = 'bob@example.com'; COMMIT",
        "BEGIN; DELETE FROM customers WHERE email = 'ada@example.com'; ROLLBACK",
        "DELETE FROM customers WHERE email = 'ada@example.com'",
    ];
    for sql in steps {
        db.batch_execute(sql).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Prints events as they arrive until the writer's four row events were seen.
async fn print_events(events: &mut async_nats::Subscriber) -> Result<(), String> {
    let mut rows = 0;
    while rows < 4 {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), events.next()).await else {
            return Err("no event arrived within 30 s".to_owned());
        };
        if !print_event(&msg)? {
            rows += 1;
        }
    }
    Ok(())
}

/// Prints one event; returns whether it is a watermark.
fn print_event(msg: &async_nats::Message) -> Result<bool, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("the message on {} is not a walguard event: {e}", msg.subject);
    let a = Attributes::parse(&msg.payload).map_err(|e| unreadable(&e))?;
    // `data` shown as serde_json prints a value: compact, its keys sorted.
    let shown: serde_json::Value = serde_json::from_slice(&msg.payload).map_err(|e| unreadable(&e))?;
    let signed = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_KEY_ID))
        .map_or("unsigned (covered by the next signature)".to_owned(), |k| {
            format!("signed by {k}")
        });
    println!(
        "seq {} {}  {}  {}",
        a.sequence.trim_start_matches('0'),
        msg.subject,
        a.ty,
        signed
    );
    println!(
        "    subject {}  pglsn {}  pgtxidx {}{}",
        a.subject,
        a.pglsn,
        a.pgtxidx,
        a.pgtxcnt.map_or(String::new(), |c| format!("/{c}"))
    );
    println!("    data {}\n", shown["data"]);
    Ok(a.is_watermark())
}

/// `walguard verify` on the demo's stream; whether it is intact.
async fn verify(
    js: &async_nats::jetstream::Context,
    cfg: &Config,
    keyring: &Keyring,
    witness: &DemoWitness,
) -> Result<bool, String> {
    println!("== walguard verify");
    let options = crate::verify::VerifyOptions {
        witnesses: vec![witness.vkey.clone()],
        extending: None,
    };
    let (summary, problems) = crate::verify::verify_stream(js, &cfg.nats.stream, keyring, &options).await?;
    println!(
        "stream {}: {} messages, {} events, {} markers, {} signed",
        cfg.nats.stream, summary.messages, summary.events, summary.watermarks, summary.signed
    );
    if let Some((size, cosigned)) = summary.last_checkpoint {
        println!(
            "{} checkpoints, each the Merkle root of the messages before it; the newest (size {size}) cosigned by {cosigned} witness ({})",
            summary.checkpoints,
            witness.vkey.name()
        );
    }
    if problems.is_empty() {
        println!("intact: chain, signatures, transactions and commit order verified");
        Ok(true)
    } else {
        for p in &problems {
            println!("  {p}");
        }
        Ok(false)
    }
}

/// `walguard restore --into restored` on the demo's stream (the same code, in process), then
/// the restored table compared with the live one: the columns with their types and NOT NULL,
/// and `row_to_json` of every row in key order. Whether they are equal.
async fn restore_and_compare(
    js: &async_nats::jetstream::Context,
    cfg: &Config,
    keyring: &Keyring,
    db: &tokio_postgres::Client,
) -> Result<bool, String> {
    println!("\n== walguard restore --into {RESTORED}: the table rebuilt from the stream alone");
    let source = crate::restore::Source::Stream {
        js: js.clone(),
        stream: cfg.nats.stream.clone(),
    };
    let log = crate::restore::Log::open(&source, keyring).await?;
    let (restored, last) =
        crate::restore::into_schema(log, crate::restore::Wanted::default(), RESTORED, &cfg.pg_config())
            .await
            .map_err(|e| e.to_string())?;
    for r in &restored {
        println!(
            "restored {} rows of {} into {} as of sequence {last}",
            r.rows, r.table, r.target
        );
    }
    let live = table_image(db, "public.customers").await?;
    let copy = table_image(db, &format!("{RESTORED}.customers")).await?;
    if live == copy {
        println!(
            "{RESTORED}.customers equals public.customers: {} columns (types, NOT NULL), {} rows (row_to_json)",
            live.0.len(),
            live.1.len()
        );
        return Ok(true);
    }
    println!("{RESTORED}.customers differs from public.customers:");
    println!("  live     columns {:?}\n           rows {:?}", live.0, live.1);
    println!("  restored columns {:?}\n           rows {:?}", copy.0, copy.1);
    Ok(false)
}

/// The schema the demo restores into.
const RESTORED: &str = "restored";

/// A table's columns (name, `format_type`, NOT NULL) and its rows as `row_to_json`, by key.
type TableImage = (Vec<(String, String, bool)>, Vec<String>);

async fn table_image(db: &tokio_postgres::Client, table: &str) -> Result<TableImage, String> {
    let failed = |e: tokio_postgres::Error| format!("reading {table}: {e}");
    let columns = db
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let rows = db
        .query(&format!("SELECT row_to_json(x)::text FROM {table} x ORDER BY id"), &[])
        .await
        .map_err(failed)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((columns, rows))
}
