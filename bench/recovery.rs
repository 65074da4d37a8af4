//! `cargo bench --bench pipeline -- recovery` (issues 15 and 18): reading the log back.
//!
//! One stream of `BENCH_ROWS` (default 1,000,000) row events: W1's one-transaction insert,
//! drained by walguard. On it, each against a ceiling on the same servers in the same run:
//! - `walguard archive` (one-shot) into a fresh folder, against a bare ordered consumer in
//!   this process that reads every message of the stream and does nothing with it (run
//!   before and after the archive; the ratio is against the faster);
//! - `walguard restore --archive --into` into a fresh schema of the same PostgreSQL, against
//!   `\copy` of the same rows from a CSV file (written by `\copy orders TO` beforehand) into
//!   a table like `orders` (its primary key included, as restore creates one);
//! - `walguard console -c`: time to the first full overview, to an entity page from the
//!   middle of the stream, and to the overview saying the whole stream is verified; its peak
//!   RSS.
//!
//! `BENCH_PERF_DIR=DIR`: `perf record` of the archive, restore and console processes.
//! `BENCH_COMPARE_BIN=PATH`: afterwards, archive and restore again on the same stream and
//! servers with that walguard binary (an older build) and with this one, alternating, twice
//! each: before and after under the same conditions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use futures::StreamExt;

use crate::harness::console::{write_token, ConsoleProcess, TOKEN};
use crate::harness::{process_cpu_seconds, process_stat_fields, BIN};
use crate::measure::{self, Measured};
use crate::Bench;

const ARCHIVE_GOAL: f64 = 0.8;
const RESTORE_GOAL: f64 = 0.5;
const RESTORE_RSS_GOAL_MIB: f64 = 100.0;
const CONSOLE_RSS_GOAL_MIB: f64 = 128.0;

#[derive(serde::Serialize)]
pub struct Report {
    rows: u64,
    /// Messages in the stream (the rows and walguard's markers).
    stream_messages: u64,
    consumer_s: [f64; 2],
    consumer_per_s: f64,
    /// nats-server's CPU seconds during the first bare consumer and during the archive.
    nats_cpu_s_consumer: f64,
    nats_cpu_s_archive: f64,
    archive: Measured,
    archive_per_s: f64,
    archive_ratio: f64,
    copy_s: f64,
    copy_rows_per_s: f64,
    /// PostgreSQL's CPU seconds (the postmaster and the backends it reaped) during `\copy` and
    /// during the restore.
    pg_cpu_s_copy: f64,
    pg_cpu_s_restore: f64,
    restore: Measured,
    restore_rows_per_s: f64,
    restore_ratio: f64,
    console: Console,
    /// `BENCH_COMPARE_BIN`'s runs, in the order run.
    compared: Vec<Compared>,
}

#[derive(serde::Serialize)]
struct Compared {
    bin: String,
    archive_s: f64,
    archive_cpu_s: f64,
    restore_s: f64,
    restore_cpu_s: f64,
    restore_rss_mib: f64,
}

#[derive(serde::Serialize)]
struct Console {
    first_overview_s: f64,
    middle_entity_s: f64,
    verified_s: f64,
    peak_rss_mib: f64,
    cpu_s: f64,
}

fn rows() -> u64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

