//! QUIC transport: one UDP endpoint per node that both listens and dials, mutual TLS only.
//!
//! ```text
//!  node A ══════════ one QUIC connection per peer pair (reused) ══════════ node B
//!     bi-stream #0  "PMSH" handshake ⇄ handshake, then envelope frames both ways (control)
//!     bi-stream #n  "PMBL" blob push / fetch, one stream per blob, raw chunks after a header
//! ```
//!
//! # Invariants
//! - **QUIC-1** At most one connection is dialled per peer address at a time, and a live one
//!   (dialled or accepted) is reused for control and blob streams alike.
//! - **QUIC-2** Idle timeout and keep-alive are set on both ends (the same transport config
//!   serves the server and client roles); stream limits are kept moderate.
//! - **QUIC-3** Every accepted stream is classified by its first four bytes; anything other than
//!   a control or blob stream is reset.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use procmesh_protocol::codec::MAGIC;
use procmesh_protocol::Envelope;
use tokio::sync::mpsc;

use crate::blob::{self, BLOB_MAGIC};
use crate::link::{Link, TransportKind};
use crate::node::{NodeError, NodeInner};
use crate::stream::{handshake_timed, run_dialled, serve_control};
use crate::tls::{quic_configs, TlsIdentity, NODE_SERVER_NAME};

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

pub(crate) struct Quic {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    conns: DashMap<SocketAddr, quinn::Connection>,
    dialing: DashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
    connect_timeout: Duration,
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
        let mut endpoint =
            quinn::Endpoint::server(server, bind).map_err(|source| NodeError::Bind {
                addr: bind.to_string(),
                source,
            })?;
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
                            let Some(inner) = node.upgrade() else { return };
                            if let Some(quic) = &inner.quic {
                                quic.conns.entry(remote).or_insert_with(|| conn.clone());
                            }
                            drop(inner);
                            serve_connection(node, conn).await;
                        }
                        // TLS-1: no certificate, or one from another CA, ends here.
                        Err(error) => tracing::info!(%error, %remote, "refused QUIC connection"),
                    }
                });
            }
        });
    }

    /// A live connection to `addr`, dialled if there is none (QUIC-1).
    pub(crate) async fn connection(
        &self,
        node: &Arc<NodeInner>,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, String> {
        let live = |c: &quinn::Connection| c.close_reason().is_none();
        if let Some(conn) = self.conns.get(&addr).filter(|c| live(c)) {
            return Ok(conn.clone());
        }
        let lock = self.dialing.entry(addr).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(conn) = self.conns.get(&addr).filter(|c| live(c)) {
            return Ok(conn.clone());
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
        self.conns.insert(addr, conn.clone());
        // The peer may open streams on this connection too (its replies reuse it, QUIC-1).
        tokio::spawn(serve_connection(Arc::downgrade(node), conn.clone()));
        Ok(conn)
    }

    pub(crate) async fn close_gracefully(&self, grace: Duration) {
        for conn in self.conns.iter() {
            conn.close(0u32.into(), b"shutdown");
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

/// Accepts the streams a peer opens on a connection until it closes.
async fn serve_connection(node: Weak<NodeInner>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let Some(inner) = node.upgrade() else { return };
                tokio::spawn(serve_stream(inner, remote, send, recv));
            }
            Err(error) => {
                tracing::debug!(%error, %remote, "QUIC connection ended");
                if let Some(inner) = node.upgrade() {
                    if let Some(quic) = &inner.quic {
                        quic.conns
                            .remove_if(&remote, |_, c| c.stable_id() == conn.stable_id());
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
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut magic = [0u8; 4];
    if recv.read_exact(&mut magic).await.is_err() {
        return;
    }
    if magic == BLOB_MAGIC {
        blob::serve(&node, recv, send).await;
        return;
    }
    if magic != MAGIC {
        tracing::warn!(%remote, ?magic, "resetting a stream that is not procmesh");
        let _ = send.reset(1u32.into());
        return;
    }
    serve_control(node, recv, send, TransportKind::Quic, Some(remote)).await;
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
