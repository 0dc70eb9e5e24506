//! Messages of a proc agent: [`AgentRequest`] (submit, cancel, capacity, status, stop) and
//! [`ActionSpec`], one attempt of an action as the agent's runner receives it.
//!
//! ```text
//! orchestrator ── Submit { action, report_to } ──▶ proc agent      Ok(Accepted)
//! proc agent   ── OrchestratorRequest::ActionUpdate(Transition) ──▶ report_to
//!                  Running (location), then Completed | Failed | Cancelled (figures, outputs)
//! orchestrator ── Cancel { lsn, attempt } ──▶ proc agent           SIGTERM, grace, SIGKILL
//! ```

use serde::{Deserialize, Serialize};

use super::RemoteMessage;
use crate::action::{ActionState, Attempt, AttemptRef, Lsn, Timestamp};
use crate::ids::{ActorId, ProcId};
use crate::spec::{ActionDef, SpecError, WorkerId};

/// A request to a proc agent.
// Submissions are most of the traffic, so boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Run one attempt of an action. Answered by [`AgentReply::Accepted`] once it holds a slot;
    /// its progress then travels as transitions to `report_to`.
    Submit {
        /// What to run.
        action: ActionSpec,
        /// Where to send its transitions (the orchestrator).
        report_to: ActorId,
    },
    /// Cancel an attempt: SIGTERM to its process group, a grace period, then SIGKILL; it ends
    /// `Cancelled`. Answered by [`AgentReply::Cancelling`].
    Cancel {
        /// The action.
        lsn: Lsn,
        /// The attempt; another attempt of the same action is left alone.
        attempt: Attempt,
        /// Why, for the action's record.
        #[serde(default)]
        reason: String,
    },
    /// How much it may still accept. Answered by [`AgentReply::Capacity`].
    Capacity,
    /// What it is running. Answered by [`AgentReply::Status`].
    Status,
    /// Check a route from this proc: ask the target and report the round trip. An operator's
    /// connectivity probe ("can proc A reach B?"). Answered by [`AgentReply::Probed`].
    Probe(Probe),
    /// Stop accepting work, cancel what runs, clean up and exit. Answered by
    /// [`AgentReply::Stopping`].
    Stop {
        /// Why.
        reason: String,
    },
    /// Run several attempts: each is accepted or refused on its own, as one [`Submit`] would
    /// be. Answered by [`AgentReply::Batch`], one answer per action, in order; `Stopping` refuses
    /// the whole batch. One message instead of many when the orchestrator places several actions
    /// on one proc in the same pass.
    ///
    /// [`Submit`]: AgentRequest::Submit
    SubmitBatch {
        /// What to run.
        actions: Vec<ActionSpec>,
        /// Where to send their transitions (the orchestrator).
        report_to: ActorId,
    },
    /// Stop accepting work but let what runs finish and report (a host draining before it
    /// exits). New submissions are refused `Stopping`, and [`AgentRequest::Capacity`] answers
    /// a maximum of 0, so that the orchestrator places nothing more here. A later `Stop` still
    /// cancels what is left. Answered by [`AgentReply::Stopping`].
    Drain {
        /// Why.
        reason: String,
    },
}

/// What a [`AgentRequest::Probe`] asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Ask this proc agent for its capacity.
    Agent(ActorId),
    /// Ask this host agent for its status.
    Host(ActorId),
}

/// One attempt of an action, as the orchestrator hands it to a proc agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// The action.
    pub lsn: Lsn,
    /// The attempt; every transition the agent reports names it (ACT-5).
    pub attempt: Attempt,
    /// The priority it was scheduled with (higher first).
    #[serde(default)]
    pub priority: i32,
    /// The id of the action's queue, for the attempt's span and log lines (0 when an older
    /// orchestrator did not send it).
    #[serde(default)]
    pub queue: u64,
    /// What to run.
    pub action: ActionDef,
}

impl ActionSpec {
    /// The attempt it is.
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            lsn: self.lsn,
            attempt: self.attempt,
        }
    }

    /// The worker to run.
    pub fn worker(&self) -> WorkerId {
        self.action.worker
    }
}

/// What a proc agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentReply {
    /// The attempt holds a slot and is being prepared.
    Accepted(AttemptRef),
    /// A cancellation was started (`found`), or the attempt is not running here (it already
    /// ended, or never arrived).
    Cancelling {
        /// Whether the attempt was running here.
        found: bool,
    },
    /// Its capacity.
    Capacity(Capacity),
    /// What it is running.
    Status(AgentStatus),
    /// The probed actor answered.
    Probed {
        /// Who answered: the proc it lives in.
        answered_by: ProcId,
        /// Round trip, in microseconds.
        rtt_us: u64,
    },
    /// It is stopping.
    Stopping {
        /// How many actions it is cancelling.
        running: u32,
    },
    /// The answers to a [`AgentRequest::SubmitBatch`], one per action, in order.
    Batch(Vec<Result<AttemptRef, AgentError>>),
}

impl RemoteMessage for AgentRequest {
    type Reply = Result<AgentReply, AgentError>;
}

/// A runner's capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Most actions it runs at once.
    pub max: u32,
    /// How many more it accepts now (actions being prepared count as running).
    pub free: u32,
}

/// What a proc agent is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The proc.
    pub proc_id: ProcId,
    /// Its capacity.
    pub capacity: Capacity,
    /// Every attempt it holds.
    #[serde(default)]
    pub actions: Vec<RunningAction>,
    /// Whether it is stopping.
    #[serde(default)]
    pub stopping: bool,
}

/// An attempt a proc agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningAction {
    /// Which.
    pub action: AttemptRef,
    /// Its state here (`Submitting` while being prepared, `Running`).
    pub state: ActionState,
    /// Since when, by the proc's clock.
    pub since: Timestamp,
}

/// Why a proc agent refused a request. Crosses the wire; each variant has a stable
/// [`code`](Self::code) (MSG-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AgentError {
    /// No free slot.
    #[error("no capacity: all {max} slots are taken")]
    NoCapacity {
        /// The proc's maximum.
        max: u32,
    },
    /// This attempt is already held here.
    #[error("attempt {0} is already here")]
    Duplicate(AttemptRef),
    /// The action is invalid (SPEC-1, SPEC-3).
    #[error("invalid action: {0}")]
    InvalidAction(SpecError),
    /// The worker is neither cached nor obtainable.
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    /// The agent is stopping.
    #[error("the proc agent is stopping")]
    Stopping,
    /// A probe found no answer.
    #[error("probe of {target} failed: {reason}")]
    Unreachable {
        /// What was probed.
        target: ActorId,
        /// Why it failed.
        reason: String,
    },
    /// Anything else; the text says what.
    #[error("proc agent error: {0}")]
    Internal(String),
    /// The sender's verified identity may not make this request; nothing changed.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AgentError {
    /// A stable, matchable code.
    pub const fn code(&self) -> &'static str {
        match self {
            AgentError::NoCapacity { .. } => "no_capacity",
            AgentError::Duplicate(_) => "duplicate",
            AgentError::InvalidAction(_) => "invalid_action",
            AgentError::UnknownWorker(_) => "unknown_worker",
            AgentError::Stopping => "stopping",
            AgentError::Unreachable { .. } => "unreachable",
            AgentError::Internal(_) => "internal",
            AgentError::Forbidden(_) => "forbidden",
        }
    }
}
