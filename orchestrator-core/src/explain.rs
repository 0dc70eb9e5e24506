//! `explain`: why an action is (not) running, read from the scheduler's real state, and the
//! story of its attempts. Read-only and pure; O(hosts × procs) plus at most
//! [`BookLimits::max_scan`](crate::sched::BookLimits::max_scan) pending entries.
//!
//! A pending action's reasons mirror how placement decides (`dispatch`, `registry`,
//! `sched::placement`): only procs of alive hosts whose labels carry every required label, not
//! sidelined (ORC-17), with a maximum above 0, and with free slots (max − placed, ORC-16) are
//! offered work, in dispatch order (priority, then LSN, ORC-1). There is no retry backoff: a
//! retried attempt is `Pending` at once, so "waiting for a backoff" is never a reason.
//!
//! Other queues' occupants of a busy proc are told to a client as a count only; the operator
//! view ([`Core::explain`], the admin API, an operator certificate) names them.

use procmesh_protocol::messages::orchestrator::{
    AttemptStory, BusyProc, ExplainReason, Explanation, Occupants, Reason,
};
use procmesh_protocol::{ActionState, Lsn, ProcId, Timestamp};

use crate::core::Core;
use crate::sched::book::story_of;
use crate::sched::retry::{self, GiveUp, RetryDecision};
use crate::sched::satisfies;

impl Core {
    /// Why the action `lsn` is in its state (operator view: every occupant named), or `None`
    /// for an unknown or retired action.
    pub fn explain(&self, lsn: Lsn, now: Timestamp) -> Option<Explanation> {
        self.explain_as(lsn, now, true)
    }

    /// Every attempt of an action: the ended ones kept, then the current one (empty for an
    /// unknown action).
    pub fn attempts(&self, lsn: Lsn) -> Vec<AttemptStory> {
        let Some(entry) = self.book.action(lsn) else {
            return Vec::new();
        };
        let mut all: Vec<AttemptStory> = self.book.stories(lsn).cloned().collect();
        all.push(story_of(entry.record));
        all
    }

    /// [`explain`](Self::explain), with other queues' occupants named only if `operator`.
    pub fn explain_as(&self, lsn: Lsn, now: Timestamp, operator: bool) -> Option<Explanation> {
        let entry = self.book.action(lsn)?;
        let queue = self.book.queue(entry.queue).ok()?;
        let record = entry.record;
        let state = record.state();
        let limit = queue.config().retry_limit;
        let max_attempts = limit.saturating_add(1);
        let attempt = record.attempt();
        let stories: Vec<&AttemptStory> = self.book.stories(lsn).collect();
        let mut reasons = Vec::new();
        let mut push =
            |summary: String, reason: Reason| reasons.push(ExplainReason { summary, reason });
        let empty = Default::default();
        let requires = entry.requires.unwrap_or(&empty);
        match state {
            ActionState::New | ActionState::Pending => {
                if queue.is_cancelled() {
                    push(
                        "the queue is cancelled: nothing of it is placed".into(),
                        Reason::QueueCancelled,
                    );
                } else if queue.is_draining() {
                    push(
                        "the queue is draining: it takes no new actions; this one still runs"
                            .into(),
                        Reason::QueueDraining,
                    );
                }
                self.fleet_reasons(lsn, entry.queue, requires, operator, &mut push);
            }
            ActionState::Submitting | ActionState::Running => {
                let since = record.entered(state);
                let proc = record.location().cloned();
                let place = proc
                    .as_ref()
                    .map_or("an unknown proc".to_owned(), ProcId::to_string);
                let ago = since.map_or(String::new(), |t| {
                    format!(" for {} ms", now.millis_since(t))
                });
                let verb = if state == ActionState::Running {
                    "running"
                } else {
                    "being submitted"
                };
                push(
                    format!("attempt {attempt} is {verb} on {place}{ago}"),
                    Reason::Placed {
                        proc,
                        state,
                        since,
                        attempt,
                    },
                );
            }
            _ => {
                let cancelling = queue.is_cancelled() || self.book.is_cancelling(lsn);
                let not_retried = match retry::decide(record, limit, cancelling) {
                    RetryDecision::Retry => "a retry is due".to_owned(),
                    RetryDecision::GiveUp(GiveUp::NotRetryable(s)) => {
                        format!("a {s} action is never retried")
                    }
                    RetryDecision::GiveUp(GiveUp::LimitReached { retries, limit }) => {
                        format!("retried {retries} times, the queue's limit of {limit}")
                    }
                    RetryDecision::GiveUp(GiveUp::Cancelling) => "it was cancelled".to_owned(),
                    RetryDecision::GiveUp(GiveUp::AttemptsExhausted) => {
                        "the attempt counter is exhausted".to_owned()
                    }
                };
                let reason = record.last_error().map(str::to_owned);
                let why = reason
                    .as_deref()
                    .map_or(String::new(), |r| format!(": {r}"));
                push(
                    format!("{state} (attempt {attempt}){why}; not retried: {not_retried}"),
                    Reason::Ended {
                        state,
                        reason,
                        exit: record.exit(),
                        not_retried,
                    },
                );
            }
        }
        if attempt.get() > 1 && !state.is_terminal() {
            let previous = stories.last().map(|s| match &s.reason {
                Some(r) => format!("{} ({r})", s.state),
                None => s.state.to_string(),
            });
            let after = previous
                .as_deref()
                .map_or(String::new(), |p| format!("; the previous one ended {p}"));
            push(
                format!("attempt {attempt} of at most {max_attempts}{after}"),
                Reason::Retry {
                    attempt,
                    max_attempts,
                    previous,
                },
            );
        }
        Some(Explanation {
            lsn,
            state,
            attempt,
            max_attempts,
            priority: entry.priority,
            requires: requires.clone(),
            reasons,
            attempts: self.attempts(lsn),
        })
    }

