//! The orchestrator's gate: what its transport lets in before the actor sees anything, and the
//! state it needs for that, kept outside the actor so that connections and blob streams are
//! checked without waiting on it.
//!
//! ```text
//!  QUIC link up ── Admission::admit ── a host claiming a bound address must be that node (ORC-38)
//!  request ─────── peer_of(PeerInfo) → core Peer ── Core::authorize (ORC-33..37)
//!  blob stream ─── BlobPolicy::allow ── push: clients and operators; fetch: a host with a
//!                                       placed action needing the blob, or a ticket (ORC-39)
//!  results ─────── tickets: one DownloadTicket per output, under the key of the host holding it
//! ```
//!
//! # Invariants
//! - **ORC-38** A connection that claims the address of a bound node is admitted only as that
//!   node: a host certificate naming it, or a host certificate whose handshake claims it with a
//!   valid proof of the node's secret (never a client or operator certificate). Any other is
//!   closed before its first message is routed, so it can neither receive that node's
//!   dispatches nor speak for it. The bindings are the journal's: the gate has them before
//!   the orchestrator accepts its first connection. The orchestrator dials only addresses of
//!   registered hosts (never one a peer merely named).
//! - **ORC-39** The blob store serves a fetch to a host only for blobs of actions dispatched to
//!   that host (the worker's files and the inputs), to an operator, or to anyone with a valid
//!   download ticket of this orchestrator; it takes pushes only from clients and operators.
//! - **ORC-40** Every output of a listed result carries a download ticket for the host that
//!   holds it, valid for [`TICKET_TTL`]; the key of each host is derived from this
//!   orchestrator's ticket key and the host's address, and handed to the host at registration.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use procmesh_orchestrator_core::{Peer, PeerRole};
use procmesh_protocol::messages::orchestrator::ActionResult;
use procmesh_protocol::{BlobHash, DownloadTicket, HostAddr};
use procmesh_transport::{
    Admission, BlobPeer, BlobPolicy, BlobRequest, PeerInfo, Role, TransportKind,
};

/// How long a download ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(3600);
/// How long a host may fetch the blobs of an action dispatched to it.
const GRANT_TTL: Duration = Duration::from_secs(6 * 3600);
/// Grants kept per host before the expired ones are pruned.
const GRANT_PRUNE_AT: usize = 100_000;

/// A bound node, as the gate checks it.
#[derive(Debug, Clone)]
struct Bound {
    name: String,
    secret: Option<[u8; 32]>,
}

/// The gate's shared state.
pub(crate) struct Gate {
    /// Bound nodes by address (ORC-38), refreshed after each registration.
    bound: RwLock<HashMap<HostAddr, Bound>>,
    /// Blobs each host may fetch, until when (ORC-39).
    grants: Mutex<HashMap<HostAddr, HashMap<BlobHash, Instant>>>,
    /// Refused requests and connections by kind.
    refused: Mutex<BTreeMap<String, u64>>,
    /// The key every host's ticket key is derived from.
    ticket_master: [u8; 32],
    /// This orchestrator's own address (tickets for its own store).
    me: RwLock<Option<HostAddr>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate whose ticket keys derive from `ticket_master`.
    pub fn new(ticket_master: [u8; 32]) -> Arc<Gate> {
        Arc::new(Gate {
            bound: RwLock::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            ticket_master,
            me: RwLock::new(None),
        })
    }

    /// Sets the orchestrator's own address.
    pub fn set_me(&self, addr: HostAddr) {
        *self.me.write().expect("lock") = Some(addr);
    }

    /// Replaces the bound nodes (after a registration or a recovery).
    pub fn rebind<'a>(
        &self,
        bindings: impl Iterator<Item = (&'a str, &'a HostAddr, Option<&'a [u8; 32]>)>,
    ) {
        let map = bindings
            .map(|(name, addr, secret)| {
                (
                    addr.clone(),
                    Bound {
                        name: name.to_owned(),
                        secret: secret.copied(),
                    },
                )
            })
            .collect();
        *self.bound.write().expect("lock") = map;
    }

    /// Counts one refusal of `what`.
    pub fn refuse(&self, what: &str) {
        *self
            .refused
            .lock()
            .expect("lock")
            .entry(what.to_owned())
            .or_default() += 1;
    }

