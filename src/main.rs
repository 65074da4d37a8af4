//! The `walguard` binary: parse the command line, call into the library, and let
//! `cli::exit_code` turn the outcome into the exit code.

use clap::Parser;
use walguard::cli::{self, Cli, Command};

/// sysexits' EX_SOFTWARE: walguard itself could not start (no async runtime), before any
/// subcommand ran, so none of SPEC section 5's codes applies.
const CANNOT_START: i32 = 70;

fn main() {
    let cli = Cli::parse();
    cli::init_logging();
    // One thread: the pipeline is a chain of tasks handing batches to each other, and on a
    // multi-threaded runtime every hand-off could wake another worker thread. On one thread,
    // W1 ran 8% faster on 15% less CPU, and W3 used 37% less CPU with its commit-to-PubAck
    // p50 down from 0.65 to 0.5 ms (bench/README.md). It also keeps a sidecar on one core.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(CANNOT_START);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => cli::run(&config).await,
            Command::Check { config, format } => cli::check(&config, format).await,
            Command::Resync { config } => cli::resync(&config).await,
            Command::Keygen { out } => cli::keygen(&out),
            Command::Verify(args) => cli::verify(&args).await,
            Command::Prove(args) => cli::prove(&args).await,
            Command::Archive {
                config,
                dir,
                follow,
                public_keys,
            } => cli::archive(&config, &dir, follow, &public_keys).await,
            Command::Export { config, from, to, out } => cli::export(&config, from, to, &out).await,
            Command::Restore(args) => cli::restore(&args).await,
            Command::History { config, table, key } => cli::history(&config, &table, &key).await,
            Command::Reconcile { config, tables } => cli::reconcile(&config, &tables).await,
            Command::Demo => Ok(walguard::demo::run().await),
            Command::Witness(args) => cli::witness(&args).await,
            Command::Console(args) => cli::console(&args).await,
        }
    });
    let code = cli::exit_code(result);
    drop(runtime);
    std::process::exit(code);
}
