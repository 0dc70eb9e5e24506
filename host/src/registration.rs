//! Talking to the orchestrator: registration, heartbeats and lost procs.
//!
//! ```text
//! start ─▶ RegisterHost(HostInfo: node name, node secret if the cert names no node)
//!              │ ─ error ─▶ retry after backoff (doubling, ≤ the interval)
//!              │ HostRegistered { heartbeat_interval_ms (0: keep ours), ticket_key }
//!              │   ticket_key replaces the blob policy's key (HST-22)
//!              ▼
//!          every interval: Heartbeat { procs (agent, capacity), running attempts }
//!              │ HeartbeatAck { orphans } ─▶ cancel each orphan on the proc that runs it
//!              │ Err(UnknownHost)         ─▶ register again
//!              │ other errors             ─▶ log, keep beating
//! a proc exits unasked ─▶ ProcLost { proc_id, status, reason } (then respawned: `respawn`)
//! ```
//!
//! Each request is a typed request (`requests::host`); a reply of another kind is a protocol
//! error, logged in one place (`ask_orchestrator`): registration then heartbeats at our
//! interval anyway, a heartbeat keeps beating.
//!
//! The heartbeat asks every ready agent for its `Status` but waits for the answers at most half
//! an interval: an agent that has not answered by then (stopped, overloaded) is reported from
//! its latest answer while that is younger than the agent ask timeout (its attempts, not its
//! capacity: it is offered no work until it answers again), and left out after that, so its
//! attempts stop being mentioned (the orchestrator abandons them, ORC-28) while the host keeps
//! beating on time, well within the orchestrator's lost-after.
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
//! - **HST-15** One slow or stuck proc agent does not delay the heartbeat: a beat waits at most
//!   half an interval (and at most the agent ask timeout) for the agents' `Status`; what an
//!   agent answered is reported for at most the agent ask timeout after its answer, its
//!   capacity only if it answered during this beat; at most one `Status` ask per agent is in
//!   flight.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use procmesh_protocol::messages::requests::{host as req, Ask};
use procmesh_protocol::messages::{
    AgentReply, AgentRequest, Heartbeat, OrchestratorError, OrchestratorRequest, ProcCapacity,
    ProcStatus,
};
use procmesh_protocol::{ActorId, AttemptRef, ExitStatus, ProcId};
use procmesh_transport::{RemoteRef, SendFailure};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::host::HostInner;

