//! [`ProcHandle`]: one proc's life as the host drives it — a state machine in a `watch`
//! channel, so any number of tasks can wait for readiness or exit and all see the same thing.
//!
//! ```text
//!            set_ready                request_stop                  exit monitor
//!  Starting ───────────▶ Ready ───────────────────▶ Terminating ───────────────▶ Exited(status)
//!     │ └────────────── request_stop ──────────────────▲                             ▲
//!     └──────────────────────────── exit monitor (the proc died by itself) ──────────┘
//! ```
//!
//! The stop sequence of [`ProcHandle::terminate`] with grace `g`, started at `t = 0`:
//!
//! ```text
//! t = 0      ask the agent AgentRequest::Stop { reason }   (skipped if never ready)
//! t = g/2    SIGTERM                                       (at once if the ask failed)
//! t = g      SIGKILL
//! t = g + kill_wait   still running: the stop fails (HostError::Internal names why)
//! ```
//!
//! # Invariants
//! - **HST-4** A handle's status only moves forward (Starting → Ready → Terminating → Exited),
//!   and `Exited` is set exactly once, by the exit monitor, after the proc was reaped and its
//!   route and name released (HST-6). Every caller of [`ready`](ProcHandle::ready),
//!   [`wait`](ProcHandle::wait), [`terminate`](ProcHandle::terminate) and
//!   [`kill`](ProcHandle::kill) sees that same status: the first terminal outcome wins.
//! - **HST-5** A stop always ends: the sequence above runs in a task of its own, so it
//!   escalates to SIGKILL even if every caller stopped waiting; concurrent terminates share one
//!   sequence; `kill` is SIGKILL at once, whatever sequence runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use procmesh_protocol::messages::{AgentRequest, HostError, ProcInfo, ProcStatus};
use procmesh_protocol::{ActorId, ExitStatus, HostAddr, ProcId, Timestamp};
use procmesh_transport::Node;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::manager::{ChildRecord, ProcControl};

/// What a proc said when it called back ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInfo {
    /// The address it reported (its node's address: normally the host's frontend).
    pub addr: HostAddr,
    /// Its agent actor.
    pub agent: ActorId,
    /// The pid it reported (checked against the child).
    pub pid: u32,
}

/// A snapshot of a proc's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcState {
    /// Where it is (HST-4: only moves forward).
    pub status: ProcStatus,
    /// What it reported when it became ready; kept after it exits.
    pub ready: Option<ReadyInfo>,
    /// Why it never became ready, once that is known.
    pub not_ready: Option<HostError>,
    /// Whether someone asked it to stop (terminate or kill); an exit that nobody asked for is
    /// a crash.
    pub stop_requested: bool,
    /// Why a stop did not end it (it outlived SIGKILL by the kill wait).
    pub stop_failed: Option<HostError>,
}

impl ProcState {
    fn new() -> Self {
        ProcState {
            status: ProcStatus::Starting,
            ready: None,
            not_ready: None,
            stop_requested: false,
            stop_failed: None,
        }
    }

    /// Its exit status, once it exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.status {
            ProcStatus::Exited(status) => Some(status),
            _ => None,
        }
    }
}

/// Timeouts a handle applies to its own operations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandleTimeouts {
    /// The polite stop ask.
    pub agent_ask: Duration,
    /// How long a proc may outlive SIGKILL before a stop fails.
    pub kill_wait: Duration,
}

struct HandleInner {
    proc_id: ProcId,
    labels: BTreeMap<String, String>,
    started_at: Timestamp,
    control: Arc<dyn ProcControl>,
    state: watch::Sender<ProcState>,
    node: Node,
    timeouts: HandleTimeouts,
    stop_started: AtomicBool,
}

/// A proc of this host. Cheap to clone; every clone drives the same proc.
#[derive(Clone)]
pub struct ProcHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcHandle")
            .field("proc_id", &self.inner.proc_id)
            .field("status", &self.inner.state.borrow().status)
            .finish_non_exhaustive()
    }
}

