//! Shared helpers of the proc-agent integration tests: an in-memory [`TestResolver`], a
//! [`Harness`] owning a runner in a temporary directory with its blob store, `/proc` scans,
//! and a fake orchestrator on a transport node ([`orchestrator`]). Every wait is for an event
//! (a reported transition, a condition on disk or in `/proc`) and bounded.
#![allow(dead_code)]

pub mod orchestrator;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procmesh_proc_agent::runner::{BoxFuture, Executor, Report, Resolver, Runner, RunnerConfig};
use procmesh_protocol::action::{ActionState, Attempt, AttemptRef, Lsn, Transition};
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::ids::{ActorId, HostAddr, ProcId};
use procmesh_protocol::messages::agent::{ActionSpec, AgentError};
use procmesh_protocol::spec::{ActionDef, InputFile, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_testkit::ScriptWorker;
use procmesh_transport::BlobStore;
use tokio::sync::{mpsc, watch};

/// How long a test waits for an attempt's final transition.
pub const FINAL_TIMEOUT: Duration = Duration::from_secs(60);
/// `PATH` given to test workers (actions inherit nothing from the runner).
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A resolver serving descriptors from memory; blobs must already be in the store.
#[derive(Debug)]
pub struct TestResolver {
    descriptors: Mutex<HashMap<WorkerId, WorkerDescriptor>>,
    /// While `true`, `worker` does not answer (an action stays in preparation).
    hold: watch::Sender<bool>,
    /// Blobs nobody has: `ensure_blobs` fails naming them.
    unobtainable: Mutex<HashSet<BlobHash>>,
    /// Workers whose resolution panics (a buggy resolver).
    panics: Mutex<HashSet<WorkerId>>,
    /// How many times `worker` was called.
    pub worker_calls: AtomicUsize,
    /// How many times `ensure_blobs` was called.
    pub blob_calls: AtomicUsize,
}

impl TestResolver {
    /// A resolver serving nothing yet.
    pub fn new() -> TestResolver {
        TestResolver {
            descriptors: Mutex::new(HashMap::new()),
            hold: watch::channel(false).0,
            unobtainable: Mutex::new(HashSet::new()),
            panics: Mutex::new(HashSet::new()),
            worker_calls: AtomicUsize::new(0),
            blob_calls: AtomicUsize::new(0),
        }
    }

    /// Serves `descriptor` under its id.
    pub fn add(&self, descriptor: WorkerDescriptor) -> WorkerId {
        let id = descriptor.id();
        self.descriptors.lock().unwrap().insert(id, descriptor);
        id
    }

    /// Serves `descriptor` under `id` (whatever its real id).
    pub fn add_as(&self, id: WorkerId, descriptor: WorkerDescriptor) {
        self.descriptors.lock().unwrap().insert(id, descriptor);
    }

    /// Makes `ensure_blobs` fail for `hash`, as if no node had it.
    pub fn unobtainable(&self, hash: BlobHash) {
        self.unobtainable.lock().unwrap().insert(hash);
    }

    /// Makes `worker` panic for `id`.
    pub fn panic_for(&self, id: WorkerId) {
        self.panics.lock().unwrap().insert(id);
    }

    /// Holds (`true`) or releases every `worker` call.
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }
}

impl Default for TestResolver {
    fn default() -> TestResolver {
        TestResolver::new()
    }
}

impl Resolver for TestResolver {
    fn worker(
        &self,
        id: WorkerId,
        _report_to: &ActorId,
    ) -> BoxFuture<'_, Result<WorkerDescriptor, String>> {
        Box::pin(async move {
            self.worker_calls.fetch_add(1, Ordering::SeqCst);
            let mut rx = self.hold.subscribe();
            let _ = rx.wait_for(|held| !held).await;
            let panics = self.panics.lock().unwrap().contains(&id);
            assert!(!panics, "test resolver told to panic for {id}");
            self.descriptors
                .lock()
                .unwrap()
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("unknown worker {id}"))
        })
    }

    fn ensure_blobs(
        &self,
        hashes: Vec<BlobHash>,
        _report_to: &ActorId,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.blob_calls.fetch_add(1, Ordering::SeqCst);
            let unobtainable = self.unobtainable.lock().unwrap();
            match hashes.iter().find(|h| unobtainable.contains(h)) {
                Some(h) => Err(format!("no node has blob {h}")),
                // Otherwise it claims success even for blobs it lacks: the runner must check.
                None => Ok(()),
            }
        })
    }
}

