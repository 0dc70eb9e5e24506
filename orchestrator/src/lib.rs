//! # procmesh-orchestrator
//!
//! The orchestrator: takes actions from clients into queues, dispatches them onto procs across
//! hosts by free capacity, follows every transition, retries what fails, cancels, keeps results
//! until they are retired, streams events to subscribers, and keeps everything it accepted
//! across restarts. Its decisions are the pure [`procmesh_orchestrator_core::Core`]; this crate
//! is the thin shell that drives it (STYLE §2): one kameo actor that feeds it inputs, the
//! journal (redb) those inputs are committed to first, and the effects carried out after.
//!
//! ```text
//!  client ─ CreateQueue, RegisterWorker, MissingBlobs, Submit, Subscribe … ─┐
//!  host   ─ RegisterHost, Heartbeat (procs, running) ─▶ HeartbeatAck{orphans}│
//!  agent  ─ ActionUpdate(s) (asked, re-sent until answered), GetWorker ──────┤
//!                                                                            ▼
//!                          service.orchestrator ─▶ Core::handle ─▶ journal (group commit)
//!                                 │ after the commit: replies, SubmitBatch / Cancel to agents,
//!                                 └ ClientEvents (Transition, QueueComplete, Lagged, Ended)
//! ```
//!
//! # Layout
//! - [`config`] — [`OrchestratorConfig`], validated.
//! - [`journal`] — the redb command log and snapshots ([`Journal`]), opaque bytes (JNL-n).
//! - `durable` — recovery (snapshot + tail replayed through the core) and the committer thread.
//! - `service` — the `service.orchestrator` actor: inputs in, effects out after their commit.
//! - `effects` — submissions and stop orders to proc agents from spawned tasks.
//! - `events` — subscriptions: bounded per-subscriber channels, `Lagged`, `Ended`.
//!
//! # Invariants
//! The core's ORC-1 … ORC-29 hold here; the shell adds:
//! - **ORC-30** Write-ahead: an input that changed state is committed to the journal before
//!   any of its effects leaves the process — a client's `Submitted`, a dispatch to an agent, a
//!   listed result, a published event — and the effects of later inputs wait behind it, so no
//!   reply ever shows state a crash could take back. A journal that cannot commit stops the
//!   orchestrator; what was held is answered with `journal` errors and never carried out.
//! - **ORC-31** Recovery is exact or refused: start-up replays the snapshot and the log tail;
//!   a journal that cannot be opened or decoded stops start-up with an error naming the file,
//!   and the file is left untouched (JNL-2). It is never replaced by an empty state.
//!
//! # Decisions where the architecture is silent
//! - A refused or failed submission is `Abandoned` (not `Failed`): the work never ran.
//! - Dispatch uses the last heartbeat's procs; a proc missing from a heartbeat is simply not
//!   offered work — its placed actions are abandoned only on `ProcLost` or host loss.
//! - `QueueComplete` is published on every update that finishes the last live action (again
//!   after a reschedule completes), and on `Drain` of an already complete queue.
//! - `ListResults` returns at most `result_page` results whatever the client asks.
#![deny(missing_docs)]

pub mod admin;
pub mod config;
mod durable;
mod effects;
mod events;
mod gate;
pub mod journal;
mod service;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{ActorRef, Spawn};
use procmesh_orchestrator_core::Core;
use procmesh_protocol::{ActorId, HostAddr, SERVICE_PROC};
use procmesh_transport::{BlobStore, DialPolicy, Node, NodeBuilder, NodeError, TlsIdentity};

use gate::Gate;
use tokio::task::JoinHandle;

pub use admin::AdminSlot;
pub use config::{ConfigError, OrchestratorConfig};
pub use durable::{RecoverError, Recovered};
pub use journal::{Durability, Journal, JournalError, JournalOptions};

use durable::Log;
use service::{Audit, Internal, Service, ServiceArgs, Shutdown};

/// The name of the orchestrator actor in its node's `service` proc.
pub const ORCHESTRATOR_ACTOR: &str = "orchestrator";

