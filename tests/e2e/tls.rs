//! TLS to PostgreSQL with libpq's sslmode semantics, and to NATS with a CA and an nkey user.

use std::time::Duration;

use crate::harness::{self, eventually, make_certs, Env};
use walguard::testkit::{Nats, Postgres};

const T: &str = "CREATE TABLE public.t (id int PRIMARY KEY, v text);";
const GUARD_T: &str = "[[tables]]\nname = \"public.t\"\n";

fn set_url(env: &Env, host: &str, query: &str) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let base = format!("postgres://postgres@{host}:{}/postgres", env.pg.port());
    let start = config.find("url = \"postgres://").unwrap() + "url = \"".len();
    let end = start + config[start..].find('"').unwrap();
    std::fs::write(
        &env.config,
        format!("{}{base}{query}{}", &config[..start], &config[end..]),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_follows_sslmode() {
    let dir = tempfile::tempdir().unwrap();
    // The server's certificate names db.internal and 127.0.0.1, not "localhost".
    let (ca, cert, key) = make_certs(dir.path(), "pg", "DNS:db.internal,IP:127.0.0.1");
    let (wrong_ca, _, _) = make_certs(dir.path(), "other", "DNS:db.internal,IP:127.0.0.1");
    let pg = Postgres::start_debian().unwrap();
    pg.install_file("server.pem", &std::fs::read(&cert).unwrap(), 0o644)
        .unwrap();
    pg.install_file("server.key", &std::fs::read(&key).unwrap(), 0o600)
        .unwrap();
    let env = Env::start_with_pg(pg, T, GUARD_T, "").await;
    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        env.db.batch_execute(sql).await.unwrap();
    }
    // The reload reaches new connections once the postmaster has read it.
    eventually(Duration::from_secs(10), "PostgreSQL to turn ssl on", || async {
        let db = harness::connect_db(&env.pg.url("postgres")).await;
        let on: String = db.query_one("SHOW ssl", &[]).await.ok()?.get(0);
        (on == "on").then_some(())
    })
    .await;

    // verify-full: the chain is trusted but the certificate does not name "localhost".
    set_url(
        &env,
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let mut wg = env.spawn();
    let code = wg.exit_within(Duration::from_secs(30)).await;
    assert!(matches!(code, Some(c) if c != 0), "{}", wg.output());
    assert!(wg.output().contains("not valid for name"), "{}", wg.output());

    // A CA that did not sign the certificate.
    set_url(
        &env,
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={}", wrong_ca.display()),
    );
    let mut wg = env.spawn();
    let code = wg.exit_within(Duration::from_secs(30)).await;
    assert!(matches!(code, Some(c) if c != 0), "{}", wg.output());
    assert!(wg.output().contains("UnknownIssuer"), "{}", wg.output());

    // verify-ca checks the chain only, so "localhost" is fine.
    set_url(
        &env,
        "localhost",
        &format!("?sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    let (code, out, err) = env.command(&["check", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // verify-full with the right CA and name: both connections are encrypted, events flow.
    set_url(
        &env,
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let _wg = env.spawn_ready().await;
    env.db.batch_execute("INSERT INTO t VALUES (1, 'x')").await.unwrap();
    assert_eq!(env.wait_events(1, Duration::from_secs(30)).await.len(), 1);
    let encrypted: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'walguard' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 2, "{encrypted} encrypted walguard connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_with_an_nkey_user() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path(), "nats", "IP:127.0.0.1");
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            cert.display(),
            key.display(),
            user.public_key()
        ),
    )
    .unwrap();
    let nats = Nats::start_with(&["-c", conf.to_str().unwrap()]).unwrap();
    let env = Env::start_with(Postgres::start().unwrap(), nats, T, GUARD_T, "").await;
    let seed = env.dir.path().join("user.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let bad_seed = env.dir.path().join("stranger.nk");
    std::fs::write(&bad_seed, stranger.seed().unwrap()).unwrap();
    let extra = format!("tls_ca_file = \"{}\"\nnkey_file = \"user.nk\"", ca.display());
    env.write_config(GUARD_T, &extra);
    let wg = env.spawn();
    let (status, body) = crate::ops::wait_status(env.listen_port, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(status, 200, "{body}\n{}", wg.output());

    // A wrong credential fails clearly.
    drop(wg);
    env.write_config(GUARD_T, &extra.replace("user.nk", "stranger.nk"));
    let mut wg = env.spawn();
    let code = wg.exit_within(Duration::from_secs(30)).await;
    assert_eq!(code, Some(69), "{}", wg.output());
    assert!(wg.output().to_lowercase().contains("authorization"), "{}", wg.output());
}
