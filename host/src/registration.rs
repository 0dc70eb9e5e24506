//! Talking to the orchestrator: registration, heartbeats and lost procs.
//!
//! ```text
//! start ─▶ RegisterHost(HostInfo) ─ error ─▶ retry after backoff (doubling, ≤ the interval)
//!              │ HostRegistered { heartbeat_interval_ms }   (0: keep ours)
//!              ▼
//!          every interval: Heartbeat { procs (agent, capacity), running attempts }
//!              │ HeartbeatAck { orphans } ─▶ cancel each orphan on the proc that runs it
//!              │ Err(UnknownHost)         ─▶ register again
//!              │ other errors             ─▶ log, keep beating
//! a proc exits unasked ─▶ ProcLost { proc_id, status, reason } (then respawned: `respawn`)
//! ```
//!
//! A heartbeat ask that times out has the orchestrator's connection probed by the transport
//! (QUIC-5), and one lost with its connection fails at once (LNK-5): either way the next beat
//! or registration goes over a fresh connection instead of the dead one.
//!
//! # Invariants
//! - **HST-11** A host heartbeats only after a registration was acknowledged, and registers again
//!   whenever a heartbeat is answered `UnknownHost`.
//! - **HST-7** A proc that was ready and exits without anyone asking (no terminate or kill) is
//!   reported to the orchestrator as `ProcLost`, if one is configured.

use std::sync::{Arc, Weak};
use std::time::Duration;

use procmesh_protocol::messages::{
    AgentReply, AgentRequest, Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest,
    ProcCapacity, ProcStatus,
};
use procmesh_protocol::{ActorId, AttemptRef, ExitStatus, ProcId};
use procmesh_transport::RemoteRef;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::host::HostInner;

/// Shortest pause between failed registrations.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Registers and heartbeats until the host shuts down.
pub(crate) async fn run(
    host: Weak<HostInner>,
    orchestrator: ActorId,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(interval) = register(&host, &orchestrator, &mut shutdown).await else {
            return;
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the orchestrator learns the procs (and may place work)
        // right after registering, not one interval later.
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let Some(inner) = host.upgrade() else { return };
            match inner.beat(&orchestrator).await {
                Beat::Ok => {}
                // HST-11
                Beat::Unknown => {
                    tracing::info!(%orchestrator, "orchestrator does not know us: registering again");
                    break;
                }
            }
        }
    }
}

