//! [`Node`]: one process's mailbox router. It owns the process's proc id, the actors it exposes,
//! its route table (peer links by address, proc links by name, an optional default route), the
//! asks waiting for replies, and the transports that carry envelopes.
//!
//! ```text
//!            route(envelope)
//!                 │
//!   dest proc == ours ────────────────▶ deliver: exposed kameo actor (tell / ask → reply)
//!   dest on our host, proc known ─────▶ that proc's backend link            (host mux)
//!   dest on our host, proc unknown ───▶ bounce: Undeliverable
//!   default route set ────────────────▶ default link (a proc sends all outbound via its host)
//!   otherwise ────────────────────────▶ peer link by address (dialled on first use, reused)
//! ```
//!
//! # Invariants
//! - **NODE-1** Envelopes from one sender to one receiver are delivered in the order sent: one
//!   link per peer carries them (LNK-1), each stream is read by one task that routes in arrival
//!   order (STR-1), and delivery into a kameo mailbox is awaited before the next is routed.
//! - **NODE-2** Every envelope is delivered, forwarded, or bounced to its sender (ENV-2).
//! - **NODE-3** A peer reached over QUIC can never install a proc route: only backend transports
//!   (Unix, in-process) whose hello claims our own address register procs.
//! - **NODE-4** An ask is answered at most once: its pending slot is removed by the first reply,
//!   bounce or timeout.
//! - **NODE-5** The sender of every envelope is checked against the link it arrived on: from a
//!   remote peer (QUIC, or a Unix/in-process node at another address) its proc must be at the
//!   address the peer's hello claims; from one of our procs (a backend peer claiming our own
//!   address, on a node without a default route) it must be exactly that proc. Violations —
//!   replies and undeliverable notices included — are dropped (never bounced: the bounce would
//!   go to the forged sender), logged and counted as `sender_mismatch`. (A proc agent trusts its
//!   host, its default route, which relays for the whole mesh.)
//! - **NODE-6** No open relay: an envelope from a remote peer is delivered only to our own proc
//!   or (on a host) to one of our procs' routes (or bounced if there is no such proc); one for
//!   anywhere else is dropped and counted as `relay`. Only envelopes from our own procs are
//!   forwarded to other peers. Before one is forwarded into a proc route, [`Admission::relay`]
//!   must allow it (else dropped, `relay`).
//! - **NODE-7** A remote peer's claimed address (`hello.addr`) is bound to its identity key
//!   (role, certificate name, claimed node name) by its first accepted link; a later link from
//!   another identity key claiming a bound address is refused (`address_bound`) and the route
//!   stays with the first. A QUIC peer claiming our own address is refused (NODE-3).
//! - **NODE-8** Every link, accepted or dialled, on every transport, passes [`Admission::admit`]
//!   after its handshake and before it is adopted or anything it sends is routed; a refusal
//!   closes it (`admission`).
//! - **NODE-9** With [`DialPolicy::Listed`] the node dials only addresses it was told to
//!   ([`Node::allow_dial`]); a message for any other address without a live link is bounced
//!   ("not dialling …"), so a peer cannot make us dial an address by naming it as a sender.
//! - **NODE-10** Limits ([`Limits`]): incoming QUIC connections in total and per certificate
//!   serial, and asks pending on one link. Past a limit a connection is closed with
//!   [`CLOSE_LIMIT`] and a reason, an ask is answered `Undeliverable("too many pending asks")`;
//!   both are counted, and the node keeps serving everyone else.
//! - **NODE-11** Every refusal is counted by reason code ([`Node::refusals`]).

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::{FrameCodec, Hello, NodeProof, DEFAULT_MAX_FRAME};
use procmesh_protocol::{
    ActorId, Body, Envelope, HostAddr, Payload, ProcId, RemoteError, TraceContext, Undeliverable,
};
use tokio::sync::{broadcast, oneshot};

use crate::blob::BlobStore;
use crate::link::{Link, TransportKind};
use crate::local::LocalHub;
use crate::quic::{Quic, QuicOptions};
use crate::remote::ErasedHandler;
use crate::revoke::Revocations;
use crate::tls::{PeerIdentity, Role, TlsIdentity};

/// Application close code of a QUIC connection refused for who its peer is (bad identity,
/// revoked, wrong role).
pub const CLOSE_REFUSED: u32 = 4;
/// Application close code of a QUIC connection refused by a limit (NODE-10).
pub const CLOSE_LIMIT: u32 = 5;
/// Application close code of a connection whose certificate was revoked while it was open.
pub const CLOSE_REVOKED: u32 = 6;

