//! Issue 15, `walguard archive` (SPEC section 7): verified, fsynced, atomically renamed
//! segments that resume, survive a SIGKILL mid-segment, seal on SIGTERM, and name a segment
//! that is altered or missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::harness::{eventually, poll_until, Env, BIN};

const TABLE: &str = "CREATE TABLE public.t (id int PRIMARY KEY, v text);";

async fn env() -> Env {
    Env::start(
        TABLE,
        "[[tables]]\nname = \"public.t\"\n",
        "\n[archive]\nsegment_events = 256\nsegment_seconds = \"1s\"\n",
    )
    .await
}

async fn write(env: &Env, from: i32, txs: i32) {
    for t in 0..txs {
        let base = from + t * 5;
        env.db
            .batch_execute(&format!(
                "BEGIN; INSERT INTO public.t SELECT g, 'v' || g FROM generate_series({base}, {}) g; \
                 UPDATE public.t SET v = 'u' WHERE id = {base}; COMMIT;",
                base + 4
            ))
            .await
            .unwrap();
    }
}

/// Runs walguard while `txs` transactions are written and until their changes are in the
/// stream, then stops it cleanly (so the tail is signed).
async fn publish(env: &Env, from: i32, txs: i32, events: usize) {
    let mut wg = env.spawn_ready().await;
    write(env, from, txs).await;
    env.wait_events(events, Duration::from_secs(60)).await;
    wg.stop_cleanly().await;
}

fn segments(dir: &Path) -> Vec<(u64, u64, PathBuf)> {
    // The archive creates its folder when it starts.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (first, last) = walguard::archive::parse_segment_name("WG", &name)?;
            Some((first, last, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Every sequence in the archive, each line's payload `sequence` matching, in order.
fn archived_sequences(dir: &Path) -> Vec<u64> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (first, last, path) in segments(dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let payload: Value =
                    serde_json::from_slice(&b64.decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
                payload["sequence"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(seqs.first(), Some(&first), "{}", path.display());
        assert_eq!(seqs.last(), Some(&last), "{}", path.display());
        assert!(seqs.len() <= 256, "a segment holds at most archive.segment_events");
        out.extend(seqs);
    }
    out
}

fn archive(env: &Env, dir: &Path) -> (i32, String) {
    let (code, out, err) = env.command(&[
        "archive",
        "-c",
        env.config.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    (code, format!("{out}{err}"))
}

fn verify_archive(env: &Env, dir: &Path) -> (i32, String) {
    let (code, out, err) = env.command(&[
        "verify",
        "-c",
        env.config.to_str().unwrap(),
        "--archive",
        dir.to_str().unwrap(),
    ]);
    (code, format!("{out}{err}"))
}

fn follow(env: &Env, dir: &Path) -> Child {
    Command::new(BIN)
        .args(["archive", "--follow", "-c"])
        .arg(&env.config)
        .arg("--dir")
        .arg(dir)
        .env("WALGUARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn exit_of(child: &mut Child, within: Duration) -> Option<i32> {
    poll_until(within, || {
        let status = child.try_wait().unwrap();
        async move { status.map(|s| s.code().unwrap_or(-1)) }
    })
    .await
}

fn whole(seqs: &[u64], last: u64) {
    let want: Vec<u64> = (1..=last).collect();
    assert_eq!(seqs, want.as_slice(), "every sequence once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_resumes_survives_a_kill_mid_segment_and_names_damage() {
    let env = env().await;
    let dir = env.dir.path().join("archive");
    publish(&env, 1, 100, 600).await;
    let last = env.stream_messages().await;

    // A first copy: segments of at most 256, each ending at a signed event, verified.
    let (code, out) = archive(&env, &dir);
    assert_eq!(code, 0, "{out}");
    whole(&archived_sequences(&dir), last);
    assert!(segments(&dir).len() >= 2, "{out}");
    let (code, out) = verify_archive(&env, &dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
    // Nothing new: nothing written.
    let before = segments(&dir);
    let (code, out) = archive(&env, &dir);
    assert_eq!(code, 0, "{out}");
    assert_eq!(segments(&dir), before);

    // --follow copies while walguard publishes; SIGKILL while a segment is being written.
    let mut wg = env.spawn_ready().await;
    let mut child = follow(&env, &dir);
    write(&env, 1000, 60).await;
    let partial = poll_until(Duration::from_secs(60), || {
        let found =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).find(|p| {
                p.extension().is_some_and(|x| x == "partial") && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
            });
        async move { found }
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    // A segment may have been sealed in the meantime; the partial one may be the next.
    let partial_left = partial.is_some_and(|p| p.exists());

    // More changes, walguard stopped cleanly, the archive run again: the partial file is
    // named and never built on, nothing is lost or doubled.
    write(&env, 2000, 40).await;
    env.wait_events(600 + 360 + 240, Duration::from_secs(60)).await;
    wg.stop_cleanly().await;
    let last = env.stream_messages().await;
    let (code, out) = archive(&env, &dir);
    assert_eq!(code, 0, "{out}");
    if partial_left {
        assert!(out.contains("removing a partial archive segment"), "{out}");
    }
    assert!(!std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "partial")));
    whole(&archived_sequences(&dir), last);

    // One byte of a sealed segment changed: verify and archive both name the file.
    let segs = segments(&dir);
    let (_, _, victim) = &segs[1];
    let original = std::fs::read_to_string(victim).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let mut env_line: Value = serde_json::from_str(&lines[2]).unwrap();
    let mut payload = b64.decode(env_line["payload"].as_str().unwrap()).unwrap();
    let pattern = b"\"after\":{\"id\":";
    let at = payload
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("a row event")
        + pattern.len();
    // A digit of the id: the JSON stays valid, the hash and the signature do not.
    payload[at] ^= 0x01;
    env_line["payload"] = Value::String(b64.encode(&payload));
    lines[2] = env_line.to_string();
    std::fs::write(victim, lines.join("\n") + "\n").unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let (code, out) = verify_archive(&env, &dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&name) && out.contains("altered"), "{out}");
    let (code, out) = archive(&env, &dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&name), "{out}");
    std::fs::write(victim, original).unwrap();
    assert_eq!(verify_archive(&env, &dir).0, 0);

    // A segment removed: named by the sequences it held.
    let (first, last_removed, path) = segs[1].clone();
    std::fs::remove_file(&path).unwrap();
    let (code, out) = verify_archive(&env, &dir);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("sequences {first} to {last_removed} are missing")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_seals_on_time_and_on_sigterm() {
    let env = env().await;
    let dir = env.dir.path().join("archive");
    let _wg = env.spawn_ready().await;
    let mut child = follow(&env, &dir);
    write(&env, 1, 2).await;
    // segment_seconds = 1s: what is signed is sealed within a few seconds, without SIGTERM.
    eventually(Duration::from_secs(30), "a segment sealed by time", || {
        let n = segments(&dir).len();
        async move { (n > 0).then_some(n) }
    })
    .await;
    write(&env, 100, 2).await;
    env.wait_events(24, Duration::from_secs(30)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let code = exit_of(&mut child, Duration::from_secs(30)).await;
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("sealing the open segment"), "{err}");
    let seqs = archived_sequences(&dir);
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no sequence twice");
    whole(&seqs, *seqs.last().unwrap());
    let (code, out) = verify_archive(&env, &dir);
    // The archive ends at a signed event, so it verifies even while walguard still runs.
    assert_eq!(code, 0, "{out}");
}
