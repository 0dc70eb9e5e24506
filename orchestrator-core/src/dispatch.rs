//! Placing pending actions on procs, and what happens when a proc agent refuses a submission or
//! a stop order cannot be carried out.
//!
//! ```text
//!  Effect::DispatchAgain (submit, heartbeat, an attempt ended, a retry) ─▶ the shell coalesces
//!  Input::Dispatch ─▶ procs of alive hosts, free = max − placed (ORC-16) ─▶ Book::schedule
//!           ─▶ publish each Submitting; per proc, one Effect::SubmitBatch
//!           ─▶ a full batch? Effect::DispatchAgain (other inputs run in between)
//!  Input::SubmitFailed ─▶ Abandoned (attempt-fenced), proc sidelined until its next heartbeat
//! ```

use procmesh_protocol::messages::agent::ActionSpec;
use procmesh_protocol::{ActionState, ActorId, AttemptRef, ProcId, Timestamp, Transition};

use crate::core::{reason_detail, Core, Step};
use crate::input::Effect;
use crate::registry::free_slots;
use crate::sched::StopOrder;

impl Core {
    /// One scheduling pass: places up to `dispatch_batch` pending actions, one
    /// [`Effect::SubmitBatch`] per proc.
    pub(crate) fn dispatch(&mut self, now: Timestamp, step: &mut Step<'_>) {
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
        if dispatches.is_empty() {
            return;
        }
        step.changed = true;
        let full = dispatches.len() >= batch;
        // One message per proc and pass: the specs placed there, in dispatch order.
        let mut per_proc: Vec<(ProcId, ActorId, Vec<ActionSpec>)> = Vec::new();
        let placed: Vec<_> = dispatches
            .into_iter()
            .map(|d| (procs[d.proc].id.clone(), d))
            .collect();
        drop(procs);
        for (proc, d) in placed {
            let attempt = d.attempt_ref();
            self.emit(d.queue, d.transition, step);
            let Some(agent) = self.registry.agent(&proc).cloned() else {
                self.submit_failed(attempt, &proc, "no agent known for the proc", now, step);
                continue;
            };
            let Some(def) = self.records.action(attempt.lsn).cloned() else {
                tracing::error!(lsn = %attempt.lsn, "no definition stored for a pending action");
                let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Failed, now)
                    .with_detail(reason_detail(
                        "the orchestrator lost the action's definition",
                    ));
                if let Ok(update) = self.book.apply(&t, now) {
                    self.publish(&update, t, step);
                }
                continue;
            };
            let spec = ActionSpec {
                lsn: attempt.lsn,
                attempt: attempt.attempt,
                priority: d.priority,
                queue: d.queue,
                action: def,
            };
            match per_proc.iter_mut().find(|(p, _, _)| *p == proc) {
                Some((_, _, specs)) => specs.push(spec),
                None => per_proc.push((proc, agent, vec![spec])),
            }
        }
        for (proc, agent, specs) in per_proc {
            step.effects
                .push(Effect::SubmitBatch { proc, agent, specs });
        }
        if full {
            step.effects.push(Effect::DispatchAgain);
        }
    }

    /// A submission failed: the attempt, if the book still has it submitting on that proc, is
    /// `Abandoned` (and retried by the queue's limit), and the proc sits out until its next
    /// heartbeat (ORC-17).
    pub(crate) fn submit_failed(
        &mut self,
        attempt: AttemptRef,
        proc: &ProcId,
        why: &str,
        now: Timestamp,
        step: &mut Step<'_>,
    ) {
        step.changed = true;
        self.registry.sideline(proc);
        let still_there = self.book.action(attempt.lsn).is_some_and(|e| {
            e.record.attempt_ref() == attempt
                && e.record.state() == ActionState::Submitting
                && e.record.location() == Some(proc)
        });
        if !still_there {
            // It ran (a Running report beat the failed reply) or ended meanwhile.
            return;
        }
        let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Abandoned, now)
            .with_detail(reason_detail(&format!("submission failed: {why}")));
        if let Ok(update) = self.book.apply(&t, now) {
            self.missing.remove(&attempt);
            self.publish(&update, t, step);
        }
        step.effects.push(Effect::DispatchAgain);
    }

    /// Tells the agent running a placed attempt to stop it; it then reports `Cancelled`. With
    /// no agent to tell, the attempt is `Cancelled` at once (ORC-24).
    pub(crate) fn stop(
        &mut self,
        order: StopOrder,
        why: &str,
        now: Timestamp,
        step: &mut Step<'_>,
    ) {
        let attempt = order.attempt;
        let agent = order
            .proc
            .as_ref()
            .and_then(|p| self.registry.agent(p))
            .cloned();
        match agent {
            Some(agent) => step.effects.push(Effect::Cancel {
                agent,
                attempt,
                reason: why.to_owned(),
            }),
            None => self.stop_failed(attempt, "no agent known for its proc", now, step),
        }
    }

    /// A stop order could not be carried out: the attempt, if still current and unfinished, is
    /// `Cancelled` by the orchestrator itself (ORC-24). Should it still run somewhere, the
    /// host's next heartbeat lists it as an orphan, and the host stops it.
    pub(crate) fn stop_failed(
        &mut self,
        attempt: AttemptRef,
        why: &str,
        now: Timestamp,
        step: &mut Step<'_>,
    ) {
        let current = self
            .book
            .action(attempt.lsn)
            .is_some_and(|e| e.record.attempt_ref() == attempt && !e.record.is_terminal());
        if !current {
            return;
        }
        let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Cancelled, now)
            .with_detail(reason_detail(&format!(
                "cancelled; the stop order failed: {why}"
            )));
        if let Ok(update) = self.book.apply(&t, now) {
            step.changed = true;
            self.missing.remove(&attempt);
            self.publish(&update, t, step);
        }
    }
}
