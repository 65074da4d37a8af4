//! The `walguard` binary: parse the command line, call into the library, map the outcome to
//! an exit code.

use clap::Parser;
use walguard::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(70);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => cli::run(&config).await,
            Command::Check { config, format } => cli::check(&config, format).await,
            Command::Resync { config } => cli::resync(&config).await,
            Command::Keygen { out } => cli::keygen(&out),
            Command::Verify {
                config,
                public_keys,
                file,
            } => cli::verify(config.as_deref(), &public_keys, file.as_deref()).await,
            Command::Export { config, from, to, out } => cli::export(&config, from, to, &out).await,
            Command::Restore {
                config,
                table,
                key,
                at,
                into,
                json: _,
            } => cli::restore(&config, &table, key.as_deref(), at, into.as_deref()).await,
            Command::History { config, table, key } => cli::history(&config, &table, &key).await,
            Command::Reconcile { config, tables } => cli::reconcile(&config, &tables).await,
            Command::Demo => walguard::demo::run().await,
        }
    });
    drop(runtime);
    std::process::exit(code);
}
