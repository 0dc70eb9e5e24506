//! [`Core`]: the orchestrator's whole state and the one function that changes it,
//! [`Core::handle`]. Request handlers of clients live here; hosts and agents in
//! [`crate::hosts`]; placement and stop orders in [`crate::dispatch`].

use std::collections::{BTreeMap, BTreeSet, HashSet};

use procmesh_protocol::messages::orchestrator::{
    ActionResult, OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueConfig, QueueRef,
    SubmitAction, SubscriptionTarget, UpdateOutcome,
};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_protocol::{
    ActionState, Attempt, AttemptRef, BlobHash, Lsn, Timestamp, Transition, TransitionDetail,
};
use serde::{Deserialize, Serialize};

use crate::config::CoreConfig;
use crate::events::Events;
use crate::input::{Answer, Effect, Env, Input, Outcome, Request};
use crate::records::{Records, ResultDetail};
use crate::registry::Registry;
use crate::sched::{ApplyError, Book, BookLimits, CancelOutcome, NewAction, Update};

/// Everything the orchestrator holds: the book, the records beside it, the hosts, and the
/// attempts missing from their host's heartbeats. Serialisable whole: a snapshot of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) book: Book,
    pub(crate) records: Records,
    pub(crate) registry: Registry,
    /// Placed attempts a heartbeat of their host did not mention, since when (ORC-28).
    pub(crate) missing: BTreeMap<AttemptRef, Timestamp>,
    /// Every queue's recent transitions, numbered (ORC-32).
    pub(crate) events: Events,
}

/// What one `handle` call collects: the effects, in order, and whether the state changed.
pub(crate) struct Step<'a> {
    pub env: &'a dyn Env,
    pub effects: Vec<Effect>,
    pub changed: bool,
    /// Parts of the input refused by authority checks (transitions of a batch).
    pub refused: u32,
}

impl Core {
    /// An empty orchestrator.
    pub fn new(config: CoreConfig) -> Core {
        Core {
            config,
            book: Book::new(BookLimits::default()),
            records: Records::default(),
            registry: Registry::default(),
            missing: BTreeMap::new(),
            events: Events::default(),
        }
    }

    /// Numbers a transition of `queue` and keeps it (ORC-32); publishes it if anyone follows
    /// the queue.
    pub(crate) fn emit(&mut self, queue: u64, transition: Transition, step: &mut Step<'_>) {
        let keep = self.config.event_backlog as usize;
        let seq = self.events.record(queue, &transition, keep);
        if step.env.follows(queue) {
            step.effects.push(Effect::Publish {
                queue,
                seq,
                transition,
            });
        }
    }

    /// The settings it decides by.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The book: queues, actions, placement.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// Tokens, workers, definitions, results.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Every registered host, as `ListHosts` answers (for the shell's admin view).
    pub fn host_views(&self) -> Vec<procmesh_protocol::messages::orchestrator::HostView> {
        self.registry.views(&self.book)
    }