/// A runner in a temporary directory, with its store, resolver and report channel.
pub struct Harness {
    /// Everything lives in here.
    pub dir: tempfile::TempDir,
    /// The shared blob store.
    pub store: Arc<BlobStore>,
    /// The resolver the runner asks.
    pub resolver: Arc<TestResolver>,
    /// The runner.
    pub runner: Runner,
    /// Where transitions are reported to.
    pub report_to: ActorId,
    reports: mpsc::UnboundedReceiver<Report>,
    seen: HashMap<AttemptRef, Vec<Transition>>,
    next_lsn: u64,
}

impl Harness {
    /// A runner with the defaults changed by `configure`.
    pub async fn new(configure: impl FnOnce(&mut RunnerConfig)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::in_dir(dir, configure).await
    }

    /// A runner in `dir` (which may hold leftovers of an earlier run).
    pub async fn in_dir(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut RunnerConfig),
    ) -> Harness {
        let workers_dir = dir.path().join("workers");
        Harness::with_workers_dir(dir, workers_dir, configure).await
    }

    /// A runner in `dir` whose worker cache is `workers_dir` (possibly elsewhere, possibly
    /// shared with another runner).
    pub async fn with_workers_dir(
        dir: tempfile::TempDir,
        workers_dir: PathBuf,
        configure: impl FnOnce(&mut RunnerConfig),
    ) -> Harness {
        let store = BlobStore::open_shared(dir.path().join("store")).expect("store");
        let resolver = Arc::new(TestResolver::new());
        let proc_id = ProcId::new(HostAddr::Local("test-host".into()), "worker-1").unwrap();
        let mut config = RunnerConfig {
            proc_id,
            work_dir: dir.path().join("proc"),
            workers_dir,
            max_actions: 4,
            cancel_grace: Duration::from_millis(500),
            tail_bytes: 64 * 1024,
            executor: Executor::Process,
            isolation: None,
            stage_log: None,
        };
        configure(&mut config);
        let (tx, reports) = mpsc::unbounded_channel();
        let runner = Runner::start(config, store.clone(), resolver.clone(), tx).expect("start");
        let report_to = ActorId::new(
            ProcId::new(HostAddr::Local("orchestrator".into()), "service").unwrap(),
            "orchestrator",
        )
        .unwrap();
        Harness {
            dir,
            store,
            resolver,
            runner,
            report_to,
            reports,
            seen: HashMap::new(),
            next_lsn: 1,
        }
    }

    /// The root of the temporary directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where the runner keeps its sandboxes.
    pub fn sandboxes(&self) -> PathBuf {
        self.dir.path().join("proc").join("sandboxes")
    }

    /// The worker cache.
    pub fn workers_dir(&self) -> PathBuf {
        self.runner.config().workers_dir.clone()
    }

    /// Another runner (a sibling proc) in `<root>/<name>`, sharing this one's blob store,
    /// worker cache and resolver, reporting to its own channel.
    pub fn sibling(&self, name: &str) -> (Runner, mpsc::UnboundedReceiver<Report>) {
        let mut config = self.runner.config().clone();
        config.proc_id = ProcId::new(HostAddr::Local("test-host".into()), name).unwrap();
        config.work_dir = self.dir.path().join(name);
        let (tx, rx) = mpsc::unbounded_channel();
        let runner =
            Runner::start(config, self.store.clone(), self.resolver.clone(), tx).expect("start");
        (runner, rx)
    }

    /// A worker file holding `content`, stored.
    pub async fn file(&self, path: &str, content: &[u8], executable: bool) -> WorkerFile {
        let hash = self.store.put_bytes(content).await.expect("put");
        WorkerFile {
            path: path.into(),
            hash,
            size: content.len() as u64,
            executable,
        }
    }

    /// Registers a worker whose executable `bin/tool` is the shell script `body` (after
    /// `#!/bin/sh`), with `PATH` set.
    pub async fn script_worker(&self, body: &str) -> WorkerId {
        let worker = ScriptWorker::sh(body)
            .at("bin/tool")
            .env("PATH", PATH)
            .store(&self.store)
            .await;
        self.resolver.add(worker)
    }

    /// An input at `path` holding `content`, stored.
    pub async fn input(&self, path: &str, content: &[u8]) -> InputFile {
        let hash = self.store.put_bytes(content).await.expect("put");
        InputFile {
            path: path.into(),
            hash,
            size: content.len() as u64,
        }
    }

    /// The next attempt's spec for `action`: a fresh LSN, attempt 1.
    pub fn spec(&mut self, action: ActionDef) -> ActionSpec {
        let lsn = Lsn(self.next_lsn);
        self.next_lsn += 1;
        ActionSpec {
            lsn,
            attempt: Attempt::FIRST,
            priority: 0,
            queue: 0,
            action,
        }
    }

    /// Submits `action` as a new attempt.
    pub fn submit(&mut self, action: ActionDef) -> Result<AttemptRef, AgentError> {
        let spec = self.spec(action);
        self.runner.submit(spec, self.report_to.clone())
    }

    /// Takes every report that arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(report) = self.reports.try_recv() {
            self.record(report);
        }
    }

    fn record(&mut self, report: Report) {
        assert_eq!(
            report.report_to, self.report_to,
            "reported to the wrong actor"
        );
        self.seen
            .entry(report.transition.attempt_ref())
            .or_default()
            .push(report.transition);
    }

    /// Waits (up to `timeout`) for a transition of `attempt` into a state `want` accepts, and
    /// returns it.
    pub async fn wait_for(
        &mut self,
        attempt: AttemptRef,
        want: impl Fn(ActionState) -> bool,
        timeout: Duration,
    ) -> Transition {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(t) = self
                .seen
                .get(&attempt)
                .and_then(|ts| ts.iter().find(|t| want(t.state)))
            {
                return t.clone();
            }
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.record(report),
                Ok(None) => panic!("report channel closed while waiting for {attempt}"),
                Err(_) => panic!(
                    "{attempt}: no awaited transition within {timeout:?}; seen {:?}",
                    self.seen.get(&attempt)
                ),
            }
        }
    }

    /// Waits for `attempt` to run.
    pub async fn wait_running(&mut self, attempt: AttemptRef) -> Transition {
        self.wait_for(attempt, |s| s == ActionState::Running, FINAL_TIMEOUT)
            .await
    }

    /// Waits for `attempt`'s final transition; returns all its transitions, in order.
    pub async fn wait_final(&mut self, attempt: AttemptRef) -> Vec<Transition> {
        self.wait_for(attempt, ActionState::is_terminal, FINAL_TIMEOUT)
            .await;
        self.seen.get(&attempt).cloned().unwrap_or_default()
    }

    /// Every transition of `attempt` seen so far (after taking what arrived).
    pub fn transitions(&mut self, attempt: AttemptRef) -> Vec<Transition> {
        self.drain();
        self.seen.get(&attempt).cloned().unwrap_or_default()
    }

    /// Forgets what was seen of `attempt` (before submitting the same attempt again).
    pub fn forget(&mut self, attempt: AttemptRef) {
        self.drain();
        self.seen.remove(&attempt);
    }

    /// Submits `action` and waits for its end; returns the final transition after checking the
    /// sequence of states (PA-2).
    pub async fn run(&mut self, action: ActionDef) -> Transition {
        let attempt = self.submit(action).expect("submit");
        let all = self.wait_final(attempt).await;
        check_sequence(&all);
        all.last().cloned().expect("a final transition")
    }
}