/// The TLS exporter label of a connection's [`PeerInfo::binding`].
pub const BINDING_LABEL: &[u8] = b"EXPORTER-procmesh-node-proof";

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_session() -> u64 {
    NEXT_SESSION.fetch_add(1, Ordering::Relaxed)
}

/// The credentials of the process at the other end of a Unix socket (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Its process id (0 if the kernel did not say).
    pub pid: i32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// Who an inbound envelope came from.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The transport it arrived on.
    pub transport: TransportKind,
    /// What the peer said it is in its handshake.
    pub hello: Hello,
    /// The protocol version the peer speaks (same major as ours, WIRE-4).
    pub version: procmesh_protocol::Version,
    /// The peer's socket address, for QUIC.
    pub remote: Option<SocketAddr>,
    /// The verified identity of the peer's certificate (QUIC); `None` for Unix and in-process
    /// peers.
    pub identity: Option<Arc<PeerIdentity>>,
    /// A process-unique id of this link.
    pub session: u64,
    /// The TLS exporter of the QUIC connection (label [`BINDING_LABEL`], no context, 32
    /// bytes): the same on both ends of one connection, different on every other. Node proofs
    /// are bound to it ([`node_proof`]).
    pub binding: Option<[u8; 32]>,
    /// `SO_PEERCRED` of an accepted Unix socket.
    pub cred: Option<PeerCred>,
    /// Asks from this link delivered to our actors whose replies are not sent yet (NODE-10).
    asks: Arc<AtomicUsize>,
}

impl PeerInfo {
    /// A peer on `transport` that said `hello`, with nothing verified about it (a fresh
    /// session id, no identity, binding or credentials): for tests and in-process callers.
    pub fn new(transport: TransportKind, hello: Hello) -> PeerInfo {
        PeerInfo {
            transport,
            hello,
            version: procmesh_protocol::PROTOCOL_VERSION,
            remote: None,
            identity: None,
            session: next_session(),
            binding: None,
            cred: None,
            asks: Arc::default(),
        }
    }

    /// The role of the peer's certificate, if it has one.
    pub fn role(&self) -> Option<Role> {
        self.identity.as_ref().map(|i| i.role)
    }

    /// The key an address is bound to (NODE-7): role, certificate name, claimed node name.
    pub(crate) fn identity_key(&self) -> IdentityKey {
        IdentityKey {
            role: self.role(),
            cert_name: self.identity.as_ref().and_then(|i| i.name.clone()),
            claim: self.hello.node.as_ref().map(|c| c.name.clone()),
        }
    }
}

/// Who a bound address belongs to (NODE-7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityKey {
    role: Option<Role>,
    cert_name: Option<String>,
    claim: Option<String>,
}

impl std::fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = self.role.map_or("-", Role::as_str);
        write!(
            f,
            "{role}/{}/{}",
            self.cert_name.as_deref().unwrap_or("-"),
            self.claim.as_deref().unwrap_or("-")
        )
    }
}

/// A node's proof of its node secret on one QUIC connection: BLAKE3 keyed with `secret` over
/// `"procmesh node proof v1" ‖ binding` ([`PeerInfo::binding`]). Bound to the connection, so a
/// proof seen on one connection is worthless on any other.
pub fn node_proof(secret: &[u8; 32], binding: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"procmesh node proof v1");
    h.update(binding);
    *h.finalize().as_bytes()
}

/// A proc's proof of its bootstrap secret to its host (Unix or in-process, no TLS exporter):
/// BLAKE3 keyed with `secret` over `"procmesh proc proof v1"`.
pub fn proc_proof(secret: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"procmesh proc proof v1");
    *h.finalize().as_bytes()
}

/// Whether `proof` is what `secret` proves on this peer's link: [`node_proof`] over its
/// binding on QUIC, [`proc_proof`] elsewhere. Constant-time.
pub fn verify_node_proof(peer: &PeerInfo, secret: &[u8; 32]) -> bool {
    let Some(proof) = peer.hello.node.as_ref().and_then(|c| c.proof) else {
        return false;
    };
    let expected = match peer.binding {
        Some(binding) => node_proof(secret, &binding),
        None => proc_proof(secret),
    };
    blake3::Hash::from(expected) == blake3::Hash::from(*proof.as_bytes())
}

/// A service's say over which links and relays it accepts (NODE-8, NODE-6). Both default to
/// allowing everything.
pub trait Admission: Send + Sync + 'static {
    /// Runs for every accepted and dialled link, on every transport, after its handshake and
    /// before it is adopted or routed; `Err(reason)` closes it.
    fn admit(&self, peer: &PeerInfo) -> Result<(), String> {
        let _ = peer;
        Ok(())
    }

    /// Runs before an envelope that arrived from `peer` is forwarded into the route of our
    /// proc `proc`; `Err(reason)` drops it.
    fn relay(&self, peer: &PeerInfo, proc: &str, env: &Envelope) -> Result<(), String> {
        let _ = (peer, proc, env);
        Ok(())
    }
}

