//! # procmesh-orchestrator
//!
//! The orchestrator: takes actions from clients into queues, dispatches them onto procs across
//! hosts by free capacity, follows every transition, retries what fails, cancels, keeps results
//! until they are retired, and streams events to subscribers. Its decisions — which proc gets
//! which pending action, whether a failure is retried, queue bookkeeping — are pure code in
//! [`procmesh_protocol::sched`] (the [`Book`](procmesh_protocol::sched::Book)) that this crate's
//! one kameo actor only drives (STYLE §2). It is not a client library (that is
//! `procmesh-client`) and holds no journal yet: state is in memory ([`MemoryStore`]); a durable
//! [`Store`] is a later issue, so a restart forgets every queue.
//!
//! ```text
//!  client ─ CreateQueue, RegisterWorker, MissingBlobs, Submit, Subscribe … ─┐
//!  host   ─ RegisterHost, Heartbeat (procs, running) ─▶ HeartbeatAck{orphans}│
//!  agent  ─ ActionUpdate(Transition) (told), GetWorker ──────────────────────┤
//!                                                                            ▼
//!                                      service.orchestrator  (Book + Store + Registry)
//!                                         │ Book::schedule ─▶ AgentRequest::Submit{spec, report_to}
//!                                         │ StopOrder      ─▶ AgentRequest::Cancel{lsn, attempt}
//!                                         └ ClientEvent (Transition, QueueComplete, Lagged, Ended)
//! ```
//!
//! One action's life as this crate drives it: `Submit` checks everything, then the book gives it
//! an LSN (`Pending`); a dispatch pass places it (`Submitting`, published) and a spawned task
//! asks the proc's agent to run it with this actor as `report_to`; the agent tells `Running`,
//! then `Completed`/`Failed`/`Cancelled` with outputs and tails, which the book applies
//! (retrying `Failed` by the queue's limit); the result stays listed until retired.
//!
//! # Layout
//! - [`config`] — [`OrchestratorConfig`], validated.
//! - [`store`] — [`Store`]: tokens, workers, action definitions, result details; [`MemoryStore`].
//! - `registry` — hosts: registration, heartbeats, loss after a timeout, ready procs.
//! - `events` — subscriptions: bounded per-subscriber channels, `Lagged`, `Ended`.
//! - `service` — the `service.orchestrator` actor answering every `OrchestratorRequest`.
//! - `hosts` — registration, heartbeats, lost procs, silent hosts.
//! - `dispatch` — scheduling passes, submissions and stop orders to proc agents.
//!
//! # Invariants (continuing the book's ORC-1 … ORC-14)
//! - **ORC-15** Queue access: a queue named by its integer id is served only to a loopback
//!   requester (this process, Unix or in-process peers, QUIC peers on a loopback address);
//!   anyone else gets `Forbidden`, whether or not the queue exists. Tokens are 12 bytes from the
//!   OS CSPRNG, distinct per queue; a wrong token is `UnknownQueue` and never echoed whole.
//! - **ORC-16** Free capacity: a proc's free slots are its heartbeat's `max` minus the actions
//!   the book has placed on it (`Submitting` or `Running`), so consecutive passes between two
//!   heartbeats never overfill a proc.
//! - **ORC-17** A proc agent that refuses a submission or cannot be reached gets no placement
//!   until its host's next heartbeat; the attempt — if the book still has it `Submitting` on
//!   that proc — becomes `Abandoned` with the reason, which consumes a retry (ORC-6).
//! - **ORC-18** Hosts: a host silent for more than `lost_after_ms` is `Lost`, its placed actions
//!   `Abandoned` (then retried), and its heartbeats answered `UnknownHost` until it registers
//!   again; a host that registers while `Alive` has restarted, and its placed actions are
//!   abandoned likewise.
//! - **ORC-19** The store holds exactly one entry per unretired action of the book (its
//!   definition, and its result details once finished); retiring removes it.
//! - **ORC-20** Events: a subscriber never slows the orchestrator. Each subscription's events
//!   are delivered in the order applied; when its buffer is full, events are dropped and counted,
//!   and `Lagged { missed }` follows once the buffer has drained; an undeliverable subscriber
//!   loses its subscriptions; shutdown sends `Ended`.
//! - **ORC-21** The actor never awaits the network in a request handler: asks to agents run in
//!   spawned tasks that report back as private messages.
//! - **ORC-22** Dispatch is coalesced: any number of triggers before a pass runs make one pass;
//!   a pass places at most `dispatch_batch` actions, and a full pass queues the next, so requests
//!   interleave with a large backlog and no action waits while capacity is free (ORC-3).
//! - **ORC-23** Submission is all or nothing: batch size, every action's validity, its worker
//!   and every blob (worker files and inputs) are checked before the book changes.
//! - **ORC-24** Cancelling a placed attempt sends `Cancel` to its agent; if no agent is known, it
//!   refuses, or does not hold the attempt, the orchestrator records `Cancelled` itself (a copy
//!   still running is then an orphan, stopped through the host's heartbeat).
//! - **ORC-25** A subscription is stopped only at the request of the proc that made it (its
//!   subscriber's proc); anyone else is told it is unknown, so ids cannot be probed or
//!   cancelled across clients.
//!
//! # Decisions where the architecture is silent
//! - A refused or failed submission is `Abandoned` (not `Failed`): the work never ran.
//! - Dispatch uses the last heartbeat's procs; a proc missing from a heartbeat is simply not
//!   offered work — its placed actions are abandoned only on `ProcLost` or host loss.
//! - `QueueComplete` is published on every update that finishes the last live action (again
//!   after a reschedule completes), and on `Drain` of an already complete queue.
//! - `ListResults` returns at most `result_page` results whatever the client asks.
#![deny(missing_docs)]

