//! Who may send what: the orchestrator's authority checks, in one place.
//!
//! Every live request comes with the [`Peer`] the transport verified (its certificate's role
//! and node name, the address its connection speaks for, and its proof of a node secret). The
//! checks below run before a request touches any state; a refused request is answered
//! [`OrchestratorError::NotPermitted`] (code `forbidden`), counted by the shell, and changes
//! nothing, so it is never journaled. A request without a peer comes from this process (or is
//! a replay of a journaled input, which passed its checks when it was live).
//!
//! | request | allowed from |
//! |---|---|
//! | `RegisterHost` | a host certificate, speaking for the address it registers (its connection's own address), as the node it names (ORC-33) |
//! | `Heartbeat`, `ProcLost` | the host bound to the address the request names (ORC-34) |
//! | `ActionUpdate(s)` | the agent (sender actor) of the proc the attempt is placed on, over its host's connection (ORC-35) |
//! | `GetWorker` | a host with a placed action that runs that worker (ORC-36) |
//! | client requests | client and operator certificates; queue access needs the token, integer ids only over a loopback connection (ORC-15, ORC-37) |
//!
//! # Node identity
//! A host is a *node*: a name bound to one address. Its certificate either names the node
//! (`spiffe://<mesh>/host/<name>`: per-node certificates) or names none (a certificate shared by
//! a fleet). A shared-certificate host proves which node it is with its **node secret**: drawn
//! at its first start and kept in its state dir, sent once in `RegisterHost`, and then proven on
//! every connection by a MAC of the secret over the connection's TLS exporter (the transport's
//! *node proof*), so a peer holding the same certificate but not the secret cannot speak for
//! the node, and a proof seen on one connection is worthless on another. The first
//! registration of a name binds it to its address and secret (journaled with the
//! registration); another secret for that name, or another name for that address, is refused.

use procmesh_protocol::messages::host::HostInfo;
use procmesh_protocol::messages::orchestrator::{OrchestratorError, OrchestratorRequest};
use procmesh_protocol::messages::requests::Audience;
use procmesh_protocol::{ActorId, HostAddr, Transition, WorkerId};
use serde::{Deserialize, Serialize};

use crate::core::Core;

/// The role a peer's certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PeerRole {
    /// Another orchestrator (never a sender of requests here).
    Orchestrator,
    /// A host agent (and, relayed by it, its proc agents).
    Host,
    /// A client.
    Client,
    /// An operator.
    Operator,
}

/// What the transport verified about a request's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The role its certificate names.
    pub role: PeerRole,
    /// The node name its certificate names, if any.
    pub cert_name: Option<String>,
    /// The address its connection speaks for (its handshake's address, bound to its identity
    /// by the transport).
    pub addr: HostAddr,
    /// The node name its handshake claims, if any.
    pub claim: Option<String>,
    /// Its handshake's node proof, if any.
    pub proof: Option<[u8; 32]>,
    /// The connection's channel binding (TLS exporter), if any.
    pub binding: Option<[u8; 32]>,
}

/// A refusal.
fn forbidden(why: impl Into<String>) -> OrchestratorError {
    OrchestratorError::NotPermitted(why.into())
}

/// The node proof of `secret` over a connection's `binding`: BLAKE3 keyed with the secret over
/// `"procmesh node proof v1" ‖ binding` (the transport computes the same).
pub fn node_proof(secret: &[u8; 32], binding: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"procmesh node proof v1");
    h.update(binding);
    *h.finalize().as_bytes()
}

/// Whether `name` is a valid node name: 1 to 63 of `[A-Za-z0-9._-]`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a node secret (64 lowercase hex characters).
pub fn parse_secret(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// How a registration binds its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeGrant {
    /// The node's name.
    pub name: String,
    /// Its secret, when its certificate names no node.
    pub secret: Option<[u8; 32]>,
}

/// Constant-time equality of two 32-byte values.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

