//! [`Host`]: the host agent. One [`Node`] with the QUIC frontend, the backend (a Unix socket,
//! and an in-process hub), the blob store, and the `service` proc's actors; the proc table; a
//! [`ProcManager`]. A proc's life — spawn, readiness, exit — is driven by `lifecycle`.
//!
//! ```text
//!  client / orchestrator ──QUIC──▶ frontend quic!A ─┬─▶ service.host        HostRequest
//!                                                   ├─▶ service.bootstrap   ProcReady
//!                                                   ├─▶ <name>.*  ──backend link──▶ proc <name>
//!                                                   └─▶ local.*   ──in-process───▶ the local proc
//!  proc ── everything outbound ──▶ backend (unix!<state>/host.sock or local!<hub name>) ─▶ routed
//! ```
//!
//! # Invariants
//! - **HST-13** A bulk terminate runs at most `max_concurrent` stops at once and reports
//!   `attempted == ok + failed.len()`.
//!
//! The `local` proc: reserved (never spawned by a request), it exists from the start as a
//! name that routes nowhere, and is created empty — an in-process node with no actors, routed
//! through this host — by the first [`Host::local_proc`] call; clients in this process expose
//! actors on it or send from it. Until then, messages to it come back undeliverable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::messages::{
    BulkFailure, BulkOutcome, HostError, HostInfo, HostReply, HostRequest, HostStatus, ProcInfo,
    ProcStatus, SpawnSpec, SystemInfo,
};
use procmesh_protocol::{
    ActorId, BlobHash, ExitStatus, HostAddr, Timestamp, LOCAL_PROC, SERVICE_PROC,
};
use procmesh_transport::{LocalHub, Node, NodeBuilder, NodeError, TlsIdentity};
use tokio::sync::{watch, OnceCell, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::authority::{check_spawn_env, decide, Kind, Refusals, Sender};
use crate::blobs::BlobFetcher;
use crate::config::{HostConfig, StatePaths};
use crate::handle::{HandleTimeouts, ProcHandle};
use crate::manager::ProcManager;
use crate::node_id::{hex, load_or_create_secret, node_name, NodeSecretError};
use crate::policy::{HostAdmission, HostBlobPolicy};
use crate::respawn::Respawns;
use crate::service::{BootstrapAgent, HostAgent, BOOTSTRAP_ACTOR, HOST_ACTOR};
use crate::system::{logical_cpus, system_info};
use crate::table::ProcTable;

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Neither `tls_identity` nor `tls_dir` is set.
    #[error("no TLS identity: set tls_dir (or tls_identity)")]
    NoIdentity,
    /// The identity in `tls_dir` could not be loaded.
    #[error("cannot load the TLS identity: {0}")]
    Identity(#[from] procmesh_transport::tls::TlsError),
    /// The certificate is not a host certificate.
    #[error(
        "the TLS identity is a {0} certificate; a host needs one issued with \
         `procmesh certs issue --role host`"
    )]
    Role(procmesh_transport::Role),
    /// The frontend binds an unspecified address and no `advertise` address is set.
    #[error("listen address {0} is unspecified: set advertise to the address peers dial")]
    Advertise(std::net::SocketAddr),
    /// A limit that must be positive (NODE-10) is 0; names the field.
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    /// Action isolation could not be set up as configured.
    #[error("action isolation: {0}")]
    Isolation(String),
    /// The state directory could not be prepared.
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
    /// The node could not start (a listener could not bind).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node secret in the state directory is unusable (HST-21).
    #[error(transparent)]
    NodeSecret(#[from] NodeSecretError),
    /// An actor could not be exposed (a bad name: a bug).
    #[error("cannot expose the host's actors: {0}")]
    Expose(#[from] procmesh_protocol::IdError),
}

static NEXT_HOST: AtomicU64 = AtomicU64::new(1);

/// The host agent. Cheap to clone; every clone is the same host.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("addr", self.inner.node.addr())
            .field("manager", &self.inner.manager.kind())
            .finish_non_exhaustive()
    }
}

