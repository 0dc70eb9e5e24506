//! The proc agent actor: answers [`AgentRequest`]s by driving the [`Runner`]; the runner's
//! reports go to whoever asked for the action (`report_to`) through the report pump
//! ([`crate::outbox`]), which keeps each until it is answered.
//!
//! ```text
//!  orchestrator ── Submit / Cancel / Capacity / Status / Stop ──▶ ProcAgent ──▶ Runner
//!  orchestrator ◀── ask ActionUpdate(s) ── report pump (outbox) ◀── Runner reports
//!  orchestrator ◀── ask GetWorker ─┐
//!  host         ◀── ask FetchBlobs ┴── MeshResolver ◀── Runner (what it lacks)
//! ```
//!
//! # Invariants
//! - **PA-AG-1** Transitions reach `report_to` in the order the runner reported them: one pump
//!   task sends them one message after another over one link per destination (NODE-1); a
//!   message that was not answered is sent again before anything later (PA-AG-4).
//! - **PA-AG-2** After `Stop` or `Drain`, every new submission is refused with `Stopping`.
//! - **PA-AG-7** After `Drain`, what runs goes on and reports as usual, and `Capacity` (and
//!   `Status`) answer a maximum of 0: the orchestrator places nothing more on the proc but
//!   keeps what is placed there.
//! - **PA-AG-3** … **PA-AG-5**: reliable reports — the outbox, its acknowledgement rule and its
//!   bound; see [`crate::outbox`].
//! - **PA-AG-6** An [`AgentRequest`] is carried out only if it comes from this process, from
//!   the host's own `service` proc, or from the orchestrator's proc (the one the host names in
//!   `PROCMESH_ORCHESTRATOR`; for a host without one, any sender that is not at the host's
//!   address). Anything else — a sibling proc, the host's `local` proc, another node — is
//!   refused [`AgentError::Forbidden`], counted, and changes nothing. (The host lets only the
//!   orchestrator's envelopes into its procs, HST-17; this is the second wall.)

use std::sync::Arc;
use std::time::Duration;

use kameo::message::{Context, Message};
use kameo::reply::DelegatedReply;
use kameo::Actor;
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::agent::{
    AgentError, AgentReply, AgentRequest, AgentStatus, Probe,
};
use procmesh_protocol::messages::host::{HostReply, HostRequest};
use procmesh_protocol::messages::orchestrator::OrchestratorRequest;
use procmesh_protocol::messages::requests::{agent::GetWorker, Ask};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_protocol::{ActorId, ProcId};
use procmesh_transport::remote::BoxFuture;
use procmesh_transport::{Node, RemoteRef, Request, WireReply};
use tokio::sync::Notify;

use crate::runner::{Resolver, Runner};

/// How long the agent waits for the orchestrator or the host when preparing an action.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may send a proc agent requests (PA-AG-6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Senders {
    /// The host's `service` proc.
    pub host: ProcId,
    /// The orchestrator's proc, if the host works for one.
    pub orchestrator: Option<ProcId>,
}

impl Senders {
    /// The senders of a proc `proc_id` whose host works for `orchestrator`.
    pub fn of(proc_id: &ProcId, orchestrator: Option<&ActorId>) -> Senders {
        Senders {
            host: proc_id
                .addr()
                .proc(procmesh_protocol::SERVICE_PROC)
                .expect("service is a valid proc name"),
            orchestrator: orchestrator.map(|o| o.proc_id().clone()),
        }
    }

    /// PA-AG-6: whether `from` (arrived over a link if `linked`) may send requests.
    pub fn check(&self, from: &ActorId, linked: bool) -> Result<(), AgentError> {
        let sender = from.proc_id();
        let ok = !linked
            || *sender == self.host
            || match &self.orchestrator {
                Some(orchestrator) => sender == orchestrator,
                None => sender.addr() != self.host.addr(),
            };
        if ok {
            Ok(())
        } else {
            Err(AgentError::Forbidden(format!(
                "{from} may not ask this proc agent: only its host and the orchestrator may"
            )))
        }
    }
}

