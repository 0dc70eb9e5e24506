//! Reliable reports: every transition the runner reports waits in an outbox until the
//! orchestrator (`report_to`) has answered the message that carried it.
//!
//! ```text
//!  Runner ── Report ──▶ pump ──▶ Outbox per destination ── ask ActionUpdate(s) ──▶ orchestrator
//!                                 [ in flight | queued ...... ]  ◀── answer ──────┘
//!                                   answered ─▶ popped (PA-AG-3)
//!                                   no answer / ShuttingDown ─▶ same transitions again,
//!                                   first, after 100 ms … 2 s (PA-AG-4)
//! ```
//!
//! [`Outbox`] is the bookkeeping, pure (no tokio, no clock: a failure hands back the delay to
//! wait); [`ReportPump`] drives it: one task, one ask in flight per destination, what piled up
//! meanwhile sent as one `ActionUpdates` of up to [`PumpConfig::max_batch`] transitions. One
//! round trip per batch keeps the dispatch path's throughput: the batch grows with the RTT.
//!
//! Progress alone waits a little: when only non-terminal transitions (`Running`) are waiting,
//! the pump holds them for up to [`PumpConfig::linger`], so the `Running` and the final
//! transition of a short action travel in one message. A terminal transition is never held:
//! it frees capacity the orchestrator dispatches into.
//!
//! # Which answer acknowledges what
//! An answer acknowledges the whole message, whatever it says about the transitions inside
//! (for a batch the orchestrator judges each on its own and answers `Ack`):
//!
//! | result of the ask | verdict |
//! |---|---|
//! | `Ok(Ack)`, `Ok(Updated(_))`, any other reply | acknowledged: popped (a reply of another kind is a protocol error, logged at warn) |
//! | `Err(UnknownAction)`, and every other refusal (`unknown_queue`, `forbidden`, `internal`, …) | judged: popped (logged; `unknown_action` at debug, the rest at warn) — a refusal says nothing was changed *because of the transition*, so re-sending gets the same answer and would hold up every later report |
//! | `Err(ShuttingDown)`, `Err(Journal(_))` | not applied, for a reason that passes: kept, re-sent |
//! | `SendFailure::Timeout`, `Remote(Undeliverable \| ActorStopped \| Handler)` | no answer (lost link, orchestrator restarting or down): kept, re-sent |
//! | `SendFailure::Decode` (a reply came but cannot be read, e.g. a newer peer) | acknowledged: it was handled (logged at warn) |
//! | `SendFailure::Encode`, `Remote(BadMessage)` | unsendable: these bytes can never be read there; popped, logged at error with the count of terminal transitions lost |
//!
//! Re-sending is safe: the orchestrator ignores a transition to the same or an earlier state
//! (ACT-1) and fences by attempt (ACT-5), so a message whose *reply* was lost may be applied
//! twice with no effect the second time.
//!
//! # The bound
//! At most [`PumpConfig::max_unacknowledged`] transitions (default 100,000) wait per
//! destination. When it is full: (1) at most every 1/16th of the bound pushes, superseded
//! transitions are compacted away — non-terminal ones (`Submitting`, `Running`) of attempts
//! that have a later transition queued, none of them in flight; (2) a terminal transition
//! arriving at a full outbox replaces its own attempt's oldest queued non-terminal one;
//! (3) otherwise the new transition is refused: a non-terminal one with a warning, a terminal
//! one with an error naming the counts. A terminal transition is never dropped silently; one
//! that was refused leaves its action to the orchestrator's liveness check (an attempt the
//! proc stops mentioning is abandoned).
//!
//! # Invariants (continuing the agent's `PA-AG-n`)
//! - **PA-AG-3** A transition leaves the outbox only once the orchestrator answered the message
//!   that carried it (see the table for what counts), or when the bound refuses or compacts it
//!   away (logged, never a terminal one silently).
//! - **PA-AG-4** Order per destination: at most one message is in flight; one that was not
//!   acknowledged is sent again with the same transitions, before anything reported later,
//!   after a backoff doubling from [`PumpConfig::backoff_min`] to [`PumpConfig::backoff_max`],
//!   for as long as the proc lives. So the first arrival of each transition at the orchestrator
//!   is in report order: a `Completed` never overtakes its `Running`.
//! - **PA-AG-5** [`ReportPump::flush`] returns `true` only once every transition reported
//!   before the call was answered; the agent flushes (bounded) before its node shuts down.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use procmesh_protocol::messages::orchestrator::{OrchestratorError, OrchestratorRequest};
use procmesh_protocol::messages::requests::agent::{ActionUpdate, ActionUpdates};
use procmesh_protocol::messages::requests::Ask;
use procmesh_protocol::{ActorId, AttemptRef, RemoteError, Transition};
use procmesh_transport::{Node, RemoteRef, SendFailure};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::runner::Report;

