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
//!   stays with the first. A QUIC peer claiming our own address is refused (NODE-3). Only
//!   nodes keep an address: a client's or operator's claim lasts while a link of theirs to it
//!   lives, and a node (orchestrator or host) claiming an address a client or operator holds
//!   takes it over (their link is replaced and closed), so nobody without a node certificate
//!   can hold a node's address against it.
//! - **NODE-8** Every link, accepted or dialled, on every transport, passes [`Admission::admit`]
//!   after its handshake and before it is adopted or anything it sends is routed; a refusal
//!   closes it (`admission`).
//! - **NODE-9** With [`DialPolicy::Listed`] the node dials only addresses it was told to
//!   ([`Node::allow_dial`]); a message for any other address without a live link is bounced
//!   ("not dialling …"), so a peer cannot make us dial an address by naming it as a sender.
//! - **NODE-10** Limits ([`Limits`]): incoming QUIC connections in total and per certificate
//!   serial, and asks pending on one link. Past a limit a connection is closed with
//!   [`CLOSE_LIMIT`] and a reason, an ask is answered `Undeliverable("too many pending asks")`;
//!   both are counted, and the node keeps serving everyone else. Within the handshake timeout
//!   an accepted connection must open a stream, a stream must say what it is (its magic), a
//!   link must finish its hello and a blob stream send its request; otherwise it is closed
//!   and counted (`handshake`), so saying nothing holds no slot for long.
//! - **NODE-11** Every refusal is counted by reason code ([`Node::refusals`]).

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::FrameCodec;
use procmesh_protocol::{
    ActorId, Body, Envelope, HostAddr, Payload, ProcId, RemoteError, TraceContext, Undeliverable,
};
use tokio::sync::{broadcast, oneshot};

use crate::blob::BlobStore;
use crate::link::{Link, TransportKind};
use crate::local::LocalHub;
pub(crate) use crate::peer::IdentityKey;
pub use crate::peer::{
    node_proof, proc_proof, refusal, verify_node_proof, Admission, DialPolicy, Limits, PeerCred,
    PeerInfo, BINDING_LABEL, CLOSE_LIMIT, CLOSE_REFUSED, CLOSE_REVOKED,
};
use crate::quic::Quic;
use crate::remote::ErasedHandler;
use crate::revoke::Revocations;
use crate::tls::PeerIdentity;

pub use crate::builder::{LimitSettings, NodeBuilder, NodeConfig, NodeError};

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
    pub(crate) default_route: RwLock<Option<Link>>,
    pub(crate) default_addr: Option<HostAddr>,
    pub pending: DashMap<u64, ReplySlot>,
    pub(crate) next_ask: AtomicU64,
    pub quic: Option<Quic>,
    pub hub: Option<LocalHub>,
    pub blobs: Option<Arc<BlobStore>>,
    pub(crate) undeliverable: broadcast::Sender<Undeliverable>,
    /// The node claim our hellos carry.
    pub claim: Option<(String, Option<[u8; 32]>)>,
    /// Our CA's mesh name (QUIC nodes): peers must be of the same mesh (TLS-5).
    pub mesh: Option<String>,
    pub(crate) dial_policy: DialPolicy,
    pub(crate) dial_allowed: RwLock<HashSet<HostAddr>>,
    pub(crate) admission: RwLock<Option<Arc<dyn Admission>>>,
    pub blob_policy: RwLock<Option<Arc<dyn crate::blob::BlobPolicy>>>,
    pub revocations: Option<Revocations>,
    /// Remote peers' addresses and the identity each is bound to (NODE-7).
    pub(crate) bound: DashMap<HostAddr, IdentityKey>,
    pub(crate) refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Background tasks ended at shutdown.
    pub(crate) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
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

    #[test]
    fn limit_settings_default_to_the_transports_limits_and_none_may_be_zero() {
        let s = LimitSettings::default();
        assert_eq!(
            (
                s.max_connections,
                s.max_connections_per_identity,
                s.max_pending_asks_per_connection,
                s.max_streams_per_connection,
                s.handshake_timeout_ms
            ),
            (1024, 64, 1024, 64, 10_000)
        );
        assert_eq!(s.zero(), None);
        let node = s.node_config();
        let defaults = NodeConfig::default();
        assert_eq!(node.limits, defaults.limits);
        assert_eq!(node.quic.max_bidi_streams, defaults.quic.max_bidi_streams);
        assert_eq!(node.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(node.max_frame, defaults.max_frame);

        let set = LimitSettings {
            max_connections: 10,
            max_connections_per_identity: 2,
            max_pending_asks_per_connection: 3,
            max_streams_per_connection: 4,
            handshake_timeout_ms: 500,
        };
        let node = set.node_config();
        assert_eq!(node.limits.max_connections, 10);
        assert_eq!(node.limits.max_connections_per_identity, 2);
        assert_eq!(node.limits.max_pending_asks_per_connection, 3);
        assert_eq!(node.quic.max_bidi_streams, 4);
        assert_eq!(node.handshake_timeout, Duration::from_millis(500));

        type Zero = fn(&mut LimitSettings);
        let zeroed: [(Zero, &str); 5] = [
            (|s| s.max_connections = 0, "limits.max_connections"),
            (
                |s| s.max_connections_per_identity = 0,
                "limits.max_connections_per_identity",
            ),
            (
                |s| s.max_pending_asks_per_connection = 0,
                "limits.max_pending_asks_per_connection",
            ),
            (
                |s| s.max_streams_per_connection = 0,
                "limits.max_streams_per_connection",
            ),
            (
                |s| s.handshake_timeout_ms = 0,
                "limits.handshake_timeout_ms",
            ),
        ];
        for (zero, key) in zeroed {
            let mut s = LimitSettings::default();
            zero(&mut s);
            assert_eq!(s.zero(), Some(key));
        }
    }

    #[test]
    fn a_partial_limits_table_is_filled_with_the_defaults_and_unknown_keys_are_refused() {
        let s: LimitSettings = serde_json::from_str(
            r#"{"max_connections": 10, "max_streams_per_connection": 4,
                "handshake_timeout_ms": 500}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            LimitSettings {
                max_connections: 10,
                max_streams_per_connection: 4,
                handshake_timeout_ms: 500,
                ..LimitSettings::default()
            }
        );
        let err = serde_json::from_str::<LimitSettings>(r#"{"max_conections": 1}"#).unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }
}
