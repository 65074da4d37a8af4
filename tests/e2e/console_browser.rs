//! Issue 18 in a real browser: Debian's chromium, headless, driven through `chromedriver`
//! (WebDriver, the fantoccini client) against a real `walguard console` over a stream walguard
//! wrote from real SQL. Without the token every page shows the login form and no data; after
//! logging in through the form the overview's counts are the writes; typing a key into the
//! table page's search opens its timeline with the old and new values written; a `<script>`
//! row value stays text; the newest checkpoint shows its witness's cosignature and each event
//! its proof link; an altered message turns the overview red naming its sequence. Each
//! page is photographed; with `WALGUARD_SCREENSHOTS=DIR` the PNGs are written there (that is
//! how README's `docs/console-*.png` are made).
//!
//! Nothing leaves loopback: chromedriver listens on 127.0.0.1, chromium gets a proxy that does
//! not exist (127.0.0.1:9; loopback bypasses it) and a resolver that resolves nothing, and its
//! background services are off.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::console::{copy_altering, request, with_console, write_token, ConsoleProcess, EVIL, TOKEN};
use crate::harness::{eventually, poll_until, Env};
use crate::witness::{witness_key, WitnessProcess};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver in its own process group (chromium starts inside it), killed as a group on
/// drop so that no browser outlives a failed test; the session is closed first when it can be.
struct Browser {
    driver: Child,
    client: Option<Client>,
    shots: Option<PathBuf>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/bootstrap as root (it installs Debian's chromium and chromium-driver)"
            );
        }
        let port = walguard::testkit::free_port();
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let mut browser = Browser {
            driver,
            client: None,
            shots: std::env::var_os("WALGUARD_SCREENSHOTS").map(PathBuf::from),
            _profile: profile,
        };
        let profile_dir = format!("--user-data-dir={}", browser._profile.path().join("profile").display());
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1200,900", "--hide-scrollbars", "--no-first-run",
                    "--proxy-server=127.0.0.1:9",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-domain-reliability", "--no-pings",
                    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
                    profile_dir,
                ],
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let last_error = std::cell::RefCell::new(String::new());
        let client = poll_until(Duration::from_secs(60), || {
            let (caps, url, last_error) = (caps.clone(), url.clone(), &last_error);
            async move {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector).capabilities(caps).connect(&url).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        *last_error.borrow_mut() = e.to_string();
                        None
                    }
                }
            }
        })
        .await;
        let log = std::fs::read_to_string(browser._profile.path().join("chromedriver.log")).unwrap_or_default();
        browser.client = Some(
            client.unwrap_or_else(|| panic!("chromium did not start: {}\nchromedriver:\n{log}", last_error.borrow())),
        );
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// Opens `url`; the page's source.
    async fn open(&self, url: &str) -> String {
        self.client().goto(url).await.unwrap();
        self.client().source().await.unwrap()
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A PNG of the window, written to `$WALGUARD_SCREENSHOTS/console-{name}.png` when set.
    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "{name}: not a PNG"
        );
        if let Some(dir) = &self.shots {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("console-{name}.png")), png).unwrap();
        }
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Every row of the entity page's change tables as `column|old|new`.
async fn change_rows(b: &Browser) -> Vec<String> {
    let mut rows = Vec::new();
    for tr in b.client().find_all(Locator::Css("table.changes tr")).await.unwrap() {
        let cells = tr.find_all(Locator::Css("td")).await.unwrap();
        let mut texts = Vec::new();
        for td in cells {
            texts.push(td.text().await.unwrap());
        }
        if !texts.is_empty() {
            rows.push(texts.join("|"));
        }
    }
    rows
}

/// Waits for the page a click led to: one with an element of id `id` (the page before has
/// none; a click that submits a form does not wait for the next page).
async fn arrived(b: &Browser, id: &str) {
    let found = b
        .client()
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Id(id))
        .await;
    assert!(found.is_ok(), "no #{id} in {}", b.client().source().await.unwrap());
}

async fn log_in(b: &Browser, base: &str) {
    b.open(&format!("{base}/login")).await;
    let c = b.client();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
}

