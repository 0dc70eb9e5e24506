//! A byte stream ↔ frames: the handshake, the reader loop and the batching writer loop that
//! every stream transport (a QUIC bi-stream, a Unix socket, an in-memory duplex) shares.
//!
//! ```text
//!  Link::send ─▶ unbounded queue ─▶ write_loop: encode a batch (≤ 64 KiB) ─▶ one write_all
//!  read_loop: read_buf ─▶ split frames ─▶ decode Envelope ─▶ Node::route (in arrival order)
//! ```
//!
//! # Invariants
//! - **STR-1** Frames are written in the order they were queued and read in the order they were
//!   written: per sender→receiver ordering holds over one stream.
//! - **STR-2** An envelope that could not be written (encode failure, broken stream, stream closed
//!   with messages still queued) is bounced to its sender, never dropped silently.
//! - **STR-3** A corrupt frame body is logged and skipped (frames are length-delimited, so the
//!   stream stays in sync); an oversized frame closes the stream before anything is allocated.
//! - **STR-4** The accepting side reads the dialler's handshake before answering. A peer of
//!   another major version gets a refusal (a handshake whose hello's `refused` names both
//!   versions) before the stream closes, and so does a link refused by admission or address
//!   binding (its reason); the dialler's error carries that reason.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use procmesh_protocol::codec::{decode_body, CodecError, FrameCodec, Hello, Version};
use procmesh_protocol::Envelope;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::link::{Link, TransportKind};
use crate::node::{refusal, NodeInner, PeerCred, PeerInfo};
use crate::tls::PeerIdentity;

/// What the QUIC connection under a stream says about its peer.
#[derive(Clone)]
pub(crate) struct Carrier {
    pub conn: quinn::Connection,
    pub identity: Arc<PeerIdentity>,
    pub binding: Option<[u8; 32]>,
}

/// How long a closing link waits for its peer to acknowledge what it wrote.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A writer that can tell when what it wrote has reached the peer (LNK-3).
pub(crate) trait Delivered: AsyncWrite + Unpin {
    /// Resolves once everything written (and the end of the stream) was acknowledged.
    fn delivered(&self) -> crate::remote::BoxFuture<'static, ()>;
}

impl Delivered for quinn::SendStream {
    fn delivered(&self) -> crate::remote::BoxFuture<'static, ()> {
        // After `finish` (our shutdown), `stopped` resolves when the peer acknowledged it all.
        let stopped = self.stopped();
        Box::pin(async move {
            let _ = stopped.await;
        })
    }
}

impl Delivered for tokio::net::unix::OwnedWriteHalf {
    fn delivered(&self) -> crate::remote::BoxFuture<'static, ()> {
        // Written into the kernel's socket buffer is delivered: the peer reads it even after
        // we close.
        Box::pin(async {})
    }
}

/// Bytes encoded before a batch is written out.
const BATCH_BYTES: usize = 64 * 1024;
/// Initial read buffer.
const READ_BUF: usize = 64 * 1024;

/// Why a stream's handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's handshake was refused (bad magic, incompatible version, corrupt hello).
    #[error("handshake refused: {0}")]
    Codec(#[from] CodecError),
    /// The stream failed or closed during the handshake.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer answered with a refusal (STR-4).
    #[error("refused by the peer: {0}")]
    Refused(String),
}

/// What a completed handshake yields: the peer's hello and version, and bytes read past it.
pub(crate) struct Handshaken {
    pub hello: Hello,
    pub version: Version,
    pub leftover: BytesMut,
}

/// Sends our hello, then reads the peer's (both sides write first, so neither waits on the
/// other). WIRE-4 is checked by the codec before the peer's hello is parsed.
pub(crate) async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    codec: FrameCodec,
    ours: &Hello,
) -> Result<Handshaken, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write_handshake(writer, codec, ours).await?;
    let hs = read_handshake(reader, codec).await?;
    match &hs.hello.refused {
        Some(reason) => Err(HandshakeError::Refused(reason.clone())),
        None => Ok(hs),
    }
}

