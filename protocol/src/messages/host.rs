//! Messages of the host agent: [`HostRequest`] (spawn, terminate, kill, list, status), the
//! bootstrap callback [`ProcReady`], and what a host says about itself ([`HostInfo`]).
//!
//! Bootstrap of an OS proc, through the environment variables named here:
//!
//! ```text
//! host                                         child (proc-agent binary)
//!  │ spawn with PROCMESH_PROC_ID=quic!10.0.0.5:7700,worker-3
//!  │            PROCMESH_BACKEND_ADDR=unix!/run/procmesh/host.sock
//!  │            PROCMESH_CALLBACK=quic!10.0.0.5:7700,service.bootstrap
//!  │ ───────────────────────────────────────────▶ │ connects to the backend, starts its agent
//!  │ ◀── ask ProcReady { proc_id, addr, agent, pid } ──│
//!  │ ── Ok(()) ─────────────────────────────────▶ │
//!  ▼ the spawn resolves with ProcInfo (status Ready)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RemoteMessage;
use crate::action::{ExitStatus, Timestamp};
use crate::cas::BlobHash;
use crate::ids::{ActorId, HostAddr, ProcId};

/// Environment variable holding the child's own [`ProcId`] (text form).
pub const ENV_PROC_ID: &str = "PROCMESH_PROC_ID";
/// Environment variable holding the host backend address the child sends everything through.
pub const ENV_BACKEND_ADDR: &str = "PROCMESH_BACKEND_ADDR";
/// Environment variable holding the [`ActorId`] the child sends [`ProcReady`] to.
pub const ENV_CALLBACK: &str = "PROCMESH_CALLBACK";
/// Environment variable holding the proc's own work directory (its sandboxes live there).
pub const ENV_WORK_DIR: &str = "PROCMESH_WORK_DIR";
/// Environment variable holding the host-wide worker cache directory (`workers/`).
pub const ENV_WORKERS_DIR: &str = "PROCMESH_WORKERS_DIR";
/// Environment variable holding the host's blob store directory, shared on disk with procs.
pub const ENV_BLOBS_DIR: &str = "PROCMESH_BLOBS_DIR";
/// Environment variable holding the most actions the proc runs at once (`0` = logical CPUs).
pub const ENV_MAX_ACTIONS: &str = "PROCMESH_MAX_ACTIONS";
/// Environment variable holding the proc's bootstrap secret (64 hex characters): drawn fresh
/// by the host for every proc it starts; the proc proves with it, in the hello of its backend
/// connection, which proc it is. The proc agent removes it from its own environment as soon
/// as it has read it, so nothing it starts inherits it.
pub const ENV_BOOTSTRAP_SECRET: &str = "PROCMESH_BOOTSTRAP_SECRET";
/// Environment variable holding the orchestrator's actor the host registers with, when it has
/// one: besides the host's own `service` actors, the only sender a proc agent takes requests
/// from.
pub const ENV_ORCHESTRATOR: &str = "PROCMESH_ORCHESTRATOR";

/// Environment variable holding how the proc isolates its actions: an [`ActionIsolation`] as
/// MessagePack in hex. Unset: no isolation (hosts that predate it, in-process tests).
pub const ENV_ISOLATION: &str = "PROCMESH_ISOLATION";

/// How a host runs actions: `namespaces` (the default where the kernel allows it) or `none`
/// (an explicit, logged opt-out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// Each action in its own user, mount, network, pid, ipc and uts namespaces, as an
    /// unprivileged user, in a root of read-only binds with a writable `Outputs/` and `/tmp`.
    #[default]
    Namespaces,
    /// Actions run as the proc agent's user in the host's namespaces (cgroup limits still apply
    /// where available; inputs are copied, not linked).
    None,
}

impl IsolationMode {
    /// `namespaces` or `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IsolationMode::Namespaces => "namespaces",
            IsolationMode::None => "none",
        }
    }
}

impl std::fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IsolationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<IsolationMode, String> {
        match s {
            "namespaces" => Ok(IsolationMode::Namespaces),
            "none" => Ok(IsolationMode::None),
            other => Err(format!(
                "unknown isolation {other:?}: expected namespaces or none"
            )),
        }
    }
}

