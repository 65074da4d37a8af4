//! One function per subcommand. Each returns what it found, or why it stopped ([`Failure`]),
//! and [`exit_code`] alone turns that into the process's exit code (SPEC section 5: 0
//! success; 1 the check or verification found a problem; 2 usage; 78 configuration error; 69
//! a server unavailable). Usage errors in the arguments themselves are clap's: it prints them
//! and exits 2 before any subcommand runs.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{exit, Error};
use crate::event::{ColumnHasher, Keyring, Signer};
use crate::tlog::{SignedCheckpoint, Vkey};
use crate::verify::VerifyOptions;

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
    Verify(VerifyArgs),
    /// Write a C2SP tlog-proof that one event is in the log, against the newest checkpoint,
    /// and the event's export line: checkable offline with `verify --proof --event`.
    Prove(ProveArgs),
    /// Copy the stream into verified, fsynced segment files (`{stream}-{first}-{last}.jsonl`)
    /// in DIR, resuming after the newest one. Needs only read access to the stream.
    Archive {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// The archive folder (created when missing).
        #[arg(long)]
        dir: PathBuf,
        /// Keep copying; seal a segment at least every `archive.segment_seconds`. SIGTERM
        /// seals and exits 0.
        #[arg(long)]
        follow: bool,
        /// A public key (SPKI PEM) to verify with, as for `verify`. Default: the configured keys.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
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
    /// Rebuild tables, or one entity, from the log alone (the stream, an archive or an
    /// export) as of a sequence, with their types from the schema events. Verifies everything
    /// it reads before it writes.
    Restore(RestoreArgs),
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
    /// A C2SP witness (tlog-witness) that cosigns the checkpoints of the logs named by --log:
    /// checks each checkpoint's signature and its consistency with the last one it cosigned,
    /// stores it (fsynced) before answering, and refuses rollbacks. Prints its verifier key.
    Witness(WitnessArgs),
    /// The auditors' read-only web console (SPEC section 9): the stream's tables, entities,
    /// timelines and continuous verification. Needs `console.token_file` or TLS with client
    /// certificates to listen beyond loopback.
    Console(ConsoleArgs),
}

/// `walguard console`: the stream of `-c FILE`, or an archive folder.
#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// The configuration: the stream, `[console]` (token, TLS), the keys and witnesses.
    #[arg(short = 'c', long = "config", required_unless_present = "archive")]
    pub config: Option<PathBuf>,
    /// Show an archive folder (`walguard archive`) instead of the stream, verified at start.
    /// Without -c the console has no token and serves loopback only.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// A public key (SPKI PEM) the archive is verified with, as for `verify`.
    #[arg(long = "public-key")]
    pub public_keys: Vec<PathBuf>,
    /// The address to serve on (default: `console.listen`, 127.0.0.1:9188).
    #[arg(long)]
    pub listen: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The address to serve `POST /add-checkpoint` on, as IP:PORT.
    #[arg(long)]
    pub listen: String,
    /// The witness's own Ed25519 private key (PKCS#8 PEM, as `walguard keygen` writes it).
    #[arg(long)]
    pub key: PathBuf,
    /// The folder where the latest cosigned checkpoint of each log is kept (created when
    /// missing; never delete it, or the witness would accept a rolled-back log).
    #[arg(long)]
    pub state: PathBuf,
    /// A log's verifier key, `origin+keyid+base64` (type 01); repeat for several logs or keys.
    #[arg(long = "log", required = true, num_args = 1..)]
    pub logs: Vec<String>,
    /// The witness's key name in its cosignatures and verifier key (default:
    /// `walguard-witness/{key id}`).
    #[arg(long)]
    pub name: Option<String>,
    /// The auditors' own witness: also read the log's stream named in this configuration
    /// (NATS, stream, keys) up to each checkpoint and check its chain, signatures and root
    /// before cosigning. The --log keys must then be of one origin.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
}

