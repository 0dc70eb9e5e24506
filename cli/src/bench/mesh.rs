//! `procmesh bench mesh`: the whole path, client → orchestrator → host → proc agent → action,
//! beside raw process spawning measured in the same run.
//!
//! 1. **Raw**: `Command::output()` of a trivial binary (`true`) from `concurrency` threads; and
//!    the peer: the same through bubblewrap (`bwrap --unshare-all`, read-only system binds),
//!    where it is installed.
//! 2. **End to end**: an orchestrator, a host with one OS proc agent of `concurrency` slots,
//!    and a client, each its own QUIC node on loopback, in this process; the client submits
//!    batches of actions running the same `true` and waits for each batch to complete. Twice:
//!    the host with isolation `namespaces` (its default, where the kernel allows it), then
//!    `none`.
//! 3. **No-op dispatch**: the same mesh, but proc agents with the no-op executor
//!    (`PROCMESH_EXECUTOR=noop`): 100,000 actions from submission to the last completion, three
//!    times: the orchestrator in memory (no journal), journaled on a real disk at the default
//!    durability (fsync per group commit), and journaled on tmpfs.
//! 4. **Memory**: an orchestrator as its own OS process (`procmesh orchestrator --no-journal`)
//!    with no hosts; its resident memory before and after 1,000,000 trivial actions are
//!    pending, per action.
//! 5. **Recovery**: the same with its journal: 1,000,000 pending actions, a clean stop, then the
//!    time a new process takes from start to its ready line, and the journal's size per action.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use procmesh_client::{Client, ClientConfig, Queue, WorkerBuilder};
use procmesh_protocol::messages::host::IsolationMode;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::{ActionDef, WorkerId};

use super::baseline::Bwrap;
use super::{print_table, Row};
use crate::local_mesh::{Identities, LocalMesh, Procs};

/// What to measure.
pub struct Options {
    pub seconds: f64,
    pub concurrency: u32,
    pub noop_actions: u64,
    pub pending: u64,
}

fn trivial_actions(worker: WorkerId, n: u64) -> Vec<SubmitAction> {
    (0..n)
        .map(|_| SubmitAction {
            action: ActionDef::new(worker),
            priority: None,
            idempotency_key: None,
        })
        .collect()
}

/// Submits `n` trivial actions and waits until the queue is complete; returns how many did
/// not complete and the time from the submission to the queue's completion. Then retires the
/// results (not timed: listing results is not dispatch).
async fn run_batch(queue: &Queue, worker: WorkerId, n: u64) -> anyhow::Result<(u64, Duration)> {
    let (failed, elapsed) = submit_and_wait(queue, worker, n).await?;
    retire_all(queue).await?;
    Ok((failed, elapsed))
}

/// The timed part of [`run_batch`]: submission to the queue's completion.
async fn submit_and_wait(
    queue: &Queue,
    worker: WorkerId,
    n: u64,
) -> anyhow::Result<(u64, Duration)> {
    let actions = trivial_actions(worker, n);
    let started = Instant::now();
    queue.submit(actions).await?;
    let status = queue.wait_complete(Some(Duration::from_secs(120))).await?;
    let failed = status.counts.failed + status.counts.abandoned + status.counts.cancelled;
    Ok((failed, started.elapsed()))
}

/// Retires every result of the queue.
async fn retire_all(queue: &Queue) -> anyhow::Result<()> {
    let lsns: Vec<_> = queue
        .all_results()
        .await?
        .iter()
        .map(|r| r.record.lsn())
        .collect();
    queue.retire(lsns).await?;
    Ok(())
}