/// Which addresses a node dials on its own (NODE-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialPolicy {
    /// Any address a message is for.
    #[default]
    Any,
    /// Only addresses listed with [`Node::allow_dial`] (and those with a live link).
    Listed,
}

/// Abuse limits (NODE-10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Incoming QUIC connections at once (including those still in their TLS handshake);
    /// beyond it new ones are refused before the handshake.
    pub max_connections: usize,
    /// Incoming QUIC connections at once from one certificate (by serial).
    pub max_connections_per_identity: usize,
    /// Asks from one link delivered to our actors and not yet answered; beyond it an ask is
    /// answered `Undeliverable("too many pending asks")`.
    pub max_pending_asks_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_identity: 64,
            max_pending_asks_per_connection: 1024,
        }
    }
}

/// Reason codes of [`Node::refusals`].
pub mod refusal {
    /// A peer certificate without exactly one valid identity of our mesh, or of the wrong role.
    pub const BAD_IDENTITY: &str = "bad_identity";
    /// A revoked certificate (at the handshake, or closed when the list changed).
    pub const REVOKED: &str = "revoked";
    /// An envelope whose sender the link may not speak for (NODE-5).
    pub const SENDER_MISMATCH: &str = "sender_mismatch";
    /// An envelope we would have had to relay (NODE-6).
    pub const RELAY: &str = "relay";
    /// A link claiming an address bound to another identity, or our own (NODE-7).
    pub const ADDRESS_BOUND: &str = "address_bound";
    /// A link refused by [`Admission::admit`](super::Admission::admit).
    pub const ADMISSION: &str = "admission";
    /// An incoming connection beyond `max_connections`.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// An incoming connection beyond `max_connections_per_identity`.
    pub const TOO_MANY_PER_IDENTITY: &str = "too_many_per_identity";
    /// An ask beyond `max_pending_asks_per_connection`.
    pub const TOO_MANY_ASKS: &str = "too_many_asks";
    /// A handshake of another major version.
    pub const VERSION: &str = "version";
    /// A handshake that timed out or failed.
    pub const HANDSHAKE: &str = "handshake";
    /// A blob request refused by the blob policy.
    pub const BLOB_FORBIDDEN: &str = "blob_forbidden";
    /// A message for an address we do not dial (NODE-9).
    pub const NOT_DIALLING: &str = "not_dialling";

    /// Every code.
    pub const ALL: [&str; 13] = [
        BAD_IDENTITY,
        REVOKED,
        SENDER_MISMATCH,
        RELAY,
        ADDRESS_BOUND,
        ADMISSION,
        TOO_MANY_CONNECTIONS,
        TOO_MANY_PER_IDENTITY,
        TOO_MANY_ASKS,
        VERSION,
        HANDSHAKE,
        BLOB_FORBIDDEN,
        NOT_DIALLING,
    ];
}

impl PeerInfo {
    /// Whether the peer is on this machine: any Unix or in-process peer, or a QUIC peer whose
    /// source address is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.transport {
            TransportKind::Unix | TransportKind::Local => true,
            TransportKind::Quic => self.remote.is_some_and(|a| a.ip().is_loopback()),
        }
    }
}

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
        }
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
            admission: RwLock::new(None),
            blob_policy: RwLock::new(None),
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

/// One process's mailbox router. Cheap to clone; dropping the last handle does not stop the
/// transports' tasks until [`shutdown`](Node::shutdown).
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("proc_id", &self.inner.proc_id)
            .finish_non_exhaustive()
    }
}

/// How a link's peer relates to us (NODE-5, NODE-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerClass {
    /// One of our procs (a backend peer claiming our address; we are its host).
    OurProc,
    /// Our host (a backend peer claiming our address; we are a proc with a default route).
    OurHost,
    /// Anyone else.
    Remote,
}

/// Counts an ask as pending on its link until dropped (NODE-10).
struct AskGuard(Arc<AtomicUsize>);

impl Drop for AskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A message and the handler of the actor it is for.
struct Addressed {
    handler: Arc<dyn ErasedHandler>,
    dest: ActorId,
    sender: ActorId,
    message: Vec<u8>,
    trace: Option<TraceContext>,
}

pub(crate) type ReplySlot = oneshot::Sender<Result<Payload, RemoteError>>;