/// `walguard verify`: the stream, an export or an archive, proven intact.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The configuration file (stream, NATS, keys); not needed with --file, --archive or
    /// --proof and --public-key.
    #[arg(short = 'c', long = "config", required_unless_present_any = ["file", "archive", "proof"])]
    pub config: Option<PathBuf>,
    /// A public key (SPKI PEM) to accept signatures from; repeat for rotated keys. Default:
    /// the public key of `signing.key_file` and `signing.trusted_keys`.
    #[arg(long = "public-key")]
    pub public_keys: Vec<PathBuf>,
    /// Verify an export (`walguard export`) instead of the stream.
    #[arg(long, conflicts_with = "archive")]
    pub file: Option<PathBuf>,
    /// Verify an archive folder (`walguard archive`): every segment, and that none is
    /// missing, partial or altered.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// A checkpoint kept elsewhere (its signed note, as a witness or an auditor keeps it): the
    /// stream must extend it; else the first size where it does not is named.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A witness's key (C2SP vkey `name+keyid+base64`, or a file holding one) whose
    /// cosignatures are checked; repeat for several. Default: `[[audit.witnesses]]`.
    #[arg(long = "witness-key")]
    pub witness_keys: Vec<String>,
    /// A proof from `walguard prove` (C2SP tlog-proof), checked offline with --event.
    #[arg(long, requires = "event")]
    pub proof: Option<PathBuf>,
    /// The event's export line that --proof proves.
    #[arg(long, requires = "proof")]
    pub event: Option<PathBuf>,
}

