//! The runner: executes actions of one proc in per-attempt sandbox directories, and reports
//! every lifecycle step as it happens.
//!
//! ```text
//!  submit ──▶ slot taken ──▶ worker (cache) ─▶ input blobs ─▶ sandbox ─▶ spawn
//!    │                                                                          │
//!    └─ refused: Stopping | InvalidAction | Duplicate | NoCapacity        Running ▼
//!                       exit / timeout / cancel ─▶ outputs ─▶ Completed | Failed | Cancelled
//!                       (slot freed with the final report) ─▶ sandbox set aside, deleted later
//! ```
//!
//! It is a driver, not protocol: it reads the clock ([`Timestamp`]s of the transitions), the
//! file system and runs processes; the lifecycle rules themselves live in `procmesh-protocol`.
//! The agent actor calls it; where it gets workers and blobs is a [`Resolver`].
//!
//! # Layout
//! - `mod.rs` — [`Runner`], [`RunnerConfig`], [`Resolver`], the slot table.
//! - `attempt` — one attempt from slot to final report.
//! - `worker_cache` — `<workers_dir>/<id>`: resolve, verify, materialise, reuse.
//! - `sandbox` — path rules and materialisation of worker files and inputs.
//! - `exec` — spawn, tails, timeout, cancellation.
//! - `isolate` — cgroups, the namespace sandbox's root, host programs, the environment.
//! - `outputs` — `Outputs/` into the blob store.
//! - `cleanup` — deferred, retried sandbox deletion.
//!
//! # Invariants
//! - **PA-1** Capacity: at most `max_actions` attempts are held at once. `submit` takes the slot
//!   synchronously, before any preparation, and the slot is freed in the same critical section
//!   that sends the final transition — so `capacity()` counts actions being prepared, and a
//!   submission made after its predecessor's final report never finds that slot taken. Over
//!   capacity a submission is refused (`NoCapacity`), never queued.
//! - **PA-2** Reports: an accepted attempt reports `Running` once its process started (not if it
//!   never did), then exactly one of `Completed`, `Failed`, `Cancelled`, and nothing after;
//!   each carries the proc as location and the time it happened. A panicking attempt task
//!   still ends `Failed`. It does not echo `Submitting`: the orchestrator set that state when
//!   it dispatched, and the answer to the submission confirms it (one message less per
//!   action).
//! - **PA-3** Cancel wins: once `cancel` returned `true` the attempt ends `Cancelled` — whether
//!   it was being prepared, running, or already exiting (with code 0 included) — never
//!   `Completed` or `Failed`.
//! - **PA-3b** A shutdown is not a cancel: the attempts a stopping runner ends (the proc agent
//!   was told to stop, or lost its host) end `Abandoned` — the work was lost with the proc, not
//!   refused by a client — so the orchestrator retries them; with reliable reports this
//!   report does arrive, and `Cancelled` would end the action for good.
//! - **PA-4** Signals reach only the attempt's processes: SIGTERM, then SIGKILL after the grace,
//!   go to its process group only while the leader is unreaped (no reused pid or group is ever
//!   signalled); when the leader exits its group is SIGKILLed before it is reaped, so nothing
//!   left in the group survives the attempt.
//! - **PA-5** Paths: every path of the worker and the action is checked lexically (SPEC-1)
//!   before anything is written; on disk an existing component is never followed if it is a
//!   symbolic link and must be a directory; nothing is written outside the sandbox (or the
//!   worker's temporary directory).
//! - **PA-6** Blobs: every worker file is verified by hash and size while it is copied into the
//!   worker cache, which appears by one atomic rename or not at all; inputs are verified by size
//!   (their hash was checked when they entered the store, BLOB-1). A missing or mismatching blob
//!   fails the attempt with a reason naming its hash — never a panic.
//! - **PA-7** Outputs: the regular files under `Outputs/` are stored and reported with hash and
//!   size, sorted by path; symbolic links are never followed — they, and other non-regular
//!   files, are skipped and named in the reason.
//! - **PA-8** Tails: `stdout_tail` and `stderr_tail` are the last `tail_bytes` bytes of each
//!   stream; reading keeps at most twice that per stream.
//! - **PA-9** Sandboxes: each attempt gets a fresh directory; after the final report it is
//!   deleted in the background with bounded, logged retries; `start` wipes what an earlier run
//!   left; `shutdown` deletes every sandbox before it returns.
//! - **PA-10** Environment: an action sees exactly `PATH` ([`DEFAULT_PATH`]), `HOME` and
//!   `TMPDIR` (`/tmp` in a namespace sandbox; the sandbox and the system's temporary directory
//!   otherwise), overlaid with its worker's environment, overlaid with its own (the action's
//!   entries win), plus `PROCMESH_LSN` and `PROCMESH_ATTEMPT` (its action and attempt numbers,
//!   the first attempt being 1) and `TRACEPARENT` when the submission carried one — nothing of
//!   the agent's; stdin is `/dev/null`, the working directory its sandbox.
//! - **PA-11** Timeout: an action running longer than its `timeout_ms` is stopped like a
//!   cancelled one (SIGTERM, grace, SIGKILL) and ends `Failed` with a reason starting
//!   "timed out after".

