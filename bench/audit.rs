//! `cargo bench --bench pipeline -- audit` (issue 17): what the transparency log costs.
//!
//! W1 and W2 exactly as their own parts (same workload, same ceilings, same ratio), with
//! `audit.checkpoint_interval = "1s"`, once without a witness and once with one `walguard
//! witness` process in `[[audit.witnesses]]`: the ratio, walguard's CPU per event, and the
//! checkpoints and cosignatures in the stream after the drain began. Then the tree alone (the
//! product cannot switch it off): 1,000,000 appends of a real event's payload to the
//! publisher's incremental tree in this process. Then `walguard prove` of one event in the
//! middle of W1's 1,000,000-event stream and `walguard verify --proof --event` of its proof.

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use futures::StreamExt;

use crate::harness::witness::{log_vkey, witness_key, witness_section, WitnessProcess};
use crate::harness::BIN;
use crate::measure::{self, Measured};
use crate::{Bench, Row, Workload};

/// Short, so that a drain of ten seconds or more publishes several checkpoints.
const CHECKPOINT_INTERVAL: &str = "1s";
/// Leaves appended to the tree when it is timed alone.
const TREE_LEAVES: u64 = 1_000_000;

#[derive(serde::Serialize)]
pub struct Case {
    witness: bool,
    /// walguard's CPU microseconds per event of the workload.
    cpu_us_per_event: f64,
    /// Checkpoints in the stream after the drain began (the one at shutdown included).
    checkpoints: u64,
    /// Witness cosignature lines in those checkpoints' notes.
    cosignatures: u64,
    #[serde(flatten)]
    row: Row,
}

#[derive(serde::Serialize)]
pub struct Report {
    checkpoint_interval: &'static str,
    cases: Vec<Case>,
    tree_leaves: u64,
    tree_payload_bytes: u64,
    tree_ns_per_event: f64,
    /// The event proven, and how many messages its stream holds.
    prove_sequence: u64,
    prove_stream_messages: u64,
    prove: Measured,
    verify_proof: Measured,
}

pub async fn run() -> Report {
    let mut cases = Vec::new();
    let mut proven = None;
    for (name, workload) in [("W1", Workload::OneBigTransaction), ("W2", Workload::SmallTransactions)] {
        for with_witness in [false, true] {
            let env = crate::env().await;
            let witness = if with_witness {
                let (vkey, _) = log_vkey(&env).await;
                Some(WitnessProcess::start(
                    env.dir.path(),
                    &witness_key(env.dir.path()),
                    &vkey,
                ))
            } else {
                None
            };
            let witnesses = witness.as_ref().map(witness_section).unwrap_or_default();
            crate::append_config(
                &env,
                &format!("\n[audit]\ncheckpoint_interval = \"{CHECKPOINT_INTERVAL}\"\n{witnesses}\n"),
            );
            let label = format!("{name} {}", if with_witness { "+witness" } else { "no witness" });
            eprintln!("audit: {label}");
            let row = crate::catch_up(&env, name, workload).await;
            let (checkpoints, cosignatures) = checkpoints_after(&env, row.drained_after_seq).await;
            eprintln!("audit: {label}: {checkpoints} checkpoints, {cosignatures} cosignatures");
            if name == "W1" && with_witness {
                let middle = row.drained_after_seq + row.changes / 2;
                proven = Some((
                    prove(&env, middle, witness.as_ref().unwrap()).await,
                    tree(&env, middle).await,
                ));
            }
            cases.push(Case {
                witness: with_witness,
                cpu_us_per_event: row.cpu_s / row.changes as f64 * 1e6,
                checkpoints,
                cosignatures,
                row,
            });
        }
    }
    let ((prove_sequence, prove_stream_messages, prove, verify_proof), (tree_payload_bytes, tree_ns_per_event)) =
        proven.expect("W1 with a witness ran");
    Report {
        checkpoint_interval: CHECKPOINT_INTERVAL,
        cases,
        tree_leaves: TREE_LEAVES,
        tree_payload_bytes,
        tree_ns_per_event,
        prove_sequence,
        prove_stream_messages,
        prove,
        verify_proof,
    }
}

/// The checkpoints in the stream after sequence `after`, and the witness cosignatures in
/// their notes (every signature line but the log's own).
async fn checkpoints_after(env: &Bench, after: u64) -> (u64, u64) {
    let stream = env.js.get_stream(&env.stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            filter_subject: "wg._walguard.checkpoint".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let (mut checkpoints, mut cosignatures) = (0, 0);
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), messages.next()).await {
        let msg = msg.unwrap();
        let event: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let note = event["data"]["note"].as_str().unwrap_or("");
        let origin = note.lines().next().unwrap_or("");
        checkpoints += 1;
        cosignatures += note
            .lines()
            .filter_map(|l| l.strip_prefix("— "))
            .filter(|l| l.split(' ').next() != Some(origin))
            .count() as u64;
        if msg.info().unwrap().pending == 0 {
            break;
        }
    }
    (checkpoints, cosignatures)
}