pub async fn run() -> Report {
    let rows = rows();
    let env = crate::env().await;
    let token = write_token(env.dir.path());
    crate::append_config(&env, &format!("\n[console]\ntoken_file = \"{}\"\n", token.display()));
    crate::prepare(&env, 0).await;
    let base = crate::table_events(&env).await;
    crate::insert_orders(&env, rows).await;
    let run = crate::run_walguard(&env, base, rows).await;
    eprintln!("recovery: walguard published {rows} row events in {:.1?}", run.elapsed);
    let stream_messages = env.stream_messages().await;

    // Archive, between two bare consumers.
    let nats_cpu = || process_cpu_seconds(env.nats.pid().expect("nats-server runs"));
    let cpu = nats_cpu();
    let before = bare_consumer(&env).await;
    let nats_cpu_s_consumer = nats_cpu() - cpu;
    let cpu = nats_cpu();
    let dir = env.dir.path();
    let archive_dir = dir.join("archive");
    let mut cmd = Command::new(BIN);
    cmd.args(["archive", "-c"])
        .arg(&env.config)
        .arg("--dir")
        .arg(&archive_dir);
    let archive = measure::run_ok(cmd, &dir.join("archive.log"), Some("archive"));
    let nats_cpu_s_archive = nats_cpu() - cpu;
    let after = bare_consumer(&env).await;
    let consumer_s = [before.as_secs_f64(), after.as_secs_f64()];
    let consumer_per_s = stream_messages as f64 / before.min(after).as_secs_f64();
    let archive_per_s = stream_messages as f64 / archive.wall_s;
    eprintln!(
        "recovery: archive {archive_per_s:.0}/s ({:.1} s, {:.1} CPU s, {:.1} MiB); bare consumer {consumer_s:.2?} s",
        archive.wall_s, archive.cpu_s, archive.peak_rss_mib
    );

    // COPY of the same rows, then restore, on the same server.
    let csv = dir.join("orders.csv");
    psql(&env, &format!("\\copy orders TO '{}' WITH (FORMAT csv)", csv.display()));
    psql(&env, "CREATE TABLE orders_copy (LIKE orders INCLUDING ALL)");
    let postmaster = postmaster_pid(&env).await;
    let cpu = server_cpu_seconds(postmaster);
    let started = Instant::now();
    psql(
        &env,
        &format!("\\copy orders_copy FROM '{}' WITH (FORMAT csv)", csv.display()),
    );
    let copy_s = started.elapsed().as_secs_f64();
    let pg_cpu_s_copy = reaped_cpu_seconds(&env, postmaster).await - cpu;
    let cpu = server_cpu_seconds(postmaster);
    let mut cmd = Command::new(BIN);
    cmd.args(["restore", "--archive"])
        .arg(&archive_dir)
        .arg("--public-key")
        .arg(crate::public_key(&env))
        .args(["--into", "restored", "--target", &env.pg.url("postgres")]);
    let restore = measure::run_ok(cmd, &dir.join("restore.log"), Some("restore"));
    let pg_cpu_s_restore = reaped_cpu_seconds(&env, postmaster).await - cpu;
    eprintln!("recovery: restore: {}", restore.output.trim());
    for table in ["orders", "orders_copy", "restored.orders"] {
        let n: i64 = env
            .db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as u64, rows, "{table} holds every row");
    }
    let copy_rows_per_s = rows as f64 / copy_s;
    let restore_rows_per_s = rows as f64 / restore.wall_s;
    eprintln!(
        "recovery: restore {restore_rows_per_s:.0} rows/s ({:.1} s, {:.1} CPU s, {:.1} MiB); \\copy {copy_rows_per_s:.0} rows/s",
        restore.wall_s, restore.cpu_s, restore.peak_rss_mib
    );

    let mut compared = Vec::new();
    if let Some(old) = std::env::var_os("BENCH_COMPARE_BIN") {
        let old = old.to_string_lossy().into_owned();
        for round in 0..2 {
            for bin in [old.as_str(), BIN] {
                let n = compared.len();
                let dir_n = dir.join(format!("archive-{n}"));
                let mut cmd = Command::new(bin);
                cmd.args(["archive", "-c"]).arg(&env.config).arg("--dir").arg(&dir_n);
                let a = measure::run_ok(cmd, &dir.join(format!("archive-{n}.log")), None);
                let mut cmd = Command::new(bin);
                cmd.args(["restore", "--archive"])
                    .arg(&dir_n)
                    .arg("--public-key")
                    .arg(crate::public_key(&env))
                    .args(["--into", &format!("restored_{n}"), "--target", &env.pg.url("postgres")]);
                let r = measure::run_ok(cmd, &dir.join(format!("restore-{n}.log")), None);
                eprintln!(
                    "recovery: compare round {round} {bin}: archive {:.2} s ({:.1} CPU s), restore {:.2} s ({:.1} CPU s, {:.1} MiB)",
                    a.wall_s, a.cpu_s, r.wall_s, r.cpu_s, r.peak_rss_mib
                );
                compared.push(Compared {
                    bin: bin.to_owned(),
                    archive_s: a.wall_s,
                    archive_cpu_s: a.cpu_s,
                    restore_s: r.wall_s,
                    restore_cpu_s: r.cpu_s,
                    restore_rss_mib: r.peak_rss_mib,
                });
                env.db
                    .batch_execute(&format!("DROP SCHEMA restored_{n} CASCADE"))
                    .await
                    .unwrap();
            }
        }
    }
    let console = console(&env, stream_messages, rows).await;
    Report {
        compared,
        rows,
        stream_messages,
        consumer_s,
        consumer_per_s,
        nats_cpu_s_consumer,
        nats_cpu_s_archive,
        archive_per_s,
        archive_ratio: archive_per_s / consumer_per_s,
        archive,
        copy_s,
        copy_rows_per_s,
        pg_cpu_s_copy,
        pg_cpu_s_restore,
        restore_rows_per_s,
        restore_ratio: restore_rows_per_s / copy_rows_per_s,
        restore,
        console,
    }
}

