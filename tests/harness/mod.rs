//! The integration tests' harness: a private PostgreSQL and nats-server per test (from
//! walguard's testkit), a signing key and config in a temporary folder, the walguard binary as
//! a real process, and an independent reader of the stream (its own JetStream consumer and
//! JSON parsing, not walguard's code).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};
use walguard::testkit::{Nats, Postgres};

pub mod console;
pub mod witness;

pub const BIN: &str = env!("CARGO_BIN_EXE_walguard");

pub struct Env {
    pub pg: Postgres,
    pub nats: Nats,
    pub dir: tempfile::TempDir,
    pub db: Client,
    pub config: PathBuf,
    pub stream: String,
    pub slot: String,
    /// `server.listen` port of the walguard processes.
    pub listen_port: u16,
    /// Where the test's own NATS client connects (several URLs for a cluster).
    pub client_url: String,
}

/// One message as read back from the stream.
#[derive(Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub signed: bool,
    pub time: std::time::SystemTime,
    pub payload: Vec<u8>,
    pub json: Value,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {}{}",
            self.seq,
            self.subject,
            self.json,
            if self.signed { " (signed)" } else { "" }
        )
    }
}

impl Stored {
    /// walguard's own events (watermarks, snapshot progress, resync), not row events.
    pub fn is_marker(&self) -> bool {
        self.json["type"].as_str().is_some_and(|t| t.starts_with("walguard."))
    }

    pub fn is_snapshot(&self) -> bool {
        self.op() == "snapshot"
    }
    pub fn data(&self) -> &Value {
        &self.json["data"]
    }
    pub fn op(&self) -> &str {
        self.json["data"]["op"].as_str().unwrap_or("")
    }
}

