//! Messages to the orchestrator, from hosts (registration, heartbeats, lost procs), proc agents
//! (action updates, worker look-ups) and clients (queues, workers, submission, subscriptions).
//!
//! A client session:
//!
//! ```text
//! CreateQueue(config)                      → QueueCreated { id, token }
//! RegisterWorker(descriptor)               → WorkerRegistered { id, missing }   upload missing
//! MissingBlobs(input hashes)               → MissingBlobs(missing)              upload missing
//! Subscribe { Queue(token), me }           → Subscribed { subscription }        then ClientEvents
//! Submit { Token(token), actions }         → Submitted { lsns }                 same order
//! ListResults / Retire …, Drain, QueueStatus until is_complete
//! ```
//!
//! Queues are addressed by [`QueueRef`]: the integer id is accepted from loopback only; remote
//! clients present the unguessable [`QueueToken`], which is a capability.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::agent::Capacity;
pub use super::explain::{AttemptStory, BusyProc, ExplainReason, Explanation, Occupants, Reason};
use super::host::HostInfo;
use super::RemoteMessage;
use crate::action::{
    ActionRecord, ActionState, Applied, Attempt, AttemptRef, ExitStatus, Ignored, Lsn, RetryError,
    Timestamp, Transition,
};
use crate::cas::{parse_hex, write_hex, BlobHash, HexError};
use crate::ids::{ActorId, HostAddr, ProcId};
use crate::spec::{ActionDef, OutputFile, SpecError, WorkerDescriptor, WorkerId};

/// A request to the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchestratorRequest {
    /// A host joins (or rejoins after a restart of either side). Answered by
    /// [`OrchestratorReply::HostRegistered`].
    RegisterHost(HostInfo),
    /// A host is alive; what it runs reconciles the orchestrator's view. Answered by
    /// [`OrchestratorReply::HeartbeatAck`]; `UnknownHost` means: register again.
    Heartbeat(Heartbeat),
    /// A proc died; its actions are abandoned. Answered by [`OrchestratorReply::Ack`].
    ProcLost {
        /// The proc.
        proc_id: ProcId,
        /// How it ended, if it exited.
        #[serde(default)]
        status: Option<ExitStatus>,
        /// What happened.
        reason: String,
    },
    /// An action moved. Answered by [`OrchestratorReply::Updated`].
    ActionUpdate(Transition),
    /// Several transitions, in the order they happened (a proc agent batches what piled up
    /// while the previous message was in flight). Answered by [`OrchestratorReply::Ack`].
    ActionUpdates(Vec<Transition>),
    /// A proc agent needs a worker's descriptor. Answered by [`OrchestratorReply::Worker`].
    GetWorker(WorkerId),
    /// Create a queue. Answered by [`OrchestratorReply::QueueCreated`].
    CreateQueue(QueueConfig),
    /// A queue's counts. Answered by [`OrchestratorReply::QueueStatus`].
    QueueStatus(QueueRef),
    /// Finished actions of a queue not yet retired, in LSN order. Answered by
    /// [`OrchestratorReply::Results`].
    ListResults {
        /// The queue.
        queue: QueueRef,
        /// Only results with a larger LSN (paging).
        #[serde(default)]
        after: Option<Lsn>,
        /// At most this many; `None` for the orchestrator's page size.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Forget finished results. Answered by [`OrchestratorReply::Retired`].
    Retire {
        /// The queue.
        queue: QueueRef,
        /// The actions; unfinished ones are left alone.
        lsns: Vec<Lsn>,
    },
    /// Accept no new actions; finish the rest. Answered by [`OrchestratorReply::Ack`].
    Drain(QueueRef),
    /// Cancel every pending and running action of a queue. Answered by
    /// [`OrchestratorReply::Cancelled`].
    CancelQueue(QueueRef),
    /// Cancel one action. Answered by [`OrchestratorReply::Cancelled`].
    CancelAction {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
    },
    /// Retry a failed or abandoned action now, whatever the retry limit. Answered by
    /// [`OrchestratorReply::Rescheduled`].
    Reschedule {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
    },
    /// Change the priority of a pending action. Answered by [`OrchestratorReply::Ack`].
    SetPriority {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
        /// The new priority (higher first).
        priority: i32,
    },
    /// One action's record. Answered by [`OrchestratorReply::Action`].
    GetAction {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
    },
    /// Register a worker. Answered by [`OrchestratorReply::WorkerRegistered`] with the blobs
    /// still to upload; registering the same descriptor again is harmless.
    RegisterWorker(WorkerDescriptor),
    /// Which of these blobs the orchestrator lacks. Answered by
    /// [`OrchestratorReply::MissingBlobs`].
    MissingBlobs(Vec<BlobHash>),
    /// Submit a batch of actions. Answered by [`OrchestratorReply::Submitted`]. All or nothing:
    /// an invalid action, an unknown worker or a missing blob refuses the whole batch.
    Submit {
        /// The queue.
        queue: QueueRef,
        /// The actions.
        actions: Vec<SubmitAction>,
    },
    /// Receive the transitions of a queue or an action as [`ClientEvent`]s. Answered by
    /// [`OrchestratorReply::Subscribed`]. Subscribe first, then read the status: an event may
    /// repeat what the status shows, and a transition applied twice is ignored (ACT-1).
    ///
    /// [`ClientEvent`]: super::client::ClientEvent
    /// [`ClientEvent::Transition`]: super::client::ClientEvent::Transition
    ///
    /// Every transition of a queue has an index (`seq` of [`ClientEvent::Transition`], from 1,
    /// per queue, journaled: it survives restarts). With `from`, the orchestrator first replays
    /// the queue's recent transitions whose index is `from` or later, then goes live, so a
    /// subscriber that reconnects with the index after the last one it saw misses nothing and
    /// sees nothing twice; what is older than the orchestrator keeps is told as `Lagged`.
    Subscribe {
        /// What to follow.
        target: SubscriptionTarget,
        /// Where to send the events.
        subscriber: ActorId,
        /// Replay from this index of the queue's transitions; `None`: live only.
        #[serde(default)]
        from: Option<u64>,
        /// Which transitions it wants; `QueueComplete`, `Lagged` and `Ended` come always.
        /// Absent (and from an older client): every transition.
        #[serde(default, skip_serializing_if = "EventFilter::is_all")]
        events: EventFilter,
    },
    /// Stop a subscription. Answered by [`OrchestratorReply::Ack`].
    Unsubscribe {
        /// The id from `Subscribed`.
        subscription: u64,
    },
    /// Whether a subscription is still live (a subscriber that heard nothing for a while asks;
    /// an orchestrator restart ends every subscription). Answered by
    /// [`OrchestratorReply::Ack`], or `UnknownSubscription`: then subscribe again with `from`.
    CheckSubscription {
        /// The id from `Subscribed`.
        subscription: u64,
    },
    /// Every known host. Answered by [`OrchestratorReply::Hosts`].
    ListHosts,
    /// Why an action is (not) running, and the story of its attempts. Answered by
    /// [`OrchestratorReply::Explained`]. Read-only; the same queue access as `GetAction`.
    Explain {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
    },
}

