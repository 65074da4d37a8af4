//! Issue 16, PostgreSQL failover (SPEC G10, section 7 "Failover"): a primary with a streaming
//! physical standby (`pg_basebackup -R`, a physical slot, `hot_standby_feedback`,
//! `sync_replication_slots`), walguard on a multi-host URL. The primary is SIGKILLed and the
//! standby promoted; the oracle is the new primary's table and the stream read back with the
//! test's own consumer. Failover slots need PostgreSQL 17 and logical decoding on a standby
//! 16: on older servers those tests print why they do not run.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walguard::testkit::Postgres;

use crate::harness::{connect_db, eventually, poll_until, Env, Stored};
use crate::ledger::{assert_exactly_once_in_order, write_ledger, Committed};

const LEDGER: &str = "CREATE TABLE public.ledger (id bigint PRIMARY KEY, tx int NOT NULL, v int NOT NULL, note text);";
const GUARD_LEDGER: &str = "[[tables]]\nname = \"public.ledger\"\n";
const PHYSICAL_SLOT: &str = "standby1";

/// A primary (PostgreSQL `min_major`+) with a streaming standby, or `None` with the reason
/// printed.
fn primary_and_standby(min_major: u32, why: &str) -> Option<(Postgres, Postgres)> {
    let primary = Postgres::start().expect("start PostgreSQL");
    if primary.major() < min_major {
        eprintln!(
            "skipped: {why} needs PostgreSQL {min_major} or later, this is {}",
            primary.version
        );
        return None;
    }
    let standby = primary
        .start_standby(PHYSICAL_SLOT, &[])
        .expect("start a streaming standby");
    Some((primary, standby))
}

/// `postgres.url` naming the primary then the standby, as the writers use it too.
fn multi_host_url(primary: &Postgres, standby: &Postgres) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=5",
        primary.port(),
        standby.port()
    )
}

/// Rewrites the config's `postgres.url` to `url`, with `failover_slot` when asked.
fn use_url(env: &Env, url: &str, failover_slot: bool) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let mut text = text.replace(&env.pg.url("postgres"), url);
    if failover_slot {
        text = text.replace(
            "publication = \"wg_pub\"\n",
            "publication = \"wg_pub\"\nfailover_slot = true\n",
        );
    }
    std::fs::write(&env.config, text).unwrap();
}

async fn set_synchronized_standby_slots(primary: &tokio_postgres::Client, value: &str) {
    primary
        .batch_execute(&format!("ALTER SYSTEM SET synchronized_standby_slots = '{value}'"))
        .await
        .unwrap();
    primary.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

/// Waits until the standby holds walguard's slot as a synced, usable failover slot.
async fn wait_synced(standby: &Postgres, slot: &str) {
    let db = connect_db(&standby.url("postgres")).await;
    let what = format!("the standby to sync slot {slot} as a failover slot");
    eventually(Duration::from_secs(90), &what, || {
        let db = &db;
        async move {
            db.query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND synced AND NOT temporary AND NOT conflicting",
                &[&slot],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
        }
    })
    .await;
}

async fn promote(standby: &Postgres) {
    let db = connect_db(&standby.url("postgres")).await;
    let promoted: bool = db.query_one("SELECT pg_promote(true, 60)", &[]).await.unwrap().get(0);
    assert!(promoted, "pg_promote did not finish within 60 s");
}

/// A writer committing insert-only transactions through `url` until stopped, reconnecting
/// (and going on with the next transaction) when a commit fails. Returns how many it tried.
fn spawn_writer(url: String, stop: Arc<AtomicBool>, tried: Arc<AtomicI64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut db: Option<tokio_postgres::Client> = None;
        let mut tx: i64 = 0;
        while !stop.load(Ordering::SeqCst) {
            let Some(client) = db.as_ref() else {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        db = Some(c);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                continue;
            };
            tx += 1;
            let size = 1 + tx % 3;
            let mut sql = String::from("BEGIN;");
            for k in 0..size {
                sql.push_str(&format!("INSERT INTO ledger VALUES ({}, {tx}, 0, NULL);", tx * 10 + k));
            }
            sql.push_str("COMMIT;");
            if client.batch_execute(&sql).await.is_err() {
                db = None;
            }
            tried.store(tx, Ordering::SeqCst);
        }
    })
}