/// `walguard prove`: one event's inclusion proof against the newest checkpoint.
#[derive(Debug, clap::Args)]
pub struct ProveArgs {
    #[arg(short = 'c', long = "config", required_unless_present = "archive")]
    pub config: Option<PathBuf>,
    /// Prove from an archive folder (`walguard archive`) instead of the stream.
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// A public key (SPKI PEM) the archive is verified with, as for `verify`.
    #[arg(long = "public-key")]
    pub public_keys: Vec<PathBuf>,
    /// The event's stream sequence.
    #[arg(long)]
    pub sequence: u64,
    /// Where the proof goes; the event's export line goes next to it, in OUT.event.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Read the stream named in this configuration file (its keys verify it).
    #[arg(short = 'c', long = "config", required_unless_present_any = ["archive", "file"])]
    pub config: Option<PathBuf>,
    /// Read an archive folder (`walguard archive`) instead of the stream.
    #[arg(long, conflicts_with_all = ["config", "file"])]
    pub archive: Option<PathBuf>,
    /// Read an export (`walguard export`) instead of the stream.
    #[arg(long, conflicts_with = "config")]
    pub file: Option<PathBuf>,
    /// `schema.table` names (default with --into: every table the log has a schema for).
    pub tables: Vec<String>,
    /// Only this entity (composite keys: values joined by `,`).
    #[arg(long)]
    pub key: Option<String>,
    /// The sequence to restore as of (default: the end of the log).
    #[arg(long)]
    pub at: Option<u64>,
    /// Create the tables (and their types) in this schema and fill them, in one transaction.
    #[arg(long, conflicts_with = "json", required_unless_present = "json")]
    pub into: Option<String>,
    /// The server to restore into (a libpq URL; default: `postgres.url`).
    #[arg(long, requires = "into")]
    pub target: Option<String>,
    /// Print one table's rows as JSON lines instead.
    #[arg(long)]
    pub json: bool,
    /// A public key (SPKI PEM) to verify with; repeat for rotated keys. Default: the
    /// configured keys.
    #[arg(long = "public-key")]
    pub public_keys: Vec<PathBuf>,
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

/// What a subcommand that ran to its end found, as its exit code: `exit::OK`, or
/// `exit::PROBLEM` when the check or verification found a problem it has printed (`check`
/// also gives `exit::UNAVAILABLE` when its report names a server it could not reach).
pub type Found = i32;

/// Why a subcommand stopped before its end: the kind says which exit code, the message is
/// printed as `error: {message}` on stderr by [`exit_code`].
#[derive(Debug)]
pub enum Failure {
    /// A command-line value the subcommand cannot use (exit 2).
    Usage(String),
    /// The configuration, a key file or a local address is wrong (exit 78).
    Config(String),
    /// NATS or PostgreSQL could not be reached, or failed while reading (exit 69).
    Unavailable(String),
    /// Anything else that stops the command, such as an output file it cannot write (exit 1).
    Problem(String),
    /// The crate's error: logged with its kind as well, and its code is the one
    /// [`Error::exit_code`] gives for what it is (78 configuration or key, 69 a server or a
    /// blocked event, 1 a refusal), the same whichever command met it.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

/// The one place a subcommand's result becomes the process's exit code; a failure is said
/// here, once, on stderr.
pub fn exit_code(result: Result<Found, Failure>) -> i32 {
    let (code, message) = match result {
        Ok(found) => return found,
        Err(Failure::Usage(m)) => (exit::USAGE, m),
        Err(Failure::Config(m)) => (exit::CONFIG, m),
        Err(Failure::Unavailable(m)) => (exit::UNAVAILABLE, m),
        Err(Failure::Problem(m)) => (exit::PROBLEM, m),
        Err(Failure::Error(e)) => {
            tracing::error!(kind = e.kind(), "{e}");
            (e.exit_code(), e.to_string())
        }
    };
    eprintln!("error: {message}");
    code
}

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

pub async fn run(config: &Path) -> Result<Found, Failure> {
    let cfg = load(config)?;
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen).await.map_err(|e| {
        Failure::Config(format!(
            "configuration {}: server.listen {}: cannot listen ({e}); choose a free address",
            cfg.file.display(),
            cfg.server.listen
        ))
    })?;
    tokio::spawn(crate::telemetry::serve(listener));
    let rx = shutdown_on_signal(
        "shutting down: stopping the WAL reader, waiting for acks in flight (a second signal exits at once)",
    );
    crate::app::run(cfg, rx).await?;
    tracing::info!("stopped");
    Ok(exit::OK)
}

/// Turns true at the first SIGTERM or SIGINT (logging `message`); a second one exits at once.
fn shutdown_on_signal(message: &'static str) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("{message}");
        let _ = tx.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        // The one exit that does not go through `exit_code`: the person asked for it while
        // the command is still draining, so nothing is left to return to (128 + SIGINT, as a
        // shell reports an interrupted command).
        std::process::exit(130);
    });
    rx
}

/// `walguard archive`: copies the stream into verified segments in `dir` (SPEC section 7).
pub async fn archive(config: &Path, dir: &Path, follow: bool, public_keys: &[PathBuf]) -> Result<Found, Failure> {
    let (cfg, js) = config_and_stream(config).await?;
    let keyring = verification_keys(Some(&cfg), public_keys)?;
    let limits = crate::archive::Limits {
        segment_events: cfg.archive.segment_events,
        segment_seconds: cfg.archive.segment_seconds,
    };
    let shutdown = shutdown_on_signal("archive: sealing the open segment and stopping");
    let copied = crate::archive::run(&js, &cfg.nats.stream, dir, &keyring, limits, follow, shutdown)
        .await
        .map_err(archive_failure)?;
    eprintln!(
        "archive {}: {} new segment(s); stream {} archived up to sequence {}",
        dir.display(),
        copied.sealed.len(),
        cfg.nats.stream,
        copied.last
    );
    Ok(exit::OK)
}

/// A stream that cannot be read is unavailable (69); a file or message at fault is a problem
/// found (1), named.
fn archive_failure(e: crate::archive::ArchiveError) -> Failure {
    match e {
        crate::archive::ArchiveError::Stream(_) => Failure::Unavailable(e.to_string()),
        _ => Failure::Problem(e.to_string()),
    }
}

