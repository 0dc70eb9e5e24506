//! [`Host`]: the host agent. One [`Node`] with the QUIC frontend, the backend (a Unix socket,
//! and an in-process hub), the blob store, and the `service` proc's actors; the proc table; a
//! [`ProcManager`]; the spawn drivers and exit monitors.
//!
//! ```text
//!  client / orchestrator ──QUIC──▶ frontend quic!A ─┬─▶ service.host        HostRequest
//!                                                   ├─▶ service.bootstrap   ProcReady
//!                                                   ├─▶ <name>.*  ──backend link──▶ proc <name>
//!                                                   └─▶ local.*   ──in-process───▶ the local proc
//!  proc ── everything outbound ──▶ backend (unix!<state>/host.sock or local!<hub name>) ─▶ routed
//! ```
//!
//! A spawn, step by step (HST-2, HST-3):
//!
//! ```text
//! reserve name (HST-1) ─▶ fresh procs/<name>/ ─▶ manager.launch ─▶ handle published, exit monitor
//!   ─▶ wait: ProcReady checked ─ ok ─▶ Ready, answer Ok to the proc, spawn resolves
//!            │ timeout / exit / failed check
//!            ▼
//!      not ready (its error) ─▶ kill, wait for the exit monitor (reaped, route and name gone)
//! ```
//!
//! # Invariants
//! - **HST-2** A spawn succeeds only once a `ProcReady` from the very proc arrived (its proc id,
//!   the child's pid), its agent is an actor of that proc that answers, and its backend route is
//!   up. Otherwise it fails with exactly one named error: `ReadyTimeout`, `ExitedEarly`,
//!   `ChannelLost` (the proc stopped answering, or its backend link went away),
//!   `MissingAddress` (no backend route under its name), `MissingAgent` (the agent is not in
//!   the proc or does not answer), `Launch` or `NotAllowed`.
//! - **HST-3** A failed spawn leaves nothing behind: by the time it returns, the child was
//!   killed and reaped (an in-process proc's task cancelled), and its route, name and work
//!   directory are gone.
//! - **HST-6** When a proc exits its route is removed and its work directory deleted *before*
//!   its name is released, and both before its handle reports `Exited`: once `wait()`
//!   returns, the name can be spawned again and nothing routes to the old proc.
//! - **HST-13** A bulk terminate runs at most `max_concurrent` stops at once and reports
//!   `attempted == ok + failed.len()`.
//!
//! The `local` proc: reserved (never spawned by a request), it exists from the start as a
//! name that routes nowhere, and is created empty — an in-process node with no actors, routed
//! through this host — by the first [`Host::local_proc`] call; clients in this process expose
//! actors on it or send from it. Until then, messages to it come back undeliverable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kameo::actor::Spawn;
use procmesh_protocol::messages::{
    AgentRequest, BulkFailure, BulkOutcome, HostError, HostInfo, HostReply, HostRequest,
    HostStatus, ProcInfo, ProcReady, ProcStatus, SpawnSpec, SystemInfo,
};
use procmesh_protocol::{
    ActorId, BlobHash, ExitStatus, HostAddr, RemoteError, Timestamp, LOCAL_PROC, SERVICE_PROC,
};
use procmesh_transport::{LocalHub, Node, NodeBuilder, NodeError, SendFailure, TlsIdentity};
use tokio::sync::{mpsc, watch, OnceCell, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::blobs::BlobFetcher;
use crate::config::{HostConfig, StatePaths};
use crate::handle::{HandleTimeouts, ProcHandle, ReadyInfo};
use crate::manager::{Launch, ProcManager};
use crate::service::{BootstrapAgent, HostAgent, BOOTSTRAP_ACTOR, HOST_ACTOR};
use crate::system::{logical_cpus, system_info};
use crate::table::{Callback, ProcTable, Reservation};

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Neither `tls_identity` nor `tls_dir` is set.
    #[error("no TLS identity: set tls_dir (or tls_identity)")]
    NoIdentity,
    /// The identity in `tls_dir` could not be loaded.
    #[error("cannot load the TLS identity: {0}")]
    Identity(#[from] procmesh_transport::tls::TlsError),
    /// The frontend binds an unspecified address and no `advertise` address is set.
    #[error("listen address {0} is unspecified: set advertise to the address peers dial")]
    Advertise(std::net::SocketAddr),
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
    /// An actor could not be exposed (a bad name: a bug).
    #[error("cannot expose the host's actors: {0}")]
    Expose(#[from] procmesh_protocol::IdError),
}

static NEXT_HOST: AtomicU64 = AtomicU64::new(1);

/// The host agent. Cheap to clone; every clone is the same host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
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
    backend: HostAddr,
    started_at: Timestamp,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    blobs: BlobFetcher,
    system: SystemInfo,
    local: OnceCell<Node>,
    registration: Mutex<Option<JoinHandle<()>>>,
}

/// Now, by the host's clock.
pub(crate) fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

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
        wipe_dir(&paths.workers)?;
        wipe_dir(&paths.procs)?;
        let store = procmesh_transport::BlobStore::open(&paths.blobs)?;

        let hub = manager.local_hub().unwrap_or_default();
        let hub_name = format!(
            "host-{}-{}",
            std::process::id(),
            NEXT_HOST.fetch_add(1, Ordering::Relaxed)
        );
        let mut builder = NodeBuilder::new(SERVICE_PROC)
            .quic(config.listen, identity)
            .unix(&paths.socket)
            .local(&hub, &hub_name)
            .blob_store(store);
        if let Some(addr) = &config.advertise {
            builder = builder.addr(addr.clone());
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
            system: system_info(),
            local: OnceCell::new(),
            registration: Mutex::new(None),
        });
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

    /// The bootstrap actor, which procs send their [`ProcReady`] to.
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
        let reservation = self.inner.table.reserve(&spec.name)?;
        let inner = self.inner.clone();
        let span = tracing::info_span!("spawn", proc = %spec.name);
        tokio::spawn(inner.drive_spawn(spec, reservation).instrument(span))
            .await
            .map_err(|e| HostError::Internal(format!("spawn task failed: {e}")))?
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

    /// Answers one [`HostRequest`].
    pub async fn handle_request(&self, request: HostRequest) -> Result<HostReply, HostError> {
        match request {
            HostRequest::Spawn(spec) => Ok(HostReply::Spawned(self.spawn(spec).await?.info())),
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
            HostRequest::Status => Ok(HostReply::Status(self.status())),
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
        inner.node.unexpose(HOST_ACTOR);
        inner.node.unexpose(BOOTSTRAP_ACTOR);
        inner.node.shutdown(Duration::from_millis(100)).await;
        tracing::info!(addr = %inner.node.addr(), ?outcome, "host stopped");
        outcome
    }
}

