//! The values a [`Book`] takes and gives back: its limits, a new action, and the outcomes the
//! driver carries out ([`Dispatch`], [`StopOrder`], [`Update`]) or answers with ([`BookError`],
//! [`ApplyError`]).

use procmesh_protocol::action::{
    ActionRecord, ActionState, Applied, Attempt, AttemptRef, Ignored, Lsn, RetryError, Transition,
};
use procmesh_protocol::ids::ProcId;
use procmesh_protocol::messages::orchestrator::{ActionView, OrchestratorError, SubmitAction};
use serde::{Deserialize, Serialize};

use super::placement::Labels;
#[cfg(doc)]
use super::Book;

/// Limits of a [`Book`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookLimits {
    /// Idempotency keys remembered per queue, the oldest forgotten first (ORC-9), e.g.
    /// `1048576`.
    pub max_keys_per_queue: usize,
    /// Longest idempotency key accepted, in bytes, e.g. `256`.
    pub max_key_len: usize,
    /// Pending actions looked at per [`schedule`](super::Book::schedule) call at most, e.g. `65536`.
    /// Only actions that require host labels no free proc carries are skipped over, so this
    /// bounds the work of a round when many of them wait at the head.
    pub max_scan: usize,
}

impl Default for BookLimits {
    fn default() -> Self {
        BookLimits {
            max_keys_per_queue: 1 << 20,
            max_key_len: 256,
            max_scan: 1 << 16,
        }
    }
}

/// An action to submit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAction {
    /// Its priority; `None` for the queue's default.
    pub priority: Option<i32>,
    /// A key unique within the queue (ORC-9).
    pub idempotency_key: Option<String>,
    /// Host labels it needs; empty for any host.
    pub requires: Labels,
}

impl From<&SubmitAction> for NewAction {
    fn from(s: &SubmitAction) -> NewAction {
        NewAction {
            priority: s.priority,
            idempotency_key: s.idempotency_key.clone(),
            requires: s.action.resources.host_labels.clone(),
        }
    }
}

/// What a submission got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Its LSN (the earlier one for a remembered idempotency key).
    pub lsn: Lsn,
    /// Whether a new action was created (false for a remembered key).
    pub created: bool,
}

/// One action placed by [`Book::schedule`]: now `Submitting`; the driver sends it to its proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The action's queue.
    pub queue: u64,
    /// Its priority.
    pub priority: i32,
    /// Index of its proc in the slice given to `schedule`.
    pub proc: usize,
    /// The `Submitting` transition applied (with the proc as location): journal and publish it.
    pub transition: Transition,
}

impl Dispatch {
    /// The action.
    pub fn lsn(&self) -> Lsn {
        self.transition.lsn
    }

    /// The attempt the proc runs.
    pub fn attempt_ref(&self) -> AttemptRef {
        self.transition.attempt_ref()
    }
}

/// What an applied transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The action.
    pub lsn: Lsn,
    /// Its queue.
    pub queue: u64,
    /// The attempt the transition was about.
    pub attempt: Attempt,
    /// The move, with the entry time recorded.
    pub applied: Applied,
    /// The attempt ended and was retried: the `Pending` transition of the new attempt (ORC-6).
    pub retry: Option<Transition>,
    /// The action reached a final state: terminal, no retry to come.
    pub finished: bool,
    /// Whether its queue is complete after this update (ORC-11).
    pub queue_complete: bool,
}

/// An attempt whose proc must be told to stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOrder {
    /// The attempt.
    pub attempt: AttemptRef,
    /// Where it was placed, if known.
    pub proc: Option<ProcId>,
}

/// What a cancellation of one action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was not placed yet and is now `Cancelled`.
    Cancelled(Update),
    /// It is placed: tell its proc; the proc reports `Cancelled` (no retry follows whatever it
    /// reports, ORC-10).
    Stopping(StopOrder),
    /// It had already ended in this state; nothing changed.
    AlreadyFinished(ActionState),
}

/// What a cancellation of a queue did (ORC-10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCancel {
    /// Actions that were not placed yet, now `Cancelled`.
    pub cancelled: Vec<Update>,
    /// Placed attempts whose procs must be told to stop them.
    pub stopping: Vec<StopOrder>,
}

impl QueueCancel {
    /// How many actions are being cancelled.
    pub fn count(&self) -> u64 {
        (self.cancelled.len() + self.stopping.len()) as u64
    }
}

/// One action as the book holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionEntry<'a> {
    /// Its lifecycle.
    pub record: &'a ActionRecord,
    /// Its queue.
    pub queue: u64,
    /// Its priority.
    pub priority: i32,
    /// Host labels it needs, if any.
    pub requires: Option<&'a Labels>,
}

impl ActionEntry<'_> {
    /// The wire view of the action.
    pub fn view(&self) -> ActionView {
        ActionView {
            queue: self.queue,
            priority: self.priority,
            record: self.record.clone(),
        }
    }
}

/// Why the book refused a request; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// No such queue.
    #[error("unknown queue {0}")]
    UnknownQueue(u64),
    /// No such action in that queue (or it was retired).
    #[error("unknown action {0}")]
    UnknownAction(Lsn),
    /// The queue is draining: no new actions.
    #[error("queue {0} is draining")]
    QueueDraining(u64),
    /// The queue was cancelled: no new actions, no reschedules.
    #[error("queue {0} was cancelled")]
    QueueCancelled(u64),
    /// The priority of an action can change only while it is pending.
    #[error("action {lsn} is {state}; its priority can change only while pending")]
    NotPending {
        /// The action.
        lsn: Lsn,
        /// Its state.
        state: ActionState,
    },
    /// The action cannot be rescheduled in its state (ORC-7).
    #[error(transparent)]
    Retry(#[from] RetryError),
    /// An idempotency key is too long.
    #[error("idempotency key of {len} bytes exceeds the maximum of {max}")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl From<BookError> for OrchestratorError {
    fn from(e: BookError) -> Self {
        match e {
            BookError::UnknownQueue(id) => OrchestratorError::UnknownQueue(format!("queue {id}")),
            BookError::UnknownAction(lsn) => OrchestratorError::UnknownAction(lsn),
            BookError::QueueDraining(id) => OrchestratorError::QueueDraining(id),
            BookError::QueueCancelled(id) => OrchestratorError::QueueCancelled(id),
            BookError::NotPending { lsn, state } => OrchestratorError::NotPending { lsn, state },
            BookError::Retry(e) => OrchestratorError::Retry(e),
            BookError::KeyTooLong { len, max } => OrchestratorError::KeyTooLong {
                len: len as u64,
                max: max as u64,
            },
        }
    }
}

/// Why a transition was not applied; nothing was changed (ORC-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// No such action (never submitted, or retired).
    #[error("unknown action {0}")]
    UnknownAction(Lsn),
    /// The record refused it (ACT-1, ACT-2, ACT-5 … ACT-7).
    #[error(transparent)]
    Ignored(#[from] Ignored),
}
