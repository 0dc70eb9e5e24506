//! The action state machine: an [`ActionRecord`] fed with [`Transition`]s.
//!
//! ```text
//!  New ──▶ Pending ──▶ Submitting ──▶ Running ──┬──▶ Completed
//!            ▲                                 ├──▶ Failed    ──┐
//!            │                                 ├──▶ Abandoned ──┤
//!            │                                 └──▶ Cancelled   │
//!            └────────────── retry: attempt + 1 ────────────────┘
//!
//!  stage:    0        1          2            3          4 (every terminal state)
//! ```
//!
//! A transition may skip forward (an agent that cannot prepare an action reports `Submitting →
//! Failed`; any non-terminal state may end `Cancelled`). The record is pure data: time is the
//! transition's `at` or the `now` handed to [`ActionRecord::retry`], never read from a clock, so
//! the orchestrator can rebuild every record by replaying its journal.
//!
//! Rejections are values ([`Ignored`], [`RetryError`]), most of them benign in a distributed
//! system: a duplicate or late update after a partition heals is expected, and dropping it is
//! the whole point of fencing.
//!
//! # Invariants
//! - **ACT-1** Forward only: a transition is applied only if its state is at a later stage than
//!   the current one (skipping stages is allowed); the same or an earlier state is ignored
//!   ([`Ignored::NotForward`]).
//! - **ACT-2** Terminal is final: once `Completed`, `Failed`, `Abandoned` or `Cancelled`, every
//!   transition is ignored ([`Ignored::Finished`]), another terminal state included. The only way
//!   out of a terminal state is [`ActionRecord::retry`].
//! - **ACT-3** The one way back: `retry` moves `Failed` or `Abandoned` (never `Completed` or
//!   `Cancelled`) to `Pending`, increments the attempt by exactly one, clears the execution
//!   fields (location, exit status, CPU time, peak memory) and the entry times of every state
//!   after `Pending`, and stamps `Pending` with `now`. The time of `New` and the last error (why
//!   the previous attempt ended) are kept.
//! - **ACT-4** Each state keeps the time it was entered. Within an attempt the entry times are
//!   non-decreasing in lifecycle order: a transition stamped earlier than a time already recorded
//!   (a skewed clock) is entered at that recorded time instead. Skipped states have no time.
//! - **ACT-5** Fencing: a transition naming an attempt older than the current one is stale
//!   ([`Ignored::Stale`]) and changes nothing.
//! - **ACT-6** A transition naming an attempt newer than the current one is refused
//!   ([`Ignored::FutureAttempt`]): only `retry` creates attempts, so such an update is a protocol
//!   violation, and it changes nothing.
//! - **ACT-7** A transition for another LSN is refused ([`Ignored::OtherLsn`]) and changes
//!   nothing.
//! - **ACT-8** Attempts start at 1 ([`Attempt::FIRST`]) and only grow; attempt 0 does not exist,
//!   not even on the wire.
//! - **ACT-9** A rejected `apply` or `retry` leaves the record exactly as it was.
//! - **ACT-10** An [`ActionRecord`] takes at most 112 bytes inline (the orchestrator holds a
//!   million pending ones); the rarely present execution details live behind one `Box`.
mod record;
mod transition;

use std::fmt;
use std::str::FromStr;

use serde::de;
use serde::{Deserialize, Deserializer, Serialize};

pub use record::{ActionRecord, Applied, Execution, Ignored, RetryError, StateTimes};
pub use transition::{AttemptRef, RanProgram, Transition, TransitionDetail};

/// Log sequence number: the orchestrator's unique, monotonically increasing number of an
/// accepted action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The number of an attempt at running an action: the first is 1, each retry adds one (ACT-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Attempt(u32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Attempt = Attempt(1);

    /// Attempt `n`, or `None` for 0 (ACT-8).
    pub const fn new(n: u32) -> Option<Attempt> {
        if n == 0 {
            None
        } else {
            Some(Attempt(n))
        }
    }

    /// The attempt number, at least 1.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one, or `None` when the counter is exhausted.
    pub const fn next(self) -> Option<Attempt> {
        match self.0.checked_add(1) {
            Some(n) => Some(Attempt(n)),
            None => None,
        }
    }

    /// How many retries led to this attempt (0 for the first).
    pub const fn retries(self) -> u32 {
        self.0 - 1
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Attempt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // ACT-8: attempt 0 is refused on arrival, so no record ever holds it.
        let n = u32::deserialize(d)?;
        Attempt::new(n)
            .ok_or_else(|| de::Error::custom("attempt 0 does not exist: attempts start at 1"))
    }
}