async fn write_handshake<W: AsyncWrite + Unpin>(
    writer: &mut W,
    codec: FrameCodec,
    hello: &Hello,
) -> Result<(), HandshakeError> {
    let mut out = Vec::new();
    codec.encode_handshake(hello, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads a peer's handshake (WIRE-4 is checked by the codec before its hello is parsed).
async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    codec: FrameCodec,
) -> Result<Handshaken, HandshakeError> {
    let mut buf = BytesMut::with_capacity(READ_BUF);
    loop {
        match codec.decode_handshake(&buf) {
            Ok((hello, version, used)) => {
                buf.advance(used);
                return Ok(Handshaken {
                    hello,
                    version,
                    leftover: buf,
                });
            }
            Err(CodecError::Incomplete { needed }) => {
                buf.reserve(needed);
                if reader.read_buf(&mut buf).await? == 0 {
                    return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads envelopes until the stream ends, routing each through the node in arrival order
/// (STR-1). Returns why it stopped.
pub(crate) async fn read_loop<R>(
    mut reader: R,
    mut buf: BytesMut,
    codec: FrameCodec,
    node: Arc<NodeInner>,
    peer: Arc<PeerInfo>,
) -> Result<(), CodecError>
where
    R: AsyncRead + Unpin,
{
    loop {
        loop {
            let decoded = match codec.split_frame(&buf) {
                Ok((body, used)) => (decode_body::<Envelope>(body), used),
                Err(CodecError::Incomplete { needed }) => {
                    buf.reserve(needed);
                    break;
                }
                // STR-3: oversized (or otherwise unframeable) input ends the stream.
                Err(e) => return Err(e),
            };
            match decoded {
                (Ok(env), used) => {
                    buf.advance(used);
                    node.route(env, Some(&peer)).await;
                }
                (Err(error), used) => {
                    buf.advance(used);
                    // STR-3: the sender is unknown, so nobody can be told; log and go on.
                    tracing::warn!(%error, peer = %peer.hello.addr, "dropped a corrupt frame");
                }
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, peer = %peer.hello.addr, "stream read ended");
                return Ok(());
            }
        }
    }
}

/// Writes queued envelopes in order (STR-1), encoding up to [`BATCH_BYTES`] per write. When the
/// stream breaks, the link closes or the queue ends, whatever was not written is bounced (STR-2).
pub(crate) async fn write_loop<W>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    codec: FrameCodec,
    node: Arc<NodeInner>,
    link: Link,
) where
    W: Delivered,
{
    let peer = link.peer().to_owned();
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    let mut batch: Vec<Envelope> = Vec::new();
    let mut asked = AsksInFlight::default();
    let failure = loop {
        let first = tokio::select! {
            biased;
            env = rx.recv() => env,
            _ = link.closed() => None,
        };
        let Some(first) = first else {
            break None;
        };
        let mut next = Some(first);
        while let Some(env) = next.take() {
            match codec.encode(&env, &mut buf) {
                Ok(()) => batch.push(env),
                Err(e) => {
                    node.bounce(env, format!("cannot send to {peer}: {e}"))
                        .await
                }
            }
            if buf.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if buf.is_empty() {
            continue;
        }
        let written = match writer.write_all(&buf).await {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            break Some(format!(
                "link to {peer} broke, message may not have arrived: {e}"
            ));
        }
        buf.clear();
        asked.record(&node, batch.drain(..));
    };
    let broke = failure.is_some();
    let reason = failure.unwrap_or_else(|| format!("link to {peer} closed"));
    link.close();
    node.forget(&link);
    rx.close();
    // STR-2: the batch in flight and everything still queued go back to their senders.
    for env in batch.drain(..) {
        node.bounce(env, reason.clone()).await;
    }
    while let Ok(env) = rx.try_recv() {
        node.bounce(env, reason.clone()).await;
    }
    // LNK-5: a lost connection answers none of the asks written on it.
    let lost = link.carrier_lost().map(|e| e.to_string());
    if let Some(lost) = lost.or(broke.then_some(reason)) {
        asked
            .fail(
                &node,
                format!("connection to {peer} lost before the reply came: {lost}"),
            )
            .await;
    }
    // LNK-3: finish the stream and wait (bounded) for the peer to have it all.
    if writer.shutdown().await.is_ok() {
        let _ = tokio::time::timeout(DELIVERY_WAIT, writer.delivered()).await;
    }
    link.mark_flushed();
}

/// Asks written on one link and perhaps still unanswered (LNK-5): just enough of each to
/// bounce it. Our own asks are pruned as their replies come (from the front, where the oldest
/// are, and by a sweep whose threshold doubles, so each record is O(1) amortised); asks
/// forwarded for others (a host's procs) cannot be checked here, so the oldest are forgotten
/// past [`MAX_TRACKED`] and a bounce of one already answered is dropped by its asker as a late
/// reply (NODE-4).
#[derive(Default)]
struct AsksInFlight {
    own: std::collections::VecDeque<Envelope>,
    forwarded: std::collections::VecDeque<Envelope>,
    /// `own`'s length at which the next full sweep runs.
    next_sweep: usize,
}

/// Most asks a link remembers for LNK-5 (of each kind: our own, and forwarded ones).
const MAX_TRACKED: usize = 4096;

impl AsksInFlight {
    fn record(&mut self, node: &NodeInner, written: impl Iterator<Item = Envelope>) {
        for env in written {
            if let procmesh_protocol::Body::Ask { id, .. } = env.body {
                let mine = *env.sender.proc_id() == node.proc_id;
                let kept = Envelope {
                    body: procmesh_protocol::Body::Ask {
                        id,
                        message: Vec::new(),
                    },
                    trace: None,
                    ..env
                };
                if mine {
                    self.own.push_back(kept);
                } else {
                    self.forwarded.push_back(kept);
                }
            }
        }
        while self
            .own
            .front()
            .is_some_and(|env| Self::answered(node, env))
        {
            self.own.pop_front();
        }
        if self.own.len() > self.next_sweep.max(MAX_TRACKED / 2) {
            self.own.retain(|env| !Self::answered(node, env));
            self.next_sweep = self.own.len() * 2;
        }
        for asks in [&mut self.own, &mut self.forwarded] {
            while asks.len() > MAX_TRACKED {
                asks.pop_front();
            }
        }
    }

    /// Whether our own ask `env`'s reply already came (or it timed out).
    fn answered(node: &NodeInner, env: &Envelope) -> bool {
        match env.body {
            procmesh_protocol::Body::Ask { id, .. } => !node.pending.contains_key(&id),
            _ => true,
        }
    }

    async fn fail(self, node: &Arc<NodeInner>, reason: String) {
        for env in self.own {
            if !Self::answered(node, &env) {
                node.bounce(env, reason.clone()).await;
            }
        }
        for env in self.forwarded {
            node.bounce(env, reason.clone()).await;
        }
    }
}

/// Fails a link that never came up: everything queued is bounced with `reason` (STR-2).
pub(crate) async fn fail_link(
    node: Arc<NodeInner>,
    link: Link,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    reason: String,
) {
    tracing::debug!(peer = link.peer(), %reason, "link failed");
    link.close();
    node.forget(&link);
    rx.close();
    while let Ok(env) = rx.try_recv() {
        node.bounce(env, reason.clone()).await;
    }
    link.mark_flushed();
}

/// Runs an established link: a task reading inbound envelopes, and this task writing outbound
/// ones, until either side ends; then the link is closed and forgotten (LNK-2).
pub(crate) async fn run_link<R, W>(
    node: Arc<NodeInner>,
    link: Link,
    rx: mpsc::UnboundedReceiver<Envelope>,
    reader: R,
    writer: W,
    leftover: BytesMut,
    peer: Arc<PeerInfo>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: Delivered,
{
    let codec = node.codec;
    let read_node = node.clone();
    let read_link = link.clone();
    tokio::spawn(async move {
        let peer_addr = peer.hello.addr.clone();
        let ended = peer.clone();
        if let Err(error) = read_loop(reader, leftover, codec, read_node.clone(), peer).await {
            tracing::warn!(%error, peer = %peer_addr, "closing link after a bad frame");
        }
        read_link.close();
        read_node.forget(&read_link);
        read_node.release(&ended);
    });
    write_loop(writer, rx, codec, node, link).await;
}

/// Our side of a handshake on a link with this binding (QUIC) or none.
pub(crate) fn our_hello(node: &NodeInner, binding: Option<&[u8; 32]>) -> Hello {
    Hello {
        addr: node.proc_id.addr().clone(),
        name: node.proc_id.name().to_owned(),
        node: node.claim_for(binding),
        refused: None,
    }
}

/// Shakes hands as the dialler within the node's handshake timeout.
pub(crate) async fn handshake_timed<R, W>(
    node: &NodeInner,
    reader: &mut R,
    writer: &mut W,
    binding: Option<&[u8; 32]>,
) -> Result<Handshaken, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = our_hello(node, binding);
    match tokio::time::timeout(
        node.config.handshake_timeout,
        handshake(reader, writer, node.codec, &hello),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Writes a refusal (STR-4) and closes the stream.
async fn refuse_stream<W: Delivered>(node: &NodeInner, writer: &mut W, reason: String) {
    let hello = Hello {
        refused: Some(reason),
        node: None,
        ..our_hello(node, None)
    };
    let _ = tokio::time::timeout(node.config.handshake_timeout, async {
        let _ = write_handshake(writer, node.codec, &hello).await;
        if writer.shutdown().await.is_ok() {
            writer.delivered().await;
        }
    })
    .await;
}

/// Serves an accepted control stream whose magic (already read) was `PMSH`: read the peer's
/// handshake, check it (WIRE-4, NODE-8, NODE-7, STR-4), answer, adopt the link for replies and
/// later messages (NODE-3), then run it.
pub(crate) async fn serve_control<R, W>(
    node: Arc<NodeInner>,
    reader: R,
    mut writer: W,
    transport: TransportKind,
    carrier: Option<Carrier>,
    cred: Option<PeerCred>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: Delivered,
{
    let remote = carrier.as_ref().map(|c| c.conn.remote_address());
    let mut reader = AsyncReadExt::chain(
        std::io::Cursor::new(procmesh_protocol::codec::MAGIC),
        reader,
    );
    let read = tokio::time::timeout(
        node.config.handshake_timeout,
        read_handshake(&mut reader, node.codec),
    )
    .await
    .unwrap_or(Err(HandshakeError::Timeout));
    let hs = match read {
        Ok(hs) => hs,
        Err(HandshakeError::Codec(CodecError::IncompatibleVersion { ours, theirs })) => {
            node.refuse(refusal::VERSION);
            let reason = format!("the peer speaks {theirs}, we speak {ours}");
            tracing::warn!(%reason, ?transport, ?remote, "handshake refused");
            refuse_stream(&node, &mut writer, reason).await;
            return;
        }
        Err(error) => {
            node.refuse(refusal::HANDSHAKE);
            tracing::warn!(%error, ?transport, ?remote, "handshake refused");
            let _ = writer.shutdown().await;
            return;
        }
    };
    let mut info = PeerInfo::new(transport, hs.hello);
    info.version = hs.version;
    info.remote = remote;
    info.identity = carrier.as_ref().map(|c| c.identity.clone());
    info.binding = carrier.as_ref().and_then(|c| c.binding);
    info.cred = cred;
    let peer = Arc::new(info);
    if let Err((code, reason)) = node.admit_accepted(&peer) {
        node.refuse(code);
        tracing::warn!(
            code,
            %reason,
            peer = %peer.hello.addr,
            identity = ?peer.identity.as_deref().map(PeerIdentity::uri),
            ?remote,
            "link refused"
        );
        refuse_stream(&node, &mut writer, reason).await;
        return;
    }
    let answer = tokio::time::timeout(
        node.config.handshake_timeout,
        write_handshake(
            &mut writer,
            node.codec,
            &our_hello(&node, peer.binding.as_ref()),
        ),
    )
    .await
    .unwrap_or(Err(HandshakeError::Timeout));
    if let Err(error) = answer {
        tracing::debug!(%error, ?transport, ?remote, "handshake answer failed");
        return;
    }
    let (link, rx) = Link::new(peer.hello.addr.to_string(), transport);
    if let Some(c) = carrier {
        link.set_carrier(c.conn);
    }
    node.adopt(&peer, &link);
    run_link(node, link, rx, reader, writer, hs.leftover, peer).await;
}

/// Runs a dialled link once its transport is set up (`Ok`: the stream halves and the completed
/// handshake), or fails it with the setup error (STR-2).
pub(crate) async fn run_dialled<R, W>(
    node: Arc<NodeInner>,
    link: Link,
    rx: mpsc::UnboundedReceiver<Envelope>,
    setup: Result<(R, W, Handshaken), String>,
    carrier: Option<Carrier>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: Delivered,
{
    match setup {
        Ok((reader, writer, hs)) => {
            let mut info = PeerInfo::new(link.kind(), hs.hello);
            info.version = hs.version;
            info.remote = carrier.as_ref().map(|c| c.conn.remote_address());
            info.identity = carrier.as_ref().map(|c| c.identity.clone());
            info.binding = carrier.as_ref().and_then(|c| c.binding);
            let peer = Arc::new(info);
            // NODE-8: dialled links pass admission too.
            if let Err((code, reason)) = node.admit(&peer) {
                node.refuse(code);
                tracing::warn!(code, %reason, peer = %peer.hello.addr, "dialled link refused");
                let reason = format!("link to {} refused: {reason}", link.peer());
                return fail_link(node, link, rx, reason).await;
            }
            run_link(node, link, rx, reader, writer, hs.leftover, peer).await;
        }
        Err(reason) => fail_link(node, link, rx, reason).await,
    }
}
