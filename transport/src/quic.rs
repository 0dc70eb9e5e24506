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

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::MAGIC;
use procmesh_protocol::Envelope;
use tokio::sync::{mpsc, watch};

use crate::blob::{self, BLOB_MAGIC};
use crate::link::{Link, TransportKind};
use crate::node::{NodeError, NodeInner};
use crate::stream::{handshake_timed, run_dialled, serve_control};
use crate::tls::{quic_configs, TlsIdentity, NODE_SERVER_NAME};

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
    t
}

/// A registered connection and who opened it.
#[derive(Clone)]
struct Conn {
    conn: quinn::Connection,
    /// We dialled it (else the peer did).
    dialled: bool,
}

pub(crate) struct Quic {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    conns: DashMap<SocketAddr, Conn>,
    dialing: DashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
    /// Peers whose connection is being probed after a timed-out ask (one probe at a time).
    probing: Arc<DashMap<SocketAddr, ()>>,
    connect_timeout: Duration,
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
        opts: &QuicOptions,
    ) -> Result<Quic, NodeError> {
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
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn spawn_accept(&self, node: Weak<NodeInner>) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => {
                            // Probe and blob streams are served at once (a peer probing us
                            // while we probe it must get its answer); control streams wait
                            // until the older connection is settled (QUIC-4).
                            let (settled, settling) = watch::channel(false);
                            tokio::spawn(serve_connection(node.clone(), conn.clone(), settling));
                            let Some(inner) = node.upgrade() else { return };
                            if let Some(quic) = &inner.quic {
                                quic.register_accepted(remote, &conn).await;
                            }
                            settled.send_replace(true);
                        }
                        // TLS-1: no certificate, or one from another CA, ends here.
                        Err(error) => tracing::info!(%error, %remote, "refused QUIC connection"),
                    }
                });
            }
        });
    }

    /// Registers a connection the peer at `remote` opened, replacing an older one (QUIC-4).
    async fn register_accepted(&self, remote: SocketAddr, conn: &quinn::Connection) {
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
    ) -> Result<quinn::Connection, String> {
        let current = |quic: &Quic| quic.conns.get(&addr).map(|c| c.conn.clone()).filter(live);
        if let Some(conn) = current(self) {
            return Ok(conn);
        }
        let lock = self.dialing.entry(addr).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(conn) = current(self) {
            return Ok(conn);
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
        // QUIC-1: the newest connection serves what comes next. An accepted one that arrived
        // while we dialled is the twin of a simultaneous dial: it stays open (QUIC-4).
        self.conns.insert(
            addr,
            Conn {
                conn: conn.clone(),
                dialled: true,
            },
        );
        // The peer may open streams on this connection too (its replies reuse it, QUIC-1).
        let (_, settled) = watch::channel(true);
        tokio::spawn(serve_connection(
            Arc::downgrade(node),
            conn.clone(),
            settled,
        ));
        Ok(conn)
    }

    pub(crate) async fn close_gracefully(&self, grace: Duration) {
        for conn in self.conns.iter() {
            conn.conn.close(0u32.into(), b"shutdown");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// Accepts the streams a peer opens on a connection until it closes.
async fn serve_connection(
    node: Weak<NodeInner>,
    conn: quinn::Connection,
    settled: watch::Receiver<bool>,
) {
    let remote = conn.remote_address();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let Some(inner) = node.upgrade() else { return };
                let settled = settled.clone();
                tokio::spawn(serve_stream(inner, conn.clone(), settled, send, recv));
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
    conn: quinn::Connection,
    mut settled: watch::Receiver<bool>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let remote = conn.remote_address();
    let mut magic = [0u8; 4];
    if recv.read_exact(&mut magic).await.is_err() {
        return;
    }
    if magic == BLOB_MAGIC {
        blob::serve(&node, recv, send).await;
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
    serve_control(node, recv, send, TransportKind::Quic, Some(conn)).await;
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
        let conn = quic.connection(&node, addr).await?;
        link.set_carrier(conn.clone());
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("cannot open a stream to {addr}: {e}"))?;
        let hs = handshake_timed(&node, &mut recv, &mut send)
            .await
            .map_err(|e| format!("handshake with quic!{addr} failed: {e}"))?;
        Ok::<_, String>((send, recv, hs))
    };
    let setup = setup.await.map(|(send, recv, hs)| (recv, send, hs));
    run_dialled(node, link, rx, setup, Some(addr)).await;
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
    let conn = quic.connection(node, addr).await?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream to {addr}: {e}"))?;
    send.write_all(&BLOB_MAGIC)
        .await
        .map_err(|e| format!("cannot write to {addr}: {e}"))?;
    Ok((send, recv))
}
