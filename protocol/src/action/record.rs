//! [`ActionRecord`]: one action's lifecycle, fed with transitions and retries (ACT-1..ACT-10).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    ActionState, Attempt, AttemptRef, ExitStatus, Lsn, Timestamp, Transition, TransitionDetail,
};
use crate::ids::ProcId;

/// The time each state was entered in the current attempt (ACT-4). Internally one `u64` per
/// state, 0 meaning "not entered" (a transition stamped 0 ms is entered at 1 ms); on the wire a
/// map from state to milliseconds holding only the entered states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StateTimes([u64; ActionState::COUNT]);

impl StateTimes {
    /// When `state` was entered, if it was.
    pub fn get(&self, state: ActionState) -> Option<Timestamp> {
        match self.0[state.index()] {
            0 => None,
            ms => Some(Timestamp(ms)),
        }
    }

    /// The entered states and their times, in lifecycle order.
    pub fn iter(&self) -> impl Iterator<Item = (ActionState, Timestamp)> + '_ {
        ActionState::ALL
            .into_iter()
            .filter_map(|state| Some((state, self.get(state)?)))
    }

    /// The latest time recorded, if any.
    pub fn latest(&self) -> Option<Timestamp> {
        self.iter().map(|(_, t)| t).max()
    }

    fn set(&mut self, state: ActionState, at: Timestamp) {
        self.0[state.index()] = at.0.max(1);
    }
}

impl Serialize for StateTimes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.iter().count()))?;
        for (state, at) in self.iter() {
            map.serialize_entry(&state, &at)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StateTimes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimesVisitor;
        impl<'de> Visitor<'de> for TimesVisitor {
            type Value = StateTimes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from action state to milliseconds")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StateTimes, A::Error> {
                let mut times = StateTimes::default();
                while let Some((state, at)) = map.next_entry::<ActionState, u64>()? {
                    if at == 0 {
                        return Err(de::Error::custom(format!("{state} entered at time 0")));
                    }
                    times.0[state.index()] = at;
                }
                Ok(times)
            }
        }
        d.deserialize_map(TimesVisitor)
    }
}

/// Where and how the current attempt ran: the execution fields a retry clears (ACT-3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The proc it runs or ran on.
    #[serde(default)]
    pub location: Option<ProcId>,
    /// How its process ended.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    /// CPU time in milliseconds.
    #[serde(default)]
    pub cpu_ms: Option<u64>,
    /// Peak resident memory in bytes.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// What ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<super::transition::RanProgram>,
}

/// A transition that was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The state before.
    pub from: ActionState,
    /// The state entered.
    pub to: ActionState,
    /// The entry time recorded (the transition's time, raised by ACT-4 if needed).
    pub at: Timestamp,
}

/// Why a transition was not applied; the record is unchanged (ACT-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Ignored {
    /// ACT-7: the transition is about another action.
    #[error("transition for action {got} sent to the record of action {record}")]
    OtherLsn {
        /// The record's LSN.
        record: Lsn,
        /// The transition's LSN.
        got: Lsn,
    },
    /// ACT-5: the transition is about an earlier attempt.
    #[error("stale update for attempt {got}: the action is at attempt {current}")]
    Stale {
        /// The record's attempt.
        current: Attempt,
        /// The transition's attempt.
        got: Attempt,
    },
    /// ACT-6: the transition is about an attempt that does not exist yet.
    #[error("update for attempt {got}, but the action is only at attempt {current}")]
    FutureAttempt {
        /// The record's attempt.
        current: Attempt,
        /// The transition's attempt.
        got: Attempt,
    },
    /// ACT-2: the attempt already ended.
    #[error("the attempt already ended {state}; {got} ignored")]
    Finished {
        /// The terminal state.
        state: ActionState,
        /// The state of the transition.
        got: ActionState,
    },
    /// ACT-1: the transition does not move forward.
    #[error("{got} does not move forward from {state}")]
    NotForward {
        /// The current state.
        state: ActionState,
        /// The state of the transition.
        got: ActionState,
    },
}

