//! One function per subcommand. Each returns the process exit code (SPEC section 5).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{exit, Error};
use crate::event::{Keyring, Signer};

#[derive(Debug, Parser)]
#[command(
    name = "walguard",
    version,
    about = "PostgreSQL changes as signed, hash-chained NATS JetStream events"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: tail the slot and publish every committed change.
    Run {
        /// The configuration file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Preflight: every check `run` makes at start-up, with the fix for each problem. Exit 0
    /// only when ready (warnings allowed), 1 on a failed check, 69 when a server is
    /// unreachable, 78 on a configuration error.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// `text` for people, `json` for machines.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Start over from a new consistent point after a lost or replaced slot: records the gap in
    /// the stream (a signed `walguard.resync` event) and creates a new slot. Logged.
    Resync {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Write a new Ed25519 signing key (PKCS#8 v1 PEM, as `openssl genpkey -algorithm ed25519`
    /// writes it; mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Read the whole stream (or an export) and prove it intact: signatures, chain, sequence,
    /// transactions, order. Exit 0 with a summary, 1 naming every problem and its sequence.
    Verify {
        /// The configuration file (stream, NATS, keys); not needed with --file and --public-key.
        #[arg(short = 'c', long = "config", required_unless_present = "file")]
        config: Option<PathBuf>,
        /// A public key (SPKI PEM) to accept signatures from; repeat for rotated keys. Default:
        /// the public key of `signing.key_file` and `signing.trusted_keys`.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// Verify an export (`walguard export`) instead of the stream.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write the stream (or a range) as JSON lines of DSSE envelopes, checkable offline.
    Export {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild a table, or one entity, from the stream alone as of a sequence.
    Restore {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// `schema.table`
        table: String,
        /// Only this entity (composite keys: values joined by `,`).
        #[arg(long)]
        key: Option<String>,
        /// The stream sequence to restore as of (default: the head).
        #[arg(long)]
        at: Option<u64>,
        /// Create the table in this PostgreSQL schema (of the configured database) and fill it.
        #[arg(long, conflicts_with = "json", required_unless_present = "json")]
        into: Option<String>,
        /// Print the rows as JSON lines instead.
        #[arg(long)]
        json: bool,
    },
    /// The audit trail of one entity: when, who, and what changed, column by column.
    History {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        table: String,
        /// The entity key (composite keys: values joined by `,`).
        key: String,
    },
    /// Compare each table rebuilt from the stream with the live table at a consistent point.
    Reconcile {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Tables to reconcile (default: every guarded table).
        tables: Vec<String>,
    },
    /// A throwaway PostgreSQL and nats-server, a legacy table, an outside writer, and the
    /// signed events flowing, verified at the end.
    Demo,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WALGUARD_LOG").unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let json = std::env::var("WALGUARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

fn load(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::CONFIG
    })
}

pub async fn run(config: &Path) -> i32 {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(&cfg.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: configuration {}: server.listen {}: cannot listen ({e}); choose a free address",
                cfg.file.display(),
                cfg.server.listen
            );
            return exit::CONFIG;
        }
    };
    tokio::spawn(crate::telemetry::serve(listener));
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!(
            "shutting down: stopping the WAL reader, waiting for acks in flight (a second signal exits at once)"
        );
        let _ = tx.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
    match crate::app::run(cfg, rx).await {
        Ok(()) => {
            tracing::info!("stopped");
            exit::OK
        }
        Err(e) => report(&e),
    }
}

pub fn report(e: &Error) -> i32 {
    tracing::error!(kind = e.kind(), "{e}");
    eprintln!("error: {e}");
    e.exit_code()
}

pub fn keygen(out: &Path) -> i32 {
    match Signer::generate(out) {
        Ok(signer) => {
            print!("{}", signer.public_key_pem());
            println!("key id: {}", signer.key_id());
            eprintln!("wrote private key to {} (mode 0600)", out.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::CONFIG
        }
    }
}

fn print_verification(what: &str, summary: &crate::verify::Summary, problems: &[crate::verify::Problem]) -> i32 {
    println!(
        "{what}: {} messages (sequences {} to {}), {} events, {} markers, {} signed, LSN {} to {}",
        summary.messages,
        summary.first_sequence,
        summary.last_sequence,
        summary.events,
        summary.watermarks,
        summary.signed,
        summary.first_lsn.unwrap_or_default(),
        summary.last_lsn
    );
    for (table, ops) in &summary.tables {
        let counts: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        println!("  {table}: {}", counts.join(", "));
    }
    if problems.is_empty() {
        println!("intact: every message is chained, signed or covered by a signature, complete and in commit order");
        exit::OK
    } else {
        println!("NOT intact: first bad sequence {}", problems[0].sequence);
        for p in problems {
            println!("  {p}");
        }
        exit::PROBLEM
    }
}

pub async fn verify(config: Option<&Path>, public_keys: &[PathBuf], file: Option<&Path>) -> i32 {
    let cfg = match config.map(load).transpose() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut keyring = Keyring::default();
    for p in public_keys {
        if let Err(e) = keyring.add_pem_file(p) {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    }
    if keyring.is_empty() {
        let Some(cfg) = &cfg else {
            eprintln!("error: pass --public-key FILE (or -c FILE) to verify signatures");
            return exit::USAGE;
        };
        let signer = match Signer::load(&cfg.signing.key_file) {
            Ok(s) => Some(s),
            Err(e) if cfg.signing.trusted_keys.is_empty() => {
                eprintln!("error: {e} (or pass --public-key FILE)");
                return exit::CONFIG;
            }
            Err(_) => None,
        };
        keyring = match Keyring::from_config(&cfg.signing, signer.as_ref()) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::CONFIG;
            }
        };
    }
    if let Some(file) = file {
        return match crate::verify::verify_file(file, &keyring) {
            Ok((summary, problems)) => print_verification(&file.display().to_string(), &summary, &problems),
            Err(e) => {
                eprintln!("error: {e}");
                exit::PROBLEM
            }
        };
    }
    let cfg = cfg.expect("clap requires -c without --file");
    let js = match jetstream(&cfg).await {
        Ok(js) => js,
        Err(code) => return code,
    };
    match crate::verify::verify_stream(&js, &cfg.nats.stream, &keyring).await {
        Ok((summary, problems)) => print_verification(&format!("stream {}", cfg.nats.stream), &summary, &problems),
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

async fn jetstream(cfg: &Config) -> Result<async_nats::jetstream::Context, i32> {
    match crate::sink::connect(&cfg.nats).await {
        Ok(c) => Ok(async_nats::jetstream::new(c)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::UNAVAILABLE)
        }
    }
}

pub async fn export(config: &Path, from: u64, to: Option<u64>, out: &Path) -> i32 {
    let (cfg, js) = match config_and_stream(config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let file = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", out.display());
            return exit::PROBLEM;
        }
    };
    let mut w = std::io::BufWriter::new(file);
    match crate::audit::export(&js, &cfg.nats.stream, from, to, &mut w).await {
        Ok(n) => {
            if let Err(e) = std::io::Write::flush(&mut w) {
                eprintln!("error: {}: {e}", out.display());
                return exit::PROBLEM;
            }
            eprintln!(
                "exported {n} messages of stream {} to {}",
                cfg.nats.stream,
                out.display()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

/// The configuration and a JetStream context on its NATS server, or the exit code.
async fn config_and_stream(config: &Path) -> Result<(Config, async_nats::jetstream::Context), i32> {
    let cfg = load(config)?;
    let js = jetstream(&cfg).await?;
    Ok((cfg, js))
}

fn table_arg(table: &str) -> Result<String, i32> {
    crate::config::parse_table_name(table)
        .map(|(s, t)| format!("{s}.{t}"))
        .ok_or_else(|| {
            eprintln!("error: table {table:?}: expected schema.table");
            exit::USAGE
        })
}

pub async fn restore(config: &Path, table: &str, key: Option<&str>, at: Option<u64>, into: Option<&str>) -> i32 {
    let (cfg, js) = match config_and_stream(config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let table = match table_arg(table) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let state = match crate::audit::restore(&js, &cfg.nats.stream, &table, key, at, None).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNAVAILABLE;
        }
    };
    match into {
        None => {
            for row in state.rows.values() {
                println!("{}", serde_json::Value::Object(row.clone()));
            }
            eprintln!(
                "{} rows of {table} as of {}",
                state.rows.len(),
                at.map_or("the head".to_owned(), |s| format!("sequence {s}"))
            );
            exit::OK
        }
        Some(schema) => match crate::audit::restore_into(&cfg.pg_config(), &table, schema, &state).await {
            Ok(target) => {
                println!("restored {} rows of {table} into {target}", state.rows.len());
                exit::OK
            }
            Err(e) => report(&e),
        },
    }
}

pub async fn history(config: &Path, table: &str, key: &str) -> i32 {
    let (cfg, js) = match config_and_stream(config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let table = match table_arg(table) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match crate::audit::history(&js, &cfg.nats.stream, &table, key).await {
        Ok(lines) if lines.is_empty() => {
            println!("no events for {table}/{key}");
            exit::PROBLEM
        }
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
}

pub async fn reconcile(config: &Path, tables: &[String]) -> i32 {
    let (cfg, js) = match config_and_stream(config).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let pg = cfg.pg_config();
    let specs = match async {
        let catalog = crate::source::catalog::Catalog::connect(&pg).await?;
        let mut report = crate::check::Report::default();
        let (specs, _) = crate::check::database(&catalog, &cfg, &mut report).await?;
        Ok::<_, Error>(specs)
    }
    .await
    {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let mut code = exit::OK;
    for spec in specs {
        let name = crate::snapshot::qualified(&spec);
        let wanted = tables.is_empty() || tables.iter().any(|t| table_arg(t).is_ok_and(|q| q == name));
        if !wanted {
            continue;
        }
        // A commit racing the consistent point can show as a difference; look again before
        // reporting one.
        let hasher = match crate::event::ColumnHasher::from_config(&cfg.hashing) {
            Ok(h) => h,
            Err(e) => return report(&e.into()),
        };
        let mut result = None;
        for attempt in 0..3 {
            let wait = std::time::Duration::from_secs(60);
            match crate::audit::reconcile_table(&pg, &js, &cfg.nats.stream, &spec, hasher.clone(), wait).await {
                Ok(r) if r.differences.is_empty() || attempt == 2 => {
                    result = Some(r);
                    break;
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                Err(e) => return report(&e),
            }
        }
        let r = result.expect("set by the last attempt");
        if r.differences.is_empty() {
            println!(
                "{}: {} rows, the stream and the table agree at {}",
                r.table, r.rows, r.at
            );
        } else {
            code = exit::PROBLEM;
            println!(
                "{}: {} rows in the table, {} keys differ at {}",
                r.table,
                r.rows,
                r.differences.len(),
                r.at
            );
            for (key, what) in &r.differences {
                println!("  {key}: {what}");
            }
        }
    }
    code
}

pub async fn check(config: &Path, format: Format) -> i32 {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = crate::check::preflight(&cfg).await;
    match format {
        Format::Text => print!("{}", report.render_text()),
        Format::Json => println!("{}", report.render_json()),
    }
    report.exit_code()
}

pub async fn resync(config: &Path) -> i32 {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::resync::run(&cfg).await {
        Ok(summary) => {
            println!("{summary}");
            exit::OK
        }
        Err(e) => report(&e),
    }
}
