//! [`Transition`]: the message every lifecycle step is, and what a runner reports with it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ActionState, Attempt, ExitStatus, Lsn, Timestamp};
use crate::ids::ProcId;
use crate::spec::OutputFile;

/// One attempt of one action: what fencing (ACT-5) compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptRef {
    /// The action.
    pub lsn: Lsn,
    /// The attempt.
    pub attempt: Attempt,
}

impl fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.lsn, self.attempt)
    }
}

/// A move of one attempt of one action to a new state: the message every lifecycle step is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The action.
    pub lsn: Lsn,
    /// The attempt the sender is talking about (ACT-5, ACT-6).
    pub attempt: Attempt,
    /// The state entered.
    pub state: ActionState,
    /// When, by the sender's clock.
    pub at: Timestamp,
    /// What the sender knows about the execution; empty for most transitions.
    #[serde(default, skip_serializing_if = "TransitionDetail::is_empty")]
    pub detail: TransitionDetail,
}

impl Transition {
    /// A transition without detail.
    pub fn new(lsn: Lsn, attempt: Attempt, state: ActionState, at: Timestamp) -> Transition {
        Transition {
            lsn,
            attempt,
            state,
            at,
            detail: TransitionDetail::default(),
        }
    }

    /// This transition carrying `detail`.
    pub fn with_detail(self, detail: TransitionDetail) -> Transition {
        Transition { detail, ..self }
    }

    /// The attempt it is about.
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            lsn: self.lsn,
            attempt: self.attempt,
        }
    }
}

/// What a runner reports with a transition. Every field is optional: a sender fills in what it
/// knows (the location with `Submitting`/`Running`, the figures and outputs at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionDetail {
    /// The proc the attempt runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<ProcId>,
    /// How the action's process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// Why: the error of a failure, the cause of an abandonment or cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// CPU time (user + system) of the action's processes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Peak resident memory of the action's processes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Output files taken into the CAS (with `Completed`, possibly `Failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
    /// The bounded tail of the action's stdout.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub stdout_tail: Vec<u8>,
    /// The bounded tail of the action's stderr.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<u8>,
    /// What ran: the executable, its hash, its pid and start time (with the final state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<Box<RanProgram>>,
}

/// The identity of the program an attempt ran, recorded by the runner when it started it: what
/// an operator needs to tell exactly which bytes ran, and which process it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanProgram {
    /// The executable's path as the action saw it, e.g. `/sandbox/bin/tool` or `/usr/bin/gcc-12`.
    pub executable: String,
    /// The BLAKE3 hash of the executable's bytes.
    pub blake3: crate::cas::BlobHash,
    /// Its pid in the host's pid namespace.
    pub pid: u32,
    /// Its start time, in clock ticks after boot (`/proc/<pid>/stat` field 22): with the pid,
    /// names the process unambiguously.
    pub start_time: u64,
}

impl TransitionDetail {
    /// Whether nothing is reported.
    pub fn is_empty(&self) -> bool {
        *self == TransitionDetail::default()
    }
}
