//! walguard against the two physical ceilings that bound it, in one run on one machine.
//!
//! For each workload a private PostgreSQL (fsync on) and nats-server (JetStream, file storage)
//! are started, walguard guards a typical legacy table, and the workload's WAL is drained three
//! ways: by `pg_recvlogical` (pgoutput v1, same publication, a second slot over the same WAL),
//! by a bare JetStream publisher (messages of walguard's average event size, acks pipelined,
//! no PostgreSQL), and by walguard (slot to last PubAck, every event chained and group-signed).
//! W3 runs a fixed-rate live load and reads back, for every event, the time the server stored
//! it minus the commit time in the event: commit-to-PubAck latency.
//!
//! Two more parts run only when named: `audit` (the transparency log's cost: checkpoints,
//! a witness, the tree, `prove`; bench/audit.rs) and `recovery` (archive, restore and the
//! console over a 1,000,000-event stream; bench/recovery.rs).
//!
//! `bench/run` (or `cargo bench --bench pipeline -- [w1] [w2] [w3] [audit] [recovery]`);
//! method and figures in bench/README.md. Results: a table on stdout and JSON in
//! bench/results/.

mod audit;
#[path = "../tests/harness/mod.rs"]
mod harness;
mod measure;
mod recovery;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use harness::{process_cpu_seconds, Env, Walguard};
use serde_json::json;
use walguard::testkit::{Nats, Postgres};

const TABLE: &str = "[[tables]]\nname = \"public.orders\"\n";
/// A typical legacy table: bigint key, text, numeric, boolean, jsonb, timestamptz.
const SCHEMA: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12,2) NOT NULL,
    paid boolean NOT NULL,
    attrs jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE SEQUENCE orders_new_id START 2000001;";
/// Rows present before walguard starts (W2 and W3 update them).
const PREFILL: i64 = 10_000;
/// One UPDATE and one INSERT per transaction (W2, W3).
const PGBENCH_SCRIPT: &str = "\\set aid random(1, 10000)
BEGIN;
UPDATE orders SET amount = amount + 1, paid = NOT paid, updated_at = now() WHERE id = :aid;
INSERT INTO orders (id, customer, amount, paid, attrs) VALUES (nextval('orders_new_id'), 'walk-in customer', 12.50, false, '{\"sku\": \"SKU-1042\", \"qty\": 1, \"channel\": \"store\"}');
END;
";
const SUBJECTS: &str = "wg.public.orders.>";
/// The bare publisher's acks in flight (the best of 256..8192 here; walguard uses 1024).
const CEILING_WINDOW: usize = 4096;