impl ProcHandle {
    pub(crate) fn new(
        proc_id: ProcId,
        labels: BTreeMap<String, String>,
        started_at: Timestamp,
        control: Arc<dyn ProcControl>,
        node: Node,
        timeouts: HandleTimeouts,
    ) -> Self {
        let (state, _) = watch::channel(ProcState::new());
        ProcHandle {
            inner: Arc::new(HandleInner {
                proc_id,
                labels,
                started_at,
                control,
                state,
                node,
                timeouts,
                stop_started: AtomicBool::new(false),
            }),
        }
    }

    /// The proc's id.
    pub fn proc_id(&self) -> &ProcId {
        &self.inner.proc_id
    }

    /// The proc's name on this host.
    pub fn name(&self) -> &str {
        self.inner.proc_id.name()
    }

    /// Its OS process id (`None` in-process).
    pub fn pid(&self) -> Option<u32> {
        self.inner.control.pid()
    }

    /// Its OS identity: pid, start time, executable and its hash (`None` in-process).
    pub fn record(&self) -> Option<ChildRecord> {
        self.inner.control.record()
    }

    /// A snapshot of its state.
    pub fn state(&self) -> ProcState {
        self.inner.state.borrow().clone()
    }

    /// Its current status.
    pub fn status(&self) -> ProcStatus {
        self.inner.state.borrow().status
    }

    /// Every change of its state, from now on.
    pub fn subscribe(&self) -> watch::Receiver<ProcState> {
        self.inner.state.subscribe()
    }

    /// The proc as `ListProcs` reports it.
    pub fn info(&self) -> ProcInfo {
        let state = self.inner.state.borrow();
        ProcInfo {
            proc_id: self.inner.proc_id.clone(),
            status: state.status,
            agent: state.ready.as_ref().map(|r| r.agent.clone()),
            pid: self.pid(),
            started_at: self.inner.started_at,
            labels: self.inner.labels.clone(),
        }
    }

    /// Whether both handles drive the same proc.
    pub fn same(&self, other: &ProcHandle) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn control(&self) -> &Arc<dyn ProcControl> {
        &self.inner.control
    }

    /// Waits until the proc is ready. Resolves at once for a proc that was ready (even if it
    /// has exited since); fails with why it never became ready (HST-2).
    pub async fn ready(&self) -> Result<ReadyInfo, HostError> {
        let mut rx = self.inner.state.subscribe();
        let state = rx
            .wait_for(|s| s.ready.is_some() || s.not_ready.is_some() || s.status.is_exited())
            .await
            .map_err(|_| HostError::Internal("proc state dropped".into()))?;
        if let Some(ready) = &state.ready {
            return Ok(ready.clone());
        }
        if let Some(error) = &state.not_ready {
            return Err(error.clone());
        }
        Err(HostError::ExitedEarly {
            name: self.name().to_owned(),
            status: state.exit_status().expect("checked by wait_for"),
        })
    }

