//! The host's actors in its `service` proc: [`HOST_ACTOR`] answers [`HostRequest`]s,
//! [`BOOTSTRAP_ACTOR`] receives the [`ProcReady`] callbacks of starting procs.
//!
//! Both hand every request to a task of its own (a kameo delegated reply): a spawn waits for
//! readiness and a terminate for an exit, and neither may hold up the next request.
//!
//! ```text
//! proc being bootstrapped ── ask ProcReady ──▶ service.bootstrap
//!      checks: from this machine (a backend or loopback peer), a proc being spawned
//!      ──▶ that proc's spawn driver: pid of the child? agent in the proc and answering?
//!          backend route up? ── Ok(()) / Err(HostError) ──▶ back to the proc
//! ```
//!
//! A proc agent must send its `ProcReady` from outside its agent actor (after exposing it):
//! the host asks the agent for its capacity before it answers, so an agent that awaited the
//! answer inside its own handler would never answer that ask.
//!
//! # Invariants
//! - **HST-12** A `ProcReady` that did not come over a backend link (from a QUIC peer, even on
//!   this machine), that came over the Unix backend link of another proc than the one it
//!   names, for a proc that is not starting, or carrying another pid than the child's, is
//!   refused [`HostError::UnexpectedProc`], counted (`proc_ready`) and changes nothing.
//!
//! Which requests `service.host` carries out for whom is decided by `authority` (HST-16).

use std::sync::Weak;

use kameo::message::{Context, Message};
use kameo::reply::DelegatedReply;
use kameo::Actor;
use procmesh_protocol::messages::{HostError, HostReply, HostRequest, ProcReady};
use procmesh_transport::{Request, WireReply};
use tokio::sync::oneshot;

use crate::authority::{decide, Kind, Sender};
use crate::host::{Host, HostInner};
use crate::table::Callback;

/// The name of the host agent actor in the `service` proc.
pub const HOST_ACTOR: &str = "host";
/// The name of the bootstrap actor in the `service` proc ([`ENV_CALLBACK`] names it).
///
/// [`ENV_CALLBACK`]: procmesh_protocol::messages::host::ENV_CALLBACK
pub const BOOTSTRAP_ACTOR: &str = "bootstrap";

type Answer<T> = DelegatedReply<WireReply<Result<T, HostError>>>;

/// Answers [`HostRequest`]s.
#[derive(Actor)]
pub(crate) struct HostAgent {
    pub host: Weak<HostInner>,
}

impl Message<Request<HostRequest>> for HostAgent {
    type Reply = Answer<HostReply>;

    async fn handle(
        &mut self,
        req: Request<HostRequest>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let host = self.host.upgrade().map(Host::from_inner);
        ctx.spawn(async move {
            Ok(match host {
                Some(host) => {
                    host.handle_request_from(req.peer.as_deref(), req.message)
                        .await
                }
                None => Err(HostError::ShuttingDown),
            })
        })
    }
}

/// Receives [`ProcReady`] callbacks.
#[derive(Actor)]
pub(crate) struct BootstrapAgent {
    pub host: Weak<HostInner>,
}

impl Message<Request<ProcReady>> for BootstrapAgent {
    type Reply = Answer<()>;

    async fn handle(
        &mut self,
        req: Request<ProcReady>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let answer = match self.host.upgrade() {
            None => Err(HostError::ShuttingDown),
            Some(host) => host.ready_callback(&req),
        };
        ctx.spawn(async move {
            Ok(match answer {
                Err(error) => Err(error),
                Ok(rx) => rx.await.unwrap_or_else(|_| {
                    Err(HostError::UnexpectedProc(
                        "the spawn stopped waiting for this proc".into(),
                    ))
                }),
            })
        })
    }
}

impl HostInner {
    /// HST-12: routes a callback to the spawn that waits for it, or refuses it.
    pub(crate) fn ready_callback(
        &self,
        req: &Request<ProcReady>,
    ) -> Result<oneshot::Receiver<Result<(), HostError>>, HostError> {
        let ready = &req.message;
        let unexpected = |why: &str| {
            self.refusals.count(Kind::ProcReady.as_str());
            HostError::UnexpectedProc(format!("{} ({why})", ready.proc_id))
        };
        let sender = Sender::of(req.peer.as_deref(), self.node.addr());
        if decide(Kind::ProcReady, &sender).is_err() {
            return Err(unexpected("not over a backend link"));
        }
        // Over the Unix backend, only the proc's own link (admitted by its proof, HST-18).
        if let Sender::Proc(link) = &sender {
            if link != ready.proc_id.name() {
                return Err(unexpected("over another proc's backend link"));
            }
        }
        if ready.proc_id.addr() != self.node.addr() {
            return Err(unexpected("another host's proc"));
        }
        let (tx, rx) = oneshot::channel();
        let callback = Callback {
            ready: ready.clone(),
            reply: tx,
        };
        if self.table.callback(ready.proc_id.name(), callback) {
            Ok(rx)
        } else {
            Err(unexpected("no such proc is starting"))
        }
    }
}
