//! [`NodeBuilder`]: a node's tunables ([`NodeConfig`]), its listeners, routes and policies,
//! and [`start`](NodeBuilder::start), which binds them and starts the node.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::{FrameCodec, DEFAULT_MAX_FRAME};
use procmesh_protocol::{HostAddr, ProcId};
use tokio::sync::broadcast;

use crate::blob::{BlobPolicy, BlobStore};
use crate::local::LocalHub;
use crate::node::{Node, NodeInner};
use crate::peer::{refusal, Admission, DialPolicy, Limits};
use crate::quic::{Quic, QuicOptions};
use crate::revoke::Revocations;
use crate::tls::TlsIdentity;

/// Tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Largest frame accepted or sent (blobs travel on their own streams).
    pub max_frame: usize,
    /// QUIC idle timeout, keep-alive and stream limits.
    pub quic: QuicOptions,
    /// How long a handshake may take: the TLS handshake of an incoming QUIC connection, and
    /// the procmesh handshake of every link.
    pub handshake_timeout: Duration,
    /// Abuse limits (NODE-10).
    pub limits: Limits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_frame: DEFAULT_MAX_FRAME,
            quic: QuicOptions::default(),
            handshake_timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// The limits an operator sets for a node (NODE-10): the `[limits]` table of the