/// The agent actor of one proc.
#[derive(Actor)]
pub struct ProcAgent {
    node: Node,
    proc_id: ProcId,
    runner: Runner,
    stopping: bool,
    stop_grace: Duration,
    /// Notified once the runner has shut down after a `Stop`.
    stopped: Arc<Notify>,
    senders: Senders,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl ProcAgent {
    /// An agent over `runner`; `stopped` is notified when a `Stop` has finished. It takes
    /// requests from its host and, if known, `orchestrator` only (PA-AG-6).
    pub fn new(
        node: Node,
        runner: Runner,
        stop_grace: Duration,
        stopped: Arc<Notify>,
        orchestrator: Option<&ActorId>,
    ) -> Self {
        ProcAgent {
            proc_id: node.proc_id().clone(),
            senders: Senders::of(node.proc_id(), orchestrator),
            node,
            runner,
            stopping: false,
            stop_grace,
            stopped,
            refused: Arc::default(),
        }
    }

    /// How many requests this agent refused (PA-AG-6), shared with whoever reports it.
    pub fn refused(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.refused.clone()
    }
}

type AgentResult = Result<AgentReply, AgentError>;

impl Message<Request<AgentRequest>> for ProcAgent {
    type Reply = DelegatedReply<WireReply<AgentResult>>;

    async fn handle(
        &mut self,
        req: Request<AgentRequest>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        // PA-AG-6
        if let Err(error) = self.senders.check(&req.from, req.peer.is_some()) {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%error, from = %req.from, "refused an agent request");
            return ctx.reply(Ok(Err(error)));
        }
        if let AgentRequest::Probe(probe) = req.message {
            // The round trip runs off the actor: the agent keeps answering meanwhile.
            let (delegated, sender) = ctx.reply_sender();
            let node = self.node.clone();
            tokio::spawn(async move {
                let result = probe_route(node, probe).await;
                if let Some(sender) = sender {
                    sender.send(Ok(result));
                }
            });
            return delegated;
        }
        let result = self.handle_now(req.message);
        ctx.reply(Ok(result))
    }
}

