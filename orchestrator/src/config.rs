//! [`OrchestratorConfig`]: everything an operator sets for an orchestrator. A serde struct (TOML
//! file < environment < flags, merged by the CLI), unknown fields refused, every field
//! defaulted, checked by [`OrchestratorConfig::validate`].
//!
//! ```toml
//! listen = "0.0.0.0:7600"
//! advertise = "quic!10.0.0.1:7600"
//! state_dir = "/var/lib/procmesh/orchestrator"
//! tls_dir = "/etc/procmesh/tls"
//! heartbeat_interval_ms = 1000
//! lost_after_ms = 5000
//! ```
//!
//! The state directory holds:
//!
//! ```text
//! <state_dir>/blobs/          the orchestrator's blob store: worker files and action inputs
//!                             that clients push, and that hosts fetch before running an action
//! <state_dir>/journal.redb    the journal: every accepted input, and snapshots (redb)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use procmesh_orchestrator_core::CoreConfig;
use procmesh_protocol::HostAddr;
use procmesh_transport::{LimitSettings, NodeConfig};

use crate::journal::Durability;
use serde::{Deserialize, Serialize};

/// An orchestrator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// The QUIC frontend's bind address, e.g. `"0.0.0.0:7600"`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address hosts and clients reach the orchestrator at, e.g. `"quic!10.0.0.1:7600"`.
    /// Required when `listen` is an unspecified address (`0.0.0.0`, `::`); otherwise it
    /// defaults to the bound address.
    pub advertise: Option<HostAddr>,
    /// The state directory, e.g. `"/var/lib/procmesh/orchestrator"`; blobs live in `blobs/`.
    pub state_dir: PathBuf,
    /// Directory holding the mTLS identity (`ca.pem`, `cert.pem`, `key.pem`), e.g.
    /// `"/etc/procmesh/tls"`. Read by the CLI; [`Orchestrator::start`] takes the identity
    /// itself.
    ///
    /// [`Orchestrator::start`]: crate::Orchestrator::start
    pub tls_dir: Option<PathBuf>,
    /// How often hosts heartbeat, in milliseconds, e.g. `1000` (told to each host when it
    /// registers).
    pub heartbeat_interval_ms: u64,
    /// Silence after which a host is declared lost and its running actions abandoned, in
    /// milliseconds, e.g. `5000`. Must exceed `heartbeat_interval_ms`.
    pub lost_after_ms: u64,
    /// Most actions one `Submit` may carry, e.g. `10000`.
    pub max_submit_batch: u32,
    /// Most actions placed by one scheduling pass, e.g. `1024`; the dispatcher runs passes
    /// until nothing more fits, letting other requests in between.
    pub dispatch_batch: u32,
    /// Most results one `ListResults` returns, and the page size when the client names none,
    /// e.g. `1000`.
    pub result_page: u32,
    /// How long the orchestrator waits for a proc agent to accept a submission or a
    /// cancellation, in milliseconds, e.g. `10000`.
    pub agent_timeout_ms: u64,
    /// Events buffered per subscription before the subscriber is counted as lagging, e.g.
    /// `4096`.
    pub subscriber_buffer: u32,
    /// Whether the state is journaled in `<state_dir>/journal.redb` (default `true`). `false`
    /// keeps it in memory only — a restart then forgets every queue; for benchmarks.
    ///
    /// ```toml
    /// journal = true
    /// ```
    pub journal: bool,
    /// When a journal commit is durable: `"fsync"` (default: every group commit is fsynced)
    /// or `"none"` (the OS writes it back; a machine crash may lose the last commits, a process
    /// crash loses nothing).
    ///
    /// ```toml
    /// durability = "fsync"
    /// ```
    pub durability: Durability,
    /// Transitions kept per queue for subscribers that resume after a reconnect or a restart
    /// (`Subscribe { from }`); older ones are told as `Lagged`.
    ///
    /// ```toml
    /// event_backlog = 16384
    /// ```
    pub event_backlog: u32,
    /// A snapshot of the whole state is taken once the journal's log has grown by this many
    /// bytes, or by the size of the last snapshot if that is larger; it replaces the records it
    /// covers, so the file stays about twice the live state. Default 64 MiB.
    ///
    /// ```toml
    /// snapshot_min_bytes = 67108864
    /// ```
    pub snapshot_min_bytes: u64,
    /// A file of revoked certificate serials (one hex serial per line, `#` comments), re-read
    /// when it changes: a revoked peer is refused, and its open connections are closed within
    /// seconds. `None`: nothing is revoked.
    ///
    /// ```toml
    /// revoked = "/etc/procmesh/revoked.txt"
    /// ```
    pub revoked: Option<PathBuf>,
    /// The admin HTTP listener (health, readiness, metrics, JSON API, dashboard): `HOST:PORT`,
    /// or `off`. Loopback by default; any other address needs `admin_token_file` (ADM-1).
    pub admin_listen: String,
    /// A file whose first line is the bearer token admin requests from outside loopback must
    /// present (at least 16 characters; not world-readable).
    pub admin_token_file: Option<PathBuf>,
    /// Limits against abuse of the orchestrator's QUIC node (NODE-10), the `[limits]` table,
    /// e.g. `{ max_connections = 1024, handshake_timeout_ms = 10000 }` (see
    /// [`LimitSettings`]).
    pub limits: LimitSettings,
}

