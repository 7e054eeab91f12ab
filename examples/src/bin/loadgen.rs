//! `loadgen`: a load generator for pubsub-broker and NATS. See `loadgen --help`,
//! `bench/compare.sh` and `docs/BENCHMARKS.md`.

use std::process::ExitCode;

use clap::Parser;
use examples::loadgen::{self, cli::Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(loadgen::main(cli)),
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
