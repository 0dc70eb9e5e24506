//! [`HostConfig`]: everything an operator sets for a host agent. A serde struct (TOML file <
//! environment < flags, merged by the CLI), unknown fields refused, every field defaulted.
//!
//! ```toml
//! listen = "0.0.0.0:7700"
//! advertise = "quic!10.0.0.5:7700"
//! tls_dir = "/etc/procmesh/tls"
//! state_dir = "/var/lib/procmesh"
//! allowed_dir = "/usr/lib/procmesh"
//! orchestrator = "quic!10.0.0.1:7600,service.orchestrator"
//! labels = { zone = "eu-1" }
//! respawn = true
//! node_name = "rack4-node17"           # only when the certificate names no node
//! spawn_env_allow = ["RUST_LOG", "MYAPP_*"]
//! isolation = "namespaces"              # or "none": an explicit, logged opt-out
//! action_uid = 65534                    # the host user actions run as (when the host is root)
//! action_gid = 65534
//! action_memory_bytes = 4294967296      # when an action names none; default: half the machine
//! action_pids = 1024
//! allowed_host_programs = ["/usr/bin"]  # roots host programs may be run from
//! ```
//!
//! The state directory holds, by [`StatePaths`]:
//!
//! ```text
//! <state_dir>/node.secret      the node secret (32 bytes, 0600), drawn at first start, kept
//! <state_dir>/run/             0700: only the host's user reaches the backend socket
//! <state_dir>/run/host.sock    backend Unix socket: every proc of the host connects here
//! <state_dir>/blobs/           the host's blob store, shared on disk with its procs
//! <state_dir>/workers/         worker cache of the procs (wiped at host start: stale)
//! <state_dir>/procs/<name>/    a proc's work directory (wiped at host start: stale)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use procmesh_protocol::{ActorId, HostAddr};
use procmesh_transport::{LimitSettings, NodeConfig, TlsIdentity};
use serde::{Deserialize, Serialize};