/// The orchestrator's default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7601";

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            advertise: None,
            state_dir: PathBuf::from("/var/lib/procmesh/orchestrator"),
            tls_dir: None,
            heartbeat_interval_ms: 1_000,
            lost_after_ms: 5_000,
            max_submit_batch: 10_000,
            dispatch_batch: 1_024,
            result_page: 1_000,
            agent_timeout_ms: 10_000,
            subscriber_buffer: 4_096,
            journal: true,
            durability: Durability::Fsync,
            event_backlog: CoreConfig::DEFAULT_EVENT_BACKLOG,
            snapshot_min_bytes: 64 << 20,
            revoked: None,
            admin_listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            admin_token_file: None,
            limits: LimitSettings::default(),
        }
    }
}

/// A configuration that cannot work; the text says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field that must be positive is 0.
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    /// Hosts would be declared lost between two heartbeats.
    #[error(
        "lost_after_ms ({lost_after_ms}) must be greater than heartbeat_interval_ms \
         ({heartbeat_interval_ms}): hosts would be declared lost between two heartbeats"
    )]
    LostAfter {
        /// The configured loss timeout.
        lost_after_ms: u64,
        /// The configured heartbeat interval.
        heartbeat_interval_ms: u64,
    },
    /// The frontend binds an unspecified address and no `advertise` address is set.
    #[error("listen address {0} is unspecified: set advertise to the address peers dial")]
    Advertise(SocketAddr),
    /// The admin listener setting cannot work.
    #[error("admin_listen: {0}")]
    Admin(String),
}

