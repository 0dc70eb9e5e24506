//! Proc managers: how a proc is started, signalled and waited for. The host decides *what* to
//! start and drives each proc's life ([`ProcHandle`](crate::ProcHandle)); a [`ProcManager`]
//! only launches, and the [`ProcControl`] it returns only signals and waits.
//!
//! ```text
//! Host::spawn ── Launch { proc id, backend, callback, dirs, config } ──▶ ProcManager::launch
//!                                                                          │
//!     ProcHandle ◀── Arc<dyn ProcControl> (terminate = SIGTERM, kill = SIGKILL, wait) ◀──┘
//! ```
//!
//! Two managers: [`OsProcManager`] (production: a child OS process running the proc-agent
//! binary) and [`InProcessManager`] (tests and `demo`: a task in this process, started by a
//! factory the composer injects).

mod in_process;
mod os;

use std::path::PathBuf;
use std::sync::Arc;

use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::host::{ProcBootstrap, ProcConfig};
use procmesh_protocol::messages::HostError;
use procmesh_protocol::ExitStatus;
use procmesh_transport::remote::BoxFuture;
use procmesh_transport::LocalHub;

pub use in_process::{InProcessLaunch, InProcessManager, ProcFactory, StopSignal};
pub use os::{OsProcManager, OsProcManagerError};

/// Everything a manager needs to start one proc: the bootstrap values the proc reads (as
/// environment variables for an OS child, as this struct in-process) and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// What the proc reads at start (its work directory is created empty by the host;
    /// `max_actions` comes from the spawn's configuration).
    pub bootstrap: ProcBootstrap,
    /// How the spawn request asked for it to be started.
    pub config: ProcConfig,
}

impl Launch {
    /// The proc's name.
    pub fn name(&self) -> &str {
        self.bootstrap.proc_id.name()
    }

    /// The bootstrap environment of the proc ([`ProcBootstrap::env`]).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.bootstrap.env()
    }
}

/// What the host knows of an OS child, so that a reused pid is never mistaken for it (HST-9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRecord {
    /// Its process id.
    pub pid: u32,
    /// Its start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// The canonical path of the executable it runs.
    pub exe: PathBuf,
    /// The BLAKE3 hash of that executable when it was started.
    pub exe_hash: BlobHash,
}

/// Control over one launched proc. Implementations are idempotent and safe to call from many
/// tasks at once, before and after the proc exits.
pub trait ProcControl: Send + Sync + 'static {
    /// The OS process id, `None` for an in-process proc.
    fn pid(&self) -> Option<u32>;

    /// The pid the proc's `ProcReady` must carry: the child's pid, or this process's own for
    /// an in-process proc.
    fn ready_pid(&self) -> u32;

    /// The child's identity record, for an OS child.
    fn record(&self) -> Option<ChildRecord> {
        None
    }

    /// Asks the proc to stop (SIGTERM to an OS child). A proc that has exited is left alone.
    fn terminate(&self) -> Result<(), HostError>;

    /// Stops the proc at once (SIGKILL to an OS child; aborting an in-process proc's task).
    fn kill(&self) -> Result<(), HostError>;

    /// Resolves once the proc has exited and been reaped, with how it ended. Every call
    /// resolves to the same status.
    fn wait(&self) -> BoxFuture<'static, ExitStatus>;
}

/// Starts procs. Object-safe: the host holds an `Arc<dyn ProcManager>`.
pub trait ProcManager: Send + Sync + 'static {
    /// A short name for logs, e.g. `os` or `in-process`.
    fn kind(&self) -> &'static str;

    /// The in-process hub the host's node must join so that procs reach its backend over it,
    /// for managers that start procs inside this process. The host then passes
    /// `local!<its hub name>` as the backend address instead of its Unix socket.
    fn local_hub(&self) -> Option<LocalHub> {
        None
    }

    /// Starts the proc. Resolves once it runs (not once it is ready: the host waits for its
    /// callback). Errors: [`HostError::NotAllowed`], [`HostError::Launch`].
    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Arc<dyn ProcControl>, HostError>>;
}

/// Waits for the exit a monitor task publishes on `exit`. The monitor always publishes before
/// it ends; only a runtime shutting down gets past it without a status, and then the proc is
/// gone with it: reported as killed.
pub(crate) fn wait_exit(
    exit: &tokio::sync::watch::Receiver<Option<ExitStatus>>,
) -> BoxFuture<'static, ExitStatus> {
    let mut exit = exit.clone();
    Box::pin(async move {
        match exit.wait_for(Option::is_some).await {
            Ok(status) => status.expect("checked by wait_for"),
            Err(_) => ExitStatus::Signal(libc::SIGKILL),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_protocol::{ActorId, HostAddr, ProcId};

    // The bootstrap environment the proc agent reads: names, values and order pinned.
    #[test]
    fn the_bootstrap_environment_is_pinned() {
        let frontend: HostAddr = "quic!10.0.0.5:7700".parse().unwrap();
        let proc_id = frontend.proc("w-1").unwrap();
        let mut launch = Launch {
            bootstrap: ProcBootstrap {
                proc_id: proc_id.clone(),
                backend: "unix!/var/lib/procmesh/host.sock".parse().unwrap(),
                callback: frontend
                    .proc("service")
                    .unwrap()
                    .actor("bootstrap")
                    .unwrap(),
                work_dir: "/var/lib/procmesh/procs/w-1".into(),
                workers_dir: "/var/lib/procmesh/workers".into(),
                blobs_dir: "/var/lib/procmesh/blobs".into(),
                max_actions: None,
                secret: None,
                orchestrator: None,
                isolation: None,
            },
            config: ProcConfig::default(),
        };
        let expected = vec![
            ("PROCMESH_PROC_ID", "quic!10.0.0.5:7700,w-1"),
            ("PROCMESH_BACKEND_ADDR", "unix!/var/lib/procmesh/host.sock"),
            ("PROCMESH_CALLBACK", "quic!10.0.0.5:7700,service.bootstrap"),
            ("PROCMESH_WORK_DIR", "/var/lib/procmesh/procs/w-1"),
            ("PROCMESH_WORKERS_DIR", "/var/lib/procmesh/workers"),
            ("PROCMESH_BLOBS_DIR", "/var/lib/procmesh/blobs"),
        ];
        let env = launch.env();
        let as_str: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(as_str, expected);
        launch.bootstrap.max_actions = Some(8);
        assert_eq!(
            launch.env().last().unwrap(),
            &("PROCMESH_MAX_ACTIONS", "8".to_owned())
        );
        // The values parse back to what they name.
        assert_eq!(env[0].1.parse::<ProcId>().unwrap(), proc_id);
        assert_eq!(
            env[2].1.parse::<ActorId>().unwrap(),
            launch.bootstrap.callback
        );
    }
}
