//! `procmesh demo`: the whole system on this machine in one command. It makes an ephemeral
//! mesh CA, starts an orchestrator and a host (with OS-process proc agents) on loopback, and
//! runs a real workload through the client library: hundreds of actions, each summing the
//! numbers of its own input file into an output file; some fail on their first attempts and are
//! retried. It shows live progress, checks every output against the expected content, prints a
//! summary and exits 0 — or 1 if an action did not end as it should. `--keep` leaves the mesh
//! running and prints how to reach it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use procmesh_client::{Client, WorkerBuilder};
use procmesh_protocol::action::ActionState;
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{ActionResult, QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;

use crate::local_mesh::{Identities, LocalMesh, Procs};

/// Flags of `procmesh demo`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes:\n  0  every action completed with the expected output\n  1  an action failed or its output was wrong, or an error (printed as `error: ...`)"
)]
pub struct DemoArgs {
    /// How many actions to run.
    #[arg(long, default_value_t = 300)]
    actions: u32,
    /// Proc agents (OS processes) the host starts.
    #[arg(long, default_value_t = 2)]
    procs: u32,
    /// Actions each proc runs at once (default: an even share of the logical CPUs).
    #[arg(long)]
    max_actions: Option<u32>,
    /// Every N-th action fails its first attempt (0: none); every 5N-th fails twice.
    #[arg(long, default_value_t = 10)]
    flaky_every: u32,
    /// Keep the state here instead of a temporary directory (kept afterwards).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Leave the orchestrator and host running after the workload, and print how to connect.
    #[arg(long)]
    keep: bool,
    /// Print the summary as one JSON object (no progress bar).
    #[arg(long)]
    json: bool,
    /// The dashboard's listener (the orchestrator's admin HTTP), HOST:PORT or `off`; when the
    /// default port is taken, a free one is used.
    #[arg(long, default_value = procmesh_orchestrator::config::DEFAULT_ADMIN_LISTEN)]
    admin_listen: String,
}

/// The demo's dashboard: at `listen`, or on a free loopback port when the default one is
/// taken (another demo or orchestrator runs here).
async fn demo_admin(
    listen: &str,
    slot: &procmesh_orchestrator::AdminSlot,
) -> anyhow::Result<Option<procmesh_admin::AdminServer>> {
    let started = super::admin::start(listen, None, slot.router(), slot.refused_counter()).await;
    match started {
        Ok(server) => Ok(server),
        Err(_) if listen == procmesh_orchestrator::config::DEFAULT_ADMIN_LISTEN => {
            super::admin::start("127.0.0.1:0", None, slot.router(), slot.refused_counter()).await
        }
        Err(error) => Err(error),
    }
}

/// The worker: plain POSIX sh, so it runs wherever the host does.
const WORKER: &str = r#"#!/bin/sh
# procmesh demo worker: counts and sums the numbers of input.txt into Outputs/sum.txt.
# Fails its first FAIL_TIMES attempts, to show retries.
set -eu
if [ "$PROCMESH_ATTEMPT" -le "${FAIL_TIMES:-0}" ]; then
  echo "action $PROCMESH_LSN: flaky failure on attempt $PROCMESH_ATTEMPT" >&2
  exit 3
fi
n=0
sum=0
while read -r x; do
  n=$((n + 1))
  sum=$((sum + x))
done < input.txt
printf '%s %s\n' "$n" "$sum" > Outputs/sum.txt
echo "action $PROCMESH_LSN: $n numbers, sum $sum (attempt $PROCMESH_ATTEMPT)"
"#;

/// Input `i`: 1 + i % 40 numbers derived from `i`; and what the worker must write for it.
fn input(i: u32) -> (String, String) {
    let count = 1 + i % 40;
    let numbers: Vec<u64> = (0..count)
        .map(|k| u64::from(i) * 7 + u64::from(k) * 13)
        .collect();
    let text: String = numbers.iter().map(|n| format!("{n}\n")).collect();
    let expected = format!("{} {}\n", numbers.len(), numbers.iter().sum::<u64>());
    (text, expected)
}

