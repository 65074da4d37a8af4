//! Issue "prove it under faults": PostgreSQL restarts, a stream limit, a payload over NATS's
//! max_payload. The oracle is the committed ids read back from the stream.

use std::time::{Duration, Instant};

use crate::harness::{self, Env, Walguard};
use crate::ledger::{
    assert_confirmed_never_ahead, assert_exactly_once_in_order, spawn_sampler, write_ledger, Committed, Sampler,
};

const LEDGER: &str = "CREATE TABLE public.ledger (id bigint PRIMARY KEY, tx int NOT NULL, v int NOT NULL, note text);";
const GUARD_LEDGER: &str = "[[tables]]\nname = \"public.ledger\"\n";

/// The fault tests' verdict: every committed row arrived once, in order, nothing else did,
/// the slot was never confirmed past what the stream held, and the stream verifies.
async fn assert_every_write_once(env: &Env, wg: &Walguard, written: &[i64], sampler: Sampler) {
    env.wait_events(written.len(), Duration::from_secs(120)).await;
    let samples = sampler.finish().await;
    let stream = env.read_stream().await;
    assert_eq!(classify(&stream, written), (0, 0, 0, 0), "{}", wg.output());
    assert_confirmed_never_ahead(&stream, &samples);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

/// What the stream says about the ids written: (lost, duplicated, out of order, unexpected).
fn classify(stream: &[harness::Stored], written: &[i64]) -> (usize, usize, usize, usize) {
    let got: Vec<i64> = stream
        .iter()
        .filter(|m| m.op() == "insert")
        .map(|m| m.data()["key"]["id"].as_i64().unwrap())
        .collect();
    let want: std::collections::HashSet<i64> = written.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let (mut dup, mut unexpected, mut reordered) = (0, 0, 0);
    let mut last = i64::MIN;
    for id in &got {
        if !want.contains(id) {
            unexpected += 1;
        } else if !seen.insert(*id) {
            dup += 1;
        } else {
            if *id < last {
                reordered += 1;
            }
            last = *id;
        }
    }
    (want.len() - seen.len(), dup, reordered, unexpected)
}

/// Waits until walguard has published more since the last fault (`since` messages), so that
/// the next fault lands mid-stream; returns the count. A writer that has finished ends the wait.
async fn published_more<T>(env: &Env, since: u64, writer: &tokio::task::JoinHandle<T>) -> u64 {
    harness::eventually(
        Duration::from_secs(60),
        "walguard to publish between faults",
        || async {
            let n = env.stream_messages().await;
            (n >= since + 50 || writer.is_finished()).then_some(n)
        },
    )
    .await
}

/// Inserts ids `from..from+n`, one transaction each, retrying while the server restarts;
/// returns the ids whose commit succeeded.
async fn write_through_restarts(url: &str, from: i64, n: i64) -> Vec<i64> {
    let mut committed = Vec::new();
    let mut db = harness::connect_db(url).await;
    let mut id = from;
    while id < from + n {
        match db
            .batch_execute(&format!("INSERT INTO ledger VALUES ({id}, 0, 0, NULL)"))
            .await
        {
            Ok(()) => {
                committed.push(id);
                id += 1;
            }
            Err(_) => {
                // The commit may or may not have happened; ask once reconnected.
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok((c, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                        tokio::spawn(conn);
                        db = c;
                        break;
                    }
                }
                if db
                    .query_opt("SELECT 1 FROM ledger WHERE id = $1", &[&id])
                    .await
                    .unwrap()
                    .is_some()
                {
                    committed.push(id);
                }
                id += 1;
            }
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_fast_and_immediate_lose_and_double_nothing() {
    let mut env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let wg = env.spawn_ready().await;
    let sampler = spawn_sampler(&env);
    let url = env.pg.url("postgres");
    let writer = tokio::spawn({
        let url = url.clone();
        async move { write_through_restarts(&url, 1, 1500).await }
    });
    let mut published = env.stream_messages().await;
    for fast in [true, false] {
        published = published_more(&env, published, &writer).await;
        env.pg.restart(fast).unwrap();
    }
    let written = writer.await.unwrap();
    env.db = harness::connect_db(&url).await;
    assert_every_write_once(&env, &wg, &written, sampler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_stops_publishing_and_resumes_when_raised() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let js = env.js().await;
    // The operator's stream: a message limit, discarding new messages at it.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: env.stream.clone(),
        subjects: vec!["wg.>".into()],
        max_messages: 30,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut wg = env.spawn_ready().await;
    let written = write_through_restarts(&env.pg.url("postgres"), 1, 60).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.read_stream().await.len() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // walguard has met the limit (and logs it), and waits there instead of exiting.
    harness::eventually(Duration::from_secs(20), "walguard to report the full stream", || {
        let met = wg.output().contains("maximum messages");
        async move { met.then_some(()) }
    })
    .await;
    assert_eq!(env.read_stream().await.len(), 30);
    assert_eq!(wg.exited(), None, "walguard must wait, not exit:\n{}", wg.output());
    // The operator raises the limit: everything arrives, once.
    let mut stream = js.get_stream(&env.stream).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_messages = -1;
    js.update_stream(config).await.unwrap();
    env.wait_events(written.len(), Duration::from_secs(60)).await;
    let stream = env.read_stream().await;
    assert_eq!(classify(&stream, &written), (0, 0, 0, 0), "{}", wg.output());
    assert!(wg.output().contains("maximum messages"), "{}", wg.output());
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_max_payload_blocks_walguard_until_the_limit_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let nats_conf = dir.path().join("nats.conf");
    std::fs::write(&nats_conf, "max_payload: 4096\n").unwrap();
    let nats = walguard::testkit::Nats::start_with(&["-c", nats_conf.to_str().unwrap()]).unwrap();
    let env = Env::start_with(
        walguard::testkit::Postgres::start().unwrap(),
        nats,
        LEDGER,
        GUARD_LEDGER,
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    let port = env.listen_port;
    env.db
        .batch_execute("INSERT INTO ledger VALUES (1, 0, 0, 'small')")
        .await
        .unwrap();
    env.db
        .batch_execute("INSERT INTO ledger VALUES (2, 0, 0, repeat('x', 10000))")
        .await
        .unwrap();
    env.db
        .batch_execute("INSERT INTO ledger VALUES (3, 0, 0, 'after')")
        .await
        .unwrap();
    // Blocked, not gone: /readyz names the table, the event's size and the limit.
    let (status, body) =
        crate::ops::wait_state(port, "/readyz", 503, "max_payload of 4096", Duration::from_secs(30)).await;
    assert_eq!(status, 503, "{body}\n{}", wg.output());
    assert!(body.contains("public.ledger") && body.contains("bytes"), "{body}");
    assert!(!body.contains("xxxxxxxxxx"), "the row value must not be shown: {body}");
    let (_, text) = crate::ops::get(port, "/metrics").await.unwrap();
    assert!(
        crate::ops::metric(&text, "walguard_errors_total{kind=\"payload_too_large\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // It keeps retrying (a new session each time) and stays up, blocked at the same event.
    let retries_before = crate::ops::metric(&text, "walguard_restarts_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = crate::ops::get(port, "/metrics").await.unwrap();
        if crate::ops::metric(&text, "walguard_restarts_total").unwrap_or(0.0) > retries_before {
            break;
        }
        assert!(Instant::now() < deadline, "no retry:\n{}", wg.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(wg.exited(), None, "{}", wg.output());
    assert_eq!(crate::ops::get(port, "/readyz").await.unwrap().0, 503);
    let log = wg.output();
    assert!(
        log.contains("public.ledger") && log.contains("max_payload of 4096"),
        "{log}"
    );
    assert!(!log.contains("xxxxxxxxxx"), "the row value must not be logged");
    // Nothing after the big row was published: fail closed.
    let ids: Vec<i64> = env
        .read_stream()
        .await
        .iter()
        .filter(|m| m.op() == "insert")
        .map(|m| m.data()["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1]);
    // The operator raises the limit and reloads nats-server; the same walguard process goes
    // on by itself with the same row.
    std::fs::write(&nats_conf, "max_payload: 1048576\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(env.nats.pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let events = env.wait_events(3, Duration::from_secs(60)).await;
    let ids: Vec<i64> = events.iter().map(|m| m.data()["key"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let (status, body) = crate::ops::wait_state(port, "/readyz", 200, "", Duration::from_secs(30)).await;
    assert_eq!(status, 200, "{body}\n{}", wg.output());
    assert_eq!(wg.exited(), None, "{}", wg.output());
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(20), &[]).await;
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_and_stalled_in_both_directions() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let pg_proxy = harness::Proxy::start(env.pg.port()).await;
    let nats_port: u16 = env.nats.url().rsplit(':').next().unwrap().parse().unwrap();
    let nats_proxy = harness::Proxy::start(nats_port).await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}/postgres", env.pg.port()),
            &format!("127.0.0.1:{}/postgres", pg_proxy.port),
        )
        .replace(&env.nats.url(), &format!("nats://127.0.0.1:{}", nats_proxy.port));
    std::fs::write(&env.config, config).unwrap();
    let wg = env.spawn_ready().await;
    let sampler = spawn_sampler(&env);
    let writer = tokio::spawn({
        let url = env.pg.url("postgres");
        async move { write_through_restarts(&url, 1, 2000).await }
    });
    let mut published = env.stream_messages().await;
    for step in 0..4 {
        published = published_more(&env, published, &writer).await;
        match step {
            0 => pg_proxy.cut(),
            1 => {
                nats_proxy.stall(true);
                tokio::time::sleep(Duration::from_secs(3)).await;
                nats_proxy.stall(false);
            }
            2 => nats_proxy.cut(),
            _ => {
                pg_proxy.stall(true);
                tokio::time::sleep(Duration::from_secs(3)).await;
                pg_proxy.stall(false);
            }
        }
    }
    let written = writer.await.unwrap();
    assert_every_write_once(&env, &wg, &written, sampler).await;
}

/// The bound for a transaction of any size (G5): walguard streams it with one held event,
/// a bounded channel and a bounded number of acks in flight.
const RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_in_bounded_memory() {
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let wg = env.spawn_ready().await;
    let started = Instant::now();
    env.db
        .batch_execute("INSERT INTO ledger SELECT g, 1, g % 7, NULL FROM generate_series(1, 1000000) g")
        .await
        .unwrap();
    let js = env.js().await;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        peak = peak.max(wg.peak_rss_kib());
        let n = env.stream_messages().await;
        if n >= 1_000_002 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    peak = peak.max(wg.peak_rss_kib());
    let n = env.stream_messages().await;
    eprintln!(
        "1,000,000-row transaction: {n} messages in {elapsed:?}; walguard peak RSS {} MiB",
        peak / 1024
    );
    assert!(n >= 1_000_002, "only {n} messages:\n{}", wg.output());
    assert!(peak > 0 && peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    // The last event closes the transaction with pgtxcnt = 1,000,000.
    let last = js
        .get_stream(&env.stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("wg.public.ledger.insert")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(v["pgtxcnt"], 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_cluster_loses_its_stream_leader() {
    use walguard::testkit::Nats;
    // Six distinct ports: hold all the listeners until every port is chosen.
    let held: Vec<std::net::TcpListener> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(held);
    let (client, routes) = (ports[..3].to_vec(), ports[3..].to_vec());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let others: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
            .collect();
        let conf = std::env::temp_dir().join(format!("wg-cluster-{}-{i}.conf", client[0]));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nport: {}\ncluster {{ name: wg, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                client[i],
                routes[i],
                others.join(", ")
            ),
        )
        .unwrap();
        nodes.push(Nats::start_on(client[i], &["-c", conf.to_str().unwrap()]).unwrap());
    }
    let urls = client
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let first = nodes.remove(0);
    let mut env = Env::start_with(
        walguard::testkit::Postgres::start().unwrap(),
        first,
        LEDGER,
        GUARD_LEDGER,
        "replicas = 3",
    )
    .await;
    env.client_url = urls.clone();
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.nats.url(), &urls);
    std::fs::write(&env.config, config).unwrap();
    // Wait for the cluster to elect a meta leader, and create the R3 stream as walguard would.
    let js = env.js().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while js.query_account().await.is_err() {
        assert!(Instant::now() < deadline, "the JetStream cluster did not form");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut cfg = walguard::sink::stream::stream_config(&walguard::config::NatsConfig {
        stream: env.stream.clone(),
        subject_prefix: "wg".into(),
        replicas: 3,
        ..Default::default()
    });
    cfg.num_replicas = 3;
    while js.create_stream(cfg.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "the R3 stream could not be created");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wg = env.spawn_ready().await;
    let writer = tokio::spawn({
        let url = env.pg.url("postgres");
        async move { write_through_restarts(&url, 1, 1500).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = js
        .get_stream(&env.stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap();
    match leader.as_str() {
        "n0" => env.nats.stop(),
        "n1" => nodes[0].stop(),
        _ => nodes[1].stop(),
    }
    let written = writer.await.unwrap();
    env.wait_events(written.len(), Duration::from_secs(120)).await;
    let stream = env.read_stream().await;
    assert_eq!(
        classify(&stream, &written),
        (0, 0, 0, 0),
        "leader {leader} killed\n{}",
        wg.output()
    );
    let out = std::process::Command::new(harness::BIN)
        .args(["verify", "-c", env.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_random_moments() {
    use rand::Rng;
    let env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let first = env.spawn_ready().await;
    let sampler = spawn_sampler(&env);

    let writer_db = harness::connect_db(&env.pg.url("postgres")).await;
    let writer = tokio::spawn(async move {
        let mut log = Committed::new();
        let mut next_id = 0;
        write_ledger(&writer_db, 1, 20_000, &mut next_id, &mut log).await;
        log
    });
    let mut wg = first;
    let mut kills = 0;
    // The short form kills 10 times; the long form (RELIABILITY.md) sets WALGUARD_FAULT_CYCLES.
    let cycles: u32 = std::env::var("WALGUARD_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    while kills < cycles || !writer.is_finished() {
        let wait = rand::thread_rng().gen_range(200..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        wg.kill();
        kills += 1;
        let pause = rand::thread_rng().gen_range(0..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        wg = env.spawn();
    }
    let committed = writer.await.unwrap();
    let total: usize = committed.iter().map(Vec::len).sum();
    let events = env.wait_events(total, Duration::from_secs(180)).await;
    assert_eq!(events.len(), total, "walguard log:\n{}", wg.output());
    // Let the last acks be confirmed, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(30), &[]).await;
    let samples = sampler.finish().await;

    let stream = env.read_stream().await;
    assert_exactly_once_in_order(&stream, &committed);
    assert!(
        samples.len() > 50,
        "only {} samples of confirmed_flush_lsn",
        samples.len()
    );
    assert_confirmed_never_ahead(&stream, &samples);
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "{kills} SIGKILLs, {} transactions, {total} events, {} messages; {out}",
        committed.len(),
        stream.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_and_doubles_nothing() {
    let mut env = Env::start(LEDGER, GUARD_LEDGER, "").await;
    let mut wg = env.spawn_ready().await;
    let db = harness::connect_db(&env.pg.url("postgres")).await;
    let mut log = Committed::new();
    let mut next_id = 0;
    write_ledger(&db, 1, 300, &mut next_id, &mut log).await;
    env.nats.stop();
    // Writers go on while NATS is down; PostgreSQL keeps the WAL for the slot.
    write_ledger(&db, 301, 300, &mut next_id, &mut log).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.nats.start_again().unwrap();
    write_ledger(&db, 601, 300, &mut next_id, &mut log).await;
    let total: usize = log.iter().map(Vec::len).sum();
    let events = env.wait_events(total, Duration::from_secs(90)).await;
    assert_eq!(events.len(), total, "{}", wg.output());
    assert_eq!(wg.exited(), None, "walguard must keep running:\n{}", wg.output());
    let stream = env.read_stream().await;
    assert_exactly_once_in_order(&stream, &log);
    wg.signal(nix::sys::signal::Signal::SIGTERM);
    wg.expect_exit(0, Duration::from_secs(30), &[]).await;
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
}
