//! What the core takes ([`Input`]) and what it gives back ([`Outcome`], [`Effect`]).
//!
//! Every input that changed state is journaled as a [`Logged`] (the input and its `now`) before
//! any effect of it leaves the process; replaying the logged inputs in order rebuilds the state
//! (ORC-26). Randomness comes in with the input (the token of a new queue), so a replay draws
//! nothing.

use procmesh_protocol::messages::agent::ActionSpec;
use procmesh_protocol::messages::orchestrator::{
    EventFilter, OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueStatus, QueueToken,
};
use procmesh_protocol::{ActorId, AttemptRef, BlobHash, Lsn, ProcId, Timestamp, Transition};
use serde::{Deserialize, Serialize};

use crate::authority::Peer;
use crate::config::CoreConfig;
use crate::events::Backlog;

/// The answer to a request.
pub type Answer = Result<OrchestratorReply, OrchestratorError>;

/// One input of the core.
// A request is the large variant by design: an input lives only while it is handled, and boxing
// it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A request of a host, an agent or a client.
    Request(Request),
    /// Run a dispatch pass (asked for by [`Effect::DispatchAgain`]; ORC-22).
    Dispatch,
    /// The periodic tick: silent hosts (ORC-18).
    Tick,
    /// A proc agent refused a submission or could not be reached (ORC-17).
    SubmitFailed {
        /// The attempt.
        attempt: AttemptRef,
        /// Where it was placed.
        proc: ProcId,
        /// Why.
        reason: String,
    },
    /// A stop order did not reach an agent running the attempt (ORC-24).
    StopFailed {
        /// The attempt.
        attempt: AttemptRef,
        /// Why.
        reason: String,
    },
    /// The orchestrator restarted and replayed its journal: hosts get a fresh window (ORC-27).
    Recovered,
    /// The settings changed (at start, when they differ from the journal's).
    Configure(CoreConfig),
}

/// A request with what the shell knows of its sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The request.
    pub message: OrchestratorRequest,
    /// The sending actor.
    pub from: ActorId,
    /// Whether the sender's connection is loopback (ORC-15).
    pub loopback: bool,
    /// For `CreateQueue`: the token the shell drew from the OS CSPRNG.
    #[serde(default)]
    pub token: Option<QueueToken>,
    /// What the transport verified about the sender's connection; `None` for this process.
    /// Not journaled: a journaled input passed the checks of its connection when it was live,
    /// and replays without them. Checks that depend only on the input and the state (ORC-35
    /// for each transition of a batch) run on replay too, and a registration carries exactly
    /// the node its certificate named (ORC-33), so a replay applies what was applied live.
    #[serde(skip)]
    pub peer: Option<Peer>,
}

impl Input {
    /// Whether this input can change state, so that the shell must journal it (before handing it
    /// over, since the core consumes it). Reads never change state.
    pub fn may_change_state(&self) -> bool {
        use OrchestratorRequest as R;
        match self {
            Input::Request(req) => !matches!(
                req.message,
                R::QueueStatus(_)
                    | R::ListResults { .. }
                    | R::GetAction { .. }
                    | R::GetWorker(_)
                    | R::MissingBlobs(_)
                    | R::ListHosts
                    | R::Explain { .. }
                    | R::Subscribe { .. }
                    | R::Unsubscribe { .. }
                    | R::CheckSubscription { .. }
            ),
            _ => true,
        }
    }
}

/// An input as journaled: with the time it was handled at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    /// When it was handled.
    pub now: Timestamp,
    /// The input.
    pub input: Input,
}

/// What the core knows of the world outside it, asked while handling an input. A replay answers
/// with [`Replay`]: only inputs that changed state were journaled, and their checks passed.
pub trait Env {
    /// Whether the orchestrator's blob store holds `hash` (submission checks, ORC-23).
    fn has_blob(&self, hash: &BlobHash) -> bool;
    /// Whether anyone follows `queue`'s events (publishing nobody hears is skipped).
    fn follows(&self, queue: u64) -> bool;
}

/// The [`Env`] of a replay: every blob is there (the journaled input passed its checks), and
/// nobody listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay;

impl Env for Replay {
    fn has_blob(&self, _: &BlobHash) -> bool {
        true
    }

    fn follows(&self, _: u64) -> bool {
        false
    }
}

/// What handling one input produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// For a request: its answer, unless an effect answers it ([`Effect::Subscribe`],
    /// [`Effect::Unsubscribe`]).
    pub reply: Option<Answer>,
    /// Whether the state changed: then the input must be journaled before any effect leaves.
    pub changed: bool,
    /// What the shell must do, in order, once the input is committed.
    pub effects: Vec<Effect>,
    /// How many parts of the input (transitions of a batch) were refused as forbidden; a
    /// whole request refused is its `reply`.
    pub refused: u32,
}

/// One thing the shell carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask `agent` to run `specs` (one `AgentRequest::SubmitBatch`); failures come back as
    /// [`Input::SubmitFailed`].
    SubmitBatch {
        /// The proc.
        proc: ProcId,
        /// Its agent.
        agent: ActorId,
        /// What to run, in dispatch order.
        specs: Vec<ActionSpec>,
    },
    /// Ask `agent` to stop an attempt; a failure comes back as [`Input::StopFailed`].
    Cancel {
        /// The agent.
        agent: ActorId,
        /// The attempt.
        attempt: AttemptRef,
        /// Why.
        reason: String,
    },
    /// A transition of an action of `queue`, for its subscribers.
    Publish {
        /// The queue.
        queue: u64,
        /// Its index among the queue's transitions (ORC-32).
        seq: u64,
        /// The transition as applied.
        transition: Transition,
    },
    /// A queue completed, for its subscribers.
    QueueComplete(QueueStatus),
    /// Start a subscription (the queue was resolved and checked) and answer the request with
    /// its id.
    Subscribe {
        /// The queue.
        queue: u64,
        /// One action of it, or all.
        lsn: Option<Lsn>,
        /// Who receives the events.
        subscriber: ActorId,
        /// What it gets before it goes live (`Subscribe { from }`).
        backlog: Backlog,
        /// Which transitions it is told.
        events: EventFilter,
    },
    /// End a subscription (or, with `end == false`, only check that it lives) if `requester`
    /// made it (ORC-25), and answer the request.
    Unsubscribe {
        /// The subscription.
        subscription: u64,
        /// The proc that asked.
        requester: ProcId,
        /// End it (`Unsubscribe`) or only check it (`CheckSubscription`).
        end: bool,
    },
    /// Queue a dispatch pass ([`Input::Dispatch`]); many before it runs make one (ORC-22).
    DispatchAgain,
}