#[derive(Default, Clone, serde::Serialize)]
struct Row {
    workload: String,
    changes: u64,
    /// Average stored event (payload and headers), bytes.
    event_bytes: u64,
    recvlogical_per_s: Option<f64>,
    jetstream_per_s: Option<f64>,
    /// The bare publisher again with the headers every walguard event carries.
    jetstream_spec_headers_per_s: Option<f64>,
    walguard_per_s: Option<f64>,
    /// walguard's seconds from process start to its first PubAck (connect, checks, tail).
    walguard_startup_s: Option<f64>,
    ratio: Option<f64>,
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    /// Commit to delivery for pg_recvlogical on a second slot during W3: what PostgreSQL's
    /// walsender alone takes to hand a committed transaction to a client.
    recvlogical_ms_p50: Option<f64>,
    recvlogical_ms_p99: Option<f64>,
    recvlogical_ms_max: Option<f64>,
    /// PostgreSQL's own latency for the same transactions, as pgbench saw it.
    pgbench_ms_p50: Option<f64>,
    pgbench_ms_p99: Option<f64>,
    pgbench_ms_max: Option<f64>,
    achieved_tx_per_s: Option<f64>,
    peak_rss_mib: f64,
    cpu_s: f64,
    /// nats-server's CPU seconds while walguard published, and while the bare publisher did
    /// (without and with SPEC's headers): the server's work per message for each.
    nats_cpu_s_walguard: Option<f64>,
    nats_cpu_s_jetstream: Option<f64>,
    nats_cpu_s_jetstream_spec_headers: Option<f64>,
    /// The stream's last sequence before walguard drained the workload (W1, W2).
    #[serde(skip)]
    drained_after_seq: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    // Without arguments, the three workloads; `audit` and `recovery` only when named.
    let named = |w: &str| args.iter().any(|a| a.eq_ignore_ascii_case(w));
    let wanted = |w: &str| named(w) || (args.is_empty() && w.starts_with('w'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rows, parts) = runtime.block_on(async {
        let mut rows = Vec::new();
        let mut parts = serde_json::Map::new();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        parts.insert("load_average_start".into(), json!(load.trim()));
        if wanted("w1") {
            rows.push(catch_up(&env().await, "W1", Workload::OneBigTransaction).await);
        }
        if wanted("w2") {
            rows.push(catch_up(&env().await, "W2", Workload::SmallTransactions).await);
        }
        if wanted("w3") {
            rows.push(live("W3").await);
        }
        if named("audit") {
            let report = audit::run().await;
            audit::print(&report);
            parts.insert("audit".into(), json!(report));
        }
        if named("recovery") {
            let report = recovery::run().await;
            recovery::print(&report);
            parts.insert("recovery".into(), json!(report));
        }
        (rows, parts)
    });
    if !rows.is_empty() {
        print_table(&rows);
    }
    save(&rows, parts);
}

#[derive(Clone, Copy)]
enum Workload {
    /// 1,000,000 rows inserted by one transaction.
    OneBigTransaction,
    /// 100,000 transactions of one UPDATE and one INSERT.
    SmallTransactions,
}

fn settings() -> Vec<(&'static str, &'static str)> {
    // BENCH_FSYNC=off separates what the disk's WAL flushes add to W3's latency.
    let fsync = match std::env::var("BENCH_FSYNC").as_deref() {
        Ok("off") => "off",
        _ => "on",
    };
    vec![
        ("fsync", fsync),
        ("shared_buffers", "256MB"),
        ("max_wal_size", "8GB"),
        ("checkpoint_timeout", "30min"),
    ]
}

/// One workload's private servers, walguard's config, and the bench's own NATS client.
struct Bench {
    env: Env,
    js: jetstream::Context,
}

impl std::ops::Deref for Bench {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

async fn env() -> Bench {
    let pg = Postgres::start_with(&settings()).expect("start PostgreSQL");
    let nats = Nats::start().expect("start nats-server");
    let env = Env::start_with(pg, nats, SCHEMA, TABLE, "").await;
    eprintln!(
        "PostgreSQL {} on port {}, {} at {}",
        env.pg.version,
        env.pg.port(),
        env.nats.version,
        env.nats.url()
    );
    let js = env.js().await;
    Bench { env, js }
}

/// Runs walguard once so that it creates its publication, slot and stream and publishes the
/// baseline of `prefill` rows, then stops it; creates the second slot for pg_recvlogical.
async fn prepare(env: &Bench, prefill: i64) {
    if prefill > 0 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO orders SELECT g, 'customer ' || g, g % 1000 + 0.5, g % 2 = 0, \
                 jsonb_build_object('sku', 'SKU-' || g % 5000, 'qty', g % 7), now() FROM generate_series(1, {prefill}) g"
            ))
            .await
            .unwrap();
    }
    let mut wg = env.spawn_ready().await;
    wait_count(env, "snapshot", prefill as u64, Duration::from_secs(120)).await;
    assert_eq!(
        wg.stop(Duration::from_secs(30)).await,
        Some(0),
        "walguard stops cleanly:\n{}",
        wg.output()
    );
    env.db
        .batch_execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput'); CHECKPOINT;")
        .await
        .unwrap();
}