pub fn keygen(out: &Path) -> Result<Found, Failure> {
    let signer = Signer::generate(out).map_err(|e| Failure::Config(e.to_string()))?;
    print!("{}", signer.public_key_pem());
    println!("key id: {}", signer.key_id());
    eprintln!("wrote private key to {} (mode 0600)", out.display());
    Ok(exit::OK)
}

fn print_verification(what: &str, summary: &crate::verify::Summary, problems: &[crate::verify::Problem]) -> Found {
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
    if let Some((size, cosigned)) = summary.last_checkpoint {
        println!(
            "  checkpoints: {} checked (root, signature, cosignatures); the newest, of size {size}, has {cosigned} witness cosignature(s)",
            summary.checkpoints
        );
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

pub async fn verify(args: &VerifyArgs) -> Result<Found, Failure> {
    let cfg = args.config.as_deref().map(load).transpose()?;
    let keyring = verification_keys(cfg.as_ref(), &args.public_keys)?;
    let options = verify_options(cfg.as_ref(), &keyring, args)?;
    if let (Some(proof), Some(event)) = (&args.proof, &args.event) {
        return verify_proof(proof, event, &keyring, &options.witnesses);
    }
    if let Some(dir) = &args.archive {
        let stream = match &cfg {
            Some(cfg) => cfg.nats.stream.clone(),
            None => crate::archive::stream_of(dir).map_err(archive_failure)?,
        };
        let (summary, problems) =
            crate::archive::verify_archive(dir, &stream, &keyring, &options).map_err(archive_failure)?;
        return Ok(print_verification(
            &format!("archive {} (stream {stream})", dir.display()),
            &summary,
            &problems,
        ));
    }
    if let Some(file) = &args.file {
        let (summary, problems) =
            crate::verify::verify_file(file, &keyring, &options).map_err(|e| Failure::Problem(e.to_string()))?;
        return Ok(print_verification(&file.display().to_string(), &summary, &problems));
    }
    let Some(cfg) = cfg else {
        // clap requires -c without --file; said here too, so no path is left without an answer.
        return Err(Failure::Usage(
            "pass -c FILE, or --file FILE to verify an export".into(),
        ));
    };
    let js = jetstream(&cfg).await?;
    let (summary, problems) = crate::verify::verify_stream(&js, &cfg.nats.stream, &keyring, &options)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    Ok(print_verification(
        &format!("stream {}", cfg.nats.stream),
        &summary,
        &problems,
    ))
}

/// `verify --proof P --event E`: offline, nothing but the files and the keys.
fn verify_proof(proof: &Path, event: &Path, keyring: &Keyring, witnesses: &[Vkey]) -> Result<Found, Failure> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Failure::Problem(format!("{}: {e}", p.display())));
    let proof_bytes = read(proof)?;
    let event_line = String::from_utf8_lossy(&read(event)?).into_owned();
    match crate::prove::check(&proof_bytes, &event_line, keyring, witnesses) {
        Ok(c) => {
            println!(
                "proven: event sequence {} is in the log {} as of its checkpoint of size {}, signed by the log's key, cosigned by {}",
                c.sequence,
                c.origin,
                c.size,
                if c.cosigned_by.is_empty() {
                    "no witness".to_owned()
                } else {
                    c.cosigned_by.join(", ")
                }
            );
            Ok(exit::OK)
        }
        Err(reason) => {
            println!("NOT proven: {reason}");
            Ok(exit::PROBLEM)
        }
    }
}