/// A host agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The QUIC frontend's bind address, e.g. `"0.0.0.0:7700"`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The frontend address other nodes reach this host at, e.g. `"quic!10.0.0.5:7700"`.
    /// Required when `listen` is an unspecified address (`0.0.0.0`, `::`); otherwise it
    /// defaults to the bound address.
    pub advertise: Option<HostAddr>,
    /// Directory holding the host's mTLS identity (`ca.pem`, `cert.pem`, `key.pem`), e.g.
    /// `"/etc/procmesh/tls"`. Ignored when [`tls_identity`](Self::tls_identity) is set.
    pub tls_dir: Option<PathBuf>,
    /// The mTLS identity as a value (set by code, e.g. `procmesh demo` or tests; never read
    /// from a file). Wins over `tls_dir`.
    #[serde(skip)]
    pub tls_identity: Option<TlsIdentity>,
    /// The host's state directory, e.g. `"/var/lib/procmesh"` (see [`StatePaths`]).
    pub state_dir: PathBuf,
    /// The proc-agent binary, run as `<binary> proc-agent [args…]`, e.g.
    /// `"/usr/lib/procmesh/procmesh"`. `None`: the running executable (`procmesh` re-execs
    /// itself).
    pub proc_binary: Option<PathBuf>,
    /// The directory the proc-agent binary must resolve into (after canonicalisation, so
    /// symlinks and `..` cannot lead out), e.g. `"/usr/lib/procmesh"`. `None`: the directory
    /// of the running executable.
    pub allowed_dir: Option<PathBuf>,
    /// The BLAKE3 hash (64 hex) the proc-agent binary must have, e.g. the one `b3sum` prints
    /// for the installed release. `None`: the hash of the binary at the host's first spawn is
    /// recorded, and a binary replaced later is refused until the host restarts (HST-20).
    pub proc_binary_blake3: Option<procmesh_protocol::BlobHash>,
    /// How long a spawn waits for the proc's ready callback, in milliseconds, e.g. `30000`;
    /// 0 waits without limit. A spawn request may override it.
    pub ready_timeout_ms: u64,
    /// Grace period of a terminate that names none (bulk terminate at shutdown), in
    /// milliseconds, e.g. `10000`.
    pub terminate_grace_ms: u64,
    /// On SIGTERM, how long the host lets running actions finish, taking no new work, before
    /// it terminates its procs (HST-27), in milliseconds, e.g. `30000`; `0`: no drain.
    pub drain_grace_ms: u64,
    /// How long to wait for a proc to exit after SIGKILL before the stop is reported as failed,
    /// in milliseconds, e.g. `5000`.
    pub kill_wait_ms: u64,
    /// How many procs a bulk terminate stops at once, e.g. `8`; at least 1.
    pub terminate_concurrency: u32,
    /// Timeout of the host's own asks to proc agents (stop, status for heartbeats, the agent
    /// check at ready), in milliseconds, e.g. `2000`.
    pub agent_ask_timeout_ms: u64,
    /// The orchestrator's service actor to register with and heartbeat, e.g.
    /// `"quic!10.0.0.1:7600,service.orchestrator"`. `None`: a standalone host.
    pub orchestrator: Option<ActorId>,
    /// How often to heartbeat, in milliseconds, e.g. `5000`, until the orchestrator's
    /// registration reply names its own interval, which then wins.
    pub heartbeat_interval_ms: u64,
    /// Operator labels announced at registration, e.g. `{ zone = "eu-1", gpu = "a100" }`.
    pub labels: BTreeMap<String, String>,
    /// How many actions the host announces it runs at once, e.g. `16`. `None`: its logical
    /// CPUs.
    pub capacity: Option<u32>,
    /// Whether a proc that exits without being asked (a crash, `kill -9`) is spawned again under
    /// the same name with the same spec, after a backoff of 200 ms doubling to 10 s (back to
    /// 200 ms once it stayed up 30 s), e.g. `true`. Procs stopped on purpose (terminate, kill,
    /// shutdown) never are (HST-14).
    pub respawn: bool,
    /// The node's name, e.g. `"rack4-node17"`, used only when the host's certificate names no
    /// node (a fleet-wide host certificate): the certificate's name always wins. `None`: the
    /// machine's hostname. The orchestrator binds this name (and the host's address) to the
    /// node secret of the first registration, kept in `<state_dir>/node.secret`.
    pub node_name: Option<String>,
    /// Environment variables a `Spawn` request may set for its proc (`ProcConfig.env`): exact
    /// names, or prefixes ending in `*` (e.g. `["RUST_LOG", "MYAPP_*"]`). Empty (the default):
    /// none. `LD_*` and `PROCMESH_*` are refused whatever this says. A request naming anything
    /// else is refused `Forbidden`, naming the variable, and nothing is started. Spawns made by
    /// code in this process ([`Host::spawn`](crate::Host::spawn)) are not requests and are not
    /// filtered.
    pub spawn_env_allow: Vec<String>,
    /// A file of revoked certificate serials (one hex serial per line, `#` comments), re-read
    /// when it changes: a revoked peer is refused and its open connections are closed within
    /// seconds. `None`: nothing is revoked.
    pub revoked: Option<PathBuf>,
    /// How actions are isolated: `"namespaces"` (the default; degraded with a warning to
    /// `"none"` where the kernel refuses user namespaces) or `"none"` (an explicit opt-out,
    /// logged as a warning at start).
    pub isolation: procmesh_protocol::messages::host::IsolationMode,
    /// The host uid a namespaced action runs as when the host runs as root, e.g. `65534`
    /// (inside its namespace it is uid 1000). Not a uid any other service uses.
    pub action_uid: u32,
    /// The host gid a namespaced action runs as, e.g. `65534`.
    pub action_gid: u32,
    /// The memory limit of an action whose hints name none, in bytes, e.g. `4294967296`.
    /// `None`: half the machine's memory.
    pub action_memory_bytes: Option<u64>,
    /// The most processes (and threads) an action may have at once, e.g. `1024`.
    pub action_pids: u64,
    /// The size of a namespaced action's private `/tmp`, in bytes, e.g. `1073741824`.
    pub action_tmp_bytes: u64,
    /// Directories whose executables a worker may name as its host program (e.g.
    /// `["/usr/bin"]`), canonicalised at start (symbolic links followed); a program must resolve
    /// under one of them. Empty (the default): no host programs.
    pub allowed_host_programs: Vec<PathBuf>,
    /// Whether namespaced actions run under the seccomp deny-list, e.g. `true`.
    pub seccomp: bool,
    /// A file whose contents become the sandbox's `/etc/resolv.conf`, e.g.
    /// `"/etc/procmesh/resolv.conf"`. `None`: none (actions have no network anyway).
    pub sandbox_resolv_conf: Option<PathBuf>,
    /// The admin HTTP listener (`/healthz`, `/readyz`, `/metrics`, `/api/v1/procs`),
    /// `HOST:PORT` or `off`, e.g. `"127.0.0.1:7701"` (the default). Any non-loopback address
    /// needs `admin_token_file`.
    pub admin_listen: String,
    /// A file whose first line is the bearer token admin requests from outside loopback must
    /// present.
    pub admin_token_file: Option<PathBuf>,
    /// Limits against abuse of the host's node (NODE-10), the `[limits]` table, e.g.
    /// `{ max_connections = 1024, handshake_timeout_ms = 10000 }` (see [`LimitSettings`]);
    /// `max_pending_asks_per_connection` covers the host's procs on the backend too.
    pub limits: LimitSettings,
}

