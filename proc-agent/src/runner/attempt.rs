//! One attempt, from its slot to its final report: resolve the worker, fetch the inputs,
//! fill the sandbox, run the process, collect the outputs, report, free the slot, hand the
//! sandbox to the cleaner.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use procmesh_protocol::action::{
    ActionState, AttemptRef, ExitStatus, RanProgram, Transition, TransitionDetail,
};
use procmesh_protocol::ids::{ActorId, ProcId};
use procmesh_protocol::messages::agent::ActionSpec;
use procmesh_protocol::messages::host::IsolationMode;
use tokio::sync::watch;
use tracing::{debug, error, info};

use super::error::PrepareError;
use super::exec::{self, CancelRequest, Ending, Finished, Start, StartError};
use super::isolate;
use super::outputs;
use super::sandbox::Sandbox;
use super::slots::Warm;
use super::stages::Stages;
use super::worker_cache::Worker;
use super::{now, Executor, Shared};

/// Most bytes a sandbox copies (`none` mode) on the runtime's own thread.
const INLINE_COPY_BYTES: u64 = 256 * 1024;

/// A detail carrying only the location.
pub(super) fn located(proc_id: &ProcId) -> TransitionDetail {
    TransitionDetail {
        location: Some(proc_id.clone()),
        ..TransitionDetail::default()
    }
}

/// How an attempt ended, before PA-3 is applied.
struct Outcome {
    state: ActionState,
    detail: TransitionDetail,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Outcome {
        Outcome {
            state: ActionState::Failed,
            detail: TransitionDetail {
                reason: Some(reason.into()),
                ..TransitionDetail::default()
            },
        }
    }

    /// The host could not run it (ISO: a sandbox or cgroup could not be set up): not the
    /// action's failure, so it ends `Abandoned` and is retried.
    fn infrastructure(reason: impl Into<String>) -> Outcome {
        Outcome {
            state: ActionState::Abandoned,
            detail: TransitionDetail {
                reason: Some(reason.into()),
                ..TransitionDetail::default()
            },
        }
    }

    fn cancelled(request: CancelRequest) -> Outcome {
        Outcome {
            state: request.ends_as,
            detail: TransitionDetail {
                reason: Some(cancel_reason(&request)),
                ..TransitionDetail::default()
            },
        }
    }
}

fn cancel_reason(request: &CancelRequest) -> String {
    if request.reason.is_empty() {
        "cancelled".to_owned()
    } else {
        request.reason.clone()
    }
}

/// Reports the end exactly once (PA-2): by [`finish`](Self::finish), or from `Drop` if the
/// task panicked or was aborted before it got there.
struct FinishGuard {
    shared: Arc<Shared>,
    attempt: AttemptRef,
    sandbox: Option<PathBuf>,
    done: bool,
    stages: Stages,
}

impl FinishGuard {
    /// Sets the sandbox aside, then — in one critical section — frees the slot and sends the
    /// final transition (PA-1), turning it into `Cancelled` if a cancel was accepted (PA-3);
    /// then schedules the sandbox's deletion (PA-9).
    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let shared = &self.shared;
        let trash = self.sandbox.take().map(|s| shared.cleaner.set_aside(&s));
        let Outcome {
            mut state,
            mut detail,
        } = outcome;
        {
            let mut table = shared.table();
            if let Some(slot) = table.slots.remove(&self.attempt) {
                if let Some(request) = slot.cancel.borrow().clone() {
                    if state != request.ends_as {
                        // PA-3: accepted cancel wins, whatever the process did meanwhile.
                        debug!(was = %state, now = %request.ends_as, "cancel accepted before the end");
                        state = request.ends_as;
                        detail.reason = Some(cancel_reason(&request));
                        detail.outputs.clear();
                    }
                }
                detail.location = Some(shared.config.proc_id.clone());
                let t = Transition::new(self.attempt.lsn, self.attempt.attempt, state, now())
                    .with_detail(detail.clone());
                shared.send(&slot.report_to, t);
            }
            shared.set_held(table.slots.len());
        }
        self.stages.mark("report");
        info!(
            state = %state,
            exit = ?detail.exit,
            cpu_ms = detail.cpu_ms,
            reason = detail.reason.as_deref().unwrap_or(""),
            "attempt ended"
        );
        if let Some(trash) = trash {
            shared.cleaner.schedule(trash);
        }
        self.stages.mark("cleanup");
        if let Some(log) = &shared.stage_log {
            log.write(self.attempt, &self.stages);
        }
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if !self.done {
            error!(attempt = %self.attempt, "attempt task ended without a result");
            self.finish(Outcome::failed(
                "internal error: the runner's attempt task ended without a result",
            ));
        }
    }
}