/// W1/W2: the workload commits while walguard is down, then each reader drains its WAL.
async fn catch_up(env: &Bench, name: &str, workload: Workload) -> Row {
    let prefill = match workload {
        Workload::OneBigTransaction => 0,
        Workload::SmallTransactions => PREFILL,
    };
    prepare(env, prefill).await;
    let base = table_events(env).await;
    let drained_after_seq = env.stream_messages().await;
    let started = Instant::now();
    let changes = match workload {
        Workload::OneBigTransaction => {
            insert_orders(env, 1_000_000).await;
            1_000_000
        }
        Workload::SmallTransactions => {
            pgbench(env, &["-c", "8", "-j", "2", "-t", "12500"]);
            200_000
        }
    };
    eprintln!("{name}: {changes} changes committed in {:.1?}", started.elapsed());
    let end = current_lsn(env).await;

    // BENCH_QUICK=1: walguard alone, no ceilings (for comparing walguard builds quickly).
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let recv_rate = if quick {
        None
    } else {
        let recv = drain_recvlogical(env, &end);
        let rate = changes as f64 / recv.as_secs_f64();
        eprintln!("{name}: pg_recvlogical drained them in {recv:.2?}: {rate:.0}/s");
        Some(rate)
    };

    let nats_cpu = || process_cpu_seconds(env.nats.pid().expect("nats-server runs"));
    let before = nats_cpu();
    let run = run_walguard(env, base, changes).await;
    let nats_cpu_walguard = nats_cpu() - before;
    let wg_rate = changes as f64 / run.elapsed.as_secs_f64();
    eprintln!(
        "{name}: walguard published them in {:.2?} (first PubAck after {:.2?}): {wg_rate:.0}/s",
        run.elapsed, run.startup
    );

    eprintln!("{name}: nats-server used {nats_cpu_walguard:.1} CPU seconds meanwhile");
    let (payload_bytes, header_bytes) = average_event_bytes(env, changes).await;
    let event_bytes = payload_bytes + header_bytes;
    let mut row = Row {
        workload: name.into(),
        changes,
        event_bytes,
        recvlogical_per_s: recv_rate,
        walguard_per_s: Some(wg_rate),
        walguard_startup_s: Some(run.startup.as_secs_f64()),
        peak_rss_mib: run.peak_rss_kib as f64 / 1024.0,
        cpu_s: run.cpu_s,
        nats_cpu_s_walguard: Some(nats_cpu_walguard),
        drained_after_seq,
        ..Row::default()
    };
    let Some(recv_rate) = recv_rate else {
        return row;
    };
    let before = nats_cpu();
    let ceiling = jetstream_ceiling(env, changes, event_bytes, false).await;
    let nats_cpu_jetstream = nats_cpu() - before;
    let js_rate = changes as f64 / ceiling.as_secs_f64();
    eprintln!("{name}: bare JetStream publisher, {event_bytes}-byte messages: {js_rate:.0}/s");
    let before = nats_cpu();
    let with_headers = jetstream_ceiling(env, changes, payload_bytes, true).await;
    let nats_cpu_headers = nats_cpu() - before;
    let js_headers_rate = changes as f64 / with_headers.as_secs_f64();
    eprintln!("{name}: the same with SPEC's headers (Nats-Msg-Id, Nats-Expected-Last-Sequence, Content-Type): {js_headers_rate:.0}/s");
    eprintln!(
        "{name}: nats-server used {nats_cpu_jetstream:.1} CPU seconds for the bare publisher, {nats_cpu_headers:.1} with SPEC's headers"
    );

    verify(env);
    row.jetstream_per_s = Some(js_rate);
    row.jetstream_spec_headers_per_s = Some(js_headers_rate);
    row.ratio = Some(wg_rate / recv_rate.min(js_rate));
    row.nats_cpu_s_jetstream = Some(nats_cpu_jetstream);
    row.nats_cpu_s_jetstream_spec_headers = Some(nats_cpu_headers);
    row
}

