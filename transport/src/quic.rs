//! QUIC transport: one UDP endpoint per node that both listens and dials, mutual TLS only.
//!
//! ```text
//!  node A ══════════ one QUIC connection per peer pair (reused) ══════════ node B
//!     bi-stream #0  "PMSH" handshake ⇄ handshake, then envelope frames both ways (control)
//!     bi-stream #n  "PMBL" blob push / fetch, one stream per blob, raw chunks after a header
//! ```
//!
//! # Invariants
//! - **QUIC-1** At most one connection is dialled per peer address at a time, and the newest
//!   live one (dialled or accepted) is reused for control and blob streams alike.
//! - **QUIC-2** Idle timeout and keep-alive are set on both ends (the same transport config
//!   serves the server and client roles); stream limits are kept moderate.
//! - **QUIC-3** Every accepted stream is classified by its first four bytes; anything other than
//!   a control, blob or probe stream is reset.
//! - **QUIC-4** A peer address has one connection in use. A connection accepted from an address
//!   replaces an older *accepted* one from it at once (the peer dials only when it has no live
//!   connection to us: it restarted, or gave up on the old one), and the older one is closed
//!   with code 2, "replaced by a newer connection from the same peer". When the older one is a
//!   connection *we* dialled, it is probed first (a `PMPG` stream the peer finishes or resets):
//!   answered, both sides dialled at once and both connections stay; unanswered within
//!   [`PROBE_TIMEOUT`] or reset, the peer restarted and the old connection is closed. The new
//!   connection's control streams are served only after that decision, so their link finds
//!   the route free (LNK-4); its probe and blob streams are served at once (two peers probing
//!   each other must not wait on each other).
//! - **QUIC-5** A restarted node is detected at once: every endpoint signs stateless resets with
//!   the key of its identity (TLS-3), so packets a peer still sends to the dead process's
//!   connection come back as a reset the peer honours, and its links over it fail (LNK-5)
//!   within a round trip instead of after the idle timeout. (QUIC lets only the server side of
//!   a connection announce a reset token for its first connection id; a restarted *client* is
//!   caught by QUIC-4 when it dials again.) An ask that times out has its peer's connection
//!   probed the same way, and closed if the peer does not answer: the next message dials afresh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::MAGIC;
use procmesh_protocol::Envelope;
use tokio::sync::{mpsc, watch};

use crate::blob::{self, BLOB_MAGIC};
use crate::link::{Link, TransportKind};
use crate::node::{
    refusal, Limits, NodeConfig, NodeError, NodeInner, BINDING_LABEL, CLOSE_LIMIT, CLOSE_REFUSED,
    CLOSE_REVOKED,
};
use crate::revoke::Revocations;
use crate::stream::{handshake_timed, run_dialled, serve_control, Carrier};
use crate::tls::{quic_configs, PeerIdentity, TlsIdentity, NODE_SERVER_NAME};

/// The first bytes of a liveness probe stream: the peer answers by finishing it (QUIC-4).
pub(crate) const PROBE_MAGIC: [u8; 4] = *b"PMPG";
/// How long a probed connection has to answer (plus a few round trips) before it is taken
/// for dead (QUIC-4).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Application close code of a connection replaced by a newer one from the same peer.
const CLOSE_REPLACED: u32 = 2;
/// Application close code of a connection whose peer did not answer a probe.
const CLOSE_UNANSWERED: u32 = 3;

/// QUIC tunables.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// A connection with no traffic for this long is closed (keep-alives count as traffic).
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be well under the idle timeout.
    pub keep_alive: Duration,
    /// Concurrent bidirectional streams a peer may open (control + blob transfers).
    pub max_bidi_streams: u32,
    /// How long a dial may take before its queued messages are bounced.
    pub connect_timeout: Duration,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_bidi_streams: 64,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

fn transport_config(opts: &QuicOptions) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // QUIC-2
    t.max_idle_timeout(quinn::IdleTimeout::try_from(opts.idle_timeout).ok());
    t.keep_alive_interval(Some(opts.keep_alive));
    t.max_concurrent_bidi_streams(opts.max_bidi_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Larger windows than the defaults so one blob stream can fill a fast link.
    t.stream_receive_window((8u32 * 1024 * 1024).into());
    t.receive_window((32u32 * 1024 * 1024).into());
    t.send_window(32 * 1024 * 1024);
    // Fewer ACK-only packets: messages here are small and mostly answered, so the peer may
    // wait for 8 packets or 5 ms before it acknowledges (ACKs still ride on every reply).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(8u32.into())
        .max_ack_delay(Some(Duration::from_millis(5)));
    t.ack_frequency_config(Some(ack));
    t
}

