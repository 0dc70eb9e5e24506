//! [`Book`]: every queue and every unretired action of an orchestrator, and the decisions that
//! move them — submission, scheduling, transitions, retries, cancellation, results (ORC-1 …
//! ORC-14).
//!
//! ```text
//!  actions   Store<Entry>               record (ACT-10) + queue id + priority    every action
//!  pending   PendingIndex               (priority ↓, LSN ↑)                       Pending ones
//!  placed    BTreeMap<ProcId, {Lsn}>    where Submitting/Running ones are        placed ones
//!  queues    BTreeMap<u64, QueueBook>   counts, live/finished, keys              every action
//!  requires  HashMap<Lsn, Labels>       host labels an action needs              few actions
//!  stories   HashMap<Lsn, [AttemptStory]> ended attempts before the current one    retried ones
//! ```
//!
//! `stories` keeps, for an action that was retried (automatically or by a reschedule), the
//! attempts that ended before its current one — where, when, how and why — at most
//! [`MAX_STORIES`] of them, oldest dropped first. The current attempt is read from the record,
//! so an action never retried costs nothing here. Stories are written where records move back
//! to `Pending` (the retry in [`Book::step`] and [`Book::reschedule`]), removed on retire, part
//! of the snapshot (`serde(default)`: older snapshots load without them) and, being a function
//! of the inputs, rebuilt identically by a replay (ORC-26).
//!
//! Every structure beside `actions` is a function of the records, and every change goes through
//! one place ([`Book::apply`] and its callers), so they never drift apart ([`Book::audit`]
//! recounts them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use procmesh_protocol::action::{
    ActionRecord, ActionState, AttemptRef, Lsn, Timestamp, Transition, TransitionDetail,
};
use procmesh_protocol::ids::{HostAddr, ProcId};
use procmesh_protocol::messages::orchestrator::{
    AttemptStory, QueueConfig, QueueStatus, StateCounts,
};

use super::outcome::{
    ActionEntry, ApplyError, BookError, BookLimits, CancelOutcome, Dispatch, NewAction,
    QueueCancel, StopOrder, Submitted, Update,
};
use super::pending::PendingIndex;
use super::placement::{Candidate, Labels, Offer, Placer, ProcFree};
use super::queue::QueueBook;
use super::retry::{self, RetryDecision};
use super::store::{LsnMap, Store};

/// One action: 120 bytes (ACT-10's record, its queue and priority), also as `Option<Entry>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    record: ActionRecord,
    queue: u64,
    priority: i32,
}

/// How many ended attempts an action's story keeps (the oldest are dropped first).
pub const MAX_STORIES: usize = 32;

/// The story of `record`'s current attempt, as far as it went.
pub fn story_of(record: &ActionRecord) -> AttemptStory {
    let state = record.state();
    AttemptStory {
        attempt: record.attempt(),
        proc: record.location().cloned(),
        queued: record.entered(ActionState::Pending),
        placed: record.entered(ActionState::Submitting),
        started: record.entered(ActionState::Running),
        ended: if state.is_terminal() {
            record.entered(state)
        } else {
            None
        },
        state,
        reason: record.last_error().map(str::to_owned),
        exit: record.exit(),
    }
}

fn remember(stories: &mut LsnMap<VecDeque<AttemptStory>>, lsn: Lsn, ended: AttemptStory) {
    let story = stories.entry(lsn).or_default();
    if story.len() >= MAX_STORIES {
        story.pop_front();
    }
    story.push_back(ended);
}

fn is_placed(state: ActionState) -> bool {
    matches!(state, ActionState::Submitting | ActionState::Running)
}

/// Every queue and every unretired action, and the decisions that move them. Plain data: time is
/// an argument, decisions come back as values for the driver to carry out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    limits: BookLimits,
    queues: BTreeMap<u64, QueueBook>,
    actions: Store<Entry>,
    pending: PendingIndex,
    placed: BTreeMap<ProcId, BTreeSet<Lsn>>,
    cancelling: BTreeSet<Lsn>,
    requires: LsnMap<Labels>,
    #[serde(default)]
    stories: LsnMap<VecDeque<AttemptStory>>,
    counts: StateCounts,
    last_lsn: u64,
    last_queue: u64,
}

