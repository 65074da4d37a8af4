//! The transparency log of `walguard run` (SPEC section 8): checkpoints at
//! `audit.checkpoint_interval` and before a clean shutdown, each the RFC 6962 root of every
//! message before it, recomputed here independently (SHA-256 from the `sha2` crate, the tree
//! written out as the RFC defines it); the tree resumes after a SIGKILL; and a stream cut
//! short the way an admin can (deleted and re-created without its newest messages, the rest
//! republished with their headers) passes the chain check but not `verify --checkpoint` with
//! a checkpoint kept from before.

use std::time::Duration;

use async_nats::jetstream;
use base64::Engine;
use sha2::{Digest, Sha256};

pub(crate) use crate::harness::witness::{log_vkey, witness_section};
use crate::harness::{eventually, Env, Stored};
use crate::witness::{witness_key, WitnessProcess};

const SCHEMA: &str = "create table t (id int primary key, v text)";
const TABLES: &str = "[[tables]]\nname = \"public.t\"";

/// RFC 6962 section 2.1: MTH of the leaves' hashes, split at the largest power of two below n.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(mth(&leaves[..k]));
            h.update(mth(&leaves[k..]));
            h.finalize().into()
        }
    }
}

fn leaf(payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(payload);
    h.finalize().into()
}

/// Every checkpoint in `stream` covers exactly the messages before it, with their root.
fn assert_checkpoints_match(stream: &[Stored]) -> usize {
    let leaves: Vec<[u8; 32]> = stream.iter().map(|m| leaf(&m.payload)).collect();
    let mut seen = 0;
    for m in stream.iter().filter(|m| m.subject == "wg._walguard.checkpoint") {
        seen += 1;
        let data = m.data();
        assert_eq!(m.json["type"], "walguard.checkpoint", "{m:?}");
        assert!(m.signed, "a checkpoint is always signed: {m:?}");
        let size = data["size"].as_u64().unwrap();
        assert_eq!(size, m.seq - 1, "a checkpoint covers the messages before it: {m:?}");
        let root = base64::engine::general_purpose::STANDARD.encode(mth(&leaves[..size as usize]));
        assert_eq!(data["root"], root.as_str(), "root of the first {size} messages: {m:?}");
        let note = data["note"].as_str().unwrap();
        let mut lines = note.lines();
        assert!(lines.next().unwrap().starts_with("walguard/"), "origin line: {note}");
        assert_eq!(lines.next(), Some(size.to_string().as_str()), "{note}");
        assert_eq!(lines.next(), Some(root.as_str()), "{note}");
    }
    seen
}

pub(crate) fn audit_section(env: &Env, audit: &str) {
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!("\n[audit]\n{audit}\n"));
    std::fs::write(&env.config, text).unwrap();
}

async fn insert(env: &Env, from: i32, to: i32) {
    for i in from..to {
        env.db.execute("insert into t values ($1, 'x')", &[&i]).await.unwrap();
    }
}

async fn checkpoints(env: &Env) -> Vec<Stored> {
    env.read_stream()
        .await
        .into_iter()
        .filter(|m| m.subject == "wg._walguard.checkpoint")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_at_the_interval_and_at_shutdown_are_the_roots_of_the_stream_and_resume_after_sigkill() {
    let env = Env::start(SCHEMA, TABLES, "").await;
    audit_section(&env, "checkpoint_interval = \"1s\"");
    let mut wg = env.spawn_ready().await;
    insert(&env, 0, 30).await;
    env.wait_events(30, Duration::from_secs(30)).await;
    let first = eventually(Duration::from_secs(30), "a checkpoint at the interval", || async {
        let c = checkpoints(&env).await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    // Killed mid-stream, after at least one checkpoint: the next session restores the tree
    // from the stream's newest checkpoint and the messages after it.
    insert(&env, 30, 40).await;
    env.wait_events(40, Duration::from_secs(30)).await;
    wg.kill();
    insert(&env, 40, 60).await;
    let mut wg = env.spawn();
    env.wait_events(60, Duration::from_secs(30)).await;
    let newest = first.last().unwrap().seq;
    eventually(Duration::from_secs(30), "a checkpoint after the restart", || async {
        checkpoints(&env)
            .await
            .last()
            .is_some_and(|c| c.seq > newest + 20)
            .then_some(())
    })
    .await;
    wg.stop_cleanly().await;

    let stream = env.read_stream().await;
    let last = stream.last().unwrap();
    assert_eq!(
        last.subject, "wg._walguard.checkpoint",
        "a clean stop ends with a checkpoint: {last:?}"
    );
    let seen = assert_checkpoints_match(&stream);
    assert!(seen >= 2, "{seen} checkpoints");
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("checkpoints: {seen} checked")), "{out}");
}

/// Every message of the stream with its headers, as an admin's script would copy them.
async fn raw_messages(js: &jetstream::Context, stream: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let st = js.get_stream(stream).await.unwrap();
    let last = st.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        out.push(st.get_raw_message(seq).await.unwrap());
    }
    out
}