/// A registered connection and who opened it.
#[derive(Clone)]
struct Conn {
    conn: quinn::Connection,
    /// We dialled it (else the peer did).
    dialled: bool,
    /// The peer's verified identity (TLS-5).
    identity: Arc<PeerIdentity>,
}

pub(crate) struct Quic {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    conns: DashMap<SocketAddr, Conn>,
    dialing: DashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
    /// Peers whose connection is being probed after a timed-out ask (one probe at a time).
    probing: Arc<DashMap<SocketAddr, ()>>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    limits: Limits,
    /// Every open connection by stable id, with its peer's identity (TLS-6 sweeps these).
    live: Arc<DashMap<usize, (quinn::Connection, Arc<PeerIdentity>)>>,
    /// Incoming connections, handshaking or open (NODE-10).
    incoming: Arc<AtomicUsize>,
    /// Open incoming connections per certificate serial (NODE-10).
    per_identity: Arc<Mutex<HashMap<String, usize>>>,
}

/// Holds one incoming-connection slot (NODE-10) until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds one per-identity slot (NODE-10) until dropped.
struct IdentitySlot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    serial: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("lock");
        if let Some(n) = map.get_mut(&self.serial) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.serial);
            }
        }
    }
}

/// Removes a connection from [`Quic::live`] when its serving task ends.
struct LiveEntry {
    live: Arc<DashMap<usize, (quinn::Connection, Arc<PeerIdentity>)>>,
    id: usize,
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        self.live.remove(&self.id);
    }
}

/// The TLS exporter of a connection (see [`crate::PeerInfo::binding`]).
fn binding_of(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, BINDING_LABEL, b"")
        .ok()
        .map(|()| out)
}

/// The verified identity of a connection's peer, checked against our mesh, the role a dialled
/// server must have, and the revocation list (TLS-5, TLS-6). `Err`: a reason code and a reason.
fn check_peer(
    node: &NodeInner,
    conn: &quinn::Connection,
    dialled: bool,
) -> Result<Arc<PeerIdentity>, (&'static str, String)> {
    let bad = |reason: String| (refusal::BAD_IDENTITY, reason);
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| bad("the peer presented no certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| bad("the peer presented no certificate".into()))?;
    let identity = PeerIdentity::from_cert_der(first.as_ref()).map_err(|e| bad(e.to_string()))?;
    if let Some(mesh) = &node.mesh {
        if identity.mesh != *mesh {
            return Err(bad(format!(
                "{} is of mesh {:?}, not ours ({mesh:?})",
                identity.uri(),
                identity.mesh
            )));
        }
    }
    if dialled && !identity.role.is_node() {
        return Err(bad(format!(
            "the server we dialled is {}: not an orchestrator or a host",
            identity.uri()
        )));
    }
    if node
        .revocations
        .as_ref()
        .is_some_and(|r| r.contains(&identity.serial))
    {
        return Err((
            refusal::REVOKED,
            format!("certificate {} is revoked", identity.serial),
        ));
    }
    Ok(Arc::new(identity))
}

/// Closes every open connection whose peer's certificate is revoked whenever `list` changes
/// (TLS-6).
pub(crate) fn spawn_revocation_sweeper(
    node: &Arc<NodeInner>,
    list: &Revocations,
) -> tokio::task::AbortHandle {
    let weak = Arc::downgrade(node);
    let mut changed = list.subscribe();
    let list = list.clone();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            let Some(node) = weak.upgrade() else { return };
            let Some(quic) = &node.quic else { return };
            let revoked: Vec<(quinn::Connection, Arc<PeerIdentity>)> = quic
                .live
                .iter()
                .filter(|e| list.contains(&e.value().1.serial))
                .map(|e| e.value().clone())
                .collect();
            for (conn, identity) in revoked {
                node.refuse(refusal::REVOKED);
                tracing::warn!(
                    identity = %identity,
                    remote = %conn.remote_address(),
                    "closing the connection of a revoked certificate"
                );
                conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
            }
        }
    })
    .abort_handle()
}

