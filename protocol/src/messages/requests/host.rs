//! What a host agent tells the orchestrator about itself ([`Audience::Host`]).
//!
//! [`Audience::Host`]: super::Audience::Host

use serde::{Deserialize, Serialize};

use super::ask;
use crate::messages::host::HostInfo;
use crate::messages::orchestrator::{self as wire, OrchestratorReply};
use crate::{AttemptRef, ExitStatus, ProcId};

/// A host joins (or rejoins after a restart of either side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterHost {
    /// What it registers with.
    pub info: HostInfo,
}

/// What a registration answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Silence after which the host is declared lost, in milliseconds.
    pub lost_after_ms: u64,
    /// The key (64 hex) this host verifies download tickets with.
    pub ticket_key: Option<String>,
}

ask!(Host, RegisterHost { info } = RegisterHost { 0 }, Registered, |r| match r {
    OrchestratorReply::HostRegistered {
        heartbeat_interval_ms,
        lost_after_ms,
        ticket_key,
    } => Ok(Registered {
        heartbeat_interval_ms,
        lost_after_ms,
        ticket_key,
    }),
    other => Err(other),
});

/// A host is alive; what it runs reconciles the orchestrator's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The beat.
    pub beat: wire::Heartbeat,
}

ask!(Host, Heartbeat { beat } = Heartbeat { 0 }, Vec<AttemptRef>, |r| match r {
    OrchestratorReply::HeartbeatAck { orphans } => Ok(orphans),
    other => Err(other),
});

/// A proc died; its actions are abandoned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcLost {
    /// The proc.
    pub proc_id: ProcId,
    /// How it ended, if it exited.
    pub status: Option<ExitStatus>,
    /// What happened.
    pub reason: String,
}

ask!(
    Host,
    ProcLost {
        proc_id,
        status,
        reason
    } = ProcLost {
        proc_id,
        status,
        reason
    },
    (),
    |r| match r {
        OrchestratorReply::Ack => Ok(()),
        other => Err(other),
    }
);