/// How the report pump works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpConfig {
    /// Most transitions waiting per destination, in flight included, e.g. `100_000`
    /// (a transition with outputs takes a few hundred bytes).
    pub max_unacknowledged: usize,
    /// Most transitions in one message, e.g. `512`.
    pub max_batch: usize,
    /// How long an answer may take before the message counts as lost, e.g. 5 s.
    pub ask_timeout: Duration,
    /// The first wait before a re-send, e.g. 100 ms.
    pub backoff_min: Duration,
    /// The longest wait between re-sends, e.g. 2 s.
    pub backoff_max: Duration,
    /// How long non-terminal transitions alone may wait for more to send with them, e.g.
    /// 3 ms (zero: sent at once).
    pub linger: Duration,
}

impl Default for PumpConfig {
    fn default() -> PumpConfig {
        PumpConfig {
            max_unacknowledged: 100_000,
            max_batch: MAX_REPORT_BATCH,
            ask_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            linger: Duration::from_millis(3),
        }
    }
}

/// Most transitions in one message by default.
pub const MAX_REPORT_BATCH: usize = 512;

/// What an ask's result means for the transitions it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answered: they leave the outbox.
    Acknowledged,
    /// Refused by the orchestrator (its error code): they leave the outbox.
    Judged(&'static str),
    /// Not applied, or no answer: they stay and are sent again.
    Retry(String),
    /// Can never be read by the receiver: they leave the outbox, with an error.
    Unsendable(String),
}

impl Verdict {
    /// The verdict on the result of asking an `ActionUpdate(s)` (the table in the module doc):
    /// any reply `R` acknowledges.
    pub fn of<R>(result: &Result<Result<R, OrchestratorError>, SendFailure>) -> Self {
        match result {
            Ok(Ok(_)) => Verdict::Acknowledged,
            Ok(Err(e @ (OrchestratorError::ShuttingDown | OrchestratorError::Journal(_)))) => {
                Verdict::Retry(e.to_string())
            }
            Ok(Err(e)) => Verdict::Judged(e.code()),
            Err(SendFailure::Decode(e)) => {
                tracing::warn!(error = %e, "unreadable answer to a report; counted as an ack");
                Verdict::Acknowledged
            }
            Err(e @ (SendFailure::Encode(_) | SendFailure::Remote(RemoteError::BadMessage(_)))) => {
                Verdict::Unsendable(e.to_string())
            }
            Err(
                e @ (SendFailure::Timeout(_)
                | SendFailure::Remote(
                    RemoteError::Undeliverable(_)
                    | RemoteError::ActorStopped(_)
                    | RemoteError::Handler(_),
                )),
            ) => Verdict::Retry(e.to_string()),
        }
    }
}

/// A message of transitions: one alone, or a batch applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// One transition.
    One(ActionUpdate),
    /// Several.
    Batch(ActionUpdates),
}

impl Message {
    /// The wire request.
    pub fn request(self) -> OrchestratorRequest {
        match self {
            Message::One(update) => update.request(),
            Message::Batch(updates) => updates.request(),
        }
    }