/// How long shutdown waits for subscribers and links to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    State {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The journal could not be recovered (ORC-31); the file is untouched.
    #[error(transparent)]
    Journal(#[from] RecoverError),
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Blobs(#[from] procmesh_transport::BlobError),
    /// The node could not start (the listener could not bind).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node given to [`Orchestrator::on_node`] keeps no blob store.
    #[error("the node has no blob store: hosts fetch worker files and inputs from it")]
    NoBlobStore,
    /// The revocation list could not be read.
    #[error("revocation list: {0}")]
    Revocations(String),
    /// The operating system gave no randomness.
    #[error("no randomness for the ticket key: {0}")]
    Randomness(String),
    /// The actor could not be exposed (a bad name: a bug).
    #[error("cannot expose the orchestrator: {0}")]
    Expose(#[from] procmesh_protocol::IdError),
}

/// A running orchestrator: its node and its `service.orchestrator` actor.
#[derive(Debug)]
pub struct Orchestrator {
    node: Node,
    actor: ActorRef<Service>,
    actor_id: ActorId,
    tasks: Vec<JoinHandle<()>>,
    owns_node: bool,
    recovered: Recovered,
    gate: Arc<Gate>,
    admin: AdminSlot,
}

/// The state an orchestrator starts from: recovered from its journal, or empty in memory.
struct Start {
    core: Core,
    log: Option<Log>,
    recovered: Recovered,
}

fn state_dir(path: &std::path::Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|source| StartError::State {
        path: path.display().to_string(),
        source,
    })
}

/// Recovers the journal (ORC-31) or, with `journal = false`, starts empty.
fn open_state(config: &OrchestratorConfig) -> Result<Start, StartError> {
    if !config.journal {
        return Ok(Start {
            core: Core::new(config.core()),
            log: None,
            recovered: Recovered::default(),
        });
    }
    state_dir(&config.state_dir)?;
    // The journal holds the node secrets of hosts with fleet-wide certificates (ORC-33): the
    // state directory is the orchestrator's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| StartError::State {
                path: config.state_dir.display().to_string(),
                source,
            })?;
    }
    let path = config.journal_path();
    let options = JournalOptions {
        durability: config.durability,
    };
    let began = std::time::Instant::now();
    let (core, log, recovered) = durable::recover(
        &path,
        options,
        config.core(),
        config.snapshot_min_bytes,
        service::now(),
    )?;
    tracing::info!(
        journal = %path.display(),
        snapshot = recovered.snapshot,
        records = recovered.records,
        actions = recovered.actions,
        ms = began.elapsed().as_millis() as u64,
        "journal recovered"
    );
    Ok(Start {
        core,
        log: Some(log),
        recovered,
    })
}

/// The admission and blob policy of the orchestrator's node, holding the bindings recovered
/// with `state` (ORC-38): installed before the node accepts a connection.
fn gate(master: [u8; 32], state: &Start) -> Arc<Gate> {
    let gate = Gate::new(master);
    gate.rebind(state.core.node_bindings());
    gate
}

impl Orchestrator {
    /// Starts an orchestrator: validates `config`, recovers the journal
    /// `<state_dir>/journal.redb` (unless `journal = false`), opens the blob store in
    /// `<state_dir>/blobs`, starts a QUIC node on `config.listen` with `identity`, and exposes
    /// the actor as `service.orchestrator`. A journal that cannot be recovered stops here,
    /// before anything listens (ORC-31).
    pub async fn start(
        config: OrchestratorConfig,
        identity: TlsIdentity,
    ) -> Result<Orchestrator, StartError> {
        Self::start_with_admin(config, identity, &AdminSlot::new()).await
    }

    /// [`start`](Self::start), reporting to `admin`: its metrics count from here, and its
    /// `/readyz` turns ready once the orchestrator serves.
    pub async fn start_with_admin(
        config: OrchestratorConfig,
        identity: TlsIdentity,
        admin: &AdminSlot,
    ) -> Result<Orchestrator, StartError> {
        config.validate()?;
        let state = open_state(&config)?;
        let blobs_dir = config.blobs_dir();
        state_dir(&blobs_dir)?;
        let store = BlobStore::open(&blobs_dir)?;
        // ORC-40: ticket keys follow the orchestrator's identity, so they survive a restart.
        let master = blake3::derive_key(
            "procmesh download ticket master v1",
            identity.key_pem.as_bytes(),
        );
        // ORC-38: the gate guards the node from its first connection on.
        let gate = gate(master, &state);
        let mut builder = NodeBuilder::new(SERVICE_PROC)
            .quic(config.listen, identity)
            .blob_store(store)
            .admission(gate.clone())
            .blob_policy(gate.clone())
            // ORC-38: only registered hosts are dialled.
            .dial_policy(DialPolicy::Listed)
            // NODE-10: the operator's limits.
            .config(config.node_config());
        if let Some(addr) = &config.advertise {
            builder = builder.addr(addr.clone());
        }
        if let Some(path) = &config.revoked {
            let list = procmesh_transport::Revocations::load(path)
                .map_err(|e| StartError::Revocations(e.to_string()))?;
            builder = builder.revocations(list);
        }
        let node = builder.start().await?;
        let mut orchestrator = Self::spawn(node, config, state, gate, admin)?;
        orchestrator.owns_node = true;
        Ok(orchestrator)
    }