/// What a host tells each proc about isolating actions ([`ENV_ISOLATION`]), decided once at the
/// host's start (from its configuration and what the machine offers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionIsolation {
    /// The mode.
    pub mode: IsolationMode,
    /// The cgroup hierarchy actions are limited by, `v1` or `v2`; `None`: no limits.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The host's base cgroup name (action cgroups are created under it).
    #[serde(default)]
    pub cgroup_name: Option<String>,
    /// The host uid an action runs as (`namespaces` mode, when the proc agent runs as root).
    pub uid: u32,
    /// The host gid an action runs as.
    pub gid: u32,
    /// Memory limit of an action that names none, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Most processes an action may have at once.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Size of an action's private `/tmp`, in bytes.
    pub tmp_bytes: u64,
    /// Canonical directories host programs may be run from (empty: none).
    #[serde(default)]
    pub host_programs: Vec<std::path::PathBuf>,
    /// Whether the seccomp deny-list is applied.
    #[serde(default)]
    pub seccomp: bool,
    /// Contents of the sandbox's `/etc/resolv.conf` (`None`: none is written).
    #[serde(default)]
    pub resolv_conf: Option<String>,
}

impl ActionIsolation {
    /// The text form in [`ENV_ISOLATION`].
    pub fn to_env(&self) -> String {
        let bytes = rmp_serde::to_vec_named(self).expect("isolation settings serialise");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`to_env`](Self::to_env)'s form.
    pub fn from_env(text: &str) -> Result<ActionIsolation, String> {
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return Err("not hex".into());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

/// How a host isolates actions, as it announces it ([`HostInfo::isolation`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationSummary {
    /// The mode.
    pub mode: IsolationMode,
    /// `v1`, `v2`, or `None` when actions run without cgroup limits.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// What the machine could not give, e.g. `no cgroup delegation: memory, pids and CPU limits
    /// are off`.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A proc's bootstrap secret: 32 random bytes the host draws for each proc it starts. Its
/// `Debug` form never shows the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BootstrapSecret(pub [u8; 32]);

impl std::fmt::Debug for BootstrapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapSecret(..)")
    }
}

impl BootstrapSecret {
    /// Its text form in [`ENV_BOOTSTRAP_SECRET`]: 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        crate::cas::write_hex(&self.0, &mut s).expect("writing to a String");
        s
    }

    /// Parses the text form.
    pub fn from_hex(text: &str) -> Result<BootstrapSecret, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("not 64 hex characters".into());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(BootstrapSecret(bytes))
    }
}

/// The bootstrap values of a proc: what the host hands a proc it starts (as the `ENV_*`
/// environment variables for an OS child, as this value in-process) and what the proc reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcBootstrap {
    /// The proc's id: the host's frontend address and the proc's name.
    pub proc_id: ProcId,
    /// The host backend the proc connects to and sends everything through.
    pub backend: HostAddr,
    /// The host's bootstrap actor, to which the proc sends its [`ProcReady`].
    pub callback: ActorId,
    /// The proc's own work directory.
    pub work_dir: std::path::PathBuf,
    /// The host's worker cache, shared by its procs.
    pub workers_dir: std::path::PathBuf,
    /// The host's blob store, shared by its procs.
    pub blobs_dir: std::path::PathBuf,
    /// Most actions the proc runs at once; `None` for the logical CPUs.
    pub max_actions: Option<u32>,
    /// The proc's bootstrap secret ([`ENV_BOOTSTRAP_SECRET`]); `None` from hosts that predate it.
    pub secret: Option<BootstrapSecret>,
    /// The orchestrator the host works for ([`ENV_ORCHESTRATOR`]); `None` for a standalone host.
    pub orchestrator: Option<ActorId>,
    /// How actions are isolated ([`ENV_ISOLATION`]); `None`: not at all.
    pub isolation: Option<ActionIsolation>,
}

