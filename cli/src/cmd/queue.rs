//! `procmesh queue …`, `procmesh hosts`, `procmesh result`: one request each, printed as text
//! or (`--json`) one JSON document.

use std::path::PathBuf;

use anyhow::Context as _;
use procmesh_client::{Client, Queue};
use procmesh_protocol::messages::orchestrator::{
    ActionResult, HostState, HostView, QueueConfig, QueueRef, QueueStatus,
};
use procmesh_protocol::{ActionRecord, Lsn};

use super::common::{parse_queue, print_json, runtime, tail_text, ClientArgs};
use super::watch::summary;

/// The queue a command acts on.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArg {
    /// The queue: a 24-hex token or an integer id (loopback only).
    #[arg(long, short = 'q', env = "PROCMESH_QUEUE", value_parser = parse_queue)]
    pub queue: QueueRef,
}

/// Flags of `procmesh queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// `procmesh queue` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Create a queue; prints its id and token.
    Create {
        /// A label for operators.
        #[arg(long, default_value = "")]
        name: String,
        /// Automatic retries of a failed or abandoned action.
        #[arg(long, default_value_t = QueueConfig::DEFAULT_RETRY_LIMIT)]
        retries: u32,
        /// Priority of actions submitted without one.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
    },
    /// Counts per state.
    Status(QueueArg),
    /// Finished results not yet retired.
    Results {
        #[command(flatten)]
        queue: QueueArg,
        /// Only results after this LSN.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (default: one page; with --all, every result).
        #[arg(long)]
        limit: Option<u32>,
        /// Page through every result.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// Forget finished results.
    Retire {
        #[command(flatten)]
        queue: QueueArg,
        /// The actions' LSNs.
        #[arg(required = true)]
        lsns: Vec<u64>,
    },
    /// Accept no new actions; let the rest finish.
    Drain(QueueArg),
    /// Cancel every pending and running action (or one, with --lsn).
    Cancel {
        #[command(flatten)]
        queue: QueueArg,
        /// Only this action.
        #[arg(long)]
        lsn: Option<u64>,
    },
    /// Retry a failed or abandoned action now.
    Reschedule {
        #[command(flatten)]
        queue: QueueArg,
        /// The action.
        lsn: u64,
    },
    /// Change the priority of a pending action.
    Priority {
        #[command(flatten)]
        queue: QueueArg,
        /// The action.
        lsn: u64,
        /// The new priority (higher first).
        #[arg(allow_hyphen_values = true)]
        priority: i32,
    },
    /// One action's record.
    Action {
        #[command(flatten)]
        queue: QueueArg,
        /// The action.
        lsn: u64,
    },
}

pub fn run(args: QueueArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = args.client.connect().await?;
        let outcome = queue_command(&client, args.client.json, args.command).await;
        client.close().await;
        outcome
    })
}

async fn queue_command(client: &Client, json: bool, command: QueueCommand) -> anyhow::Result<()> {
    let handle = |q: &QueueArg| client.queue(q.queue);
    match command {
        QueueCommand::Create {
            name,
            retries,
            priority,
        } => {
            let queue = client
                .create_queue(QueueConfig {
                    retry_limit: retries,
                    default_priority: priority,
                    name,
                })
                .await?;
            let token = queue.token().map(|t| t.to_string()).unwrap_or_default();
            if json {
                print_json(&serde_json::json!({ "id": queue.id(), "token": token }))?;
            } else {
                println!("queue {} token {token}", queue.id().unwrap_or_default());
            }
        }
        QueueCommand::Status(q) => {
            let status = handle(&q).await?.status().await?;
            if json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
        }
        QueueCommand::Results {
            queue,
            after,
            limit,
            all,
        } => {
            let queue = handle(&queue).await?;
            let results = if all {
                let mut all: Vec<ActionResult> = Vec::new();
                loop {
                    let after = all.last().map(|r| r.record.lsn()).or(after.map(Lsn));
                    let page = queue.results(after, None).await?;
                    if page.is_empty() {
                        break all;
                    }
                    all.extend(page);
                }
            } else {
                queue.results(after.map(Lsn), limit).await?
            };
            if json {
                print_json(&results)?;
            } else {
                println!(
                    "{:>8}  {:<10} {:>7}  {:<16} {:>7}  location",
                    "lsn", "state", "attempt", "exit", "outputs"
                );
                for result in &results {
                    println!("{}", result_row(result));
                }
            }
        }
        QueueCommand::Retire { queue, lsns } => {
            let count = handle(&queue)
                .await?
                .retire(lsns.into_iter().map(Lsn).collect())
                .await?;
            counted(json, "retired", count)?;
        }
        QueueCommand::Drain(q) => {
            handle(&q).await?.drain().await?;
            done(json, "draining")?;
        }
        QueueCommand::Cancel { queue, lsn } => {
            let queue = handle(&queue).await?;
            let count = match lsn {
                Some(lsn) => queue.cancel_action(Lsn(lsn)).await?,
                None => queue.cancel().await?,
            };
            counted(json, "cancelled", count)?;
        }
        QueueCommand::Reschedule { queue, lsn } => {
            let attempt = handle(&queue).await?.reschedule(Lsn(lsn)).await?;
            if json {
                print_json(&serde_json::json!({ "lsn": lsn, "attempt": attempt.get() }))?;
            } else {
                println!("action {lsn} rescheduled: attempt {attempt}");
            }
        }
        QueueCommand::Priority {
            queue,
            lsn,
            priority,
        } => {
            handle(&queue)
                .await?
                .set_priority(Lsn(lsn), priority)
                .await?;
            done(json, "ok")?;
        }
        QueueCommand::Action { queue, lsn } => {
            let view = handle(&queue).await?.action(Lsn(lsn)).await?;
            if json {
                print_json(&view)?;
            } else {
                println!("queue {}  priority {}", view.queue, view.priority);
                print_record(&view.record);
            }
        }
    }
    Ok(())
}