mod attempt;
mod cleanup;
mod error;
mod exec;
mod isolate;
mod outputs;
mod sandbox;
mod slots;
mod stages;
mod worker_cache;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use procmesh_protocol::action::{ActionState, AttemptRef, Timestamp, Transition};
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::ids::{ActorId, HostAddr, ProcId};
use procmesh_protocol::messages::agent::{ActionSpec, AgentError, Capacity, RunningAction};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_transport::BlobStore;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

pub use attempt::{ENV_ATTEMPT, ENV_LSN};
pub use error::RunnerError;
pub use isolate::DEFAULT_PATH;

use cleanup::{remove_tree, Cleaner};
use exec::CancelRequest;
use worker_cache::WorkerCache;

/// The stages of an attempt, in order, as [`ENV_STAGE_LOG`](crate::bootstrap::ENV_STAGE_LOG)
/// names them: the agent receiving the submission (`receive`), taking the slot (`slot`), the
/// worker cache, the input blobs, filling the sandbox directory, the cgroup, starting the
/// process (`spawn`: from the launch request until it runs), its run (`wait`), collecting
/// `Outputs/`, sending the final report, and handing the sandbox to the cleaner.
pub const STAGES: [&str; 11] = [
    "receive", "slot", "worker", "inputs", "sandbox", "cgroup", "spawn", "wait", "outputs",
    "report", "cleanup",
];

/// A boxed, sendable future: what [`Resolver`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a runner works. Built by the agent from its own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// This proc: reported as the location in transitions, e.g. `quic!10.0.0.5:7700,worker-3`.
    pub proc_id: ProcId,
    /// This proc's own directory, e.g. `/var/lib/procmesh/procs/worker-3`. Sandboxes live in
    /// `<work_dir>/sandboxes/<lsn>-<attempt>`; whatever is there is wiped at start.
    pub work_dir: PathBuf,
    /// The host-wide worker cache, e.g. `/var/lib/procmesh/workers`: `<workers_dir>/<worker id>/`,
    /// shared with sibling procs and reused; the host wipes stale entries when it starts.
    pub workers_dir: PathBuf,
    /// Most actions run at once, e.g. `8`; 0 means the number of logical CPUs.
    pub max_actions: u32,
    /// SIGTERM to SIGKILL when an action is cancelled or times out, e.g. 5 s.
    pub cancel_grace: Duration,
    /// Bytes of stdout and of stderr kept (the last ones), e.g. 65536.
    pub tail_bytes: usize,
    /// What runs an action: a real process, or nothing (for benchmarks of the dispatch path).
    pub executor: Executor,
    /// How actions are isolated, as the host decided (`None`: plain processes in the proc's
    /// own namespaces, without cgroups — in-process tests).
    pub isolation: Option<procmesh_protocol::messages::host::ActionIsolation>,
    /// Where to append each attempt's per-stage times, e.g. `/tmp/stages.jsonl`
    /// ([`ENV_STAGE_LOG`](crate::bootstrap::ENV_STAGE_LOG)); `None`: nothing is measured.
    pub stage_log: Option<PathBuf>,
}

/// What runs an action's process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Executor {
    /// The worker's executable in its sandbox: what production runs.
    #[default]
    Process,
    /// Nothing: each accepted attempt reports `Running`, then `Completed` with exit code 0, at
    /// once — no worker, no inputs, no sandbox, no process. Measures everything around the
    /// runner (`procmesh bench mesh`); chosen by `PROCMESH_EXECUTOR=noop` in a proc's
    /// environment.
    Noop,
}

impl std::str::FromStr for Executor {
    type Err = String;

