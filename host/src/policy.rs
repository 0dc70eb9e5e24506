//! What the host's node lets in: links ([`HostAdmission::admit`]), envelopes relayed into its
//! procs ([`HostAdmission::relay`]) and blob streams ([`HostBlobPolicy`]).
//!
//! ```text
//! backend link (unix!<state>/run/host.sock, the directory 0700)
//!   SO_PEERCRED uid = ours, pid = the child the host spawned for the proc its hello claims,
//!   claim proof = proc_proof(that proc's bootstrap secret)            ── else closed (HST-18)
//! QUIC link claiming the orchestrator's address: orchestrator role only ── else closed (HST-28)
//! QUIC peer ─▶ envelope for proc <name>: only from the orchestrator role ── else dropped (HST-17)
//! blob stream: fetch ── orchestrator / operator role, or a ticket that verifies ── else refused
//!              push  ── orchestrator role only                                   (HST-22)
//! ```
//!
//! In-process links and streams (the `local` proc, in-process procs) are this process's own
//! code and pass.
//!
//! # Invariants
//! - **HST-17** An envelope from a QUIC peer reaches one of the host's procs only if the peer's
//!   certificate names the orchestrator role (requests and replies alike); from anyone else
//!   (client, operator, another host) it is dropped and counted under `relay`.
//! - **HST-18** A backend (Unix) link is admitted only from a process of the host's own user
//!   whose pid is the child the host spawned for the proc its hello names, and whose hello
//!   carries `proc_proof` of that proc's bootstrap secret; any other link is closed before it
//!   can register a proc route or send anything, and counted under `backend`.
//! - **HST-22** The host's blob store serves a fetch only to the orchestrator or operator role,
//!   or to a peer presenting a download ticket that verifies under the host's ticket key (from
//!   its latest registration) for that blob and has not expired; it takes a push only from the
//!   orchestrator role. Refusals send and keep nothing.
//! - **HST-28** A QUIC link that claims the address of the host's orchestrator (`orchestrator`
//!   in its config) is admitted only with an orchestrator certificate: nobody else can stand in
//!   for the orchestrator to receive the host's registration (its node secret), heartbeats and
//!   reports, or to answer them. The admission is in place before the node accepts anything.

use std::sync::{Mutex, OnceLock, Weak};

use procmesh_protocol::cas::DownloadTicket;
use procmesh_protocol::{BlobHash, Envelope, HostAddr};
use procmesh_transport::{
    verify_node_proof, Admission, BlobPeer, BlobPolicy, BlobRequest, PeerInfo, Role, TransportKind,
};

use crate::authority::{decide, Kind, Sender};
use crate::host::HostInner;
use crate::table::Launched;

/// The host's [`Admission`] (HST-17, HST-18, HST-28), installed when its node is built and
/// given the host once that exists.
pub(crate) struct HostAdmission {
    pub host: OnceLock<Weak<HostInner>>,
    /// The orchestrator's address (HST-28).
    pub orchestrator: Option<HostAddr>,
}

impl HostAdmission {
    fn host(&self) -> Option<std::sync::Arc<HostInner>> {
        self.host.get().and_then(Weak::upgrade)
    }

    fn count(&self, kind: &'static str) {
        if let Some(host) = self.host() {
            host.refusals.count(kind);
        }
    }
}

impl Admission for HostAdmission {
    fn admit(&self, peer: &PeerInfo) -> Result<(), String> {
        if peer.transport == TransportKind::Quic
            && self.orchestrator.as_ref() == Some(&peer.hello.addr)
            && peer.role() != Some(Role::Orchestrator)
        {
            // HST-28.
            self.count("orchestrator_address");
            let role = peer.role().map_or("no", Role::as_str);
            tracing::warn!(addr = %peer.hello.addr, role, "refused a link claiming the orchestrator's address");
            return Err(format!(
                "{} is the orchestrator's address: a {role} certificate may not claim it",
                peer.hello.addr
            ));
        }
        // Only accepted Unix links carry credentials: those are our backend.
        let (TransportKind::Unix, Some(cred)) = (peer.transport, peer.cred) else {
            return Ok(());
        };
        let Some(host) = self.host() else {
            return Err("the host is starting or shutting down".into());
        };
        let verdict = host.admit_backend(peer, cred);
        if let Err(reason) = &verdict {
            host.refusals.count("backend");
            tracing::warn!(%reason, pid = cred.pid, uid = cred.uid, name = %peer.hello.name, "refused a backend link");
        }
        verdict
    }

