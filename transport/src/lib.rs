//! # procmesh-transport
//!
//! How procmesh processes talk: one channel abstraction ([`Link`]: an ordered queue of
//! envelopes to one peer) over three transports — **QUIC** with mutual TLS between machines,
//! **Unix** sockets between a host and its procs, **in-process** queues for tests and `demo` —
//! plus blob streams and the remote-actor layer that makes a kameo actor reachable from anywhere
//! in the mesh under an [`ActorId`](procmesh_protocol::ActorId).
//!
//! It is not the protocol (that is `procmesh-protocol`: ids, envelopes, codec) and it knows no
//! host, proc or orchestrator logic; those crates build on [`Node`] and [`RemoteRef`].
//!
//! ```text
//!   RemoteRef<M>::tell/ask ─▶ Node::route ─▶ Link ─▶ transport task ══ wire ══▶ peer's read loop
//!                                                                               │
//!   kameo actor ◀── Handler<M> ◀── ErasedHandler (decode M) ◀── Node::route ◀────┘
//! ```
//!
//! # Layout
//! - [`tls`] — mesh CA, node and client certificates, identities, rustls configs (`TLS-n`).
//! - [`revoke`] — revoked certificate serials, watched on disk (TLS-6).
//! - [`link`] — the channel abstraction (`LNK-n`).
//! - [`node`] — the mailbox router: routes, delivery, pending asks (`NODE-n`).
//! - [`remote`] — exposing kameo actors, typed [`RemoteRef`].
//! - [`blob`] — the blob store and chunked, verified blob streams (`BLOB-n`).
//! - `stream` — handshake, read loop and batching write loop shared by stream transports (`STR-n`).
//! - `quic`, `unix`, `local` — the three transports (`QUIC-n`).
#![deny(missing_docs)]

pub mod blob;
mod builder;
mod identity;
pub mod link;
mod local;
pub mod node;
pub mod peer;
mod quic;
pub mod remote;
pub mod revoke;
mod stream;
pub mod tls;
mod unix;

pub use blob::{BlobError, BlobPeer, BlobPolicy, BlobReply, BlobRequest, BlobStore};
pub use link::{Link, TransportKind};
pub use local::LocalHub;
pub use node::{
    node_proof, proc_proof, refusal, verify_node_proof, Admission, DialPolicy, LimitSettings,
    Limits, Node, NodeBuilder, NodeConfig, NodeError, PeerCred, PeerInfo,
};
pub use quic::QuicOptions;
pub use remote::{Handler, RemoteRef, Request, SendFailure, WireReply};
pub use revoke::Revocations;
pub use stream::HandshakeError;
pub use tls::{install_crypto_provider, MeshCa, PeerIdentity, Role, TlsError, TlsIdentity};

/// Now, by this machine's wall clock, as the protocol's [`Timestamp`]: the one clock the
/// runtime crates stamp transitions and heartbeats with (`procmesh_protocol` itself has none).
///
/// [`Timestamp`]: procmesh_protocol::Timestamp
pub fn now() -> procmesh_protocol::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    procmesh_protocol::Timestamp::from_millis(ms)
}