    /// Refusals so far, by kind.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused.lock().expect("lock").clone()
    }

    /// Lets the host at `addr` fetch `blobs` (an action was dispatched to it).
    pub fn grant(&self, addr: &HostAddr, blobs: impl IntoIterator<Item = BlobHash>) {
        let until = Instant::now() + GRANT_TTL;
        let mut grants = self.grants.lock().expect("lock");
        let host = grants.entry(addr.clone()).or_default();
        if host.len() > GRANT_PRUNE_AT {
            let now = Instant::now();
            host.retain(|_, t| *t > now);
        }
        for blob in blobs {
            host.insert(blob, until);
        }
    }

    /// Whether the host behind a blob stream may fetch `blob` (ORC-39): a host whose
    /// certificate names its node, for that node's grants; a host with a shared certificate,
    /// for the grants of the host whose address its connection comes from (a fleet behind
    /// address translation should use per-node certificates).
    fn granted(&self, peer: &BlobPeer, name: Option<&str>, blob: &BlobHash) -> bool {
        let addr = match name {
            Some(name) => {
                let bound = self.bound.read().expect("lock");
                match bound.iter().find(|(_, b)| b.name == name) {
                    Some((addr, _)) => addr.clone(),
                    None => return false,
                }
            }
            None => match peer.remote {
                Some(remote) => HostAddr::quic(remote),
                None => return false,
            },
        };
        let grants = self.grants.lock().expect("lock");
        grants
            .get(&addr)
            .and_then(|h| h.get(blob))
            .is_some_and(|t| *t > Instant::now())
    }

    /// The key the host at `addr` verifies download tickets with (ORC-40).
    pub fn ticket_key(&self, addr: &HostAddr) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.ticket_master);
        h.update(b"procmesh host ticket key v1");
        h.update(addr.to_string().as_bytes());
        *h.finalize().as_bytes()
    }

    /// Adds a download ticket for every output of `results` (ORC-40).
    pub fn add_tickets(&self, results: &mut [ActionResult]) {
        let expires = unix_ms() + TICKET_TTL.as_millis() as u64;
        for result in results {
            let Some(holder) = result.record.location().map(|p| p.addr().clone()) else {
                continue;
            };
            let key = self.ticket_key(&holder);
            result.tickets = result
                .outputs
                .iter()
                .map(|o| DownloadTicket::issue(&key, o.hash, expires))
                .collect();
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn role_of(role: Role) -> PeerRole {
    match role {
        Role::Orchestrator => PeerRole::Orchestrator,
        Role::Host => PeerRole::Host,
        Role::Client => PeerRole::Client,
        Role::Operator => PeerRole::Operator,
    }
}

/// What the core is told about a request's connection: `Ok(None)` for this process and
/// backend (Unix, in-process) peers, which are the orchestrator's own; `Err` for a QUIC peer
/// without a verified identity (which the transport does not let through).
pub(crate) fn peer_of(peer: Option<&PeerInfo>) -> Result<Option<Peer>, String> {
    let Some(peer) = peer else {
        return Ok(None);
    };
    if peer.transport != TransportKind::Quic {
        return Ok(None);
    }
    let Some(identity) = &peer.identity else {
        return Err("the connection has no verified identity".into());
    };
    let claim = peer.hello.node.as_ref();
    Ok(Some(Peer {
        role: role_of(identity.role),
        cert_name: identity.name.clone(),
        addr: peer.hello.addr.clone(),
        claim: claim.map(|c| c.name.clone()),
        proof: claim.and_then(|c| c.proof).map(|p| *p.as_bytes()),
        binding: peer.binding,
    }))
}

impl Admission for Gate {
    /// ORC-38.
    fn admit(&self, peer: &PeerInfo) -> Result<(), String> {
        let Some(identity) = &peer.identity else {
            return Ok(());
        };
        let Some(node) = self
            .bound
            .read()
            .expect("lock")
            .get(&peer.hello.addr)
            .cloned()
        else {
            // Not bound yet: a host's registration decides (ORC-33); a client's or operator's
            // claim lasts only while its link does (NODE-7).
            return Ok(());
        };
        if identity.role != Role::Host {
            // Only that node speaks from (and is sent to at) a bound node's address.
            self.refuse("connection");
            return Err(format!(
                "{} is the address of node {:?}: a {} certificate may not claim it",
                peer.hello.addr, node.name, identity.role
            ));
        }
        let ok = match (&identity.name, &node.secret) {
            (Some(name), _) => *name == node.name,
            (None, Some(secret)) => match (peer.hello.node.as_ref(), peer.binding) {
                (Some(claim), Some(binding)) => {
                    claim.name == node.name
                        && claim.proof.is_some_and(|p| {
                            blake3::Hash::from(*p.as_bytes())
                                == blake3::Hash::from(
                                    procmesh_orchestrator_core::authority::node_proof(
                                        secret, &binding,
                                    ),
                                )
                        })
                }
                _ => false,
            },
            (None, None) => false,
        };
        if ok {
            Ok(())
        } else {
            self.refuse("connection");
            Err(format!(
                "{} is bound to node {:?}; this connection does not prove it is that node",
                peer.hello.addr, node.name
            ))
        }
    }
}

impl BlobPolicy for Gate {
    /// ORC-39.
    fn allow(&self, peer: &BlobPeer, request: &BlobRequest) -> Result<(), String> {
        let Some(identity) = &peer.identity else {
            return if peer.transport == TransportKind::Quic {
                Err("no verified identity".into())
            } else {
                Ok(())
            };
        };
        let refused = |why: String| {
            self.refuse("blob");
            Err(why)
        };
        match request {
            BlobRequest::Push { .. } => match identity.role {
                Role::Client | Role::Operator => Ok(()),
                role => refused(format!("a {role} may not push blobs to the orchestrator")),
            },
            BlobRequest::Fetch { hash, ticket } => {
                if identity.role == Role::Operator {
                    return Ok(());
                }
                if identity.role == Role::Host && self.granted(peer, identity.name.as_deref(), hash)
                {
                    return Ok(());
                }
                let me = self.me.read().expect("lock").clone();
                if let (Some(ticket), Some(me)) = (ticket, me) {
                    return match ticket.verify(&self.ticket_key(&me), hash, unix_ms()) {
                        Ok(()) => Ok(()),
                        Err(error) => refused(format!("blob {hash}: {error}")),
                    };
                }
                refused(format!(
                    "blob {hash} is not needed by any action dispatched to this peer, and no \
                     download ticket came with the request"
                ))
            }
        }
    }
}