/// A host's default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7701";

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            advertise: None,
            tls_dir: None,
            tls_identity: None,
            state_dir: PathBuf::from("/var/lib/procmesh"),
            proc_binary: None,
            allowed_dir: None,
            proc_binary_blake3: None,
            ready_timeout_ms: 30_000,
            terminate_grace_ms: 10_000,
            drain_grace_ms: HostConfig::default_drain_grace_ms(),
            kill_wait_ms: 5_000,
            terminate_concurrency: 8,
            agent_ask_timeout_ms: 2_000,
            orchestrator: None,
            heartbeat_interval_ms: 5_000,
            labels: BTreeMap::new(),
            capacity: None,
            respawn: true,
            node_name: None,
            spawn_env_allow: Vec::new(),
            revoked: None,
            isolation: procmesh_protocol::messages::host::IsolationMode::Namespaces,
            action_uid: 65534,
            action_gid: 65534,
            action_memory_bytes: None,
            action_pids: 1024,
            action_tmp_bytes: 1 << 30,
            allowed_host_programs: Vec::new(),
            seccomp: true,
            sandbox_resolv_conf: None,
            admin_listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            admin_token_file: None,
            limits: LimitSettings::default(),
        }
    }
}

impl HostConfig {
    /// A configuration for tests and `demo`: frontend on `127.0.0.1:0`, state in `state_dir`,
    /// this identity; everything else default.
    pub fn ephemeral(state_dir: impl Into<PathBuf>, identity: TlsIdentity) -> HostConfig {
        HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: state_dir.into(),
            tls_identity: Some(identity),
            ..HostConfig::default()
        }
    }

    /// The paths inside the state directory.
    pub fn paths(&self) -> StatePaths {
        StatePaths::new(&self.state_dir)
    }

    fn default_drain_grace_ms() -> u64 {
        30_000
    }

    /// [`drain_grace_ms`](Self::drain_grace_ms) as a duration.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }

    /// [`terminate_grace_ms`](Self::terminate_grace_ms) as a duration.
    pub fn terminate_grace(&self) -> Duration {
        Duration::from_millis(self.terminate_grace_ms)
    }

    /// [`kill_wait_ms`](Self::kill_wait_ms) as a duration.
    pub fn kill_wait(&self) -> Duration {
        Duration::from_millis(self.kill_wait_ms)
    }

    /// The node's tunables: its [`limits`](Self::limits) (NODE-10), everything else the
    /// transport's default; `Err` names a limit set to 0.
    pub fn node_config(&self) -> Result<NodeConfig, &'static str> {
        match self.limits.zero() {
            Some(name) => Err(name),
            None => Ok(self.limits.node_config()),
        }
    }

    /// [`agent_ask_timeout_ms`](Self::agent_ask_timeout_ms) as a duration.
    pub fn agent_ask_timeout(&self) -> Duration {
        Duration::from_millis(self.agent_ask_timeout_ms.max(1))
    }
}

/// Where things live in a host's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    /// The state directory itself.
    pub root: PathBuf,
    /// The node secret (`node.secret`).
    pub node_secret: PathBuf,
    /// The 0700 directory of the backend socket (`run/`).
    pub run: PathBuf,
    /// The backend Unix socket (`run/host.sock`).
    pub socket: PathBuf,
    /// The blob store (`blobs/`).
    pub blobs: PathBuf,
    /// The procs' worker cache (`workers/`).
    pub workers: PathBuf,
    /// The parent of every proc's work directory (`procs/`).
    pub procs: PathBuf,
}