    /// Asks `target`; the reply only says that it was answered (the module doc).
    async fn ask(
        self,
        target: &RemoteRef<OrchestratorRequest>,
        timeout: Duration,
    ) -> Result<Result<(), OrchestratorError>, SendFailure> {
        match self {
            Message::One(update) => ask(target, update, timeout).await,
            Message::Batch(updates) => ask(target, updates, timeout).await,
        }
    }
}

/// Asks `target` for `request`. A reply of another kind acknowledges it all the same (the module
/// doc) but is a protocol error: logged here, for both kinds of message.
async fn ask<A: Ask>(
    target: &RemoteRef<OrchestratorRequest>,
    request: A,
    timeout: Duration,
) -> Result<Result<(), OrchestratorError>, SendFailure> {
    let answer = target.ask(request.request(), timeout).await?;
    Ok(answer.map(|reply| {
        if let Err(other) = A::reply(reply) {
            tracing::warn!(report_to = %target.id(), ?other, "unexpected answer to {}", A::KIND);
        }
    }))
}

/// What became of a pushed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Queued.
    Queued,
    /// Queued after this many superseded transitions were dropped to make room.
    MadeRoom(usize),
    /// Refused: the outbox is full (PA-AG-3, logged by the caller).
    Refused,
}

/// The transitions of one destination not yet acknowledged, in report order. Pure: the driver
/// sends what [`next_message`](Self::next_message) hands out and reports the verdict.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Transition>,
    /// The first `in_flight` transitions of `queue` are in the message being asked.
    in_flight: usize,
    /// Waiting for a backoff to pass before sending again.
    backing_off: bool,
    /// Unacknowledged sends in a row.
    failures: u32,
    max: usize,
    /// Pushes since the last compaction.
    pushed_since_compaction: usize,
    /// Counts, for logs.
    pub stats: OutboxStats,
}

/// What an outbox dropped or refused, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Superseded non-terminal transitions dropped to make room.
    pub superseded: u64,
    /// Non-terminal transitions refused because the outbox was full.
    pub refused: u64,
    /// Terminal transitions refused because the outbox was full.
    pub refused_terminal: u64,
    /// Transitions popped unacknowledged because they could not be sent.
    pub unsendable: u64,
}

