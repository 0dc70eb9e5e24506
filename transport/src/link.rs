//! [`Link`]: the one channel abstraction. An ordered, unbounded queue of envelopes to one peer,
//! drained by a transport task (a QUIC stream, a Unix socket, or an in-process forwarder).
//!
//! A link is created *before* its connection exists: sends queue up while the transport task
//! dials and shakes hands, so routing never waits on the network and ordering is kept from the
//! first message (LNK-1). When the transport fails, the task bounces everything queued (STR-2).
//!
//! # Invariants
//! - **LNK-1** Envelopes sent on one link leave in the order they were sent.
//! - **LNK-2** After [`Link::close`], [`Link::send`] refuses (handing the envelope back) and the
//!   node removes the link from its route table, so the next message dials afresh.
//! - **LNK-3** Closing flushes: what was queued before [`Link::close`] is still written, and
//!   [`Link::flushed`] resolves only once it was (on QUIC: acknowledged by the peer) or bounced.
//! - **LNK-4** A peer keeps one link towards us at a time: a link it opens to us (an accepted
//!   link) replaces the route of an older accepted one, and of any link whose connection is
//!   gone, and the older link is closed. A live link *we* dialled is kept (when both sides dial
//!   at once, each keeps sending on its own link and both are served; NODE-1 holds per link).
//! - **LNK-5** When a link's connection is lost (reset by a restarted peer, replaced, timed
//!   out), the asks written on it that are still unanswered fail at once as undeliverable
//!   instead of waiting for their timeout: the peer that would have answered is gone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use procmesh_protocol::Envelope;
use tokio::sync::{mpsc, watch, Notify};

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Which transport carries a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// QUIC with mutual TLS.
    Quic,
    /// A Unix domain socket.
    Unix,
    /// An in-process queue.
    Local,
}

impl TransportKind {
    /// The transport that reaches `addr`.
    pub fn of(addr: &procmesh_protocol::HostAddr) -> TransportKind {
        match addr {
            procmesh_protocol::HostAddr::Quic(_) => TransportKind::Quic,
            procmesh_protocol::HostAddr::Unix(_) => TransportKind::Unix,
            procmesh_protocol::HostAddr::Local(_) => TransportKind::Local,
        }
    }
}

/// An ordered channel of envelopes to one peer. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    id: u64,
    peer: String,
    kind: TransportKind,
    tx: mpsc::UnboundedSender<Envelope>,
    closed: AtomicBool,
    on_close: Notify,
    /// Set once the transport task is done: everything queued was written (and, where the
    /// transport can tell, acknowledged) or bounced.
    flushed: watch::Sender<bool>,
    /// Whether the peer opened this link (an accepted control stream), not we (LNK-4).
    accepted: AtomicBool,
    /// The QUIC connection carrying the link, once known.
    carrier: OnceLock<quinn::Connection>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("kind", &self.shared.kind)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Link {
    /// A new open link to `peer` and the receiving end its transport task drains.
    pub(crate) fn new(
        peer: String,
        kind: TransportKind,
    ) -> (Link, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            peer,
            kind,
            tx,
            closed: AtomicBool::new(false),
            on_close: Notify::new(),
            flushed: watch::channel(false).0,
            accepted: AtomicBool::new(false),
            carrier: OnceLock::new(),
        });
        (Link { shared }, rx)
    }

    /// Queues an envelope (LNK-1); a closed link hands it back (LNK-2).
    #[allow(clippy::result_large_err)]
    pub fn send(&self, env: Envelope) -> Result<(), Envelope> {
        if self.is_closed() {
            return Err(env);
        }
        self.shared.tx.send(env).map_err(|e| e.0)
    }

    /// Closes the link: the transport task stops after bouncing what is queued (LNK-2).
    pub fn close(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.on_close.notify_waiters();
            self.shared.on_close.notify_one();
        }
    }

    /// Whether the link was closed or its transport task has gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.shared.tx.is_closed()
    }

    /// Resolves once the link is closed.
    pub async fn closed(&self) {
        while !self.is_closed() {
            let notified = self.shared.on_close.notified();
            if self.is_closed() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shared.tx.closed() => {}
            }
        }
    }

    /// Marks the transport task done (LNK-3).
    pub(crate) fn mark_flushed(&self) {
        self.shared.flushed.send_replace(true);
    }

    /// Resolves once the link's transport task is done: after [`close`](Self::close), every
    /// envelope queued before it has been written and acknowledged, or bounced (LNK-3).
    pub async fn flushed(&self) {
        let mut rx = self.shared.flushed.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Marks the link as opened by the peer (LNK-4).
    pub(crate) fn mark_accepted(&self) {
        self.shared.accepted.store(true, Ordering::Release);
    }

    /// Whether the peer opened this link.
    pub(crate) fn is_accepted(&self) -> bool {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Records the QUIC connection that carries the link.
    pub(crate) fn set_carrier(&self, conn: quinn::Connection) {
        let _ = self.shared.carrier.set(conn);
    }

    /// Why the QUIC connection carrying the link closed, if it did (LNK-5).
    pub(crate) fn carrier_lost(&self) -> Option<quinn::ConnectionError> {
        self.shared.carrier.get().and_then(|c| c.close_reason())
    }

    /// The stable id of the QUIC connection carrying the link, if any.
    pub(crate) fn carrier_id(&self) -> Option<usize> {
        self.shared.carrier.get().map(|c| c.stable_id())
    }

    /// A process-unique id of this link.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Who the link leads to, for messages and logs.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The transport carrying it.
    pub fn kind(&self) -> TransportKind {
        self.shared.kind
    }

    /// Whether two handles are the same link.
    pub fn same(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}