impl StatePaths {
    /// The paths under `root`.
    pub fn new(root: &Path) -> StatePaths {
        StatePaths {
            root: root.to_owned(),
            node_secret: root.join("node.secret"),
            run: root.join("run"),
            socket: root.join("run").join("host.sock"),
            blobs: root.join("blobs"),
            workers: root.join("workers"),
            procs: root.join("procs"),
        }
    }

    /// The work directory of the proc `name`.
    pub fn proc_dir(&self, name: &str) -> PathBuf {
        self.procs.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let c = HostConfig::default();
        assert_eq!(c.listen, "127.0.0.1:7700".parse().unwrap());
        assert_eq!(c.advertise, None);
        assert_eq!(c.tls_dir, None);
        assert!(c.tls_identity.is_none());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/procmesh"));
        assert_eq!(c.proc_binary, None);
        assert_eq!(c.allowed_dir, None);
        assert_eq!(c.proc_binary_blake3, None);
        assert_eq!(c.ready_timeout_ms, 30_000);
        assert_eq!(c.terminate_grace_ms, 10_000);
        assert_eq!(c.kill_wait_ms, 5_000);
        assert_eq!(c.terminate_concurrency, 8);
        assert_eq!(c.agent_ask_timeout_ms, 2_000);
        assert_eq!(c.orchestrator, None);
        assert_eq!(c.heartbeat_interval_ms, 5_000);
        assert!(c.labels.is_empty());
        assert_eq!(c.capacity, None);
        assert!(c.respawn);
        assert_eq!(c.node_name, None);
        assert!(c.spawn_env_allow.is_empty());
        assert_eq!(c.isolation.as_str(), "namespaces");
        assert_eq!(
            (c.action_uid, c.action_gid, c.action_pids),
            (65534, 65534, 1024)
        );
        assert_eq!(c.action_memory_bytes, None);
        assert_eq!(c.action_tmp_bytes, 1 << 30);
        assert!(c.allowed_host_programs.is_empty());
        assert!(c.seccomp);
        assert_eq!(c.limits, LimitSettings::default());
    }

    #[test]
    fn limits_are_a_table_passed_to_the_node_and_zero_is_refused() {
        // The table is the transport's LimitSettings (its parsing and mapping are tested
        // there): here, that the key is read and reaches the node.
        let c: HostConfig = serde_json::from_str(r#"{"limits": {"max_connections": 10}}"#).unwrap();
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.node_config().unwrap().limits.max_connections, 10);
        let mut c = HostConfig::default();
        c.limits.max_connections = 0;
        assert_eq!(c.node_config().unwrap_err(), "limits.max_connections");
    }

    #[test]
    fn paths_follow_the_layout() {
        let p = StatePaths::new(Path::new("/s"));
        assert_eq!(p.socket, PathBuf::from("/s/run/host.sock"));
        assert_eq!(p.run, PathBuf::from("/s/run"));
        assert_eq!(p.node_secret, PathBuf::from("/s/node.secret"));
        assert_eq!(p.blobs, PathBuf::from("/s/blobs"));
        assert_eq!(p.workers, PathBuf::from("/s/workers"));
        assert_eq!(p.proc_dir("w-1"), PathBuf::from("/s/procs/w-1"));
    }

    #[test]
    fn unknown_fields_are_refused_and_missing_ones_defaulted() {
        let c: HostConfig = serde_json::from_str(
            r#"{"listen": "0.0.0.0:7701", "orchestrator": "quic!10.0.0.1:7600,service.orchestrator",
                "labels": {"zone": "eu-1"}}"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7701);
        assert_eq!(c.labels["zone"], "eu-1");
        assert_eq!(
            c.orchestrator.unwrap().to_string(),
            "quic!10.0.0.1:7600,service.orchestrator"
        );
        assert_eq!(c.ready_timeout_ms, 30_000);
        let err = serde_json::from_str::<HostConfig>(r#"{"listn": "0.0.0.0:1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = serde_json::from_str::<HostConfig>(r#"{"tls_identity": null}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