/// An ordered consumer reading every message of the stream, doing nothing with them: its
/// time from creating the consumer to the last message.
async fn bare_consumer(env: &Bench) -> Duration {
    let started = Instant::now();
    let stream = env.js.get_stream(&env.stream).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    while let Some(msg) = messages.next().await {
        if msg.unwrap().info().unwrap().stream_sequence >= last {
            break;
        }
    }
    started.elapsed()
}

/// The postmaster: the parent of the checkpointer.
async fn postmaster_pid(env: &Bench) -> u32 {
    let checkpointer: i32 = env
        .db
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    process_stat_fields(checkpointer as u32)[1]
        .parse()
        .expect("the checkpointer's parent")
}

/// A process's CPU seconds and those of the children it reaped (for the postmaster: every
/// backend that has exited).
fn server_cpu_seconds(pid: u32) -> f64 {
    let fields = process_stat_fields(pid);
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) as f64 / 100.0
}

/// `server_cpu_seconds` once the postmaster has reaped every client backend but the bench's
/// own (a backend exits after its client has gone; until then its CPU is not counted).
async fn reaped_cpu_seconds(env: &Bench, postmaster: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: i64 = env
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if others == 0 || Instant::now() > deadline {
            // The exited backend's slot is free before the postmaster has reaped it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return server_cpu_seconds(postmaster);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn psql(env: &Bench, command: &str) {
    let out = crate::pg_tool(env, "psql")
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", command])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `walguard console -c`: from its start, the first full overview, the page of the entity
/// in the middle of the stream, and the overview saying every message is verified.
async fn console(env: &Bench, stream_messages: u64, rows: u64) -> Console {
    let started = Instant::now();
    let process = ConsoleProcess::start(&env.config, env.dir.path());
    let (port, pid) = (process.port, process.pid());
    let profiler = measure::perf_pid(pid, "console");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let until = |path: String, done: fn(&str, u64) -> bool| {
        let bearer = bearer.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(1800);
            loop {
                if let Some((200, body)) = measure::http_get(port, &path, &[&bearer]).await {
                    if done(&body, stream_messages) {
                        return started.elapsed().as_secs_f64();
                    }
                }
                assert!(Instant::now() < deadline, "the console did not render {path}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let whole = |body: &str, _: u64| body.trim_end().ends_with("</html>");
    let first_overview_s = until("/".into(), whole).await;
    // Entities are numbered in the order the console indexed them: W1 inserted the keys in
    // order, so the one in the middle is in the middle of the stream.
    let middle_entity_s = until(format!("/tables/0/entities/{}", rows / 2), whole).await;
    let verified_s = until("/".into(), |body, last| {
        body.contains(&format!("Verified: intact up to sequence {last}<"))
    })
    .await;
    let peak_rss_mib = crate::harness::process_peak_rss_kib(pid) as f64 / 1024.0;
    let cpu_s = process_cpu_seconds(pid);
    measure::stop_perf(profiler);
    drop(process);
    eprintln!(
        "recovery: console: overview after {first_overview_s:.2} s, entity {} after {middle_entity_s:.2} s, all {stream_messages} verified after {verified_s:.2} s; peak RSS {peak_rss_mib:.1} MiB, {cpu_s:.1} CPU s",
        rows / 2
    );
    Console {
        first_overview_s,
        middle_entity_s,
        verified_s,
        peak_rss_mib,
        cpu_s,
    }
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

pub fn print(r: &Report) {
    let mib = |m: &Measured| {
        format!(
            "{:.1} s, {:.1} CPU s, peak RSS {:.1} MiB",
            m.wall_s, m.cpu_s, m.peak_rss_mib
        )
    };
    println!(
        "\nrecovery: {} row events, {} messages in the stream",
        r.rows, r.stream_messages
    );
    println!(
        "  archive   {:>9.0} msg/s ({})  bare ordered consumer {:.0} msg/s (best of {:.2} s, {:.2} s)  ratio {:.2}  goal >= {ARCHIVE_GOAL}: {}",
        r.archive_per_s,
        mib(&r.archive),
        r.consumer_per_s,
        r.consumer_s[0],
        r.consumer_s[1],
        r.archive_ratio,
        goal(r.archive_ratio >= ARCHIVE_GOAL)
    );
    println!(
        "            nats-server CPU s: {:.1} for the archive, {:.1} for the bare consumer",
        r.nats_cpu_s_archive, r.nats_cpu_s_consumer
    );
    println!(
        "  restore   {:>9.0} rows/s ({})  \\copy {:.0} rows/s ({:.1} s)  ratio {:.2}  goal >= {RESTORE_GOAL}: {}",
        r.restore_rows_per_s,
        mib(&r.restore),
        r.copy_rows_per_s,
        r.copy_s,
        r.restore_ratio,
        goal(r.restore_ratio >= RESTORE_GOAL)
    );
    println!(
        "            PostgreSQL CPU s: {:.1} for the restore, {:.1} for \\copy",
        r.pg_cpu_s_restore, r.pg_cpu_s_copy
    );
    println!(
        "  restore   peak RSS {:.1} MiB  goal <= {RESTORE_RSS_GOAL_MIB} MiB: {}",
        r.restore.peak_rss_mib,
        goal(r.restore.peak_rss_mib <= RESTORE_RSS_GOAL_MIB)
    );
    let c = &r.console;
    println!(
        "  console   first overview {:.2} s, entity in the middle {:.2} s, whole stream verified {:.2} s, {:.1} CPU s",
        c.first_overview_s, c.middle_entity_s, c.verified_s, c.cpu_s
    );
    println!(
        "  console   peak RSS {:.1} MiB  goal <= {CONSOLE_RSS_GOAL_MIB} MiB: {}",
        c.peak_rss_mib,
        goal(c.peak_rss_mib <= CONSOLE_RSS_GOAL_MIB)
    );
    for x in &r.compared {
        println!(
            "  compare   {}: archive {:.2} s ({:.1} CPU s), restore {:.2} s ({:.1} CPU s, peak RSS {:.1} MiB)",
            x.bin, x.archive_s, x.archive_cpu_s, x.restore_s, x.restore_cpu_s, x.restore_rss_mib
        );
    }
}