/// A bootstrap variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct BootstrapVarError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ProcBootstrap {
    /// The environment variables carrying these values, in a fixed order
    /// (`PROCMESH_MAX_ACTIONS`, `PROCMESH_BOOTSTRAP_SECRET` and `PROCMESH_ORCHESTRATOR` only
    /// when set).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (ENV_PROC_ID, self.proc_id.to_string()),
            (ENV_BACKEND_ADDR, self.backend.to_string()),
            (ENV_CALLBACK, self.callback.to_string()),
            (ENV_WORK_DIR, self.work_dir.display().to_string()),
            (ENV_WORKERS_DIR, self.workers_dir.display().to_string()),
            (ENV_BLOBS_DIR, self.blobs_dir.display().to_string()),
        ];
        if let Some(max) = self.max_actions {
            vars.push((ENV_MAX_ACTIONS, max.to_string()));
        }
        if let Some(secret) = &self.secret {
            vars.push((ENV_BOOTSTRAP_SECRET, secret.to_hex()));
        }
        if let Some(orchestrator) = &self.orchestrator {
            vars.push((ENV_ORCHESTRATOR, orchestrator.to_string()));
        }
        if let Some(isolation) = &self.isolation {
            vars.push((ENV_ISOLATION, isolation.to_env()));
        }
        vars
    }

    /// Reads the values back through `get` (e.g. `|name| std::env::var(name).ok()`).
    pub fn from_vars(
        get: impl Fn(&'static str) -> Option<String>,
    ) -> Result<ProcBootstrap, BootstrapVarError> {
        let text = |var: &'static str| {
            get(var).ok_or(BootstrapVarError {
                var,
                reason: "not set".into(),
            })
        };
        fn parsed<T: std::str::FromStr>(
            var: &'static str,
            text: String,
        ) -> Result<T, BootstrapVarError>
        where
            T::Err: std::fmt::Display,
        {
            text.parse().map_err(|e: T::Err| BootstrapVarError {
                var,
                reason: e.to_string(),
            })
        }
        Ok(ProcBootstrap {
            proc_id: parsed(ENV_PROC_ID, text(ENV_PROC_ID)?)?,
            backend: parsed(ENV_BACKEND_ADDR, text(ENV_BACKEND_ADDR)?)?,
            callback: parsed(ENV_CALLBACK, text(ENV_CALLBACK)?)?,
            work_dir: text(ENV_WORK_DIR)?.into(),
            workers_dir: text(ENV_WORKERS_DIR)?.into(),
            blobs_dir: text(ENV_BLOBS_DIR)?.into(),
            max_actions: match get(ENV_MAX_ACTIONS) {
                Some(max) => Some(parsed(ENV_MAX_ACTIONS, max)?),
                None => None,
            },
            secret: match get(ENV_BOOTSTRAP_SECRET) {
                Some(text) => {
                    Some(
                        BootstrapSecret::from_hex(&text).map_err(|reason| BootstrapVarError {
                            var: ENV_BOOTSTRAP_SECRET,
                            reason,
                        })?,
                    )
                }
                None => None,
            },
            orchestrator: match get(ENV_ORCHESTRATOR) {
                Some(text) => Some(parsed(ENV_ORCHESTRATOR, text)?),
                None => None,
            },
            isolation: match get(ENV_ISOLATION) {
                Some(text) => {
                    Some(
                        ActionIsolation::from_env(&text).map_err(|reason| BootstrapVarError {
                            var: ENV_ISOLATION,
                            reason,
                        })?,
                    )
                }
                None => None,
            },
        })
    }
}

/// A request to the host agent (the `service` proc's `host` actor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostRequest {
    /// Start a proc and wait until it is ready. Answered by [`HostReply::Spawned`].
    Spawn(SpawnSpec),
    /// Stop a proc politely: SIGTERM (or a stop message), then SIGKILL at the deadline.
    /// Answered by [`HostReply::Terminated`] once it has exited.
    Terminate {
        /// The proc's name on this host.
        name: String,
        /// How long it may take to stop before it is killed, in milliseconds.
        grace_ms: u64,
        /// Why, for its logs and ours.
        reason: String,
    },
    /// Kill a proc at once. Answered by [`HostReply::Terminated`].
    Kill {
        /// The proc's name on this host.
        name: String,
    },
    /// Terminate every proc, a bounded number at a time. Answered by
    /// [`HostReply::TerminatedAll`].
    TerminateAll {
        /// Grace period of each proc, in milliseconds.
        grace_ms: u64,
        /// Why.
        reason: String,
        /// How many procs to stop concurrently; 0 for the host's default.
        #[serde(default)]
        max_concurrent: u32,
    },
    /// List the procs. Answered by [`HostReply::Procs`].
    ListProcs,
    /// Make sure these blobs are in the host's blob store (which its procs share on disk),
    /// fetching what is missing from the node at `from`, verified. Answered by
    /// [`HostReply::BlobsReady`] once every one is there.
    FetchBlobs {
        /// The blobs needed.
        hashes: Vec<BlobHash>,
        /// Where to fetch missing ones (the orchestrator, or any node keeping a blob store).
        from: HostAddr,
    },
    /// The host's status. Answered by [`HostReply::Status`].
    Status,
}