/// Our connection ids: 8 unpredictable bytes, BLAKE3 of a counter under a per-endpoint random
/// key. Unlike quinn's default generator, it does not sign its ids with a per-process key and
/// reject all others, so a restarted process answers the ids of its previous incarnation with a
/// stateless reset instead of dropping them as foreign (QUIC-5).
struct CidGenerator {
    key: [u8; 32],
    next: u64,
}

impl CidGenerator {
    const LEN: usize = 8;

    fn new() -> CidGenerator {
        use std::hash::{BuildHasher, Hasher};
        // The standard library seeds `RandomState` from the OS; time and pid only add spread.
        let mut seed = std::hash::RandomState::new().build_hasher();
        seed.write_u32(std::process::id());
        seed.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let key = blake3::derive_key(
            "procmesh quic connection ids v1",
            &seed.finish().to_le_bytes(),
        );
        CidGenerator { key, next: 0 }
    }
}

impl quinn::ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.next += 1;
        let hash = blake3::keyed_hash(&self.key, &self.next.to_le_bytes());
        quinn::ConnectionId::new(&hash.as_bytes()[..Self::LEN])
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn live(c: &quinn::Connection) -> bool {
    c.close_reason().is_none()
}

/// Whether the peer's endpoint answers on `conn` (QUIC-4): it finishes (or, if it predates
/// probes, resets) a probe stream. A stateless reset from a restarted peer, a closed
/// connection, or silence for [`PROBE_TIMEOUT`] and a few round trips: dead.
async fn answers(conn: &quinn::Connection) -> bool {
    let probe = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        send.write_all(&PROBE_MAGIC).await.ok()?;
        let _ = send.finish();
        match recv.read_to_end(0).await {
            Ok(_) | Err(quinn::ReadToEndError::TooLong) => Some(()),
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_))) => Some(()),
            Err(_) => None,
        }
    };
    let within = PROBE_TIMEOUT + conn.rtt() * 4;
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(())))
}

impl Quic {
    pub(crate) fn bind(
        bind: SocketAddr,
        identity: &TlsIdentity,
        node_config: &NodeConfig,
    ) -> Result<Quic, NodeError> {
        let opts = &node_config.quic;
        let (server_crypto, client_crypto) = quic_configs(identity)?;
        let transport = Arc::new(transport_config(opts));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let bind_err = |source| NodeError::Bind {
            addr: bind.to_string(),
            source,
        };
        // QUIC-5, TLS-3: resets signed with the identity's key, valid across restarts.
        let mut config = quinn::EndpointConfig::new(identity.reset_key()?);
        config.cid_generator(|| Box::new(CidGenerator::new()));
        let socket = std::net::UdpSocket::bind(bind).map_err(bind_err)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_err(std::io::Error::other("no async runtime found")))?;
        let mut endpoint =
            quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let local = endpoint.local_addr().map_err(|source| NodeError::Bind {
            addr: bind.to_string(),
            source,
        })?;
        Ok(Quic {
            endpoint,
            local,
            conns: DashMap::new(),
            dialing: DashMap::new(),
            probing: Arc::new(DashMap::new()),
            connect_timeout: opts.connect_timeout,
            handshake_timeout: node_config.handshake_timeout,
            limits: node_config.limits.clone(),
            live: Arc::new(DashMap::new()),
            incoming: Arc::new(AtomicUsize::new(0)),
            per_identity: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Whether a live connection to `addr` exists.
    pub(crate) fn has_connection(&self, addr: SocketAddr) -> bool {
        self.conns.get(&addr).is_some_and(|c| live(&c.conn))
    }

    /// Takes a slot for one more incoming connection, if under the limit (NODE-10).
    fn incoming_slot(&self) -> Option<Slot> {
        let max = self.limits.max_connections;
        self.incoming
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.incoming.clone()))
    }

    /// Takes a slot for one more connection from `serial`, if under the limit (NODE-10).
    fn identity_slot(&self, serial: &str) -> Option<IdentitySlot> {
        let mut map = self.per_identity.lock().expect("lock");
        let n = map.entry(serial.to_owned()).or_insert(0);
        if *n >= self.limits.max_connections_per_identity {
            return None;
        }
        *n += 1;
        Some(IdentitySlot {
            map: self.per_identity.clone(),
            serial: serial.to_owned(),
        })
    }

