//! The journal's place in the shell: recovery at start (snapshot, then the log tail, replayed
//! through [`Core::handle`]), and the writer — one thread that owns the [`Journal`], commits
//! whatever inputs queued up while it was busy in one transaction (group commit), stores
//! snapshots, and tells the actor how far it got.
//!
//! ```text
//!  actor ─ Job::Record(seq, bytes) ─┐  committer thread: recv one, drain the rest,
//!        ─ Job::Snapshot(bytes) ────┼─▶ append them in ONE transaction (fsync by default),
//!                                   │   snapshot in order ─▶ Internal::Committed(last seq)
//! ```
//!
//! A snapshot is taken when the log has grown by as many bytes as the last snapshot had (and at
//! least `snapshot_min_bytes`), so its cost stays proportional to what was logged and the file
//! stays bounded by about twice the live state.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use kameo::actor::WeakActorRef;
use procmesh_orchestrator_core::{Core, CoreConfig, Input, Logged, Replay};
use procmesh_protocol::Timestamp;
use serde::Serialize;

use crate::journal::{Journal, JournalError, JournalOptions};
use crate::service::{Internal, Service};

/// Most jobs one transaction takes.
const MAX_GROUP: usize = 16_384;

/// Why the journal could not be recovered; the file is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The file could not be opened, or is not a journal (JNL-2).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A snapshot or a record does not decode.
    #[error("journal {path}: {what} cannot be decoded: {error}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Which part.
        what: String,
        /// The decoder's words.
        error: String,
    },
}

/// What a recovery found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovered {
    /// Whether a snapshot was loaded.
    pub snapshot: bool,
    /// Records replayed after it.
    pub records: u64,
    /// Unretired actions in the recovered state.
    pub actions: usize,
}

/// One job of the committer.
enum Job {
    Record(u64, Vec<u8>),
    Snapshot(Vec<u8>),
}

/// The journal writer, as the actor holds it.
pub(crate) struct Log {
    /// Until [`Log::start`]: the journal, then owned by the thread.
    journal: Option<Journal>,
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<Result<u64, String>>>,
    seq: u64,
    since_snapshot: u64,
    snapshot_every: u64,
    snapshot_min: u64,
}

#[derive(Serialize)]
struct LoggedRef<'a> {
    now: Timestamp,
    input: &'a Input,
}

fn encode(now: Timestamp, input: &Input) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(&LoggedRef { now, input }).map_err(|e| e.to_string())
}

/// Opens the journal at `path`, rebuilds the core from it, and journals what the restart itself
/// decides (new settings, ORC-27).
pub(crate) fn recover(
    path: &Path,
    options: JournalOptions,
    config: CoreConfig,
    snapshot_min: u64,
    now: Timestamp,
) -> Result<(Core, Log, Recovered), RecoverError> {
    let (mut journal, recovery) = Journal::open(path, options)?;
    let decode_error = |what: String, error: String| RecoverError::Decode {
        path: path.to_owned(),
        what,
        error,
    };
    let mut found = Recovered {
        snapshot: recovery.snapshot.is_some(),
        records: recovery.records.len() as u64,
        actions: 0,
    };
    let (mut core, snapshot_bytes) = match &recovery.snapshot {
        Some(snapshot) => (
            rmp_serde::from_slice::<Core>(&snapshot.bytes).map_err(|e| {
                decode_error(
                    format!("the snapshot covering record {}", snapshot.covers),
                    e.to_string(),
                )
            })?,
            snapshot.bytes.len() as u64,
        ),
        None => (Core::new(config), 0),
    };
    let had_state = recovery.snapshot.is_some() || !recovery.records.is_empty();
    let mut since_snapshot = 0;
    for (index, bytes) in recovery.records {
        let logged: Logged = rmp_serde::from_slice(&bytes)
            .map_err(|e| decode_error(format!("record {index}"), e.to_string()))?;
        since_snapshot += bytes.len() as u64;
        core.handle(logged.input, logged.now, &Replay);
    }
    let mut startup = Vec::new();
    let mut inputs = Vec::new();
    if core.config() != &config {
        inputs.push(Input::Configure(config));
    }
    if had_state {
        inputs.push(Input::Recovered);
    }
    for input in inputs {
        startup.push(encode(now, &input).map_err(|e| decode_error("a start-up input".into(), e))?);
        core.handle(input, now, &Replay);
    }
    if !startup.is_empty() {
        journal.append(&startup)?;
    }
    found.actions = core.book().len();
    let log = Log {
        journal: Some(journal),
        tx: None,
        thread: None,
        seq: 0,
        since_snapshot,
        snapshot_every: snapshot_min.max(snapshot_bytes),
        snapshot_min,
    };
    Ok((core, log, found))
}