pub(crate) struct HostInner {
    pub config: HostConfig,
    pub paths: StatePaths,
    pub node: Node,
    pub manager: Arc<dyn ProcManager>,
    pub table: ProcTable,
    hub: LocalHub,
    hub_name: String,
    pub backend: HostAddr,
    started_at: Timestamp,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    blobs: BlobFetcher,
    system: SystemInfo,
    local: OnceCell<Node>,
    registration: Mutex<Option<JoinHandle<()>>>,
    /// What is needed to respawn the procs that crash (HST-14).
    pub respawns: Respawns,
    /// Requests, links and relays refused, by kind (HST-16, HST-17, HST-18).
    pub refusals: Refusals,
    /// The key download tickets for this host's blobs verify under (HST-22), from the latest
    /// registration.
    pub ticket_key: Arc<Mutex<Option<[u8; 32]>>>,
    /// The node's name (the certificate's, the configured one, or the hostname).
    node_name: String,
    /// The node secret (HST-21), sent at registration when the certificate names no node.
    node_secret: Option<[u8; 32]>,
    /// How actions are isolated (HST-23); `None` for in-process procs.
    pub isolation: Option<crate::isolation::Isolation>,
    /// The orchestrator link as the admin listener reports it.
    pub link: crate::admin::Link,
}

pub(crate) use procmesh_transport::now;

fn state_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::State {
        path: path.display().to_string(),
        source,
    }
}

/// Empties `dir` (creating it): stale caches and work directories of an earlier run.
fn wipe_dir(dir: &std::path::Path) -> Result<(), StartError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(state_err(dir)(e)),
    }
    std::fs::create_dir_all(dir).map_err(state_err(dir))
}

