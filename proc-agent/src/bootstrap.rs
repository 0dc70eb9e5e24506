//! Starting a proc agent in a child process the host spawned: read the bootstrap environment,
//! connect to the host's backend, start the runner and the agent, call back with `ProcReady`,
//! then serve until stopped.
//!
//! ```text
//!  env PROCMESH_PROC_ID, _BACKEND_ADDR, _CALLBACK, _WORK_DIR, _WORKERS_DIR, _BLOBS_DIR, _MAX_ACTIONS
//!   │
//!   ├─ PROCMESH_BOOTSTRAP_SECRET read, then removed from the environment (actions never
//!   │        inherit it)
//!   ├─ Node: proc id = (host frontend, name), every outbound message via the backend socket,
//!   │        whose hello claims the proc's name with proc_proof(secret) (HST-18),
//!   │        listening on <work dir>/agent.sock (the address reported in ProcReady; only
//!   │        the host's process is admitted there)
//!   ├─ Runner over the host's shared blob store and worker cache
//!   ├─ expose `agent` ─▶ ask ProcReady { proc_id, addr, agent, pid } to the callback
//!   └─ serve until Stop has finished, or SIGTERM (host terminate, or the host died:
//!      parent-death signal) ─▶ cancel actions, delete sandboxes, flush the report outbox
//!      (at most 3 s), exit 0
//! ```

use std::sync::Arc;
use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::messages::host::{
    ProcBootstrap, ProcReady, ENV_BOOTSTRAP_SECRET, ENV_PROC_ID, ENV_WORK_DIR,
};
use procmesh_protocol::{HostAddr, SERVICE_PROC};
use procmesh_transport::{BlobStore, NodeBuilder};
use tokio::sync::{mpsc, Notify};

use crate::agent::{MeshResolver, ProcAgent};
use crate::outbox::{PumpConfig, ReportPump};
use crate::runner::{Executor, Runner, RunnerConfig};

/// How long the host has to acknowledge `ProcReady`.
const READY_ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the last reports may take to be answered before the proc exits anyway.
const REPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long running actions get to stop when the proc is told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why a proc agent could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A bootstrap variable is missing or malformed.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] procmesh_transport::NodeError),
    /// The blob store could not be opened.
    #[error(transparent)]
    Blob(#[from] procmesh_transport::BlobError),
    /// The runner could not start.
    #[error("runner: {0}")]
    Runner(String),
    /// The host did not acknowledge `ProcReady`.
    #[error("host refused or missed our ready callback: {0}")]
    Callback(String),
}

/// What the host told the child through its environment.
pub type Bootstrap = ProcBootstrap;

/// Reads the bootstrap variables the host set, and removes the bootstrap secret from this
/// process's environment, so that nothing it starts inherits it. Call it before any other
/// thread starts (it changes the environment).
pub fn from_env() -> Result<Bootstrap, BootstrapError> {
    let boot = ProcBootstrap::from_vars(|name| std::env::var(name).ok());
    std::env::remove_var(ENV_BOOTSTRAP_SECRET);
    boot.map_err(|e| BootstrapError::Env {
        var: e.var,
        reason: e.reason,
    })
}

/// Refuses every link accepted on the agent's own socket except from its host's user and
/// process: nobody else may talk to a proc agent directly (PA-AG-6).
struct AgentAdmission;

impl procmesh_transport::Admission for AgentAdmission {
    fn admit(&self, peer: &procmesh_transport::PeerInfo) -> Result<(), String> {
        let Some(cred) = peer.cred else {
            return Ok(());
        };
        let uid = nix::unistd::geteuid().as_raw();
        let host = std::os::unix::process::parent_id();
        if cred.uid == uid && u32::try_from(cred.pid).ok() == Some(host) {
            Ok(())
        } else {
            Err(format!(
                "pid {} uid {} is not this proc's host (pid {host} uid {uid})",
                cred.pid, cred.uid
            ))
        }
    }
}

/// The variable choosing the runner's [`Executor`]: `process` (the default) or `noop` (actions
/// complete at once without running anything; for `procmesh bench mesh`). Not part of the
/// host's bootstrap contract: a benchmark sets it in the host's environment, which its procs
/// inherit.
pub const ENV_EXECUTOR: &str = "PROCMESH_EXECUTOR";

/// The variable naming a file the runner appends one JSON line per finished attempt to, with
/// the microseconds it spent in each stage of [`STAGES`](crate::runner::STAGES), e.g.
/// `{"lsn":7,"attempt":1,"stages_us":{"receive":12,"slot":3,...}}` (`procmesh bench runner
/// --breakdown`). Unset: nothing is measured or written. Like [`ENV_EXECUTOR`], a benchmark's
/// setting, not part of the host's bootstrap contract.
pub const ENV_STAGE_LOG: &str = "PROCMESH_STAGE_LOG";