pub(crate) struct Entry {
    pub erased: Arc<dyn ErasedHandler>,
    /// `Arc<dyn Handler<M>>` for the typed local fast path.
    pub typed: Arc<dyn Any + Send + Sync>,
}

pub(crate) struct NodeInner {
    pub proc_id: ProcId,
    pub codec: FrameCodec,
    pub config: NodeConfig,
    pub actors: DashMap<String, Entry>,
    pub procs: DashMap<String, Link>,
    pub peers: DashMap<HostAddr, Link>,
    default_route: RwLock<Option<Link>>,
    default_addr: Option<HostAddr>,
    pub pending: DashMap<u64, ReplySlot>,
    next_ask: AtomicU64,
    pub quic: Option<Quic>,
    pub hub: Option<LocalHub>,
    pub blobs: Option<Arc<BlobStore>>,
    undeliverable: broadcast::Sender<Undeliverable>,
    /// The node claim our hellos carry.
    pub claim: Option<(String, Option<[u8; 32]>)>,
    /// Our CA's mesh name (QUIC nodes): peers must be of the same mesh (TLS-5).
    pub mesh: Option<String>,
    dial_policy: DialPolicy,
    dial_allowed: RwLock<HashSet<HostAddr>>,
    admission: RwLock<Option<Arc<dyn Admission>>>,
    pub blob_policy: RwLock<Option<Arc<dyn crate::blob::BlobPolicy>>>,
    pub revocations: Option<Revocations>,
    /// Remote peers' addresses and the identity each is bound to (NODE-7).
    bound: DashMap<HostAddr, IdentityKey>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Background tasks ended at shutdown.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().expect("lock").drain(..) {
            task.abort();
        }
    }
}

impl Node {
    /// This process's proc.
    pub fn proc_id(&self) -> &ProcId {
        &self.inner.proc_id
    }

    /// The address this node's proc id names.
    pub fn addr(&self) -> &HostAddr {
        self.inner.proc_id.addr()
    }

    /// The QUIC address this node actually listens on, if it listens on QUIC.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.inner.quic.as_ref().map(Quic::local_addr)
    }

    /// The id of the actor `name` in this node's proc.
    pub fn actor_id(&self, name: &str) -> Result<ActorId, procmesh_protocol::IdError> {
        self.inner.proc_id.actor(name)
    }

    /// Notices of messages this node sent that could not be delivered.
    pub fn undeliverable(&self) -> broadcast::Receiver<Undeliverable> {
        self.inner.undeliverable.subscribe()
    }

    /// The blob store this node serves, if any.
    pub fn blob_store(&self) -> Option<&Arc<BlobStore>> {
        self.inner.blobs.as_ref()
    }

    /// Installs the admission hook (NODE-8, NODE-6), replacing any earlier one.
    pub fn set_admission(&self, admission: Arc<dyn Admission>) {
        *self.inner.admission.write().expect("lock") = Some(admission);
    }

    /// Installs the blob policy (BLOB-4), replacing any earlier one. Without one every blob
    /// request is allowed: services that keep blobs worth guarding install theirs.
    pub fn set_blob_policy(&self, policy: Arc<dyn crate::blob::BlobPolicy>) {
        *self.inner.blob_policy.write().expect("lock") = Some(policy);
    }

    /// Lets the node dial `addr` under [`DialPolicy::Listed`] (NODE-9).
    pub fn allow_dial(&self, addr: &HostAddr) {
        self.inner
            .dial_allowed
            .write()
            .expect("lock")
            .insert(addr.clone());
    }

    /// Takes `addr` off the dial list; an open link to it stays until it ends.
    pub fn disallow_dial(&self, addr: &HostAddr) {
        self.inner.dial_allowed.write().expect("lock").remove(addr);
    }

    /// Forgets which identity `addr` is bound to (NODE-7), so another may claim it (a host
    /// removed from the fleet for good).
    pub fn unbind_address(&self, addr: &HostAddr) -> bool {
        self.inner.bound.remove(addr).is_some()
    }

    /// How many links, connections, envelopes and requests were refused, by reason code
    /// ([`refusal`]); every known code is present.
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.inner.refusals.lock().expect("lock").clone()
    }

    /// Routes an envelope as if it had been sent by a local actor.
    pub async fn route(&self, env: Envelope) {
        self.inner.route(env, None).await
    }

    /// Installs a route for the proc `name` on this host (a host's proc backend).
    pub fn add_proc_route(&self, name: &str, link: Link) {
        self.inner.procs.insert(name.to_owned(), link);
    }

    /// Removes the route for the proc `name`; returns whether there was one.
    pub fn remove_proc_route(&self, name: &str) -> bool {
        self.inner.procs.remove(name).is_some()
    }

    /// Names of the procs this node routes to.
    pub fn proc_routes(&self) -> Vec<String> {
        self.inner.procs.iter().map(|e| e.key().clone()).collect()
    }

    /// Closes every link and then the QUIC endpoint. What was sent before the call is still
    /// delivered (LNK-3), for at most `grace`; what cannot be is bounced. Pending asks then
    /// fail as undeliverable.
    pub async fn shutdown(&self, grace: Duration) {
        for task in self.inner.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
        let links: Vec<Link> = self
            .inner
            .peers
            .iter()
            .map(|e| e.value().clone())
            .chain(self.inner.procs.iter().map(|e| e.value().clone()))
            .chain(self.inner.default_route.read().expect("lock").clone())
            .collect();
        for link in &links {
            link.close();
        }
        let _ = tokio::time::timeout(grace, async {
            for link in &links {
                link.flushed().await;
            }
        })
        .await;
        if let Some(quic) = &self.inner.quic {
            quic.close_gracefully(Duration::from_millis(100)).await;
        }
        self.inner.peers.clear();
        self.inner.procs.clear();
        if let Some(hub) = &self.inner.hub {
            hub.unregister(&self.inner);
        }
        let ids: Vec<u64> = self.inner.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, slot)) = self.inner.pending.remove(&id) {
                let _ = slot.send(Err(RemoteError::Undeliverable("node shut down".into())));
            }
        }
    }
}