impl Outbox {
    /// An empty outbox holding at most `max` transitions (at least 1).
    pub fn new(max: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            in_flight: 0,
            backing_off: false,
            failures: 0,
            max: max.max(1),
            pushed_since_compaction: usize::MAX,
            stats: OutboxStats::default(),
        }
    }

    /// Transitions not yet acknowledged, in flight included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether everything was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a message is being asked.
    pub fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Whether a message could be sent now and it would carry only non-terminal transitions
    /// (which the pump may hold for [`PumpConfig::linger`]).
    pub fn progress_only(&self) -> bool {
        self.in_flight == 0
            && !self.backing_off
            && !self.queue.is_empty()
            && self.queue.iter().all(|t| !t.state.is_terminal())
    }

    /// The waiting transitions, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Transition> {
        self.queue.iter()
    }

    /// Queues `t` behind everything waiting, within the bound (module doc).
    pub fn push(&mut self, t: Transition) -> Admitted {
        let mut dropped = 0;
        if self.queue.len() >= self.max && self.pushed_since_compaction >= (self.max / 16).max(1) {
            dropped += self.compact();
        }
        if self.queue.len() >= self.max && t.state.is_terminal() {
            let attempt = t.attempt_ref();
            let older = (self.in_flight..self.queue.len()).find(|&i| {
                let q = &self.queue[i];
                !q.state.is_terminal() && q.attempt_ref() == attempt
            });
            if let Some(i) = older {
                self.queue.remove(i);
                self.stats.superseded += 1;
                dropped += 1;
            }
        }
        if self.queue.len() >= self.max {
            if t.state.is_terminal() {
                self.stats.refused_terminal += 1;
            } else {
                self.stats.refused += 1;
            }
            return Admitted::Refused;
        }
        self.pushed_since_compaction = self.pushed_since_compaction.saturating_add(1);
        self.queue.push_back(t);
        match dropped {
            0 => Admitted::Queued,
            n => Admitted::MadeRoom(n),
        }
    }

    /// Drops every queued non-terminal transition, not in flight, whose attempt has a later
    /// transition queued. Returns how many.
    fn compact(&mut self) -> usize {
        self.pushed_since_compaction = 0;
        let mut later: HashSet<AttemptRef> = HashSet::new();
        let mut superseded = vec![false; self.queue.len()];
        for i in (self.in_flight..self.queue.len()).rev() {
            let t = &self.queue[i];
            if !later.insert(t.attempt_ref()) && !t.state.is_terminal() {
                superseded[i] = true;
            }
        }
        let before = self.queue.len();
        let mut flags = superseded.into_iter();
        self.queue.retain(|_| !flags.next().unwrap_or(false));
        let dropped = before - self.queue.len();
        self.stats.superseded += dropped as u64;
        dropped
    }

    /// The next message to ask, if one may be sent now: the oldest waiting transitions (up to
    /// `max_batch`), copied — they stay queued until the verdict (PA-AG-3).
    pub fn next_message(&mut self, max_batch: usize) -> Option<Message> {
        if self.in_flight > 0 || self.backing_off || self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(max_batch.max(1));
        self.in_flight = n;
        Some(match n {
            1 => Message::One(ActionUpdate {
                transition: self.queue[0].clone(),
            }),
            _ => Message::Batch(ActionUpdates {
                transitions: self.queue.range(..n).cloned().collect(),
            }),
        })
    }

    /// Applies the verdict on the message in flight. Returns the delay after which to
    /// [`wake`](Self::wake) the outbox if the transitions stay (PA-AG-4), and how many
    /// terminal transitions were popped unacknowledged (an `Unsendable` verdict).
    pub fn answered(&mut self, verdict: &Verdict, config: &PumpConfig) -> Answered {
        let n = std::mem::take(&mut self.in_flight);
        match verdict {
            Verdict::Retry(_) => {
                self.failures = self.failures.saturating_add(1);
                self.backing_off = true;
                Answered::RetryAfter(backoff(self.failures, config))
            }
            Verdict::Acknowledged | Verdict::Judged(_) => {
                self.failures = 0;
                self.queue.drain(..n);
                Answered::Popped
            }
            Verdict::Unsendable(_) => {
                self.failures = 0;
                let terminal = self
                    .queue
                    .drain(..n)
                    .filter(|t| t.state.is_terminal())
                    .count();
                self.stats.unsendable += n as u64;
                Answered::Lost { count: n, terminal }
            }
        }
    }

    /// The backoff has passed: the next message may go.
    pub fn wake(&mut self) {
        self.backing_off = false;
    }
}

/// What [`Outbox::answered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The message's transitions left the outbox.
    Popped,
    /// They stay; wake the outbox after this delay.
    RetryAfter(Duration),
    /// They left the outbox unacknowledged (unsendable).
    Lost {
        /// How many.
        count: usize,
        /// How many of them were terminal.
        terminal: usize,
    },
}

/// The wait before the `failures`-th re-send: `backoff_min` doubling, at most `backoff_max`.
pub fn backoff(failures: u32, config: &PumpConfig) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    config
        .backoff_min
        .saturating_mul(1 << doublings)
        .min(config.backoff_max)
}