/// What the orchestrator answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrchestratorReply {
    /// Done; nothing to say.
    Ack,
    /// The host is registered; heartbeat at this interval.
    HostRegistered {
        /// How often to heartbeat, in milliseconds.
        heartbeat_interval_ms: u64,
        /// Silence after which the host is declared lost, in milliseconds.
        lost_after_ms: u64,
        /// The key (64 hex characters) this host verifies download tickets with: the
        /// orchestrator's ticket key for this node (see [`DownloadTicket`]).
        ///
        /// [`DownloadTicket`]: crate::cas::DownloadTicket
        #[serde(default)]
        ticket_key: Option<String>,
    },
    /// Heartbeat received.
    HeartbeatAck {
        /// Attempts the host runs that the orchestrator does not (any more) place there: the
        /// host cancels them.
        orphans: Vec<AttemptRef>,
    },
    /// What became of an action update.
    Updated(UpdateOutcome),
    /// A worker's descriptor.
    Worker(WorkerDescriptor),
    /// A new queue.
    QueueCreated {
        /// Its id (loopback access only).
        id: u64,
        /// Its token (the capability for remote access).
        token: QueueToken,
    },
    /// A queue's status.
    QueueStatus(QueueStatus),
    /// Finished results.
    Results(Vec<ActionResult>),
    /// How many results were retired.
    Retired {
        /// The count.
        count: u64,
    },
    /// How many actions are being cancelled.
    Cancelled {
        /// The count.
        count: u64,
    },
    /// The action is pending again.
    Rescheduled {
        /// Its new attempt.
        attempt: Attempt,
    },
    /// One action.
    Action(ActionView),
    /// The worker is registered.
    WorkerRegistered {
        /// Its id.
        id: WorkerId,
        /// The blobs to upload before actions may use it.
        missing: Vec<BlobHash>,
    },
    /// The blobs the orchestrator lacks, in the order asked.
    MissingBlobs(Vec<BlobHash>),
    /// The batch was accepted and journaled.
    Submitted {
        /// One LSN per action, in order (the earlier LSN for a repeated idempotency key).
        lsns: Vec<Lsn>,
    },
    /// The subscription is active.
    Subscribed {
        /// Its id, named by every event.
        subscription: u64,
        /// The index the queue's next transition will have (replayed ones come before it).
        #[serde(default)]
        next: u64,
    },
    /// Every known host.
    Hosts(Vec<HostView>),
    /// Why an action is (not) running.
    Explained(Box<Explanation>),
}