/// Shortest pause between failed registrations.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Registers and heartbeats until the host shuts down.
pub(crate) async fn run(
    host: Weak<HostInner>,
    orchestrator: ActorId,
    mut shutdown: watch::Receiver<bool>,
) {
    let board = Board::default();
    let Some(beat_now) = host.upgrade().map(|h| h.link.beat_now.clone()) else {
        return;
    };
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
                _ = beat_now.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let Some(inner) = host.upgrade() else { return };
            match inner.beat(&orchestrator, interval, &board).await {
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
        let answer = ask_orchestrator(
            &inner.orchestrator_ref(orchestrator),
            req::RegisterHost { info },
            inner.config.agent_ask_timeout(),
        )
        .await;
        drop(inner);
        match answer {
            Ok(Ok(Some(req::Registered {
                heartbeat_interval_ms,
                ticket_key,
                ..
            }))) => {
                tracing::info!(%orchestrator, heartbeat_interval_ms, "registered");
                // HST-22: the key of this registration replaces any earlier one.
                if let Some(inner) = host.upgrade() {
                    let key = ticket_key.as_deref().and_then(crate::node_id::parse_key);
                    if ticket_key.is_some() && key.is_none() {
                        tracing::warn!("the orchestrator's ticket key is not 64 hex characters");
                    }
                    *inner.ticket_key.lock().expect("ticket key lock") = key;
                    inner.link.registered();
                }
                return Some(match heartbeat_interval_ms {
                    0 => ours,
                    ms => Duration::from_millis(ms),
                });
            }
            // A reply of another kind (logged): heartbeat anyway.
            Ok(Ok(None)) => return Some(ours),
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
#[derive(Clone)]
struct ProcReport {
    agent: ActorId,
    capacity: procmesh_protocol::messages::Capacity,
    running: Vec<AttemptRef>,
    /// Whether it answered during this beat; one that did not is not offered work (HST-15).
    fresh: bool,
}

/// The agents' latest `Status` answers, kept across beats (HST-15).
#[derive(Default)]
struct StatusBoard {
    answers: HashMap<ActorId, (Instant, ProcReport)>,
    asking: HashSet<ActorId>,
}

type Board = Arc<Mutex<StatusBoard>>;

/// Asks the orchestrator a host request: its typed reply, `None` for a reply of another kind
/// (a protocol error, logged here for every request), the refusal, or why there is no answer.
async fn ask_orchestrator<A: Ask>(
    orchestrator: &RemoteRef<OrchestratorRequest>,
    request: A,
    timeout: Duration,
) -> Result<Result<Option<A::Reply>, OrchestratorError>, SendFailure> {
    let answer = orchestrator.ask(request.request(), timeout).await?;
    Ok(answer.map(|reply| match A::reply(reply) {
        Ok(reply) => Some(reply),
        Err(other) => {
            tracing::warn!(?other, "unexpected answer to {}", A::KIND);
            None
        }
    }))
}

impl HostInner {
    pub(crate) fn orchestrator_ref(
        &self,
        orchestrator: &ActorId,
    ) -> RemoteRef<OrchestratorRequest> {
        self.node.remote_ref(orchestrator.clone())
    }

    /// One heartbeat: ask every ready proc's agent for its status (in parallel, waiting at most
    /// half an interval: HST-15), send, and act on the answer.
    async fn beat(
        self: &Arc<Self>,
        orchestrator: &ActorId,
        interval: Duration,
        board: &Board,
    ) -> Beat {
        let reports = self.proc_reports(interval / 2, board).await;
        let offered = reports.iter().filter(|r| r.fresh).count() as u32;
        let heartbeat = Heartbeat {
            addr: self.node.addr().clone(),
            procs: reports
                .iter()
                .filter(|r| r.fresh)
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
        let answer = ask_orchestrator(
            &self.orchestrator_ref(orchestrator),
            req::Heartbeat { beat: heartbeat },
            self.config.agent_ask_timeout(),
        )
        .await;
        match answer {
            Ok(Ok(Some(orphans))) => {
                self.link.acked(offered);
                self.cancel_orphans(&reports, orphans).await;
                Beat::Ok
            }
            // A reply of another kind (logged): keep beating.
            Ok(Ok(None)) => Beat::Ok,
            Ok(Err(OrchestratorError::UnknownHost(_))) => {
                self.link.unknown();
                Beat::Unknown
            }
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

    /// The ready procs' status: this beat's answers that came within `wait` (capped by the agent
    /// ask timeout), else the latest answer younger than the ask timeout (HST-15).
    async fn proc_reports(&self, wait: Duration, board: &Board) -> Vec<ProcReport> {
        let timeout = self.config.agent_ask_timeout();
        let began = Instant::now();
        let mut ready_agents = HashSet::new();
        let mut asks = Vec::new();
        for handle in self.table.handles() {
            let state = handle.state();
            let (ProcStatus::Ready, Some(ready)) = (state.status, state.ready) else {
                continue;
            };
            ready_agents.insert(ready.agent.clone());
            if !board
                .lock()
                .expect("status board")
                .asking
                .insert(ready.agent.clone())
            {
                continue; // its previous ask is still waiting
            }
            let agent = self.node.remote_ref::<AgentRequest>(ready.agent.clone());
            let board = board.clone();
            // Spawned: an answer that comes after this beat is sent still serves the next one.
            asks.push(tokio::spawn(async move {
                let answer = agent.ask(AgentRequest::Status, timeout).await;
                let mut board = board.lock().expect("status board");
                board.asking.remove(&ready.agent);
                match answer {
                    Ok(Ok(AgentReply::Status(status))) => {
                        let report = ProcReport {
                            agent: ready.agent.clone(),
                            capacity: status.capacity,
                            running: status.actions.iter().map(|a| a.action).collect(),
                            fresh: true,
                        };
                        board.answers.insert(ready.agent, (Instant::now(), report));
                    }
                    Ok(other) => {
                        tracing::debug!(?other, agent = %ready.agent, "no status for the heartbeat");
                    }
                    Err(error) => {
                        tracing::debug!(%error, agent = %ready.agent, "no status for the heartbeat");
                    }
                }
            }));
        }
        let wait = wait.min(timeout);
        let all = async {
            for ask in asks {
                let _ = ask.await;
            }
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::debug!(
                ?wait,
                "an agent did not answer Status in time for the heartbeat"
            );
        }
        let now = Instant::now();
        let mut board = board.lock().expect("status board");
        board
            .answers
            .retain(|agent, _| ready_agents.contains(agent));
        let mut reports: Vec<ProcReport> = board
            .answers
            .values()
            .filter(|(at, _)| now.duration_since(*at) <= timeout)
            .map(|(at, report)| ProcReport {
                // It did not answer this beat: no new work for it until it does.
                fresh: *at >= began,
                ..report.clone()
            })
            .collect();
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
            let lost = req::ProcLost {
                proc_id: proc_id.clone(),
                status: Some(status),
                reason,
            };
            match ask_orchestrator(&orch, lost, timeout).await {
                Ok(Ok(_)) => tracing::info!(proc = %proc_id, "reported lost proc"),
                Ok(Err(error)) => tracing::warn!(%error, proc = %proc_id, "ProcLost refused"),
                Err(error) => tracing::warn!(%error, proc = %proc_id, "ProcLost not delivered"),
            }
        });
    }
}
