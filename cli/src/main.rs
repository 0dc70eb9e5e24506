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
mod notify;
mod otlp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// procmesh: run actions on a fleet of machines.
#[derive(Debug, Parser)]
#[command(name = "procmesh", version, about)]
struct Cli {
    /// Log line format on stderr: text or json (default: $PROCMESH_LOG_FORMAT, else text).
    /// Proc agents a host starts inherit it.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Export action-attempt spans as OTLP/HTTP JSON to this collector, e.g.
    /// http://127.0.0.1:4318 (`/v1/traces` is appended; plain http only). Default:
    /// $PROCMESH_OTLP_ENDPOINT, else off. Proc agents a host starts inherit it.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The environment variable that carries the log format (and hands it to proc agents).
const LOG_FORMAT_ENV: &str = "PROCMESH_LOG_FORMAT";

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
    /// GET a node's admin endpoint (default /readyz); exit 0 on a 2xx answer. For health
    /// checks where the image holds only this binary.
    Probe(Box<cmd::probe::ProbeArgs>),
    /// Measure this machine: figures beside raw baselines from the same run.
    Bench {
        #[command(subcommand)]
        suite: bench::Suite,
    },
}

/// Installs the one subscriber: `RUST_LOG` filters (default `warn`); the format is the flag,
/// else `PROCMESH_LOG_FORMAT`, else text; ANSI colours only when stderr is a terminal, so a
/// node logging to a file or journald writes plain text. With an OTLP endpoint (`--otlp-endpoint`,
/// else `PROCMESH_OTLP_ENDPOINT`), `attempt` spans are also exported, under their own filter
/// (`RUST_LOG` does not hide them); the guard flushes them on exit. A bad endpoint is an error.
fn init_tracing(
    flag: Option<LogFormat>,
    otlp_endpoint: Option<&str>,
    role: &str,
) -> anyhow::Result<Option<otlp::OtlpGuard>> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, Registry};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let json = match flag {
        Some(format) => format == LogFormat::Json,
        None => std::env::var(LOG_FORMAT_ENV).is_ok_and(|v| v == "json"),
    };
    let (otlp_layer, guard) = match otlp::configured_endpoint(otlp_endpoint) {
        Some(endpoint) => {
            let (layer, guard) = otlp::OtlpLayer::new(&endpoint, role).map_err(|e| {
                e.context(format!(
                    "bad OTLP endpoint (--otlp-endpoint, else ${})",
                    otlp::ENDPOINT_ENV
                ))
            })?;
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt: Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otlp_layer.map(otlp::OtlpLayer::filtered))
        .init();
    Ok(guard)
}

/// The `procmesh.role` resource attribute of exported spans.
fn role(command: &Command) -> &'static str {
    match command {
        Command::Host(_) => "host",
        Command::Orchestrator(_) => "orchestrator",
        Command::ProcAgent => "proc-agent",
        Command::Demo(_) => "demo",
        _ => "other",
    }
}

/// Exit codes: 0 success; 1 an error (printed as `error: …` plus one `  caused by: …` line per
/// cause, never a backtrace); 2 a usage error (clap's). Commands that report an outcome
/// (`exec`, `watch`, `demo`) document their own codes in their `--help`.
fn main() -> ExitCode {
    // The namespace sandbox launcher is this binary re-executed by a proc agent's runner: it
    // must run before anything else (no threads, no tracing).
    procmesh_sys::sandbox::run_helper_if_asked();
    let cli = Cli::parse();
    if let Some(format) = cli.log_format {
        // Flags > environment; set before any thread exists so proc agents inherit it.
        let value = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        std::env::set_var(LOG_FORMAT_ENV, value);
    }
    if let Some(endpoint) = &cli.otlp_endpoint {
        // Likewise: proc agents a host starts export to the same collector.
        std::env::set_var(otlp::ENDPOINT_ENV, endpoint);
    }
    let otlp = match init_tracing(
        cli.log_format,
        cli.otlp_endpoint.as_deref(),
        role(&cli.command),
    ) {
        Ok(guard) => guard,
        Err(error) => {
            eprint!("{}", render_error(&error));
            return ExitCode::FAILURE;
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprint!("{}", render_error(&error));
            ExitCode::FAILURE
        }
    };
    // Best effort: the last attempt spans, 2 s at most.
    if let Some(guard) = otlp {
        guard.shutdown();
    }
    code
}

/// `error: <top>` and one `  caused by: <cause>` line per cause of the chain; no backtrace,
/// whatever `RUST_BACKTRACE` says.
fn render_error(error: &anyhow::Error) -> String {
    let mut text = format!("error: {error}\n");
    for cause in error.chain().skip(1) {
        text.push_str(&format!("  caused by: {cause}\n"));
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Command::Probe(args) => ok(cmd::probe::run(*args)),
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
    fn errors_render_as_one_line_per_cause_without_a_backtrace() {
        let error = anyhow::anyhow!("connection refused")
            .context("connecting to 127.0.0.1:1")
            .context("queue status");
        assert_eq!(
            render_error(&error),
            "error: queue status\n  caused by: connecting to 127.0.0.1:1\n  caused by: connection refused\n"
        );
    }

    #[test]
    fn log_format_is_a_global_flag() {
        let cli = Cli::try_parse_from(["procmesh", "host", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, Some(LogFormat::Json));
        assert!(Cli::try_parse_from(["procmesh", "--log-format", "xml", "host"]).is_err());
    }

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
