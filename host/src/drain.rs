//! Draining: a host that is asked to stop (SIGTERM) first stops taking work and lets what runs
//! finish, within a grace, before it terminates its procs.
//!
//! ```text
//!  Host::drain(grace) ─▶ AgentRequest::Drain to every ready proc (PA-AG-7: refuse new work,
//!        capacity 0) ─▶ heartbeat now: the orchestrator places nothing more here
//!        ─▶ every 200 ms, AgentRequest::Status: until no proc holds an attempt, or `grace`
//!  then Host::shutdown: Stop (cancels what is left) → SIGTERM → SIGKILL, as always
//! ```
//!
//! # Invariants
//! - **HST-27** A drained host's running attempts end on their own (completed or failed, and
//!   reported) if they end within the grace; only what is still running after it is cancelled
//!   by the shutdown that follows. Nothing new is placed on a draining host's procs.

use std::time::{Duration, Instant};

use procmesh_protocol::messages::agent::{AgentReply, AgentRequest};
use procmesh_protocol::messages::host::ProcStatus;
use procmesh_protocol::ActorId;

use crate::host::Host;

/// How often a draining host asks its procs what they still run.
const POLL: Duration = Duration::from_millis(200);

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Procs asked to drain.
    pub procs: usize,
    /// Attempts held when the drain began.
    pub running_at_start: u32,
    /// Attempts still held when it ended: the grace ran out with them running.
    pub still_running: u32,
    /// How long it waited.
    pub waited: Duration,
}

impl Host {
    /// Stops taking work and waits, at most `grace`, until no proc holds an attempt (HST-27).
    /// Call [`Host::shutdown`] after it.
    pub async fn drain(&self, grace: Duration) -> DrainOutcome {
        let began = Instant::now();
        let timeout = self.config().agent_ask_timeout();
        let agents: Vec<ActorId> = self
            .procs()
            .iter()
            .map(|p| p.info())
            .filter(|i| i.status == ProcStatus::Ready)
            .filter_map(|i| i.agent)
            .collect();
        let mut running_at_start = 0;
        for agent in &agents {
            let answer = self
                .node()
                .remote_ref::<AgentRequest>(agent.clone())
                .ask(
                    AgentRequest::Drain {
                        reason: "the host is draining".into(),
                    },
                    timeout,
                )
                .await;
            match answer {
                Ok(Ok(AgentReply::Stopping { running })) => running_at_start += running,
                other => tracing::warn!(%agent, ?other, "a proc agent did not drain"),
            }
        }
        // The orchestrator learns at once that these procs offer nothing.
        self.heartbeat_now();
        let mut still_running = running_at_start;
        while still_running > 0 && began.elapsed() < grace {
            tokio::time::sleep(POLL.min(grace.saturating_sub(began.elapsed()))).await;
            still_running = 0;
            for agent in &agents {
                let answer = self
                    .node()
                    .remote_ref::<AgentRequest>(agent.clone())
                    .ask(AgentRequest::Status, timeout)
                    .await;
                if let Ok(Ok(AgentReply::Status(status))) = answer {
                    still_running += status.actions.len() as u32;
                }
            }
        }
        let outcome = DrainOutcome {
            procs: agents.len(),
            running_at_start,
            still_running,
            waited: began.elapsed(),
        };
        tracing::info!(?outcome, "drained");
        outcome
    }
}
