//! `procmesh submit`: submit actions of a registered worker (`--worker ID`) or of a local
//! program shipped as one (`--program PATH`), into a queue (`--queue`) or a new one (whose id
//! and token are printed). The actions are the trailing arguments repeated `--count` times, or
//! one per line of a JSON-lines `--file` (`-` for stdin):
//!
//! ```text
//! {"args": ["--seed", "1"], "env": {"K": "v"}, "files": {"in/data.csv": "./data.csv"},
//!  "timeout_ms": 60000, "priority": 5, "idempotency_key": "job-1"}
//! ```
//!
//! A line may name its own `worker`, pass pre-uploaded `inputs` ({path, hash, size}) and
//! `resources`. `--env`, `--input`, `--timeout` and `--host-label` apply to every action (a
//! line's own entries win). Prints one LSN per action.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use procmesh_client::{Client, WorkerBuilder};
use procmesh_protocol::messages::orchestrator::{QueueConfig, QueueRef, SubmitAction};
use procmesh_protocol::{ActionDef, InputFile, ResourceHints, WorkerId};
use serde::Deserialize;

use super::common::{
    parse_duration, parse_key_value, parse_queue, print_json, runtime, ClientArgs,
};
use super::exec::{expand_inputs, parse_input_arg, resolve_program, InputArg};

/// Flags of `procmesh submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A registered worker's id (64 hex characters).
    #[arg(long, conflicts_with = "program")]
    pub worker: Option<WorkerId>,
    /// A local program to ship as the worker (found on PATH like a shell would).
    #[arg(long)]
    pub program: Option<String>,
    /// The queue: a 24-hex token or an integer id (loopback only). Default: a new queue.
    #[arg(long, short = 'q', env = "PROCMESH_QUEUE", value_parser = parse_queue)]
    pub queue: Option<QueueRef>,
    /// Name of the new queue.
    #[arg(long, conflicts_with = "queue")]
    pub name: Option<String>,
    /// Automatic retries of the new queue's actions.
    #[arg(long, default_value_t = QueueConfig::DEFAULT_RETRY_LIMIT, conflicts_with = "queue")]
    pub retries: u32,
    /// JSON-lines file of actions, one per line; `-` reads stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// How many times to submit the trailing arguments (without --file).
    #[arg(long, default_value_t = 1, conflicts_with = "file")]
    pub count: u32,
    /// Priority of every action (higher first); default: the queue's.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// An input for every action, LOCAL[:PATH_IN_SANDBOX]; repeatable.
    #[arg(long = "input", short = 'i', value_parser = parse_input_arg)]
    pub inputs: Vec<InputArg>,
    /// An environment variable for every action, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Wall-clock limit of every action, e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Only run on hosts with this label, KEY=VALUE; repeatable.
    #[arg(long = "host-label", value_parser = parse_key_value)]
    pub host_labels: Vec<(String, String)>,
    /// W3C trace context for every action (its TRACEPARENT, and its attempts' spans).
    #[arg(long, env = "TRACEPARENT", value_parser = super::common::parse_traceparent)]
    pub traceparent: Option<String>,
    /// Idempotency keys PREFIX-0, PREFIX-1, … (resubmitting returns the same LSNs).
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Arguments of every action (without --file).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        conflicts_with = "file"
    )]
    pub args: Vec<String>,
}

/// One line of a `--file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionLine {
    /// The worker; default: `--worker` / `--program`.
    #[serde(default)]
    pub worker: Option<WorkerId>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment on top of `--env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Local files to upload: path in the sandbox → local path.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Inputs already in the orchestrator's store.
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// Wall-clock limit in milliseconds; default `--timeout`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Placement hints; `--host-label`s are added.
    #[serde(default)]
    pub resources: ResourceHints,
    /// Priority; default `--priority`, then the queue's.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Idempotency key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Parses a JSON-lines text; blank lines and lines starting with `#` are skipped.
pub fn parse_lines(reader: impl std::io::BufRead, origin: &str) -> anyhow::Result<Vec<ActionLine>> {
    let mut lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {origin}"))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let action: ActionLine = serde_json::from_str(text)
            .with_context(|| format!("{origin}:{}: bad action", n + 1))?;
        lines.push(action);
    }
    Ok(lines)
}

