//! The console's memory (issue: 251 MiB over a stream of 1,000,000 entities, the goal
//! <= 128 MiB): the real `walguard console` over a stream of N events of N entities
//! (`WALGUARD_CONSOLE_EVENTS`, default 100,000; published straight to JetStream, unsigned,
//! so the overview names problems, which does not matter here) must index them within
//! 24 MiB + 64 bytes per entity of peak resident memory (VmHWM): 1,000,000 took 59.8 MiB
//! where the index of a `String` and a `Vec` per entity took 257.1 MiB. Prints the times and
//! memory (`-- --nocapture`).

use std::time::{Duration, Instant};

use crate::console::{request, with_console, ConsoleProcess};
use crate::harness::{eventually, Env};

fn payload(sequence: u64, id: u64) -> Vec<u8> {
    let row = serde_json::json!({"id": id, "name": format!("customer {id}"), "balance": sequence % 1000});
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0", "id": format!("id-{sequence}"), "source": "walguard/bench",
        "type": "walguard.insert", "subject": format!("public.customers/{id}"),
        "time": format!("2026-12-02T{:02}:{:02}:{:02}.000000Z", sequence / 3600 % 24, sequence / 60 % 60, sequence % 60),
        "datacontenttype": "application/json",
        "sequence": format!("{sequence:020}"), "prevhash": "00",
        "pglsn": "0/16B3748", "pgxid": "7", "pgtxidx": 1, "pgtxcnt": 1, "pgendlsn": "0/16B3800",
        "data": {"op": "insert", "schema": "public", "table": "customers", "key": {"id": id},
            "before": null, "after": row, "unchanged": [], "actor": {"user": "alice"}},
    }))
    .unwrap()
}

fn status(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap()
        / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_memory_over_a_big_stream() {
    let n: u64 = std::env::var("WALGUARD_CONSOLE_EVENTS").map_or(100_000, |v| v.parse().unwrap());
    let env = Env::start(
        "CREATE TABLE public.customers (id int PRIMARY KEY);",
        "[[tables]]\nname = \"public.customers\"\n",
        "",
    )
    .await;
    let js = env.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BIG".into(),
        subjects: vec!["big.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let t = Instant::now();
    let mut acks = Vec::new();
    for seq in 1..=n {
        acks.push(js.publish("big.x", payload(seq, 100_000 + seq).into()).await.unwrap());
        if acks.len() == 2000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    eprintln!("published {n} in {:.1} s", t.elapsed().as_secs_f64());
    let config = with_console(&env, "BIG", None, "big.toml");
    let console = ConsoleProcess::start(&config, env.dir.path());
    let t = Instant::now();
    eventually(Duration::from_secs(60), "the overview", || async {
        request(console.port, "GET", "/", &[], "")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    eprintln!("overview first render after {:.2} s", t.elapsed().as_secs_f64());
    let done = format!("<td id=\"messages\">{n}</td>");
    eventually(Duration::from_secs(1200), "indexed", || async {
        request(console.port, "GET", "/", &[], "")
            .await
            .filter(|r| r.body.contains(&done))
    })
    .await;
    eprintln!("indexed after {:.1} s", t.elapsed().as_secs_f64());
    let t2 = Instant::now();
    let page = request(console.port, "GET", &format!("/tables/0/entities/{}", n / 2), &[], "")
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    eprintln!("middle entity page in {:.3} s", t2.elapsed().as_secs_f64());
    let t3 = Instant::now();
    let page = request(console.port, "GET", &format!("/tables/0?page={}", n / 100), &[], "")
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    eprintln!("a middle table page in {:.3} s", t3.elapsed().as_secs_f64());
    let pid = console.pid();
    let (rss, peak) = (status(pid, "VmRSS:"), status(pid, "VmHWM:"));
    eprintln!("console VmRSS {rss:.1} MiB, VmHWM {peak:.1} MiB");
    let bound = 24.0 + 64.0 * n as f64 / 1048576.0;
    assert!(
        peak <= bound,
        "the console peaked at {peak:.1} MiB over {n} entities (at most {bound:.1})"
    );
}