impl RemoteMessage for OrchestratorRequest {
    type Reply = Result<OrchestratorReply, OrchestratorError>;
}

/// A host's periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The host's frontend address.
    pub addr: HostAddr,
    /// Each ready proc and its capacity.
    #[serde(default)]
    pub procs: Vec<ProcCapacity>,
    /// Every attempt running on the host.
    #[serde(default)]
    pub running: Vec<AttemptRef>,
}

impl Heartbeat {
    /// The free capacity of the whole host.
    pub fn free(&self) -> u64 {
        self.procs.iter().map(|p| u64::from(p.capacity.free)).sum()
    }
}

/// A proc that accepts actions, and its capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcCapacity {
    /// The proc's agent, where actions are submitted.
    pub agent: ActorId,
    /// Its capacity.
    pub capacity: Capacity,
    /// How many times the host respawned this proc after it exited unasked.
    #[serde(default)]
    pub restarts: u32,
}

/// What became of an action update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOutcome {
    /// Applied.
    Applied(Applied),
    /// Ignored; the record is unchanged. A `Stale` answer tells an agent to stop the attempt.
    Ignored(Ignored),
}

/// A queue's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How many automatic retries a failed or abandoned action gets, e.g. `3`.
    #[serde(default = "QueueConfig::default_retry_limit")]
    pub retry_limit: u32,
    /// Priority of actions submitted without one (higher first), e.g. `0`.
    #[serde(default)]
    pub default_priority: i32,
    /// A label for operators, e.g. `nightly-build`.
    #[serde(default)]
    pub name: String,
}

impl QueueConfig {
    /// The default retry limit: 3.
    pub const DEFAULT_RETRY_LIMIT: u32 = 3;

    fn default_retry_limit() -> u32 {
        Self::DEFAULT_RETRY_LIMIT
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry_limit: Self::DEFAULT_RETRY_LIMIT,
            default_priority: 0,
            name: String::new(),
        }
    }
}

/// Bytes of a [`QueueToken`].
pub const QUEUE_TOKEN_LEN: usize = 12;

/// A queue's unguessable token: 12 random bytes, rendered as 24 lowercase hex characters. The
/// orchestrator draws the bytes; this crate has no randomness.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueToken([u8; QUEUE_TOKEN_LEN]);

impl QueueToken {
    /// The token with these bytes.
    pub const fn from_bytes(bytes: [u8; QUEUE_TOKEN_LEN]) -> QueueToken {
        QueueToken(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; QUEUE_TOKEN_LEN] {
        &self.0
    }
}

impl fmt::Display for QueueToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl fmt::Debug for QueueToken {
    // A capability: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueToken({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl FromStr for QueueToken {
    type Err = HexError;

    fn from_str(s: &str) -> Result<Self, HexError> {
        parse_hex(s).map(QueueToken)
    }
}

impl Serialize for QueueToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a request names a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueueRef {
    /// By integer id: accepted from loopback only.
    Id(u64),
    /// By token: the capability remote clients present.
    Token(QueueToken),
}

impl fmt::Display for QueueRef {
    // The token is a capability: only its start is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueRef::Id(id) => write!(f, "queue {id}"),
            QueueRef::Token(token) => write!(f, "queue {token:?}"),
        }
    }
}

