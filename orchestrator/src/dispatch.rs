//! Placing pending actions on procs and telling the procs: the dispatch pass, stop orders, and
//! what happens when a proc agent refuses or cannot be reached.
//!
//! ```text
//!  trigger (submit, heartbeat, an attempt ended, a retry) ─▶ flag set? no ─▶ tell self Dispatch
//!  Dispatch ─▶ procs of alive hosts, free = max − placed (ORC-16) ─▶ Book::schedule
//!           ─▶ publish each Submitting; per proc, spawn one ask AgentRequest::SubmitBatch
//!           ─▶ a full batch? tell self Dispatch again (other requests run in between)
//!  ask refused / unreachable ─▶ Internal::SubmitFailed ─▶ Abandoned (attempt-fenced),
//!                                 proc sidelined until its next heartbeat (ORC-17)
//! ```

use procmesh_protocol::messages::agent::{ActionSpec, AgentReply, AgentRequest};
use procmesh_protocol::sched::StopOrder;
use procmesh_protocol::{
    ActionState, ActorId, AttemptRef, ProcId, Timestamp, Transition, TransitionDetail,
};
use tracing::Instrument as _;

use crate::registry::free_slots;
use crate::service::{Internal, Service};

impl Service {
    /// Asks for a dispatch pass; many triggers before it runs make one pass (ORC-22).
    pub(crate) fn trigger_dispatch(&mut self) {
        if self.dispatch_queued || self.shutting_down {
            return;
        }
        if let Some(me) = self.myself.upgrade() {
            // The mailbox is unbounded: this never waits and only fails once the actor stops.
            if me.tell(Internal::Dispatch).try_send().is_ok() {
                self.dispatch_queued = true;
            }
        }
    }

