//! `procmesh` — the one binary operators run.
//!
//! Subcommands: `host` (the per-machine agent), `orchestrator`, `proc-agent` (what a host runs for each proc;
//! not for people), `certs` (mesh CA and identities), the client commands `exec`, `submit`,
//! `watch`, `queue`, `hosts`, `result`, and `bench <suite>`. Client commands read their
//! settings from `--config` (TOML) < `PROCMESH_*` environment < flags, and print JSON with
//! `--json`.

mod bench;
mod cmd;
mod local_mesh;

use std::process::ExitCode;

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
    /// Run the whole system on this machine: an orchestrator, a host with two proc agents and
    /// a sample workload, with live progress and a summary.
    Demo(Box<cmd::demo::DemoArgs>),
    /// Run the host agent of this machine.
    Host(Box<cmd::host::HostArgs>),
    /// Run as a proc agent. The host starts this with the bootstrap environment; it is not a
    /// command for people.
    #[command(hide = true)]
    ProcAgent,
    /// Run the orchestrator: queues, scheduling, retries, results, events.
    Orchestrator(Box<cmd::orchestrator::OrchestratorArgs>),
    /// Create a mesh CA, or issue a node or client identity signed by it.
    Certs {
        #[command(subcommand)]
        command: cmd::certs::CertsCommand,
    },
    /// Run a local program on the mesh as if it ran here: its output, its exit code, its files.
    Exec(Box<cmd::exec::ExecArgs>),
    /// Submit actions to a queue (or a new one); prints their LSNs.
    Submit(Box<cmd::submit::SubmitArgs>),
    /// Follow a queue with a progress bar until it is complete.
    Watch(Box<cmd::watch::WatchArgs>),
    /// Create, inspect and steer queues and their actions.
    Queue(Box<cmd::queue::QueueArgs>),
    /// The hosts the orchestrator knows.
    Hosts(Box<cmd::queue::HostsArgs>),
    /// One finished action: its record, output tails and files.
    Result(Box<cmd::queue::ResultArgs>),
    /// Why an action is (not) running, and the story of its attempts.
    Explain(Box<cmd::explain::ExplainArgs>),
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

fn main() -> anyhow::Result<ExitCode> {
    // The namespace sandbox launcher is this binary re-executed by a proc agent's runner: it
    // must run before anything else (no threads, no tracing).
    procmesh_sys::sandbox::run_helper_if_asked();
    let cli = Cli::parse();
    init_tracing();
    procmesh_transport::install_crypto_provider();
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let code = |r: anyhow::Result<u8>| r.map(ExitCode::from);
    match cli.command {
        Command::Bench { suite } => ok(bench::run(suite)),
        Command::ProcAgent => ok(proc_agent()),
        Command::Demo(args) => code(cmd::demo::run(*args)),
        Command::Host(args) => ok(cmd::host::run(*args)),
        Command::Orchestrator(args) => ok(cmd::orchestrator::run(*args)),
        Command::Certs { command } => ok(cmd::certs::run(command)),
        Command::Exec(args) => code(cmd::exec::run(*args)),
        Command::Submit(args) => ok(cmd::submit::run(*args)),
        Command::Watch(args) => code(cmd::watch::run(*args)),
        Command::Queue(args) => ok(cmd::queue::run(*args)),
        Command::Hosts(args) => ok(cmd::queue::hosts(*args)),
        Command::Result(args) => ok(cmd::queue::result(*args)),
        Command::Explain(args) => ok(cmd::explain::run(*args)),
    }
}

fn proc_agent() -> anyhow::Result<()> {
    let boot = procmesh_proc_agent::from_env()?;
    if boot
        .isolation
        .as_ref()
        .is_some_and(|i| i.mode == procmesh_protocol::messages::host::IsolationMode::Namespaces)
        && std::env::var_os("PROCMESH_NO_ZYGOTE").is_none()
    {
        // Before any thread: the zygote is a fork of this process.
        procmesh_sys::sandbox::start_zygote()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("proc-agent")
        .build()?;
    runtime.block_on(procmesh_proc_agent::run(boot))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_commands_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&["procmesh", "exec", "-i", "data:in/data", "--", "ls", "-la"]).unwrap();
        let Command::Exec(exec) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(exec.command, ["ls", "-la"]);
        assert_eq!(exec.inputs[0].sandbox.as_deref(), Some("in/data"));

        let cli = parse(&["procmesh", "queue", "status", "-q", "7", "--json"]).unwrap();
        let Command::Queue(queue) = cli.command else {
            panic!("not queue")
        };
        assert!(queue.client.json);

        let worker = "839338c9dd699b524d78884332c4d8ec7a1a0759f14236457a0d69ed37b9331b";
        let cli = parse(&[
            "procmesh", "submit", "--worker", worker, "--count", "3", "--", "a", "-b",
        ])
        .unwrap();
        let Command::Submit(submit) = cli.command else {
            panic!("not submit")
        };
        assert_eq!((submit.count, submit.args.len()), (3, 2));

        assert!(parse(&["procmesh", "watch", "-q", "not-a-queue"]).is_err());
        assert!(parse(&["procmesh", "queue", "priority", "-q", "1", "5", "-3"]).is_ok());
        assert!(parse(&[
            "procmesh", "certs", "issue", "--ca-dir", "ca", "--role", "client", "--out", "me"
        ])
        .is_ok());
        assert!(parse(&[
            "procmesh", "certs", "issue", "--ca-dir", "ca", "--role", "admin", "--out", "x"
        ])
        .is_err());
    }
}