impl NodeInner {
    /// Routes one envelope (NODE-1, NODE-2). `from` is the link it arrived on, if any.
    pub(crate) async fn route(self: &Arc<Self>, env: Envelope, from: Option<&Arc<PeerInfo>>) {
        if let Some(peer) = from {
            if let Err((code, reason)) = self.check_inbound(peer, &env) {
                self.refuse(code);
                tracing::warn!(
                    code,
                    %reason,
                    sender = %env.sender,
                    dest = %env.dest,
                    peer = %peer.hello.addr,
                    identity = ?peer.identity.as_deref().map(PeerIdentity::uri),
                    "dropped an envelope"
                );
                return;
            }
        }
        let dest = env.dest.proc_id();
        if *dest == self.proc_id {
            return self.deliver(env, from).await;
        }
        if dest.addr() == self.proc_id.addr() {
            let name = dest.name().to_owned();
            let link = self.procs.get(&name).map(|l| l.clone());
            if let (Some(peer), Some(_)) = (from, &link) {
                let admission = self.admission.read().expect("lock").clone();
                if let Some(admission) = admission {
                    if let Err(reason) = admission.relay(peer, &name, &env) {
                        self.refuse(refusal::RELAY);
                        tracing::warn!(%reason, sender = %env.sender, dest = %env.dest, "relay refused; dropped");
                        return;
                    }
                }
            }
            return match link {
                Some(link) => {
                    if let Err(env) = link.send(env) {
                        self.procs.remove_if(&name, |_, l| l.same(&link));
                        let reason = format!("proc {} is gone", env.dest.proc_id());
                        self.bounce(env, reason).await;
                    }
                }
                None if self.default_addr.is_none() => {
                    let reason = format!("no proc named {name:?} on {}", self.proc_id.addr());
                    self.bounce(env, reason).await;
                }
                None => self.send_default(env).await,
            };
        }
        if self.default_addr.is_some() {
            return self.send_default(env).await;
        }
        let addr = dest.addr().clone();
        if let Err(reason) = self.may_dial(&addr) {
            self.refuse(refusal::NOT_DIALLING);
            return self.bounce(env, reason).await;
        }
        let link = self.peer_link(&addr);
        if let Err(env) = link.send(env) {
            // The link died between lookup and send: forget it and dial once more.
            self.peers.remove_if(&addr, |_, l| l.same(&link));
            if let Err(env) = self.peer_link(&addr).send(env) {
                self.bounce(env, format!("no link to {addr}")).await;
            }
        }
    }

    async fn send_default(self: &Arc<Self>, env: Envelope) {
        let addr = self.default_addr.clone().expect("checked by caller");
        let link = {
            let mut slot = self.default_route.write().expect("lock");
            match slot.as_ref() {
                Some(link) if !link.is_closed() => link.clone(),
                _ => {
                    let link = self.dial(&addr);
                    *slot = Some(link.clone());
                    link
                }
            }
        };
        if let Err(env) = link.send(env) {
            self.bounce(env, format!("default route {addr} is down"))
                .await;
        }
    }