/// orchestrator's and of a host's TOML file. The defaults are the transport's own
/// ([`NodeConfig::default`]); none may be 0.
///
/// ```toml
/// [limits]
/// max_connections = 1024
/// max_connections_per_identity = 64
/// max_pending_asks_per_connection = 1024
/// max_streams_per_connection = 64
/// handshake_timeout_ms = 10000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Most incoming QUIC connections at once, those still in their TLS handshake included;
    /// beyond it a new one is refused before the handshake, e.g. `1024`.
    pub max_connections: u32,
    /// Most incoming QUIC connections at once from one certificate (by serial), e.g. `64`.
    pub max_connections_per_identity: u32,
    /// Most asks from one link handed to the node's actors and not yet answered; beyond it an
    /// ask is answered undeliverable ("too many pending asks"), e.g. `1024`.
    pub max_pending_asks_per_connection: u32,
    /// Most bidirectional streams a peer may have open at once on one QUIC connection (its
    /// control stream and blob transfers), e.g. `64`.
    pub max_streams_per_connection: u32,
    /// How long each first step may take, in milliseconds, e.g. `10000`: the TLS handshake of
    /// an incoming connection, its first stream, a stream's magic, a link's hello, a blob
    /// stream's request.
    pub handshake_timeout_ms: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let node = NodeConfig::default();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LimitSettings {
            max_connections: count(node.limits.max_connections),
            max_connections_per_identity: count(node.limits.max_connections_per_identity),
            max_pending_asks_per_connection: count(node.limits.max_pending_asks_per_connection),
            max_streams_per_connection: node.quic.max_bidi_streams,
            handshake_timeout_ms: u64::try_from(node.handshake_timeout.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

impl LimitSettings {
    /// The first setting that is 0, as its key in a node's TOML (`limits.…`).
    pub fn zero(&self) -> Option<&'static str> {
        [
            ("limits.max_connections", u64::from(self.max_connections)),
            (
                "limits.max_connections_per_identity",
                u64::from(self.max_connections_per_identity),
            ),
            (
                "limits.max_pending_asks_per_connection",
                u64::from(self.max_pending_asks_per_connection),
            ),
            (
                "limits.max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
            ("limits.handshake_timeout_ms", self.handshake_timeout_ms),
        ]
        .into_iter()
        .find_map(|(name, value)| (value == 0).then_some(name))
    }

    /// A node's tunables with these limits, everything else the transport's default.
    pub fn node_config(&self) -> NodeConfig {
        let defaults = NodeConfig::default();
        NodeConfig {
            limits: Limits {
                max_connections: self.max_connections as usize,
                max_connections_per_identity: self.max_connections_per_identity as usize,
                max_pending_asks_per_connection: self.max_pending_asks_per_connection as usize,
            },
            quic: QuicOptions {
                max_bidi_streams: self.max_streams_per_connection,
                ..defaults.quic
            },
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            ..defaults
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The proc name is not a valid name.
    #[error("bad id: {0}")]
    Id(#[from] procmesh_protocol::IdError),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The builder was given nothing to be reached at.
    #[error("a node needs an address: call quic(), unix(), local() or addr()")]
    NoAddress,
}

/// Builds a [`Node`].
#[derive(Debug)]
pub struct NodeBuilder {
    name: String,
    addr: Option<HostAddr>,
    quic: Option<(SocketAddr, TlsIdentity)>,
    unix: Option<PathBuf>,
    local: Option<(LocalHub, String)>,
    default_route: Option<HostAddr>,
    blobs: Option<Arc<BlobStore>>,
    config: NodeConfig,
    claim: Option<(String, Option<[u8; 32]>)>,
    dial_policy: DialPolicy,
    revocations: Option<Revocations>,
    hooks: Hooks,
}

/// The admission and blob policy a node starts with (installed before it accepts anything).
#[derive(Default)]
struct Hooks {
    admission: Option<Arc<dyn Admission>>,
    blob_policy: Option<Arc<dyn BlobPolicy>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("admission", &self.admission.is_some())
            .field("blob_policy", &self.blob_policy.is_some())
            .finish()
    }
}

impl NodeBuilder {
    /// A node whose own proc is named `proc_name`.
    pub fn new(proc_name: &str) -> Self {
        NodeBuilder {
            name: proc_name.to_owned(),
            addr: None,
            quic: None,
            unix: None,
            local: None,
            default_route: None,
            blobs: None,
            config: NodeConfig::default(),
            claim: None,
            dial_policy: DialPolicy::Any,
            revocations: None,
            hooks: Hooks::default(),
        }
    }

    /// Start with this admission hook (NODE-8), so that no link is ever admitted without it
    /// (also settable later with [`Node::set_admission`]).
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.hooks.admission = Some(admission);
        self
    }

    /// Start with this blob policy (BLOB-4), so that no blob request is ever served without it
    /// (also settable later with [`Node::set_blob_policy`]).
    pub fn blob_policy(mut self, policy: Arc<dyn BlobPolicy>) -> Self {
        self.hooks.blob_policy = Some(policy);
        self
    }

    /// Claim to speak for the node (or proc) `name` in every hello, with a proof of `secret`:
    /// [`node_proof`] over the connection's binding on QUIC, [`proc_proof`] on Unix and
    /// in-process links.
    pub fn node_claim(mut self, name: &str, secret: Option<[u8; 32]>) -> Self {
        self.claim = Some((name.to_owned(), secret));
        self
    }

    /// Which addresses the node dials on its own (NODE-9).
    pub fn dial_policy(mut self, policy: DialPolicy) -> Self {
        self.dial_policy = policy;
        self
    }

    /// Refuse peers whose certificate serial is in `list`, and close their connections when
    /// it changes (TLS-6). A list loaded from a file is watched ([`Revocations::watch`]) while
    /// the node runs.
    pub fn revocations(mut self, list: Revocations) -> Self {
        self.revocations = Some(list);
        self
    }

    /// Listen and dial over QUIC on `bind` (port 0 = ephemeral) with this mTLS identity. The
    /// node's address becomes `quic!<bound address>` unless [`addr`](Self::addr) says otherwise.
    pub fn quic(mut self, bind: SocketAddr, identity: TlsIdentity) -> Self {
        self.quic = Some((bind, identity));
        self
    }

    /// Listen on a Unix socket at `path` (a stale socket file there is replaced).
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix = Some(path.into());
        self
    }

    /// Join an in-process hub as `local!<name>` (and dial other `local!` addresses through it).
    pub fn local(mut self, hub: &LocalHub, name: &str) -> Self {
        self.local = Some((hub.clone(), name.to_owned()));
        self
    }

    /// The address this node's proc id names (a proc agent names its host's frontend).
    pub fn addr(mut self, addr: HostAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Send everything not addressed to this proc through `route` (a proc agent's host backend).
    pub fn default_route(mut self, route: HostAddr) -> Self {
        self.default_route = Some(route);
        self
    }

    /// Keep blobs in `store`: peers may push blobs here and fetch them from here.
    pub fn blob_store(mut self, store: Arc<BlobStore>) -> Self {
        self.blobs = Some(store);
        self
    }

    /// Replace the tunables.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds the listeners and starts the node.
    pub async fn start(self) -> Result<Node, NodeError> {
        let quic = match &self.quic {
            Some((bind, identity)) => Some(Quic::bind(*bind, identity, &self.config)?),
            None => None,
        };
        let addr = match (&self.addr, &quic, &self.unix, &self.local) {
            (Some(addr), ..) => addr.clone(),
            (None, Some(q), ..) => HostAddr::quic(q.local_addr()),
            (None, None, Some(path), _) => HostAddr::Unix(path.clone()),
            (None, None, None, Some((_, name))) => HostAddr::Local(name.clone()),
            (None, None, None, None) => return Err(NodeError::NoAddress),
        };
        let proc_id = ProcId::new(addr, &self.name)?;
        let mesh = match &self.quic {
            Some((_, identity)) => Some(identity.mesh()?),
            None => None,
        };
        let (undeliverable, _) = broadcast::channel(1024);
        let inner = Arc::new(NodeInner {
            proc_id,
            codec: FrameCodec::new(self.config.max_frame),
            config: self.config,
            actors: DashMap::new(),
            procs: DashMap::new(),
            peers: DashMap::new(),
            default_route: RwLock::new(None),
            default_addr: self.default_route,
            pending: DashMap::new(),
            next_ask: AtomicU64::new(1),
            quic,
            hub: self.local.as_ref().map(|(hub, _)| hub.clone()),
            blobs: self.blobs,
            undeliverable,
            claim: self.claim,
            mesh,
            dial_policy: self.dial_policy,
            dial_allowed: RwLock::new(HashSet::new()),
            admission: RwLock::new(self.hooks.admission),
            blob_policy: RwLock::new(self.hooks.blob_policy),
            revocations: self.revocations,
            bound: DashMap::new(),
            refusals: Mutex::new(refusal::ALL.iter().map(|c| (*c, 0)).collect()),
            tasks: Mutex::new(Vec::new()),
        });
        if let Some(list) = &inner.revocations {
            let mut tasks = inner.tasks.lock().expect("lock");
            if list.path().is_some() {
                tasks.push(list.watch());
            }
            tasks.push(crate::quic::spawn_revocation_sweeper(&inner, list));
        }
        if let Some(quic) = &inner.quic {
            quic.spawn_accept(Arc::downgrade(&inner));
        }
        if let Some(path) = &self.unix {
            crate::unix::listen(&inner, path)?;
        }
        if let Some((hub, name)) = &self.local {
            hub.register(name, &inner);
        }
        Ok(Node { inner })
    }
}