/// The new primary's rows as (tx, id), in commit order (the writer's ids increase).
async fn rows_of(db: &tokio_postgres::Client) -> Vec<(i64, i64)> {
    db.query("SELECT tx::bigint, id FROM ledger ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn stream_rows(stream: &[Stored]) -> Vec<(i64, i64)> {
    stream
        .iter()
        .filter(|m| !m.is_marker() && !m.is_snapshot())
        .map(|m| {
            assert_eq!(m.op(), "insert", "{m:?}");
            let after = &m.data()["after"];
            (after["tx"].as_i64().unwrap(), after["id"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load() {
    let Some((primary, standby)) = primary_and_standby(17, "failover slots") else {
        return;
    };
    let mut env = Env::start_with_pg(primary, LEDGER, GUARD_LEDGER, "").await;
    set_synchronized_standby_slots(&env.db, PHYSICAL_SLOT).await;
    let url = multi_host_url(&env.pg, &standby);
    use_url(&env, &url, true);
    let mut wg = env.spawn_ready().await;
    wait_synced(&standby, &env.slot).await;

    let (stop, tried) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
    let writer = spawn_writer(url.clone(), stop.clone(), tried.clone());
    env.wait_events(60, Duration::from_secs(60)).await;
    env.pg.kill();
    promote(&standby).await;
    let at_promotion = tried.load(Ordering::SeqCst);
    // The writers reconnect through the same URL and go on on the new primary.
    eventually(
        Duration::from_secs(60),
        "the writer going on after the promotion",
        || {
            let tried = tried.clone();
            async move { (tried.load(Ordering::SeqCst) > at_promotion + 50).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let new_primary = connect_db(&standby.url("postgres")).await;
    let want = rows_of(&new_primary).await;
    assert!(
        want.iter().any(|(tx, _)| *tx > at_promotion),
        "nothing committed after the promotion"
    );
    let got = poll_until(Duration::from_secs(120), || {
        let (env, want) = (&env, &want);
        async move {
            let rows = stream_rows(&env.read_stream().await);
            (rows.len() >= want.len()).then_some(rows)
        }
    })
    .await
    .unwrap_or_else(|| panic!("walguard did not catch up after the failover:\n{}", wg.output()));
    // Exactly once, in order, and nothing the new primary lacks.
    assert_eq!(got, want, "the stream against the new primary's table");
    let tx_after = want.iter().filter(|(tx, _)| *tx > at_promotion).count();
    eprintln!(
        "failover under load: {} rows in the stream, all on the new primary, {tx_after} of them committed after the promotion",
        got.len()
    );
    assert_eq!(wg.exited(), None, "walguard stopped:\n{}", wg.output());
    // reconcile needs walguard running: the stream must cover the new primary's position.
    let (code, out, err) = env.command(&["reconcile", "-c", env.config.to_str().unwrap(), "public.ledger"]);
    assert_eq!(code, 0, "reconcile after the failover: {out}{err}");
    wg.stop(Duration::from_secs(20)).await;
    let (code, out) = env.verify();
    assert_eq!(code, 0, "verify after the failover: {out}");
    // The primary's Drop stops what is left of it.
    env.pg.stop(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fork_is_refused() {
    let Some((primary, mut standby)) = primary_and_standby(17, "failover slots") else {
        return;
    };
    let mut env = Env::start_with_pg(primary, LEDGER, GUARD_LEDGER, "").await;
    // No synchronized_standby_slots: nothing holds walguard back from what the standby lacks.
    let url = multi_host_url(&env.pg, &standby);
    use_url(&env, &url, true);
    let mut wg = env.spawn_ready().await;
    let (mut next_id, mut log) = (0, Committed::new());
    write_ledger(&env.db, 1, 10, &mut next_id, &mut log).await;
    env.wait_events(log.iter().map(Vec::len).sum(), Duration::from_secs(30))
        .await;
    wait_synced(&standby, &env.slot).await;

    // The standby is cut off; the primary commits and walguard publishes what it lacks.
    standby.stop(true);
    let before_fork = log.len();
    write_ledger(&env.db, 11, 20, &mut next_id, &mut log).await;
    let all = log.iter().map(Vec::len).sum();
    env.wait_events(all, Duration::from_secs(30)).await;
    env.pg.kill();
    standby.start_again().expect("start the stale standby");
    promote(&standby).await;

    let code = wg.exit_within(Duration::from_secs(120)).await;
    let refusal = wg.output();
    let out = &refusal;
    assert_eq!(code, Some(1), "walguard must refuse the fork:\n{out}");
    for part in ["timeline", "public.ledger", "reconcile"] {
        assert!(out.contains(part), "{part:?} missing from:\n{out}");
    }
    // Nothing was published on top of the fork.
    let stream = env.read_stream().await;
    assert_exactly_once_in_order(&stream, &log);
    let (code, out, err) = env.command(&["reconcile", "-c", env.config.to_str().unwrap(), "public.ledger"]);
    assert_eq!(
        code, 1,
        "reconcile must show the rows the new primary lacks: {out}{err}"
    );
    let lost = &log[before_fork..];
    eprintln!(
        "the fork: {} transactions published beyond the stale standby, refused with: {}",
        lost.len(),
        refusal
            .lines()
            .rev()
            .find(|l| l.contains("timeline"))
            .unwrap_or_default()
    );
    let some_lost_id = lost[0][0].1;
    assert!(
        format!("{out}{err}").contains(&some_lost_id.to_string()),
        "reconcile does not name row {some_lost_id}: {out}{err}"
    );
    env.pg.stop(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_needs_synchronized_standby_slots() {
    let Some((primary, standby)) = primary_and_standby(17, "failover slots") else {
        return;
    };
    let env = Env::start_with_pg(primary, LEDGER, GUARD_LEDGER, "").await;
    let url = multi_host_url(&env.pg, &standby);
    use_url(&env, &url, true);
    let config = env.config.to_str().unwrap().to_owned();
    let (code, out, err) = env.command(&["check", "-c", &config]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("synchronized_standby_slots is empty"), "{out}{err}");
    assert!(
        out.contains("ALTER SYSTEM SET synchronized_standby_slots = 'standby1'"),
        "{out}{err}"
    );
    set_synchronized_standby_slots(&env.db, PHYSICAL_SLOT).await;
    let (code, out, err) = env.command(&["check", "-c", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("synchronized_standby_slots = standby1"), "{out}{err}");
    assert!(
        out.contains(&format!("127.0.0.1:{}", standby.port())),
        "the standby is reported: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_as_source() {
    let Some((primary, mut standby)) = primary_and_standby(16, "logical decoding on a standby") else {
        return;
    };
    let schema =
        format!("{LEDGER} CREATE PUBLICATION wg_pub FOR TABLE public.ledger WITH (publish_via_partition_root = true);");
    let env = Env::start_with_pg(primary, &schema, GUARD_LEDGER, "").await;
    // The publication must reach the standby before walguard looks for it there.
    let standby_db = connect_db(&standby.url("postgres")).await;
    eventually(Duration::from_secs(30), "the publication on the standby", || {
        let db = &standby_db;
        async move {
            db.query_opt("SELECT 1 FROM pg_publication WHERE pubname = 'wg_pub'", &[])
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    use_url(
        &env,
        &format!("{}?target_session_attrs=standby", standby.url("postgres")),
        false,
    );
    let mut wg = env.spawn();
    // Slot creation on a standby waits for a running-xacts record: the primary writes one now.
    let streaming = poll_until(Duration::from_secs(60), || {
        let env = &env;
        async move {
            let _ = env.db.batch_execute("SELECT pg_log_standby_snapshot()").await;
            (!env.read_stream().await.is_empty()).then_some(())
        }
    })
    .await;
    assert!(
        streaming.is_some(),
        "walguard did not stream from the standby:\n{}",
        wg.output()
    );
    assert!(wg.output().contains("running-xacts"), "{}", wg.output());
    let (mut next_id, mut log) = (0, Committed::new());
    write_ledger(&env.db, 1, 30, &mut next_id, &mut log).await;
    env.wait_events(log.iter().map(Vec::len).sum(), Duration::from_secs(60))
        .await;
    standby.restart(true).expect("restart the standby");
    write_ledger(&env.db, 31, 30, &mut next_id, &mut log).await;
    env.wait_events(log.iter().map(Vec::len).sum(), Duration::from_secs(120))
        .await;
    assert_exactly_once_in_order(&env.read_stream().await, &log);
    // The primary carries no logical walsender: walguard's slot lives on the standby only.
    let on_primary: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_primary, 0);
    wg.stop(Duration::from_secs(20)).await;
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_finds_the_host_target_session_attrs_asks_for() {
    let primary = Postgres::start().expect("start PostgreSQL");
    let standby = primary
        .start_standby(PHYSICAL_SLOT, &[])
        .expect("start a streaming standby");
    let dead = walguard::testkit::free_port();
    let env = Env::start_with_pg(primary, LEDGER, GUARD_LEDGER, "").await;
    // Nothing reads-write: the error names every host and what each answered.
    use_url(
        &env,
        &format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
            standby.port()
        ),
        false,
    );
    let log = env
        .expect_run_exit(
            69,
            &[&format!("127.0.0.1:{dead}"), "is a standby (in recovery)", "read-write"],
        )
        .await;
    assert!(log.contains(&format!("127.0.0.1:{}", standby.port())), "{log}");
    // A dead host and the standby first, the primary last: walguard streams from the primary.
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=primary&connect_timeout=2",
        standby.port(),
        env.pg.port()
    );
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("url = \"host=") {
                format!("url = \"{url}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&env.config, text).unwrap();
    let mut wg = env.spawn_ready().await;
    let (mut next_id, mut log) = (0, Committed::new());
    write_ledger(&env.db, 1, 20, &mut next_id, &mut log).await;
    env.wait_events(log.iter().map(Vec::len).sum(), Duration::from_secs(30))
        .await;
    assert_exactly_once_in_order(&env.read_stream().await, &log);
    let slot_on_primary: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot_on_primary, 1);
    wg.stop(Duration::from_secs(20)).await;
}