    /// Counts a refusal (NODE-11).
    pub(crate) fn refuse(&self, code: &'static str) {
        *self.refusals.lock().expect("lock").entry(code).or_insert(0) += 1;
    }

    /// Which kind of peer a link leads to, for the sender and relay rules (NODE-5, NODE-6).
    fn peer_class(&self, peer: &PeerInfo) -> PeerClass {
        if peer.transport != TransportKind::Quic && peer.hello.addr == *self.proc_id.addr() {
            if self.default_addr.is_some() {
                PeerClass::OurHost
            } else {
                PeerClass::OurProc
            }
        } else {
            PeerClass::Remote
        }
    }

    /// NODE-5 and NODE-6 for one inbound envelope.
    fn check_inbound(&self, peer: &PeerInfo, env: &Envelope) -> Result<(), (&'static str, String)> {
        let sender = env.sender.proc_id();
        match self.peer_class(peer) {
            PeerClass::OurHost => Ok(()),
            PeerClass::OurProc => {
                if sender.addr() == self.proc_id.addr() && sender.name() == peer.hello.name {
                    Ok(())
                } else {
                    Err((
                        refusal::SENDER_MISMATCH,
                        format!("proc {:?} may only send as itself", peer.hello.name),
                    ))
                }
            }
            PeerClass::Remote => {
                if *sender.addr() != peer.hello.addr {
                    return Err((
                        refusal::SENDER_MISMATCH,
                        format!(
                            "a peer at {} may only send as its own actors",
                            peer.hello.addr
                        ),
                    ));
                }
                let dest = env.dest.proc_id();
                let ours = *dest == self.proc_id
                    || (dest.addr() == self.proc_id.addr() && self.default_addr.is_none());
                if ours {
                    Ok(())
                } else {
                    Err((refusal::RELAY, "not relaying for a remote peer".into()))
                }
            }
        }
    }

    /// NODE-9: whether we may dial `addr` for a message.
    pub(crate) fn may_dial(&self, addr: &HostAddr) -> Result<(), String> {
        if self.dial_policy == DialPolicy::Any {
            return Ok(());
        }
        let live = self.peers.get(addr).is_some_and(|l| !l.is_closed());
        let connected = match (addr, &self.quic) {
            (HostAddr::Quic(sa), Some(quic)) => quic.has_connection(*sa),
            _ => false,
        };
        if live || connected || self.dial_allowed.read().expect("lock").contains(addr) {
            Ok(())
        } else {
            Err(format!(
                "not dialling {addr}: no link, and it is not a known node"
            ))
        }
    }

    /// NODE-8, NODE-7, NODE-3 for a link the peer opened, after its handshake: `Err` refuses
    /// it with a reason code and a reason. Binds the peer's address on success.
    pub(crate) fn admit_accepted(&self, peer: &PeerInfo) -> Result<(), (&'static str, String)> {
        if peer.transport == TransportKind::Quic && peer.hello.addr == *self.proc_id.addr() {
            return Err((
                refusal::ADDRESS_BOUND,
                format!("{} is our own address", peer.hello.addr),
            ));
        }
        self.admit(peer)?;
        if self.peer_class(peer) == PeerClass::Remote {
            let key = peer.identity_key();
            match self.bound.entry(peer.hello.addr.clone()) {
                dashmap::Entry::Occupied(e) if *e.get() != key => {
                    return Err((
                        refusal::ADDRESS_BOUND,
                        format!(
                            "{} is bound to another identity ({}), not {key}",
                            peer.hello.addr,
                            e.get()
                        ),
                    ));
                }
                dashmap::Entry::Occupied(_) => {}
                dashmap::Entry::Vacant(e) => {
                    e.insert(key);
                }
            }
        }
        Ok(())
    }

    /// NODE-8: the admission hook for any link.
    pub(crate) fn admit(&self, peer: &PeerInfo) -> Result<(), (&'static str, String)> {
        let admission = self.admission.read().expect("lock").clone();
        match admission {
            Some(admission) => admission
                .admit(peer)
                .map_err(|reason| (refusal::ADMISSION, reason)),
            None => Ok(()),
        }
    }

    /// Our node claim for a link with this binding (QUIC) or none (Unix, in-process).
    pub(crate) fn claim_for(
        &self,
        binding: Option<&[u8; 32]>,
    ) -> Option<procmesh_protocol::codec::NodeClaim> {
        let (name, secret) = self.claim.as_ref()?;
        let proof = secret.as_ref().map(|secret| {
            NodeProof::from_bytes(match binding {
                Some(b) => node_proof(secret, b),
                None => proc_proof(secret),
            })
        });
        Some(procmesh_protocol::codec::NodeClaim {
            name: name.clone(),
            proof,
        })
    }