fn done(json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({ "ok": true }))
    } else {
        println!("{what}");
        Ok(())
    }
}

fn counted(json: bool, what: &str, count: u64) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({ what: count }))
    } else {
        println!("{what} {count}");
        Ok(())
    }
}

fn print_status(status: &QueueStatus) {
    let mut flags = Vec::new();
    if status.draining {
        flags.push("draining");
    }
    if status.cancelled {
        flags.push("cancelled");
    }
    if status.is_complete {
        flags.push("complete");
    }
    let name = if status.name.is_empty() {
        String::new()
    } else {
        format!(" ({})", status.name)
    };
    println!(
        "queue {}{name}  {} actions  {}",
        status.id,
        status.counts.total(),
        flags.join(" ")
    );
    println!("{}", summary(&status.counts));
}

fn exit_text(record: &ActionRecord) -> String {
    record
        .exit()
        .map_or_else(|| "-".to_owned(), |e| e.to_string())
}

/// One row of the results table.
pub fn result_row(result: &ActionResult) -> String {
    let r = &result.record;
    format!(
        "{:>8}  {:<10} {:>7}  {:<16} {:>7}  {}",
        r.lsn().to_string(),
        r.state().as_str(),
        r.attempt().to_string(),
        exit_text(r),
        result.outputs.len(),
        r.location()
            .map_or_else(|| "-".to_owned(), ToString::to_string)
    )
}

fn print_record(record: &ActionRecord) {
    println!(
        "action {}  {}  attempt {}",
        record.lsn(),
        record.state(),
        record.attempt()
    );
    if let Some(location) = record.location() {
        println!("  location   {location}");
    }
    if let Some(exit) = record.exit() {
        println!("  exit       {exit}");
    }
    if let Some(exec) = record.execution() {
        if let Some(cpu) = exec.cpu_ms {
            println!("  cpu        {:.3}s", cpu as f64 / 1000.0);
        }
        if let Some(mem) = exec.peak_memory_bytes {
            println!("  memory     {:.1} MiB", mem as f64 / (1024.0 * 1024.0));
        }
        if let Some(ran) = &exec.ran {
            println!(
                "  ran        {}  blake3 {}  pid {} (start {})",
                ran.executable, ran.blake3, ran.pid, ran.start_time
            );
        }
    }
    if let Some(error) = record.last_error() {
        println!("  error      {error}");
    }
    // The first state's time in Unix milliseconds, the others as offsets from it.
    let mut start = None;
    for (state, at) in record.times().iter() {
        match start {
            None => {
                println!("  {:<11}{} (unix ms)", state.as_str(), at.as_millis());
                start = Some(at);
            }
            Some(start) => println!("  {:<11}+{}ms", state.as_str(), at.millis_since(start)),
        }
    }
}

/// Flags of `procmesh hosts`.
#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn hosts(args: HostsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = args.client.connect().await?;
        let outcome = client.hosts().await;
        client.close().await;
        let hosts = outcome?;
        if args.client.json {
            print_json(&hosts)
        } else {
            print_hosts(&hosts);
            Ok(())
        }
    })
}