/// `walguard prove` of `sequence` against the newest checkpoint, then `walguard verify
/// --proof --event` of its output with the log's public key and the witness's key.
async fn prove(env: &Bench, sequence: u64, witness: &WitnessProcess) -> (u64, u64, Measured, Measured) {
    let messages = env.stream_messages().await;
    let dir = env.dir.path();
    let proof = dir.join("event.tlog-proof");
    let mut cmd = Command::new(BIN);
    cmd.args(["prove", "-c"])
        .arg(&env.config)
        .args(["--sequence", &sequence.to_string(), "--out"])
        .arg(&proof);
    let proved = measure::run_ok(cmd, &dir.join("prove.log"), None);
    eprintln!(
        "audit: prove of sequence {sequence} of {messages}: {:.2} s, {:.1} MiB",
        proved.wall_s, proved.peak_rss_mib
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("verify")
        .arg("--public-key")
        .arg(crate::public_key(env))
        .arg("--proof")
        .arg(&proof)
        .arg("--event")
        .arg(format!("{}.event", proof.display()))
        .args(["--witness-key", &witness.vkey.to_string()]);
    let verified = measure::run_ok(cmd, &dir.join("verify-proof.log"), None);
    eprintln!("audit: verify --proof: {}", verified.output.trim());
    (sequence, messages, proved, verified)
}

/// The tree alone: `TREE_LEAVES` appends of the payload of the event at `sequence` to the
/// incremental tree the publisher keeps (`Frontier::append_payload`: the leaf hash and the
/// interior nodes), then its root: (payload bytes, ns per append).
async fn tree(env: &Bench, sequence: u64) -> (u64, f64) {
    let stream = env.js.get_stream(&env.stream).await.unwrap();
    let payload = stream.get_raw_message(sequence).await.unwrap().payload;
    let mut tree = walguard::tlog::Frontier::new();
    let started = Instant::now();
    for _ in 0..TREE_LEAVES {
        std::hint::black_box(tree.append_payload(std::hint::black_box(&payload)));
    }
    std::hint::black_box(tree.root());
    let ns = started.elapsed().as_secs_f64() * 1e9 / TREE_LEAVES as f64;
    (payload.len() as u64, ns)
}

pub fn print(r: &Report) {
    println!(
        "\naudit (checkpoint_interval {}) {:>9} {:>11} {:>14} {:>6} {:>6} {:>8} {:>12} {:>13}",
        r.checkpoint_interval,
        "changes",
        "walguard/s",
        "lower ceiling",
        "ratio",
        "CPU s",
        "µs/event",
        "checkpoints",
        "cosignatures"
    );
    for c in &r.cases {
        let ceiling = c
            .row
            .recvlogical_per_s
            .zip(c.row.jetstream_per_s)
            .map(|(a, b)| a.min(b));
        println!(
            "  {:<3} {:<26} {:>9} {:>11} {:>14} {:>6} {:>6.1} {:>8.2} {:>12} {:>13}",
            c.row.workload,
            if c.witness {
                "with a witness"
            } else {
                "without a witness"
            },
            c.row.changes,
            crate::fmt_rate(c.row.walguard_per_s),
            crate::fmt_rate(ceiling),
            c.row.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            c.row.cpu_s,
            c.cpu_us_per_event,
            c.checkpoints,
            c.cosignatures
        );
    }
    let w1: Vec<String> = r
        .cases
        .iter()
        .filter(|c| c.row.workload == "W1")
        .map(|c| format!("{:.2}", c.cpu_us_per_event))
        .collect();
    println!(
        "  the tree alone: {} appends of a {}-byte event: {:.0} ns per event ({:.2} µs), against walguard's total {} µs per event in W1 (without / with a witness)",
        r.tree_leaves,
        r.tree_payload_bytes,
        r.tree_ns_per_event,
        r.tree_ns_per_event / 1e3,
        w1.join(" / ")
    );
    println!(
        "  prove sequence {} of a {}-message stream: {:.2} s wall, {:.2} CPU s, peak RSS {:.1} MiB; verify --proof --event: {:.3} s, {:.1} MiB",
        r.prove_sequence,
        r.prove_stream_messages,
        r.prove.wall_s,
        r.prove.cpu_s,
        r.prove.peak_rss_mib,
        r.verify_proof.wall_s,
        r.verify_proof.peak_rss_mib
    );
}