/// How a ready callback was judged.
enum Check {
    /// Not from our child (wrong pid, wrong proc): refuse it, keep waiting (HST-12).
    Refuse(HostError),
    /// From our child, but it cannot work: the spawn fails with this (HST-2).
    Fail(HostError),
}

impl HostInner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn bootstrap_actor(&self) -> ActorId {
        self.node.actor_id(BOOTSTRAP_ACTOR).expect("valid name")
    }

    pub(crate) fn host_info(&self) -> HostInfo {
        HostInfo {
            addr: self.node.addr().clone(),
            capacity: self.config.capacity.unwrap_or_else(logical_cpus),
            labels: self.config.labels.clone(),
            system: self.system.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    fn timeouts(&self) -> HandleTimeouts {
        HandleTimeouts {
            agent_ask: self.config.agent_ask_timeout(),
            kill_wait: self.config.kill_wait(),
        }
    }

    /// A fresh, empty work directory for `name`.
    async fn fresh_work_dir(&self, name: &str) -> Result<std::path::PathBuf, HostError> {
        let dir = self.paths.proc_dir(name);
        let launch_err = |e: std::io::Error| HostError::Launch {
            name: name.to_owned(),
            reason: format!("work directory {}: {e}", dir.display()),
        };
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(launch_err(e)),
        }
        tokio::fs::create_dir_all(&dir).await.map_err(launch_err)?;
        Ok(dir)
    }

    async fn remove_work_dir(&self, name: &str) {
        let dir = self.paths.proc_dir(name);
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %dir.display(), "cannot remove a proc's work directory");
            }
        }
    }

    /// The spawn itself, in its own task (see [`Host::spawn`]).
    async fn drive_spawn(
        self: Arc<Self>,
        spec: SpawnSpec,
        reservation: Reservation,
    ) -> Result<ProcHandle, HostError> {
        let name = spec.name.clone();
        let Reservation {
            mut callbacks,
            handle: publish,
        } = reservation;
        let launched = async {
            let proc_id = self
                .node
                .addr()
                .proc(&name)
                .map_err(|e| HostError::BadName {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            let work_dir = self.fresh_work_dir(&name).await?;
            let launch = Launch {
                proc_id: proc_id.clone(),
                backend: self.backend.clone(),
                callback: self.bootstrap_actor(),
                work_dir,
                workers_dir: self.paths.workers.clone(),
                blobs_dir: self.paths.blobs.clone(),
                config: spec.config.clone(),
            };
            let control = self.manager.launch(launch).await?;
            Ok::<_, HostError>((proc_id, control))
        }
        .await;
        let (proc_id, control) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                // HST-3: nothing was started; free what was taken.
                tracing::warn!(%error, "launch failed");
                drop(publish);
                self.remove_work_dir(&name).await;
                self.table.release(&name, None);
                return Err(error);
            }
        };
        let handle = ProcHandle::new(
            proc_id,
            spec.config.labels.clone(),
            now(),
            control,
            self.node.clone(),
            self.timeouts(),
        );
        tracing::info!(pid = ?handle.pid(), "proc launched");
        publish.send_replace(Some(handle.clone()));
        self.spawn_exit_monitor(handle.clone());

        let timeout_ms = spec
            .config
            .ready_timeout_ms
            .unwrap_or(self.config.ready_timeout_ms);
        match self.await_ready(&handle, &mut callbacks, timeout_ms).await {
            Ok(()) => {
                tracing::info!("proc ready");
                Ok(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "spawn failed");
                handle.set_not_ready(error.clone());
                drop(callbacks);
                // HST-3: kill and wait until it is reaped and its name released.
                if let Err(kill_error) = handle.kill().await {
                    tracing::error!(%kill_error, "a proc whose spawn failed outlived SIGKILL");
                }
                Err(error)
            }
        }
    }

    /// Waits for a good ready callback, the proc's exit, or the timeout (0: none).
    async fn await_ready(
        &self,
        handle: &ProcHandle,
        callbacks: &mut mpsc::UnboundedReceiver<Callback>,
        timeout_ms: u64,
    ) -> Result<(), HostError> {
        let name = handle.name().to_owned();
        let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        let mut state = handle.subscribe();
        loop {
            let timer = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let ended = async {
                state
                    .wait_for(|s| s.status.is_exited() || s.stop_requested)
                    .await
                    .map(|s| s.clone())
            };
            tokio::select! {
                biased;
                _ = ended => {
                    // Exited, or asked to stop while starting: either way it ends unready.
                    let status = handle.outcome().await?;
                    return Err(HostError::ExitedEarly { name, status });
                }
                callback = callbacks.recv() => {
                    let Some(Callback { ready, reply }) = callback else {
                        return Err(HostError::ChannelLost(name));
                    };
                    match self.check_ready(handle, &ready).await {
                        Ok(info) => {
                            if handle.set_ready(info) {
                                let _ = reply.send(Ok(()));
                                return Ok(());
                            }
                            let _ = reply.send(Err(HostError::UnexpectedProc(format!(
                                "{} is being stopped", ready.proc_id
                            ))));
                        }
                        Err(Check::Refuse(error)) => {
                            tracing::warn!(%error, "refused a ready callback");
                            let _ = reply.send(Err(error));
                        }
                        Err(Check::Fail(error)) => {
                            let _ = reply.send(Err(error.clone()));
                            // An exit explains more than its symptoms.
                            if let Some(status) = handle.state().exit_status() {
                                return Err(HostError::ExitedEarly { name, status });
                            }
                            return Err(error);
                        }
                    }
                }
                _ = timer => {
                    return Err(HostError::ReadyTimeout { name, timeout_ms });
                }
            }
        }
    }

    /// HST-2, HST-12: whether a ready callback is from our child and the proc can work.
    async fn check_ready(
        &self,
        handle: &ProcHandle,
        ready: &ProcReady,
    ) -> Result<ReadyInfo, Check> {
        let name = handle.name().to_owned();
        if ready.proc_id != *handle.proc_id() {
            return Err(Check::Refuse(HostError::UnexpectedProc(format!(
                "{} is not {}",
                ready.proc_id,
                handle.proc_id()
            ))));
        }
        let expected = handle.control().ready_pid();
        if ready.pid != expected {
            return Err(Check::Refuse(HostError::UnexpectedProc(format!(
                "{} reported pid {}, but the proc is pid {expected}",
                ready.proc_id, ready.pid
            ))));
        }
        if ready.agent.proc_id() != handle.proc_id() {
            return Err(Check::Fail(HostError::MissingAgent(name)));
        }
        let routed = || self.node.proc_routes().iter().any(|r| *r == name);
        if !routed() {
            return Err(Check::Fail(HostError::MissingAddress(name)));
        }
        let agent = self.node.remote_ref::<AgentRequest>(ready.agent.clone());
        match agent
            .ask(AgentRequest::Capacity, self.config.agent_ask_timeout())
            .await
        {
            // Any answer, even a refusal, shows the agent is there.
            Ok(_) => {}
            Err(SendFailure::Timeout(_)) => return Err(Check::Fail(HostError::ChannelLost(name))),
            Err(SendFailure::Remote(RemoteError::Undeliverable(_))) if !routed() => {
                return Err(Check::Fail(HostError::ChannelLost(name)));
            }
            Err(error) => {
                tracing::warn!(%error, agent = %ready.agent, "the agent does not answer");
                return Err(Check::Fail(HostError::MissingAgent(name)));
            }
        }
        Ok(ReadyInfo {
            addr: ready.addr.clone(),
            agent: ready.agent.clone(),
            pid: ready.pid,
        })
    }

    fn spawn_exit_monitor(self: &Arc<Self>, handle: ProcHandle) {
        let inner = self.clone();
        let span = tracing::info_span!("proc", proc = %handle.proc_id());
        tokio::spawn(
            async move {
                let status = handle.control().wait().await;
                inner.proc_exited(&handle, status).await;
            }
            .instrument(span),
        );
    }

    /// HST-6, HST-7: clean up after an exit, then announce it.
    async fn proc_exited(&self, handle: &ProcHandle, status: ExitStatus) {
        let name = handle.name().to_owned();
        self.node.remove_proc_route(&name);
        self.remove_work_dir(&name).await;
        self.table.release(&name, Some(handle));
        let before = handle.state();
        handle.set_exited(status);
        let crashed = !before.stop_requested && before.ready.is_some();
        if crashed && !self.is_shutting_down() {
            tracing::warn!(%status, "proc exited without being asked");
            self.report_lost(
                handle.proc_id().clone(),
                status,
                format!("exited without being asked ({status})"),
            );
        } else {
            tracing::info!(%status, "proc exited");
        }
    }
}
