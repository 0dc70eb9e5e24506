//! Who is on the other end of a link, and what the node lets them do: verified peer info,
//! node proofs, admission, the dial policy, limits and refusal codes (NODE-5..11). The
//! checks themselves are methods of the node, in this file so they read as one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use procmesh_protocol::codec::{Hello, NodeProof};
use procmesh_protocol::{Envelope, HostAddr};

use crate::link::TransportKind;
use crate::node::NodeInner;
use crate::tls::{PeerIdentity, Role};

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
    pub(crate) asks: Arc<AtomicUsize>,
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

impl IdentityKey {
    /// Whether this identity holds an address only while its link lives: clients and
    /// operators, which are never nodes (NODE-7). Orchestrators and hosts, and peers without a
    /// certificate (Unix and in-process nodes), keep theirs.
    pub(crate) fn leases(&self) -> bool {
        matches!(self.role, Some(Role::Client | Role::Operator))
    }
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

/// How a link's peer relates to us (NODE-5, NODE-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerClass {
    /// One of our procs (a backend peer claiming our address; we are its host).
    OurProc,
    /// Our host (a backend peer claiming our address; we are a proc with a default route).
    OurHost,
    /// Anyone else.
    Remote,
}

impl NodeInner {
    /// Counts a refusal (NODE-11).
    pub(crate) fn refuse(&self, code: &'static str) {
        *self.refusals.lock().expect("lock").entry(code).or_insert(0) += 1;
    }

    /// Which kind of peer a link leads to, for the sender and relay rules (NODE-5, NODE-6).
    pub(crate) fn peer_class(&self, peer: &PeerInfo) -> PeerClass {
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
    pub(crate) fn check_inbound(
        &self,
        peer: &PeerInfo,
        env: &Envelope,
    ) -> Result<(), (&'static str, String)> {
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
                dashmap::Entry::Occupied(mut e) if *e.get() != key => {
                    if !e.get().leases() || key.leases() {
                        return Err((
                            refusal::ADDRESS_BOUND,
                            format!(
                                "{} is bound to another identity ({}), not {key}",
                                peer.hello.addr,
                                e.get()
                            ),
                        ));
                    }
                    // A node takes its address over from a client or operator that claimed it
                    // first; adopting the node's link closes theirs.
                    tracing::warn!(
                        addr = %peer.hello.addr,
                        was = %e.get(),
                        now = %key,
                        "a node takes over an address a client claimed"
                    );
                    e.insert(key);
                }
                dashmap::Entry::Occupied(_) => {}
                dashmap::Entry::Vacant(e) => {
                    e.insert(key);
                }
            }
        }
        Ok(())
    }

    /// NODE-7: after a link of `peer` ended, a client's or operator's claim of its address
    /// ends with it, unless a link to that address lives on (its own newer one).
    pub(crate) fn release(&self, peer: &PeerInfo) {
        let key = peer.identity_key();
        if !key.leases() {
            return;
        }
        let addr = &peer.hello.addr;
        self.bound.remove_if(addr, |_, held| {
            *held == key && !self.peers.contains_key(addr)
        });
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
}