/// `walguard prove`.
pub async fn prove(args: &ProveArgs) -> Result<Found, Failure> {
    let cfg = args.config.as_deref().map(load).transpose()?;
    let proven = match (&args.archive, &cfg) {
        (Some(dir), _) => {
            let keyring = verification_keys(cfg.as_ref(), &args.public_keys)?;
            let stream = match &cfg {
                Some(cfg) => cfg.nats.stream.clone(),
                None => crate::archive::stream_of(dir).map_err(archive_failure)?,
            };
            crate::prove::prove_archive(dir, &stream, &keyring, args.sequence).map_err(Failure::Problem)?
        }
        (None, Some(cfg)) => {
            let js = jetstream(cfg).await?;
            crate::prove::prove_stream(&js, &cfg.nats.stream, &cfg.nats.subject_prefix, args.sequence)
                .await
                .map_err(Failure::Problem)?
        }
        (None, None) => return Err(Failure::Usage("pass -c FILE or --archive DIR".into())),
    };
    let event_path = PathBuf::from(format!("{}.event", args.out.display()));
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).map_err(|e| Failure::Problem(format!("{}: {e}", p.display())))
    };
    write(&args.out, &proven.proof.to_bytes())?;
    write(&event_path, format!("{}\n", proven.event_line).as_bytes())?;
    eprintln!(
        "wrote the inclusion proof of sequence {} against the checkpoint of size {} to {}, and the event to {}",
        args.sequence,
        proven.size,
        args.out.display(),
        event_path.display()
    );
    Ok(exit::OK)
}

/// What `verify` checks beyond the chain: the witnesses' keys (`--witness-key`, else
/// `[[audit.witnesses]]`) and a checkpoint kept elsewhere (`--checkpoint`), whose own
/// signature is checked here.
fn verify_options(cfg: Option<&Config>, keyring: &Keyring, args: &VerifyArgs) -> Result<VerifyOptions, Failure> {
    let mut witnesses = Vec::new();
    for text in &args.witness_keys {
        let vkey = match std::fs::read_to_string(text) {
            Ok(file) => file.trim().to_owned(),
            Err(_) => text.clone(),
        };
        witnesses.push(Vkey::parse(&vkey).map_err(|e| Failure::Usage(format!("--witness-key {text}: {e}")))?);
    }
    if args.witness_keys.is_empty() {
        if let Some(cfg) = cfg {
            witnesses = cfg.audit.witness_keys().map_err(Failure::Config)?;
        }
    }
    let extending = match &args.checkpoint {
        None => None,
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| Failure::Problem(format!("--checkpoint {}: {e}", path.display()));
            let bytes = std::fs::read(path).map_err(|e| bad(&e))?;
            let signed = SignedCheckpoint::parse(&bytes).map_err(|e| bad(&e))?;
            let origin = signed.checkpoint().origin().to_owned();
            signed
                .verify_log(&crate::tlog::log_vkeys(keyring, &origin))
                .map_err(|e| bad(&e))?;
            let cosigned = signed.cosignatures(&witnesses).map_err(|e| bad(&e))?;
            println!(
                "checkpoint {}: size {}, signed by the log, cosigned by {} of {} witness key(s)",
                path.display(),
                signed.checkpoint().size(),
                cosigned.len(),
                witnesses.len()
            );
            Some((signed.checkpoint().size(), signed.checkpoint().root()))
        }
    };
    Ok(VerifyOptions { witnesses, extending })
}

/// The keys `verify` accepts: the `--public-key` files, else the configured signing key and
/// `signing.trusted_keys` (the signing key may be missing when trusted keys are given).
fn verification_keys(cfg: Option<&Config>, public_keys: &[PathBuf]) -> Result<Keyring, Failure> {
    let mut keyring = Keyring::default();
    for p in public_keys {
        keyring.add_pem_file(p).map_err(|e| Failure::Config(e.to_string()))?;
    }
    if !keyring.is_empty() {
        return Ok(keyring);
    }
    let Some(cfg) = cfg else {
        return Err(Failure::Usage(
            "pass --public-key FILE (or -c FILE) to verify signatures".into(),
        ));
    };
    let signer = match Signer::load(&cfg.signing.key_file) {
        Ok(s) => Some(s),
        Err(e) if cfg.signing.trusted_keys.is_empty() => {
            return Err(Failure::Config(format!("{e} (or pass --public-key FILE)")))
        }
        Err(_) => None,
    };
    Keyring::from_config(&cfg.signing, signer.as_ref()).map_err(|e| Failure::Config(e.to_string()))
}