/// A queue's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Its id.
    pub id: u64,
    /// Its label.
    #[serde(default)]
    pub name: String,
    /// How many of its actions (not yet retired) are in each state.
    pub counts: StateCounts,
    /// Whether it refuses new actions.
    #[serde(default)]
    pub draining: bool,
    /// Whether it was cancelled.
    #[serde(default)]
    pub cancelled: bool,
    /// Whether every action has reached a final state (terminal with no retry to come).
    pub is_complete: bool,
}

/// A count per action state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// In `New`.
    #[serde(default)]
    pub new: u64,
    /// In `Pending`.
    #[serde(default)]
    pub pending: u64,
    /// In `Submitting`.
    #[serde(default)]
    pub submitting: u64,
    /// In `Running`.
    #[serde(default)]
    pub running: u64,
    /// In `Completed`.
    #[serde(default)]
    pub completed: u64,
    /// In `Failed`.
    #[serde(default)]
    pub failed: u64,
    /// In `Abandoned`.
    #[serde(default)]
    pub abandoned: u64,
    /// In `Cancelled`.
    #[serde(default)]
    pub cancelled: u64,
}

impl StateCounts {
    fn slot(&mut self, state: ActionState) -> &mut u64 {
        match state {
            ActionState::New => &mut self.new,
            ActionState::Pending => &mut self.pending,
            ActionState::Submitting => &mut self.submitting,
            ActionState::Running => &mut self.running,
            ActionState::Completed => &mut self.completed,
            ActionState::Failed => &mut self.failed,
            ActionState::Abandoned => &mut self.abandoned,
            ActionState::Cancelled => &mut self.cancelled,
        }
    }

    /// The count of `state`.
    pub fn get(&self, state: ActionState) -> u64 {
        let mut copy = *self;
        *copy.slot(state)
    }

    /// Counts one more action in `state`.
    pub fn add(&mut self, state: ActionState) {
        let slot = self.slot(state);
        *slot = slot.saturating_add(1);
    }

    /// Counts one action less in `state` (never below 0).
    pub fn remove(&mut self, state: ActionState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }

    /// Moves one action from `from` to `to`.
    pub fn moved(&mut self, from: ActionState, to: ActionState) {
        self.remove(from);
        self.add(to);
    }

    /// Every action counted.
    pub fn total(&self) -> u64 {
        ActionState::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Actions in a terminal state.
    pub fn terminal(&self) -> u64 {
        ActionState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| self.get(*s))
            .sum()
    }
}

/// One action as the orchestrator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    /// Its queue's id.
    pub queue: u64,
    /// Its priority.
    pub priority: i32,
    /// Its lifecycle.
    pub record: ActionRecord,
}

/// A finished action: its record and what it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResult {
    /// Its lifecycle: final state, attempt, times, location, exit status, CPU, memory, error.
    pub record: ActionRecord,
    /// Output files, in the CAS.
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// The bounded tail of its stdout.
    #[serde(default, with = "serde_bytes")]
    pub stdout_tail: Vec<u8>,
    /// The bounded tail of its stderr.
    #[serde(default, with = "serde_bytes")]
    pub stderr_tail: Vec<u8>,
    /// One download ticket per output, for the host that holds it (fetching an output from a
    /// host needs its ticket).
    #[serde(default)]
    pub tickets: Vec<crate::cas::DownloadTicket>,
}

/// One action of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitAction {
    /// What to run.
    pub action: ActionDef,
    /// Its priority; `None` for the queue's default.
    #[serde(default)]
    pub priority: Option<i32>,
    /// A key unique within the queue: resubmitting it returns the LSN it got the first time
    /// (a client retrying after a lost reply does not run the action twice).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// What a subscription follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionTarget {
    /// Every action of a queue, and the queue's completion.
    Queue(QueueRef),
    /// One action.
    Action {
        /// Its queue.
        queue: QueueRef,
        /// The action.
        lsn: Lsn,
    },
}

/// Which transitions a subscription is told (ORC-20). The queue's own notices
/// (`QueueComplete`, `Lagged`, `Ended`) come whatever the filter; replayed transitions are
/// filtered the same way, and their indices (`seq`) stay those of the queue, so a filtered
/// subscriber sees gaps between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventFilter {
    /// Every transition.
    #[default]
    All,
    /// Only transitions into a final state (an attempt's end, retried or not).
    Finals,
    /// No transition: only the queue's completion (what a client waiting for a queue needs).
    Completion,
}