/// Checks PA-2 on the transitions of one attempt: [Running], one terminal state (no
/// `Submitting` echo), each with the location and non-decreasing times.
pub fn check_sequence(all: &[Transition]) {
    let states: Vec<ActionState> = all.iter().map(|t| t.state).collect();
    assert!(
        !states.is_empty() && states.len() <= 2,
        "unexpected transitions {states:?}"
    );
    if states.len() == 2 {
        assert_eq!(states[0], ActionState::Running, "{states:?}");
    }
    assert!(states.last().unwrap().is_terminal(), "{states:?}");
    assert_eq!(
        states.iter().filter(|s| s.is_terminal()).count(),
        1,
        "{states:?}"
    );
    for pair in all.windows(2) {
        assert!(pair[0].at <= pair[1].at, "times go back: {all:?}");
    }
    for t in all {
        assert!(t.detail.location.is_some(), "no location in {t:?}");
    }
}

pub use procmesh_testkit::eventually;

/// The entries of a directory (names), empty if it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A marker unique to this test process and call, for `/proc` scans.
pub fn marker(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Live (not zombie) processes whose environment holds `PM_TEST_MARKER=<marker>`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("PM_TEST_MARKER={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let has = env
                .split(|b| *b == 0)
                .any(|entry| entry == needle.as_bytes());
            has && !is_zombie(*pid)
        })
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name in parentheses, which may itself hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|state| state == "Z" || state == "X")
}
