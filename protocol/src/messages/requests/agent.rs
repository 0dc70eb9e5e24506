//! What a proc agent tells the orchestrator about its attempts ([`Audience::Agent`]).
//!
//! [`Audience::Agent`]: super::Audience::Agent

use serde::{Deserialize, Serialize};

use super::ask;
use crate::messages::orchestrator::{OrchestratorReply, UpdateOutcome};
use crate::spec::{WorkerDescriptor, WorkerId};
use crate::Transition;

/// An action moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionUpdate {
    /// The transition.
    pub transition: Transition,
}

ask!(Agent, ActionUpdate { transition } = ActionUpdate { 0 }, UpdateOutcome, |r| match r {
    OrchestratorReply::Updated(outcome) => Ok(outcome),
    other => Err(other),
});

/// Several transitions, applied in order, each on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionUpdates {
    /// The transitions.
    pub transitions: Vec<Transition>,
}

ask!(Agent, ActionUpdates { transitions } = ActionUpdates { 0 }, (), |r| match r {
    OrchestratorReply::Ack => Ok(()),
    other => Err(other),
});

/// The descriptor of a worker an action placed on this agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetWorker {
    /// The worker.
    pub id: WorkerId,
}

ask!(Agent, GetWorker { id } = GetWorker { 0 }, WorkerDescriptor, |r| match r {
    OrchestratorReply::Worker(descriptor) => Ok(descriptor),
    other => Err(other),
});