fn executor_from_env() -> Result<Executor, BootstrapError> {
    match std::env::var(ENV_EXECUTOR) {
        Err(_) => Ok(Executor::Process),
        Ok(text) => text.parse().map_err(|reason| BootstrapError::Env {
            var: ENV_EXECUTOR,
            reason,
        }),
    }
}

/// Runs a proc agent until it is stopped. Returns once actions are cancelled and sandboxes
/// deleted.
pub async fn run(boot: Bootstrap) -> Result<(), BootstrapError> {
    if let Err(error) = procmesh_sys::prctl::set_child_subreaper() {
        tracing::warn!(%error, "cannot become a subreaper; orphans of actions go to init");
    }
    std::fs::create_dir_all(&boot.work_dir).map_err(|e| BootstrapError::Env {
        var: ENV_WORK_DIR,
        reason: format!("{}: {e}", boot.work_dir.display()),
    })?;
    let socket = boot.work_dir.join("agent.sock");
    let node = NodeBuilder::new(boot.proc_id.name())
        .addr(boot.proc_id.addr().clone())
        .default_route(boot.backend.clone())
        .node_claim(boot.proc_id.name(), boot.secret.map(|s| s.0))
        .unix(&socket)
        .start()
        .await?;
    node.set_admission(Arc::new(AgentAdmission));
    let store = BlobStore::open_shared(&boot.blobs_dir)?;
    let host = boot
        .proc_id
        .addr()
        .proc(SERVICE_PROC)
        .and_then(|p| p.actor("host"))
        .map_err(|e| BootstrapError::Env {
            var: ENV_PROC_ID,
            reason: e.to_string(),
        })?;
    let (reports, report_rx) = mpsc::unbounded_channel();
    let config = RunnerConfig {
        proc_id: boot.proc_id.clone(),
        work_dir: boot.work_dir.clone(),
        workers_dir: boot.workers_dir.clone(),
        max_actions: boot.max_actions.unwrap_or(0),
        executor: executor_from_env()?,
        isolation: boot.isolation.clone(),
        stage_log: std::env::var_os(ENV_STAGE_LOG).map(std::path::PathBuf::from),
        ..RunnerConfig::default()
    };
    let resolver = Arc::new(MeshResolver::new(node.clone(), host));
    let runner = Runner::start(config, store, resolver, reports)
        .map_err(|e| BootstrapError::Runner(e.to_string()))?;
    let pump = ReportPump::spawn(node.clone(), report_rx, PumpConfig::default());

    let stopped = Arc::new(Notify::new());
    let agent = ProcAgent::new(
        node.clone(),
        runner.clone(),
        STOP_GRACE,
        stopped.clone(),
        boot.orchestrator.as_ref(),
    );
    let agent = ProcAgent::spawn_with_mailbox(agent, kameo::mailbox::unbounded());
    let agent_id = node
        .expose("agent", agent)
        .map_err(|e| BootstrapError::Runner(e.to_string()))?;

    let ready = ProcReady {
        proc_id: boot.proc_id.clone(),
        addr: HostAddr::Unix(socket),
        agent: agent_id,
        pid: std::process::id(),
    };
    match node
        .remote_ref::<ProcReady>(boot.callback.clone())
        .ask(ready, READY_ACK_TIMEOUT)
        .await
    {
        Ok(Ok(())) => tracing::info!(proc = %boot.proc_id, "proc agent ready"),
        Ok(Err(e)) => return Err(BootstrapError::Callback(e.to_string())),
        Err(e) => return Err(BootstrapError::Callback(e.to_string())),
    }

    // Orphans of actions (a daemonised grandchild whose action ended) come to us: kill them.
    let reaper = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(procmesh_sys::reap_orphans).await;
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| BootstrapError::Runner(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = stopped.notified() => {}
        _ = term.recv() => {
            tracing::info!(proc = %boot.proc_id, "SIGTERM: stopping");
            runner.shutdown(STOP_GRACE).await;
        }
    }
    reaper.abort();
    let _ = tokio::task::spawn_blocking(procmesh_sys::reap_orphans).await;
    // PA-AG-5: the final transitions of the cancelled actions go out before the node does.
    if !pump.flush(REPORT_FLUSH_TIMEOUT).await {
        tracing::warn!(
            proc = %boot.proc_id,
            unacknowledged = pump.unacknowledged(),
            "exiting with reports the orchestrator has not answered"
        );
    }
    node.shutdown(Duration::from_millis(200)).await;
    Ok(())
}
