//! Carrying out the core's effects once their input is committed (ORC-30): replies, events to
//! subscriptions, the next dispatch pass, and what reaches the network — submissions and stop
//! orders to proc agents, each asked from a spawned task so that the actor never waits
//! (ORC-21); what fails comes back as an input ([`Internal::SubmitFailed`],
//! [`Internal::StopFailed`]).

use kameo::reply::ReplySender;
use procmesh_orchestrator_core::{Effect, Outcome};
use procmesh_protocol::messages::agent::{ActionSpec, AgentReply, AgentRequest};
use procmesh_protocol::messages::orchestrator::{OrchestratorError, OrchestratorReply};
use procmesh_protocol::{ActorId, AttemptRef, ProcId};
use tracing::Instrument as _;

use crate::service::{Internal, Reply, Service};

impl Service {
    /// Carries out one input's effects, then sends its reply.
    pub(crate) fn carry_out(&mut self, reply: Option<ReplySender<Reply>>, outcome: Outcome) {
        let mut answer = outcome.reply;
        for effect in outcome.effects {
            match effect {
                Effect::SubmitBatch { proc, agent, specs } => {
                    // ORC-39: the host may now fetch what these actions need.
                    self.grant_blobs(&proc, &specs);
                    send_batch(self, proc, agent, specs)
                }
                Effect::Cancel {
                    agent,
                    attempt,
                    reason,
                } => send_cancel(self, agent, attempt, reason),
                Effect::Publish {
                    queue,
                    seq,
                    transition,
                } => self.subs.transition(queue, seq, &transition),
                Effect::QueueComplete(status) => self.subs.complete(&status),
                Effect::Subscribe {
                    queue,
                    lsn,
                    subscriber,
                    backlog,
                    events,
                } => {
                    let next = backlog.next;
                    let subscription = self.subs.subscribe(queue, lsn, subscriber, backlog, events);
                    answer = Some(Ok(OrchestratorReply::Subscribed { subscription, next }));
                }
                Effect::Unsubscribe {
                    subscription,
                    requester,
                    end,
                } => {
                    // ORC-25: only the proc that subscribed may stop or probe the subscription.
                    let owned = self.subs.owned_by(subscription, &requester);
                    answer = Some(if owned && (!end || self.subs.unsubscribe(subscription)) {
                        Ok(OrchestratorReply::Ack)
                    } else {
                        Err(OrchestratorError::UnknownSubscription(subscription))
                    });
                }
                Effect::DispatchAgain => self.trigger_dispatch(),
            }
        }
        if let (Some(reply), Some(answer)) = (reply, answer) {
            reply.send(Ok(answer));
        }
    }
}

/// Sends the specs placed on one proc as one `SubmitBatch`; every attempt refused or lost
/// comes back as `Internal::SubmitFailed` (ORC-17).
pub(crate) fn send_batch(service: &Service, proc: ProcId, agent: ActorId, specs: Vec<ActionSpec>) {
    let agent_ref = service
        .node
        .remote_ref::<AgentRequest>(agent.clone())
        .with_sender(service.me.clone());
    let report_to = service.me.clone();
    let timeout = service.config.agent_timeout();
    let myself = service.myself.clone();
    let span = tracing::debug_span!("submit", n = specs.len(), %agent);
    let attempts: Vec<AttemptRef> = specs.iter().map(ActionSpec::attempt_ref).collect();
    tokio::spawn(
        async move {
            let request = AgentRequest::SubmitBatch {
                actions: specs,
                report_to,
            };
            let failures: Vec<(AttemptRef, String)> = match agent_ref.ask(request, timeout).await {
                Ok(Ok(AgentReply::Batch(answers))) if answers.len() == attempts.len() => attempts
                    .into_iter()
                    .zip(answers)
                    .filter_map(|(attempt, answer)| {
                        let error = answer.err()?;
                        Some((attempt, format!("refused by {agent}: {error}")))
                    })
                    .collect(),
                other => {
                    let why = match other {
                        Ok(Ok(reply)) => format!("unexpected answer to SubmitBatch: {reply:?}"),
                        Ok(Err(error)) => format!("refused by {agent}: {error}"),
                        Err(error) => format!("{agent} unreachable: {error}"),
                    };
                    attempts.into_iter().map(|a| (a, why.clone())).collect()
                }
            };
            if failures.is_empty() {
                return;
            }
            tracing::info!(failed = failures.len(), reason = %failures[0].1, "submissions failed");
            if let Some(me) = myself.upgrade() {
                for (attempt, reason) in failures {
                    let failed = Internal::SubmitFailed {
                        attempt,
                        proc: proc.clone(),
                        reason,
                    };
                    let _ = me.tell(failed).try_send();
                }
            }
        }
        .instrument(span),
    );
}

/// Tells the agent running a placed attempt to stop it; it then reports `Cancelled`. A failure
/// comes back as `Internal::StopFailed` (ORC-24).
pub(crate) fn send_cancel(service: &Service, agent: ActorId, attempt: AttemptRef, why: String) {
    let agent_ref = service
        .node
        .remote_ref::<AgentRequest>(agent.clone())
        .with_sender(service.me.clone());
    let timeout = service.config.agent_timeout();
    let myself = service.myself.clone();
    let request = AgentRequest::Cancel {
        lsn: attempt.lsn,
        attempt: attempt.attempt,
        reason: why,
    };
    let span = tracing::debug_span!("stop", lsn = %attempt.lsn, attempt = %attempt.attempt, %agent);
    tokio::spawn(
        async move {
            let reason = match agent_ref.ask(request, timeout).await {
                Ok(Ok(AgentReply::Cancelling { found: true })) => return,
                Ok(Ok(AgentReply::Cancelling { found: false })) => {
                    format!("{agent} does not hold the attempt")
                }
                Ok(Ok(other)) => format!("unexpected answer to Cancel: {other:?}"),
                Ok(Err(error)) => format!("refused by {agent}: {error}"),
                Err(error) => format!("{agent} unreachable: {error}"),
            };
            tracing::info!(%reason, "stop order not carried out");
            if let Some(me) = myself.upgrade() {
                let _ = me.tell(Internal::StopFailed { attempt, reason }).try_send();
            }
        }
        .instrument(span),
    );
}