/// What an admin can do to a stream whose settings deny deletes: copy its messages out, delete
/// it and re-create it empty with the same settings. Returns the messages, in order.
async fn emptied(js: &jetstream::Context, stream: &str) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let messages = raw_messages(js, stream).await;
    let config = js.get_stream(stream).await.unwrap().cached_info().config.clone();
    js.delete_stream(stream).await.unwrap();
    js.create_stream(config).await.unwrap();
    messages
}

/// Publishes `payload` with `headers` on `m`'s subject and waits for its PubAck.
async fn republish(
    js: &jetstream::Context,
    m: &async_nats::jetstream::message::StreamMessage,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) {
    js.publish_with_headers(m.subject.clone(), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_events_removed_pass_the_chain_check_but_not_a_kept_checkpoint() {
    let env = Env::start(SCHEMA, TABLES, "").await;
    let mut wg = env.spawn_ready().await;
    insert(&env, 0, 30).await;
    env.wait_events(30, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    // The auditor keeps the newest checkpoint (the one of the clean stop).
    let kept = checkpoints(&env).await.pop().expect("a checkpoint at shutdown");
    let kept_size = kept.data()["size"].as_u64().unwrap();
    let kept_file = env.dir.path().join("kept.checkpoint");
    std::fs::write(&kept_file, kept.data()["note"].as_str().unwrap()).unwrap();

    // The admin's rewrite: the stream deleted and re-created with all but its newest 10
    // messages (cut further back to a signed one, so the chain check has nothing to say).
    let js = env.js().await;
    let messages = emptied(&js, &env.stream).await;
    let mut keep = messages.len() - 10;
    while messages[keep - 1].headers.get("Walguard-Signature").is_none() {
        keep -= 1;
    }
    for m in &messages[..keep] {
        republish(&js, m, m.headers.clone(), m.payload.clone()).await;
    }
    let (code, out) = env.verify();
    assert_eq!(code, 0, "the chain alone cannot tell: {out}");
    let (code, stdout, stderr) = env.command(&[
        "verify",
        "-c",
        env.config.to_str().unwrap(),
        "--checkpoint",
        kept_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "does not extend the checkpoint of size {kept_size}: it holds only {keep} messages"
        )),
        "{stdout}{stderr}"
    );
}

/// The stream rewritten with the signing key: one value changed in message `at`, every
/// later message re-chained, every message re-signed, every checkpoint recomputed and
/// re-signed by the log key (no witness can be forged), republished into a fresh stream.
async fn rewrite_with_the_key(env: &Env, origin: &str, at: u64) {
    use walguard::tlog::{Checkpoint, CheckpointData, CheckpointSigner, Frontier, SignedCheckpoint};
    let signer = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    let js = env.js().await;
    let messages = emptied(&js, &env.stream).await;
    let mut prev = [0u8; 32];
    let mut tree = Frontier::new();
    for m in &messages {
        let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        v["prevhash"] = base64::engine::general_purpose::STANDARD.encode(prev).into();
        if m.sequence == at {
            v["data"]["after"]["v"] = "rewritten".into();
        }
        if v["type"] == "walguard.checkpoint" {
            let body = Checkpoint::new(origin, tree.size(), tree.root()).unwrap();
            let signed = SignedCheckpoint::sign(body, &CheckpointSigner::new(origin, &signer).unwrap()).unwrap();
            v["data"] = serde_json::from_slice(&CheckpointData::new(&signed).to_bytes()).unwrap();
        }
        let payload = serde_json::to_vec(&v).unwrap();
        prev = Sha256::digest(&payload).into();
        tree.append_payload(&payload);
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in m.headers.iter() {
            let name_text: &str = name.as_ref();
            if name_text != "Walguard-Signature" && name_text != "Walguard-Key-Id" {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert("Walguard-Key-Id", signer.key_id());
        headers.insert("Walguard-Signature", signer.sign(&payload));
        republish(&js, m, headers, payload.into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_cosigned_by_a_witness_and_a_history_rewritten_with_the_key_is_caught() {
    let env = Env::start(SCHEMA, TABLES, "").await;
    let (vkey, origin) = log_vkey(&env).await;
    let key = witness_key(env.dir.path());
    let witness = WitnessProcess::start(env.dir.path(), &key, &vkey);
    audit_section(
        &env,
        &format!("checkpoint_interval = \"1s\"\n{}", witness_section(&witness)),
    );
    let mut wg = env.spawn_ready().await;
    insert(&env, 0, 20).await;
    env.wait_events(20, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    let stream = env.read_stream().await;
    assert_checkpoints_match(&stream);
    let kept = checkpoints(&env).await.pop().unwrap();
    let note = kept.data()["note"].as_str().unwrap().to_owned();
    assert!(
        note.contains("\n— witness.test/w1 "),
        "the witness's cosignature: {note}"
    );
    let kept_file = env.dir.path().join("witnessed.checkpoint");
    std::fs::write(&kept_file, &note).unwrap();
    let (code, out) = env.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("has 1 witness cosignature(s)"), "{out}");

    // Rewritten with the signing key, the stream is consistent in itself...
    let row_event = stream.iter().find(|m| m.op() == "insert").unwrap().seq;
    rewrite_with_the_key(&env, &origin, row_event).await;
    let (code, out) = env.verify();
    assert_eq!(
        code, 0,
        "a history rewritten with the key passes the chain check: {out}"
    );
    assert!(out.contains("has 0 witness cosignature(s)"), "{out}");
    // ...but not against the checkpoint the witness cosigned.
    let size = kept.data()["size"].as_u64().unwrap();
    let (code, stdout, stderr) = env.command(&[
        "verify",
        "-c",
        env.config.to_str().unwrap(),
        "--checkpoint",
        kept_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("cosigned by 1 of 1 witness key(s)"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "sequence {size}: the stream does not extend the checkpoint of size {size}"
        )),
        "{stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_witness_holds_the_slot_while_the_witness_is_down_and_catches_up_after() {
    let env = Env::start(SCHEMA, TABLES, "").await;
    let (vkey, _) = log_vkey(&env).await;
    let key = witness_key(env.dir.path());
    let state = env.dir.path().join("witness-state");
    let mut witness = WitnessProcess::start_on(walguard::testkit::free_port(), &state, &key, &vkey, &[]);
    audit_section(
        &env,
        &format!(
            "checkpoint_interval = \"1s\"\nrequire_witness = true\n{}",
            witness_section(&witness)
        ),
    );
    let _wg = env.spawn_ready().await;
    insert(&env, 0, 10).await;
    env.wait_events(10, Duration::from_secs(30)).await;
    let cosigned_end = |stream: &[Stored]| {
        stream
            .iter()
            .filter(|m| m.subject == "wg._walguard.checkpoint")
            .filter(|m| m.data()["note"].as_str().unwrap().contains("— witness.test/w1 "))
            .filter_map(|m| m.json["pgendlsn"].as_str().map(crate::harness::lsn))
            .max()
    };
    eventually(
        Duration::from_secs(30),
        "a cosigned checkpoint and the slot past it",
        || async {
            let end = cosigned_end(&env.read_stream().await)?;
            (env.confirmed_flush().await? >= end).then_some(())
        },
    )
    .await;

    witness.kill();
    insert(&env, 10, 20).await;
    env.wait_events(20, Duration::from_secs(30)).await;
    let port = env.listen_port;
    let (status, body) = crate::ops::wait_status(port, "/readyz", 503, Duration::from_secs(30)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("witness quorum"), "{body}");
    // Checkpoints go on without the witness, and the slot stays at the last cosigned one.
    let stream = eventually(Duration::from_secs(30), "an uncosigned checkpoint", || async {
        let stream = env.read_stream().await;
        let uncosigned = stream
            .iter()
            .filter(|m| m.subject == "wg._walguard.checkpoint")
            .any(|m| !m.data()["note"].as_str().unwrap().contains("— witness.test/w1 "));
        uncosigned.then_some(stream)
    })
    .await;
    let held_at = cosigned_end(&stream).unwrap();
    let newest_end = stream
        .iter()
        .filter_map(|m| m.json["pgendlsn"].as_str().map(crate::harness::lsn))
        .max()
        .unwrap();
    assert!(newest_end > held_at);
    let confirmed = env.confirmed_flush().await.unwrap();
    assert!(
        confirmed <= held_at,
        "confirmed {confirmed:x} past the last cosigned {held_at:x}"
    );

    // The witness back on its port: walguard catches up by itself.
    let _witness = WitnessProcess::start_on(witness.port, &state, &key, &vkey, &[]);
    let (status, body) = crate::ops::wait_status(port, "/readyz", 200, Duration::from_secs(60)).await;
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(30),
        "the slot confirmed past the rows written while the witness was down",
        || async { (env.confirmed_flush().await? >= newest_end).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prove_writes_a_tlog_proof_that_verifies_offline_from_the_stream_and_from_an_archive() {
    let env = Env::start(SCHEMA, TABLES, "").await;
    let mut wg = env.spawn_ready().await;
    insert(&env, 0, 40).await;
    env.wait_events(40, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    let stream = env.read_stream().await;
    let event = stream.iter().filter(|m| m.op() == "insert").nth(17).unwrap().seq;
    let public = env.dir.path().join("walguard.pub");
    let signer = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    std::fs::write(&public, signer.public_key_pem()).unwrap();
    let config = env.config.to_str().unwrap();
    let dir = env.dir.path();
    let proof = dir.join("event.tlog-proof");
    let (code, out, err) = env.command(&[
        "prove",
        "-c",
        config,
        "--sequence",
        &event.to_string(),
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&proof).unwrap();
    assert!(
        text.starts_with(&format!("c2sp.org/tlog-proof@v1\nindex {}\n", event - 1)),
        "{text}"
    );
    let event_file = format!("{}.event", proof.display());
    let offline = |proof: &str, event: &str| {
        env.command(&[
            "verify",
            "--public-key",
            public.to_str().unwrap(),
            "--proof",
            proof,
            "--event",
            event,
        ])
    };
    let (code, out, err) = offline(proof.to_str().unwrap(), &event_file);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("proven: event sequence {event} is in the log walguard/")),
        "{out}"
    );

    // The event altered (one value), or the proof's first hash: not proven, and said why.
    let line = std::fs::read_to_string(&event_file).unwrap();
    let mut envelope: serde_json::Value = serde_json::from_str(&line).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = String::from_utf8(b64.decode(envelope["payload"].as_str().unwrap()).unwrap()).unwrap();
    envelope["payload"] = b64.encode(payload.replacen("\"v\":\"x\"", "\"v\":\"y\"", 1)).into();
    envelope["signatures"] = serde_json::json!([]);
    let altered = dir.join("altered.event");
    std::fs::write(&altered, envelope.to_string()).unwrap();
    let (code, out, _) = offline(proof.to_str().unwrap(), altered.to_str().unwrap());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NOT proven") && out.contains("inclusion proof does not verify"),
        "{out}"
    );
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = b64.encode([7u8; 32]);
    let bad_proof = dir.join("bad.tlog-proof");
    std::fs::write(&bad_proof, format!("{}\n", lines.join("\n"))).unwrap();
    let (code, out, _) = offline(bad_proof.to_str().unwrap(), &event_file);
    assert_eq!(code, 1, "{out}");

    // From an archive, the same proof.
    let archive = dir.join("archive");
    let (code, out, err) = env.command(&["archive", "-c", config, "--dir", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let from_archive = dir.join("archived.tlog-proof");
    let (code, out, err) = env.command(&[
        "prove",
        "--archive",
        archive.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
        "--sequence",
        &event.to_string(),
        "--out",
        from_archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&from_archive).unwrap(), text);
    // A sequence past the newest checkpoint is named.
    let (code, _, err) = env.command(&[
        "prove",
        "-c",
        config,
        "--sequence",
        "100000",
        "--out",
        from_archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not covered by the newest checkpoint"), "{err}");
}