impl Ignored {
    /// Whether the sender broke the protocol (worth a warning), as opposed to the expected
    /// duplicates and late arrivals of a distributed system.
    pub const fn is_violation(&self) -> bool {
        matches!(
            self,
            Ignored::OtherLsn { .. } | Ignored::FutureAttempt { .. }
        )
    }

    /// A stable, matchable code.
    pub const fn code(&self) -> &'static str {
        match self {
            Ignored::OtherLsn { .. } => "other_lsn",
            Ignored::Stale { .. } => "stale",
            Ignored::FutureAttempt { .. } => "future_attempt",
            Ignored::Finished { .. } => "finished",
            Ignored::NotForward { .. } => "not_forward",
        }
    }
}

/// Why an action cannot be retried; the record is unchanged (ACT-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RetryError {
    /// ACT-3: only `Failed` and `Abandoned` go back to `Pending`.
    #[error("action {lsn} is {state}; only failed or abandoned actions can be retried")]
    NotRetryable {
        /// The action.
        lsn: Lsn,
        /// Its state.
        state: ActionState,
    },
    /// The attempt counter is exhausted.
    #[error("action {lsn} has used every attempt number")]
    AttemptsExhausted {
        /// The action.
        lsn: Lsn,
    },
}

/// Everything the orchestrator keeps about one action's lifecycle: 104 bytes inline (ACT-10).
///
/// Only [`apply`](Self::apply) and [`retry`](Self::retry) change it, so the invariants hold for
/// every record built from [`new`](Self::new). A record decoded from bytes (the orchestrator's
/// journal, an [`ActionView`](crate::messages::ActionView)) is taken as written: decode only
/// what this crate encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    lsn: Lsn,
    times: StateTimes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    execution: Option<Box<Execution>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<Box<str>>,
    attempt: Attempt,
    state: ActionState,
}

impl ActionRecord {
    /// A new action, first attempt, entered `New` at `now`.
    pub fn new(lsn: Lsn, now: Timestamp) -> ActionRecord {
        let mut times = StateTimes::default();
        times.set(ActionState::New, now);
        ActionRecord {
            lsn,
            times,
            execution: None,
            last_error: None,
            attempt: Attempt::FIRST,
            state: ActionState::New,
        }
    }