impl OrchestratorConfig {
    /// A configuration for tests and `demo`: frontend on `127.0.0.1:0`, state in `state_dir`;
    /// everything else default.
    pub fn ephemeral(state_dir: impl Into<PathBuf>) -> OrchestratorConfig {
        OrchestratorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: state_dir.into(),
            ..OrchestratorConfig::default()
        }
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("lost_after_ms", self.lost_after_ms),
            ("max_submit_batch", u64::from(self.max_submit_batch)),
            ("dispatch_batch", u64::from(self.dispatch_batch)),
            ("result_page", u64::from(self.result_page)),
            ("agent_timeout_ms", self.agent_timeout_ms),
            ("subscriber_buffer", u64::from(self.subscriber_buffer)),
            ("snapshot_min_bytes", self.snapshot_min_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if let Some(name) = self.limits.zero() {
            return Err(ConfigError::Zero(name));
        }
        if self.lost_after_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::LostAfter {
                lost_after_ms: self.lost_after_ms,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
            });
        }
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(ConfigError::Advertise(self.listen));
        }
        let admin = self.admin()?;
        if let Some(addr) = admin {
            if !addr.ip().is_loopback() && self.admin_token_file.is_none() {
                return Err(ConfigError::Admin(format!(
                    "{addr} is not on loopback: set admin_token_file (ADM-1)"
                )));
            }
        }
        Ok(())
    }

    /// The admin listener's address, or `None` for `off`.
    pub fn admin(&self) -> Result<Option<SocketAddr>, ConfigError> {
        procmesh_admin::parse_listen(&self.admin_listen)
            .map_err(|e| ConfigError::Admin(e.to_string()))
    }

    /// Where the journal lives: `<state_dir>/journal.redb`.
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.redb")
    }

    /// The settings the core decides by.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            lost_after_ms: self.lost_after_ms,
            max_submit_batch: self.max_submit_batch,
            dispatch_batch: self.dispatch_batch,
            result_page: self.result_page,
            event_backlog: self.event_backlog,
        }
    }

    /// Where the blob store lives: `<state_dir>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.state_dir.join("blobs")
    }

    /// The node's tunables: its [`limits`](Self::limits) (NODE-10), everything else the
    /// transport's default.
    pub fn node_config(&self) -> NodeConfig {
        self.limits.node_config()
    }

    /// [`agent_timeout_ms`](Self::agent_timeout_ms) as a duration.
    pub fn agent_timeout(&self) -> Duration {
        Duration::from_millis(self.agent_timeout_ms.max(1))
    }

    /// How often the orchestrator looks for silent hosts: a quarter of the loss timeout, at
    /// most the heartbeat interval, at least 10 ms.
    pub fn tick_interval(&self) -> Duration {
        let ms = (self.lost_after_ms / 4)
            .min(self.heartbeat_interval_ms)
            .max(10);
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let c = OrchestratorConfig::default();
        assert_eq!(c.listen, "127.0.0.1:7600".parse().unwrap());
        assert_eq!(c.advertise, None);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/procmesh/orchestrator"));
        assert_eq!(c.tls_dir, None);
        assert_eq!(c.heartbeat_interval_ms, 1_000);
        assert_eq!(c.lost_after_ms, 5_000);
        assert_eq!(c.max_submit_batch, 10_000);
        assert_eq!(c.dispatch_batch, 1_024);
        assert_eq!(c.result_page, 1_000);
        assert_eq!(c.agent_timeout_ms, 10_000);
        assert_eq!(c.subscriber_buffer, 4_096);
        assert!(c.journal);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.event_backlog, 16_384);
        assert_eq!(c.snapshot_min_bytes, 64 << 20);
        assert_eq!(c.limits, LimitSettings::default());
        assert_eq!(c.journal_path(), c.state_dir.join("journal.redb"));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.blobs_dir(), c.state_dir.join("blobs"));
    }

    #[test]
    fn limits_are_a_table_passed_to_the_node_and_zero_is_refused() {
        // The table is the transport's LimitSettings (its parsing and mapping are tested
        // there): here, that the key is read, validated and reaches the node.
        let c: OrchestratorConfig =
            serde_json::from_str(r#"{"limits": {"max_connections": 10}}"#).unwrap();
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.node_config().limits.max_connections, 10);
        let mut c = OrchestratorConfig::default();
        c.limits.max_pending_asks_per_connection = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "limits.max_pending_asks_per_connection must be greater than 0"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let c = OrchestratorConfig {
            lost_after_ms: 1_000,
            ..OrchestratorConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("lost_after_ms (1000)"), "{err}");
        let c = OrchestratorConfig {
            dispatch_batch: 0,
            ..OrchestratorConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("dispatch_batch")));
        let c = OrchestratorConfig {
            listen: "0.0.0.0:7600".parse().unwrap(),
            ..OrchestratorConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Advertise(_))));
    }
}