impl Book {
    /// An empty book.
    pub fn new(limits: BookLimits) -> Book {
        Book {
            limits,
            ..Book::default()
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &BookLimits {
        &self.limits
    }

    /// How many unretired actions it holds.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether it holds no action.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// How many unretired actions are in each state, over every queue.
    pub fn counts(&self) -> &StateCounts {
        &self.counts
    }

    /// The pending actions in dispatch order (ORC-1).
    pub fn pending(&self) -> &PendingIndex {
        &self.pending
    }

    /// The last LSN assigned (0 before the first).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.last_lsn)
    }

    // ---- queues ---------------------------------------------------------------------------

    /// Creates a queue and returns its id (1, 2, …). Its token is the driver's to draw.
    pub fn create_queue(&mut self, config: QueueConfig) -> u64 {
        self.last_queue += 1;
        let id = self.last_queue;
        let queue = QueueBook::new(id, config, self.limits.max_keys_per_queue);
        self.queues.insert(id, queue);
        id
    }

    /// A queue.
    pub fn queue(&self, id: u64) -> Result<&QueueBook, BookError> {
        self.queues.get(&id).ok_or(BookError::UnknownQueue(id))
    }

    /// Every queue, by id.
    pub fn queues(&self) -> impl Iterator<Item = &QueueBook> + '_ {
        self.queues.values()
    }

    /// A queue's status.
    pub fn status(&self, id: u64) -> Result<QueueStatus, BookError> {
        Ok(self.queue(id)?.status())
    }

    /// Stops a queue accepting new actions; the rest finish (ORC-10).
    pub fn drain(&mut self, id: u64) -> Result<(), BookError> {
        self.queues
            .get_mut(&id)
            .ok_or(BookError::UnknownQueue(id))?
            .drain();
        Ok(())
    }

    // ---- actions --------------------------------------------------------------------------