    /// One scheduling pass: places up to `dispatch_batch` pending actions and sends each to its
    /// proc's agent from a spawned task.
    pub(crate) fn dispatch(&mut self, now: Timestamp) {
        self.dispatch_queued = false;
        if self.book.pending().is_empty() {
            return;
        }
        let ready = self.registry.ready_procs();
        let procs = free_slots(&self.book, &ready);
        if procs.is_empty() {
            return;
        }
        let batch = self.config.dispatch_batch as usize;
        let dispatches = self.book.schedule(&procs, batch, now);
        let full = dispatches.len() >= batch;
        // One message per proc and pass: the specs placed there, in dispatch order.
        let mut per_proc: Vec<(ProcId, ActorId, Vec<ActionSpec>)> = Vec::new();
        for d in dispatches {
            let proc = procs[d.proc].id.clone();
            self.subs.transition(d.queue, &d.transition);
            let attempt = d.attempt_ref();
            let Some(agent) = self.registry.agent(&proc).cloned() else {
                self.submit_failed(attempt, proc, "no agent known for the proc".into(), now);
                continue;
            };
            let Some(def) = self.store.action(attempt.lsn).cloned() else {
                tracing::error!(lsn = %attempt.lsn, "no definition stored for a pending action");
                let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Failed, now)
                    .with_detail(reason("the orchestrator lost the action's definition"));
                if let Ok(update) = self.book.apply(&t, now) {
                    self.publish(&update, &t);
                }
                continue;
            };
            let spec = ActionSpec {
                lsn: attempt.lsn,
                attempt: attempt.attempt,
                priority: d.priority,
                action: def,
            };
            match per_proc.iter_mut().find(|(p, _, _)| *p == proc) {
                Some((_, _, specs)) => specs.push(spec),
                None => per_proc.push((proc, agent, vec![spec])),
            }
        }
        for (proc, agent, specs) in per_proc {
            self.send_batch(proc, agent, specs);
        }
        if full {
            self.trigger_dispatch();
        }
    }

    /// Sends the specs placed on one proc as one `SubmitBatch` from a spawned task; every
    /// attempt refused or lost comes back as `Internal::SubmitFailed` (ORC-17, ORC-21).
    fn send_batch(&self, proc: ProcId, agent: ActorId, specs: Vec<ActionSpec>) {
        let agent_ref = self
            .node
            .remote_ref::<AgentRequest>(agent.clone())
            .with_sender(self.me.clone());
        let report_to = self.me.clone();
        let timeout = self.config.agent_timeout();
        let myself = self.myself.clone();
        let span = tracing::debug_span!("submit", n = specs.len(), %agent);
        let attempts: Vec<AttemptRef> = specs.iter().map(ActionSpec::attempt_ref).collect();
        tokio::spawn(
            async move {
                let request = AgentRequest::SubmitBatch {
                    actions: specs,
                    report_to,
                };
                let failures: Vec<(AttemptRef, String)> =
                    match agent_ref.ask(request, timeout).await {
                        Ok(Ok(AgentReply::Batch(answers))) if answers.len() == attempts.len() => {
                            attempts
                                .into_iter()
                                .zip(answers)
                                .filter_map(|(attempt, answer)| {
                                    let error = answer.err()?;
                                    Some((attempt, format!("refused by {agent}: {error}")))
                                })
                                .collect()
                        }
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

    /// A submission failed: the attempt, if the book still has it submitting on that proc, is
    /// `Abandoned` (and retried by the queue's limit), and the proc sits out until its next
    /// heartbeat (ORC-17).
    pub(crate) fn submit_failed(
        &mut self,
        attempt: AttemptRef,
        proc: ProcId,
        why: String,
        now: Timestamp,
    ) {
        self.registry.sideline(&proc);
        let still_there = self.book.action(attempt.lsn).is_some_and(|e| {
            e.record.attempt_ref() == attempt
                && e.record.state() == ActionState::Submitting
                && e.record.location() == Some(&proc)
        });
        if !still_there {
            // It ran (a Running report beat the failed reply) or ended meanwhile.
            return;
        }
        let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Abandoned, now)
            .with_detail(reason(&format!("submission failed: {why}")));
        if let Ok(update) = self.book.apply(&t, now) {
            self.publish(&update, &t);
        }
        self.trigger_dispatch();
    }

    /// Tells the agent running a placed attempt to stop it; it then reports `Cancelled`. With
    /// no agent to tell, the attempt is `Cancelled` at once (ORC-24).
    pub(crate) fn stop(&mut self, order: StopOrder, why: &str, now: Timestamp) {
        let attempt = order.attempt;
        let agent = order
            .proc
            .as_ref()
            .and_then(|p| self.registry.agent(p))
            .cloned();
        let Some(agent) = agent else {
            self.stop_failed(attempt, "no agent known for its proc".into(), now);
            return;
        };
        let agent_ref = self
            .node
            .remote_ref::<AgentRequest>(agent.clone())
            .with_sender(self.me.clone());
        let timeout = self.config.agent_timeout();
        let myself = self.myself.clone();
        let request = AgentRequest::Cancel {
            lsn: attempt.lsn,
            attempt: attempt.attempt,
            reason: why.to_owned(),
        };
        let span =
            tracing::debug_span!("stop", lsn = %attempt.lsn, attempt = %attempt.attempt, %agent);
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

    /// A stop order could not be carried out: the attempt, if still current and unfinished, is
    /// `Cancelled` by the orchestrator itself (ORC-24). Should it still run somewhere, the
    /// host's next heartbeat lists it as an orphan, and the host stops it.
    pub(crate) fn stop_failed(&mut self, attempt: AttemptRef, why: String, now: Timestamp) {
        let current = self
            .book
            .action(attempt.lsn)
            .is_some_and(|e| e.record.attempt_ref() == attempt && !e.record.is_terminal());
        if !current {
            return;
        }
        let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Cancelled, now)
            .with_detail(reason(&format!("cancelled; the stop order failed: {why}")));
        if let Ok(update) = self.book.apply(&t, now) {
            self.publish(&update, &t);
        }
    }
}

fn reason(text: &str) -> TransitionDetail {
    TransitionDetail {
        reason: Some(text.to_owned()),
        ..TransitionDetail::default()
    }
}
