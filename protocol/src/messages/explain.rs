//! Why an action is (not) running, and the story of its attempts: what
//! `OrchestratorRequest::Explain` answers (`procmesh explain`, `/api/v1/actions/{lsn}/explain`).
//! Re-exported from [`super::orchestrator`].

use serde::{Deserialize, Serialize};

use crate::action::{ActionState, Attempt, ExitStatus, Lsn, Timestamp};
use crate::ids::ProcId;

/// One attempt of an action, as it went: where it was placed, when, how and why it ended.
/// Ended attempts are kept by the orchestrator (the last 32 of an action); the current one is
/// read from the action's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptStory {
    /// Which attempt (1, 2, …).
    pub attempt: Attempt,
    /// The proc it was placed on, if it was placed.
    #[serde(default)]
    pub proc: Option<ProcId>,
    /// When it became `Pending` (queued for placement).
    #[serde(default)]
    pub queued: Option<Timestamp>,
    /// When it was placed (`Submitting`).
    #[serde(default)]
    pub placed: Option<Timestamp>,
    /// When it started running.
    #[serde(default)]
    pub started: Option<Timestamp>,
    /// When it ended; `None` while it is the live attempt.
    #[serde(default)]
    pub ended: Option<Timestamp>,
    /// Its state: the terminal state it ended in, or the current one.
    pub state: ActionState,
    /// Why it ended (the reason of the ending transition), if one was given.
    #[serde(default)]
    pub reason: Option<String>,
    /// How its process exited, if it did.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
}

/// How many actions of one queue occupy a proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occupants {
    /// The queue's integer id.
    pub queue: u64,
    /// Its actions placed on the proc, in LSN order.
    pub lsns: Vec<Lsn>,
}

/// A proc that would fit the action but has no free slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyProc {
    /// The proc.
    pub proc: ProcId,
    /// Its maximum of concurrent actions (its last heartbeat).
    pub max: u32,
    /// How many actions the orchestrator has placed on it (`Submitting` or `Running`).
    pub placed: u32,
    /// The actions of the asking action's own queue placed there.
    #[serde(default)]
    pub own: Vec<Lsn>,
    /// How many actions of other queues are placed there (always told).
    #[serde(default)]
    pub other_queues: u32,
    /// Which other queues' actions, for an operator's view only (empty for a client: other
    /// queues' details do not leak).
    #[serde(default)]
    pub others: Vec<Occupants>,
}

/// One reason for an action's state, with a one-line summary for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReason {
    /// One line, for people (`procmesh explain` prints it).
    pub summary: String,
    /// The reason, as data.
    pub reason: Reason,
}

/// Why an action is where it is. For a pending action, every reason that applies is listed;
/// there is no retry backoff (a retried attempt is `Pending` at once), so "waiting for a
/// backoff" is never a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// No host is alive at all.
    NoHostAlive {
        /// How many hosts are known (lost ones).
        known: u32,
    },
    /// No alive host carries every label the action requires.
    LabelsUnmet {
        /// The labels the action requires.
        requires: std::collections::BTreeMap<String, String>,
        /// How many hosts are alive.
        alive_hosts: u32,
    },
    /// Alive hosts fit, but they offer no proc with a capacity (no ready proc).
    NoReadyProc {
        /// How many alive hosts fit the labels.
        fitting_hosts: u32,
    },
    /// Every fitting proc is full.
    AllSlotsBusy {
        /// The fitting procs, each with who occupies it.
        procs: Vec<BusyProc>,
    },
    /// Fitting procs that refused a submission or could not be reached get no placement until
    /// their host's next heartbeat (ORC-17).
    Sidelined {
        /// The procs.
        procs: Vec<ProcId>,
    },
    /// The queue is draining: it accepts no new actions; this one still runs.
    QueueDraining,
    /// The queue is cancelled: nothing of it will be placed or retried.
    QueueCancelled,
    /// Pending actions ahead of it in dispatch order (priority, then LSN) take the free slots
    /// first.
    AheadInLine {
        /// How many pending actions are ahead (counted up to the orchestrator's scan bound).
        ahead: u64,
        /// Free slots on the procs that fit it.
        free_slots: u32,
    },
    /// Capacity is free and it fits: the next dispatch pass places it.
    WillBePlaced {
        /// Free slots on the procs that fit it.
        free_slots: u32,
    },
    /// This is a retry: attempt `attempt` of at most `max_attempts`.
    Retry {
        /// The current attempt.
        attempt: Attempt,
        /// At most this many attempts (the queue's retry limit + 1).
        max_attempts: u32,
        /// What ended the previous attempt.
        #[serde(default)]
        previous: Option<String>,
    },
    /// It is placed (`Submitting`) or running.
    Placed {
        /// Where.
        proc: Option<ProcId>,
        /// Its state, `Submitting` or `Running`.
        state: ActionState,
        /// Since when it is in that state.
        since: Option<Timestamp>,
        /// The attempt.
        attempt: Attempt,
    },
    /// It ended and will not run again.
    Ended {
        /// How it ended.
        state: ActionState,
        /// Why, if a reason was given.
        #[serde(default)]
        reason: Option<String>,
        /// How its process exited, if it did.
        #[serde(default)]
        exit: Option<ExitStatus>,
        /// Why it is not retried.
        not_retried: String,
    },
}

/// Why an action is in its state, for `procmesh explain` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The action.
    pub lsn: Lsn,
    /// Its state now.
    pub state: ActionState,
    /// Its current attempt.
    pub attempt: Attempt,
    /// At most this many attempts (the queue's retry limit + 1).
    pub max_attempts: u32,
    /// Its priority (higher first).
    pub priority: i32,
    /// The host labels it requires.
    #[serde(default)]
    pub requires: std::collections::BTreeMap<String, String>,
    /// The reasons, most important first.
    pub reasons: Vec<ExplainReason>,
    /// Every attempt: the ended ones kept, then the current one, oldest first.
    pub attempts: Vec<AttemptStory>,
}