/// A point in time: milliseconds since the Unix epoch. Always passed in, never read from a clock
/// by this crate.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The time `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus `ms` milliseconds, saturating.
    pub const fn plus_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to this time, 0 when `earlier` is later.
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where an action is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionState {
    /// Accepted and journaled, not yet queued.
    New,
    /// Queued, waiting for capacity.
    Pending,
    /// Sent to a proc agent, not yet started there.
    Submitting,
    /// Its process runs.
    Running,
    /// Terminal: it ran and succeeded.
    Completed,
    /// Terminal: it ran (or could not be prepared) and failed; may be retried.
    Failed,
    /// Terminal: the work was lost with its proc or host (not a failure of the action); may be
    /// retried.
    Abandoned,
    /// Terminal: cancelled on request; never `Completed`.
    Cancelled,
}

impl ActionState {
    /// How many states there are.
    pub const COUNT: usize = 8;

    /// Every state, in lifecycle order (the terminal ones last).
    pub const ALL: [ActionState; ActionState::COUNT] = [
        ActionState::New,
        ActionState::Pending,
        ActionState::Submitting,
        ActionState::Running,
        ActionState::Completed,
        ActionState::Failed,
        ActionState::Abandoned,
        ActionState::Cancelled,
    ];

    /// A dense index `0..COUNT`, the position in [`ALL`](Self::ALL).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The position in the lifecycle: 0 for `New` up to 4, which every terminal state shares.
    pub const fn stage(self) -> u8 {
        match self {
            ActionState::New => 0,
            ActionState::Pending => 1,
            ActionState::Submitting => 2,
            ActionState::Running => 3,
            ActionState::Completed
            | ActionState::Failed
            | ActionState::Abandoned
            | ActionState::Cancelled => 4,
        }
    }

    /// Whether moving from `current` to this state goes forward (ACT-1).
    pub const fn is_after(self, current: ActionState) -> bool {
        self.stage() > current.stage()
    }

    /// Whether this state ends an attempt (ACT-2).
    pub const fn is_terminal(self) -> bool {
        self.stage() == 4
    }

    /// Whether [`ActionRecord::retry`] may leave this state (ACT-3).
    pub const fn is_retryable(self) -> bool {
        matches!(self, ActionState::Failed | ActionState::Abandoned)
    }

    /// The lowercase name, as rendered and parsed.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionState::New => "new",
            ActionState::Pending => "pending",
            ActionState::Submitting => "submitting",
            ActionState::Running => "running",
            ActionState::Completed => "completed",
            ActionState::Failed => "failed",
            ActionState::Abandoned => "abandoned",
            ActionState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no [`ActionState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action state {0:?}: expected one of new, pending, submitting, running, completed, failed, abandoned, cancelled")]
pub struct ParseStateError(pub String);

impl FromStr for ActionState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, ParseStateError> {
        ActionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError(s.to_owned()))
    }
}

/// How a process ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub const fn success(self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The exit code, if it exited.
    pub const fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        }
    }

    /// The signal, if one killed it.
    pub const fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Code(_) => None,
            ExitStatus::Signal(s) => Some(s),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt::new(n).unwrap()
    }

    // Attests ACT-8
    #[test]
    fn attempt_zero_does_not_exist() {
        assert_eq!(Attempt::new(0), None);
        assert_eq!(Attempt::FIRST.get(), 1);
        assert_eq!(Attempt::FIRST.retries(), 0);
        assert_eq!(attempt(u32::MAX).next(), None);
        let zero = rmp_serde::to_vec(&0u32).unwrap();
        assert!(rmp_serde::from_slice::<Attempt>(&zero).is_err());
        let one = rmp_serde::to_vec(&1u32).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<Attempt>(&one).unwrap(),
            Attempt::FIRST
        );
    }

    #[test]
    fn states_render_and_parse() {
        for state in ActionState::ALL {
            assert_eq!(state.to_string().parse::<ActionState>(), Ok(state));
            assert_eq!(ActionState::ALL[state.index()], state);
        }
        assert!("Running".parse::<ActionState>().is_err());
        assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(0).success());
    }
}
