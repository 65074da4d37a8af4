//! `walguard witness`, the real binary on a loopback port, driven by the library's witness
//! client (the one the publisher uses): a first checkpoint is cosigned and the cosignature
//! verifies with the key the witness prints; a consistency proof that does not verify and a
//! rollback are refused; and killed with SIGKILL around its answers and restarted, it never
//! cosigns two roots for one size.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use walguard::event::Signer;
use walguard::tlog::proof::prove_consistency;
use walguard::tlog::{leaf_hash, AddCheckpoint, Checkpoint, CheckpointSigner, Frontier, Hash, SignedCheckpoint};
use walguard::witness::{Answer, ClientError, WitnessClient};

pub(crate) use crate::harness::witness::{witness_key, WitnessProcess};
use crate::harness::{eventually, BIN};

const ORIGIN: &str = "walguard/7301234567890123456/app/walguard";

/// A log the test writes itself: its key and its leaves.
struct Log {
    key: Signer,
    leaves: Vec<Hash>,
}

impl Log {
    fn new(seed: u8, events: u32, salt: &str) -> Log {
        Log {
            key: Signer::new(SigningKey::from_bytes(&[seed; 32])),
            leaves: (0..events)
                .map(|i| leaf_hash(format!("{{\"event\":{i},\"salt\":\"{salt}\"}}").as_bytes()))
                .collect(),
        }
    }

    fn signer(&self) -> CheckpointSigner<'_> {
        CheckpointSigner::new(ORIGIN, &self.key).unwrap()
    }

    fn checkpoint(&self, size: u64) -> SignedCheckpoint {
        let root = Frontier::from_leaf_hashes(self.leaves[..size as usize].iter().copied()).root();
        SignedCheckpoint::sign(Checkpoint::new(ORIGIN, size, root).unwrap(), &self.signer()).unwrap()
    }

    fn proof(&self, old: u64, new: u64) -> Vec<Hash> {
        prove_consistency(old, new, self.leaves.iter().copied()).unwrap()
    }

    fn request(&self, old: u64, new: u64) -> AddCheckpoint {
        AddCheckpoint {
            old_size: old,
            proof: if old == 0 || old >= new {
                vec![]
            } else {
                self.proof(old, new)
            },
            checkpoint: self.checkpoint(new).to_bytes(),
        }
    }
}

async fn add(client: &WitnessClient, req: &AddCheckpoint) -> Result<Answer, ClientError> {
    client.add_checkpoint(req).await
}