/// Actions per second end to end through a real mesh running `true`, its host configured with
/// `isolation`; and the isolation the host settled on (namespaces degrade to none where the
/// kernel refuses them).
async fn e2e(
    dir: &Path,
    ids: &Identities,
    concurrency: u32,
    budget: Duration,
    isolation: IsolationMode,
) -> anyhow::Result<(f64, Option<IsolationMode>)> {
    // One proc with every slot, as `bench runner` measures the runner alone.
    let mesh = LocalMesh::start_with(
        &dir.join(format!("e2e-{isolation}")),
        ids,
        Procs {
            count: 1,
            max_actions: Some(concurrency),
            env: &[],
        },
        |_, host| host.isolation = isolation,
    )
    .await?;
    let settled = mesh.host.info().isolation.map(|summary| summary.mode);
    let worker = mesh
        .client
        .register_worker(&WorkerBuilder::program(super::baseline::trivial_binary()?))
        .await?;
    let queue = mesh.client.create_queue(QueueConfig::default()).await?;
    // Warm-up: every proc caches the worker.
    run_batch(&queue, worker, u64::from(concurrency) * 4).await?;
    let batch = u64::from(concurrency) * 50;
    let mut busy = Duration::ZERO;
    let mut done = 0u64;
    let mut failed = 0u64;
    while busy < budget {
        let (f, took) = run_batch(&queue, worker, batch).await?;
        failed += f;
        busy += took;
        done += batch;
    }
    let rate = done as f64 / busy.as_secs_f64();
    mesh.stop().await;
    anyhow::ensure!(
        failed == 0,
        "{failed} of {done} trivial actions did not complete"
    );
    Ok((rate, settled))
}

/// Where the orchestrator of a no-op phase keeps its state.
#[derive(Debug, Clone, Copy)]
enum Journal {
    /// Nowhere: in memory.
    Off,
    /// A journal at the default durability (fsync per group commit).
    On,
}

/// What a no-op phase measured.
#[derive(Debug, Clone, Copy)]
struct NoopFigures {
    /// Actions per second from submission to the last completion.
    per_s: f64,
    /// CPU time (user + system) per action of this process (client, orchestrator, host) and
    /// its proc agents: a figure the machine's noise moves far less than a rate.
    cpu_us: f64,
}