impl EventFilter {
    /// Whether a transition into `state` is told.
    pub fn wants(self, state: ActionState) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Finals => state.is_terminal(),
            EventFilter::Completion => false,
        }
    }

    /// Whether every transition is told (the default).
    pub fn is_all(&self) -> bool {
        *self == EventFilter::All
    }
}

/// Whether the orchestrator hears from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostState {
    /// Heartbeats arrive.
    Alive,
    /// Silent past the timeout; its running actions were abandoned.
    Lost,
}

/// A host as the orchestrator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// What it registered with.
    pub info: HostInfo,
    /// Whether it is alive.
    pub state: HostState,
    /// When its last heartbeat arrived, by the orchestrator's clock.
    pub last_heartbeat: Timestamp,
    /// Its procs and their capacity, from that heartbeat.
    #[serde(default)]
    pub procs: Vec<ProcCapacity>,
    /// How many actions the orchestrator has placed on it.
    #[serde(default)]
    pub running: u64,
    /// How many it has placed on each of `procs`, in the same order: a proc's slots used, as
    /// the scheduler counts them (its free slots are `capacity.max` minus these, ORC-16).
    #[serde(default)]
    pub placed: Vec<u64>,
}

/// Why the orchestrator refused a request; nothing was changed. Crosses the wire; each variant
/// has a stable [`code`](Self::code) (MSG-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OrchestratorError {
    /// No such queue (or a wrong token).
    #[error("unknown {0}")]
    UnknownQueue(String),
    /// A queue id from a remote client: remote access needs the token.
    #[error("queue ids are accepted from loopback only; use the queue token")]
    Forbidden,
    /// The sender's verified identity may not make this request (a client reporting a
    /// transition, a host speaking for another node, …); nothing changed. Code `forbidden`.
    #[error("forbidden: {0}")]
    NotPermitted(String),
    /// The queue is draining: no new actions.
    #[error("queue {0} is draining")]
    QueueDraining(u64),
    /// The queue was cancelled.
    #[error("queue {0} was cancelled")]
    QueueCancelled(u64),
    /// No such action in that queue.
    #[error("unknown action {0}")]
    UnknownAction(Lsn),
    /// The action cannot be retried or re-prioritised in its state.
    #[error("{0}")]
    Retry(RetryError),
    /// The priority of an action can change only while it is pending.
    #[error("action {lsn} is {state}; its priority can change only while pending")]
    NotPending {
        /// The action.
        lsn: Lsn,
        /// Its state.
        state: ActionState,
    },
    /// A heartbeat from a host that is not registered: register again.
    #[error("unknown host {0}")]
    UnknownHost(HostAddr),
    /// No such worker.
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    /// Blobs to upload first.
    #[error("{} blobs are missing", .0.len())]
    MissingBlobs(Vec<BlobHash>),
    /// A worker descriptor is invalid.
    #[error("invalid worker: {0}")]
    InvalidWorker(SpecError),
    /// An action of a batch is invalid.
    #[error("invalid action #{index} of the batch: {error}")]
    InvalidAction {
        /// Its position in the batch.
        index: u32,
        /// What is wrong.
        error: SpecError,
    },
    /// The batch is larger than the orchestrator accepts.
    #[error("batch of {len} actions exceeds the maximum of {max}")]
    BatchTooLarge {
        /// The batch's size.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// No such subscription.
    #[error("unknown subscription {0}")]
    UnknownSubscription(u64),
    /// An idempotency key is longer than the orchestrator remembers.
    #[error("idempotency key of {len} bytes exceeds the maximum of {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The journal could not record the change.
    #[error("journal error: {0}")]
    Journal(String),
    /// The orchestrator is shutting down.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
    /// Anything else; the text says what.
    #[error("orchestrator error: {0}")]
    Internal(String),
}