/// How often action `i` fails before it succeeds.
fn failures(i: u32, every: u32) -> u32 {
    match every {
        0 => 0,
        e if i % (5 * e) == 5 * e - 1 => 2,
        e if i % e == e - 1 => 1,
        _ => 0,
    }
}

/// Runs the demo; the exit code is 0 when every action ended as it should, else 1.
pub fn run(args: DemoArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(args.actions > 0, "--actions must be at least 1");
    anyhow::ensure!(args.procs > 0, "--procs must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("demo")
        .build()?;
    let ok = runtime.block_on(demo(args))?;
    Ok(if ok { 0 } else { 1 })
}

/// Where the demo keeps its state: a temporary directory, or the user's.
enum StateDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl StateDir {
    fn path(&self) -> &Path {
        match self {
            StateDir::Temp(t) => t.path(),
            StateDir::Kept(p) => p,
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let state = match (&args.state_dir, args.keep) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            StateDir::Kept(dir.clone())
        }
        (None, true) => {
            let dir = std::env::temp_dir().join(format!("procmesh-demo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            StateDir::Kept(dir)
        }
        (None, false) => StateDir::Temp(
            tempfile::Builder::new()
                .prefix("procmesh-demo-")
                .tempdir()
                .context("creating a temporary directory")?,
        ),
    };
    let root = state.path().to_path_buf();
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };

    // An ephemeral mesh: a CA, an orchestrator, a host and its proc agents, a client.
    let ids = Identities::generate(&root, "procmesh-demo", Duration::from_secs(7 * 24 * 3600))?;
    let mesh = LocalMesh::start(
        &root,
        &ids,
        Procs {
            count: args.procs,
            max_actions: args.max_actions,
            env: &[],
        },
    )
    .await?;
    let orchestrator_id = mesh.orchestrator.actor_id();
    say(format!("orchestrator  {orchestrator_id}"));
    let admin = demo_admin(&args.admin_listen, mesh.orchestrator.admin()).await?;
    if let Some(admin) = &admin {
        say(format!("dashboard     http://{}/", admin.addr()));
    }
    say(format!(
        "host          {} with {} proc agents",
        mesh.host.addr(),
        args.procs
    ));

    let outcome = workload(&args, &root, &mesh.client).await;

    if args.keep {
        if let Ok(true) = outcome {
            println!();
        }
        let client_dir = ids.client_dir();
        println!("The mesh keeps running (Ctrl-C stops it). From another terminal:");
        println!(
            "  export PROCMESH_ORCHESTRATOR='{orchestrator_id}' PROCMESH_TLS_DIR='{}'",
            client_dir.display()
        );
        println!("  procmesh hosts");
        println!("  procmesh exec -- /bin/echo hello from the mesh");
        println!(
            "(an operator identity, for host administration, is in {})",
            ids.operator_dir().display()
        );
        println!("State: {}", root.display());
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    mesh.stop().await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    if !args.json {
        eprintln!("stopped after {:.1} s", started.elapsed().as_secs_f64());
    }
    drop(state);
    outcome
}

/// Counts of what the demo saw, from the event stream.
#[derive(Default)]
struct Progress {
    total: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    running: u64,
    retries: u64,
}

impl Progress {
    fn finished(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }

    fn see(&mut self, state: ActionState, attempt: u32, from_running: bool) {
        match state {
            ActionState::Running => self.running += 1,
            ActionState::Completed => self.completed += 1,
            ActionState::Failed => self.failed += 1,
            ActionState::Cancelled => self.cancelled += 1,
            ActionState::Pending if attempt > 1 => self.retries += 1,
            _ => {}
        }
        if from_running && state.is_terminal() || state == ActionState::Abandoned {
            self.running = self.running.saturating_sub(1);
        }
    }

    fn bar(&self, elapsed: Duration) -> String {
        const WIDTH: u64 = 32;
        let done = self.finished().min(self.total);
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH) as usize;
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        format!(
            "[{}{}] {done}/{} done · {} running · {} retries · {} failed · {rate:.0} actions/s",
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            self.total,
            self.running,
            self.retries,
            self.failed,
        )
    }
}

async fn workload(args: &DemoArgs, root: &Path, client: &Client) -> anyhow::Result<bool> {
    let orchestrator = client.orchestrator().clone();
    let worker = client
        .register_worker(
            &WorkerBuilder::new()
                .bytes("sum.sh", WORKER.as_bytes().to_vec(), true)
                .executable("sum.sh")
                .env("PATH", "/usr/local/bin:/usr/bin:/bin"),
        )
        .await
        .context("registering the worker")?;

    // Inputs: one file per action, uploaded only if the orchestrator lacks them.
    let inputs_dir = root.join("inputs");
    std::fs::create_dir_all(&inputs_dir)?;
    let mut expected = BTreeMap::new();
    let mut files = Vec::new();
    for i in 0..args.actions {
        let (text, want) = input(i);
        let path = inputs_dir.join(format!("{i}.txt"));
        std::fs::write(&path, text)?;
        files.push(("input.txt".to_owned(), path));
        expected.insert(i, want);
    }
    let inputs = client
        .upload_inputs(&files)
        .await
        .context("uploading inputs")?;

    let queue = client
        .create_queue(QueueConfig {
            retry_limit: 3,
            name: "demo".into(),
            ..QueueConfig::default()
        })
        .await?;
    let mut watch = queue.watch().await?;
    let actions: Vec<SubmitAction> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let i = i as u32;
            let mut action = ActionDef::new(worker);
            action.inputs.push(input);
            action.timeout_ms = Some(60_000);
            let fail = failures(i, args.flaky_every);
            if fail > 0 {
                action.env.insert("FAIL_TIMES".into(), fail.to_string());
            }
            SubmitAction {
                action,
                priority: None,
                idempotency_key: Some(format!("demo-{i}")),
            }
        })
        .collect();
    let started = Instant::now();
    let lsns = queue.submit(actions).await.context("submitting")?;
    let index: BTreeMap<u64, u32> = lsns
        .iter()
        .enumerate()
        .map(|(i, lsn)| (lsn.0, i as u32))
        .collect();

    // Live progress from the event stream; the status is the truth at the end.
    let mut progress = Progress {
        total: lsns.len() as u64,
        ..Progress::default()
    };
    let tty = std::io::stderr().is_terminal() && !args.json;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last_state: BTreeMap<u64, ActionState> = BTreeMap::new();
    let deadline = started + Duration::from_secs(600);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let status = loop {
        tokio::select! {
            event = watch.next() => match event {
                Some(ClientEvent::Transition { transition: t, .. }) => {
                    let before = last_state.insert(t.lsn.0, t.state);
                    progress.see(t.state, t.attempt.get(), before == Some(ActionState::Running));
                }
                Some(ClientEvent::QueueComplete { status, .. }) => break status,
                Some(_) => {}
                None => {}
            },
            _ = poll.tick() => {
                let status = queue.status().await?;
                if status.is_complete {
                    break status;
                }
                anyhow::ensure!(Instant::now() < deadline, "the workload did not finish within 10 minutes");
            }
        }
        if tty && last_draw.elapsed() >= Duration::from_millis(100) {
            last_draw = Instant::now();
            eprint!("\r{}\x1b[K", progress.bar(started.elapsed()));
            let _ = std::io::stderr().flush();
        }
    };
    let elapsed = started.elapsed();
    let _ = watch.close().await;
    if tty {
        progress.completed = status.counts.completed;
        progress.failed = status.counts.failed;
        progress.running = 0;
        eprintln!("\r{}\x1b[K", progress.bar(elapsed));
    }

    // Check every result against what the worker must have written.
    let results = queue.all_results().await?;
    let mut wrong = Vec::new();
    let mut attempts = 0u64;
    let mut per_proc: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_host: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu_ms = 0u64;
    for r in &results {
        let lsn = r.record.lsn().0;
        attempts += u64::from(r.record.attempt().get());
        cpu_ms += r.record.execution().and_then(|e| e.cpu_ms).unwrap_or(0);
        if let Some(location) = r.record.location() {
            *per_proc.entry(location.name().to_owned()).or_default() += 1;
            *per_host.entry(location.addr().to_string()).or_default() += 1;
        }
        let Some(want) = index.get(&lsn).and_then(|i| expected.get(i)) else {
            wrong.push(format!("action {lsn}: not submitted by the demo"));
            continue;
        };
        if let Some(problem) = check(r, want) {
            wrong.push(format!("action {lsn}: {problem}"));
        }
    }
    if results.len() != lsns.len() {
        wrong.push(format!(
            "{} results for {} actions",
            results.len(),
            lsns.len()
        ));
    }

    // Show one output, downloaded from where it was made.
    let sample = results.iter().rev().find(|r| !r.outputs.is_empty());
    let mut sample_text = None;
    if let Some(r) = sample {
        let dir = root.join("downloads");
        std::fs::create_dir_all(&dir)?;
        let path = client
            .download(r, &r.outputs[0], &dir)
            .await
            .context("downloading an output")?;
        sample_text = Some((
            r.record.lsn().0,
            std::fs::read_to_string(&path)?.trim_end().to_owned(),
        ));
    }
    let retired = queue
        .retire(results.iter().map(|r| r.record.lsn()).collect())
        .await?;

    let rate = results.len() as f64 / elapsed.as_secs_f64().max(1e-3);
    let retries = attempts.saturating_sub(results.len() as u64);
    if args.json {
        let line = serde_json::json!({
            "actions": results.len(),
            "completed": status.counts.completed,
            "failed": status.counts.failed,
            "retries": retries,
            "seconds": elapsed.as_secs_f64(),
            "actions_per_s": rate,
            "cpu_ms": cpu_ms,
            "per_host": per_host,
            "per_proc": per_proc,
            "wrong": wrong,
            "retired": retired,
            "orchestrator": orchestrator.to_string(),
        });
        println!("{line}");
    } else {
        println!(
            "{} actions in {:.2} s: {rate:.0} actions/s",
            results.len(),
            elapsed.as_secs_f64()
        );
        println!(
            "  completed {} · failed {} · retries {retries} (every {} action(s) flaky by design)",
            status.counts.completed, status.counts.failed, args.flaky_every
        );
        let total = results.len().max(1) as f64;
        for (host, n) in &per_host {
            println!("  host {host}: {n} ({:.0}%)", *n as f64 * 100.0 / total);
        }
        for (proc, n) in &per_proc {
            println!("    {proc}: {n} ({:.0}%)", *n as f64 * 100.0 / total);
        }
        println!("  action CPU time {:.2} s", cpu_ms as f64 / 1000.0);
        if let Some((lsn, text)) = sample_text {
            println!("  output of action {lsn} (Outputs/sum.txt): {text}");
        }
        if wrong.is_empty() {
            println!("  every output checked: all correct");
        } else {
            println!("  {} problem(s):", wrong.len());
            for w in wrong.iter().take(20) {
                println!("    {w}");
            }
        }
    }
    Ok(wrong.is_empty())
}

/// What is wrong with a result, if anything.
fn check(r: &ActionResult, want: &str) -> Option<String> {
    if r.record.state() != ActionState::Completed {
        return Some(format!(
            "ended {} ({})",
            r.record.state(),
            r.record.last_error().unwrap_or("no reason")
        ));
    }
    let Some(out) = r.outputs.iter().find(|o| o.path == "sum.txt") else {
        return Some("no Outputs/sum.txt".into());
    };
    (out.hash != BlobHash::of(want.as_bytes()))
        .then(|| format!("sum.txt differs from {:?}", want.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_expected_sums_agree() {
        let (text, want) = input(3);
        let numbers: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(numbers.len(), 4);
        assert_eq!(
            want,
            format!("4 {}\n", numbers.iter().sum::<u64>()),
            "{text}"
        );
    }

    #[test]
    fn flaky_actions_are_spread_as_documented() {
        let fails: Vec<u32> = (0..100).map(|i| failures(i, 10)).collect();
        assert_eq!(fails.iter().filter(|&&f| f == 1).count(), 8);
        assert_eq!(fails.iter().filter(|&&f| f == 2).count(), 2);
        assert!((0..100).all(|i| failures(i, 0) == 0));
    }
}
