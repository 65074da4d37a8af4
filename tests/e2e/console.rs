//! Issue 18: `walguard console` as a real process over a stream walguard wrote from real SQL:
//! the token is needed for every page (401 and no data without it), the login form's cookie
//! is HttpOnly and SameSite=Strict, the overview's counts are the writes, a key searched by
//! POST opens its timeline with the old and new values, downloads carry them, no row value
//! is in any URL of the pages nor in the console's log, and an altered message in the stream
//! turns the overview red with its sequence. Plain HTTP over loopback (hyper's client).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::harness::{eventually, Env};

pub(crate) use crate::harness::console::{write_token, ConsoleProcess, TOKEN};
/// A row value that must stay text and stay out of URLs and logs.
pub(crate) const EVIL: &str = "<script>alert('walguard')</script>";

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: String,
}

pub(crate) async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Reply> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = send.send_request(req).await.ok()?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(port: u16, path: &str, cookie: &str) -> Reply {
    request(port, "GET", path, &[("cookie", cookie)], "")
        .await
        .expect("console answers")
}

pub(crate) fn form(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every href, src and action in a page.
fn urls(page: &str) -> Vec<String> {
    ["href=\"", "src=\"", "action=\""]
        .iter()
        .flat_map(|a| {
            page.split(a)
                .skip(1)
                .map(|s| s.split('"').next().unwrap_or("").to_owned())
        })
        .collect()
}

pub(crate) fn with_console(env: &Env, stream: &str, token: Option<&Path>, name: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("stream = \"{}\"", env.stream),
        &format!("stream = \"{stream}\""),
    );
    text.push_str("\n[console]\n");
    if let Some(t) = token {
        text.push_str(&format!("token_file = \"{}\"\n", t.display()));
    }
    let path = env.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_overview(port: u16, cookie: &str, done: impl Fn(&str) -> bool, what: &str) -> String {
    eventually(Duration::from_secs(60), what, || async {
        let r = request(port, "GET", "/", &[("cookie", cookie)], "").await?;
        (r.status == 200 && done(&r.body)).then_some(r.body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_the_writes_behind_a_token_and_keeps_row_values_out_of_urls() {
    let env = Env::start(
        "CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL, tier text);",
        "[[tables]]\nname = \"public.customers\"\n",
        "",
    )
    .await;
    // No checkpoint while the console looks (the page says none; the proofs are another test's).
    crate::transparency::audit_section(&env, "checkpoint_interval = \"1h\"");
    let mut wg = env.spawn_ready().await;
    crate::console::write_customers(&env).await;
    let token = write_token(env.dir.path());
    let config = with_console(&env, &env.stream, Some(&token), "console.toml");
    let console = ConsoleProcess::start(&config, env.dir.path());
    let port = console.port;

    // Without the token: 401 and the login form, no data, on every page.
    let anon = eventually(Duration::from_secs(30), "the console listens", || {
        request(port, "GET", "/", &[], "")
    })
    .await;
    for path in [
        "/",
        "/tables/0",
        "/tables/0/entities/0",
        "/tables/0/entities/0/timeline.csv",
    ] {
        let r = get(port, path, "").await;
        assert_eq!(r.status, 401, "{path}");
        assert!(
            !r.body.contains("customers") && !r.body.contains("Ada"),
            "{path}: {}",
            r.body
        );
        assert!(r.body.contains("action=\"/login\""));
    }
    assert_eq!(anon.status, 401);
    let csp = anon.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let wrong = request(
        port,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=wrong-token-but-long-enough",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers.get("set-cookie").is_none());

    // The login form's cookie.
    let login = request(
        port,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={}", form(TOKEN)),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 303);
    let set_cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(TOKEN), "the cookie carries the token");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let bearer = request(port, "GET", "/", &[("authorization", &format!("Bearer {TOKEN}"))], "")
        .await
        .unwrap();
    assert_eq!(bearer.status, 200);

    // The overview: the writes' counts, verified.
    let overview = wait_overview(
        port,
        &cookie,
        |b| b.contains("delete 1, insert 3, update 1") && b.contains("Verified: intact"),
        "the overview counts 3 inserts, 1 update, 1 delete",
    )
    .await;
    assert!(overview.contains("<td class=\"events\">5</td>"), "{overview}");
    assert!(overview.contains("none configured"), "{overview}");
    let table = get(port, "/tables/0", &cookie).await;
    assert_eq!(table.status, 200);
    assert!(table.body.contains("Entities (3)"), "{}", table.body);
    assert!(!table.body.contains("<script"), "{}", table.body);
    assert!(table.body.contains("schema event at sequence"), "{}", table.body);

    // Search by POST: a redirect to the entity's opaque id, then its timeline.
    let found = request(
        port,
        "POST",
        "/tables/0/search",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "key=1",
    )
    .await
    .unwrap();
    assert_eq!(found.status, 303);
    let location = found.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/tables/0/entities/"), "{location}");
    let entity = get(port, &location, &cookie).await;
    assert_eq!(entity.status, 200);
    for cell in [
        "<td class=\"old\">—</td><td class=\"new\">Ada</td>",
        "<td class=\"old\">Ada</td><td class=\"new\">Ada Lovelace</td>",
        "<td class=\"old\">gold</td><td class=\"new\">platinum</td>",
    ] {
        assert!(entity.body.contains(cell), "{cell} missing from {}", entity.body);
    }
    assert!(entity.body.contains("signature: "), "{}", entity.body);
    assert!(entity.body.contains("Inclusion proofs: none yet"), "{}", entity.body);
    let missed = request(
        port,
        "POST",
        "/tables/0/search",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "key=99",
    )
    .await
    .unwrap();
    assert_eq!(missed.status, 404);

    // Downloads.
    let csv = get(port, &format!("{location}/timeline.csv"), &cookie).await;
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains("attachment"));
    assert!(csv.body.contains(",name,Ada,Ada Lovelace\r\n"), "{}", csv.body);
    let json = get(port, &format!("{location}/timeline.json"), &cookie).await;
    let doc: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(doc["key"], "1");
    assert_eq!(doc["events"].as_array().unwrap().len(), 2);

    // The `<script>` row stays text; no row value in any URL of any page, nor in the log.
    let evil = request(
        port,
        "POST",
        "/tables/0/search",
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "key=3",
    )
    .await
    .unwrap();
    let evil_page = get(port, evil.headers["location"].to_str().unwrap(), &cookie).await;
    assert!(!evil_page.body.contains("<script"), "{}", evil_page.body);
    assert!(evil_page
        .body
        .contains("&lt;script&gt;alert(&#39;walguard&#39;)&lt;/script&gt;"));
    for page in [&overview, &table.body, &entity.body, &evil_page.body] {
        for url in urls(page) {
            for value in ["Ada", "Grace", "gold", "silver", "platinum", "script", "alert"] {
                assert!(!url.contains(value), "{value} in the URL {url}");
            }
        }
    }
    let log = console.log();
    assert!(log.contains("console request"), "{log}");
    for value in ["Ada", "Grace", "platinum", "script", TOKEN] {
        assert!(!log.contains(value), "{value} in the console's log:\n{log}");
    }
    let css = get(port, "/static/console.css", "").await;
    assert_eq!(css.status, 200);
    assert!(css.headers["content-type"].to_str().unwrap().starts_with("text/css"));
    drop(console);
    wg.stop(Duration::from_secs(10)).await;
}

/// A copy of the stream with one row event's payload altered: the overview turns red and
/// names that sequence; beyond loopback without a token the console refuses to start (78).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_a_tampered_stream_in_red_and_refuses_open_listening() {
    let env = Env::start(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute(
            "INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); UPDATE t SET v = 'uno' WHERE id = 1;",
        )
        .await
        .unwrap();
    env.wait_events(3, Duration::from_secs(30)).await;
    wg.stop(Duration::from_secs(10)).await;
    let altered = copy_altering(&env, "TAMPERED", "\"two\"", "\"TWO\"").await;

    let open = with_console(&env, &env.stream, None, "open.toml");
    let (code, _, err) = env.command(&["console", "-c", open.to_str().unwrap(), "--listen", "0.0.0.0:1"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("console.token_file") && err.contains("loopback"), "{err}");

    let config = with_console(&env, "TAMPERED", None, "tampered.toml");
    let console = ConsoleProcess::start(&config, env.dir.path());
    let page = wait_overview(
        console.port,
        "",
        |b| b.contains("NOT intact"),
        "the overview shows the altered message",
    )
    .await;
    assert!(page.contains("<div class=\"bad\" id=\"verification\">"), "{page}");
    // The altered message's own signature, or its successor's link to it, names the place.
    let named = [altered, altered + 1]
        .iter()
        .any(|s| page.contains(&format!("<li class=\"problem\">sequence {s}: ")));
    assert!(named, "sequence {altered} not named in {page}\nlog: {}", console.log());
}

/// Copies the stream into `to`, replacing `from` by `with` in the first payload that holds
/// it, keeping every header; returns that message's sequence.
pub(crate) async fn copy_altering(env: &Env, to: &str, from: &str, with: &str) -> u64 {
    let mut altered = None;
    crate::harness::copy_stream(&env.js().await, &env.stream, to, |seq, _, payload| {
        let text = String::from_utf8_lossy(payload).into_owned();
        if altered.is_none() && text.contains(from) {
            *payload = text.replace(from, with).into_bytes();
            altered = Some(seq);
        }
    })
    .await;
    altered.expect("a message to alter")
}

/// A GET over TLS to the console, trusting `ca`, presenting `client` (cert, key) if given;
/// the error (handshake or request) as text.
async fn tls_get(port: u16, ca: &Path, client: Option<(&Path, &Path)>, path: &str) -> Result<Reply, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", format!("127.0.0.1:{port}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send.send_request(req).await.map_err(|e| {
        let source = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        format!("request: {e} ({source})")
    })?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `console.tls_*` (certificates made by the openssl command): HTTPS that needs a client
/// certificate the configured CA issued. With one the pages answer 200; without one, or with
/// one another CA issued, the handshake is refused and no page is served; plain HTTP gets
/// nothing; each refusal is logged with its cause. A certificate file that is not one is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_over_tls_needs_a_client_certificate_from_its_ca() {
    use crate::harness::{make_certs, make_client_cert};
    let env = Env::start(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let mut wg = env.spawn_ready().await;
    env.db.batch_execute("INSERT INTO t VALUES (1, 'one');").await.unwrap();
    env.wait_events(1, Duration::from_secs(30)).await;
    wg.stop(Duration::from_secs(10)).await;
    let dir = env.dir.path();
    let (ca, cert, key) = make_certs(dir, "console", "IP:127.0.0.1");
    let (client_cert, client_key) = make_client_cert(dir, "console", "auditor");
    make_certs(dir, "other", "IP:127.0.0.1");
    let (other_cert, other_key) = make_client_cert(dir, "other", "intruder");
    let tls_config = |name: &str, cert: &Path| {
        let path = with_console(&env, &env.stream, None, name);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\n",
            cert.display(),
            key.display(),
            ca.display()
        ));
        std::fs::write(&path, text).unwrap();
        path
    };

    // A certificate file that is not one: named, exit 78.
    let broken = tls_config("broken.toml", &dir.join("console-csr.pem"));
    let (code, _, err) = env.command(&["console", "-c", broken.to_str().unwrap(), "--listen", "127.0.0.1:1"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("console.tls_cert_file"), "{err}");

    let config = tls_config("tls.toml", &cert);
    let console = ConsoleProcess::start(&config, dir);
    let port = console.port;
    let page = crate::harness::poll_until(Duration::from_secs(30), || async {
        let r = tls_get(port, &ca, Some((&client_cert, &client_key)), "/").await.ok()?;
        (r.status == 200 && r.body.contains("public.t")).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("no page over TLS; log: {}", console.log()));
    assert!(page.body.contains("Verified: intact"), "{}", page.body);
    let table = tls_get(port, &ca, Some((&client_cert, &client_key)), "/tables/0")
        .await
        .unwrap();
    assert_eq!(table.status, 200);

    let without = tls_get(port, &ca, None, "/").await;
    assert!(without.is_err(), "served without a client certificate");
    let other = tls_get(port, &ca, Some((&other_cert, &other_key)), "/").await;
    assert!(other.is_err(), "served to a certificate of another CA");
    assert!(request(port, "GET", "/", &[], "").await.is_none(), "plain HTTP served");
    let refused = crate::harness::poll_until(Duration::from_secs(10), || async {
        let log = console.log();
        (log.matches("TLS handshake refused").count() >= 3).then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("refusals not logged: {}", console.log()));
    // What the console saw (the client's own error races with the server's alert: how the
    // refusal shows on the client's side varies): no certificate, another CA's, plaintext.
    for cause in [
        "peer sent no certificates",
        "invalid peer certificate: UnknownIssuer",
        "InvalidContentType",
    ] {
        assert!(refused.contains(cause), "{cause} not in {refused}");
    }
}

/// The entity page's proof links (`.../events/SEQ/proof`) and their sequences.
fn proof_links(page: &str) -> Vec<(String, u64)> {
    urls(page)
        .into_iter()
        .filter(|u| u.ends_with("/proof"))
        .map(|u| {
            let seq = u.rsplit('/').nth(1).unwrap().parse().unwrap();
            (u, seq)
        })
        .collect()
}

/// Downloads one event's proof and event file from the console and checks them offline
/// with `walguard verify --proof --event` (the public key only).
async fn download_and_verify_proof(env: &Env, port: u16, link: &str, seq: u64, public: &Path, name: &str) {
    let proof = get(port, link, "").await;
    assert_eq!(proof.status, 200, "{link}: {}", proof.body);
    assert!(proof.headers["content-disposition"]
        .to_str()
        .unwrap()
        .contains(&format!("sequence-{seq}.tlog-proof")));
    assert!(
        proof
            .body
            .starts_with(&format!("c2sp.org/tlog-proof@v1\nindex {}\n", seq - 1)),
        "{}",
        proof.body
    );
    let event = get(port, &link.replace("/proof", "/event"), "").await;
    assert_eq!(event.status, 200);
    let (p, e) = (
        env.dir.path().join(format!("{name}.tlog-proof")),
        env.dir.path().join(format!("{name}.event")),
    );
    std::fs::write(&p, &proof.body).unwrap();
    std::fs::write(&e, &event.body).unwrap();
    let (code, out, err) = env.command(&[
        "verify",
        "--public-key",
        public.to_str().unwrap(),
        "--proof",
        p.to_str().unwrap(),
        "--event",
        e.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("proven: event sequence {seq} is in the log")),
        "{out}"
    );
}

/// Checkpoints cosigned by a witness, then the same history from an archive folder: the
/// overview shows the newest checkpoint and the witness's cosignature; each covered event's
/// inclusion proof downloads from the entity page and verifies offline; `--archive DIR`
/// (without -c, the public key only) shows the same counts and timeline from the segments and
/// its proofs verify too; an altered segment turns the overview red naming the sequence
/// and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_checkpoints_and_proofs_and_reads_an_archive() {
    use crate::transparency::{audit_section, log_vkey, witness_section};
    use crate::witness::{witness_key, WitnessProcess};
    use base64::Engine;
    let env = Env::start(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);",
        "[[tables]]\nname = \"public.t\"\n",
        "",
    )
    .await;
    let (vkey, _) = log_vkey(&env).await;
    let witness = WitnessProcess::start(env.dir.path(), &witness_key(env.dir.path()), &vkey);
    audit_section(
        &env,
        &format!("checkpoint_interval = \"1s\"\n{}", witness_section(&witness)),
    );
    let mut wg = env.spawn_ready().await;
    env.db
        .batch_execute(
            "INSERT INTO t VALUES (1, 'one'), (2, 'two'); UPDATE t SET v = 'uno' WHERE id = 1; INSERT INTO t VALUES (3, 'three');",
        )
        .await
        .unwrap();
    env.wait_events(4, Duration::from_secs(30)).await;
    wg.stop_cleanly().await;
    let public = env.dir.path().join("walguard.pub");
    let signer = walguard::event::Signer::load(&env.dir.path().join("walguard.key")).unwrap();
    std::fs::write(&public, signer.public_key_pem()).unwrap();

    // Over the stream: the checkpoint and its cosignature, the proofs.
    let config = with_console(&env, &env.stream, None, "console.toml");
    let console = ConsoleProcess::start(&config, env.dir.path());
    let overview = wait_overview(
        console.port,
        "",
        |b| b.contains("cosigned by witness") && b.contains("insert 3, update 1"),
        "the overview shows the checkpoint cosigned",
    )
    .await;
    assert!(overview.contains("Verified: intact"), "{overview}");
    assert!(
        overview.contains("<li class=\"good\">cosigned by witness witness.test/w1 at "),
        "{overview}"
    );
    let table = get(console.port, "/tables/0", "").await;
    assert!(table.body.contains("<svg class=\"chart over-time\""), "{}", table.body);
    let entity = get(console.port, "/tables/0/entities/0", "").await;
    assert!(
        entity
            .body
            .contains("<td class=\"old\">one</td><td class=\"new\">uno</td>"),
        "{}",
        entity.body
    );
    let links = proof_links(&entity.body);
    assert_eq!(links.len(), 2, "both events of id 1 are covered: {}", entity.body);
    download_and_verify_proof(&env, console.port, &links[1].0, links[1].1, &public, "stream").await;
    // A sequence that is not this entity's is refused.
    let other = links[1].0.replace(&format!("/{}/proof", links[1].1), "/1/proof");
    assert_eq!(get(console.port, &other, "").await.status, 404);
    drop(console);

    // The same history from an archive folder, without -c: only the public key.
    let archive = env.dir.path().join("archive");
    let (code, out, err) = env.command(&[
        "archive",
        "-c",
        env.config.to_str().unwrap(),
        "--dir",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let from_archive = archive_console(&archive, &public, env.dir.path());
    let page = wait_overview(
        from_archive.port,
        "",
        |b| b.contains("Verified: intact"),
        "the archive's overview",
    )
    .await;
    assert!(page.contains("<td class=\"ops\">insert 3, update 1</td>"), "{page}");
    assert!(page.contains("newest checkpoint at sequence"), "{page}");
    let entity = get(from_archive.port, "/tables/0/entities/0", "").await;
    assert!(
        entity
            .body
            .contains("<td class=\"old\">one</td><td class=\"new\">uno</td>"),
        "{}",
        entity.body
    );
    let links = proof_links(&entity.body);
    download_and_verify_proof(&env, from_archive.port, &links[0].0, links[0].1, &public, "archive").await;
    drop(from_archive);

    // One value altered in a segment: red, naming the sequence and the segment.
    let b64 = base64::engine::general_purpose::STANDARD;
    let segment = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let mut altered = None;
    let lines: Vec<String> = std::fs::read_to_string(&segment)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = String::from_utf8(b64.decode(v["payload"].as_str().unwrap()).unwrap()).unwrap();
            if altered.is_none() && payload.contains("\"three\"") {
                let seq: u64 = serde_json::from_str::<serde_json::Value>(&payload).unwrap()["sequence"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                altered = Some(seq);
                v["payload"] = b64.encode(payload.replace("\"three\"", "\"THREE\"")).into();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let altered = altered.expect("the segment holds the row 'three'");
    let tampered = archive_console(&archive, &public, env.dir.path());
    let page = wait_overview(
        tampered.port,
        "",
        |b| b.contains("NOT intact"),
        "the altered archive in red",
    )
    .await;
    assert!(
        page.contains(&format!("<li class=\"problem\">sequence {altered}: ")),
        "{page}"
    );
    assert!(
        page.contains(&segment.file_name().unwrap().to_string_lossy().into_owned()),
        "{page}"
    );
    assert_eq!(page.matches("<li class=\"problem\">").count(), 1, "{page}");
}

/// `walguard console --archive DIR --public-key PUB` on a free port.
fn archive_console(archive: &Path, public: &Path, dir: &Path) -> ConsoleProcess {
    ConsoleProcess::start_with(
        &[
            "--archive",
            archive.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ],
        dir,
    )
}

/// The console tests' writes through SQL: three inserts (one holding [`EVIL`]), an update, a
/// delete; returns once their five events are in the stream.
pub(crate) async fn write_customers(env: &Env) {
    env.db
        .batch_execute(&format!(
            "INSERT INTO customers VALUES (1, 'Ada', 'gold'), (2, 'Grace', 'silver'), (3, '{}', NULL);
             UPDATE customers SET name = 'Ada Lovelace', tier = 'platinum' WHERE id = 1;
             DELETE FROM customers WHERE id = 2;",
            EVIL.replace('\'', "''")
        ))
        .await
        .unwrap();
    env.wait_events(5, Duration::from_secs(30)).await;
}