/// Which proc to start, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// The proc's name: unique on the host, not `service` or `local`, e.g. `worker-3`.
    pub name: String,
    /// How to start it.
    #[serde(default)]
    pub config: ProcConfig,
}

/// How to start a proc. Every field is optional; the host's configuration fills the gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcConfig {
    /// Most actions its runner runs at once, e.g. `Some(8)`; `None` for the logical CPUs.
    #[serde(default)]
    pub max_actions: Option<u32>,
    /// Extra environment of the child, e.g. `{"RUST_LOG": "debug"}`. In a [`HostRequest::Spawn`]
    /// every name must be allowed by the host's `spawn_env_allow` (exact names or `PREFIX_*`,
    /// none by default), and `LD_*` and `PROCMESH_*` never are: a refused name fails the spawn
    /// with [`HostError::Forbidden`] naming it, and nothing is started.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra arguments of the proc-agent binary.
    #[serde(default)]
    pub args: Vec<String>,
    /// How long to wait for [`ProcReady`], in milliseconds: `None` for the host's default,
    /// `Some(0)` to wait without limit.
    #[serde(default)]
    pub ready_timeout_ms: Option<u64>,
    /// Labels of this proc, reported with it, e.g. `{"pool": "batch"}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What the host agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostReply {
    /// The proc is ready.
    Spawned(ProcInfo),
    /// The proc has exited, with this status (the first terminal outcome: every concurrent
    /// caller sees the same).
    Terminated {
        /// The proc's name.
        name: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// What a bulk termination did.
    TerminatedAll(BulkOutcome),
    /// Every proc on the host.
    Procs(Vec<ProcInfo>),
    /// Every blob asked for is in the host's store.
    BlobsReady {
        /// How many had to be fetched.
        fetched: u32,
    },
    /// The host's status.
    Status(Box<HostStatus>),
}

impl RemoteMessage for HostRequest {
    type Reply = Result<HostReply, HostError>;
}

/// The outcome of a bulk termination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkOutcome {
    /// How many procs it tried to stop.
    pub attempted: u32,
    /// How many stopped.
    pub ok: u32,
    /// The ones that did not, and why.
    #[serde(default)]
    pub failed: Vec<BulkFailure>,
}

/// One proc a bulk termination could not stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkFailure {
    /// The proc's name.
    pub name: String,
    /// What went wrong.
    pub error: HostError,
}

/// Where a proc is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcStatus {
    /// Spawned, not yet ready.
    Starting,
    /// Its address and agent are known; it accepts work.
    Ready,
    /// Being stopped.
    Terminating,
    /// It has exited.
    Exited(ExitStatus),
}

impl ProcStatus {
    /// Whether the proc has exited.
    pub const fn is_exited(self) -> bool {
        matches!(self, ProcStatus::Exited(_))
    }
}

/// A proc as the host knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    /// Its id.
    pub proc_id: ProcId,
    /// Where it is in its life.
    pub status: ProcStatus,
    /// Its agent, once ready.
    #[serde(default)]
    pub agent: Option<ActorId>,
    /// Its OS process id (none for in-process procs).
    #[serde(default)]
    pub pid: Option<u32>,
    /// When it was spawned, by the host's clock.
    pub started_at: Timestamp,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The bootstrap callback: a new proc tells its host where it answers. Sent as an ask to the
/// actor in [`ENV_CALLBACK`]; the host answers `Ok(())`, or refuses a proc it is not spawning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcReady {
    /// The proc id it was given in [`ENV_PROC_ID`].
    pub proc_id: ProcId,
    /// An address the proc itself listens at, e.g. `unix!/var/lib/procmesh/procs/worker-3/agent.sock`
    /// (the host reaches it through its backend route; this is for diagnostics and redials).
    pub addr: HostAddr,
    /// Its agent actor.
    pub agent: ActorId,
    /// Its OS process id, which the host checks against the child it spawned.
    pub pid: u32,
}