/// Registers, retrying with backoff; the heartbeat interval, or `None` once shutting down.
async fn register(
    host: &Weak<HostInner>,
    orchestrator: &ActorId,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Duration> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let inner = host.upgrade()?;
        if *shutdown.borrow() {
            return None;
        }
        let ours = Duration::from_millis(inner.config.heartbeat_interval_ms.max(1));
        let info = inner.host_info();
        let answer = inner
            .orchestrator_ref(orchestrator)
            .ask(
                OrchestratorRequest::RegisterHost(info),
                inner.config.agent_ask_timeout(),
            )
            .await;
        drop(inner);
        match answer {
            Ok(Ok(OrchestratorReply::HostRegistered {
                heartbeat_interval_ms,
                ..
            })) => {
                tracing::info!(%orchestrator, heartbeat_interval_ms, "registered");
                return Some(match heartbeat_interval_ms {
                    0 => ours,
                    ms => Duration::from_millis(ms),
                });
            }
            Ok(Ok(other)) => {
                tracing::warn!(
                    ?other,
                    "unexpected answer to RegisterHost; heartbeating anyway"
                );
                return Some(ours);
            }
            Ok(Err(error)) => tracing::warn!(%error, "registration refused"),
            Err(error) => tracing::warn!(%error, %orchestrator, "registration failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
        backoff = (backoff * 2).min(ours.max(MIN_BACKOFF));
    }
}

enum Beat {
    Ok,
    Unknown,
}

/// What one ready proc answered for the heartbeat.
struct ProcReport {
    agent: ActorId,
    capacity: procmesh_protocol::messages::Capacity,
    running: Vec<AttemptRef>,
}

impl HostInner {
    pub(crate) fn orchestrator_ref(
        &self,
        orchestrator: &ActorId,
    ) -> RemoteRef<OrchestratorRequest> {
        self.node.remote_ref(orchestrator.clone())
    }

    /// One heartbeat: ask every ready proc's agent for its status (in parallel, each bounded by
    /// the agent ask timeout), send, and act on the answer.
    async fn beat(self: &Arc<Self>, orchestrator: &ActorId) -> Beat {
        let reports = self.proc_reports().await;
        let heartbeat = Heartbeat {
            addr: self.node.addr().clone(),
            procs: reports
                .iter()
                .map(|r| ProcCapacity {
                    agent: r.agent.clone(),
                    capacity: r.capacity,
                    restarts: self.respawns.restarts(r.agent.proc_id().name()),
                })
                .collect(),
            running: reports
                .iter()
                .flat_map(|r| r.running.iter().copied())
                .collect(),
        };
        let answer = self
            .orchestrator_ref(orchestrator)
            .ask(
                OrchestratorRequest::Heartbeat(heartbeat),
                self.config.agent_ask_timeout(),
            )
            .await;
        match answer {
            Ok(Ok(OrchestratorReply::HeartbeatAck { orphans })) => {
                self.cancel_orphans(&reports, orphans).await;
                Beat::Ok
            }
            Ok(Ok(other)) => {
                tracing::warn!(?other, "unexpected answer to Heartbeat");
                Beat::Ok
            }
            Ok(Err(OrchestratorError::UnknownHost(_))) => Beat::Unknown,
            Ok(Err(error)) => {
                tracing::warn!(%error, "heartbeat refused");
                Beat::Ok
            }
            Err(error) => {
                tracing::warn!(%error, %orchestrator, "heartbeat failed");
                Beat::Ok
            }
        }
    }

    async fn proc_reports(&self) -> Vec<ProcReport> {
        let timeout = self.config.agent_ask_timeout();
        let mut asks = JoinSet::new();
        for handle in self.table.handles() {
            let state = handle.state();
            let (ProcStatus::Ready, Some(ready)) = (state.status, state.ready) else {
                continue;
            };
            let agent = self.node.remote_ref::<AgentRequest>(ready.agent.clone());
            asks.spawn(async move {
                match agent.ask(AgentRequest::Status, timeout).await {
                    Ok(Ok(AgentReply::Status(status))) => Some(ProcReport {
                        agent: ready.agent,
                        capacity: status.capacity,
                        running: status.actions.iter().map(|a| a.action).collect(),
                    }),
                    Ok(other) => {
                        tracing::debug!(?other, agent = %ready.agent, "no status for the heartbeat");
                        None
                    }
                    Err(error) => {
                        tracing::debug!(%error, agent = %ready.agent, "no status for the heartbeat");
                        None
                    }
                }
            });
        }
        let mut reports = Vec::new();
        while let Some(report) = asks.join_next().await {
            if let Ok(Some(report)) = report {
                reports.push(report);
            }
        }
        reports.sort_by(|a, b| a.agent.cmp(&b.agent));
        reports
    }

    async fn cancel_orphans(&self, reports: &[ProcReport], orphans: Vec<AttemptRef>) {
        for orphan in orphans {
            let Some(report) = reports.iter().find(|r| r.running.contains(&orphan)) else {
                continue;
            };
            let agent = self.node.remote_ref::<AgentRequest>(report.agent.clone());
            let cancel = AgentRequest::Cancel {
                lsn: orphan.lsn,
                attempt: orphan.attempt,
                reason: "the orchestrator does not place this attempt here".into(),
            };
            if let Err(error) = agent.tell(cancel).await {
                tracing::warn!(%error, ?orphan, "could not cancel an orphaned attempt");
            }
        }
    }

    /// HST-7: tells the orchestrator, in the background, that a proc died.
    pub(crate) fn report_lost(&self, proc_id: ProcId, status: ExitStatus, reason: String) {
        let Some(orchestrator) = self.config.orchestrator.clone() else {
            return;
        };
        let orch = self.orchestrator_ref(&orchestrator);
        let timeout = self.config.agent_ask_timeout();
        tokio::spawn(async move {
            let lost = OrchestratorRequest::ProcLost {
                proc_id: proc_id.clone(),
                status: Some(status),
                reason,
            };
            match orch.ask(lost, timeout).await {
                Ok(Ok(_)) => tracing::info!(proc = %proc_id, "reported lost proc"),
                Ok(Err(error)) => tracing::warn!(%error, proc = %proc_id, "ProcLost refused"),
                Err(error) => tracing::warn!(%error, proc = %proc_id, "ProcLost not delivered"),
            }
        });
    }
}
