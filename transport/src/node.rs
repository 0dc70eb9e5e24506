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

use std::any::Any;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::{FrameCodec, Hello, DEFAULT_MAX_FRAME};
use procmesh_protocol::{
    ActorId, Body, Envelope, HostAddr, Payload, ProcId, RemoteError, TraceContext, Undeliverable,
};
use tokio::sync::{broadcast, oneshot};

use crate::blob::BlobStore;
use crate::link::{Link, TransportKind};
use crate::local::LocalHub;
use crate::quic::{Quic, QuicOptions};
use crate::remote::ErasedHandler;
use crate::tls::TlsIdentity;

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
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_frame: DEFAULT_MAX_FRAME,
            quic: QuicOptions::default(),
            handshake_timeout: Duration::from_secs(10),
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
        }
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
            Some((bind, identity)) => Some(Quic::bind(*bind, identity, &self.config.quic)?),
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
        });
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
        let dest = env.dest.proc_id();
        if *dest == self.proc_id {
            return self.deliver(env, from).await;
        }
        if dest.addr() == self.proc_id.addr() {
            let name = dest.name().to_owned();
            let link = self.procs.get(&name).map(|l| l.clone());
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
                let ctx = crate::remote::CallContext {
                    from: sender.clone(),
                    peer: from.cloned(),
                    trace: trace.clone(),
                };
                // Enqueue now (ordering, NODE-1); await the reply off the reader's path.
                let reply = handler.ask(&message, ctx).await;
                let node = self.clone();
                let send = move |result| async move {
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
        assert_eq!(c.quic.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.quic.keep_alive, Duration::from_secs(5));
        assert_eq!(c.quic.max_bidi_streams, 64);
        assert_eq!(c.quic.connect_timeout, Duration::from_secs(5));
        // QUIC-2: keep-alives must come well within the idle timeout.
        assert!(c.quic.keep_alive * 3 <= c.quic.idle_timeout);
    }
}