    /// The reasons a pending action of `queue` is not placed, from the fleet's state.
    fn fleet_reasons(
        &self,
        lsn: Lsn,
        queue: u64,
        requires: &crate::sched::Labels,
        operator: bool,
        push: &mut impl FnMut(String, Reason),
    ) {
        let (mut known, mut alive, mut fitting) = (0u32, 0u32, 0u32);
        let (mut busy, mut sidelined, mut free) = (Vec::new(), Vec::new(), 0u32);
        for host in self.registry.looks() {
            known += 1;
            if !host.alive {
                continue;
            }
            alive += 1;
            if !satisfies(host.labels, requires) {
                continue;
            }
            fitting += 1;
            for p in host.procs {
                let id = p.agent.proc_id();
                if host.sidelined.contains(id) {
                    sidelined.push(id.clone());
                    continue;
                }
                let max = p.capacity.max;
                if max == 0 {
                    continue;
                }
                let placed: Vec<Lsn> = self.book.placed_on(id).collect();
                let n = u32::try_from(placed.len()).unwrap_or(u32::MAX);
                if n < max {
                    free += max - n;
                    continue;
                }
                let mut own = Vec::new();
                let mut others: Vec<Occupants> = Vec::new();
                let mut other_queues = 0;
                for l in placed {
                    match self.book.action(l).map(|e| e.queue) {
                        Some(q) if q == queue => own.push(l),
                        Some(q) => {
                            other_queues += 1;
                            if operator {
                                match others.iter_mut().find(|o| o.queue == q) {
                                    Some(o) => o.lsns.push(l),
                                    None => others.push(Occupants {
                                        queue: q,
                                        lsns: vec![l],
                                    }),
                                }
                            }
                        }
                        None => {}
                    }
                }
                busy.push(BusyProc {
                    proc: id.clone(),
                    max,
                    placed: n,
                    own,
                    other_queues,
                    others,
                });
            }
        }
        if alive == 0 {
            push(
                format!("no host is alive ({known} known)"),
                Reason::NoHostAlive { known },
            );
            return;
        }
        if fitting == 0 {
            let want: Vec<String> = requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
            push(
                format!(
                    "no alive host has the labels {} ({alive} alive)",
                    want.join(",")
                ),
                Reason::LabelsUnmet {
                    requires: requires.clone(),
                    alive_hosts: alive,
                },
            );
            return;
        }
        let (no_busy, no_sidelined) = (busy.is_empty(), sidelined.is_empty());
        if free == 0 && !busy.is_empty() {
            let names: Vec<String> = busy
                .iter()
                .map(|b| {
                    let mut by = Vec::new();
                    if !b.own.is_empty() {
                        let lsns: Vec<String> = b.own.iter().map(ToString::to_string).collect();
                        by.push(format!("this queue: {}", lsns.join(",")));
                    }
                    if b.other_queues > 0 {
                        by.push(format!("other queues: {}", b.other_queues));
                    }
                    format!("{} {}/{} ({})", b.proc, b.placed, b.max, by.join("; "))
                })
                .collect();
            push(
                format!("all slots busy on every fitting proc: {}", names.join(", ")),
                Reason::AllSlotsBusy { procs: busy },
            );
        }
        if !sidelined.is_empty() {
            let names: Vec<String> = sidelined.iter().map(ToString::to_string).collect();
            push(
                format!(
                    "sidelined until their host's next heartbeat: {}",
                    names.join(", ")
                ),
                Reason::Sidelined { procs: sidelined },
            );
        }
        if free == 0 {
            if no_busy && no_sidelined {
                push(
                    format!("{fitting} fitting hosts offer no ready proc"),
                    Reason::NoReadyProc {
                        fitting_hosts: fitting,
                    },
                );
            }
            return;
        }
        let ahead = self
            .book
            .pending()
            .iter()
            .take(self.book.limits().max_scan)
            .take_while(|(l, _)| *l != lsn)
            .count() as u64;
        if ahead >= u64::from(free) {
            push(
                format!("{ahead} pending actions ahead of it take the {free} free slots first"),
                Reason::AheadInLine {
                    ahead,
                    free_slots: free,
                },
            );
        } else {
            push(
                format!("{free} free slots fit it: the next dispatch pass places it"),
                Reason::WillBePlaced { free_slots: free },
            );
        }
    }
}