fn refused_with(result: Result<Answer, ClientError>, status: u16) {
    match result {
        Err(ClientError::Refused { status: s, .. }) if s == status => {}
        other => panic!("wanted a refusal with {status}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_cosigns_a_consistent_log_and_refuses_bad_proofs_and_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let key = witness_key(dir.path());
    let log = Log::new(1, 40, "a");
    let log_vkey = log.signer().vkey().clone();
    let witness = WitnessProcess::start(dir.path(), &key, &log_vkey);
    assert_eq!(witness.vkey.name(), "witness.test/w1");
    // The printed key is the key file's: the operator configures it as `[[audit.witnesses]] key`.
    let from_file = walguard::tlog::Cosigner::new("witness.test/w1", Signer::load(&key).unwrap()).unwrap();
    assert_eq!(from_file.vkey(), &witness.vkey);
    let client = witness.client();

    // The first checkpoint: cosigned through the client's whole exchange (old 0, no proof).
    let first = log.checkpoint(10);
    let cosignatures = client
        .cosign(&first, 0, |_| async {
            Err::<Vec<Hash>, String>("no proof needed from 0".into())
        })
        .await
        .unwrap();
    assert_eq!(cosignatures.len(), 1);
    let now = walguard::clock::unix_micros() as u64 / 1_000_000;
    assert!(cosignatures[0].timestamp.abs_diff(now) < 120, "{cosignatures:?}");
    // The cosignature line, put into the note, verifies with the witness's key alone, and the
    // note still verifies with the log's.
    let mut note = SignedCheckpoint::parse(&first.to_bytes()).unwrap();
    note.add_signature_lines(&cosignatures[0].line).unwrap();
    let reread = SignedCheckpoint::parse(note.to_note_string().as_bytes()).unwrap();
    reread.verify_log(std::slice::from_ref(&log_vkey)).unwrap();
    assert_eq!(
        reread.cosignatures(std::slice::from_ref(&witness.vkey)).unwrap().len(),
        1
    );

    // Growth with a proof the client computes from the witness's size.
    let grown = log.checkpoint(25);
    let cos = client
        .cosign(&grown, 10, |old| {
            let proof = log.proof(old, 25);
            async move { Ok::<_, String>(proof) }
        })
        .await
        .unwrap();
    assert_eq!(cos.len(), 1);

    // A proof that does not verify: 422, and the witness keeps its size.
    let mut bad = log.request(25, 30);
    bad.proof[1].0[5] ^= 0x40;
    refused_with(add(&client, &bad).await, 422);
    // Another history of the same length (the log rewritten with its own key): 422.
    let rewritten = Log::new(1, 40, "b");
    refused_with(add(&client, &rewritten.request(25, 25)).await, 422);
    refused_with(add(&client, &rewritten.request(25, 30)).await, 422);
    // A checkpoint signed by another key under the log's name: 403.
    let impostor = Log::new(2, 40, "a");
    refused_with(add(&client, &impostor.request(25, 30)).await, 403);

    // A rollback: a smaller checkpoint from a smaller old size is a 409 with the witness's
    // size; from its own size, 400 (old size beyond the checkpoint).
    match add(&client, &log.request(10, 20)).await.unwrap() {
        Answer::Conflict(size) => assert_eq!(size, 25),
        other => panic!("wanted 409, got {other:?}"),
    }
    refused_with(add(&client, &log.request(25, 20)).await, 400);
    // And the client's `cosign` says the witness is ahead rather than looping.
    let err = client
        .cosign(&log.checkpoint(20), 10, |old| {
            let proof = log.proof(old, 20);
            async move { Ok::<_, String>(proof) }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Ahead {
                size: 25,
                checkpoint: 20,
                ..
            }
        ),
        "{err}"
    );

    // A stale old size on growth: the client retries from the size the 409 gives.
    let cos = client
        .cosign(&log.checkpoint(30), 10, |old| {
            let proof = log.proof(old, 30);
            async move { Ok::<_, String>(proof) }
        })
        .await
        .unwrap();
    assert_eq!(cos.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_killed_around_its_answers_never_cosigns_two_roots_for_one_size() {
    let dir = tempfile::tempdir().unwrap();
    let key = witness_key(dir.path());
    let log = Log::new(3, 64, "main");
    let fork = Log::new(3, 64, "fork");
    let log_vkey = log.signer().vkey().clone();
    let mut witness = WitnessProcess::start(dir.path(), &key, &log_vkey);

    // Killed right after answering: the restarted witness holds what it answered.
    let cos = witness
        .client()
        .cosign(&log.checkpoint(8), 0, |_| async {
            Err::<Vec<Hash>, String>("none".into())
        })
        .await
        .unwrap();
    assert_eq!(cos.len(), 1);
    witness.kill();
    let mut witness = WitnessProcess::start(dir.path(), &key, &log_vkey);
    match add(&witness.client(), &fork.request(0, 8)).await.unwrap() {
        Answer::Conflict(size) => assert_eq!(size, 8),
        other => panic!("wanted 409 with size 8, got {other:?}"),
    }
    refused_with(add(&witness.client(), &fork.request(8, 8)).await, 422);

    // Killed while answering, at varying points: after each restart its size is the one it
    // had or the one it was asked for, never below one it answered for, and a fork of that
    // size is refused.
    let mut answered = 8;
    let mut size = 8;
    for (round, delay_ms) in [0u64, 1, 2, 4, 8].into_iter().enumerate() {
        let next = size + 5 + round as u64;
        let client = witness.client();
        let req = log.request(size, next);
        let pid = nix::unistd::Pid::from_raw(witness.child.as_ref().unwrap().id() as i32);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        });
        let result = add(&client, &req).await;
        killer.await.unwrap();
        if let Ok(Answer::Cosigned(_)) = result {
            answered = next;
        }
        witness.kill();
        witness = WitnessProcess::start(dir.path(), &key, &log_vkey);
        let client = witness.client();
        let held = match add(&client, &fork.request(0, 1)).await.unwrap() {
            Answer::Conflict(s) => s,
            other => panic!("wanted 409, got {other:?}"),
        };
        assert!(
            held == size || held == next,
            "round {round}: witness holds {held}, not {size} or {next}"
        );
        assert!(
            held >= answered,
            "round {round}: witness holds {held} after answering for {answered}"
        );
        refused_with(add(&client, &fork.request(held, held)).await, 422);
        size = held;
    }

    // And it goes on from there.
    let next = size + 3;
    let cos = eventually(Duration::from_secs(10), "the restarted witness to cosign", || {
        let client = witness.client();
        let req = log.request(size, next);
        async move {
            match client.add_checkpoint(&req).await {
                Ok(Answer::Cosigned(c)) => Some(c),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(cos.len(), 1);
}

#[test]
fn witness_refuses_a_loose_key_file_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let key = witness_key(dir.path());
    let log = Log::new(1, 1, "a");
    let vkey = log.signer().vkey().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("witness").args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let state = dir.path().join("state");
    let (key, state) = (key.to_str().unwrap(), state.to_str().unwrap());
    let port = walguard::testkit::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");

    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = run(&["--listen", &listen, "--key", key, "--state", state, "--log", &vkey]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let (code, err) = run(&[
        "--listen",
        &listen,
        "--key",
        key,
        "--state",
        state,
        "--log",
        "not-a-vkey",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log"), "{err}");
    let (code, err) = run(&["--listen", "nowhere", "--key", key, "--state", state, "--log", &vkey]);
    assert_eq!(code, 2, "{err}");
    let (code, _) = run(&["--listen", &listen, "--key", key, "--state", state]);
    assert_eq!(code, 2, "--log is required");
}

/// Copies stream `from` into a new stream `to` with the signature of the first signed
/// message replaced by `forged`.
async fn copy_with_forged_signature(js: &async_nats::jetstream::Context, from: &str, to: &str, forged: &str) {
    use walguard::event::envelope::HEADER_SIGNATURE;
    let mut forged_once = false;
    crate::harness::copy_stream(js, from, to, |_, headers, _| {
        if !forged_once && headers.get(HEADER_SIGNATURE).is_some() {
            headers.insert(HEADER_SIGNATURE, forged);
            forged_once = true;
        }
    })
    .await;
    assert!(forged_once, "the stream has a signed message");
}

/// `walguard witness -c`: the auditors' witness reads the stream itself. It cosigns a
/// checkpoint the stream backs and refuses one whose root is not the stream's, one beyond the
/// stream's end, and, on a copy of the stream with one forged signature, the very checkpoint
/// a plain witness cosigns (same size, same root, valid log signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_witness_reads_the_stream_and_refuses_what_it_does_not_back() {
    let env = crate::harness::Env::start(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    for i in 0..6 {
        env.db
            .execute("INSERT INTO public.t VALUES ($1, $2)", &[&i, &format!("v{i}")])
            .await
            .unwrap();
    }
    env.wait_events(6, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    let stored = env.read_stream().await;
    let size = stored.len() as u64;
    assert!(stored.last().unwrap().signed, "no unsigned tail after a clean stop");

    // The log as walguard's key signs it (the lead's publisher will do the same).
    let log_key = Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    let log = CheckpointSigner::new(ORIGIN, &log_key).unwrap();
    let leaves: Vec<Hash> = stored.iter().map(|m| leaf_hash(&m.payload)).collect();
    let checkpoint = |n: u64, leaves: &[Hash]| {
        let root = Frontier::from_leaf_hashes(leaves[..n as usize].iter().copied()).root();
        SignedCheckpoint::sign(Checkpoint::new(ORIGIN, n, root).unwrap(), &log).unwrap()
    };
    let request = |old: u64, cp: &SignedCheckpoint| AddCheckpoint {
        old_size: old,
        proof: vec![],
        checkpoint: cp.to_bytes(),
    };

    let wdir = tempfile::tempdir().unwrap();
    let key = witness_key(wdir.path());
    let config = env.config.to_str().unwrap().to_owned();
    let witness = WitnessProcess::start_with(&wdir.path().join("state"), &key, log.vkey(), &["-c", &config]);
    let client = witness.client();

    // Another root at the stream's size: the stream does not back it.
    let mut other = leaves.clone();
    other[1] = leaf_hash(b"not what the stream holds");
    refused_with(add(&client, &request(0, &checkpoint(size, &other))).await, 422);
    // More messages than the stream holds (a checkpoint of a longer log).
    let mut longer = leaves.clone();
    longer.push(leaf_hash(b"one more"));
    refused_with(add(&client, &request(0, &checkpoint(size + 1, &longer))).await, 422);
    // Part of the stream, then all of it: cosigned, each read only once.
    assert!(matches!(
        add(&client, &request(0, &checkpoint(size - 2, &leaves))).await.unwrap(),
        Answer::Cosigned(_)
    ));
    let cp = checkpoint(size, &leaves);
    let cos = client
        .cosign(&cp, size - 2, |old| {
            let proof = prove_consistency(old, size, leaves.iter().copied()).unwrap();
            async move { Ok::<_, String>(proof) }
        })
        .await
        .unwrap();
    assert_eq!(cos.len(), 1);

    // The same checkpoint, over a copy of the stream with one forged signature: a plain
    // witness cosigns it, the verifying one does not.
    let js = env.js().await;
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 64])
    };
    copy_with_forged_signature(&js, &env.stream, "TAMPERED", &forged).await;
    let tampered_config = wdir.path().join("tampered.toml");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&format!("stream = \"{}\"", env.stream), "stream = \"TAMPERED\"")
        .replace(
            "key_file = \"walguard.key\"",
            &format!("key_file = \"{}\"", env.dir.path().join("walguard.key").display()),
        );
    std::fs::write(&tampered_config, text).unwrap();
    let plain = WitnessProcess::start_with(&wdir.path().join("plain"), &key, log.vkey(), &[]);
    assert!(matches!(
        add(&plain.client(), &request(0, &cp)).await.unwrap(),
        Answer::Cosigned(_)
    ));
    let auditing = WitnessProcess::start_with(
        &wdir.path().join("auditing"),
        &key,
        log.vkey(),
        &["-c", tampered_config.to_str().unwrap()],
    );
    match add(&auditing.client(), &request(0, &cp)).await {
        Err(ClientError::Refused { status: 422, body, .. }) => {
            assert!(body.contains("signature"), "{body}");
        }
        other => panic!("wanted 422 naming the signature, got {other:?}"),
    }
    drop(env);
}