    /// Waits until the proc has exited (and was reaped, its route removed and its name
    /// released: HST-6); every caller gets the same status (HST-4).
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.inner.state.subscribe();
        let status = match rx.wait_for(|s| s.status.is_exited()).await {
            Ok(state) => state.exit_status().expect("checked by wait_for"),
            // The sender lives in `self.inner`: unreachable while `self` exists.
            Err(_) => unreachable!("the state sender outlives every handle"),
        };
        status
    }

    /// Stops the proc politely, then firmly (the sequence in the module docs), and waits for
    /// its exit. Idempotent: a proc that has exited answers its status at once; concurrent
    /// callers share the first caller's sequence (HST-5) and all see the same status (HST-4).
    pub async fn terminate(&self, grace: Duration, reason: &str) -> Result<ExitStatus, HostError> {
        if let Some(status) = self.state().exit_status() {
            return Ok(status);
        }
        self.request_stop();
        if !self.inner.stop_started.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let reason = reason.to_owned();
            tokio::spawn(async move { me.stop_sequence(grace, reason).await });
        }
        self.outcome().await
    }

    /// Kills the proc at once (SIGKILL) and waits for its exit, at most the kill wait.
    pub async fn kill(&self) -> Result<ExitStatus, HostError> {
        if let Some(status) = self.state().exit_status() {
            return Ok(status);
        }
        self.request_stop();
        if let Err(error) = self.inner.control.kill() {
            tracing::warn!(%error, proc = %self.inner.proc_id, "kill failed");
        }
        let until = Instant::now() + self.inner.timeouts.kill_wait;
        if !self.exited_by(until).await {
            self.stop_failed("SIGKILL");
        }
        self.outcome().await
    }

    /// Waits for the first terminal outcome: the exit, or a stop that failed.
    pub(crate) async fn outcome(&self) -> Result<ExitStatus, HostError> {
        let mut rx = self.inner.state.subscribe();
        let state = rx
            .wait_for(|s| s.status.is_exited() || s.stop_failed.is_some())
            .await
            .map_err(|_| HostError::Internal("proc state dropped".into()))?;
        match (state.exit_status(), &state.stop_failed) {
            (Some(status), _) => Ok(status),
            (None, Some(error)) => Err(error.clone()),
            (None, None) => unreachable!("checked by wait_for"),
        }
    }

    /// Whether the proc exited by `deadline`.
    async fn exited_by(&self, deadline: Instant) -> bool {
        let mut rx = self.inner.state.subscribe();
        let exited = tokio::time::timeout_at(deadline, async {
            rx.wait_for(|s| s.status.is_exited()).await.is_ok()
        })
        .await;
        exited.unwrap_or(false)
    }

    /// HST-5: Stop, SIGTERM at half the grace (at once when the agent cannot be asked),
    /// SIGKILL at the deadline.
    async fn stop_sequence(self, grace: Duration, reason: String) {
        let start = Instant::now();
        let deadline = start + grace;
        let mut sigterm_at = start + grace / 2;
        let agent = self.state().ready.map(|r| r.agent);
        match agent {
            Some(agent) if !grace.is_zero() => {
                let ask_for = self
                    .inner
                    .timeouts
                    .agent_ask
                    .min(grace / 2)
                    .max(Duration::from_millis(1));
                let agent = self.inner.node.remote_ref::<AgentRequest>(agent);
                let stop = agent.ask(AgentRequest::Stop { reason }, ask_for);
                let mut rx = self.inner.state.subscribe();
                tokio::select! {
                    _ = rx.wait_for(|s| s.status.is_exited()) => return,
                    answer = stop => match answer {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(%error, proc = %self.inner.proc_id, "agent refused to stop");
                            sigterm_at = Instant::now();
                        }
                        Err(error) => {
                            tracing::debug!(%error, proc = %self.inner.proc_id, "stop ask failed");
                            sigterm_at = Instant::now();
                        }
                    },
                }
            }
            _ => sigterm_at = start,
        }
        if !grace.is_zero() {
            if self.exited_by(sigterm_at).await {
                return;
            }
            if let Err(error) = self.inner.control.terminate() {
                tracing::warn!(%error, proc = %self.inner.proc_id, "SIGTERM failed");
            }
            if self.exited_by(deadline).await {
                return;
            }
            tracing::info!(proc = %self.inner.proc_id, ?grace, "grace period over: SIGKILL");
        }
        if let Err(error) = self.inner.control.kill() {
            tracing::warn!(%error, proc = %self.inner.proc_id, "SIGKILL failed");
        }
        if !self
            .exited_by(Instant::now() + self.inner.timeouts.kill_wait)
            .await
        {
            self.stop_failed("SIGKILL");
        }
    }

    fn stop_failed(&self, after: &str) {
        let error = HostError::Internal(format!(
            "proc {} still runs {:?} after {after}",
            self.inner.proc_id, self.inner.timeouts.kill_wait
        ));
        tracing::error!(%error, "stop failed");
        self.inner.state.send_if_modified(|s| {
            if s.status.is_exited() || s.stop_failed.is_some() {
                return false;
            }
            s.stop_failed = Some(error);
            true
        });
    }

    /// Marks a stop as asked for: `Terminating` unless it has exited (HST-4).
    pub(crate) fn request_stop(&self) {
        self.inner.state.send_if_modified(|s| {
            let before = (s.status, s.stop_requested);
            s.stop_requested = true;
            if matches!(s.status, ProcStatus::Starting | ProcStatus::Ready) {
                s.status = ProcStatus::Terminating;
            }
            before != (s.status, s.stop_requested)
        });
    }

    /// Records the proc's readiness; refused (false) unless it is still starting and nothing
    /// decided it never would be (HST-4).
    pub(crate) fn set_ready(&self, ready: ReadyInfo) -> bool {
        self.inner.state.send_if_modified(|s| {
            if s.status != ProcStatus::Starting || s.ready.is_some() || s.not_ready.is_some() {
                return false;
            }
            s.status = ProcStatus::Ready;
            s.ready = Some(ready);
            true
        })
    }

    /// Records why it will never be ready (the first reason wins).
    pub(crate) fn set_not_ready(&self, error: HostError) {
        self.inner.state.send_if_modified(|s| {
            if s.ready.is_some() || s.not_ready.is_some() {
                return false;
            }
            s.not_ready = Some(error);
            true
        });
    }

    /// The exit monitor's report: the one and only `Exited` (HST-4).
    pub(crate) fn set_exited(&self, status: ExitStatus) {
        let name = self.name().to_owned();
        self.inner.state.send_if_modified(|s| {
            if s.status.is_exited() {
                return false;
            }
            s.status = ProcStatus::Exited(status);
            if s.ready.is_none() && s.not_ready.is_none() {
                s.not_ready = Some(HostError::ExitedEarly { name, status });
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use procmesh_transport::remote::BoxFuture;
    use procmesh_transport::{LocalHub, NodeBuilder};

    use super::*;

    /// A control that records signals; SIGTERM ends the proc only if `obeys_term`, SIGKILL
    /// only if `mortal`.
    struct Fake {
        start: Instant,
        log: Mutex<Vec<(&'static str, Duration)>>,
        exit: watch::Sender<Option<ExitStatus>>,
        obeys_term: bool,
        mortal: bool,
    }

    impl ProcControl for Fake {
        fn pid(&self) -> Option<u32> {
            None
        }
        fn ready_pid(&self) -> u32 {
            1
        }
        fn terminate(&self) -> Result<(), HostError> {
            self.log
                .lock()
                .unwrap()
                .push(("TERM", self.start.elapsed()));
            if self.obeys_term {
                self.exit.send_replace(Some(ExitStatus::Signal(15)));
            }
            Ok(())
        }
        fn kill(&self) -> Result<(), HostError> {
            self.log
                .lock()
                .unwrap()
                .push(("KILL", self.start.elapsed()));
            if self.mortal {
                self.exit.send_replace(Some(ExitStatus::Signal(9)));
            }
            Ok(())
        }
        fn wait(&self) -> BoxFuture<'static, ExitStatus> {
            let mut rx = self.exit.subscribe();
            Box::pin(async move {
                let status = *rx.wait_for(Option::is_some).await.unwrap();
                status.unwrap()
            })
        }
    }

    async fn handle(obeys_term: bool, mortal: bool) -> (ProcHandle, Arc<Fake>) {
        let node = NodeBuilder::new("service")
            .local(&LocalHub::new(), "h")
            .start()
            .await
            .unwrap();
        let (exit, _) = watch::channel(None);
        let fake = Arc::new(Fake {
            start: Instant::now(),
            log: Mutex::default(),
            exit,
            obeys_term,
            mortal,
        });
        let handle = ProcHandle::new(
            node.addr().proc("p").unwrap(),
            BTreeMap::new(),
            Timestamp::from_millis(0),
            fake.clone(),
            node,
            HandleTimeouts {
                agent_ask: Duration::from_secs(1),
                kill_wait: Duration::from_secs(5),
            },
        );
        // The host's exit monitor, reduced to its essence.
        let monitor = handle.clone();
        tokio::spawn(async move {
            let status = monitor.control().wait().await;
            monitor.set_exited(status);
        });
        (handle, fake)
    }

    fn ready_info(handle: &ProcHandle) -> ReadyInfo {
        ReadyInfo {
            addr: handle.proc_id().addr().clone(),
            agent: handle.proc_id().actor("agent").unwrap(),
            pid: 1,
        }
    }

    // Attests HST-4
    #[tokio::test(start_paused = true)]
    async fn the_state_only_moves_forward_and_the_first_exit_wins() {
        let (h, fake) = handle(true, true).await;
        assert_eq!(h.status(), ProcStatus::Starting);
        assert!(h.set_ready(ready_info(&h)));
        assert!(!h.set_ready(ready_info(&h)), "ready once");
        assert_eq!(h.status(), ProcStatus::Ready);
        h.request_stop();
        assert_eq!(h.status(), ProcStatus::Terminating);
        assert!(!h.set_ready(ready_info(&h)), "never back to Ready");
        h.set_not_ready(HostError::ChannelLost("p".into()));
        assert_eq!(h.state().not_ready, None, "it was ready");
        fake.exit.send_replace(Some(ExitStatus::Code(1)));
        assert_eq!(h.wait().await, ExitStatus::Code(1));
        h.set_exited(ExitStatus::Code(2));
        assert_eq!(h.status(), ProcStatus::Exited(ExitStatus::Code(1)));
        assert_eq!(h.ready().await, Ok(ready_info(&h)), "it was ready");
        assert_eq!(h.kill().await, Ok(ExitStatus::Code(1)));
        assert_eq!(
            h.terminate(Duration::from_secs(1), "x").await,
            Ok(ExitStatus::Code(1))
        );
        assert!(
            fake.log.lock().unwrap().is_empty(),
            "no signal after the exit"
        );

        // An exit before readiness: every ready() waiter learns it.
        let (h, fake) = handle(true, true).await;
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.ready().await })
        };
        fake.exit.send_replace(Some(ExitStatus::Code(4)));
        let early = HostError::ExitedEarly {
            name: "p".into(),
            status: ExitStatus::Code(4),
        };
        assert_eq!(waiter.await.unwrap(), Err(early.clone()));
        assert_eq!(h.ready().await, Err(early));
        assert!(!h.set_ready(ready_info(&h)));
    }

    // Attests HST-5
    #[tokio::test(start_paused = true)]
    async fn the_stop_sequence_escalates_on_time() {
        // Never ready (no agent to ask): SIGTERM at once, SIGKILL at the deadline.
        let (h, fake) = handle(false, true).await;
        let status = h.terminate(Duration::from_secs(10), "test").await;
        assert_eq!(status, Ok(ExitStatus::Signal(9)));
        assert_eq!(
            *fake.log.lock().unwrap(),
            vec![("TERM", Duration::ZERO), ("KILL", Duration::from_secs(10))]
        );

        // Ready, but the agent cannot be reached: SIGTERM as soon as the ask fails.
        let (h, fake) = handle(true, true).await;
        assert!(h.set_ready(ready_info(&h)));
        assert_eq!(
            h.terminate(Duration::from_secs(10), "test").await,
            Ok(ExitStatus::Signal(15))
        );
        let log = fake.log.lock().unwrap().clone();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, "TERM");
        assert!(log[0].1 < Duration::from_secs(5), "{log:?}");

        // The sequence runs even when its caller goes away.
        let (h, fake) = handle(false, true).await;
        let call = {
            let h = h.clone();
            tokio::spawn(async move { h.terminate(Duration::from_secs(2), "gone").await })
        };
        tokio::task::yield_now().await;
        call.abort();
        assert_eq!(h.wait().await, ExitStatus::Signal(9));
        assert_eq!(
            fake.log.lock().unwrap()[1],
            ("KILL", Duration::from_secs(2))
        );

        // Grace 0: SIGKILL at once.
        let (h, fake) = handle(false, true).await;
        assert_eq!(
            h.terminate(Duration::ZERO, "now").await,
            Ok(ExitStatus::Signal(9))
        );
        assert_eq!(*fake.log.lock().unwrap(), vec![("KILL", Duration::ZERO)]);

        // A proc that outlives SIGKILL: the stop fails after the kill wait, for every caller.
        let (h, _fake) = handle(false, false).await;
        let (a, b) = tokio::join!(h.terminate(Duration::from_secs(1), "a"), h.kill());
        let a = a.unwrap_err();
        assert_eq!(a.code(), "internal");
        assert_eq!(b, Err(a.clone()));
        assert_eq!(h.status(), ProcStatus::Terminating);
        assert_eq!(h.terminate(Duration::from_secs(1), "again").await, Err(a));
    }
}