/// The running report pump: how many transitions wait for an answer, and a way to wait until
/// none does.
#[derive(Debug, Clone)]
pub struct ReportPump {
    unacknowledged: watch::Receiver<usize>,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl ReportPump {
    /// Starts the pump on `node`: every report received on `reports` goes to its `report_to`,
    /// reliably (PA-AG-3, PA-AG-4). Must be called inside a tokio runtime. The task runs until
    /// `reports` is closed and everything was answered.
    pub fn spawn(
        node: Node,
        reports: mpsc::UnboundedReceiver<Report>,
        config: PumpConfig,
    ) -> ReportPump {
        let (count_tx, unacknowledged) = watch::channel(0);
        let (flush, flush_rx) = mpsc::unbounded_channel();
        let pump = Pump {
            node,
            config,
            dests: Vec::new(),
            count: count_tx,
        };
        // Named by its span (task names need tokio_unstable).
        let span = tracing::info_span!("report_pump");
        tokio::spawn(tracing::Instrument::instrument(
            pump.run(reports, flush_rx),
            span,
        ));
        ReportPump {
            unacknowledged,
            flush,
        }
    }

    /// Transitions received and not yet answered, over every destination.
    pub fn unacknowledged(&self) -> usize {
        *self.unacknowledged.borrow()
    }

    /// Waits up to `timeout` until every transition reported before this call was answered
    /// (PA-AG-5). `false` if some still wait.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.flush.send(done).is_err() {
            // The pump ended: nothing is left to send.
            return true;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

struct Dest {
    id: ActorId,
    target: RemoteRef<OrchestratorRequest>,
    outbox: Outbox,
    hold: Hold,
}

/// Whether a destination's progress-only message is being held ([`PumpConfig::linger`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Not held: the next progress-only message starts a hold.
    Open,
    /// Held until the linger timer fires (or a terminal transition comes).
    Holding,
    /// The timer fired: send what is waiting.
    Released,
}

enum Event {
    Answered(Result<Result<(), OrchestratorError>, SendFailure>),
    Wake,
    Release,
}

struct Pump {
    node: Node,
    config: PumpConfig,
    dests: Vec<Dest>,
    count: watch::Sender<usize>,
}

impl Pump {
    async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut flush_rx: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let mut tasks: JoinSet<Event> = JoinSet::new();
        // Which destination each running task serves (a task that panicked says only its id).
        let mut serving: Vec<(tokio::task::Id, usize)> = Vec::new();
        let mut batch: Vec<Report> = Vec::with_capacity(self.config.max_batch);
        let mut flushers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut open = true;
        loop {
            for (i, dest) in self.dests.iter_mut().enumerate() {
                let linger = self.config.linger;
                if !linger.is_zero() && flushers.is_empty() && dest.outbox.progress_only() {
                    match dest.hold {
                        Hold::Open => {
                            dest.hold = Hold::Holding;
                            let task = tasks.spawn(async move {
                                tokio::time::sleep(linger).await;
                                Event::Release
                            });
                            serving.push((task.id(), i));
                            continue;
                        }
                        Hold::Holding => continue,
                        Hold::Released => {}
                    }
                }
                if let Some(message) = dest.outbox.next_message(self.config.max_batch) {
                    dest.hold = Hold::Open;
                    let target = dest.target.clone();
                    let timeout = self.config.ask_timeout;
                    let task = tasks
                        .spawn(async move { Event::Answered(message.ask(&target, timeout).await) });
                    serving.push((task.id(), i));
                }
            }
            let waiting: usize = self.dests.iter().map(|d| d.outbox.len()).sum();
            self.count
                .send_if_modified(|n| std::mem::replace(n, waiting) != waiting);
            if waiting == 0 {
                for done in flushers.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
            }
            tokio::select! {
                n = reports.recv_many(&mut batch, self.config.max_batch), if open => {
                    if n == 0 {
                        open = false;
                    }
                    self.receive(&mut batch);
                }
                Some(done) = flush_rx.recv() => {
                    // Everything reported before the flush request is in the channel already.
                    while let Ok(report) = reports.try_recv() {
                        batch.push(report);
                    }
                    self.receive(&mut batch);
                    flushers.push(done);
                }
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, event) = match joined {
                        Ok((id, event)) => (id, Ok(event)),
                        Err(error) => (error.id(), Err(error)),
                    };
                    let Some(at) = serving.iter().position(|(task, _)| *task == id) else {
                        continue;
                    };
                    let (_, i) = serving.swap_remove(at);
                    let event = event.unwrap_or_else(|error| {
                        Event::Answered(Err(SendFailure::Remote(RemoteError::Handler(
                            format!("report task failed: {error}"),
                        ))))
                    });
                    if let Some(wake) = self.handle(i, event) {
                        let task = tasks.spawn(async move {
                            tokio::time::sleep(wake).await;
                            Event::Wake
                        });
                        serving.push((task.id(), i));
                    }
                }
                else => return,
            }
        }
    }

    /// Queues the received reports, each behind its destination's outbox.
    fn receive(&mut self, batch: &mut Vec<Report>) {
        let mut last: Option<usize> = None;
        for Report {
            report_to,
            transition,
        } in batch.drain(..)
        {
            let i = match last.filter(|&i| self.dests[i].id == report_to) {
                Some(i) => i,
                None => match self.dests.iter().position(|d| d.id == report_to) {
                    Some(i) => i,
                    None => {
                        self.dests.push(Dest {
                            target: self.node.remote_ref(report_to.clone()),
                            id: report_to,
                            outbox: Outbox::new(self.config.max_unacknowledged),
                            hold: Hold::Open,
                        });
                        self.dests.len() - 1
                    }
                },
            };
            last = Some(i);
            let dest = &mut self.dests[i];
            let (lsn, attempt, state) = (transition.lsn, transition.attempt, transition.state);
            match dest.outbox.push(transition) {
                Admitted::Queued => {}
                Admitted::MadeRoom(dropped) => tracing::warn!(
                    report_to = %dest.id,
                    dropped,
                    superseded_total = dest.outbox.stats.superseded,
                    "report outbox full: dropped superseded transitions"
                ),
                Admitted::Refused if state.is_terminal() => tracing::error!(
                    report_to = %dest.id,
                    %lsn,
                    %attempt,
                    %state,
                    waiting = dest.outbox.len(),
                    refused_terminal = dest.outbox.stats.refused_terminal,
                    refused = dest.outbox.stats.refused,
                    "report outbox full: final transition refused"
                ),
                Admitted::Refused => {
                    let refused = dest.outbox.stats.refused;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            report_to = %dest.id,
                            waiting = dest.outbox.len(),
                            refused,
                            "report outbox full: transitions refused"
                        );
                    }
                }
            }
        }
    }

    /// Applies one event; returns the delay after which to wake destination `i`, if any.
    fn handle(&mut self, i: usize, event: Event) -> Option<Duration> {
        let dest = &mut self.dests[i];
        let result = match event {
            Event::Wake => {
                dest.outbox.wake();
                return None;
            }
            Event::Release => {
                if dest.hold == Hold::Holding {
                    dest.hold = Hold::Released;
                }
                return None;
            }
            Event::Answered(result) => result,
        };
        let verdict = Verdict::of(&result);
        match &verdict {
            Verdict::Judged("unknown_action") => {
                tracing::debug!(report_to = %dest.id, "report of an unknown action dropped")
            }
            Verdict::Judged(code) => {
                tracing::warn!(report_to = %dest.id, code, "report refused; dropped")
            }
            _ => {}
        }
        match dest.outbox.answered(&verdict, &self.config) {
            Answered::Popped => None,
            Answered::RetryAfter(wait) => {
                if let Verdict::Retry(reason) = &verdict {
                    tracing::debug!(
                        report_to = %dest.id,
                        %reason,
                        waiting = dest.outbox.len(),
                        retry_in_ms = wait.as_millis() as u64,
                        "reports not acknowledged; will send again"
                    );
                }
                Some(wait)
            }
            Answered::Lost { count, terminal } => {
                tracing::error!(
                    report_to = %dest.id,
                    reason = ?verdict,
                    count,
                    terminal,
                    "reports cannot be sent; dropped"
                );
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