pub fn run(args: SubmitArgs) -> anyhow::Result<()> {
    runtime()?.block_on(submit(args))
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let lines = match &args.file {
        Some(path) if path.as_os_str() == "-" => parse_lines(std::io::stdin().lock(), "stdin")?,
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            parse_lines(std::io::BufReader::new(file), &path.display().to_string())?
        }
        None => (0..args.count)
            .map(|_| ActionLine {
                args: args.args.clone(),
                ..ActionLine::default()
            })
            .collect(),
    };
    anyhow::ensure!(!lines.is_empty(), "nothing to submit");
    let program = args
        .program
        .as_deref()
        .map(|p| resolve_program(p, std::env::var_os("PATH").as_deref()))
        .transpose()?;
    if args.worker.is_none() && program.is_none() {
        if let Some(n) = lines.iter().position(|l| l.worker.is_none()) {
            anyhow::bail!(
                "action {} names no worker: pass --worker ID or --program PATH",
                n + 1
            );
        }
    }
    let shared = expand_inputs(&args.inputs)?;

    let client = args.client.connect().await?;
    let outcome = submit_on(&client, &args, program, &shared, lines).await;
    client.close().await;
    outcome
}

async fn submit_on(
    client: &Client,
    args: &SubmitArgs,
    program: Option<PathBuf>,
    shared: &[(String, PathBuf)],
    lines: Vec<ActionLine>,
) -> anyhow::Result<()> {
    let default_worker = match (&args.worker, &program) {
        (Some(id), _) => Some(*id),
        (None, Some(path)) => Some(
            client
                .register_worker(&WorkerBuilder::program(path))
                .await
                .with_context(|| format!("shipping {}", path.display()))?,
        ),
        (None, None) => None,
    };

    // Upload every local file once: shared inputs, then each line's files.
    let mut uploads: Vec<(String, PathBuf)> = shared.to_vec();
    for line in &lines {
        uploads.extend(line.files.iter().map(|(p, l)| (p.clone(), l.clone())));
    }
    let uploaded = client
        .upload_inputs(&uploads)
        .await
        .context("uploading the inputs")?;
    let (shared_inputs, mut per_line) = uploaded.split_at(shared.len());

    let mut actions = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let worker = line
            .worker
            .or(default_worker)
            .with_context(|| format!("action {} names no worker", i + 1))?;
        let (own, rest) = per_line.split_at(line.files.len());
        per_line = rest;
        let mut action = ActionDef::new(worker);
        action.args = line.args;
        action.env = args.env.iter().cloned().collect();
        action.env.extend(line.env);
        // A line's own inputs win over shared ones at the same path.
        let mut inputs: BTreeMap<String, InputFile> = BTreeMap::new();
        for input in shared_inputs.iter().chain(own).chain(&line.inputs) {
            inputs.insert(input.path.clone(), input.clone());
        }
        action.inputs = inputs.into_values().collect();
        action.timeout_ms = line.timeout_ms.or(args
            .timeout
            .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64));
        action.resources = line.resources;
        action.traceparent = args.traceparent.clone();
        for (k, v) in &args.host_labels {
            action
                .resources
                .host_labels
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        action
            .validate()
            .with_context(|| format!("action {} is invalid", i + 1))?;
        let idempotency_key = line.idempotency_key.or_else(|| {
            args.key_prefix
                .as_ref()
                .map(|prefix| format!("{prefix}-{i}"))
        });
        actions.push(SubmitAction {
            action,
            priority: line.priority.or(args.priority),
            idempotency_key,
        });
    }

    let (queue, created) = match args.queue {
        Some(queue) => (client.queue(queue).await?, false),
        None => {
            let config = QueueConfig {
                retry_limit: args.retries,
                default_priority: 0,
                name: args.name.clone().unwrap_or_default(),
            };
            (client.create_queue(config).await?, true)
        }
    };
    if created && !args.client.json {
        // Print the queue first: if submission fails, the user still knows it.
        println!(
            "queue {} token {}",
            queue.id().map_or_else(|| "?".into(), |id| id.to_string()),
            queue.token().map(|t| t.to_string()).unwrap_or_default()
        );
    }
    let lsns = queue.submit(actions).await?;
    if args.client.json {
        print_json(&serde_json::json!({
            "queue": {
                "id": queue.id(),
                "token": queue.token().map(|t| t.to_string()),
                "created": created,
            },
            "worker": default_worker.map(|w| w.to_string()),
            "lsns": lsns,
        }))?;
    } else {
        for lsn in lsns {
            println!("{lsn}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_clear_errors() {
        let text = "# a comment\n\n{\"args\": [\"a\"], \"files\": {\"in/x\": \"./x\"}, \"priority\": -1}\n{}\n";
        let lines = parse_lines(text.as_bytes(), "t.jsonl").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].args, ["a"]);
        assert_eq!(lines[0].files["in/x"], PathBuf::from("./x"));
        assert_eq!(lines[0].priority, Some(-1));
        assert_eq!(lines[1], ActionLine::default());
        let err = parse_lines("{}\n{\"arg\": []}\n".as_bytes(), "t.jsonl").unwrap_err();
        assert!(format!("{err:#}").contains("t.jsonl:2"), "{err:#}");
        assert!(format!("{err:#}").contains("arg"), "{err:#}");
    }
}