    fn from_str(s: &str) -> Result<Executor, String> {
        match s {
            "process" => Ok(Executor::Process),
            "noop" => Ok(Executor::Noop),
            other => Err(format!(
                "unknown executor {other:?}: expected process or noop"
            )),
        }
    }
}

impl Default for RunnerConfig {
    fn default() -> RunnerConfig {
        let base = std::env::temp_dir().join("procmesh");
        RunnerConfig {
            proc_id: ProcId::new(HostAddr::Local("procmesh".into()), "proc")
                .expect("a valid proc name"),
            work_dir: base.join("proc"),
            workers_dir: base.join("workers"),
            max_actions: 0,
            cancel_grace: Duration::from_secs(5),
            tail_bytes: 64 * 1024,
            executor: Executor::Process,
            isolation: None,
            stage_log: None,
        }
    }
}

impl RunnerConfig {
    /// `max_actions` with 0 resolved to the number of logical CPUs.
    pub fn effective_max_actions(&self) -> u32 {
        if self.max_actions > 0 {
            return self.max_actions;
        }
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    }
}

/// Where the runner gets what it lacks. In production the agent asks the orchestrator
/// (`report_to`) for descriptors and its host to fetch blobs into the shared store.
pub trait Resolver: Send + Sync + 'static {
    /// The descriptor of worker `id` (the runner checks that it hashes to `id` and is valid).
    fn worker(
        &self,
        id: WorkerId,
        report_to: &ActorId,
    ) -> BoxFuture<'_, Result<WorkerDescriptor, String>>;
    /// Makes sure every blob of `hashes` is in the runner's store (only missing ones are asked
    /// for). `Ok` is not trusted: the runner checks the store afterwards.
    fn ensure_blobs(
        &self,
        hashes: Vec<BlobHash>,
        report_to: &ActorId,
    ) -> BoxFuture<'_, Result<(), String>>;
}

/// A transition to deliver to `report_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where it goes (the `report_to` of the submission).
    pub report_to: ActorId,
    /// What happened.
    pub transition: Transition,
}

pub(crate) use procmesh_transport::now;

/// An attempt held by the runner.
#[derive(Debug)]
struct Slot {
    state: ActionState,
    since: Timestamp,
    report_to: ActorId,
    cancel: watch::Sender<Option<CancelRequest>>,
}

#[derive(Debug, Default)]
struct Table {
    slots: HashMap<AttemptRef, Slot>,
    stopping: bool,
}

/// What every handle and attempt task shares.
struct Shared {
    config: RunnerConfig,
    max: u32,
    sandboxes: PathBuf,
    store: Arc<BlobStore>,
    resolver: Arc<dyn Resolver>,
    reports: mpsc::UnboundedSender<Report>,
    table: Mutex<Table>,
    /// How many slots are held; `shutdown` waits for 0.
    held: watch::Sender<usize>,
    workers: WorkerCache,
    isolator: Option<Arc<isolate::Isolator>>,
    cleaner: Cleaner,
    stage_log: Option<stages::StageLog>,
    handle: tokio::runtime::Handle,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records how many attempts are held. Only `shutdown` waits on it, for zero, so only
    /// reaching zero wakes anyone (a wake-up of every waiter list per attempt is not free).
    fn set_held(&self, n: usize) {
        self.held.send_if_modified(|held| {
            *held = n;
            n == 0
        });
    }

    /// Sends a report; a closed channel (the agent is gone) is logged, not fatal.
    fn send(&self, report_to: &ActorId, transition: Transition) {
        let report = Report {
            report_to: report_to.clone(),
            transition,
        };
        if self.reports.send(report).is_err() {
            warn!("the report channel is closed; a transition was dropped");
        }
    }

    /// Marks `attempt` running and reports it (PA-2).
    fn mark_running(&self, attempt: AttemptRef) {
        let at = now();
        let mut table = self.table();
        if let Some(slot) = table.slots.get_mut(&attempt) {
            slot.state = ActionState::Running;
            slot.since = at;
            let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Running, at)
                .with_detail(attempt::located(&self.config.proc_id));
            self.send(&slot.report_to, t);
        }
    }

    /// Starts cancelling `attempt` if held and not cancelled yet; whether it is held.
    fn cancel(
        &self,
        table: &Table,
        attempt: &AttemptRef,
        reason: String,
        grace: Duration,
        ends_as: ActionState,
    ) -> bool {
        let Some(slot) = table.slots.get(attempt) else {
            return false;
        };
        slot.cancel.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(CancelRequest {
                reason,
                grace,
                ends_as,
            });
            true
        });
        true
    }
}