    fn relay(&self, peer: &PeerInfo, proc: &str, env: &Envelope) -> Result<(), String> {
        if peer.transport != TransportKind::Quic {
            // Our own procs (admitted by HST-18) and this process.
            return Ok(());
        }
        let sender = Sender::Remote(peer.role());
        decide(Kind::Relay, &sender).map_err(|reason| {
            self.count(Kind::Relay.as_str());
            format!("to proc {proc:?} from {}: {reason}", env.sender)
        })
    }
}

impl HostInner {
    /// HST-18 for one accepted backend link.
    fn admit_backend(
        &self,
        peer: &PeerInfo,
        cred: procmesh_transport::PeerCred,
    ) -> Result<(), String> {
        let our_uid = nix::unistd::geteuid().as_raw();
        if cred.uid != our_uid {
            return Err(format!("uid {} is not the host's ({our_uid})", cred.uid));
        }
        if peer.hello.addr != *self.node.addr() {
            return Err(format!(
                "a backend link must claim our address, not {}",
                peer.hello.addr
            ));
        }
        let name = &peer.hello.name;
        let Some(claim) = &peer.hello.node else {
            return Err(format!("proc {name:?} sent no bootstrap proof"));
        };
        if claim.name != *name {
            return Err(format!("claims {:?} but is named {name:?}", claim.name));
        }
        let Some((secret, launched)) = self.table.backend_identity(name) else {
            return Err(format!("no proc {name:?} is running here"));
        };
        match launched {
            Launched::Os(pid) if i64::from(pid) == i64::from(cred.pid) => {}
            Launched::Os(pid) => {
                return Err(format!(
                    "pid {} is not proc {name:?}'s child (pid {pid})",
                    cred.pid
                ))
            }
            // A child fast enough to connect before its launch returned: it must at least be
            // a child of this process; its ProcReady names its pid, checked then (HST-18).
            Launched::Launching => {
                let parent = u32::try_from(cred.pid)
                    .ok()
                    .and_then(|pid| procmesh_sys::procfs::parent_pid(pid).ok());
                if parent != Some(std::process::id()) {
                    return Err(format!(
                        "pid {} is not a child of this host (proc {name:?} is being launched)",
                        cred.pid
                    ));
                }
            }
            Launched::InProcess => return Err(format!("proc {name:?} is not an OS child")),
        }
        if !verify_node_proof(peer, &secret) {
            return Err(format!("wrong bootstrap proof for proc {name:?}"));
        }
        Ok(())
    }
}

/// The host's blob store policy (HST-22).
pub(crate) struct HostBlobPolicy {
    /// The key download tickets are verified with, from the latest registration.
    pub ticket_key: std::sync::Arc<Mutex<Option<[u8; 32]>>>,
}

/// The refusal of a fetch without a good ticket.
pub(crate) const NEEDS_TICKET: &str = "an output blob needs its download ticket";

impl HostBlobPolicy {
    fn check_ticket(&self, hash: &BlobHash, ticket: Option<&DownloadTicket>) -> Result<(), String> {
        let Some(ticket) = ticket else {
            return Err(NEEDS_TICKET.into());
        };
        let Some(key) = *self.ticket_key.lock().expect("ticket key lock") else {
            return Err(format!(
                "{NEEDS_TICKET}: this host has no ticket key yet (not registered)"
            ));
        };
        let now = procmesh_transport::now().as_millis();
        ticket
            .verify(&key, hash, now)
            .map_err(|e| format!("{NEEDS_TICKET}: {e}"))
    }
}

impl BlobPolicy for HostBlobPolicy {
    fn allow(&self, peer: &BlobPeer, request: &BlobRequest) -> Result<(), String> {
        if peer.transport == TransportKind::Local {
            return Ok(());
        }
        let role = peer.identity.as_ref().map(|i| i.role);
        match request {
            BlobRequest::Fetch { hash, ticket } => {
                if matches!(role, Some(Role::Orchestrator | Role::Operator)) {
                    return Ok(());
                }
                self.check_ticket(hash, ticket.as_ref())
            }
            BlobRequest::Push { .. } => match role {
                Some(Role::Orchestrator) => Ok(()),
                _ => Err(
                    "only the orchestrator pushes blobs into a host's store (procs write \
                          it on disk)"
                        .into(),
                ),
            },
        }
    }
}