    /// Every bound node: its name, the address it registered at, its secret (when it proves
    /// one): for the shell's admission check (ORC-38).
    pub fn node_bindings(
        &self,
    ) -> impl Iterator<Item = (&str, &procmesh_protocol::HostAddr, Option<&[u8; 32]>)> + '_ {
        self.registry.bindings()
    }

    /// The one entry point (STYLE §11, §12): applies `input` at `now` and says what to do.
    /// Nothing else changes the state.
    pub fn handle(&mut self, input: Input, now: Timestamp, env: &dyn Env) -> Outcome {
        let mut step = Step {
            env,
            effects: Vec::new(),
            changed: false,
            refused: 0,
        };
        let reply = match input {
            Input::Request(req) => self.request(req, now, &mut step),
            Input::Dispatch => {
                self.dispatch(now, &mut step);
                None
            }
            Input::Tick => {
                self.tick(now, &mut step);
                None
            }
            Input::SubmitFailed {
                attempt,
                proc,
                reason,
            } => {
                self.submit_failed(attempt, &proc, &reason, now, &mut step);
                None
            }
            Input::StopFailed { attempt, reason } => {
                self.stop_failed(attempt, &reason, now, &mut step);
                None
            }
            Input::Recovered => {
                let hosts = self.registry.recovered(now);
                tracing::info!(hosts, actions = self.book.len(), "state recovered");
                step.changed = true;
                step.effects.push(Effect::DispatchAgain);
                None
            }
            Input::Configure(config) => {
                step.changed = self.config != config;
                self.config = config;
                None
            }
        };
        Outcome {
            reply,
            changed: step.changed,
            effects: step.effects,
            refused: step.refused,
        }
    }

    /// A request's answer; `None` when an effect answers it.
    fn request(&mut self, req: Request, now: Timestamp, step: &mut Step<'_>) -> Option<Answer> {
        use OrchestratorRequest as R;
        let loopback = req.loopback;
        if let Some(peer) = &req.peer {
            if let Err(error) = self.authorize(&req.message, &req.from, peer) {
                return Some(Err(error));
            }
        }
        let peer = req.peer.as_ref();
        let answer = match req.message {
            R::RegisterHost(info) => self.register_host(info, peer, now, step),
            R::Heartbeat(heartbeat) => self.heartbeat(heartbeat, now, step),
            R::ProcLost {
                proc_id, reason, ..
            } => {
                self.proc_lost(&proc_id, &reason, now, step);
                Ok(OrchestratorReply::Ack)
            }
            R::ActionUpdate(t) => self.action_update(t, now, step),
            R::ActionUpdates(transitions) => {
                // Each on its own, in order: one refused (stale, unknown) does not hold up the
                // rest.
                for t in transitions {
                    // ORC-35, for each transition of the batch (the batch's sender was checked
                    // by `authorize`). Checked on replay too: it depends on the state, not on
                    // the connection, and a batch is journaled whole once any of it applied,
                    // so a refused transition must stay refused when the journal is replayed
                    // (ORC-26).
                    if let Err(error) = self.check_placed(&t, &req.from) {
                        tracing::warn!(%error, lsn = %t.lsn, "update of a batch refused");
                        step.refused += 1;
                        continue;
                    }
                    if let Err(error) = self.action_update(t, now, step) {
                        tracing::debug!(%error, "update of a batch refused");
                    }
                }
                Ok(OrchestratorReply::Ack)
            }
            R::GetWorker(id) => self
                .records
                .worker(&id)
                .cloned()
                .map(OrchestratorReply::Worker)
                .ok_or(OrchestratorError::UnknownWorker(id)),
            R::CreateQueue(config) => self.create_queue(config, req.token, step),
            R::QueueStatus(queue) => self
                .queue(queue, loopback)
                .and_then(|id| Ok(OrchestratorReply::QueueStatus(self.book.status(id)?))),
            R::ListResults {
                queue,
                after,
                limit,
            } => self
                .queue(queue, loopback)
                .and_then(|id| Ok(OrchestratorReply::Results(self.results(id, after, limit)?))),
            R::Retire { queue, lsns } => self
                .queue(queue, loopback)
                .and_then(|id| self.retire(id, &lsns, step)),
            R::Drain(queue) => self.queue(queue, loopback).and_then(|id| {
                self.book.drain(id)?;
                step.changed = true;
                let status = self.book.status(id)?;
                if status.is_complete && step.env.follows(id) {
                    step.effects.push(Effect::QueueComplete(status));
                }
                Ok(OrchestratorReply::Ack)
            }),
            R::CancelQueue(queue) => self
                .queue(queue, loopback)
                .and_then(|id| self.cancel_queue(id, now, step)),
            R::CancelAction { queue, lsn } => self
                .queue(queue, loopback)
                .and_then(|id| self.cancel_action(id, lsn, now, step)),
            R::Reschedule { queue, lsn } => self.queue(queue, loopback).and_then(|id| {
                let t = self.book.reschedule(id, lsn, now)?;
                step.changed = true;
                let attempt = t.attempt;
                self.emit(id, t, step);
                step.effects.push(Effect::DispatchAgain);
                Ok(OrchestratorReply::Rescheduled { attempt })
            }),
            R::SetPriority {
                queue,
                lsn,
                priority,
            } => self.queue(queue, loopback).and_then(|id| {
                self.book.set_priority(id, lsn, priority)?;
                step.changed = true;
                Ok(OrchestratorReply::Ack)
            }),
            R::GetAction { queue, lsn } => self.queue(queue, loopback).and_then(|id| {
                Ok(OrchestratorReply::Action(
                    self.book.action_in(id, lsn)?.view(),
                ))
            }),
            R::RegisterWorker(descriptor) => self.register_worker(descriptor, step),
            R::MissingBlobs(hashes) => Ok(OrchestratorReply::MissingBlobs(
                hashes
                    .into_iter()
                    .filter(|h| !step.env.has_blob(h))
                    .collect(),
            )),
            R::Submit { queue, actions } => self
                .queue(queue, loopback)
                .and_then(|id| self.submit(id, actions, now, step)),
            R::Subscribe {
                target,
                subscriber,
                from,
                events,
            } => {
                let resolved = match target {
                    SubscriptionTarget::Queue(queue) => {
                        self.queue(queue, loopback).map(|id| (id, None))
                    }
                    SubscriptionTarget::Action { queue, lsn } => {
                        self.queue(queue, loopback).and_then(|id| {
                            self.book.action_in(id, lsn)?;
                            Ok((id, Some(lsn)))
                        })
                    }
                };
                match resolved {
                    Ok((queue, lsn)) => {
                        let backlog = match from {
                            Some(from) => self.events.since(queue, from, lsn),
                            None => crate::events::Backlog {
                                next: self.events.next(queue),
                                ..Default::default()
                            },
                        };
                        step.effects.push(Effect::Subscribe {
                            queue,
                            lsn,
                            subscriber,
                            backlog,
                            events,
                        });
                        return None;
                    }
                    Err(error) => Err(error),
                }
            }
            R::Unsubscribe { subscription } => {
                // ORC-25: the shell ends it only for the proc that made it.
                step.effects.push(Effect::Unsubscribe {
                    subscription,
                    requester: req.from.proc_id().clone(),
                    end: true,
                });
                return None;
            }
            R::CheckSubscription { subscription } => {
                step.effects.push(Effect::Unsubscribe {
                    subscription,
                    requester: req.from.proc_id().clone(),
                    end: false,
                });
                return None;
            }
            R::ListHosts => Ok(OrchestratorReply::Hosts(self.registry.views(&self.book))),
            // Read-only (not journaled, `Input::may_change_state`); the queue access of
            // `GetAction` (ORC-15); other queues' occupants named only to an operator.
            R::Explain { queue, lsn } => self.queue(queue, loopback).and_then(|id| {
                self.book.action_in(id, lsn)?;
                let operator = peer.is_none_or(|p| p.role == crate::PeerRole::Operator);
                self.explain_as(lsn, now, operator)
                    .map(|e| OrchestratorReply::Explained(Box::new(e)))
                    .ok_or_else(|| crate::sched::BookError::UnknownAction(lsn).into())
            }),
        };
        Some(answer)
    }

    /// Which queue `queue` names, for a request from loopback or not (ORC-15): an integer id
    /// only from loopback, a token from anywhere; a wrong token or id is an unknown queue.
    pub fn queue(&self, queue: QueueRef, loopback: bool) -> Result<u64, OrchestratorError> {
        match queue {
            QueueRef::Id(_) if !loopback => Err(OrchestratorError::Forbidden),
            QueueRef::Id(id) => self
                .book
                .queue(id)
                .map(|_| id)
                .map_err(|_| OrchestratorError::UnknownQueue(queue.to_string())),
            QueueRef::Token(token) => self
                .records
                .queue_by_token(&token)
                .ok_or_else(|| OrchestratorError::UnknownQueue(queue.to_string())),
        }
    }

    // ---- actions --------------------------------------------------------------------------

    fn action_update(&mut self, t: Transition, now: Timestamp, step: &mut Step<'_>) -> Answer {
        match self.book.apply(&t, now) {
            Ok(update) => {
                step.changed = true;
                self.missing.remove(&t.attempt_ref());
                if update.finished {
                    let detail = ResultDetail {
                        outputs: t.detail.outputs.clone(),
                        stdout_tail: t.detail.stdout_tail.clone(),
                        stderr_tail: t.detail.stderr_tail.clone(),
                    };
                    self.records.put_result(t.lsn, detail);
                }
                let applied = update.applied;
                let t = Transition {
                    at: applied.at,
                    ..t
                };
                self.publish(&update, t, step);
                Ok(OrchestratorReply::Updated(UpdateOutcome::Applied(applied)))
            }
            Err(ApplyError::Ignored(ignored)) => {
                if ignored.is_violation() {
                    tracing::warn!(%ignored, lsn = %t.lsn, attempt = %t.attempt, "update refused");
                } else {
                    tracing::debug!(%ignored, lsn = %t.lsn, attempt = %t.attempt, "update ignored");
                }
                Ok(OrchestratorReply::Updated(UpdateOutcome::Ignored(ignored)))
            }
            Err(ApplyError::UnknownAction(lsn)) => Err(OrchestratorError::UnknownAction(lsn)),
        }
    }

    /// Publishes an applied update: the transition, the retry's `Pending`, the queue's
    /// completion; and lets the dispatcher use what it freed.
    pub(crate) fn publish(&mut self, update: &Update, applied: Transition, step: &mut Step<'_>) {
        self.emit(update.queue, applied, step);
        if let Some(retry) = &update.retry {
            self.emit(update.queue, retry.clone(), step);
        }
        if update.applied.to.is_terminal() {
            step.effects.push(Effect::DispatchAgain);
        }
        if update.finished && update.queue_complete && step.env.follows(update.queue) {
            if let Ok(status) = self.book.status(update.queue) {
                step.effects.push(Effect::QueueComplete(status));
            }
        }
    }

    /// Publishes updates the book made itself (losses, cancellations): their transitions carry
    /// `reason`.
    pub(crate) fn publish_updates(
        &mut self,
        updates: &[Update],
        reason: &str,
        step: &mut Step<'_>,
    ) {
        for update in updates {
            step.changed = true;
            self.missing.remove(&AttemptRef {
                lsn: update.lsn,
                attempt: update.attempt,
            });
            let t = Transition::new(
                update.lsn,
                update.attempt,
                update.applied.to,
                update.applied.at,
            )
            .with_detail(reason_detail(reason));
            self.publish(update, t, step);
        }
    }

    fn create_queue(
        &mut self,
        config: QueueConfig,
        token: Option<procmesh_protocol::messages::orchestrator::QueueToken>,
        step: &mut Step<'_>,
    ) -> Answer {
        let token = token.ok_or_else(|| {
            OrchestratorError::Internal("no token was drawn for the new queue".into())
        })?;
        if self.records.queue_by_token(&token).is_some() {
            return Err(OrchestratorError::Internal(
                "the drawn token is taken; ask again".into(),
            ));
        }
        let name = config.name.clone();
        let id = self.book.create_queue(config);
        self.records.put_queue(id, token);
        step.changed = true;
        tracing::info!(queue = id, %name, "queue created");
        Ok(OrchestratorReply::QueueCreated { id, token })
    }

    fn results(
        &self,
        queue: u64,
        after: Option<Lsn>,
        limit: Option<u32>,
    ) -> Result<Vec<ActionResult>, OrchestratorError> {
        let page = self.config.result_page;
        let limit = limit.unwrap_or(page).min(page) as usize;
        let records = self.book.results(queue, after, limit)?;
        Ok(records
            .into_iter()
            .map(|record| {
                let detail = self.records.result(record.lsn());
                ActionResult {
                    record: record.clone(),
                    outputs: detail.map(|d| d.outputs.clone()).unwrap_or_default(),
                    stdout_tail: detail.map(|d| d.stdout_tail.clone()).unwrap_or_default(),
                    stderr_tail: detail.map(|d| d.stderr_tail.clone()).unwrap_or_default(),
                    tickets: Vec::new(),
                }
            })
            .collect())
    }

    fn retire(&mut self, queue: u64, lsns: &[Lsn], step: &mut Step<'_>) -> Answer {
        let count = self.book.retire(queue, lsns)?;
        let gone: Vec<Lsn> = lsns
            .iter()
            .copied()
            .filter(|lsn| self.book.action(*lsn).is_none())
            .collect();
        self.records.remove(&gone);
        if self.book.status(queue).is_ok_and(|s| s.counts.total() == 0) {
            self.events.forget(queue);
        }
        step.changed = true;
        Ok(OrchestratorReply::Retired { count })
    }

    fn cancel_queue(&mut self, queue: u64, now: Timestamp, step: &mut Step<'_>) -> Answer {
        let reason = "the queue was cancelled";
        let outcome = self.book.cancel_queue(queue, reason, now)?;
        step.changed = true;
        let count = outcome.count();
        tracing::info!(
            queue,
            cancelled = outcome.cancelled.len(),
            stopping = outcome.stopping.len(),
            "queue cancelled"
        );
        self.publish_updates(&outcome.cancelled, reason, step);
        for order in outcome.stopping {
            self.stop(order, reason, now, step);
        }
        Ok(OrchestratorReply::Cancelled { count })
    }

    fn cancel_action(
        &mut self,
        queue: u64,
        lsn: Lsn,
        now: Timestamp,
        step: &mut Step<'_>,
    ) -> Answer {
        let reason = "the action was cancelled";
        let count = match self.book.cancel(queue, lsn, reason, now)? {
            CancelOutcome::Cancelled(update) => {
                self.publish_updates(&[update], reason, step);
                1
            }
            CancelOutcome::Stopping(order) => {
                step.changed = true;
                self.stop(order, reason, now, step);
                1
            }
            CancelOutcome::AlreadyFinished(_) => 0,
        };
        Ok(OrchestratorReply::Cancelled { count })
    }

    // ---- workers and submission -----------------------------------------------------------

    fn register_worker(&mut self, descriptor: WorkerDescriptor, step: &mut Step<'_>) -> Answer {
        descriptor
            .validate()
            .map_err(OrchestratorError::InvalidWorker)?;
        let blobs = descriptor.blobs();
        let id = self.records.put_worker(descriptor);
        step.changed = true;
        let missing = blobs
            .into_iter()
            .filter(|h| !step.env.has_blob(h))
            .collect();
        Ok(OrchestratorReply::WorkerRegistered { id, missing })
    }

    /// Accepts a batch, all or nothing (ORC-23): every check runs before anything changes.
    fn submit(
        &mut self,
        queue: u64,
        actions: Vec<SubmitAction>,
        now: Timestamp,
        step: &mut Step<'_>,
    ) -> Answer {
        let max = self.config.max_submit_batch;
        if actions.len() > max as usize {
            return Err(OrchestratorError::BatchTooLarge {
                len: actions.len() as u64,
                max: u64::from(max),
            });
        }
        let mut workers: HashSet<WorkerId> = HashSet::new();
        let mut checked: HashSet<BlobHash> = HashSet::new();
        let mut missing: BTreeSet<BlobHash> = BTreeSet::new();
        for (index, submit) in actions.iter().enumerate() {
            let action = &submit.action;
            action
                .validate()
                .map_err(|error| OrchestratorError::InvalidAction {
                    index: index as u32,
                    error,
                })?;
            if workers.insert(action.worker) {
                let worker = self
                    .records
                    .worker(&action.worker)
                    .ok_or(OrchestratorError::UnknownWorker(action.worker))?;
                for hash in worker.blobs() {
                    if checked.insert(hash) && !step.env.has_blob(&hash) {
                        missing.insert(hash);
                    }
                }
            }
            for input in &action.inputs {
                if checked.insert(input.hash) && !step.env.has_blob(&input.hash) {
                    missing.insert(input.hash);
                }
            }
        }
        if !missing.is_empty() {
            return Err(OrchestratorError::MissingBlobs(
                missing.into_iter().collect(),
            ));
        }
        let new: Vec<NewAction> = actions.iter().map(NewAction::from).collect();
        let submitted = self.book.submit_batch(queue, new, now)?;
        step.changed = true;
        let lsns: Vec<Lsn> = submitted.iter().map(|s| s.lsn).collect();
        let created: Vec<(Lsn, _)> = submitted
            .iter()
            .zip(actions)
            .filter(|(s, _)| s.created)
            .map(|(s, a)| (s.lsn, a.action))
            .collect();
        let fresh: Vec<Lsn> = created.iter().map(|(lsn, _)| *lsn).collect();
        self.records.put_actions(created);
        for lsn in fresh.iter().copied() {
            let at = self
                .book
                .action(lsn)
                .and_then(|e| e.record.entered(ActionState::Pending))
                .unwrap_or(now);
            self.emit(
                queue,
                Transition::new(lsn, Attempt::FIRST, ActionState::Pending, at),
                step,
            );
        }
        if !fresh.is_empty() {
            tracing::debug!(queue, accepted = fresh.len(), "actions submitted");
            step.effects.push(Effect::DispatchAgain);
        }
        Ok(OrchestratorReply::Submitted { lsns })
    }

    // ---- checks ---------------------------------------------------------------------------

    /// Recounts the book (ORC-8, ORC-12) and checks the records against it (ORC-19); says what
    /// is wrong. O(actions).
    pub fn audit(&self) -> Result<(), String> {
        self.book.audit()?;
        if self.records.action_count() != self.book.len() {
            return Err(format!(
                "the records hold {} actions, the book {}",
                self.records.action_count(),
                self.book.len()
            ));
        }
        Ok(())
    }
}

/// A transition detail that only says why.
pub(crate) fn reason_detail(text: &str) -> TransitionDetail {
    TransitionDetail {
        reason: Some(text.to_owned()),
        ..TransitionDetail::default()
    }
}