/// Runs the actions of one proc. Cheap to clone: clones are handles to the same runner.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("proc_id", &self.shared.config.proc_id)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Runner {
    /// Starts a runner: creates its directories, wipes sandboxes an earlier run left (PA-9).
    /// Must be called inside a tokio runtime; transitions are sent on `reports`.
    pub fn start(
        config: RunnerConfig,
        store: Arc<BlobStore>,
        resolver: Arc<dyn Resolver>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<Runner, RunnerError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| RunnerError::NoRuntime)?;
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| RunnerError::Io { path, source }
        };
        let sandboxes = config.work_dir.join("sandboxes");
        remove_tree(&sandboxes).map_err(io(&sandboxes))?;
        std::fs::create_dir_all(&sandboxes).map_err(io(&sandboxes))?;
        // Absolute, so that the executable and the working directory of actions are too.
        let sandboxes = sandboxes.canonicalize().map_err(io(&sandboxes))?;
        std::fs::create_dir_all(&config.workers_dir).map_err(io(&config.workers_dir))?;
        let workers_dir = config
            .workers_dir
            .canonicalize()
            .map_err(io(&config.workers_dir))?;
        let max = config.effective_max_actions();
        let isolator = match &config.isolation {
            // The no-op executor starts no process: nothing to isolate, nothing to prepare.
            Some(_) if config.executor == Executor::Noop => None,
            Some(settings) => Some(Arc::new(
                isolate::Isolator::new(
                    settings.clone(),
                    &config.work_dir,
                    max,
                    config.proc_id.name(),
                )
                .map_err(io(&config.work_dir))?,
            )),
            None => None,
        };
        let stage_log = match &config.stage_log {
            Some(path) => Some(stages::StageLog::open(path).map_err(io(path))?),
            None => None,
        };
        info!(proc = %config.proc_id, max, sandboxes = %sandboxes.display(), "runner started");
        let (held, _) = watch::channel(0);
        Ok(Runner {
            shared: Arc::new(Shared {
                max,
                cleaner: Cleaner::new(sandboxes.clone(), handle.clone()),
                sandboxes,
                workers: WorkerCache::new(workers_dir),
                isolator,
                stage_log,
                config,
                store,
                resolver,
                reports,
                table: Mutex::new(Table::default()),
                held,
                handle,
            }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RunnerConfig {
        &self.shared.config
    }

    /// How many actions it runs at most and how many more it accepts now; actions being
    /// prepared count as running (PA-1).
    pub fn capacity(&self) -> Capacity {
        let table = self.shared.table();
        let held = u32::try_from(table.slots.len()).unwrap_or(u32::MAX);
        Capacity {
            max: self.shared.max,
            free: if table.stopping {
                0
            } else {
                self.shared.max.saturating_sub(held)
            },
        }
    }

    /// Takes a slot for `spec` at once, or refuses: `Stopping`, `InvalidAction` (SPEC-1,
    /// SPEC-3), `Duplicate` (this attempt is held here), `NoCapacity` (PA-1: never queued).
    /// Holds the attempt as `Submitting` before it returns, then prepares and runs it in the
    /// background, reporting `Running` and the final transition to `report_to` (PA-2).
    pub fn submit(&self, spec: ActionSpec, report_to: ActorId) -> Result<AttemptRef, AgentError> {
        let shared = &self.shared;
        let mut stages = stages::Stages::new(shared.stage_log.is_some());
        let attempt = spec.attempt_ref();
        let cancel_rx = {
            let mut table = shared.table();
            if table.stopping {
                return Err(AgentError::Stopping);
            }
            spec.action.validate().map_err(AgentError::InvalidAction)?;
            if table.slots.contains_key(&attempt) {
                return Err(AgentError::Duplicate(attempt));
            }
            if table.slots.len() >= shared.max as usize {
                return Err(AgentError::NoCapacity { max: shared.max });
            }
            let at = now();
            let (cancel, cancel_rx) = watch::channel(None);
            table.slots.insert(
                attempt,
                Slot {
                    state: ActionState::Submitting,
                    since: at,
                    report_to: report_to.clone(),
                    cancel,
                },
            );
            shared.set_held(table.slots.len());
            cancel_rx
        };
        stages.mark("receive");
        // One span per attempt; its trace ids come from the submission's `traceparent`
        // (validated above: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`).
        let tp = spec.action.traceparent.as_deref();
        let span = tracing::info_span!(
            "attempt",
            lsn = %attempt.lsn,
            attempt = %attempt.attempt,
            queue = spec.queue,
            trace_id = tp.and_then(|t| t.get(3..35)),
            parent_span_id = tp.and_then(|t| t.get(36..52)),
        );
        shared.handle.spawn(
            attempt::run(shared.clone(), spec, report_to, cancel_rx, stages).instrument(span),
        );
        Ok(attempt)
    }

    /// Starts cancelling `attempt` (SIGTERM to its group, `cancel_grace`, SIGKILL); it ends
    /// `Cancelled` (PA-3). `false` if it is not held here (never arrived, or already reported
    /// its end). A second cancel keeps the first reason.
    pub fn cancel(&self, attempt: AttemptRef, reason: String) -> bool {
        let shared = &self.shared;
        let table = shared.table();
        shared.cancel(
            &table,
            &attempt,
            reason,
            shared.config.cancel_grace,
            ActionState::Cancelled,
        )
    }

    /// Every attempt held here: `Submitting` while being prepared, then `Running`, each with
    /// the time it entered that state; sorted by attempt.
    pub fn status(&self) -> Vec<RunningAction> {
        let table = self.shared.table();
        let mut actions: Vec<RunningAction> = table
            .slots
            .iter()
            .map(|(attempt, slot)| RunningAction {
                action: *attempt,
                state: slot.state,
                since: slot.since,
            })
            .collect();
        actions.sort_by_key(|a| a.action);
        actions
    }

    /// Whether `shutdown` was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.table().stopping
    }

    /// Refuses new work, cancels every attempt with `grace` between SIGTERM and SIGKILL, waits
    /// for their final reports (bounded: `grace` plus a margin for draining and reporting), and
    /// deletes every sandbox (PA-9). Idempotent.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        let held = {
            let mut table = shared.table();
            table.stopping = true;
            let attempts: Vec<AttemptRef> = table.slots.keys().copied().collect();
            for attempt in &attempts {
                // PA-3b: not a client's cancel — the work is lost with this proc: `Abandoned`,
                // so the orchestrator retries it elsewhere.
                shared.cancel(
                    &table,
                    attempt,
                    "the proc agent is shutting down".into(),
                    grace,
                    ActionState::Abandoned,
                );
            }
            attempts.len()
        };
        info!(
            held,
            grace_ms = grace.as_millis() as u64,
            "runner shutting down"
        );
        let bound = grace + exec::DRAIN + Duration::from_secs(10);
        let mut rx = shared.held.subscribe();
        if tokio::time::timeout(bound, rx.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            warn!(
                left = shared.table().slots.len(),
                "attempts still held after the shutdown bound; deleting sandboxes anyway"
            );
        }
        if let Some(isolator) = &shared.isolator {
            // PA-12: the warm slots end with the runner (wardens, cgroups, roots).
            isolator.slots.clear();
        }
        let failed = shared.cleaner.flush().await;
        // Whatever else is there: sandboxes set aside a moment ago, leftovers of failed retries.
        let dir = shared.sandboxes.clone();
        let leftovers = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return 0;
            };
            entries
                .flatten()
                .filter(|e| remove_tree(&e.path()).is_err())
                .count()
        })
        .await
        .unwrap_or(0);
        if failed + leftovers > 0 {
            warn!(
                failed = failed + leftovers,
                "some sandboxes could not be deleted"
            );
        }
        info!("runner stopped");
    }

    /// Sandbox deletions still pending in the background.
    pub fn pending_cleanups(&self) -> usize {
        self.shared.cleaner.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let c = RunnerConfig::default();
        assert_eq!(c.max_actions, 0);
        assert_eq!(c.cancel_grace, Duration::from_secs(5));
        assert_eq!(c.tail_bytes, 65536);
        assert_eq!(c.proc_id.to_string(), "local!procmesh,proc");
        assert!(c.work_dir.ends_with("procmesh/proc"));
        assert!(c.workers_dir.ends_with("procmesh/workers"));
        assert_eq!(c.stage_log, None);
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(c.effective_max_actions(), cpus);
        let c = RunnerConfig {
            max_actions: 3,
            ..RunnerConfig::default()
        };
        assert_eq!(c.effective_max_actions(), 3);
    }
}