/// W1's one transaction: `n` new rows of `orders` (ids from 1,000,001).
async fn insert_orders(env: &Bench, n: u64) {
    env.db
        .batch_execute(&format!(
            "INSERT INTO orders SELECT g, 'customer ' || g, g % 100000 / 100.0, g % 2 = 0, \
             jsonb_build_object('sku', 'SKU-' || g % 5000, 'qty', g % 7, 'channel', 'web'), now() \
             FROM generate_series(1000001, {}) g",
            1_000_000 + n
        ))
        .await
        .unwrap();
}

/// W3: pgbench at a fixed rate while walguard streams; latency from the stored messages.
async fn live(name: &str) -> Row {
    let rate = std::env::var("BENCH_W3_RATE").unwrap_or_else(|_| "2000".into());
    let seconds: u64 = std::env::var("BENCH_W3_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let env = env().await;
    prepare(&env, PREFILL).await;
    let base_seq = env.stream_messages().await;
    let base = table_events(&env).await;
    let mut wg = Walguard::spawn_logging(&env.config, env.dir.path(), "info");
    wait_streaming(&env, &mut wg, base_seq).await;
    let baseline = LiveRecvlogical::start(&env).await;
    let profiler = profile(wg.pid());
    let started = Instant::now();
    let log_prefix = format!("--log-prefix={}", env.dir.path().join("pgbench_log").display());
    let seconds = seconds.to_string();
    pgbench(
        &env,
        &["-c", "4", "-j", "2", "-R", &rate, "-T", &seconds, "-l", &log_prefix],
    );
    let elapsed = started.elapsed();
    let recv = summary(baseline.stop());
    let commits = summary(pgbench_latencies_ms(env.dir.path()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = committed_transactions(&env).await;
    while table_events(&env).await < base + committed * 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = wg.peak_rss_kib();
    let cpu = wg.cpu_seconds();
    stop_profile(profiler);
    // BENCH_SHOW_METRICS=1: walguard's own view (walguard_publish_ack_seconds and the rest).
    if std::env::var("BENCH_SHOW_METRICS").is_ok() {
        let metrics = measure::http_get(env.listen_port, "/metrics", &[]).await;
        eprintln!("{}", metrics.map(|(_, body)| body).unwrap_or_default());
    }
    assert_eq!(
        wg.stop(Duration::from_secs(30)).await,
        Some(0),
        "walguard stops cleanly:\n{}",
        wg.output()
    );
    let latencies = latencies_ms(&env, base_seq + 1).await;
    assert_eq!(
        latencies.len() as u64,
        committed * 2,
        "every committed change of W3 is in the stream"
    );
    let latency = summary(latencies);
    let (payload_bytes, header_bytes) = average_event_bytes(&env, committed * 2).await;
    let event_bytes = payload_bytes + header_bytes;
    eprintln!(
        "{name}: {committed} transactions in {elapsed:.1?}; p50/p99/max ms: walguard commit-to-PubAck {latency:.2?}, pg_recvlogical on a second pgoutput slot {recv:.2?}, pgbench transactions {commits:.2?}"
    );
    verify(&env);
    Row {
        workload: name.into(),
        changes: committed * 2,
        recvlogical_ms_p50: Some(recv[0]),
        recvlogical_ms_p99: Some(recv[1]),
        recvlogical_ms_max: Some(recv[2]),
        event_bytes,
        latency_ms_p50: Some(latency[0]),
        latency_ms_p99: Some(latency[1]),
        latency_ms_max: Some(latency[2]),
        pgbench_ms_p50: Some(commits[0]),
        pgbench_ms_p99: Some(commits[1]),
        pgbench_ms_max: Some(commits[2]),
        achieved_tx_per_s: Some(committed as f64 / elapsed.as_secs_f64()),
        peak_rss_mib: peak as f64 / 1024.0,
        cpu_s: cpu,
        ..Row::default()
    }
}

struct Run {
    elapsed: Duration,
    startup: Duration,
    peak_rss_kib: u64,
    cpu_s: f64,
}

/// Starts walguard on the slot's backlog and times it until the stream holds `changes` more
/// table events than `base` (the server's own per-subject counts).
async fn run_walguard(env: &Bench, base: u64, changes: u64) -> Run {
    let started = Instant::now();
    let mut wg = Walguard::spawn_logging(&env.config, env.dir.path(), "info");
    let profiler = profile(wg.pid());
    let mut first = None;
    let deadline = started + Duration::from_secs(1800);
    loop {
        let n = table_events(env).await - base;
        if n > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if n >= changes {
            break;
        }
        if let Some(code) = wg.exited() {
            panic!("walguard exited with {code}:\n{}", wg.output());
        }
        assert!(Instant::now() < deadline, "walguard did not catch up:\n{}", wg.output());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let run = Run {
        elapsed,
        startup: first.unwrap_or(elapsed),
        peak_rss_kib: wg.peak_rss_kib(),
        cpu_s: wg.cpu_seconds(),
    };
    stop_profile(profiler);
    assert_eq!(
        wg.stop(Duration::from_secs(30)).await,
        Some(0),
        "walguard stops cleanly:\n{}",
        wg.output()
    );
    run
}

/// With `BENCH_PERF=FILE`: `perf record` of the walguard process into FILE (call graphs)
/// while it drains the backlog.
fn profile(pid: u32) -> Option<std::process::Child> {
    let out = std::env::var("BENCH_PERF").ok()?;
    // BENCH_PERF_SYSTEM=1: every process on the machine, without call graphs (who uses the
    // CPUs while walguard runs: walsender, nats-server, walguard).
    let target = match std::env::var("BENCH_PERF_SYSTEM") {
        Ok(_) => vec!["-a".to_owned()],
        Err(_) => measure::call_graph_of(pid),
    };
    Some(measure::perf_record(&out, &target))
}

fn stop_profile(profiler: Option<std::process::Child>) {
    measure::stop_perf(profiler);
}

async fn wait_streaming(env: &Bench, wg: &mut Walguard, base_seq: u64) {
    // walguard publishes a watermark once it streams and the server has moved on; a no-op
    // transaction on another table moves the server.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.stream_messages().await <= base_seq {
        env.db.batch_execute("SELECT txid_current()").await.unwrap();
        if let Some(code) = wg.exited() {
            panic!("walguard exited with {code}:\n{}", wg.output());
        }
        assert!(Instant::now() < deadline, "walguard did not stream:\n{}", wg.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table's events in the stream (all ops), from the server's per-subject counts.
async fn table_events(env: &Bench) -> u64 {
    subject_counts(env).await.iter().map(|(_, n)| n).sum()
}

async fn wait_count(env: &Bench, op: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have: u64 = subject_counts(env)
            .await
            .iter()
            .filter(|(s, _)| s.ends_with(&format!(".{op}")))
            .map(|(_, n)| n)
            .sum();
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {have} of {n} {op} events");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn subject_counts(env: &Bench) -> Vec<(String, u64)> {
    let js = &env.js;
    let stream = js.get_stream(&env.stream).await.expect("the stream exists");
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(SUBJECTS)
        .await
        .expect("stream info")
        .try_collect()
        .await
        .expect("subject counts");
    counts.into_iter().map(|(s, n)| (s, n as u64)).collect()
}

async fn current_lsn(env: &Bench) -> String {
    env.db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn committed_transactions(env: &Bench) -> u64 {
    let n: i64 = env
        .db
        .query_one("SELECT count(*) FROM orders WHERE id > 2000000", &[])
        .await
        .unwrap()
        .get(0);
    n as u64
}

fn pgbench(env: &Bench, args: &[&str]) {
    let script = env.dir.path().join("w.sql");
    std::fs::write(&script, PGBENCH_SCRIPT).unwrap();
    let out = pg_tool(env, "pgbench")
        .args(["-n", "-f"])
        .arg(&script)
        .args(args)
        .arg("postgres")
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("latency") || l.starts_with("tps"))
    {
        eprintln!("  pgbench: {line}");
    }
}

/// p50, p99 and max of `values` (NaN when empty).
fn summary(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        values
            .get(((values.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    [at(0.5), at(0.99), at(1.0)]
}

/// Per-transaction latencies from pgbench's logs (`-l`) in `dir`, without the schedule lag
/// that `--rate` adds: from the transaction's actual start to its COMMIT returning.
fn pgbench_latencies_ms(dir: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("pgbench_log") {
            continue;
        }
        // client_id transaction_no time script_no time_epoch time_us schedule_lag
        for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            let f: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if f.len() >= 7 {
                out.push((f[2] - f[6]) / 1e3);
            }
        }
    }
    out
}

/// pg_recvlogical streaming a second pgoutput slot (same publication) live: for each
/// transaction, the time its Commit message was read minus the commit time it carries.
struct LiveRecvlogical {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<f64>>,
}

impl LiveRecvlogical {
    async fn start(env: &Bench) -> LiveRecvlogical {
        env.db
            .batch_execute("SELECT pg_create_logical_replication_slot('bench_live', 'pgoutput')")
            .await
            .unwrap();
        let mut child = recvlogical(env, "bench_live")
            .args(["-f", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run pg_recvlogical");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut out = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = SystemTime::now();
                pending.extend_from_slice(&chunk[..n]);
                let consumed = scan_commits(&pending, now, &mut out);
                pending.drain(..consumed);
            }
            out
        });
        LiveRecvlogical { child, reader }
    }

    fn stop(mut self) -> Vec<f64> {
        // Let it read what is committed, then stop it.
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        self.reader.join().unwrap_or_default()
    }
}

/// Finds pgoutput Commit messages in pg_recvlogical's output (each message followed by a
/// newline): `C`, flags 0, commit LSN, end LSN, commit time (microseconds since 2000-01-01),
/// `\n`, 27 bytes. The LSNs must be close and the time near `now`, so that row data that
/// happens to contain the same bytes is not taken for a commit. Returns how many bytes of
/// `buf` are done with (a possible commit cut at the end of the read is kept).
fn scan_commits(buf: &[u8], now: SystemTime, out: &mut Vec<f64>) -> usize {
    const LEN: usize = 27;
    const PG_EPOCH: Duration = Duration::from_secs(946_684_800);
    let u64_at = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
    let mut i = 0;
    while i + LEN <= buf.len() {
        let m = &buf[i..i + LEN];
        let (commit, end) = (u64_at(m, 2), u64_at(m, 10));
        if m[0] == b'C' && m[1] == 0 && m[26] == b'\n' && end > commit && end - commit < 4096 {
            let at = UNIX_EPOCH + PG_EPOCH + Duration::from_micros(u64_at(m, 18));
            if let Ok(d) = now.duration_since(at) {
                if d < Duration::from_secs(600) {
                    out.push(d.as_secs_f64() * 1e3);
                    i += LEN;
                    continue;
                }
            }
        }
        i += 1;
    }
    i
}

/// A PostgreSQL client program of the server's version, connected to it as `postgres`.
fn pg_tool(env: &Bench, name: &str) -> Command {
    let mut cmd = Command::new(env.pg.bin_dir().join(name));
    cmd.args(["-h", "127.0.0.1", "-p", &env.pg.port().to_string(), "-U", "postgres"]);
    cmd
}

/// pg_recvlogical streaming `slot` with pgoutput v1 and walguard's publication.
fn recvlogical(env: &Bench, slot: &str) -> Command {
    let mut cmd = pg_tool(env, "pg_recvlogical");
    cmd.args(["-d", "postgres", "--slot", slot, "--start"]).args([
        "-o",
        "proto_version=1",
        "-o",
        "publication_names=wg_pub",
    ]);
    cmd
}

/// `pg_recvlogical` from the bench slot up to `end` into a file; its wall time.
fn drain_recvlogical(env: &Bench, end: &str) -> Duration {
    let out: PathBuf = env.dir.path().join("recvlogical.out");
    let started = Instant::now();
    let status = recvlogical(env, "bench_recv")
        .args(["--no-loop", "--endpos", end, "-f"])
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .expect("run pg_recvlogical");
    let elapsed = started.elapsed();
    assert!(status.success(), "pg_recvlogical failed: {status}");
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "pg_recvlogical wrote nothing");
    elapsed
}

/// The average size of walguard's messages, sampled across the run: (payload, headers).
async fn average_event_bytes(env: &Bench, changes: u64) -> (u64, u64) {
    let js = &env.js;
    let stream = js.get_stream(&env.stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let first = last.saturating_sub(changes + 16).max(1);
    let samples = 200u64.min(last - first + 1);
    let (mut payloads, mut headers_total) = (0u64, 0u64);
    for i in 0..samples {
        let seq = first + i * (last - first) / samples.max(1);
        let msg = stream.get_raw_message(seq).await.unwrap();
        let headers: usize = msg
            .headers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| k.to_string().len() + v.as_str().len() + 4))
            .sum();
        payloads += msg.payload.len() as u64;
        headers_total += headers as u64;
    }
    (payloads / samples.max(1), headers_total / samples.max(1))
}

/// A bare publisher on the same server: `n` messages of `size` bytes into a file-storage
/// stream, acks pipelined; its wall time from first publish to last ack. With `spec_headers`,
/// each message also carries the headers SPEC asks of every event (a unique `Nats-Msg-Id`,
/// which the server deduplicates, `Nats-Expected-Last-Sequence`, which it checks, and
/// `Content-Type`): the same server work per message as walguard's, minus signing.
async fn jetstream_ceiling(env: &Bench, n: u64, size: u64, spec_headers: bool) -> Duration {
    let js = &env.js;
    let _ = js.delete_stream("CEILING").await;
    js.create_stream(stream::Config {
        name: "CEILING".into(),
        subjects: vec!["ceiling.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the ceiling stream");
    let payload = Bytes::from(vec![b'x'; size as usize]);
    let mut in_flight = FuturesOrdered::new();
    let started = Instant::now();
    for i in 0..n {
        if in_flight.len() >= CEILING_WINDOW {
            let ack: Result<_, _> = in_flight.next().await.expect("an ack in flight");
            ack.expect("the server acknowledges");
        }
        let mut message = PublishMessage::build().payload(payload.clone());
        if spec_headers {
            message = message
                .message_id(format!("ceiling-{i}"))
                .expected_last_sequence(i)
                .header("Content-Type", "application/cloudevents+json");
        }
        let ack = js.send_publish("ceiling.bench", message).await.expect("publish");
        in_flight.push_back(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = in_flight.next().await {
        ack.expect("the server acknowledges");
    }
    let elapsed = started.elapsed();
    js.delete_stream("CEILING").await.expect("delete the ceiling stream");
    elapsed
}

/// For each table event from `from_seq` on: the time the server stored it minus the commit
/// time the event carries, in milliseconds.
async fn latencies_ms(env: &Bench, from_seq: u64) -> Vec<f64> {
    let js = &env.js;
    let stream = js.get_stream(&env.stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from_seq,
            },
            filter_subject: SUBJECTS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    // BENCH_LATENCY_DUMP=FILE: "sequence commit_unix_seconds latency_ms" per event.
    let mut dump = std::env::var("BENCH_LATENCY_DUMP")
        .ok()
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("create BENCH_LATENCY_DUMP")));
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let msg = msg.unwrap();
        let info = msg.info().unwrap();
        let stored: SystemTime = info.published.into();
        let seq = info.stream_sequence;
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            time: &'a str,
        }
        let event: Event = serde_json::from_slice(&msg.payload).expect("an event");
        let committed = humantime::parse_rfc3339(event.time).expect("an RFC 3339 time");
        let ms = stored
            .duration_since(committed)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or_else(|e| -e.duration().as_secs_f64() * 1e3);
        out.push(ms);
        if let Some(dump) = &mut dump {
            use std::io::Write;
            let at = committed.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            let _ = writeln!(dump, "{seq} {at:.6} {ms:.3}");
        }
        if seq >= last {
            break;
        }
    }
    out
}

/// Appends `text` to walguard's config.
fn append_config(env: &Bench, text: &str) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, config + text).unwrap();
}

/// walguard's public key (SPKI PEM) beside its private key, for `--public-key`.
fn public_key(env: &Bench) -> PathBuf {
    let path = env.dir.path().join("walguard.pub");
    let signer = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    std::fs::write(&path, signer.public_key_pem()).unwrap();
    path
}

fn verify(env: &Bench) {
    let (code, stdout, stderr) = env.command(&["verify", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "walguard verify:\n{stdout}{stderr}");
    eprintln!("  walguard verify: {}", stdout.trim());
}

fn fmt_rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.0}", r))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.1}"))
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<4} {:>9} {:>6} {:>13} {:>12} {:>13} {:>11} {:>6} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "",
        "changes",
        "bytes",
        "recvlogical/s",
        "jetstream/s",
        "js+headers/s",
        "walguard/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "RSS MiB",
        "CPU s"
    );
    for r in rows {
        println!(
            "{:<4} {:>9} {:>6} {:>13} {:>12} {:>13} {:>11} {:>6} {:>7} {:>7} {:>7} {:>8.1} {:>6.1}",
            r.workload,
            r.changes,
            r.event_bytes,
            fmt_rate(r.recvlogical_per_s),
            fmt_rate(r.jetstream_per_s),
            fmt_rate(r.jetstream_spec_headers_per_s),
            fmt_rate(r.walguard_per_s),
            r.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            fmt_ms(r.latency_ms_p50),
            fmt_ms(r.latency_ms_p99),
            fmt_ms(r.latency_ms_max),
            r.peak_rss_mib,
            r.cpu_s
        );
    }
    println!("ratio: walguard / min(recvlogical, jetstream); js+headers: the bare publisher with SPEC's headers");
    for r in rows.iter().filter(|r| r.latency_ms_p99.is_some()) {
        println!(
            "\n{} latency, ms            {:>7} {:>7} {:>7}",
            r.workload, "p50", "p99", "max"
        );
        let line = |what: &str, v: [Option<f64>; 3]| {
            println!(
                "  {what:<24} {:>7} {:>7} {:>7}",
                fmt_ms(v[0]),
                fmt_ms(v[1]),
                fmt_ms(v[2])
            );
        };
        line(
            "walguard commit->PubAck",
            [r.latency_ms_p50, r.latency_ms_p99, r.latency_ms_max],
        );
        line(
            "pg_recvlogical commit->read",
            [r.recvlogical_ms_p50, r.recvlogical_ms_p99, r.recvlogical_ms_max],
        );
        line(
            "pgbench transaction",
            [r.pgbench_ms_p50, r.pgbench_ms_p99, r.pgbench_ms_max],
        );
        if let Some(tps) = r.achieved_tx_per_s {
            println!("  at {tps:.0} transactions/s");
        }
    }
}

/// The whole run: W1-W3 as `workloads`, and each other part under its name.
fn save(rows: &[Row], parts: serde_json::Map<String, serde_json::Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "commit": Command::new("git").args(["rev-parse", "--short", "HEAD"]).output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut doc = json!({ "time": stamp, "machine": machine, "load_average_end": load.trim(), "workloads": rows });
    doc.as_object_mut().unwrap().extend(parts);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let path = dir.join(format!("{now}.json"));
    std::fs::write(&path, &text).unwrap();
    std::fs::write(dir.join("latest.json"), &text).unwrap();
    println!("\nresults: {}", path.display());
}