    /// The link to a peer address, dialling a new one when there is none.
    pub(crate) fn peer_link(self: &Arc<Self>, addr: &HostAddr) -> Link {
        if let Some(link) = self.peers.get(addr) {
            if !link.is_closed() {
                return link.clone();
            }
        }
        match self.peers.entry(addr.clone()) {
            dashmap::Entry::Occupied(e) if !e.get().is_closed() => e.get().clone(),
            entry => {
                let link = self.dial(addr);
                entry.insert(link.clone());
                link
            }
        }
    }

    /// A new link to `addr` whose transport task dials in the background.
    fn dial(self: &Arc<Self>, addr: &HostAddr) -> Link {
        let (link, rx) = Link::new(addr.to_string(), TransportKind::of(addr));
        let node = self.clone();
        let target = addr.clone();
        let task_link = link.clone();
        tokio::spawn(async move {
            match target {
                HostAddr::Quic(sa) => crate::quic::run_outbound(node, sa, task_link, rx).await,
                HostAddr::Unix(path) => crate::unix::run_outbound(node, path, task_link, rx).await,
                HostAddr::Local(name) => {
                    crate::local::run_outbound(node, name, task_link, rx).await
                }
            }
        });
        link
    }

    /// Registers the write side of an accepted connection so replies and later messages to the
    /// peer reuse it. Backend peers claiming our address become proc routes (NODE-3).
    pub(crate) fn adopt(self: &Arc<Self>, peer: &PeerInfo, link: &Link) {
        let ours = self.proc_id.addr();
        if peer.hello.addr == *ours {
            if peer.transport == TransportKind::Quic {
                // Refused by admit_accepted before we get here (NODE-3).
                tracing::warn!(peer = ?peer.remote, "QUIC peer claims our own address; not routing to it");
                return;
            }
            if procmesh_protocol::ids::validate_name(&peer.hello.name).is_ok() {
                tracing::debug!(proc = %peer.hello.name, "proc route up");
                self.procs.insert(peer.hello.name.clone(), link.clone());
            }
            return;
        }
        link.mark_accepted();
        match self.peers.entry(peer.hello.addr.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                let old = e.get();
                // LNK-4: the peer's newest link replaces an older one it opened, and any whose
                // connection is gone; a live link we dialled stays (simultaneous dials).
                let dead = old.is_closed() || old.carrier_lost().is_some();
                if dead || old.is_accepted() {
                    let old = e.insert(link.clone());
                    if !dead {
                        tracing::info!(
                            peer = %peer.hello.addr,
                            old = old.id(),
                            new = link.id(),
                            same_connection = old.carrier_id() == link.carrier_id(),
                            "a newer link from the peer replaces the older one"
                        );
                        old.close();
                    }
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(link.clone());
            }
        }
    }

    /// After an ask to `addr` timed out: have the connection under it checked, so a dead
    /// one does not keep swallowing messages until the idle timeout (QUIC-5).
    pub(crate) fn suspect(&self, addr: &HostAddr) {
        if self.default_addr.is_some() || addr == self.proc_id.addr() {
            return;
        }
        if let (HostAddr::Quic(sa), Some(quic)) = (addr, &self.quic) {
            quic.suspect(*sa);
        }
    }

    /// Removes a link from every route it serves (LNK-2).
    pub(crate) fn forget(&self, link: &Link) {
        self.peers.retain(|_, l| !l.same(link));
        self.procs.retain(|_, l| !l.same(link));
        let mut slot = self.default_route.write().expect("lock");
        if slot.as_ref().is_some_and(|l| l.same(link)) {
            *slot = None;
        }
    }