impl OrchestratorError {
    /// A stable, matchable code.
    pub const fn code(&self) -> &'static str {
        match self {
            OrchestratorError::UnknownQueue(_) => "unknown_queue",
            OrchestratorError::Forbidden => "forbidden",
            OrchestratorError::NotPermitted(_) => "forbidden",
            OrchestratorError::QueueDraining(_) => "queue_draining",
            OrchestratorError::QueueCancelled(_) => "queue_cancelled",
            OrchestratorError::UnknownAction(_) => "unknown_action",
            OrchestratorError::Retry(_) => "not_retryable",
            OrchestratorError::NotPending { .. } => "not_pending",
            OrchestratorError::UnknownHost(_) => "unknown_host",
            OrchestratorError::UnknownWorker(_) => "unknown_worker",
            OrchestratorError::MissingBlobs(_) => "missing_blobs",
            OrchestratorError::InvalidWorker(_) => "invalid_worker",
            OrchestratorError::InvalidAction { .. } => "invalid_action",
            OrchestratorError::BatchTooLarge { .. } => "batch_too_large",
            OrchestratorError::UnknownSubscription(_) => "unknown_subscription",
            OrchestratorError::KeyTooLong { .. } => "key_too_long",
            OrchestratorError::Journal(_) => "journal",
            OrchestratorError::ShuttingDown => "shutting_down",
            OrchestratorError::Internal(_) => "internal",
        }
    }
}

impl From<RetryError> for OrchestratorError {
    fn from(e: RetryError) -> Self {
        OrchestratorError::Retry(e)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn tokens_are_24_hex_and_stay_out_of_logs() {
        let token = QueueToken::from_bytes([0xab; QUEUE_TOKEN_LEN]);
        let text = token.to_string();
        assert_eq!(text.len(), 24);
        assert_eq!(text.parse::<QueueToken>(), Ok(token));
        assert!("ab".repeat(11).parse::<QueueToken>().is_err());
        assert!("AB".repeat(12).parse::<QueueToken>().is_err());
        assert!(!format!("{token:?}").contains(&text));
        assert!(!QueueRef::Token(token).to_string().contains(&text));
        let bytes = rmp_serde::to_vec_named(&token).unwrap();
        assert_eq!(rmp_serde::from_slice::<QueueToken>(&bytes).unwrap(), token);
        let bad = rmp_serde::to_vec_named("not a token").unwrap();
        assert!(rmp_serde::from_slice::<QueueToken>(&bad).is_err());
    }

    #[test]
    fn counts_follow_moves() {
        let mut counts = StateCounts::default();
        counts.add(ActionState::Pending);
        counts.add(ActionState::Pending);
        counts.moved(ActionState::Pending, ActionState::Completed);
        assert_eq!(counts.get(ActionState::Pending), 1);
        assert_eq!(counts.get(ActionState::Completed), 1);
        assert_eq!((counts.total(), counts.terminal()), (2, 1));
        counts.remove(ActionState::Failed);
        assert_eq!(counts.get(ActionState::Failed), 0);
    }

    #[test]
    fn queue_config_defaults() {
        let config = QueueConfig::default();
        assert_eq!(config.retry_limit, 3);
        assert_eq!(config.default_priority, 0);
        // An empty map decodes to the same defaults (MSG-1).
        let empty = rmp_serde::to_vec_named(&BTreeMap::<String, u8>::new()).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<QueueConfig>(&empty).unwrap(),
            config
        );
    }

    #[test]
    fn an_explanation_round_trips_in_messagepack_and_json() {
        let proc = HostAddr::Local("h".into()).proc("p1").unwrap();
        let e = Explanation {
            lsn: Lsn(7),
            state: ActionState::Pending,
            attempt: Attempt::FIRST.next().unwrap(),
            max_attempts: 4,
            priority: 0,
            requires: [("gpu".into(), "a100".into())].into(),
            reasons: vec![ExplainReason {
                summary: "all slots busy".into(),
                reason: Reason::AllSlotsBusy {
                    procs: vec![BusyProc {
                        proc: proc.clone(),
                        max: 1,
                        placed: 1,
                        own: vec![Lsn(6)],
                        other_queues: 2,
                        others: vec![Occupants {
                            queue: 2,
                            lsns: vec![Lsn(3), Lsn(4)],
                        }],
                    }],
                },
            }],
            attempts: vec![AttemptStory {
                attempt: Attempt::FIRST,
                proc: Some(proc),
                queued: Some(Timestamp(1)),
                placed: Some(Timestamp(2)),
                started: None,
                ended: Some(Timestamp(3)),
                state: ActionState::Abandoned,
                reason: Some("proc lost".into()),
                exit: None,
            }],
        };
        let bytes = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(rmp_serde::from_slice::<Explanation>(&bytes).unwrap(), e);
        let reply = OrchestratorReply::Explained(Box::new(e.clone()));
        let bytes = rmp_serde::to_vec_named(&reply).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<OrchestratorReply>(&bytes).unwrap(),
            reply
        );
    }
}