impl Peer {
    fn is_client(&self) -> bool {
        matches!(self.role, PeerRole::Client | PeerRole::Operator)
    }

    /// Whether this connection proves it holds `secret` (ORC-33).
    fn proves(&self, secret: &[u8; 32]) -> bool {
        match (self.proof, self.binding) {
            (Some(proof), Some(binding)) => same(&proof, &node_proof(secret, &binding)),
            _ => false,
        }
    }
}

impl Core {
    /// Checks a live request against its peer before it is handled. `Ok` lets it through;
    /// checks that need the request's content in detail (ORC-35 for one transition of a batch)
    /// run where it is handled.
    pub(crate) fn authorize(
        &self,
        message: &OrchestratorRequest,
        from: &ActorId,
        peer: &Peer,
    ) -> Result<(), OrchestratorError> {
        use OrchestratorRequest as R;
        // By audience first (MSG-3): client requests need a client's certificate; what hosts
        // and agents send is checked against the node it speaks for.
        if message.audience() == Audience::Client {
            return if peer.is_client() {
                Ok(())
            } else {
                Err(forbidden(format!(
                    "client requests need a client or operator certificate, not a {:?} one",
                    peer.role
                )))
            };
        }
        match message {
            R::RegisterHost(info) => self.check_register(info, peer).map(|_| ()),
            R::Heartbeat(heartbeat) => self.speaks_for(peer, &heartbeat.addr),
            R::ProcLost { proc_id, .. } => self.speaks_for(peer, proc_id.addr()),
            R::ActionUpdate(t) => self.check_update(t, from, peer),
            // Each transition is checked on its own when the batch is handled.
            R::ActionUpdates(_) => self.speaks_for(peer, from.proc_id().addr()),
            R::GetWorker(id) => self.check_get_worker(id, from, peer),
            // Every other request is a client request (MSG-3), answered above.
            other => Err(forbidden(format!(
                "{} is not a host's request",
                other.kind()
            ))),
        }
    }

    /// ORC-33: which node a registration binds, or why it is refused.
    pub(crate) fn check_register(
        &self,
        info: &HostInfo,
        peer: &Peer,
    ) -> Result<NodeGrant, OrchestratorError> {
        if peer.role != PeerRole::Host {
            return Err(forbidden(format!(
                "only a host certificate may register a host, not a {:?} one",
                peer.role
            )));
        }
        if peer.addr != info.addr {
            return Err(forbidden(format!(
                "a host may register only the address its connection speaks for ({}), not {}",
                peer.addr, info.addr
            )));
        }
        let grant = match &peer.cert_name {
            Some(name) => {
                // The registration names exactly what the certificate proves, so that its
                // replay (which has no certificate) binds the same node, without a secret.
                if info.node != *name {
                    return Err(forbidden(format!(
                        "the certificate names node {name:?}, the registration {:?}",
                        info.node
                    )));
                }
                if info.node_secret.is_some() {
                    return Err(forbidden(format!(
                        "node {name:?} is named by its certificate: its registration carries \
                         no node secret"
                    )));
                }
                NodeGrant {
                    name: name.clone(),
                    secret: None,
                }
            }
            None => {
                if !valid_node_name(&info.node) {
                    return Err(forbidden(format!(
                        "a host with a shared certificate must name its node (1-63 of \
                         [A-Za-z0-9._-]), not {:?}",
                        info.node
                    )));
                }
                let Some(secret) = info.node_secret.as_deref().and_then(parse_secret) else {
                    return Err(forbidden(
                        "a host with a shared certificate must send its node secret \
                         (64 hex characters)",
                    ));
                };
                if peer.claim.as_deref() != Some(info.node.as_str()) || !peer.proves(&secret) {
                    return Err(forbidden(format!(
                        "the connection does not prove node {:?}'s secret",
                        info.node
                    )));
                }
                NodeGrant {
                    name: info.node.clone(),
                    secret: Some(secret),
                }
            }
        };
        if let Some(bound) = self.registry.node_at(&info.addr) {
            if bound != grant.name {
                return Err(forbidden(format!(
                    "address {} is bound to node {bound:?}",
                    info.addr
                )));
            }
        }
        if let Some(known) = self.registry.node_secret(&grant.name) {
            // A node bound by its secret keeps it, unless its own certificate now names it.
            if peer.cert_name.is_none() && !grant.secret.is_some_and(|s| same(&s, &known)) {
                return Err(forbidden(format!(
                    "node {:?} is bound to another secret",
                    grant.name
                )));
            }
        }
        Ok(grant)
    }