impl Host {
    /// Starts a host: prepares the state directory (wiping `workers/` and `procs/`), binds the
    /// QUIC frontend and the backend socket, exposes the `service` actors, and, if an
    /// orchestrator is configured, starts registering and heartbeating.
    pub async fn start(
        config: HostConfig,
        manager: Arc<dyn ProcManager>,
    ) -> Result<Host, StartError> {
        // NODE-10: the operator's limits, checked before anything is touched.
        let node_config = config.node_config().map_err(StartError::Zero)?;
        let identity: TlsIdentity = match (&config.tls_identity, &config.tls_dir) {
            (Some(identity), _) => identity.clone(),
            (None, Some(dir)) => TlsIdentity::load(dir)?,
            (None, None) => return Err(StartError::NoIdentity),
        };
        if config.listen.ip().is_unspecified() && config.advertise.is_none() {
            return Err(StartError::Advertise(config.listen));
        }
        let paths = config.paths();
        std::fs::create_dir_all(&paths.root).map_err(state_err(&paths.root))?;
        // HST-18: only the host's user reaches the backend socket.
        std::fs::create_dir_all(&paths.run).map_err(state_err(&paths.run))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&paths.run, std::fs::Permissions::from_mode(0o700))
                .map_err(state_err(&paths.run))?;
        }
        let secret = load_or_create_secret(&paths.node_secret)?;
        let system = system_info();
        let peer_identity = identity.identity()?;
        if peer_identity.role != procmesh_transport::Role::Host {
            return Err(StartError::Role(peer_identity.role));
        }
        let cert_name = peer_identity.name;
        let node_name = node_name(
            cert_name.as_deref(),
            config.node_name.as_deref(),
            &system.hostname,
        );
        // A per-node certificate proves the node by itself; a fleet-wide one needs the secret.
        let node_secret = cert_name.is_none().then_some(secret);
        wipe_dir(&paths.workers)?;
        wipe_dir(&paths.procs)?;
        // In-process procs share this process: only OS procs are isolated.
        let isolation = match manager.local_hub() {
            Some(_) => None,
            None => Some(crate::isolation::decide(&config, system.memory_bytes)?),
        };
        let store = procmesh_transport::BlobStore::open(&paths.blobs)?;

        let hub = manager.local_hub().unwrap_or_default();
        let hub_name = format!(
            "host-{}-{}",
            std::process::id(),
            NEXT_HOST.fetch_add(1, Ordering::Relaxed)
        );
        // HST-28, HST-22: admission and blob policy guard the node from its first link on.
        let admission = Arc::new(HostAdmission {
            host: OnceLock::new(),
            orchestrator: config
                .orchestrator
                .as_ref()
                .map(|o| o.proc_id().addr().clone()),
        });
        let ticket_key = Arc::<Mutex<Option<[u8; 32]>>>::default();
        let mut builder = NodeBuilder::new(SERVICE_PROC)
            .quic(config.listen, identity)
            .unix(&paths.socket)
            .local(&hub, &hub_name)
            .blob_store(store)
            .admission(admission.clone())
            .blob_policy(Arc::new(HostBlobPolicy {
                ticket_key: ticket_key.clone(),
            }))
            .node_claim(&node_name, node_secret)
            .config(node_config);
        if let Some(addr) = &config.advertise {
            builder = builder.addr(addr.clone());
        }
        if let Some(path) = &config.revoked {
            builder = builder.revocations(procmesh_transport::Revocations::load(path)?);
        }
        let node = builder.start().await?;
        let backend = match manager.local_hub() {
            Some(_) => HostAddr::Local(hub_name.clone()),
            None => HostAddr::Unix(paths.socket.clone()),
        };
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(HostInner {
            blobs: BlobFetcher::new(node.clone()),
            config,
            paths,
            node,
            manager,
            table: ProcTable::default(),
            hub,
            hub_name,
            backend,
            started_at: now(),
            shutting_down: AtomicBool::new(false),
            shutdown,
            system,
            local: OnceCell::new(),
            registration: Mutex::new(None),
            respawns: Respawns::default(),
            refusals: Refusals::default(),
            ticket_key,
            node_name,
            node_secret,
            isolation,
            link: crate::admin::Link::default(),
        });
        let _ = admission.host.set(Arc::downgrade(&inner));
        // The actors hold the host weakly: the node holds the actors.
        let host_agent = HostAgent::spawn_with_mailbox(
            HostAgent {
                host: Arc::downgrade(&inner),
            },
            kameo::mailbox::unbounded(),
        );
        let bootstrap = BootstrapAgent::spawn_with_mailbox(
            BootstrapAgent {
                host: Arc::downgrade(&inner),
            },
            kameo::mailbox::unbounded(),
        );
        inner.node.expose(HOST_ACTOR, host_agent)?;
        inner.node.expose(BOOTSTRAP_ACTOR, bootstrap)?;
        if let Some(orchestrator) = inner.config.orchestrator.clone() {
            let task = tokio::spawn(
                crate::registration::run(
                    Arc::downgrade(&inner),
                    orchestrator.clone(),
                    inner.shutdown.subscribe(),
                )
                .instrument(tracing::info_span!("registration", %orchestrator)),
            );
            *inner.registration.lock().expect("registration lock") = Some(task);
        }
        tracing::info!(
            addr = %inner.node.addr(),
            backend = %inner.backend,
            manager = inner.manager.kind(),
            "host started"
        );
        Ok(Host { inner })
    }

    pub(crate) fn from_inner(inner: Arc<HostInner>) -> Host {
        Host { inner }
    }

    /// The host's frontend address: every proc id of this host names it.
    pub fn addr(&self) -> &HostAddr {
        self.inner.node.addr()
    }

    /// The host's node (its `service` proc).
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The host agent actor, which answers [`HostRequest`]s.
    pub fn host_actor(&self) -> ActorId {
        self.inner.node.actor_id(HOST_ACTOR).expect("valid name")
    }

    /// The bootstrap actor, which procs send their [`ProcReady`](procmesh_protocol::messages::ProcReady) to.
    pub fn bootstrap_actor(&self) -> ActorId {
        self.inner.bootstrap_actor()
    }

    /// The backend address procs connect to.
    pub fn backend(&self) -> &HostAddr {
        &self.inner.backend
    }

    /// The paths in the state directory.
    pub fn paths(&self) -> &StatePaths {
        &self.inner.paths
    }

    /// How many actions the host runs at once: its `capacity`, else its logical CPUs; the
    /// `max_actions` of its procs sum to at most this (HST-25).
    pub fn capacity(&self) -> u32 {
        self.inner.capacity()
    }

    /// The slots its procs hold, launched or launching: the sum of their `max_actions`.
    pub fn slots_held(&self) -> u32 {
        self.inner.table.slots_used()
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Starts a proc and waits until it is ready (HST-2); on failure nothing is left behind
    /// (HST-3). The spawn runs in a task of its own: dropping this future does not abandon a
    /// half-started proc.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<ProcHandle, HostError> {
        if self.inner.is_shutting_down() {
            return Err(HostError::ShuttingDown);
        }
        let mut spec = spec;
        let reservation =
            self.inner
                .table
                .reserve(&spec.name, spec.config.max_actions, self.inner.capacity())?;
        // HST-25: the proc runs with the slots it holds, and is respawned with them.
        spec.config.max_actions = Some(reservation.slots);
        let inner = self.inner.clone();
        let span = tracing::info_span!("spawn", proc = %spec.name);
        tokio::spawn(
            async move {
                let handle = inner.clone().drive_spawn(spec.clone(), reservation).await?;
                // HST-14: from now on a crash brings it back.
                inner.respawns.spawned(&spec);
                Ok(handle)
            }
            .instrument(span),
        )
        .await
        .map_err(|e| HostError::Internal(format!("spawn task failed: {e}")))?
    }

    /// How many times the proc `name` was respawned after exiting unasked since a request
    /// last spawned it (HST-14); 0 for a name the host does not know.
    pub fn restarts(&self, name: &str) -> u32 {
        self.inner.respawns.restarts(name)
    }

    /// The proc `name` (waiting for its launch if it is being launched).
    pub async fn proc(&self, name: &str) -> Result<ProcHandle, HostError> {
        self.inner.table.handle(name).await
    }

    /// Every launched proc.
    pub fn procs(&self) -> Vec<ProcHandle> {
        self.inner.table.handles()
    }

    /// Terminates the proc `name` ([`ProcHandle::terminate`]).
    pub async fn terminate(
        &self,
        name: &str,
        grace: Duration,
        reason: &str,
    ) -> Result<ExitStatus, HostError> {
        self.proc(name).await?.terminate(grace, reason).await
    }

    /// Kills the proc `name` ([`ProcHandle::kill`]).
    pub async fn kill(&self, name: &str) -> Result<ExitStatus, HostError> {
        self.proc(name).await?.kill().await
    }

    /// Terminates every proc, at most `max_concurrent` at once (0: the configured default);
    /// HST-13.
    pub async fn terminate_all(
        &self,
        grace: Duration,
        reason: &str,
        max_concurrent: u32,
    ) -> BulkOutcome {
        let limit = match max_concurrent {
            0 => self.inner.config.terminate_concurrency,
            n => n,
        }
        .max(1) as usize;
        let slots = Arc::new(Semaphore::new(limit));
        let mut stops = JoinSet::new();
        let names = self.inner.table.names();
        let attempted = names.len() as u32;
        for name in names {
            let host = self.clone();
            let slots = slots.clone();
            let reason = reason.to_owned();
            stops.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let result = host.terminate(&name, grace, &reason).await;
                (name, result)
            });
        }
        let mut outcome = BulkOutcome {
            attempted,
            ..BulkOutcome::default()
        };
        while let Some(done) = stops.join_next().await {
            match done {
                // Gone by itself meanwhile: it is stopped.
                Ok((_, Ok(_))) | Ok((_, Err(HostError::UnknownProc(_)))) => outcome.ok += 1,
                Ok((name, Err(error))) => outcome.failed.push(BulkFailure { name, error }),
                Err(e) => outcome.failed.push(BulkFailure {
                    name: String::new(),
                    error: HostError::Internal(format!("stop task failed: {e}")),
                }),
            }
        }
        outcome.failed.sort_by(|a, b| a.name.cmp(&b.name));
        outcome
    }

    /// Makes sure these blobs are in the host's store, fetching the missing ones from `from`;
    /// returns how many were missing (HST-10).
    pub async fn fetch_blobs(
        &self,
        hashes: Vec<BlobHash>,
        from: HostAddr,
    ) -> Result<u32, HostError> {
        self.inner.blobs.ensure(hashes, from).await
    }

    /// How many blob transfers this host started (HST-10: one per missing blob, however many
    /// asked at once).
    pub fn blob_transfers(&self) -> u64 {
        self.inner.blobs.transfers()
    }

    /// What the host registers with.
    pub fn info(&self) -> HostInfo {
        self.inner.host_info()
    }

    /// The host's status.
    pub fn status(&self) -> HostStatus {
        let handles = self.inner.table.handles();
        HostStatus {
            info: self.inner.host_info(),
            procs: self.inner.table.len() as u32,
            ready: handles
                .iter()
                .filter(|h| h.status() == ProcStatus::Ready)
                .count() as u32,
            started_at: self.inner.started_at,
            shutting_down: self.inner.is_shutting_down(),
        }
    }

    /// The procs, sorted by name.
    pub fn list(&self) -> Vec<ProcInfo> {
        let mut procs: Vec<ProcInfo> = self.procs().iter().map(ProcHandle::info).collect();
        procs.sort_by(|a, b| a.proc_id.cmp(&b.proc_id));
        procs
    }

    /// The `local` proc: an in-process node named `local`, routed through this host, created
    /// empty by the first call (later calls return the same node).
    pub async fn local_proc(&self) -> Result<Node, HostError> {
        let inner = &self.inner;
        let node = inner
            .local
            .get_or_try_init(|| async {
                if inner.is_shutting_down() {
                    return Err(HostError::ShuttingDown);
                }
                let node = NodeBuilder::new(LOCAL_PROC)
                    .local(&inner.hub, &format!("{}-local", inner.hub_name))
                    .addr(inner.node.addr().clone())
                    .default_route(HostAddr::Local(inner.hub_name.clone()))
                    .start()
                    .await
                    .map_err(|e| HostError::Internal(format!("local proc: {e}")))?;
                // Its first message over the backend installs its route (NODE-3).
                node.remote_ref::<HostRequest>(self.host_actor())
                    .ask(HostRequest::Status, inner.config.agent_ask_timeout())
                    .await
                    .map_err(|e| HostError::Internal(format!("local proc: {e}")))??;
                Ok(node)
            })
            .await?;
        Ok(node.clone())
    }

    /// Requests, backend links and relays this host refused, by kind (`spawn`, `kill`,
    /// `list_procs`, …, `proc_ready`, `relay`, `backend`, `orchestrator_address`): HST-16,
    /// HST-17, HST-18, HST-28.
    pub fn refusals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.inner.refusals.snapshot()
    }

    /// The node name this host registers as.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Answers one [`HostRequest`] sent by code in this process (which may ask anything).
    pub async fn handle_request(&self, request: HostRequest) -> Result<HostReply, HostError> {
        self.handle_request_from(None, request).await
    }

    /// Answers one [`HostRequest`] that arrived over `peer` (`None`: from this process),
    /// if its sender may make it (HST-16).
    pub async fn handle_request_from(
        &self,
        peer: Option<&procmesh_transport::PeerInfo>,
        request: HostRequest,
    ) -> Result<HostReply, HostError> {
        let kind = Kind::of(&request);
        let sender = Sender::of(peer, self.addr());
        if let Err(reason) = decide(kind, &sender) {
            return Err(self.inner.refusals.refuse(kind, reason));
        }
        match request {
            HostRequest::Spawn(spec) => {
                if sender != Sender::ThisProcess {
                    // HST-19: a request's environment is filtered; code in this process is not.
                    check_spawn_env(spec.config.env.keys(), &self.inner.config.spawn_env_allow)
                        .inspect_err(|e| tracing::warn!(%e, proc = %spec.name, "spawn refused"))?;
                }
                Ok(HostReply::Spawned(self.spawn(spec).await?.info()))
            }
            HostRequest::Terminate {
                name,
                grace_ms,
                reason,
            } => {
                let status = self
                    .terminate(&name, Duration::from_millis(grace_ms), &reason)
                    .await?;
                Ok(HostReply::Terminated { name, status })
            }
            HostRequest::Kill { name } => {
                let status = self.kill(&name).await?;
                Ok(HostReply::Terminated { name, status })
            }
            HostRequest::TerminateAll {
                grace_ms,
                reason,
                max_concurrent,
            } => Ok(HostReply::TerminatedAll(
                self.terminate_all(Duration::from_millis(grace_ms), &reason, max_concurrent)
                    .await,
            )),
            HostRequest::ListProcs => Ok(HostReply::Procs(self.list())),
            HostRequest::FetchBlobs { hashes, from } => Ok(HostReply::BlobsReady {
                fetched: self.fetch_blobs(hashes, from).await?,
            }),
            HostRequest::Status => Ok(HostReply::Status(Box::new(self.status()))),
        }
    }

    /// Stops the host: refuses new spawns, stops registering, terminates every proc with
    /// `grace` (bounded by `terminate_concurrency`), and closes the node. Returns what the
    /// bulk terminate did.
    pub async fn shutdown(&self, grace: Duration) -> BulkOutcome {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::Release);
        inner.shutdown.send_replace(true);
        let outcome = self
            .terminate_all(grace, "the host is shutting down", 0)
            .await;
        let registration = inner.registration.lock().expect("registration lock").take();
        if let Some(task) = registration {
            task.abort();
        }
        if let Some(local) = inner.local.get() {
            local.shutdown(Duration::ZERO).await;
        }
        // The procs are gone: so is the base of their action cgroups (HST-23).
        if let Some(name) = inner
            .isolation
            .as_ref()
            .and_then(|i| i.settings.cgroup_name.clone())
        {
            crate::isolation::remove_base(&name);
        }
        inner.node.unexpose(HOST_ACTOR);
        inner.node.unexpose(BOOTSTRAP_ACTOR);
        inner.node.shutdown(Duration::from_millis(100)).await;
        tracing::info!(addr = %inner.node.addr(), ?outcome, "host stopped");
        outcome
    }
}