impl RemoteMessage for ProcReady {
    type Reply = Result<(), HostError>;
}

/// What a host tells the orchestrator when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Its frontend address, e.g. `quic!10.0.0.5:7700`.
    pub addr: HostAddr,
    /// How many actions it runs at once, over all its procs.
    pub capacity: u32,
    /// Operator labels, e.g. `{"zone": "eu-1", "gpu": "a100"}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The machine.
    pub system: SystemInfo,
    /// The host agent's version, e.g. `0.1.0`.
    #[serde(default)]
    pub version: String,
    /// The node's name: the one its certificate names, or (with a fleet-wide host
    /// certificate) the name it chose at first start. Empty from hosts that predate it.
    #[serde(default)]
    pub node: String,
    /// The node secret (64 hex characters) of a host whose certificate names no node: drawn at
    /// its first start and kept in its state dir. The orchestrator binds the node's name and
    /// address to the first registration's secret and refuses any other. Never shown.
    #[serde(default)]
    pub node_secret: Option<String>,
    /// How it isolates actions; `None` from hosts that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationSummary>,
}

/// The machine a host runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemInfo {
    /// Logical CPUs.
    pub cores: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Operating system, e.g. `linux 6.8.0`.
    pub os: String,
    /// Host name.
    pub hostname: String,
    /// CPU architecture, e.g. `x86_64`.
    #[serde(default)]
    pub arch: String,
}

/// A host's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// What it registers with.
    pub info: HostInfo,
    /// Procs in its table, whatever their status.
    pub procs: u32,
    /// Procs that are ready.
    pub ready: u32,
    /// When the host agent started, by its clock.
    pub started_at: Timestamp,
    /// Whether it is shutting down (refusing spawns).
    #[serde(default)]
    pub shutting_down: bool,
}