async fn jetstream(cfg: &Config) -> Result<async_nats::jetstream::Context, Failure> {
    let client = crate::sink::connect(&cfg.nats)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    Ok(async_nats::jetstream::new(client))
}

pub async fn export(config: &Path, from: u64, to: Option<u64>, out: &Path) -> Result<Found, Failure> {
    let (cfg, js) = config_and_stream(config).await?;
    let cannot_write = |e: std::io::Error| Failure::Problem(format!("{}: {e}", out.display()));
    let file = std::fs::File::create(out).map_err(cannot_write)?;
    let mut w = std::io::BufWriter::new(file);
    let n = crate::audit::export(&js, &cfg.nats.stream, from, to, &mut w)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    std::io::Write::flush(&mut w).map_err(cannot_write)?;
    eprintln!(
        "exported {n} messages of stream {} to {}",
        cfg.nats.stream,
        out.display()
    );
    Ok(exit::OK)
}

/// The configuration and a JetStream context on its NATS server.
async fn config_and_stream(config: &Path) -> Result<(Config, async_nats::jetstream::Context), Failure> {
    let cfg = load(config)?;
    let js = jetstream(&cfg).await?;
    Ok((cfg, js))
}

fn table_arg(table: &str) -> Result<String, Failure> {
    crate::config::parse_table_name(table)
        .map(|(s, t)| format!("{s}.{t}"))
        .ok_or_else(|| Failure::Usage(format!("table {table:?}: expected schema.table")))
}

pub async fn restore(args: &RestoreArgs) -> Result<Found, Failure> {
    let cfg = args.config.as_deref().map(load).transpose()?;
    let keyring = verification_keys(cfg.as_ref(), &args.public_keys)?;
    let tables = args
        .tables
        .iter()
        .map(|t| table_arg(t))
        .collect::<Result<Vec<_>, _>>()?;
    let source = match (&cfg, &args.archive, &args.file) {
        (_, Some(dir), _) => crate::restore::Source::Archive {
            stream: crate::archive::stream_of(dir).map_err(archive_failure)?,
            dir: dir.clone(),
        },
        (_, None, Some(file)) => crate::restore::Source::File(file.clone()),
        (Some(cfg), None, None) => crate::restore::Source::Stream {
            js: jetstream(cfg).await?,
            stream: cfg.nats.stream.clone(),
        },
        (None, None, None) => return Err(Failure::Usage("pass -c FILE, --archive DIR or --file FILE".into())),
    };
    let log = crate::restore::Log::open(&source, &keyring)
        .await
        .map_err(Failure::Unavailable)?;
    let at = args
        .at
        .map_or("the end of the log".to_owned(), |s| format!("sequence {s}"));
    let Some(into) = &args.into else {
        let [table] = tables.as_slice() else {
            return Err(Failure::Usage("--json prints one table: name it (schema.table)".into()));
        };
        let state = crate::restore::as_json(log, table, args.key.as_deref(), args.at).await?;
        for row in state.rows.values() {
            println!("{}", serde_json::Value::Object(row.clone()));
        }
        eprintln!("{} rows of {table} as of {at}", state.rows.len());
        return Ok(exit::OK);
    };
    let target = match (&args.target, &cfg) {
        (Some(url), _) => crate::source::tls::PgConfig::parse(url)
            .map_err(|e| Failure::Usage(format!("--target is not a valid libpq URL or key=value string: {e}")))?,
        (None, Some(cfg)) => cfg.pg_config(),
        (None, None) => return Err(Failure::Usage("pass --target URL: the server to restore into".into())),
    };
    let wanted = crate::restore::Wanted {
        tables,
        key: args.key.clone(),
        at: args.at,
    };
    let (restored, last) = crate::restore::into_schema(log, wanted, into, &target).await?;
    for r in &restored {
        println!(
            "restored {} rows of {} into {} as of sequence {last}",
            r.rows, r.table, r.target
        );
    }
    if restored.is_empty() {
        println!("nothing restored: the log up to sequence {last} holds no schema event for a wanted table");
    }
    Ok(exit::OK)
}

