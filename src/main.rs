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
            Command::Verify { config, public_keys } => cli::verify(&config, &public_keys).await,
            Command::Demo => walguard::demo::run().await,
        }
    });
    drop(runtime);
    std::process::exit(code);
}