/// Why the host refused or failed a request. Crosses the wire; each variant has a stable
/// [`code`](Self::code) (MSG-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HostError {
    /// The proc name is not a valid name.
    #[error("bad proc name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proc name is reserved (`service`, `local`).
    #[error("proc name {0:?} is reserved")]
    ReservedName(String),
    /// A proc of that name exists.
    #[error("proc name {0:?} is already in use")]
    NameInUse(String),
    /// No proc of that name exists.
    #[error("no proc named {0:?}")]
    UnknownProc(String),
    /// The proc-agent binary is outside the allow-listed directory.
    #[error("executable {path:?} is not allowed: {reason}")]
    NotAllowed {
        /// The canonical path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The OS could not start the child.
    #[error("cannot launch proc {name:?}: {reason}")]
    Launch {
        /// The proc's name.
        name: String,
        /// The OS error.
        reason: String,
    },
    /// The proc did not report ready in time.
    #[error("proc {name:?} was not ready after {timeout_ms} ms")]
    ReadyTimeout {
        /// The proc's name.
        name: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The proc exited before it was ready.
    #[error("proc {name:?} exited before it was ready ({status})")]
    ExitedEarly {
        /// The proc's name.
        name: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// The channel to the proc was lost before it was ready.
    #[error("lost the channel to proc {0:?} before it was ready")]
    ChannelLost(String),
    /// The proc reported ready without an address.
    #[error("proc {0:?} reported ready without an address")]
    MissingAddress(String),
    /// The proc reported ready without an agent.
    #[error("proc {0:?} reported ready without an agent")]
    MissingAgent(String),
    /// A [`ProcReady`] for a proc the host is not spawning (or from another pid).
    #[error("unexpected ready callback from {0}")]
    UnexpectedProc(String),
    /// A blob could not be fetched or was refused (wrong hash or size).
    #[error("blob {hash}: {reason}")]
    Blob {
        /// The blob.
        hash: BlobHash,
        /// What went wrong.
        reason: String,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// Anything else; the text says what.
    #[error("host error: {0}")]
    Internal(String),
    /// The sender's verified identity may not make this request; nothing changed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The proc would take more slots than the host has left (HST-25); nothing changed.
    #[error("proc {name:?} asks for {asked} slots but the host has {left} of its {capacity} left")]
    NoCapacity {
        /// The proc.
        name: String,
        /// The slots it asked for (1 when it named none: at least one).
        asked: u32,
        /// The slots not held by other procs.
        left: u32,
        /// The host's capacity.
        capacity: u32,
    },
}

impl HostError {
    /// A stable, matchable code.
    pub const fn code(&self) -> &'static str {
        match self {
            HostError::BadName { .. } => "bad_name",
            HostError::ReservedName(_) => "reserved_name",
            HostError::NameInUse(_) => "name_in_use",
            HostError::UnknownProc(_) => "unknown_proc",
            HostError::NotAllowed { .. } => "not_allowed",
            HostError::Launch { .. } => "launch",
            HostError::ReadyTimeout { .. } => "ready_timeout",
            HostError::ExitedEarly { .. } => "exited_early",
            HostError::ChannelLost(_) => "channel_lost",
            HostError::MissingAddress(_) => "missing_address",
            HostError::MissingAgent(_) => "missing_agent",
            HostError::UnexpectedProc(_) => "unexpected_proc",
            HostError::Blob { .. } => "blob",
            HostError::ShuttingDown => "shutting_down",
            HostError::Internal(_) => "internal",
            HostError::Forbidden(_) => "forbidden",
            HostError::NoCapacity { .. } => "no_capacity",
        }
    }
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn bootstrap_values_round_trip_through_the_environment() {
        let proc_id: ProcId = "quic!10.0.0.5:7700,worker-3".parse().unwrap();
        let boot = ProcBootstrap {
            callback: proc_id
                .addr()
                .proc("service")
                .unwrap()
                .actor("bootstrap")
                .unwrap(),
            proc_id,
            backend: "unix!/var/lib/procmesh/host.sock".parse().unwrap(),
            work_dir: "/var/lib/procmesh/procs/worker-3".into(),
            workers_dir: "/var/lib/procmesh/workers".into(),
            blobs_dir: "/var/lib/procmesh/blobs".into(),
            max_actions: Some(8),
            secret: Some(BootstrapSecret([0xa5; 32])),
            orchestrator: Some("quic!10.0.0.1:7600,service.orchestrator".parse().unwrap()),
            isolation: None,
        };
        let vars: HashMap<_, _> = boot.env().into_iter().collect();
        assert_eq!(vars[ENV_BOOTSTRAP_SECRET], "a5".repeat(32));
        assert!(
            !format!("{boot:?}").contains("a5a5"),
            "the secret is never shown"
        );
        assert_eq!(
            ProcBootstrap::from_vars(|k| vars.get(k).cloned()).unwrap(),
            boot
        );
        let err =
            ProcBootstrap::from_vars(|k| (k != ENV_CALLBACK).then(|| vars[k].clone())).unwrap_err();
        assert_eq!(err.var, ENV_CALLBACK);
        let err = ProcBootstrap::from_vars(|k| {
            Some(if k == ENV_MAX_ACTIONS {
                "many".into()
            } else {
                vars[k].clone()
            })
        })
        .unwrap_err();
        assert_eq!(err.var, ENV_MAX_ACTIONS);
    }

    #[test]
    fn isolation_settings_round_trip_through_the_environment() {
        let iso = ActionIsolation {
            mode: IsolationMode::Namespaces,
            cgroup: Some("v1".into()),
            cgroup_name: Some("procmesh-0123456789ab".into()),
            uid: 65534,
            gid: 65534,
            memory_bytes: Some(1 << 30),
            pids: Some(1024),
            tmp_bytes: 1 << 30,
            host_programs: vec!["/usr/bin".into()],
            seccomp: true,
            resolv_conf: None,
        };
        let text = iso.to_env();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(ActionIsolation::from_env(&text), Ok(iso));
        assert!(ActionIsolation::from_env("abc").is_err());
        assert!(ActionIsolation::from_env("zz").is_err());
        assert!(ActionIsolation::from_env("00").is_err());
        assert_eq!("none".parse::<IsolationMode>(), Ok(IsolationMode::None));
        assert!("sandbox".parse::<IsolationMode>().is_err());
    }
}
