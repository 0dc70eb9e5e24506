//! `procmesh` — the one binary operators run.
//!
//! Subcommands: `host` (the per-machine agent), `proc-agent` (what a host runs for each proc;
//! not for people), `bench <suite>`. The orchestrator, client commands and `demo` arrive with
//! their issue; nothing here pretends to do what it does not.

mod bench;
mod cmd;

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
    /// Run the host agent of this machine.
    Host(Box<cmd::host::HostArgs>),
    /// Run as a proc agent. The host starts this with the bootstrap environment; it is not a
    /// command for people.
    #[command(hide = true)]
    ProcAgent,
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
        Command::ProcAgent => proc_agent(),
        Command::Host(args) => cmd::host::run(*args),
    }
}

fn proc_agent() -> anyhow::Result<()> {
    let boot = procmesh_proc_agent::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("proc-agent")
        .build()?;
    runtime.block_on(procmesh_proc_agent::run(boot))?;
    Ok(())
}