pub async fn connect_db(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

pub fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

impl Env {
    /// Starts private servers, runs `schema` as the outside system, writes a key and a config
    /// guarding `tables` (TOML `[[tables]]` entries) with `extra` TOML appended.
    pub async fn start(schema: &str, tables: &str, extra_nats: &str) -> Env {
        Self::start_with_pg(Postgres::start().expect("start PostgreSQL"), schema, tables, extra_nats).await
    }

    pub async fn start_with_pg(pg: Postgres, schema: &str, tables: &str, extra_nats: &str) -> Env {
        Self::start_with(
            pg,
            Nats::start().expect("start nats-server"),
            schema,
            tables,
            extra_nats,
        )
        .await
    }

    pub async fn start_with(pg: Postgres, nats: Nats, schema: &str, tables: &str, extra_nats: &str) -> Env {
        let db = connect_db(&pg.url("postgres")).await;
        if !schema.is_empty() {
            db.batch_execute(schema).await.expect("create the schema");
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("walguard.key");
        let out = Command::new(BIN).args(["keygen", "--out"]).arg(&key).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let config = dir.path().join("walguard.toml");
        let env = Env {
            config,
            pg,
            nats,
            dir,
            db,
            stream: "WG".into(),
            slot: "walguard_test".into(),
            listen_port: walguard::testkit::free_port(),
            client_url: String::new(),
        };
        env.write_config(tables, extra_nats);
        env
    }

    pub fn write_config(&self, tables: &str, extra_nats: &str) {
        std::fs::write(
            &self.config,
            format!(
                "[postgres]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"wg_pub\"\n\n{tables}\n\n\
                 [nats]\nurl = \"{}\"\nstream = \"{}\"\nsubject_prefix = \"wg\"\nwatermark_interval = \"1s\"\n{extra_nats}\n\n\
                 [signing]\nkey_file = \"walguard.key\"\n\n[server]\nlisten = \"127.0.0.1:{}\"\n",
                self.pg.url("postgres"),
                self.slot,
                self.nats.url(),
                self.stream,
                self.listen_port
            ),
        )
        .unwrap();
    }

    pub fn spawn(&self) -> Walguard {
        Walguard::spawn(&self.config, self.dir.path())
    }

    /// Spawns walguard and waits until it streams: the stream holds its first message (the
    /// watermark at the slot's consistent point), so changes from now on are captured.
    pub async fn spawn_ready(&self) -> Walguard {
        let mut wg = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !self.read_stream().await.is_empty() {
                return wg;
            }
            if let Some(code) = wg.exited() {
                panic!("walguard exited with {code} before streaming:\n{}", wg.output());
            }
            assert!(
                Instant::now() < deadline,
                "walguard did not start streaming:\n{}",
                wg.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts `walguard run` and expects it to stop by itself within 30 s with exit `code`
    /// and a log that names every one of `parts`; returns the log.
    pub async fn expect_run_exit(&self, code: i32, parts: &[&str]) -> String {
        self.spawn().expect_exit(code, Duration::from_secs(30), parts).await
    }

    /// Runs a walguard command to completion: (exit code, stdout, stderr).
    pub fn command(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("WALGUARD_LOG", "info")
            .output()
            .expect("run walguard");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn verify(&self) -> (i32, String) {
        let (code, stdout, stderr) = self.command(&["verify", "-c", self.config.to_str().unwrap()]);
        (code, format!("{stdout}{stderr}"))
    }

    /// `walguard verify` passes on the stream; returns its report.
    pub fn assert_intact(&self) -> String {
        let (code, out) = self.verify();
        assert_eq!(code, 0, "verify:\n{out}");
        assert!(out.contains("intact"), "verify:\n{out}");
        out
    }

    pub async fn js(&self) -> jetstream::Context {
        let url = if self.client_url.is_empty() {
            self.nats.url()
        } else {
            self.client_url.clone()
        };
        let servers: Vec<String> = url.split(',').map(str::to_owned).collect();
        jetstream::new(async_nats::connect(servers).await.expect("connect to nats"))
    }

    /// Every message of the stream, read with an ordered consumer.
    pub async fn read_stream(&self) -> Vec<Stored> {
        let js = self.js().await;
        let Ok(mut stream) = js.get_stream(&self.stream).await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        // A cluster that just lost a node can time out a consumer creation: try again.
        let mut attempts = 0;
        let consumer = loop {
            match stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
            {
                Ok(c) => break c,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    eprintln!("creating a consumer failed ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("creating a consumer: {e}"),
            }
        };
        let mut messages = consumer.messages().await.unwrap();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(20), messages.next()).await {
            let msg = msg.unwrap();
            let info = msg.info().unwrap();
            let seq = info.stream_sequence;
            let time: std::time::SystemTime = info.published.into();
            let signed = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get("Walguard-Signature").is_some());
            out.push(Stored {
                seq,
                subject: msg.subject.to_string(),
                signed,
                time,
                payload: msg.payload.to_vec(),
                json: serde_json::from_slice(&msg.payload).unwrap_or(Value::Null),
            });
            if seq >= state.last_sequence {
                break;
            }
        }
        out
    }

    /// The change events (no markers, no snapshot rows) once at least `n` are in the stream;
    /// fails the test, saying how many arrived, when they are not there `within`.
    pub async fn wait_events(&self, n: usize, within: Duration) -> Vec<Stored> {
        let seen = std::cell::Cell::new(0);
        poll_until(within, || {
            let (read, seen) = (self.read_stream(), &seen);
            async move {
                let events: Vec<Stored> = read
                    .await
                    .into_iter()
                    .filter(|m| !m.is_marker() && !m.is_snapshot())
                    .collect();
                seen.set(events.len());
                (events.len() >= n).then_some(events)
            }
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "only {} of {n} change events arrived within {within:?}; the newest walguard log ends:\n{}",
                seen.get(),
                self.newest_log_tail()
            )
        })
    }

    /// The last lines of the newest walguard log in the test's folder, for failure messages.
    pub fn newest_log_tail(&self) -> String {
        let newest = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("walguard-"))
            .max_by_key(|e| e.file_name());
        let text = newest
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .unwrap_or_else(|| "(no walguard log)".into());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// How many messages the stream holds now.
    pub async fn stream_messages(&self) -> u64 {
        let js = self.js().await;
        let mut stream = js.get_stream(&self.stream).await.expect("the stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    pub async fn confirmed_flush(&self) -> Option<u64> {
        let row = self
            .db
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .ok()??;
        row.get::<_, Option<String>>(0).map(|s| lsn(&s))
    }

    /// The server's `server_version_num` (150013, 180006, ...).
    pub async fn server_version(&self) -> i32 {
        self.db
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Appends a `[hashing]` section with a fresh salt file, for `hash_columns`.
    pub fn add_salt(&self) {
        let salt = self.dir.path().join("salt");
        std::fs::write(&salt, b"0123456789abcdef-test-salt").unwrap();
        std::fs::set_permissions(&salt, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let config = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, format!("{config}\n[hashing]\nsalt_file = \"salt\"\n")).unwrap();
    }

    /// Sets a reloadable server setting with ALTER SYSTEM and waits until sessions see it.
    pub async fn reload_setting(&self, name: &str, value: &str) {
        // Two statements: ALTER SYSTEM cannot run in the implicit transaction of a batch.
        self.db
            .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .await
            .unwrap();
        self.db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The postmaster reloads before it passes SIGHUP on to this session, so once this
            // session sees the value every new one does too.
            let now: String = self
                .db
                .query_one("SELECT current_setting($1)", &[&name])
                .await
                .unwrap()
                .get(0);
            if now == value {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is still {now}, not {value}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn current_wal_lsn(&self) -> u64 {
        let row = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        lsn(&row.get::<_, String>(0))
    }
}

/// Copies stream `from` into a new stream `to` (subject `{to}.copy`, lowercased), message
/// for message with every header, each passed through `alter(sequence, headers, payload)`
/// first: the tamper tests' altered or forged copy of a real stream.
pub async fn copy_stream(
    js: &jetstream::Context,
    from: &str,
    to: &str,
    mut alter: impl FnMut(u64, &mut async_nats::HeaderMap, &mut Vec<u8>),
) {
    js.create_stream(jetstream::stream::Config {
        name: to.to_owned(),
        subjects: vec![format!("{}.>", to.to_lowercase())],
        ..Default::default()
    })
    .await
    .unwrap();
    let source = js.get_stream(from).await.unwrap();
    let last = source.cached_info().state.last_sequence;
    for seq in 1..=last {
        let m = source.get_raw_message(seq).await.unwrap();
        let (mut headers, mut payload) = (m.headers, m.payload.to_vec());
        alter(seq, &mut headers, &mut payload);
        js.publish_with_headers(format!("{}.copy", to.to_lowercase()), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A walguard process; killed with SIGKILL on drop.
/// Polls `check` every 100 ms until it yields `Some`, for at most `within`; `None` then, so
/// the caller fails with what it was waiting for (`what`, also printed to stderr).
/// Polls `check` every 100 ms until it returns `Some`, and returns that value; fails the test
/// naming `what` when it has not happened `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_until(within, check).await {
        Some(found) => found,
        None => panic!("gave up waiting for {what} after {within:?}"),
    }
}

/// `eventually` for a caller that words its own failure (or for which not happening is an
/// answer): `None` once `within` has passed without `check` returning `Some`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Walguard {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Walguard {
    pub fn spawn(config: &Path, dir: &Path) -> Walguard {
        Self::spawn_logging(config, dir, "info,walguard=debug")
    }

    /// Spawns `walguard run` with `WALGUARD_LOG` set to `filter`.
    pub fn spawn_logging(config: &Path, dir: &Path, filter: &str) -> Walguard {
        let log = dir.join(format!(
            "walguard-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .env("WALGUARD_LOG", filter)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn walguard run");
        Walguard {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// The exit code if the process has exited, without waiting; `None` while it runs.
    pub fn exited(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// Waits for the process to exit by itself; `None` if it still runs after `within`.
    pub async fn exit_within(&mut self, within: Duration) -> Option<i32> {
        poll_until(within, || std::future::ready(self.exited())).await
    }

    /// Expects the process to exit by itself `within` with `code` and a log naming every one
    /// of `parts`; returns the log.
    pub async fn expect_exit(&mut self, code: i32, within: Duration, parts: &[&str]) -> String {
        let got = self.exit_within(within).await;
        let log = self.output();
        assert_eq!(got, Some(code), "walguard's exit; its log:\n{log}");
        for part in parts {
            assert!(log.contains(part), "{part:?} missing from:\n{log}");
        }
        log
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's peak resident set so far (VmHWM), in KiB; 0 once it has exited.
    pub fn peak_rss_kib(&self) -> u64 {
        process_peak_rss_kib(self.pid())
    }

    /// CPU seconds (user + system, all threads) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid())
    }

    /// Asks the process to stop (SIGTERM) and waits for its exit code.
    pub async fn stop(&mut self, within: Duration) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.exit_within(within).await
    }

    /// Stops the process with SIGTERM and expects a clean exit (0) within 30 s.
    pub async fn stop_cleanly(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.expect_exit(0, Duration::from_secs(30), &[]).await;
    }
}

impl Drop for Walguard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test CA and a certificate it signs for `san` (e.g. `IP:127.0.0.1` or `DNS:db.internal`),
/// made with the openssl command: `(ca.pem, cert.pem, key.pem)` in `dir`, prefixed `name`.
pub fn make_certs(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("csr.pem"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        ca_key.to_str().unwrap(),
        "-out",
        ca.to_str().unwrap(),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=server",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    std::fs::write(&ext, format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (ca, cert, key)
}

/// A client certificate for `cn` signed by the CA `make_certs(dir, ca_name, ..)` made, with
/// the openssl command: `(cert.pem, key.pem)` in `dir`, prefixed `{ca_name}-{cn}`.
pub fn make_client_cert(dir: &Path, ca_name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{ca_name}-{cn}-{f}"));
    let ca = |f: &str| dir.join(format!("{ca_name}-{f}"));
    let (key, csr, cert, ext) = (p("key.pem"), p("csr.pem"), p("cert.pem"), p("ext.cnf"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subject = format!("/CN={cn}");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &subject,
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca("ca.pem").to_str().unwrap(),
        "-CAkey",
        ca("ca.key").to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A TCP proxy on loopback that tests can cut (close every connection) or stall (stop
/// forwarding in both directions while set).
pub struct Proxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut_tx = cut.clone();
        let stall = stalled.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut cut_rx = cut_tx.subscribe();
                let stall = stall.clone();
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let pump = |mut r: tokio::net::tcp::OwnedReadHalf,
                                mut w: tokio::net::tcp::OwnedWriteHalf,
                                stall: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = pump(cr, sw, stall.clone()) => {}
                        _ = pump(sr, cw, stall) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            stalled,
            cut,
            accept,
        }
    }

    /// Closes every connection through the proxy (new ones are accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A process's user + system CPU time so far, in seconds (0 once it is gone).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    // utime and stime are the 12th and 13th fields after the name, in clock ticks of 1/100 s
    // (USER_HZ).
    let fields = process_stat_fields(pid);
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The fields of /proc/PID/stat after the command name (which is in parentheses and may hold
/// spaces): state, ppid, ...; empty once the process is gone.
pub fn process_stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace().map(str::to_owned).collect()
}

/// A process's peak resident set so far (VmHWM), in KiB (0 once it is gone).
pub fn process_peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