pub async fn history(config: &Path, table: &str, key: &str) -> Result<Found, Failure> {
    let (cfg, js) = config_and_stream(config).await?;
    let table = table_arg(table)?;
    let lines = crate::audit::history(&js, &cfg.nats.stream, &table, key)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    if lines.is_empty() {
        println!("no events for {table}/{key}");
        return Ok(exit::PROBLEM);
    }
    for l in lines {
        println!("{l}");
    }
    Ok(exit::OK)
}

pub async fn reconcile(config: &Path, tables: &[String]) -> Result<Found, Failure> {
    let (cfg, js) = config_and_stream(config).await?;
    let pg = cfg.pg_config();
    let catalog = crate::source::catalog::Catalog::connect(&pg)
        .await
        .map_err(Error::from)?;
    let mut report = crate::check::Report::default();
    let (specs, _) = crate::check::database(&catalog, &cfg, &mut report)
        .await
        .map_err(Error::from)?;
    let mut found = exit::OK;
    for spec in specs {
        let name = crate::snapshot::qualified(&spec);
        let wanted = tables.is_empty() || tables.iter().any(|t| table_arg(t).is_ok_and(|q| q == name));
        if !wanted {
            continue;
        }
        let hasher = ColumnHasher::from_config(&cfg.hashing).map_err(Error::from)?;
        // A commit racing the consistent point can show as a difference; look again before
        // reporting one (three looks in all).
        let wait = std::time::Duration::from_secs(60);
        let mut looks = 0;
        let r = loop {
            let r = crate::audit::reconcile_table(&pg, &js, &cfg.nats.stream, &spec, hasher.clone(), wait).await?;
            looks += 1;
            if r.differences.is_empty() || looks == 3 {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        };
        if r.differences.is_empty() {
            println!(
                "{}: {} rows, the stream and the table agree at {}",
                r.table, r.rows, r.at
            );
        } else {
            found = exit::PROBLEM;
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
    Ok(found)
}

pub async fn check(config: &Path, format: Format) -> Result<Found, Failure> {
    let cfg = load(config)?;
    let report = crate::check::preflight(&cfg).await;
    match format {
        Format::Text => print!("{}", report.render_text()),
        Format::Json => println!("{}", report.render_json()),
    }
    Ok(report.exit_code())
}

pub async fn resync(config: &Path) -> Result<Found, Failure> {
    let cfg = load(config)?;
    let summary = crate::resync::run(&cfg).await?;
    println!("{summary}");
    Ok(exit::OK)
}

/// `walguard witness` (SPEC section 8): serves `add-checkpoint` until SIGTERM or SIGINT.
pub async fn witness(args: &WitnessArgs) -> Result<Found, Failure> {
    let listen = crate::witness::parse_listen(&args.listen)
        .ok_or_else(|| Failure::Usage(format!("--listen {:?}: expected IP:PORT", args.listen)))?;
    let signer = Signer::load(&args.key).map_err(|e| Failure::Config(e.to_string()))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("walguard-witness/{}", signer.key_id()));
    let cosigner = crate::tlog::Cosigner::new(&name, signer).map_err(|e| Failure::Usage(format!("--name: {e}")))?;
    let logs = args
        .logs
        .iter()
        .map(|v| crate::tlog::Vkey::parse(v).map_err(|e| Failure::Usage(format!("--log: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let audited = match &args.config {
        None => None,
        Some(config) => {
            // The configuration names one stream: it backs one log.
            let mut origins: Vec<&str> = logs.iter().map(|k| k.name()).collect();
            origins.dedup();
            let [origin] = origins.as_slice() else {
                return Err(Failure::Usage(
                    "witness -c FILE checks one log's stream: pass the --log keys of one origin".into(),
                ));
            };
            let cfg = load(config)?;
            let keyring = verification_keys(Some(&cfg), &[])?;
            let js = jetstream(&cfg).await?;
            Some((
                origin.to_string(),
                crate::witness::StreamAudit::new(js, &cfg.nats.stream, keyring),
            ))
        }
    };
    let mut witness =
        crate::witness::Witness::open(cosigner, logs, &args.state).map_err(|e| Failure::Config(e.to_string()))?;
    if let Some((origin, audit)) = audited {
        witness
            .audit(&origin, audit)
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Config(format!("--listen {listen}: cannot listen ({e}); choose a free address")))?;
    println!("{}", witness.vkey());
    tracing::info!(listen = %listen, vkey = %witness.vkey(), verifying = args.config.is_some(), "witness serving add-checkpoint");
    let shutdown = shutdown_on_signal("witness: stopping");
    crate::witness::serve(listener, std::sync::Arc::new(witness), shutdown).await;
    Ok(exit::OK)
}

/// `walguard console` (SPEC section 9): reads the stream, follows it, and serves the pages
/// until SIGTERM or SIGINT.
pub async fn console(args: &ConsoleArgs) -> Result<Found, Failure> {
    let cfg = args.config.as_deref().map(load).transpose()?;
    let defaults = crate::config::ConsoleConfig::default();
    let c = cfg.as_ref().map_or(&defaults, |cfg| &cfg.console);
    let named = |e: String| match &cfg {
        Some(cfg) => format!("configuration {}: {e}", cfg.file.display()),
        None => e,
    };
    let listen = args.listen.as_deref().unwrap_or(&c.listen);
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| Failure::Usage(format!("--listen {listen:?}: expected IP:PORT such as 127.0.0.1:9188")))?;
    let token = match &c.token_file {
        Some(path) => Some(crate::console::auth::Token::load(path).map_err(Failure::Config)?),
        None => None,
    };
    let tls = match (&c.tls_cert_file, &c.tls_key_file, &c.tls_client_ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            Some(crate::console::tls::acceptor(cert, key, ca).map_err(|e| Failure::Config(named(e)))?)
        }
        _ => None,
    };
    if token.is_none() && tls.is_none() && !crate::console::auth::is_loopback(&addr) {
        return Err(Failure::Config(named(format!(
            "the console would serve {addr} beyond loopback to anyone: set console.token_file or console.tls_* with client certificates (or listen on 127.0.0.1)"
        ))));
    }
    let keyring = verification_keys(cfg.as_ref(), &args.public_keys)?;
    let witnesses = match &cfg {
        Some(cfg) => cfg.audit.witness_keys().map_err(|e| Failure::Config(named(e)))?,
        None => Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::Config(format!(
            "console listen {addr}: cannot listen ({e}); choose a free address"
        ))
    })?;
    let console = match (&args.archive, &cfg) {
        (Some(dir), _) => {
            let stream = match &cfg {
                Some(cfg) => cfg.nats.stream.clone(),
                None => crate::archive::stream_of(dir).map_err(archive_failure)?,
            };
            tracing::info!(archive = %dir.display(), stream = %stream, "console: reading and verifying the archive");
            let console = crate::console::Console::over_archive(dir, &stream, keyring, witnesses, token, tls.is_some());
            std::sync::Arc::new(console)
        }
        (None, Some(cfg)) => {
            let js = jetstream(cfg).await?;
            let console = std::sync::Arc::new(crate::console::Console::new(
                js,
                &cfg.nats.stream,
                &cfg.nats.subject_prefix,
                witnesses,
                token,
                tls.is_some(),
            ));
            tokio::spawn(console.clone().follow(keyring));
            console
        }
        (None, None) => return Err(Failure::Usage("pass -c FILE or --archive DIR".into())),
    };
    tracing::info!(listen = %addr, tls = tls.is_some(), "console serving");
    let shutdown = shutdown_on_signal("console: stopping");
    crate::console::serve(listener, console, tls, shutdown).await;
    Ok(exit::OK)
}