    /// ORC-34: whether `peer` is the host bound to `addr`. An unknown host is answered
    /// `UnknownHost` (register first), as before; a host registered before nodes were bound
    /// too, so that it registers again and binds.
    pub(crate) fn speaks_for(&self, peer: &Peer, addr: &HostAddr) -> Result<(), OrchestratorError> {
        if peer.role != PeerRole::Host {
            return Err(forbidden(format!(
                "only a host speaks for a host, not a {:?} certificate",
                peer.role
            )));
        }
        if peer.addr != *addr {
            return Err(forbidden(format!(
                "the connection speaks for {}, not {addr}",
                peer.addr
            )));
        }
        let Some(node) = self.registry.node_at(addr) else {
            return Err(OrchestratorError::UnknownHost(addr.clone()));
        };
        if node.is_empty() {
            return Err(OrchestratorError::UnknownHost(addr.clone()));
        }
        match (&peer.cert_name, self.registry.node_secret(node)) {
            (Some(name), _) if name == node => Ok(()),
            (None, Some(secret)) if peer.claim.as_deref() == Some(node) && peer.proves(&secret) => {
                Ok(())
            }
            _ => Err(forbidden(format!(
                "the connection is not node {node:?}, which {addr} is bound to"
            ))),
        }
    }

    /// ORC-35: a transition comes from the agent of the proc its attempt is placed on.
    pub(crate) fn check_update(
        &self,
        t: &Transition,
        from: &ActorId,
        peer: &Peer,
    ) -> Result<(), OrchestratorError> {
        self.speaks_for(peer, from.proc_id().addr())?;
        self.check_placed(t, from)
    }

    /// The part of ORC-35 that depends on the transition: its attempt is placed on the
    /// sender's proc. (For a batch, [`speaks_for`](Self::speaks_for) is checked once.)
    pub(crate) fn check_placed(
        &self,
        t: &Transition,
        from: &ActorId,
    ) -> Result<(), OrchestratorError> {
        let Some(entry) = self.book.action(t.lsn) else {
            // Unknown: handled (and ignored) as before.
            return Ok(());
        };
        let record = entry.record;
        if record.attempt() != t.attempt {
            // Stale or from the future: the book ignores it.
            return Ok(());
        }
        match record.location() {
            Some(proc) if proc == from.proc_id() => Ok(()),
            Some(proc) => Err(forbidden(format!(
                "attempt {} of action {} is placed on {proc}, not on {}",
                t.attempt,
                t.lsn,
                from.proc_id()
            ))),
            None => Err(forbidden(format!(
                "attempt {} of action {} is not placed",
                t.attempt, t.lsn
            ))),
        }
    }

    /// ORC-36: a host fetches a worker only for an action placed on it.
    fn check_get_worker(
        &self,
        id: &WorkerId,
        from: &ActorId,
        peer: &Peer,
    ) -> Result<(), OrchestratorError> {
        let addr = from.proc_id().addr();
        self.speaks_for(peer, addr)?;
        let needed = self.book.placed_at_host(addr).any(|(attempt, _)| {
            self.records
                .action(attempt.lsn)
                .is_some_and(|def| def.worker == *id)
        });
        if needed {
            Ok(())
        } else {
            Err(forbidden(format!(
                "no action placed on {addr} runs worker {id}"
            )))
        }
    }
}