/// Waits until a cancel request is present; never returns if none comes.
async fn cancelled(cancel: &mut watch::Receiver<Option<CancelRequest>>) -> CancelRequest {
    loop {
        if let Some(request) = cancel.borrow_and_update().clone() {
            return request;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `fut` unless a cancel comes first.
async fn unless_cancelled<T>(
    cancel: &mut watch::Receiver<Option<CancelRequest>>,
    fut: impl Future<Output = T>,
) -> Result<T, CancelRequest> {
    tokio::select! {
        biased;
        request = cancelled(cancel) => Err(request),
        value = fut => Ok(value),
    }
}

/// Drives one attempt to its final report.
pub(super) async fn run(
    shared: Arc<Shared>,
    spec: ActionSpec,
    report_to: ActorId,
    mut cancel: watch::Receiver<Option<CancelRequest>>,
    mut stages: Stages,
) {
    stages.mark("slot");
    let mut guard = FinishGuard {
        shared: shared.clone(),
        attempt: spec.attempt_ref(),
        sandbox: None,
        done: false,
        stages,
    };
    let outcome = if shared.config.executor == Executor::Noop {
        noop(&shared, &spec)
    } else {
        // Boxed: the whole path of a real action is a large future, and a task holds its
        // future inline, so every spawn would allocate and copy all of it.
        Box::pin(drive(
            &shared,
            &spec,
            &report_to,
            &mut cancel,
            &mut guard.sandbox,
            &mut guard.stages,
        ))
        .await
    };
    guard.finish(outcome);
}

/// The no-op executor: `Running`, then completed with exit code 0, starting nothing.
fn noop(shared: &Shared, spec: &ActionSpec) -> Outcome {
    shared.mark_running(spec.attempt_ref());
    Outcome {
        state: ActionState::Completed,
        detail: TransitionDetail {
            exit: Some(ExitStatus::Code(0)),
            ..TransitionDetail::default()
        },
    }
}

async fn drive(
    shared: &Arc<Shared>,
    spec: &ActionSpec,
    report_to: &ActorId,
    cancel: &mut watch::Receiver<Option<CancelRequest>>,
    sandbox_slot: &mut Option<PathBuf>,
    stages: &mut Stages,
) -> Outcome {
    // The worker.
    let worker = match unless_cancelled(
        cancel,
        shared
            .workers
            .get(spec.worker(), &*shared.resolver, report_to, &shared.store),
    )
    .await
    {
        Err(request) => return Outcome::cancelled(request),
        Ok(Err(e)) => return Outcome::failed(e.to_string()),
        Ok(Ok(worker)) => worker,
    };
    stages.mark("worker");

    // The input blobs.
    let missing: Vec<_> = spec
        .action
        .blobs()
        .into_iter()
        .filter(|h| !shared.store.contains(h))
        .collect();
    if !missing.is_empty() {
        let n = missing.len();
        match unless_cancelled(cancel, shared.resolver.ensure_blobs(missing, report_to)).await {
            Err(request) => return Outcome::cancelled(request),
            Ok(Err(message)) => {
                return Outcome::failed(
                    PrepareError::Resolver {
                        what: format!("fetching {n} input blob(s)"),
                        message,
                    }
                    .to_string(),
                )
            }
            Ok(Ok(())) => {}
        }
    }

    stages.mark("inputs");

    // The sandbox: not cancellable half-way (it is local and bounded); checked right after.
    // A copy that does not match its hash means a damaged worker cache entry (ISO-3): it is
    // discarded and built again from the store, once.
    let share = shared.isolator.as_ref().is_none_or(|i| i.shares_files());
    let mut worker = worker;
    let mut rebuilt = false;
    // The attempt's name: its sandbox, its root directory.
    let name = format!("{}-{}", spec.lsn, spec.attempt);
    let sandbox = loop {
        let name = name.clone();
        let (dir, store, w, inputs) = (
            shared.sandboxes.clone(),
            shared.store.clone(),
            worker.clone(),
            spec.action.inputs.clone(),
        );
        let fill = move || {
            let sandbox = Sandbox::create(&dir, &name)?;
            let root = sandbox.root().to_path_buf();
            let filled = sandbox.materialise(&w, &inputs, &store, share);
            Ok::<_, PrepareError>((root, filled.map(|()| sandbox)))
        };
        // Links (or a few small copies) are a handful of system calls: done here, without a
        // hop to a blocking thread; copying and hashing larger files goes to one.
        let copied: u64 = if share {
            0
        } else {
            worker.descriptor.files.iter().map(|f| f.size).sum::<u64>()
                + spec.action.inputs.iter().map(|i| i.size).sum::<u64>()
        };
        let prepared = if copied <= INLINE_COPY_BYTES {
            Ok(fill())
        } else {
            tokio::task::spawn_blocking(fill).await
        };
        match prepared {
            Err(join) => {
                return Outcome::failed(format!("internal error preparing the sandbox: {join}"))
            }
            Ok(Err(e)) => return Outcome::failed(e.to_string()),
            Ok(Ok((root, filled))) => {
                *sandbox_slot = Some(root);
                match filled {
                    Ok(sandbox) => break sandbox,
                    Err(PrepareError::BlobMismatch { hash, reason })
                        if !rebuilt && worker.descriptor.files.iter().any(|f| f.hash == hash) =>
                    {
                        tracing::warn!(%hash, %reason, worker = %worker.id, "a cached worker file was changed: rebuilding the cache entry");
                        rebuilt = true;
                        shared.workers.discard(&worker).await;
                        worker = match shared
                            .workers
                            .get(spec.worker(), &*shared.resolver, report_to, &shared.store)
                            .await
                        {
                            Ok(worker) => worker,
                            Err(e) => return Outcome::failed(e.to_string()),
                        };
                    }
                    Err(e) => {
                        if matches!(
                            e,
                            PrepareError::Io { .. }
                                | PrepareError::UnsafePath { .. }
                                | PrepareError::BlobMismatch { .. }
                        ) {
                            // The cache entry may be gone or damaged: look at the disk next time.
                            shared.workers.forget(&worker.id);
                        }
                        return Outcome::failed(e.to_string());
                    }
                }
            }
        }
    };
    if let Some(request) = cancel.borrow().clone() {
        return Outcome::cancelled(request);
    }

    // What runs (ISO-4), in which cgroup (ISO-1), with which environment (ISO-5).
    let iso = shared.isolator.as_deref();
    let namespaced = iso.is_some_and(|i| i.mode() == IsolationMode::Namespaces);
    let (program, program_hash) = match &worker.descriptor.host_program {
        Some(path) => {
            // Canonicalising and hashing a host program is file I/O: off the runtime.
            let roots = iso.map(|i| i.host_programs().to_vec()).unwrap_or_default();
            let path = path.clone();
            let resolved =
                tokio::task::spawn_blocking(move || isolate::resolve_host_program(&path, &roots))
                    .await;
            match resolved {
                Ok(Ok(resolved)) => resolved,
                Ok(Err(reason)) => return Outcome::failed(reason),
                Err(join) => {
                    return Outcome::failed(format!("internal error resolving the program: {join}"))
                }
            }
        }
        None => {
            let exe = &worker.descriptor.executable;
            let hash = worker
                .descriptor
                .files
                .iter()
                .find(|f| &f.path == exe)
                .map(|f| f.hash)
                .unwrap_or_else(|| procmesh_protocol::BlobHash::of(b""));
            let base = if namespaced {
                PathBuf::from(isolate::SANDBOX_MOUNT)
            } else {
                sandbox.root().to_path_buf()
            };
            (base.join(exe), hash)
        }
    };
    stages.mark("sandbox");

    // The slot (PA-12): its cgroup with this action's limits (ISO-1), its warm sandbox.
    let mut warm = match &shared.isolator {
        Some(iso) => match iso
            .slots
            .take(iso, &iso.limits(&spec.action.resources))
            .await
        {
            Ok(warm) => Some(WarmGuard {
                iso: Arc::clone(iso),
                warm: Some(warm),
                meter: None,
            }),
            Err(reason) => return Outcome::infrastructure(reason),
        },
        None => None,
    };
    let env = environment(&worker, spec, &sandbox, namespaced);
    let mut own_root = None;
    let start = if namespaced {
        let iso = iso.expect("namespaced implies an isolator");
        let warm = warm.as_ref().and_then(WarmGuard::warm);
        if let Err(e) = iso.prepare_outputs(&sandbox.outputs()) {
            return Outcome::infrastructure(format!("preparing Outputs/: {e}"));
        }
        match warm.and_then(Warm::slot) {
            Some(slot) => Start::Warm {
                slot,
                launch: Box::new(iso.launch(
                    program.clone(),
                    spec.action.args.clone(),
                    env,
                    sandbox.root(),
                )),
            },
            None => {
                let root = match iso.new_root(&name) {
                    Ok(root) => root,
                    Err(e) => {
                        return Outcome::infrastructure(format!("preparing the sandbox root: {e}"))
                    }
                };
                own_root = Some(name.clone());
                let spec = iso.spec(isolate::Launch {
                    program: program.clone(),
                    args: spec.action.args.clone(),
                    env,
                    sandbox: sandbox.root(),
                    root: &root,
                    cgroup: warm.and_then(Warm::cgroup),
                });
                Start::Sandboxed {
                    exe: iso.exe().to_path_buf(),
                    spec: Box::new(spec),
                    netns: iso.netns(),
                }
            }
        }
    } else {
        match warm
            .as_ref()
            .and_then(WarmGuard::warm)
            .and_then(Warm::cgroup)
        {
            // ISO-1: in its cgroup before it execs, so nothing it forks starts outside.
            Some(cgroup) => match cgroup.open_procs() {
                Ok(procs) => Start::Joined(Box::new(exec::Joined {
                    argv: std::iter::once(program.display().to_string())
                        .chain(spec.action.args.iter().cloned())
                        .collect(),
                    program: program.clone(),
                    env,
                    cwd: sandbox.root().to_path_buf(),
                    cgroup_procs: procs,
                })),
                Err(e) => {
                    return Outcome::infrastructure(format!("joining the action's cgroup: {e}"))
                }
            },
            None => Start::Plain(command(&program, spec, &sandbox, env)),
        }
    };
    if let Some(warm) = &mut warm {
        warm.start_meter();
    }
    stages.mark("cgroup");

    // The process.
    let timeout = spec.action.timeout_ms.map(Duration::from_millis);
    let attempt = spec.attempt_ref();
    let mut spawned = None;
    let finished = exec::execute(
        start,
        shared.config.tail_bytes,
        timeout,
        shared.config.cancel_grace,
        cancel,
        |pid| {
            debug!(pid, "action started");
            spawned = Some(std::time::Instant::now());
            shared.mark_running(attempt);
        },
    )
    .await;
    stages.mark_split("spawn", spawned, "wait");
    let mut finished = match finished {
        Ok(finished) => finished,
        Err(StartError::Setup(reason)) => {
            return Outcome::infrastructure(format!("sandbox setup failed: {reason}"))
        }
        Err(StartError::Slot(reason)) => {
            if let Some(warm) = &mut warm {
                warm.broken();
            }
            return Outcome::infrastructure(reason);
        }
        Err(StartError::Io(e)) => {
            return Outcome::failed(format!("could not start {}: {e}", program.display()))
        }
    };
    let ran = RanProgram {
        executable: program.display().to_string(),
        blake3: program_hash,
        pid: finished.identity.pid,
        start_time: finished.identity.start_time,
    };
    let usage = warm.and_then(|warm| warm.finish(finished.exiting.take()));
    if let (Some(name), Some(iso)) = (own_root, iso) {
        iso.release_root(&name);
    }
    let memory_limit = iso.and_then(|i| i.memory_limit(&spec.action.resources));
    let mut outcome = ended(shared, finished, &sandbox, usage, memory_limit).await;
    stages.mark("outputs");
    outcome.detail.ran = Some(Box::new(ran));
    outcome
}

/// The attempt's warm slot: given back when the attempt is over — after its figures are read
/// and its cgroup is empty — even if the attempt's task is dropped half-way (ISO-1, PA-12).
struct WarmGuard {
    iso: Arc<isolate::Isolator>,
    warm: Option<Warm>,
    meter: Option<procmesh_sys::cgroup::Meter>,
}

impl WarmGuard {
    fn warm(&self) -> Option<&Warm> {
        self.warm.as_ref()
    }

    /// Notes where this action's figures start (right before it is launched).
    fn start_meter(&mut self) {
        self.meter = self.warm.as_ref().and_then(Warm::cgroup).map(|c| c.meter());
    }

    /// The slot failed: it is dropped instead of reused.
    fn broken(&mut self) {
        if let Some(warm) = self.warm.take() {
            self.iso.slots.drop_broken(warm);
        }
    }

    /// The whole tree's figures; the slot goes back (emptied first) — once `exiting`, the
    /// slot's init that reported the action's end, was reaped (its namespaces are gone).
    fn finish(
        mut self,
        exiting: Option<procmesh_sys::Child>,
    ) -> Option<procmesh_sys::cgroup::CgroupStats> {
        let warm = self.warm.take()?;
        let stats = match (warm.cgroup(), self.meter.take()) {
            (Some(cgroup), Some(meter)) => Some(cgroup.since(meter)),
            _ => None,
        };
        match exiting {
            None => {
                self.iso.slots.give_back(warm, None);
            }
            Some(init) => {
                let iso = self.iso.clone();
                tokio::spawn(async move {
                    init.wait().await;
                    iso.slots.give_back(warm, None);
                });
            }
        }
        stats
    }
}

impl Drop for WarmGuard {
    fn drop(&mut self) {
        if let Some(warm) = self.warm.take() {
            self.iso.slots.give_back(warm, None);
        }
    }
}

/// The variable telling an action its LSN, e.g. `42`.
pub const ENV_LSN: &str = "PROCMESH_LSN";
/// The variable telling an action its attempt number, the first being `1`.
pub const ENV_ATTEMPT: &str = "PROCMESH_ATTEMPT";

/// The environment of the action (PA-10, ISO-5).
fn environment(
    worker: &Worker,
    spec: &ActionSpec,
    sandbox: &Sandbox,
    namespaced: bool,
) -> BTreeMap<String, String> {
    let (home, tmp) = if namespaced {
        ("/tmp".to_owned(), "/tmp".to_owned())
    } else {
        (
            sandbox.root().display().to_string(),
            std::env::temp_dir().display().to_string(),
        )
    };
    isolate::environment(
        [
            ("PATH", isolate::DEFAULT_PATH.to_owned()),
            ("HOME", home),
            ("TMPDIR", tmp),
        ],
        &worker.descriptor.env,
        &spec.action.env,
        [
            (ENV_LSN, spec.lsn.to_string()),
            (ENV_ATTEMPT, spec.attempt.to_string()),
        ],
        spec.action.traceparent.as_deref(),
    )
}

/// The command of a plain (not namespaced) action: `program`, its arguments and exactly `env`,
/// in the sandbox, in its own process group.
fn command(
    program: &std::path::Path,
    spec: &ActionSpec,
    sandbox: &Sandbox,
    env: BTreeMap<String, String>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(&spec.action.args)
        .env_clear()
        .envs(env)
        .current_dir(sandbox.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

fn describe_exit(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("exited with code {code}"),
        ExitStatus::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(signal) => format!("killed by signal {sig} ({})", signal.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
    }
}

/// Turns a finished process into the outcome, collecting outputs if it ran to its own end.
async fn ended(
    shared: &Shared,
    finished: Finished,
    sandbox: &Sandbox,
    usage: Option<procmesh_sys::cgroup::CgroupStats>,
    memory_limit: Option<u64>,
) -> Outcome {
    let Finished {
        ending,
        exit,
        stdout_tail,
        stderr_tail,
        netns,
        identity: _,
        exiting: _,
    } = finished;
    // The cgroup is gone by now: the network namespace may serve the next action.
    drop(netns);
    // The whole tree's figures when the cgroup has them, else the leader's rusage.
    let cpu_ms = usage.as_ref().and_then(|u| u.cpu_ms).unwrap_or(exit.cpu_ms);
    let peak = usage
        .as_ref()
        .and_then(|u| u.peak_memory_bytes)
        .unwrap_or(exit.peak_rss_bytes);
    let oom = usage.as_ref().is_some_and(|u| u.oom_kills > 0);
    let mut detail = TransitionDetail {
        exit: Some(exit.status),
        cpu_ms: Some(cpu_ms),
        peak_memory_bytes: Some(peak),
        stdout_tail,
        stderr_tail,
        ..TransitionDetail::default()
    };
    if oom && !exit.status.success() && !matches!(ending, Ending::Cancelled(_)) {
        let limit = memory_limit.map_or_else(String::new, |l| format!(" of {l} bytes"));
        detail.reason = Some(format!(
            "oom: killed by its memory limit{limit} ({})",
            describe_exit(exit.status)
        ));
        return Outcome {
            state: ActionState::Failed,
            detail,
        };
    }
    let state = match ending {
        Ending::Cancelled(request) => {
            detail.reason = Some(cancel_reason(&request));
            request.ends_as
        }
        Ending::TimedOut(after) => {
            detail.reason = Some(format!(
                "timed out after {} ms ({})",
                after.as_millis(),
                describe_exit(exit.status)
            ));
            ActionState::Failed
        }
        Ending::Exited => {
            // Outputs of a run that ended by itself, failed or not: they help diagnose.
            let mut notes = Vec::new();
            let state = if exit.status.success() {
                ActionState::Completed
            } else {
                notes.push(describe_exit(exit.status));
                ActionState::Failed
            };
            match outputs::collect(sandbox.outputs(), &shared.store).await {
                Ok(collected) => {
                    notes.extend(collected.note());
                    detail.outputs = collected.files;
                    detail.reason = (!notes.is_empty()).then(|| notes.join("; "));
                    state
                }
                Err(e) => {
                    notes.push(format!("collecting outputs: {e}"));
                    detail.reason = Some(notes.join("; "));
                    ActionState::Failed
                }
            }
        }
    };
    Outcome { state, detail }
}