pub mod config;
mod dispatch;
mod events;
mod hosts;
mod registry;
mod service;
pub mod store;

use std::time::Duration;

use kameo::actor::{ActorRef, Spawn};
use procmesh_protocol::{ActorId, HostAddr, SERVICE_PROC};
use procmesh_transport::{BlobStore, Node, NodeBuilder, NodeError, TlsIdentity};
use tokio::task::JoinHandle;

pub use config::{ConfigError, OrchestratorConfig};
pub use store::{MemoryStore, ResultDetail, Store, StoreError};

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
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Blobs(#[from] procmesh_transport::BlobError),
    /// The node could not start (the listener could not bind).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node given to [`Orchestrator::on_node`] keeps no blob store.
    #[error("the node has no blob store: hosts fetch worker files and inputs from it")]
    NoBlobStore,
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
}

impl Orchestrator {
    /// Starts an orchestrator: validates `config`, opens the blob store in
    /// `<state_dir>/blobs`, starts a QUIC node on `config.listen` with `identity`, and exposes
    /// the actor as `service.orchestrator`.
    pub async fn start(
        config: OrchestratorConfig,
        identity: TlsIdentity,
    ) -> Result<Orchestrator, StartError> {
        config.validate()?;
        let blobs_dir = config.blobs_dir();
        std::fs::create_dir_all(&blobs_dir).map_err(|source| StartError::State {
            path: blobs_dir.display().to_string(),
            source,
        })?;
        let store = BlobStore::open(&blobs_dir)?;
        let mut builder = NodeBuilder::new(SERVICE_PROC)
            .quic(config.listen, identity)
            .blob_store(store);
        if let Some(addr) = &config.advertise {
            builder = builder.addr(addr.clone());
        }
        let node = builder.start().await?;
        let mut orchestrator = Self::on_node(node, config).await?;
        orchestrator.owns_node = true;
        Ok(orchestrator)
    }

    /// Runs the orchestrator on an existing node (which must keep a blob store), e.g. over
    /// in-process transports in benchmarks and tests, with a [`MemoryStore`]. Its
    /// [`shutdown`](Self::shutdown) leaves the node running.
    pub async fn on_node(
        node: Node,
        config: OrchestratorConfig,
    ) -> Result<Orchestrator, StartError> {
        Self::with_store(node, config, Box::new(MemoryStore::new())).await
    }

    /// [`on_node`](Self::on_node) with the given store.
    pub async fn with_store(
        node: Node,
        config: OrchestratorConfig,
        store: Box<dyn Store>,
    ) -> Result<Orchestrator, StartError> {
        config.validate()?;
        let blobs = node.blob_store().cloned().ok_or(StartError::NoBlobStore)?;
        let actor_id = node.actor_id(ORCHESTRATOR_ACTOR)?;
        let tick = config.tick_interval();
        let args = ServiceArgs {
            config,
            node: node.clone(),
            me: actor_id.clone(),
            blobs,
            store,
        };
        // Unbounded: the actor tells itself, and its own inbound stream must never stall.
        let actor = Service::spawn_with_mailbox(args, kameo::mailbox::unbounded());
        node.expose(ORCHESTRATOR_ACTOR, actor.clone())?;
        let tasks = vec![
            tokio::spawn(ticker(actor.clone(), tick)),
            tokio::spawn(watch_undeliverable(node.clone(), actor.clone())),
        ];
        tracing::info!(actor = %actor_id, "orchestrator started");
        Ok(Orchestrator {
            node,
            actor,
            actor_id,
            tasks,
            owns_node: false,
        })
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