impl HostInner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Resolves (`wait_for(|stop| *stop)`) once the host shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn bootstrap_actor(&self) -> ActorId {
        self.node.actor_id(BOOTSTRAP_ACTOR).expect("valid name")
    }

    /// How many actions the host runs at once: `capacity`, else its logical CPUs (HST-25).
    pub(crate) fn capacity(&self) -> u32 {
        self.config.capacity.unwrap_or_else(logical_cpus)
    }

    pub(crate) fn host_info(&self) -> HostInfo {
        HostInfo {
            addr: self.node.addr().clone(),
            capacity: self.capacity(),
            labels: self.config.labels.clone(),
            system: self.system.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: self.node_name.clone(),
            node_secret: self.node_secret.as_ref().map(|s| hex(s)),
            isolation: self.isolation.as_ref().map(|i| i.summary.clone()),
        }
    }

    pub(crate) fn timeouts(&self) -> HandleTimeouts {
        HandleTimeouts {
            agent_ask: self.config.agent_ask_timeout(),
            kill_wait: self.config.kill_wait(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::InProcessManager;

    #[tokio::test]
    async fn a_zero_limit_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut config = HostConfig {
            state_dir: state.clone(),
            ..HostConfig::default()
        };
        config.limits.max_streams_per_connection = 0;
        let manager = Arc::new(InProcessManager::new(|_| async { ExitStatus::Code(0) }));
        let err = Host::start(config, manager).await.unwrap_err();
        assert!(matches!(
            err,
            StartError::Zero("limits.max_streams_per_connection")
        ));
        assert_eq!(
            err.to_string(),
            "limits.max_streams_per_connection must be greater than 0"
        );
        assert!(!state.exists(), "the state directory was created");
    }
}