    /// Runs the orchestrator on an existing node (which must keep a blob store), e.g. over
    /// in-process transports in benchmarks and tests, journaled in `config.state_dir` as by
    /// [`start`](Self::start) (or in memory with `journal = false`). Its
    /// [`shutdown`](Self::shutdown) leaves the node running.
    pub async fn on_node(
        node: Node,
        config: OrchestratorConfig,
    ) -> Result<Orchestrator, StartError> {
        config.validate()?;
        let state = open_state(&config)?;
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master).map_err(|e| StartError::Randomness(e.to_string()))?;
        let gate = gate(master, &state);
        node.set_admission(gate.clone());
        node.set_blob_policy(gate.clone());
        Self::spawn(node, config, state, gate, &AdminSlot::new())
    }

    fn spawn(
        node: Node,
        config: OrchestratorConfig,
        state: Start,
        gate: Arc<Gate>,
        admin: &AdminSlot,
    ) -> Result<Orchestrator, StartError> {
        let blobs = node.blob_store().cloned().ok_or(StartError::NoBlobStore)?;
        gate.set_me(node.addr().clone());
        let actor_id = node.actor_id(ORCHESTRATOR_ACTOR)?;
        let tick = config.tick_interval();
        let (observer, view) =
            admin::view::Observer::new(admin.metrics.clone(), state.log.is_some());
        let args = ServiceArgs {
            observer,
            config,
            node: node.clone(),
            me: actor_id.clone(),
            blobs,
            core: state.core,
            log: state.log,
            gate: gate.clone(),
        };
        // Unbounded: the actor tells itself, and its own inbound stream must never stall.
        let actor = Service::spawn_with_mailbox(args, kameo::mailbox::unbounded());
        node.expose(ORCHESTRATOR_ACTOR, actor.clone())?;
        admin.serving(admin::Serving {
            view,
            actor: actor.clone(),
            actor_id: actor_id.to_string(),
            recovered: state.recovered,
        });
        let tasks = vec![
            tokio::spawn(ticker(actor.clone(), tick)),
            tokio::spawn(refresher(actor.clone())),
            tokio::spawn(watch_undeliverable(node.clone(), actor.clone())),
        ];
        tracing::info!(actor = %actor_id, "orchestrator started");
        Ok(Orchestrator {
            node,
            actor,
            actor_id,
            tasks,
            owns_node: false,
            recovered: state.recovered,
            gate,
            admin: admin.clone(),
        })
    }

    /// Requests and connections refused by authority checks so far, by request kind
    /// (`connection` for refused connections, `blob` for refused blob streams).
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.gate.refusals()
    }

    /// Its admin state: the routes of its admin listener and its metrics.
    pub fn admin(&self) -> &AdminSlot {
        &self.admin
    }

    /// What start-up recovered from the journal.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// Resolves once the actor has stopped (after [`shutdown`](Self::shutdown), or because its
    /// journal failed, ORC-30).
    pub async fn stopped(&self) {
        self.actor.wait_for_shutdown().await;
    }

    /// The address hosts and clients reach the orchestrator at.
    pub fn addr(&self) -> HostAddr {
        self.node.addr().clone()
    }

    /// The `service.orchestrator` actor: where hosts register and clients send requests.
    pub fn actor_id(&self) -> ActorId {
        self.actor_id.clone()
    }

    /// The node the orchestrator serves on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Checks the orchestrator's state for consistency (ORC-8, ORC-12, ORC-19): for tests and
    /// debugging; O(actions). Says what is wrong.
    pub async fn audit(&self) -> Result<(), String> {
        match self.actor.ask(Audit).await {
            Ok(result) => result,
            Err(e) => Err(format!("the orchestrator is not running: {e}")),
        }
    }

    /// Stops serving: subscribers get `Ended`, the actor stops and is unexposed, and the node
    /// (if [`start`](Self::start) created it) shuts down. Idempotent.
    pub async fn shutdown(&self) {
        self.admin.stopping();
        for task in &self.tasks {
            task.abort();
        }
        let _ = self
            .actor
            .ask(Shutdown {
                grace: SHUTDOWN_GRACE,
            })
            .await;
        self.actor.wait_for_shutdown().await;
        self.node.unexpose(ORCHESTRATOR_ACTOR);
        if self.owns_node {
            self.node.shutdown(SHUTDOWN_GRACE).await;
        }
        tracing::info!(actor = %self.actor_id, "orchestrator stopped");
    }
}

/// Tells the actor to look for silent hosts every `every`.
async fn ticker(actor: ActorRef<Service>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if actor.tell(Internal::Tick).try_send().is_err() {
            return;
        }
    }
}

/// Tells the actor to refresh its admin view every [`admin::REFRESH`].
async fn refresher(actor: ActorRef<Service>) {
    let mut interval = tokio::time::interval(admin::REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if actor.tell(Internal::Refresh).try_send().is_err() {
            return;
        }
    }
}

/// Turns the node's bounce notices into [`Internal::Undeliverable`] (ORC-20).
async fn watch_undeliverable(node: Node, actor: ActorRef<Service>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut notices = node.undeliverable();
    drop(node);
    loop {
        match notices.recv().await {
            Ok(notice) => {
                if actor
                    .tell(Internal::Undeliverable(notice.dest))
                    .try_send()
                    .is_err()
                {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}