    fn track(&self, conn: &quinn::Connection, identity: &Arc<PeerIdentity>) -> LiveEntry {
        self.live
            .insert(conn.stable_id(), (conn.clone(), identity.clone()));
        LiveEntry {
            live: self.live.clone(),
            id: conn.stable_id(),
        }
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn spawn_accept(&self, node: Weak<NodeInner>) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Some(inner) = node.upgrade() else { return };
                let Some(quic) = &inner.quic else { return };
                // NODE-10: refused before any TLS work when the node is full.
                let Some(slot) = quic.incoming_slot() else {
                    inner.refuse(refusal::TOO_MANY_CONNECTIONS);
                    tracing::warn!(
                        remote = %incoming.remote_address(),
                        max = quic.limits.max_connections,
                        "too many connections; refusing a new one"
                    );
                    incoming.refuse();
                    continue;
                };
                let within = quic.handshake_timeout;
                drop(inner);
                let node = node.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let conn = match tokio::time::timeout(within, incoming).await {
                        Ok(Ok(conn)) => conn,
                        // TLS-1: no certificate, or one from another CA, ends here.
                        Ok(Err(error)) => {
                            tracing::info!(%error, %remote, "refused QUIC connection");
                            return;
                        }
                        Err(_) => {
                            if let Some(inner) = node.upgrade() {
                                inner.refuse(refusal::HANDSHAKE);
                            }
                            tracing::info!(%remote, ?within, "QUIC handshake timed out");
                            return;
                        }
                    };
                    let Some(inner) = node.upgrade() else { return };
                    let Some(quic) = &inner.quic else { return };
                    // TLS-5, TLS-6
                    let identity = match check_peer(&inner, &conn, false) {
                        Ok(identity) => identity,
                        Err((code, reason)) => {
                            inner.refuse(code);
                            tracing::warn!(code, %reason, %remote, "refused QUIC connection");
                            conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
                            return;
                        }
                    };
                    // NODE-10
                    let Some(identity_slot) = quic.identity_slot(&identity.serial) else {
                        inner.refuse(refusal::TOO_MANY_PER_IDENTITY);
                        tracing::warn!(
                            %remote,
                            identity = %identity,
                            max = quic.limits.max_connections_per_identity,
                            "too many connections from one identity; refusing a new one"
                        );
                        conn.close(
                            CLOSE_LIMIT.into(),
                            b"too many connections from this identity",
                        );
                        return;
                    };
                    let carrier = Carrier {
                        binding: binding_of(&conn),
                        conn: conn.clone(),
                        identity: identity.clone(),
                    };
                    let entry = quic.track(&conn, &identity);
                    // Probe and blob streams are served at once (a peer probing us
                    // while we probe it must get its answer); control streams wait
                    // until the older connection is settled (QUIC-4).
                    let (settled, settling) = watch::channel(false);
                    let guards = (slot, identity_slot, entry);
                    let first = node.upgrade().map(|n| n.config.handshake_timeout);
                    tokio::spawn(serve_connection(
                        node.clone(),
                        carrier,
                        settling,
                        guards,
                        first,
                    ));
                    quic.register_accepted(remote, &conn, &identity).await;
                    settled.send_replace(true);
                });
            }
        });
    }

    /// Registers a connection the peer at `remote` opened, replacing an older one (QUIC-4).
    async fn register_accepted(
        &self,
        remote: SocketAddr,
        conn: &quinn::Connection,
        identity: &Arc<PeerIdentity>,
    ) {
        let older = self
            .conns
            .get(&remote)
            .map(|c| c.clone())
            .filter(|c| c.conn.stable_id() != conn.stable_id() && live(&c.conn));
        if let Some(older) = older {
            // QUIC-4: a dialled one may be the twin of a simultaneous dial; ask it.
            if older.dialled && answers(&older.conn).await {
                tracing::debug!(%remote, "both sides dialled at once; keeping both connections");
            } else {
                tracing::info!(
                    %remote,
                    dialled = older.dialled,
                    "a newer connection from the peer replaces the older one"
                );
                older.conn.close(
                    CLOSE_REPLACED.into(),
                    b"replaced by a newer connection from the same peer",
                );
            }
        }
        self.conns.insert(
            remote,
            Conn {
                conn: conn.clone(),
                dialled: false,
                identity: identity.clone(),
            },
        );
    }

    /// Probes the connection to `addr` in the background after an ask to it timed out, and
    /// closes it if the peer does not answer (QUIC-5), so the next message dials afresh.
    pub(crate) fn suspect(&self, addr: SocketAddr) {
        let Some(conn) = self.conns.get(&addr).map(|c| c.conn.clone()) else {
            return;
        };
        if !live(&conn) || self.probing.insert(addr, ()).is_some() {
            return;
        }
        let probing = self.probing.clone();
        tokio::spawn(async move {
            if !answers(&conn).await && live(&conn) {
                tracing::info!(remote = %addr, "peer does not answer; closing its connection");
                conn.close(CLOSE_UNANSWERED.into(), b"peer did not answer a probe");
            }
            probing.remove(&addr);
        });
    }

    /// A live connection to `addr`, dialled if there is none (QUIC-1).
    pub(crate) async fn connection(
        &self,
        node: &Arc<NodeInner>,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, Arc<PeerIdentity>), String> {
        let current = |quic: &Quic| {
            quic.conns
                .get(&addr)
                .filter(|c| live(&c.conn))
                .map(|c| (c.conn.clone(), c.identity.clone()))
        };
        if let Some(found) = current(self) {
            return Ok(found);
        }
        let lock = self.dialing.entry(addr).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(found) = current(self) {
            return Ok(found);
        }
        let connecting = self
            .endpoint
            .connect(addr, NODE_SERVER_NAME)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to {addr}: no answer within {:?}",
                    self.connect_timeout
                )
            })?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        // TLS-5, TLS-6: the server must be a node of our mesh, not revoked.
        let identity = match check_peer(node, &conn, true) {
            Ok(identity) => identity,
            Err((code, reason)) => {
                node.refuse(code);
                tracing::warn!(code, %reason, remote = %addr, "refused the server we dialled");
                conn.close(CLOSE_REFUSED.into(), reason.as_bytes());
                return Err(format!("cannot connect to {addr}: {reason}"));
            }
        };
        // QUIC-1: the newest connection serves what comes next. An accepted one that arrived
        // while we dialled is the twin of a simultaneous dial: it stays open (QUIC-4).
        self.conns.insert(
            addr,
            Conn {
                conn: conn.clone(),
                dialled: true,
                identity: identity.clone(),
            },
        );
        // The peer may open streams on this connection too (its replies reuse it, QUIC-1).
        let (_, settled) = watch::channel(true);
        let carrier = Carrier {
            binding: binding_of(&conn),
            conn: conn.clone(),
            identity: identity.clone(),
        };
        let entry = self.track(&conn, &identity);
        tokio::spawn(serve_connection(
            Arc::downgrade(node),
            carrier,
            settled,
            entry,
            None,
        ));
        Ok((conn, identity))
    }

    pub(crate) async fn close_gracefully(&self, grace: Duration) {
        for conn in self.conns.iter() {
            conn.conn.close(0u32.into(), b"shutdown");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// Accepts the streams a peer opens on a connection until it closes. `guards` (limit slots,
/// the live-connection entry) are held until then. On an accepted connection the peer must
/// open its first stream within `first` (the handshake timeout, NODE-10), or the connection is
/// closed: a connection that finished TLS and says nothing holds no slot for long.
async fn serve_connection<G: Send + 'static>(
    node: Weak<NodeInner>,
    carrier: Carrier,
    settled: watch::Receiver<bool>,
    guards: G,
    first: Option<Duration>,
) {
    let _guards = guards;
    let conn = carrier.conn.clone();
    let remote = conn.remote_address();
    let mut first = first;
    loop {
        let accepted = match first.take() {
            Some(within) => tokio::time::timeout(within, conn.accept_bi()).await,
            None => Ok(conn.accept_bi().await),
        };
        let Ok(accepted) = accepted else {
            if let Some(inner) = node.upgrade() {
                inner.refuse(refusal::HANDSHAKE);
            }
            tracing::warn!(%remote, "no stream within the handshake timeout: closing");
            conn.close(
                CLOSE_REFUSED.into(),
                b"no stream within the handshake timeout",
            );
            continue;
        };
        match accepted {
            Ok((send, recv)) => {
                let Some(inner) = node.upgrade() else { return };
                let settled = settled.clone();
                tokio::spawn(serve_stream(inner, carrier.clone(), settled, send, recv));
            }
            Err(error) => {
                tracing::debug!(%error, %remote, "QUIC connection ended");
                if let Some(inner) = node.upgrade() {
                    if let Some(quic) = &inner.quic {
                        quic.conns
                            .remove_if(&remote, |_, c| c.conn.stable_id() == conn.stable_id());
                    }
                }
                return;
            }
        }
    }
}

/// Classifies an accepted stream by its magic (QUIC-3) and serves it.
async fn serve_stream(
    node: Arc<NodeInner>,
    carrier: Carrier,
    mut settled: watch::Receiver<bool>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let remote = carrier.conn.remote_address();
    let mut magic = [0u8; 4];
    // NODE-10: a stream that does not say what it is within the handshake timeout is ended,
    // so a peer cannot hold stream slots with a few bytes.
    match tokio::time::timeout(node.config.handshake_timeout, recv.read_exact(&mut magic)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            node.refuse(refusal::HANDSHAKE);
            tracing::warn!(%remote, "a stream sent no magic within the handshake timeout");
            let _ = recv.stop(0u32.into());
            let _ = send.reset(0u32.into());
            return;
        }
    }
    if magic == BLOB_MAGIC {
        let peer = blob::BlobPeer {
            transport: TransportKind::Quic,
            identity: Some(carrier.identity.clone()),
            remote: Some(remote),
            cred: None,
        };
        blob::serve(&node, recv, send, peer).await;
        return;
    }
    if magic == PROBE_MAGIC {
        // QUIC-4: we are alive on this connection.
        let _ = send.finish();
        return;
    }
    if magic != MAGIC {
        tracing::warn!(%remote, ?magic, "resetting a stream that is not procmesh");
        let _ = send.reset(1u32.into());
        return;
    }
    // QUIC-4: adopt the link only once the connection's predecessor is settled.
    let _ = settled.wait_for(|done| *done).await;
    serve_control(node, recv, send, TransportKind::Quic, Some(carrier), None).await;
}