/// Asks `target` one cheap question of type `M`; `Err` says why there was no answer.
async fn ask_once<M, T, E>(node: &Node, target: &ActorId, question: M) -> Result<(), String>
where
    M: procmesh_protocol::RemoteMessage<Reply = Result<T, E>>,
    E: std::fmt::Display,
{
    match node
        .remote_ref::<M>(target.clone())
        .ask(question, PROBE_TIMEOUT)
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn probe_route(node: Node, probe: Probe) -> AgentResult {
    let started = std::time::Instant::now();
    let (target, answered) = match probe {
        Probe::Agent(target) => {
            let answered = ask_once(&node, &target, AgentRequest::Capacity).await;
            (target, answered)
        }
        Probe::Host(target) => {
            let answered = ask_once(&node, &target, HostRequest::Status).await;
            (target, answered)
        }
    };
    match answered {
        Ok(()) => Ok(AgentReply::Probed {
            answered_by: target.proc_id().clone(),
            rtt_us: started.elapsed().as_micros() as u64,
        }),
        Err(reason) => Err(AgentError::Unreachable { target, reason }),
    }
}

impl ProcAgent {
    /// What it offers: the runner's capacity, or nothing once it is stopping or draining
    /// (PA-AG-7), so that heartbeats tell the orchestrator to place nothing more here.
    fn capacity(&self) -> procmesh_protocol::messages::agent::Capacity {
        if self.stopping {
            procmesh_protocol::messages::agent::Capacity { max: 0, free: 0 }
        } else {
            self.runner.capacity()
        }
    }

    fn handle_now(&mut self, message: AgentRequest) -> AgentResult {
        match message {
            AgentRequest::Probe(_) => unreachable_probe(),
            AgentRequest::Submit { action, report_to } => {
                if self.stopping {
                    // PA-AG-2
                    return Err(AgentError::Stopping);
                }
                self.runner
                    .submit(action, report_to)
                    .map(AgentReply::Accepted)
            }
            AgentRequest::SubmitBatch { actions, report_to } => {
                if self.stopping {
                    return Err(AgentError::Stopping);
                }
                Ok(AgentReply::Batch(
                    actions
                        .into_iter()
                        .map(|action| self.runner.submit(action, report_to.clone()))
                        .collect(),
                ))
            }
            AgentRequest::Cancel {
                lsn,
                attempt,
                reason,
            } => {
                let attempt = procmesh_protocol::AttemptRef { lsn, attempt };
                Ok(AgentReply::Cancelling {
                    found: self.runner.cancel(attempt, reason),
                })
            }
            AgentRequest::Capacity => Ok(AgentReply::Capacity(self.capacity())),
            AgentRequest::Status => Ok(AgentReply::Status(AgentStatus {
                proc_id: self.proc_id.clone(),
                capacity: self.capacity(),
                actions: self.runner.status(),
                stopping: self.stopping,
            })),
            AgentRequest::Drain { reason } => {
                let running = self.runner.status().len() as u32;
                if !self.stopping {
                    // PA-AG-2 from now on; what runs goes on (PA-AG-7).
                    self.stopping = true;
                    tracing::info!(%reason, running, "proc agent draining");
                }
                Ok(AgentReply::Stopping { running })
            }
            AgentRequest::Stop { reason } => {
                let running = self.runner.status().len() as u32;
                if !self.stopping {
                    self.stopping = true;
                    tracing::info!(%reason, running, "proc agent stopping");
                    let runner = self.runner.clone();
                    let grace = self.stop_grace;
                    let stopped = self.stopped.clone();
                    tokio::spawn(async move {
                        runner.shutdown(grace).await;
                        stopped.notify_one();
                    });
                }
                Ok(AgentReply::Stopping { running })
            }
        }
    }
}

/// Probes are delegated before `handle_now`; this arm exists for exhaustiveness only.
fn unreachable_probe() -> AgentResult {
    Err(AgentError::Internal("probe handled out of line".into()))
}

/// Resolves what the runner lacks through the mesh: worker descriptors from the orchestrator
/// that submitted the action, blobs through the host (which shares its store on disk).
pub struct MeshResolver {
    node: Node,
    host: RemoteRef<HostRequest>,
}

impl MeshResolver {
    /// A resolver asking `host` (the host agent) for blobs.
    pub fn new(node: Node, host: ActorId) -> Self {
        let host = node.remote_ref(host);
        MeshResolver { node, host }
    }
}

impl Resolver for MeshResolver {
    fn worker(
        &self,
        id: WorkerId,
        report_to: &ActorId,
    ) -> BoxFuture<'_, Result<WorkerDescriptor, String>> {
        let orchestrator: RemoteRef<OrchestratorRequest> = self.node.remote_ref(report_to.clone());
        Box::pin(async move {
            match orchestrator
                .ask(GetWorker { id }.request(), RESOLVE_TIMEOUT)
                .await
            {
                Ok(Ok(reply)) => <GetWorker as Ask>::reply(reply).map_err(|other| {
                    format!("unexpected answer to {}: {other:?}", GetWorker::KIND)
                }),
                Ok(Err(e)) => Err(format!("worker {id}: {e}")),
                Err(e) => Err(format!(
                    "worker {id}: cannot ask {}: {e}",
                    orchestrator.id()
                )),
            }
        })
    }

    fn ensure_blobs(
        &self,
        hashes: Vec<BlobHash>,
        report_to: &ActorId,
    ) -> BoxFuture<'_, Result<(), String>> {
        let from = report_to.addr().clone();
        Box::pin(async move {
            if hashes.is_empty() {
                return Ok(());
            }
            match self
                .host
                .ask(HostRequest::FetchBlobs { hashes, from }, RESOLVE_TIMEOUT)
                .await
            {
                Ok(Ok(HostReply::BlobsReady { .. })) => Ok(()),
                Ok(Ok(other)) => Err(format!("unexpected answer to FetchBlobs: {other:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("cannot ask the host for blobs: {e}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests PA-AG-6
    #[test]
    fn only_the_host_and_the_orchestrator_may_ask() {
        let me: ProcId = "quic!10.0.0.5:7700,w-1".parse().unwrap();
        let orch: ActorId = "quic!10.0.0.1:7600,service.orchestrator".parse().unwrap();
        let actor = |s: &str| s.parse::<ActorId>().unwrap();
        let strict = Senders::of(&me, Some(&orch));
        let loose = Senders::of(&me, None);
        for senders in [&strict, &loose] {
            assert_eq!(
                senders.check(&actor("quic!10.0.0.5:7700,service.host"), true),
                Ok(())
            );
            // This process.
            assert_eq!(
                senders.check(&actor("quic!10.0.0.5:7700,w-2.agent"), false),
                Ok(())
            );
            for sibling in ["quic!10.0.0.5:7700,w-2.agent", "quic!10.0.0.5:7700,local.x"] {
                let e = senders.check(&actor(sibling), true).unwrap_err();
                assert_eq!(e.code(), "forbidden", "{sibling}");
            }
        }
        assert_eq!(
            strict.check(&actor("quic!10.0.0.1:7600,service.x"), true),
            Ok(())
        );
        let other = actor("quic!10.0.0.9:7600,service.x");
        assert_eq!(strict.check(&other, true).unwrap_err().code(), "forbidden");
        assert_eq!(loose.check(&other, true), Ok(()));
    }
}