    /// The action's LSN.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The current attempt.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The current attempt, with the LSN.
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            lsn: self.lsn,
            attempt: self.attempt,
        }
    }

    /// The current state.
    pub fn state(&self) -> ActionState {
        self.state
    }

    /// When each state of the current attempt was entered (`New` from the first).
    pub fn times(&self) -> &StateTimes {
        &self.times
    }

    /// When `state` was entered in the current attempt.
    pub fn entered(&self, state: ActionState) -> Option<Timestamp> {
        self.times.get(state)
    }

    /// Where and how the current attempt ran, if anything is known.
    pub fn execution(&self) -> Option<&Execution> {
        self.execution.as_deref()
    }

    /// The proc the current attempt runs or ran on.
    pub fn location(&self) -> Option<&ProcId> {
        self.execution()?.location.as_ref()
    }

    /// How the current attempt's process ended.
    pub fn exit(&self) -> Option<ExitStatus> {
        self.execution()?.exit
    }

    /// Why the latest attempt that failed, was abandoned or was cancelled ended (kept across a
    /// retry, ACT-3).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether the current attempt has ended.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// Whether the queue's policy allows an automatic retry: the action failed or was
    /// abandoned and has been retried fewer than `retry_limit` times.
    pub fn can_retry(&self, retry_limit: u32) -> bool {
        self.state.is_retryable() && self.attempt.retries() < retry_limit
    }

    /// The transition of the current attempt to `state` at `at`: how the orchestrator records
    /// its own moves (`Pending`, `Submitting`, `Abandoned`, `Cancelled`).
    pub fn transition_to(&self, state: ActionState, at: Timestamp) -> Transition {
        Transition::new(self.lsn, self.attempt, state, at)
    }

    /// Applies `t` if it moves this attempt forward; otherwise says why not and changes nothing
    /// (ACT-9).
    pub fn apply(&mut self, t: &Transition) -> Result<Applied, Ignored> {
        // ACT-7: one record, one action.
        if t.lsn != self.lsn {
            return Err(Ignored::OtherLsn {
                record: self.lsn,
                got: t.lsn,
            });
        }
        // ACT-5: fencing drops what an earlier attempt still says after a partition heals.
        if t.attempt < self.attempt {
            return Err(Ignored::Stale {
                current: self.attempt,
                got: t.attempt,
            });
        }
        // ACT-6: only `retry` creates attempts.
        if t.attempt > self.attempt {
            return Err(Ignored::FutureAttempt {
                current: self.attempt,
                got: t.attempt,
            });
        }
        // ACT-2: terminal is final.
        if self.state.is_terminal() {
            return Err(Ignored::Finished {
                state: self.state,
                got: t.state,
            });
        }
        // ACT-1: forward only.
        if !t.state.is_after(self.state) {
            return Err(Ignored::NotForward {
                state: self.state,
                got: t.state,
            });
        }
        // ACT-4: never enter a state before one already entered.
        let at = self.times.latest().map_or(t.at, |latest| t.at.max(latest));
        let from = self.state;
        self.times.set(t.state, at);
        self.state = t.state;
        self.record_detail(t.state, &t.detail);
        Ok(Applied {
            from,
            to: t.state,
            at: self.times.get(t.state).unwrap_or(at),
        })
    }

    /// Sends a failed or abandoned action back to `Pending` as a new attempt (ACT-3), returning
    /// that attempt. Whether the queue's retry limit allows it is [`can_retry`](Self::can_retry);
    /// a manual reschedule skips that check.
    pub fn retry(&mut self, now: Timestamp) -> Result<Attempt, RetryError> {
        if !self.state.is_retryable() {
            return Err(RetryError::NotRetryable {
                lsn: self.lsn,
                state: self.state,
            });
        }
        let next = self
            .attempt
            .next()
            .ok_or(RetryError::AttemptsExhausted { lsn: self.lsn })?;
        // ACT-3: keep New's time, clear every later one and the execution fields.
        let mut times = StateTimes::default();
        let mut pending_at = now;
        if let Some(created) = self.times.get(ActionState::New) {
            times.set(ActionState::New, created);
            // ACT-4: Pending is never entered before New.
            pending_at = pending_at.max(created);
        }
        times.set(ActionState::Pending, pending_at);
        self.times = times;
        self.execution = None;
        self.attempt = next;
        self.state = ActionState::Pending;
        Ok(next)
    }

    fn record_detail(&mut self, state: ActionState, detail: &TransitionDetail) {
        let has_execution = detail.location.is_some()
            || detail.exit.is_some()
            || detail.cpu_ms.is_some()
            || detail.peak_memory_bytes.is_some()
            || detail.ran.is_some();
        if has_execution {
            let execution = self.execution.get_or_insert_with(Box::default);
            if let Some(location) = &detail.location {
                execution.location = Some(location.clone());
            }
            execution.exit = detail.exit.or(execution.exit);
            execution.cpu_ms = detail.cpu_ms.or(execution.cpu_ms);
            execution.peak_memory_bytes = detail.peak_memory_bytes.or(execution.peak_memory_bytes);
            if detail.ran.is_some() {
                execution.ran = detail.ran.as_deref().cloned();
            }
        }
        if matches!(
            state,
            ActionState::Failed | ActionState::Abandoned | ActionState::Cancelled
        ) {
            let why = match (&detail.reason, detail.exit) {
                (Some(reason), _) => reason.clone(),
                (None, Some(exit)) => format!("{state}: {exit}"),
                (None, None) => state.as_str().to_owned(),
            };
            self.last_error = Some(why.into_boxed_str());
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    const LSN: Lsn = Lsn(42);

    fn at(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    fn attempt(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    fn proc_id() -> ProcId {
        "quic!10.0.0.5:7700,worker-3".parse().unwrap()
    }

    fn step(record: &mut ActionRecord, state: ActionState, ms: u64) -> Result<Applied, Ignored> {
        let t = record.transition_to(state, at(ms));
        record.apply(&t)
    }

    /// A record driven to `Failed` after running on a proc, at attempt 1.
    fn failed_record() -> ActionRecord {
        let mut r = ActionRecord::new(LSN, at(10));
        step(&mut r, ActionState::Pending, 20).unwrap();
        step(&mut r, ActionState::Submitting, 30).unwrap();
        let running = r
            .transition_to(ActionState::Running, at(40))
            .with_detail(TransitionDetail {
                location: Some(proc_id()),
                ..TransitionDetail::default()
            });
        r.apply(&running).unwrap();
        let failed = r
            .transition_to(ActionState::Failed, at(50))
            .with_detail(TransitionDetail {
                exit: Some(ExitStatus::Code(3)),
                cpu_ms: Some(1500),
                peak_memory_bytes: Some(1 << 20),
                ..TransitionDetail::default()
            });
        r.apply(&failed).unwrap();
        r
    }

    // Attests ACT-10
    #[test]
    fn record_is_compact() {
        let size = std::mem::size_of::<ActionRecord>();
        assert!(size <= 112, "ActionRecord grew to {size} bytes (ACT-10)");
    }

    // Attests ACT-1
    #[test]
    fn moves_forward_and_may_skip() {
        let mut r = ActionRecord::new(LSN, at(10));
        assert_eq!(
            step(&mut r, ActionState::Pending, 20),
            Ok(Applied {
                from: ActionState::New,
                to: ActionState::Pending,
                at: at(20)
            })
        );
        let before = r.clone();
        assert!(matches!(
            step(&mut r, ActionState::Pending, 25),
            Err(Ignored::NotForward { .. })
        ));
        assert!(matches!(
            step(&mut r, ActionState::New, 25),
            Err(Ignored::NotForward { .. })
        ));
        assert_eq!(r, before);
        // Pending → Running skips Submitting, which then has no time.
        step(&mut r, ActionState::Running, 30).unwrap();
        assert_eq!(r.entered(ActionState::Submitting), None);
        assert!(matches!(
            step(&mut r, ActionState::Submitting, 35),
            Err(Ignored::NotForward { .. })
        ));
    }

    // Attests ACT-2
    #[test]
    fn terminal_is_final_and_cancel_works_from_every_live_state() {
        for live in [
            ActionState::New,
            ActionState::Pending,
            ActionState::Submitting,
            ActionState::Running,
        ] {
            let mut r = ActionRecord::new(LSN, at(1));
            if live != ActionState::New {
                step(&mut r, live, 2).unwrap();
            }
            step(&mut r, ActionState::Cancelled, 3).unwrap();
            let before = r.clone();
            for other in ActionState::ALL {
                assert_eq!(
                    step(&mut r, other, 4),
                    Err(Ignored::Finished {
                        state: ActionState::Cancelled,
                        got: other
                    })
                );
            }
            assert_eq!(r, before);
            assert!(
                r.retry(at(5)).is_err(),
                "a cancelled action stays cancelled"
            );
        }
    }

    // Attests ACT-3
    #[test]
    fn retry_clears_the_execution_and_keeps_the_story() {
        let mut r = failed_record();
        assert_eq!(r.location(), Some(&proc_id()));
        assert_eq!(r.last_error(), Some("failed: exit code 3"));
        assert_eq!(r.retry(at(60)), Ok(attempt(2)));
        assert_eq!(r.state(), ActionState::Pending);
        assert_eq!(r.attempt(), attempt(2));
        assert_eq!(r.execution(), None);
        assert_eq!(r.last_error(), Some("failed: exit code 3"));
        let times: Vec<_> = r.times().iter().collect();
        assert_eq!(
            times,
            vec![(ActionState::New, at(10)), (ActionState::Pending, at(60))]
        );

        // Abandoned retries too; Completed never does.
        step(&mut r, ActionState::Abandoned, 70).unwrap();
        assert_eq!(r.last_error(), Some("abandoned"));
        assert_eq!(r.retry(at(80)), Ok(attempt(3)));
        step(&mut r, ActionState::Completed, 90).unwrap();
        let before = r.clone();
        assert_eq!(
            r.retry(at(100)),
            Err(RetryError::NotRetryable {
                lsn: LSN,
                state: ActionState::Completed
            })
        );
        assert_eq!(r, before);
    }

    // Attests ACT-3, ACT-9
    #[test]
    fn retry_only_from_failed_or_abandoned() {
        for state in ActionState::ALL {
            assert_eq!(
                state.is_retryable(),
                matches!(state, ActionState::Failed | ActionState::Abandoned)
            );
        }
        let mut r = ActionRecord::new(LSN, at(1));
        step(&mut r, ActionState::Running, 2).unwrap();
        let before = r.clone();
        assert!(matches!(
            r.retry(at(3)),
            Err(RetryError::NotRetryable { .. })
        ));
        assert_eq!(r, before);
    }

    // Attests ACT-3
    #[test]
    fn retry_limit_counts_retries() {
        let mut r = failed_record();
        assert!(!r.can_retry(0));
        assert!(r.can_retry(1));
        r.retry(at(60)).unwrap();
        step(&mut r, ActionState::Failed, 70).unwrap();
        assert!(!r.can_retry(1));
        assert!(r.can_retry(2));
    }

    // Attests ACT-4
    #[test]
    fn entry_times_never_run_backwards() {
        let mut r = ActionRecord::new(LSN, at(100));
        // A host whose clock lags reports Running "before" the orchestrator queued it.
        step(&mut r, ActionState::Pending, 200).unwrap();
        let applied = step(&mut r, ActionState::Running, 150).unwrap();
        assert_eq!(applied.at, at(200));
        assert_eq!(r.entered(ActionState::Running), Some(at(200)));
        // Time 0 is a real time, not "never".
        let mut r = ActionRecord::new(LSN, at(0));
        assert_eq!(r.entered(ActionState::New), Some(at(1)));
        step(&mut r, ActionState::Pending, 0).unwrap();
        assert_eq!(r.entered(ActionState::Pending), Some(at(1)));
    }

    // Attests ACT-5, ACT-6, ACT-7, ACT-9
    #[test]
    fn fencing_drops_foreign_updates() {
        let mut r = failed_record();
        r.retry(at(60)).unwrap();
        let before = r.clone();
        let stale = Transition::new(LSN, attempt(1), ActionState::Completed, at(70));
        assert_eq!(
            r.apply(&stale),
            Err(Ignored::Stale {
                current: attempt(2),
                got: attempt(1)
            })
        );
        let future = Transition::new(LSN, attempt(3), ActionState::Running, at(70));
        let refused = r.apply(&future).unwrap_err();
        assert!(refused.is_violation());
        assert_eq!(refused.code(), "future_attempt");
        let other = Transition::new(Lsn(43), attempt(2), ActionState::Running, at(70));
        assert_eq!(
            r.apply(&other),
            Err(Ignored::OtherLsn {
                record: LSN,
                got: Lsn(43)
            })
        );
        assert_eq!(r, before);
    }

    #[test]
    fn record_round_trips_through_messagepack() {
        let r = failed_record();
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<ActionRecord>(&bytes).unwrap(), r);
        let fresh = ActionRecord::new(LSN, at(5));
        let bytes = rmp_serde::to_vec_named(&fresh).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<ActionRecord>(&bytes).unwrap(),
            fresh
        );
    }
}