/// Dials `addr`, shakes hands on a fresh control stream and runs the link.
pub(crate) async fn run_outbound(
    node: Arc<NodeInner>,
    addr: SocketAddr,
    link: Link,
    rx: mpsc::UnboundedReceiver<Envelope>,
) {
    let setup = async {
        let quic = node
            .quic
            .as_ref()
            .ok_or_else(|| format!("cannot reach quic!{addr}: this node has no QUIC endpoint"))?;
        let (conn, identity) = quic.connection(&node, addr).await?;
        link.set_carrier(conn.clone());
        let carrier = Carrier {
            binding: binding_of(&conn),
            conn: conn.clone(),
            identity,
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("cannot open a stream to {addr}: {e}"))?;
        let hs = handshake_timed(&node, &mut recv, &mut send, carrier.binding.as_ref())
            .await
            .map_err(|e| format!("handshake with quic!{addr} failed: {e}"))?;
        Ok::<_, String>((send, recv, hs, carrier))
    };
    let (setup, carrier) = match setup.await {
        Ok((send, recv, hs, carrier)) => (Ok((recv, send, hs)), Some(carrier)),
        Err(e) => (Err(e), None),
    };
    run_dialled(node, link, rx, setup, carrier).await;
}

/// Opens a blob stream to `addr` (QUIC-1: on the shared connection).
pub(crate) async fn open_blob_stream(
    node: &Arc<NodeInner>,
    addr: SocketAddr,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let quic = node
        .quic
        .as_ref()
        .ok_or_else(|| format!("cannot reach quic!{addr}: this node has no QUIC endpoint"))?;
    node.may_dial(&procmesh_protocol::HostAddr::Quic(addr))?;
    let (conn, _) = quic.connection(node, addr).await?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream to {addr}: {e}"))?;
    send.write_all(&BLOB_MAGIC)
        .await
        .map_err(|e| format!("cannot write to {addr}: {e}"))?;
    Ok((send, recv))
}
