//! End-to-end tests: real PostgreSQL, real nats-server, the real walguard binary. The oracle
//! is the SQL the test writes and the stream the test reads back with its own consumer.

mod harness;

use std::time::Duration;

use harness::{Env, Stored};
use serde_json::{json, Value};

const TWO_TABLES: &str = "
CREATE TABLE public.customers (id int PRIMARY KEY, email text NOT NULL, plan text);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer int NOT NULL, total numeric(10,2));
ALTER TABLE public.orders REPLICA IDENTITY FULL;";

const GUARD_TWO: &str = "[[tables]]\nname = \"public.customers\"\n\n[[tables]]\nname = \"public.orders\"\ntype_prefix = \"com.acme.order\"\n";

fn rows(events: &[Stored]) -> Vec<&Stored> {
    events.iter().filter(|m| !m.is_watermark()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_arrive_once_in_order_and_verify() {
    let env = Env::start(TWO_TABLES, GUARD_TWO, "").await;
    let mut wg = env.spawn_ready().await;
    // (A multi-statement simple query is one implicit transaction, so these are two.)
    env.db
        .batch_execute("INSERT INTO customers VALUES (1, 'a@x', 'free'), (2, 'b@x', 'pro')")
        .await
        .unwrap();
    env.db
        .batch_execute("INSERT INTO orders VALUES (10, 1, 5.50)")
        .await
        .unwrap();
    // One transaction over both tables, with every operation.
    env.db
        .batch_execute(
            "BEGIN;
             INSERT INTO customers VALUES (3, 'c@x', NULL);
             UPDATE customers SET email = 'a2@x' WHERE id = 1;
             UPDATE orders SET total = 7.25 WHERE id = 10;
             DELETE FROM customers WHERE id = 2;
             INSERT INTO orders VALUES (11, 3, 1.00);
             TRUNCATE orders;
             COMMIT;",
        )
        .await
        .unwrap();
    // A rolled-back transaction never appears.
    env.db
        .batch_execute("BEGIN; INSERT INTO customers VALUES (99, 'ghost@x', NULL); DELETE FROM customers; ROLLBACK;")
        .await
        .unwrap();
    env.db
        .batch_execute("UPDATE customers SET plan = 'team' WHERE id = 3")
        .await
        .unwrap();

    let all = env.wait_events(10, Duration::from_secs(30)).await;
    let events = rows(&all);
    let summary: Vec<(String, String, u64, Option<u64>)> = events
        .iter()
        .map(|m| {
            (
                m.subject.clone(),
                m.json["subject"].as_str().unwrap().to_owned(),
                m.json["pgtxidx"].as_u64().unwrap(),
                m.json["pgtxcnt"].as_u64(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, i: u64, c: Option<u64>| (a.to_owned(), b.to_owned(), i, c);
    assert_eq!(
        summary,
        vec![
            s("wg.public.customers.insert", "public.customers/1", 1, None),
            s("wg.public.customers.insert", "public.customers/2", 2, Some(2)),
            s("wg.public.orders.insert", "public.orders/10", 1, Some(1)),
            s("wg.public.customers.insert", "public.customers/3", 1, None),
            s("wg.public.customers.update", "public.customers/1", 2, None),
            s("wg.public.orders.update", "public.orders/10", 3, None),
            s("wg.public.customers.delete", "public.customers/2", 4, None),
            s("wg.public.orders.insert", "public.orders/11", 5, None),
            s("wg.public.orders.truncate", "public.orders", 6, Some(6)),
            s("wg.public.customers.update", "public.customers/3", 1, Some(1)),
        ],
        "{all:#?}"
    );
    // Before and after images: DEFAULT identity gives the old key, FULL the old row.
    assert_eq!(events[4].data()["before"], json!({"id": 1}));
    assert_eq!(
        events[4].data()["after"],
        json!({"id": 1, "email": "a2@x", "plan": "free"})
    );
    assert_eq!(
        events[5].data()["before"],
        json!({"id": 10, "customer": 1, "total": "5.50"})
    );
    assert_eq!(
        events[5].data()["after"],
        json!({"id": 10, "customer": 1, "total": "7.25"})
    );
    assert_eq!(events[5].json["type"], "com.acme.order.updated");
    assert_eq!(events[6].data()["after"], Value::Null);
    assert_eq!(events[6].data()["before"], json!({"id": 2}));
    assert_eq!(events[8].data()["cascade"], false);
    assert_eq!(events[8].data()["key"], Value::Null);
    // Every event of a transaction shares its commit LSN; the last carries the end LSN.
    let tx: Vec<&&Stored> = events[3..9].iter().collect();
    assert!(tx.iter().all(|m| m.json["pglsn"] == tx[0].json["pglsn"]));
    assert!(tx[5].json["pgendlsn"].is_string());
    assert!(events.iter().all(|m| m.json["data"]["actor"].is_null()));
    // Deterministic, unique ids, also used as Nats-Msg-Id.
    let mut ids: Vec<&str> = events.iter().map(|m| m.json["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    // The first message is the watermark at the slot's consistent point.
    let stream = env.read_stream().await;
    assert!(stream[0].is_watermark() && stream[0].signed, "{stream:?}");

    wg.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(wg.wait_exit(Duration::from_secs(20)), Some(0), "{}", wg.output());
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
}