    /// [`route`](Self::route) behind a box: routing may recurse (a reply or a bounce is
    /// routed from within delivery), and a boxed `Send` future breaks the type cycle.
    pub(crate) fn route_boxed(
        self: &Arc<Self>,
        env: Envelope,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.route(env, None))
    }

    /// Sends the sender of `env` the news that it could not be delivered (ENV-2).
    pub(crate) fn bounce(
        self: &Arc<Self>,
        env: Envelope,
        reason: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match env.bounce(reason.clone()) {
                Some(notice) => self.route_boxed(notice).await,
                None => {
                    tracing::warn!(dest = %env.dest, %reason, "dropped an undeliverable notice or reply");
                }
            }
        })
    }

    async fn deliver(self: &Arc<Self>, env: Envelope, from: Option<&Arc<PeerInfo>>) {
        let Envelope {
            dest,
            sender,
            body,
            trace,
        } = env;
        match body {
            Body::Reply { id, result } => {
                // NODE-4: the first answer takes the slot.
                if let Some((_, slot)) = self.pending.remove(&id) {
                    let _ = slot.send(result);
                } else {
                    tracing::debug!(id, "late reply dropped (ask timed out)");
                }
            }
            Body::Undeliverable(notice) => {
                tracing::warn!(dest = %notice.dest, reason = %notice.reason, "message undeliverable");
                let _ = self.undeliverable.send(notice);
            }
            body @ (Body::Tell { .. } | Body::Ask { .. }) => {
                let ask = match &body {
                    Body::Ask { id, .. } => Some(*id),
                    _ => None,
                };
                let Some(Addressed {
                    handler,
                    dest,
                    sender,
                    message,
                    trace,
                }) = self.handler_or_bounce(dest, sender, body, trace).await
                else {
                    return;
                };
                let Some(id) = ask else {
                    let ctx = crate::remote::CallContext {
                        from: sender,
                        peer: from.cloned(),
                        trace,
                    };
                    if let Err(error) = handler.tell(&message, ctx).await {
                        tracing::warn!(%error, actor = %dest, "tell not delivered");
                    }
                    return;
                };
                // NODE-10: a bound on asks pending per link.
                let guard = match from {
                    Some(peer) => {
                        let limit = self.config.limits.max_pending_asks_per_connection;
                        if peer.asks.fetch_add(1, Ordering::AcqRel) >= limit {
                            peer.asks.fetch_sub(1, Ordering::AcqRel);
                            self.refuse(refusal::TOO_MANY_ASKS);
                            tracing::warn!(peer = %peer.hello.addr, limit, "too many pending asks");
                            let reply = Envelope {
                                dest: sender,
                                sender: dest,
                                body: Body::Reply {
                                    id,
                                    result: Err(RemoteError::Undeliverable(
                                        "too many pending asks".into(),
                                    )),
                                },
                                trace,
                            };
                            return self.route_boxed(reply).await;
                        }
                        Some(AskGuard(peer.asks.clone()))
                    }
                    None => None,
                };
                let ctx = crate::remote::CallContext {
                    from: sender.clone(),
                    peer: from.cloned(),
                    trace: trace.clone(),
                };
                // Enqueue now (ordering, NODE-1); await the reply off the reader's path.
                let reply = handler.ask(&message, ctx).await;
                let node = self.clone();
                let send = move |result| async move {
                    drop(guard);
                    let reply = Envelope {
                        dest: sender,
                        sender: dest,
                        body: Body::Reply { id, result },
                        trace,
                    };
                    node.route_boxed(reply).await;
                };
                match reply {
                    Ok(pending) => {
                        tokio::spawn(async move { send(pending.await).await });
                    }
                    Err(e) => send(Err(e)).await,
                }
            }
        }
    }

    /// The handler of the actor an envelope is for, with the envelope's parts; or `None`
    /// after bouncing it when there is no such actor (NODE-2).
    async fn handler_or_bounce(
        self: &Arc<Self>,
        dest: ActorId,
        sender: ActorId,
        body: Body,
        trace: Option<TraceContext>,
    ) -> Option<Addressed> {
        let handler = self.actors.get(dest.name()).map(|e| e.erased.clone());
        match (handler, body) {
            (Some(handler), Body::Tell { message } | Body::Ask { message, .. }) => {
                Some(Addressed {
                    handler,
                    dest,
                    sender,
                    message,
                    trace,
                })
            }
            (_, body) => {
                let reason = format!("no actor named {:?} in proc {}", dest.name(), self.proc_id);
                let env = Envelope {
                    dest,
                    sender,
                    body,
                    trace,
                };
                self.bounce(env, reason).await;
                None
            }
        }
    }

    /// A fresh ask id and the slot its reply lands in.
    pub(crate) fn new_ask(&self) -> (u64, oneshot::Receiver<Result<Payload, RemoteError>>) {
        let id = self.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        (id, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let c = NodeConfig::default();
        assert_eq!(c.max_frame, 16 * 1024 * 1024);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 1024);
        assert_eq!(c.limits.max_connections_per_identity, 64);
        assert_eq!(c.limits.max_pending_asks_per_connection, 1024);
        assert_eq!(c.quic.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.quic.keep_alive, Duration::from_secs(5));
        assert_eq!(c.quic.max_bidi_streams, 64);
        assert_eq!(c.quic.connect_timeout, Duration::from_secs(5));
        // QUIC-2: keep-alives must come well within the idle timeout.
        assert!(c.quic.keep_alive * 3 <= c.quic.idle_timeout);
    }
}