/// Reloads the overview until `done` holds for its `#verification` text and class.
async fn wait_overview(b: &Browser, base: &str, what: &str, done: impl Fn(&str, &str) -> bool) {
    let done = &done;
    let seen = poll_until(Duration::from_secs(60), || async move {
        b.client().goto(&format!("{base}/")).await.ok()?;
        let v = b.client().find(Locator::Id("verification")).await.ok()?;
        let (text, class) = (v.text().await.ok()?, v.attr("class").await.ok()??);
        done(&text, &class).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{what}: not seen in {}",
        b.client().source().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let env = Env::start(
        "CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL, tier text);",
        "[[tables]]\nname = \"public.customers\"\n",
        "",
    )
    .await;
    // Checkpoints every second, cosigned by a witness: the overview shows them.
    let (vkey, _) = crate::transparency::log_vkey(&env).await;
    let witness = WitnessProcess::start(env.dir.path(), &witness_key(env.dir.path()), &vkey);
    crate::transparency::audit_section(
        &env,
        &format!(
            "checkpoint_interval = \"1s\"\n{}",
            crate::transparency::witness_section(&witness)
        ),
    );
    let mut wg = env.spawn_ready().await;
    crate::console::write_customers(&env).await;
    let token = write_token(env.dir.path());
    let config = with_console(&env, &env.stream, Some(&token), "console.toml");
    let console = ConsoleProcess::start(&config, env.dir.path());
    let base = format!("http://127.0.0.1:{}", console.port);
    eventually(Duration::from_secs(30), "the console listens", || {
        request(console.port, "GET", "/", &[], "")
    })
    .await;

    let b = Browser::start().await;

    // Without the token: every page answers 401 with the login form and no data.
    for path in ["/", "/tables/0", "/tables/0/entities/0", "/tables/0/schemas/1"] {
        let status = request(console.port, "GET", path, &[], "").await.unwrap().status;
        assert_eq!(status, 401, "{path}");
        let page = b.open(&format!("{base}{path}")).await;
        assert!(page.contains("action=\"/login\""), "{path}: {page}");
        for data in ["customers", "Ada", "Grace", "platinum"] {
            assert!(!page.contains(data), "{path} shows {data} without the token: {page}");
        }
    }
    b.screenshot("login").await;

    // The login form, then the overview: the writes' counts, verified.
    log_in(&b, &base).await;
    wait_overview(&b, &base, "the overview verified", |text, class| {
        class == "good" && text.starts_with("Verified: intact")
    })
    .await;
    let cosigned = poll_until(Duration::from_secs(30), || async {
        b.client().goto(&format!("{base}/")).await.ok()?;
        let text = b.text("#checkpoint").await;
        let size: u64 = text.split("the first ").nth(1)?.split(' ').next()?.parse().ok()?;
        (size >= 8 && text.contains("cosigned by witness witness.test/w1")).then_some(text)
    })
    .await;
    assert!(cosigned.is_some(), "{}", b.client().source().await.unwrap());
    let row = b.text("#tables tr:nth-child(2)").await;
    assert!(row.starts_with("public.customers"), "{row}");
    assert_eq!(b.text("#tables tr:nth-child(2) td.events").await, "5");
    assert_eq!(
        b.text("#tables tr:nth-child(2) td.ops").await,
        "delete 1, insert 3, update 1"
    );
    b.screenshot("overview").await;

    // The table page: its entities; the key typed into the search opens its timeline.
    let c = b.client();
    c.find(Locator::LinkText("public.customers"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(b.text("h1").await.contains("public.customers"));
    assert!(b.client().source().await.unwrap().contains("Entities (3)"));
    b.screenshot("table").await;
    c.find(Locator::Id("key")).await.unwrap().send_keys("1").await.unwrap();
    c.find(Locator::Id("search")).await.unwrap().click().await.unwrap();
    arrived(&b, "entity-key").await;
    assert_eq!(b.text("#entity-key").await, "1");
    let url = c.current_url().await.unwrap();
    assert!(url.path().starts_with("/tables/0/entities/"), "{url}");
    assert!(!url.as_str().contains("Ada"), "{url}");
    let rows = change_rows(&b).await;
    for expected in [
        "name|—|Ada",
        "tier|—|gold",
        "name|Ada|Ada Lovelace",
        "tier|gold|platinum",
    ] {
        assert!(rows.iter().any(|r| r == expected), "{expected} not in {rows:?}");
    }
    assert!(b.text("#timeline").await.contains("signature: "));
    assert_eq!(
        c.find_all(Locator::Css("a.proof")).await.unwrap().len(),
        2,
        "each event's proof"
    );
    b.screenshot("entity").await;

    // The `<script>` row: its key and values are text, no script element is in the page.
    c.goto(&format!("{base}/tables/0")).await.unwrap();
    c.find(Locator::Id("key")).await.unwrap().send_keys("3").await.unwrap();
    c.find(Locator::Id("search")).await.unwrap().click().await.unwrap();
    arrived(&b, "entity-key").await;
    let rows = change_rows(&b).await;
    assert!(
        rows.iter().any(|r| *r == format!("name|—|{EVIL}")),
        "{rows:?} in {}",
        c.source().await.unwrap()
    );
    assert!(c.find_all(Locator::Css("script")).await.unwrap().is_empty());

    // An altered message: a console over the altered copy shows it in red, naming it.
    wg.stop(Duration::from_secs(10)).await;
    let altered = copy_altering(&env, "TAMPERED", "\"Grace\"", "\"Mallory\"").await;
    let tampered = with_console(&env, "TAMPERED", Some(&token), "tampered.toml");
    let second = ConsoleProcess::start(&tampered, env.dir.path());
    let base2 = format!("http://127.0.0.1:{}", second.port);
    eventually(Duration::from_secs(30), "the second console listens", || {
        request(second.port, "GET", "/login", &[], "")
    })
    .await;
    log_in(&b, &base2).await;
    wait_overview(&b, &base2, "the overview in red", |text, class| {
        class == "bad" && text.contains("NOT intact")
    })
    .await;
    let problems = b.text("#verification ul").await;
    let named = [altered, altered + 1]
        .iter()
        .any(|s| problems.contains(&format!("sequence {s}: ")));
    assert!(named, "sequence {altered} not named in {problems}");
    assert_eq!(
        c.find(Locator::Id("verification"))
            .await
            .unwrap()
            .css_value("color")
            .await
            .unwrap(),
        "rgba(176, 0, 32, 1)"
    );
    b.screenshot("tamper").await;
    b.close().await;
}