impl Log {
    /// Starts the committer thread; it reports to `actor`.
    pub fn start(
        &mut self,
        actor: WeakActorRef<Service>,
        metrics: std::sync::Arc<crate::admin::metrics::Metrics>,
    ) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || commit_loop(journal, rx, actor, &metrics))
            .expect("the journal thread starts");
        self.tx = Some(tx);
        self.thread = Some(thread);
    }

    /// The journal record of an input handled at `now`.
    pub fn encode(&self, now: Timestamp, input: &Input) -> Result<Vec<u8>, String> {
        encode(now, input)
    }

    /// Queues a record for commit; returns its sequence number. Takes a snapshot of `core` (the
    /// state right after this record) when the log has grown enough.
    pub fn push(&mut self, record: Vec<u8>, core: &Core) -> u64 {
        self.seq += 1;
        self.since_snapshot += record.len() as u64;
        let Some(tx) = &self.tx else {
            return self.seq;
        };
        let _ = tx.send(Job::Record(self.seq, record));
        if self.since_snapshot >= self.snapshot_every {
            match rmp_serde::to_vec_named(core) {
                Ok(bytes) => {
                    self.snapshot_every = self.snapshot_min.max(bytes.len() as u64);
                    self.since_snapshot = 0;
                    let _ = tx.send(Job::Snapshot(bytes));
                }
                Err(error) => tracing::error!(%error, "cannot encode a snapshot"),
            }
        }
        self.seq
    }

    /// Commits what is queued and stops the thread; returns the last sequence number committed.
    pub fn finish(mut self) -> Result<u64, String> {
        self.tx = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the journal thread panicked".into())),
            None => Ok(self.seq),
        }
    }
}

fn commit_loop(
    mut journal: Journal,
    rx: mpsc::Receiver<Job>,
    actor: WeakActorRef<Service>,
    metrics: &crate::admin::metrics::Metrics,
) -> Result<u64, String> {
    let mut committed = 0;
    let tell = |msg: Internal| {
        if let Some(actor) = actor.upgrade() {
            let _ = actor.tell(msg).try_send();
        }
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut records = Vec::new();
        let mut last = committed;
        let began = std::time::Instant::now();
        let mut count = 0u64;
        let result = (|| -> Result<(), JournalError> {
            for job in jobs {
                match job {
                    Job::Record(seq, bytes) => {
                        records.push(bytes);
                        last = seq;
                        count += 1;
                    }
                    Job::Snapshot(bytes) => {
                        if !records.is_empty() {
                            journal.append(&records)?;
                            records.clear();
                        }
                        let covers = journal.stats().last_index;
                        journal.snapshot(covers, &bytes)?;
                        tracing::debug!(covers, bytes = bytes.len(), "journal snapshot");
                    }
                }
            }
            if !records.is_empty() {
                journal.append(&records)?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            let error = error.to_string();
            tell(Internal::JournalFailed(error.clone()));
            return Err(error);
        }
        metrics
            .journal_commit
            .observe(began.elapsed().as_secs_f64());
        metrics.journal_records.inc_by(count);
        committed = last;
        tell(Internal::Committed(committed));
    }
    journal.close().map_err(|e| e.to_string())?;
    Ok(committed)
}