    /// One action.
    pub fn action(&self, lsn: Lsn) -> Option<ActionEntry<'_>> {
        let entry = self.actions.get(&lsn)?;
        Some(ActionEntry {
            record: &entry.record,
            queue: entry.queue,
            priority: entry.priority,
            requires: self.requires.get(&lsn),
        })
    }

    /// One action of a queue; an action of another queue is unknown.
    pub fn action_in(&self, queue: u64, lsn: Lsn) -> Result<ActionEntry<'_>, BookError> {
        self.queue(queue)?;
        self.action(lsn)
            .filter(|entry| entry.queue == queue)
            .ok_or(BookError::UnknownAction(lsn))
    }

    /// The ended attempts kept for an action before its current one, oldest first (empty for an
    /// action never retried).
    pub fn stories(&self, lsn: Lsn) -> impl Iterator<Item = &AttemptStory> + '_ {
        self.stories.get(&lsn).into_iter().flatten()
    }

    /// Whether cancelling this placed action was asked for (it will not be retried).
    pub fn is_cancelling(&self, lsn: Lsn) -> bool {
        self.cancelling.contains(&lsn)
    }

    /// The actions placed on `proc` (`Submitting` or `Running` there), in LSN order.
    pub fn placed_on(&self, proc: &ProcId) -> impl Iterator<Item = Lsn> + '_ {
        self.placed.get(proc).into_iter().flatten().copied()
    }

    /// Submits one action at `now`: a new action is `Pending` at once with the next LSN; a key
    /// the queue remembers answers with its LSN and creates nothing (ORC-9), even in a draining
    /// queue. A closed queue refuses new actions (ORC-10).
    pub fn submit(
        &mut self,
        queue: u64,
        action: NewAction,
        now: Timestamp,
    ) -> Result<Submitted, BookError> {
        self.check_key(&action)?;
        let q = self.queue(queue)?;
        if let Some(lsn) = action.idempotency_key.as_deref().and_then(|k| q.key(k)) {
            return Ok(Submitted {
                lsn,
                created: false,
            });
        }
        Self::check_open(q)?;
        Ok(self.create(queue, action, now))
    }

    /// Submits a batch, all or nothing: if one action would be refused, none is created.
    pub fn submit_batch(
        &mut self,
        queue: u64,
        actions: Vec<NewAction>,
        now: Timestamp,
    ) -> Result<Vec<Submitted>, BookError> {
        let q = self.queue(queue)?;
        for action in &actions {
            self.check_key(action)?;
        }
        let creates = actions.iter().any(|a| match &a.idempotency_key {
            Some(key) => q.key(key).is_none(),
            None => true,
        });
        if creates {
            Self::check_open(q)?;
        }
        actions
            .into_iter()
            .map(|action| self.submit(queue, action, now))
            .collect()
    }

    fn check_key(&self, action: &NewAction) -> Result<(), BookError> {
        match &action.idempotency_key {
            Some(key) if key.len() > self.limits.max_key_len => Err(BookError::KeyTooLong {
                len: key.len(),
                max: self.limits.max_key_len,
            }),
            _ => Ok(()),
        }
    }

    fn check_open(q: &QueueBook) -> Result<(), BookError> {
        if q.is_cancelled() {
            Err(BookError::QueueCancelled(q.id()))
        } else if q.is_draining() {
            Err(BookError::QueueDraining(q.id()))
        } else {
            Ok(())
        }
    }

    fn create(&mut self, queue: u64, action: NewAction, now: Timestamp) -> Submitted {
        self.last_lsn += 1;
        let lsn = Lsn(self.last_lsn);
        let mut record = ActionRecord::new(lsn, now);
        // A fresh record always accepts New → Pending (ACT-1).
        let _ = record.apply(&record.transition_to(ActionState::Pending, now));
        let Some(q) = self.queues.get_mut(&queue) else {
            unreachable!("the caller checked the queue");
        };
        let priority = action.priority.unwrap_or(q.config().default_priority);
        q.add(lsn, record.state(), action.idempotency_key.as_deref());
        self.counts.add(record.state());
        self.pending.insert(lsn, priority);
        if !action.requires.is_empty() {
            self.requires.insert(lsn, action.requires);
        }
        self.actions.insert(
            lsn,
            Entry {
                record,
                queue,
                priority,
            },
        );
        Submitted { lsn, created: true }
    }

    // ---- scheduling -----------------------------------------------------------------------

    /// Places up to `max_batch` pending actions, in dispatch order, on `procs` (ORC-2 … ORC-5),
    /// and moves each to `Submitting` at `now` with its proc as location. Looks at no more than
    /// [`BookLimits::max_scan`] pending actions.
    pub fn schedule(
        &mut self,
        procs: &[ProcFree<'_>],
        max_batch: usize,
        now: Timestamp,
    ) -> Vec<Dispatch> {
        let assignments = {
            let mut placer = Placer::new(procs, max_batch);
            for (lsn, _) in self.pending.iter().take(self.limits.max_scan) {
                let candidate = Candidate {
                    lsn,
                    requires: self.requires.get(&lsn),
                };
                if placer.offer(candidate) == Offer::Full {
                    break;
                }
            }
            placer.finish()
        };
        let mut dispatches = Vec::with_capacity(assignments.len());
        for a in assignments {
            let (Some(entry), Some(proc)) = (self.actions.get(&a.lsn), procs.get(a.proc)) else {
                continue;
            };
            let (queue, priority) = (entry.queue, entry.priority);
            let transition = entry
                .record
                .transition_to(ActionState::Submitting, now)
                .with_detail(TransitionDetail {
                    location: Some(proc.id.clone()),
                    ..TransitionDetail::default()
                });
            if let Ok(update) = self.step(&transition, now) {
                dispatches.push(Dispatch {
                    queue,
                    priority,
                    proc: a.proc,
                    transition: Transition {
                        at: update.applied.at,
                        ..transition
                    },
                });
            }
        }
        dispatches
    }

    // ---- transitions ----------------------------------------------------------------------

    /// Applies a transition reported for an action (by its proc, or the driver's own), fenced by
    /// the record (ACT-1 … ACT-7), and retries an ended attempt if the queue's limit allows
    /// (ORC-6); `now` stamps a retry. A refused transition changes nothing (ORC-14).
    pub fn apply(&mut self, t: &Transition, now: Timestamp) -> Result<Update, ApplyError> {
        self.step(t, now)
    }

    /// The one place where records move: applies `t` and keeps every index in step (ORC-8,
    /// ORC-12).
    fn step(&mut self, t: &Transition, now: Timestamp) -> Result<Update, ApplyError> {
        let entry = self
            .actions
            .get_mut(&t.lsn)
            .ok_or(ApplyError::UnknownAction(t.lsn))?;
        let lsn = t.lsn;
        let from = entry.record.state();
        let was_placed = is_placed(from);
        let old_location = if was_placed && (t.state.is_terminal() || t.detail.location.is_some()) {
            entry.record.location().cloned()
        } else {
            None
        };
        // ACT-9: a refused transition leaves the record as it was; nothing below runs.
        let applied = entry.record.apply(t)?;
        let to = applied.to;
        let now_placed = is_placed(to);
        let moved = t.detail.location.is_some() && old_location.as_ref() != entry.record.location();

        // ORC-1: the pending index holds exactly the Pending actions.
        if from == ActionState::Pending {
            self.pending.remove(lsn);
        }
        if to == ActionState::Pending {
            self.pending.insert(lsn, entry.priority);
        }
        // ORC-12: the placed index holds exactly the placed actions with a location.
        if was_placed && (!now_placed || moved) {
            if let Some(old) = &old_location {
                unplace(&mut self.placed, old, lsn);
            }
        }
        if now_placed && (!was_placed || moved) {
            if let Some(location) = entry.record.location() {
                self.placed.entry(location.clone()).or_default().insert(lsn);
            }
        }
        // ORC-8: counts follow every move.
        let queue_id = entry.queue;
        let Some(queue) = self.queues.get_mut(&queue_id) else {
            unreachable!("queues are never removed");
        };
        queue.moved(lsn, from, to);
        self.counts.moved(from, to);

        let mut retry = None;
        let mut finished = false;
        if to.is_terminal() {
            let cancelling = queue.is_cancelled() || self.cancelling.contains(&lsn);
            let decision = retry::decide(&entry.record, queue.config().retry_limit, cancelling);
            match decision {
                RetryDecision::Retry => match (story_of(&entry.record), entry.record.retry(now)) {
                    // The ended attempt's story was taken before the retry cleared it.
                    (ended, Ok(attempt)) => {
                        remember(&mut self.stories, lsn, ended);
                        queue.moved(lsn, to, ActionState::Pending);
                        self.counts.moved(to, ActionState::Pending);
                        self.pending.insert(lsn, entry.priority);
                        let at = entry.record.entered(ActionState::Pending).unwrap_or(now);
                        retry = Some(Transition::new(lsn, attempt, ActionState::Pending, at));
                    }
                    (_, Err(_)) => finished = true,
                },
                RetryDecision::GiveUp(_) => finished = true,
            }
            if finished {
                self.cancelling.remove(&lsn);
            }
        }
        Ok(Update {
            lsn,
            queue: queue_id,
            attempt: t.attempt,
            applied,
            retry,
            finished,
            queue_complete: queue.is_complete(),
        })
    }

    /// A proc died: each of its placed actions becomes `Abandoned` at `now` and is retried per
    /// ORC-6 (ORC-12).
    pub fn proc_lost(&mut self, proc: &ProcId, reason: &str, now: Timestamp) -> Vec<Update> {
        let lsns: Vec<Lsn> = self.placed_on(proc).collect();
        let mut updates = Vec::with_capacity(lsns.len());
        for lsn in lsns {
            let Some(entry) = self.actions.get(&lsn) else {
                continue;
            };
            let t = entry
                .record
                .transition_to(ActionState::Abandoned, now)
                .with_detail(TransitionDetail {
                    reason: Some(reason.to_owned()),
                    ..TransitionDetail::default()
                });
            if let Ok(update) = self.step(&t, now) {
                updates.push(update);
            }
        }
        updates
    }

    /// Every attempt placed (`Submitting` or `Running`) on a proc of the host at `addr`, with
    /// the time it was placed.
    pub fn placed_at_host<'a>(
        &'a self,
        addr: &'a HostAddr,
    ) -> impl Iterator<Item = (AttemptRef, Timestamp)> + 'a {
        self.placed
            .iter()
            .filter(move |(p, _)| p.addr() == addr)
            .flat_map(|(_, lsns)| lsns.iter())
            .filter_map(|lsn| {
                let record = &self.actions.get(lsn)?.record;
                let since = record.entered(ActionState::Submitting)?;
                Some((record.attempt_ref(), since))
            })
    }

    /// A host was lost: [`proc_lost`](Self::proc_lost) for each of its procs.
    pub fn host_lost(&mut self, addr: &HostAddr, reason: &str, now: Timestamp) -> Vec<Update> {
        let procs: Vec<ProcId> = self
            .placed
            .keys()
            .filter(|p| p.addr() == addr)
            .cloned()
            .collect();
        procs
            .iter()
            .flat_map(|p| self.proc_lost(p, reason, now))
            .collect()
    }

    /// Of the attempts a host at `addr` reports running, those the book does not place there:
    /// unknown or retired actions, other attempts, actions not placed, or placed elsewhere. The
    /// host should stop them.
    pub fn orphans(&self, addr: &HostAddr, running: &[AttemptRef]) -> Vec<AttemptRef> {
        running
            .iter()
            .filter(|a| match self.actions.get(&a.lsn) {
                None => true,
                Some(entry) => {
                    entry.record.attempt() != a.attempt
                        || !is_placed(entry.record.state())
                        || entry.record.location().map(ProcId::addr) != Some(addr)
                }
            })
            .copied()
            .collect()
    }

    // ---- client requests ------------------------------------------------------------------

    /// Cancels one action (ORC-10): one not placed yet is `Cancelled` at once; a placed one is
    /// returned for its proc to stop, and will not be retried whatever it ends with.
    pub fn cancel(
        &mut self,
        queue: u64,
        lsn: Lsn,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome, BookError> {
        let record = self.action_in(queue, lsn)?.record;
        let state = record.state();
        if state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(state));
        }
        if is_placed(state) {
            let order = StopOrder {
                attempt: record.attempt_ref(),
                proc: record.location().cloned(),
            };
            self.cancelling.insert(lsn);
            return Ok(CancelOutcome::Stopping(order));
        }
        let t = record
            .transition_to(ActionState::Cancelled, now)
            .with_detail(TransitionDetail {
                reason: Some(reason.to_owned()),
                ..TransitionDetail::default()
            });
        match self.step(&t, now) {
            Ok(update) => Ok(CancelOutcome::Cancelled(update)),
            // New or Pending always accept Cancelled (ACT-1); keep the answer truthful anyway.
            Err(_) => Err(BookError::UnknownAction(lsn)),
        }
    }

    /// Cancels a queue (ORC-10): it accepts nothing more, its unplaced actions are `Cancelled`
    /// now, its placed ones returned for their procs to stop.
    pub fn cancel_queue(
        &mut self,
        queue: u64,
        reason: &str,
        now: Timestamp,
    ) -> Result<QueueCancel, BookError> {
        let q = self
            .queues
            .get_mut(&queue)
            .ok_or(BookError::UnknownQueue(queue))?;
        q.cancel();
        let live: Vec<Lsn> = q.live().collect();
        let mut out = QueueCancel::default();
        for lsn in live {
            match self.cancel(queue, lsn, reason, now)? {
                CancelOutcome::Cancelled(update) => out.cancelled.push(update),
                CancelOutcome::Stopping(order) => out.stopping.push(order),
                CancelOutcome::AlreadyFinished(_) => {}
            }
        }
        Ok(out)
    }

    /// Sends a `Failed` or `Abandoned` action back to `Pending` at `now` whatever the retry
    /// limit (ORC-7), returning the new attempt's `Pending` transition. Refused in a cancelled
    /// queue; allowed in a draining one (it is not a new action).
    pub fn reschedule(
        &mut self,
        queue: u64,
        lsn: Lsn,
        now: Timestamp,
    ) -> Result<Transition, BookError> {
        let q = self.queue(queue)?;
        if q.is_cancelled() {
            return Err(BookError::QueueCancelled(queue));
        }
        retry::check_reschedule(self.action_in(queue, lsn)?.record)?;
        let (Some(entry), Some(q)) = (self.actions.get_mut(&lsn), self.queues.get_mut(&queue))
        else {
            return Err(BookError::UnknownAction(lsn));
        };
        let from = entry.record.state();
        let ended = story_of(&entry.record);
        let attempt = entry.record.retry(now)?;
        remember(&mut self.stories, lsn, ended);
        q.moved(lsn, from, ActionState::Pending);
        self.counts.moved(from, ActionState::Pending);
        self.pending.insert(lsn, entry.priority);
        let at = entry.record.entered(ActionState::Pending).unwrap_or(now);
        Ok(Transition::new(lsn, attempt, ActionState::Pending, at))
    }

    /// Changes the priority of a pending action, re-ordering it (ORC-1); returns the old one.
    pub fn set_priority(&mut self, queue: u64, lsn: Lsn, priority: i32) -> Result<i32, BookError> {
        let state = self.action_in(queue, lsn)?.record.state();
        if state != ActionState::Pending {
            return Err(BookError::NotPending { lsn, state });
        }
        let Some(entry) = self.actions.get_mut(&lsn) else {
            return Err(BookError::UnknownAction(lsn));
        };
        let old = std::mem::replace(&mut entry.priority, priority);
        self.pending.set_priority(lsn, priority);
        Ok(old)
    }

    /// A queue's final actions not yet retired, in LSN order: after `after`, at most `limit`.
    pub fn results(
        &self,
        queue: u64,
        after: Option<Lsn>,
        limit: usize,
    ) -> Result<Vec<&ActionRecord>, BookError> {
        let q = self.queue(queue)?;
        Ok(q.finished(after)
            .take(limit)
            .filter_map(|lsn| self.actions.get(&lsn).map(|e| &e.record))
            .collect())
    }

    /// Forgets final actions of a queue; others (unfinished, unknown, of another queue) are left
    /// alone. Returns how many were retired.
    pub fn retire(&mut self, queue: u64, lsns: &[Lsn]) -> Result<u64, BookError> {
        let q = self
            .queues
            .get_mut(&queue)
            .ok_or(BookError::UnknownQueue(queue))?;
        let mut count = 0;
        for &lsn in lsns {
            let finished = self
                .actions
                .get(&lsn)
                .is_some_and(|e| e.queue == queue && e.record.is_terminal());
            if !finished {
                continue;
            }
            if let Some(entry) = self.actions.remove(&lsn) {
                let state = entry.record.state();
                q.remove(lsn, state);
                self.counts.remove(state);
                self.requires.remove(&lsn);
                self.stories.remove(&lsn);
                self.cancelling.remove(&lsn);
                count += 1;
            }
        }
        Ok(count)
    }

    // ---- checks ---------------------------------------------------------------------------

    /// Recounts everything from the records and compares (ORC-8, ORC-12): queue counts and
    /// membership, the global counts, the pending index, the placed index, cancellations and
    /// requirements. O(actions); for tests and debugging. Says what is wrong.
    pub fn audit(&self) -> Result<(), String> {
        let mut total = StateCounts::default();
        let mut members = 0usize;
        for q in self.queues.values() {
            let mut counts = StateCounts::default();
            for lsn in q.live() {
                let entry = self.entry_of(q.id(), lsn)?;
                if entry.record.is_terminal() {
                    return Err(format!("live action {lsn} is {}", entry.record.state()));
                }
                counts.add(entry.record.state());
            }
            for lsn in q.finished(None) {
                let entry = self.entry_of(q.id(), lsn)?;
                if !entry.record.is_terminal() {
                    return Err(format!("finished action {lsn} is {}", entry.record.state()));
                }
                counts.add(entry.record.state());
            }
            if &counts != q.counts() {
                return Err(format!(
                    "queue {} counts {:?}, recount {counts:?}",
                    q.id(),
                    q.counts()
                ));
            }
            members += q.live().count() + q.finished_len();
            total = add_counts(&total, &counts);
        }
        if members != self.actions.len() {
            return Err(format!(
                "{} actions, {members} queue members",
                self.actions.len()
            ));
        }
        if total != self.counts {
            return Err(format!("counts {:?}, recount {total:?}", self.counts));
        }
        let mut pending = 0;
        let mut placed = 0;
        for (lsn, entry) in self.actions.iter() {
            let state = entry.record.state();
            if state == ActionState::Pending {
                pending += 1;
                if self.pending.priority(lsn) != Some(entry.priority) {
                    return Err(format!("pending action {lsn} missing from the index"));
                }
            }
            if is_placed(state) {
                if let Some(location) = entry.record.location() {
                    placed += 1;
                    if !self.placed.get(location).is_some_and(|s| s.contains(&lsn)) {
                        return Err(format!("placed action {lsn} missing on {location}"));
                    }
                }
            } else if self.cancelling.contains(&lsn) {
                return Err(format!("action {lsn} is {state} but marked cancelling"));
            }
        }
        if pending != self.pending.len() {
            return Err(format!(
                "{pending} pending, index holds {}",
                self.pending.len()
            ));
        }
        let indexed: usize = self.placed.values().map(BTreeSet::len).sum();
        if placed != indexed || self.placed.values().any(BTreeSet::is_empty) {
            return Err(format!("{placed} placed, index holds {indexed}"));
        }
        if let Some(lsn) = self.requires.keys().find(|l| !self.actions.contains(l)) {
            return Err(format!("requirements kept for retired action {lsn}"));
        }
        for (lsn, story) in &self.stories {
            let Some(entry) = self.actions.get(lsn) else {
                return Err(format!("story kept for retired action {lsn}"));
            };
            if story.is_empty() || story.len() > MAX_STORIES {
                return Err(format!("story of {lsn} has {} attempts", story.len()));
            }
            let current = entry.record.attempt();
            let ordered = story
                .iter()
                .zip(story.iter().skip(1))
                .all(|(a, b)| a.attempt < b.attempt);
            if !ordered
                || story
                    .iter()
                    .any(|a| a.attempt >= current || !a.state.is_terminal())
            {
                return Err(format!("story of {lsn} does not lead to attempt {current}"));
            }
        }
        Ok(())
    }

    fn entry_of(&self, queue: u64, lsn: Lsn) -> Result<&Entry, String> {
        match self.actions.get(&lsn) {
            Some(entry) if entry.queue == queue => Ok(entry),
            Some(entry) => Err(format!(
                "action {lsn} listed in queue {queue} belongs to {}",
                entry.queue
            )),
            None => Err(format!("queue {queue} lists unknown action {lsn}")),
        }
    }
}

fn add_counts(a: &StateCounts, b: &StateCounts) -> StateCounts {
    StateCounts {
        new: a.new + b.new,
        pending: a.pending + b.pending,
        submitting: a.submitting + b.submitting,
        running: a.running + b.running,
        completed: a.completed + b.completed,
        failed: a.failed + b.failed,
        abandoned: a.abandoned + b.abandoned,
        cancelled: a.cancelled + b.cancelled,
    }
}

fn unplace(placed: &mut BTreeMap<ProcId, BTreeSet<Lsn>>, proc: &ProcId, lsn: Lsn) {
    if let Some(set) = placed.get_mut(proc) {
        set.remove(&lsn);
        if set.is_empty() {
            placed.remove(proc);
        }
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
