//! `procmesh` — the one binary operators run.
//!
//! Subcommands today: `bench transport`. The host agent, orchestrator, client commands and
//! `demo` arrive with their issues; nothing here pretends to do what it does not.

mod bench;

use clap::{Parser, Subcommand};

/// procmesh: run actions on a fleet of machines.
#[derive(Debug, Parser)]
#[command(name = "procmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure this machine: figures beside raw baselines from the same run.
    Bench {
        #[command(subcommand)]
        suite: bench::Suite,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let json = std::env::var("PROCMESH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    procmesh_transport::install_crypto_provider();
    match cli.command {
        Command::Bench { suite } => bench::run(suite),
    }
}