fn print_hosts(hosts: &[HostView]) {
    if hosts.is_empty() {
        println!("no hosts");
        return;
    }
    // Slots as the scheduler counts them (ORC-16): a proc's maximum, the actions placed on it,
    // and what is left; a host's are its procs', bounded by its capacity (HST-25).
    println!(
        "{:<28} {:<16} {:<6} {:>8} {:>5} {:>6} {:>6}  {:<16} {:<18} labels",
        "address", "node", "state", "capacity", "procs", "used", "free", "hostname", "isolation"
    );
    for host in hosts {
        let slots: Vec<(u64, u64)> = host
            .procs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let used = host.placed.get(i).copied().unwrap_or(0);
                (used, u64::from(p.capacity.max).saturating_sub(used))
            })
            .collect();
        let used: u64 = slots.iter().map(|s| s.0).sum();
        let free: u64 = slots.iter().map(|s| s.1).sum();
        let labels: Vec<String> = host
            .info
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let isolation = match &host.info.isolation {
            Some(iso) => format!(
                "{} cgroup-{}",
                iso.mode,
                iso.cgroup.as_deref().unwrap_or("off")
            ),
            None => "unknown".to_owned(),
        };
        println!(
            "{:<28} {:<16} {:<6} {:>8} {:>5} {:>6} {:>6}  {:<16} {:<18} {}",
            host.info.addr.to_string(),
            host.info.node,
            match host.state {
                HostState::Alive => "alive",
                HostState::Lost => "lost",
            },
            host.info.capacity,
            host.procs.len(),
            used,
            free,
            host.info.system.hostname,
            isolation,
            labels.join(",")
        );
        if let Some(iso) = &host.info.isolation {
            for warning in &iso.warnings {
                println!("  warning: {warning}");
            }
        }
        // One line per proc: its agent, its slots used/free of its maximum, and how often the
        // host respawned it.
        for (proc, (used, free)) in host.procs.iter().zip(slots) {
            println!(
                "  {:<40} slots {used} used, {free} free of {}  restarts {}",
                proc.agent.to_string(),
                proc.capacity.max,
                proc.restarts
            );
        }
    }
}

/// `procmesh result --all`: every finished result, one line each; with `--download`, their
/// outputs (see [`super::download`]) and a summary line.
async fn show_all(client: &Client, queue: &Queue, args: &ResultArgs) -> anyhow::Result<()> {
    let results = queue.all_results().await?;
    let Some(dir) = &args.download else {
        if args.client.json {
            return print_json(&results);
        }
        for result in &results {
            print_record(&result.record);
        }
        return Ok(());
    };
    let summary = super::download::download_all(client, results, dir, !args.client.json).await;
    if args.client.json {
        print_json(&summary)?;
    } else {
        for why in &summary.failed {
            eprintln!("failed: {why}");
        }
        println!(
            "{} actions, {} files: {} downloaded ({}), {} already there, {} failed, into {} in {:.1} s",
            summary.actions,
            summary.files,
            summary.downloaded,
            super::download::human_bytes(summary.bytes),
            summary.skipped,
            summary.failed.len(),
            dir.display(),
            summary.elapsed_ms as f64 / 1000.0
        );
    }
    anyhow::ensure!(
        summary.failed.is_empty(),
        "{} of {} files were not downloaded",
        summary.failed.len(),
        summary.files
    );
    Ok(())
}

/// Flags of `procmesh result`.
#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub queue: QueueArg,
    /// The action.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub lsn: Option<u64>,
    /// Every finished result of the queue (not yet retired) instead of one.
    #[arg(long)]
    pub all: bool,
    /// Download the outputs into this directory; with --all, each action's into DIR/<lsn>/,
    /// several at once, skipping files already there with the same size and hash.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
}

pub fn result(args: ResultArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = args.client.connect().await?;
        let outcome = show_result(&client, &args).await;
        client.close().await;
        outcome
    })
}

async fn show_result(client: &Client, args: &ResultArgs) -> anyhow::Result<()> {
    let queue: Queue = client.queue(args.queue.queue).await?;
    let Some(lsn) = args.lsn.map(Lsn) else {
        return show_all(client, &queue, args).await;
    };
    let Some(result) = queue.result(lsn).await? else {
        // Not finished, or retired: say which.
        let view = queue.action(lsn).await?;
        anyhow::bail!(
            "action {lsn} has no result: it is {}{}",
            view.record.state(),
            if view.record.is_terminal() {
                " (retired?)"
            } else {
                ", not finished"
            }
        );
    };
    let mut downloaded = Vec::new();
    if let Some(dir) = &args.download {
        for output in &result.outputs {
            let path = client
                .download(&result, output, dir)
                .await
                .with_context(|| format!("downloading output {}", output.path))?;
            downloaded.push(path.display().to_string());
        }
    }
    if args.client.json {
        print_json(&serde_json::json!({
            "result": result,
            "stdout": tail_text(&result.stdout_tail),
            "stderr": tail_text(&result.stderr_tail),
            "downloaded": downloaded,
        }))?;
        return Ok(());
    }
    print_record(&result.record);
    for output in &result.outputs {
        println!(
            "  output     {}  {} bytes  {}",
            output.path, output.size, output.hash
        );
    }
    for path in &downloaded {
        println!("  saved      {path}");
    }
    if !result.stdout_tail.is_empty() {
        println!("--- stdout (tail)");
        print!("{}", tail_text(&result.stdout_tail));
    }
    if !result.stderr_tail.is_empty() {
        println!("--- stderr (tail)");
        print!("{}", tail_text(&result.stderr_tail));
    }
    Ok(())
}
