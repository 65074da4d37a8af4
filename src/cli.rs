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
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Read the whole stream and prove it intact: signatures, chain, sequence, transactions, order.
    Verify {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// A public key (SPKI PEM) to accept signatures from; repeat for rotated keys. Without
        /// it, the public key of `signing.key_file` is used.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
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

pub async fn verify(config: &Path, public_keys: &[PathBuf]) -> i32 {
    let cfg = match load(config) {
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
        match Signer::load(&cfg.signing.key_file) {
            Ok(s) => keyring.add(s.verifying_key()),
            Err(e) => {
                eprintln!("error: {e} (or pass --public-key FILE)");
                return exit::CONFIG;
            }
        }
    }
    let client = match crate::sink::connect(&cfg.nats).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let js = async_nats::jetstream::new(client);
    match crate::verify::verify_stream(&js, &cfg.nats.stream, &keyring).await {
        Ok((summary, problems)) => {
            println!(
                "stream {}: {} messages (sequences {} to {}), {} events in {} transactions, {} watermarks, {} signed, last LSN {}",
                cfg.nats.stream,
                summary.messages,
                summary.first_sequence,
                summary.last_sequence,
                summary.events,
                summary.transactions.saturating_sub(summary.watermarks),
                summary.watermarks,
                summary.signed,
                summary.last_lsn
            );
            if problems.is_empty() {
                println!(
                    "intact: every message is chained, signed or covered by a signature, complete and in commit order"
                );
                exit::OK
            } else {
                println!("NOT intact: first bad sequence {}", problems[0].sequence);
                for p in &problems {
                    println!("  {p}");
                }
                exit::PROBLEM
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNAVAILABLE
        }
    }
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