/// CPU time (user + system) of this process and every process below it, from /proc.
fn tree_cpu() -> anyhow::Result<Duration> {
    let me = std::process::id();
    // (pid, parent, ticks) of every process we can read; the tree is found from `me`.
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone meanwhile
        };
        // After the command's closing parenthesis: state ppid … utime (14th) stime (15th).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(ppid), Some(utime), Some(stime)) = (number(1), number(11), number(12)) {
            procs.push((pid, ppid as u32, utime + stime));
        }
    }
    let parent: std::collections::HashMap<u32, u32> =
        procs.iter().map(|&(pid, ppid, _)| (pid, ppid)).collect();
    // Whether `me` is `pid` or one of its ancestors (pid 0 and 1 end the walk).
    let below_me = |mut pid: u32| loop {
        if pid == me {
            return true;
        }
        match parent.get(&pid) {
            Some(&ppid) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    };
    let ticks: u64 = procs
        .iter()
        .filter(|(pid, _, _)| below_me(*pid))
        .map(|(_, _, t)| t)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Actions per second from submission to completion with the no-op executor, and the CPU time
/// each cost.
async fn noop(
    dir: &Path,
    ids: &Identities,
    n: u64,
    journal: Journal,
) -> anyhow::Result<NoopFigures> {
    let mesh = LocalMesh::start_with(
        dir,
        ids,
        Procs {
            count: 2,
            max_actions: Some(2048),
            env: &[("PROCMESH_EXECUTOR", "noop")],
        },
        |config, _| config.journal = matches!(journal, Journal::On),
    )
    .await?;
    let worker = mesh
        .client
        .register_worker(&WorkerBuilder::program(super::baseline::trivial_binary()?))
        .await?;
    let queue = mesh.client.create_queue(QueueConfig::default()).await?;
    run_batch(&queue, worker, 1000).await?;
    let cpu_before = tree_cpu()?;
    let (failed, took) = submit_and_wait(&queue, worker, n).await?;
    let cpu = tree_cpu()?.saturating_sub(cpu_before);
    retire_all(&queue).await?;
    mesh.stop().await;
    anyhow::ensure!(
        failed == 0,
        "{failed} of {n} no-op actions did not complete"
    );
    Ok(NoopFigures {
        per_s: n as f64 / took.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Resident bytes of `pid`, from /proc.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

/// An OS child killed and reaped when dropped.
pub(super) struct ChildGuard(pub(super) std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An orchestrator as its own OS process: its guard, its ready line, and how long it took to
/// print it.
pub(super) async fn orchestrator_process(
    ids: &Identities,
    state: &Path,
    journal_flag: &[&str],
) -> anyhow::Result<(ChildGuard, serde_json::Value, Duration)> {
    use std::io::BufRead as _;
    let me = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(me)
        .args(["orchestrator", "--listen", "127.0.0.1:0", "--json"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(journal_flag)
        .arg("--tls-dir")
        .arg(ids.orchestrator_dir())
        .arg("--state-dir")
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting `procmesh orchestrator`")?;
    let stdout = child.stdout.take().context("orchestrator stdout")?;
    let guard = ChildGuard(child);
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .next()
            .transpose()
            .ok()
            .flatten()
    })
    .await?
    .context("the orchestrator exited before it was ready")?;
    let took = started.elapsed();
    let ready: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
    Ok((guard, ready, took))
}

/// Submits `pending` trivial actions to the orchestrator of `ready` (in batches of 10,000),
/// after 1,000 to warm up; returns the client, the queue and the worker.
pub(super) async fn fill(
    dir: &Path,
    ids: &Identities,
    ready: &serde_json::Value,
    pending: u64,
    before_bulk: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<(Client, u64)> {
    let id = ready["ready"]
        .as_str()
        .context("no \"ready\" in the orchestrator's line")?
        .parse()?;
    let mut config = ClientConfig::new(id, ids.client.clone());
    config.cache_dir = Some(dir.join("fill-client-cache"));
    config.timeout = Duration::from_secs(60);
    let client = Client::connect(config).await?;
    let worker = client
        .register_worker(&WorkerBuilder::program(super::baseline::trivial_binary()?))
        .await?;
    let queue = client.create_queue(QueueConfig::default()).await?;
    // Warm up the orchestrator's allocator and maps a little, then measure the growth.
    queue.submit(trivial_actions(worker, 1000)).await?;
    let before = before_bulk()?;
    let chunk = 10_000u64;
    let mut sent = 0;
    while sent < pending {
        let n = chunk.min(pending - sent);
        queue.submit(trivial_actions(worker, n)).await?;
        sent += n;
    }
    let status = queue.status().await?;
    anyhow::ensure!(
        status.counts.pending >= pending,
        "expected {pending} pending actions, the orchestrator counts {}",
        status.counts.pending
    );
    Ok((client, before))
}

/// Resident bytes an orchestrator process (in memory) grows by per pending trivial action.
async fn memory(dir: &Path, ids: &Identities, pending: u64) -> anyhow::Result<f64> {
    let (guard, ready, _) =
        orchestrator_process(ids, &dir.join("memory"), &["--no-journal"]).await?;
    let pid = guard.0.id();
    let (client, before) = fill(dir, ids, &ready, pending, || rss_bytes(pid)).await?;
    let after = rss_bytes(pid)?;
    client.close().await;
    drop(guard);
    Ok(after.saturating_sub(before) as f64 / pending as f64)
}

/// Recovery: an orchestrator whose journal holds `pending` pending actions is stopped cleanly
/// and started again; returns the seconds from start to ready and the journal's bytes per
/// action.
async fn recovery(dir: &Path, ids: &Identities, pending: u64) -> anyhow::Result<(f64, f64)> {
    let state = dir.join("recovery");
    let (mut guard, ready, _) = orchestrator_process(ids, &state, &[]).await?;
    let (client, _) = fill(dir, ids, &ready, pending, || Ok(0)).await?;
    client.close().await;
    // A clean stop: SIGTERM, then wait for the exit.
    let pid = nix::unistd::Pid::from_raw(guard.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let waited = tokio::task::spawn_blocking(move || {
        let status = guard.0.wait();
        (guard, status)
    })
    .await?;
    waited.1.context("waiting for the orchestrator to stop")?;
    let bytes = std::fs::metadata(state.join("journal.redb"))?.len();
    let (again, ready, took) = orchestrator_process(ids, &state, &[]).await?;
    let actions = ready["recovered"]["actions"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        actions > pending,
        "the restarted orchestrator recovered {actions} actions, not {pending}"
    );
    drop(again);
    Ok((took.as_secs_f64(), bytes as f64 / actions as f64))
}

/// The CPU time per action at which 2 cores dispatch 150,000 no-op actions a second.
const NOOP_CPU_GOAL_US: f64 = 2.0 * 1e6 / 150_000.0;

pub async fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let (dir, on) = super::scratch_dir("mesh")?;
    let result = measure(&dir, &options).await;
    let _ = std::fs::remove_dir_all(&dir);
    let f = result?;
    let rows = [
        Row {
            what: "end-to-end actions/s, isolated",
            ours: f.e2e,
            raw: f.raw,
            unit: "1/s",
            ratio: f.e2e / f.raw,
            goal: ">= 0.5",
        },
        Row {
            what: "end-to-end actions/s, none",
            ours: f.e2e_none,
            raw: f.raw,
            unit: "1/s",
            ratio: f.e2e_none / f.raw,
            goal: ">= 0.7",
        },
        f.bwrap.row("end-to-end isolated vs bwrap", f.e2e, ">= 3"),
        Row {
            what: "no-op dispatch actions/s",
            ours: f.noop,
            raw: 150_000.0,
            unit: "1/s",
            ratio: f.noop / 150_000.0,
            goal: ">= 1 (150k/s, issue 19)",
        },
        Row {
            what: "no-op CPU time per action",
            ours: f.noop_cpu_us,
            raw: NOOP_CPU_GOAL_US,
            unit: "us",
            ratio: f.noop_cpu_us / NOOP_CPU_GOAL_US,
            goal: "<= 1 (2 cores at 150k/s)",
        },
        Row {
            what: "durable no-op dispatch/s (disk)",
            ours: f.durable,
            raw: f.noop,
            unit: "1/s",
            ratio: f.durable / f.noop,
            goal: ">= 0.7",
        },
        Row {
            what: "durable no-op dispatch/s (tmpfs)",
            ours: f.durable_tmpfs,
            raw: f.noop,
            unit: "1/s",
            ratio: f.durable_tmpfs / f.noop,
            goal: "",
        },
        Row {
            what: "recovery, 1M pending actions",
            ours: f.recovery_s,
            raw: 5.0,
            unit: "s",
            ratio: f.recovery_s / 5.0,
            goal: "<= 1 (5 s)",
        },
        Row {
            what: "orchestrator bytes/pending action",
            ours: f.bytes_per_pending,
            raw: 256.0,
            unit: "B",
            ratio: f.bytes_per_pending / 256.0,
            goal: "<= 1 (256 B, issue 19)",
        },
    ];
    print_table(
        &format!(
            "procmesh bench mesh (client -> orchestrator -> host -> proc, {} actions at once)",
            options.concurrency
        ),
        &rows,
    );
    f.bwrap.print_failure();
    if f.e2e_isolation != Some(IsolationMode::Namespaces) {
        println!(
            "the isolated end-to-end phase ran with isolation {}: the kernel refused namespaces",
            f.e2e_isolation.map_or("unknown", IsolationMode::as_str)
        );
    }
    println!(
        "raw: Command::output() of `true` from {} threads (bwrap: the same through `bwrap \
         --unshare-all` with read-only system binds); no-op: {} actions; memory: {} pending, \
         resident-set growth of a separate orchestrator process",
        options.concurrency, options.noop_actions, options.pending
    );
    println!(
        "state directory on {on}; the durable disk phase journals to {}",
        f.disk
    );
    println!("elapsed {:.1}s", started.elapsed().as_secs_f64());
    let bwrap_per_s = f.bwrap.per_s();
    let json = serde_json::json!({
        "suite": "mesh",
        "concurrency": options.concurrency,
        "e2e_actions_per_s": f.e2e,
        "raw_spawn_per_s": f.raw,
        "e2e_ratio": f.e2e / f.raw,
        "e2e_none_actions_per_s": f.e2e_none,
        "e2e_none_ratio": f.e2e_none / f.raw,
        "bwrap_per_s": bwrap_per_s,
        "isolated_vs_bwrap": bwrap_per_s.map(|b| f.e2e / b),
        "noop_actions": options.noop_actions,
        "noop_dispatch_per_s": f.noop,
        "noop_cpu_us_per_action": f.noop_cpu_us,
        "durable_cpu_us_per_action": f.durable_cpu_us,
        "pending_actions": options.pending,
        "bytes_per_pending_action": f.bytes_per_pending,
        "durable_dispatch_per_s": f.durable,
        "durable_ratio": f.durable / f.noop,
        "durable_tmpfs_per_s": f.durable_tmpfs,
        "durable_disk": f.disk,
        "recovery_s": f.recovery_s,
        "journal_bytes_per_action": f.journal_bytes_per_action,
    });
    println!("{json}");
    Ok(())
}

struct Figures {
    /// End to end, the host in its default isolation (namespaces).
    e2e: f64,
    /// The isolation that phase's host settled on.
    e2e_isolation: Option<IsolationMode>,
    /// End to end, the host with isolation none.
    e2e_none: f64,
    raw: f64,
    bwrap: Bwrap,
    noop: f64,
    /// CPU time per no-op action, in memory and journaled on disk.
    noop_cpu_us: f64,
    durable_cpu_us: f64,
    durable: f64,
    durable_tmpfs: f64,
    disk: String,
    bytes_per_pending: f64,
    recovery_s: f64,
    journal_bytes_per_action: f64,
}

/// A scratch directory on a real disk (not tmpfs): under the system's `/var/tmp`, else the
/// current directory.
fn disk_dir() -> anyhow::Result<std::path::PathBuf> {
    let base = ["/var/tmp", "."]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_dir())
        .context("no directory for the disk phase")?;
    let dir = base.join(format!("procmesh-bench-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn measure(dir: &Path, options: &Options) -> anyhow::Result<Figures> {
    let budget = Duration::from_secs_f64(options.seconds);
    // Raw first, before any host in this process reaps children.
    let raw = tokio::task::spawn_blocking({
        let w = super::baseline::trivial_binary()?;
        let c = options.concurrency as usize;
        move || super::baseline::raw_spawn_rate(&w, c, budget)
    })
    .await??;
    let bwrap = tokio::task::spawn_blocking({
        let w = super::baseline::trivial_binary()?;
        let c = options.concurrency as usize;
        move || super::baseline::bwrap_rate(&w, c, budget)
    })
    .await?;
    let ids = Identities::generate(dir, "bench", Duration::from_secs(3600))?;
    let (isolated, e2e_isolation) = e2e(
        dir,
        &ids,
        options.concurrency,
        budget,
        IsolationMode::Namespaces,
    )
    .await
    .context("end-to-end phase (isolation namespaces)")?;
    let (e2e_none, _) = e2e(dir, &ids, options.concurrency, budget, IsolationMode::None)
        .await
        .context("end-to-end phase (isolation none)")?;
    let noop_in_memory = noop(&dir.join("noop"), &ids, options.noop_actions, Journal::Off)
        .await
        .context("no-op dispatch phase")?;
    let disk = disk_dir()?;
    let durable = noop(&disk, &ids, options.noop_actions, Journal::On).await;
    let _ = std::fs::remove_dir_all(&disk);
    let durable = durable.context("durable no-op dispatch phase (disk)")?;
    let durable_tmpfs = noop(
        &dir.join("noop-journal"),
        &ids,
        options.noop_actions,
        Journal::On,
    )
    .await
    .context("durable no-op dispatch phase (tmpfs)")?;
    let bytes_per_pending = memory(dir, &ids, options.pending)
        .await
        .context("memory phase")?;
    let (recovery_s, journal_bytes_per_action) = recovery(dir, &ids, options.pending)
        .await
        .context("recovery phase")?;
    Ok(Figures {
        e2e: isolated,
        e2e_isolation,
        e2e_none,
        raw,
        bwrap,
        noop: noop_in_memory.per_s,
        noop_cpu_us: noop_in_memory.cpu_us,
        durable: durable.per_s,
        durable_cpu_us: durable.cpu_us,
        durable_tmpfs: durable_tmpfs.per_s,
        disk: disk.display().to_string(),
        bytes_per_pending,
        recovery_s,
        journal_bytes_per_action,
    })
}
