//! The admin view: what the actor shows of itself to the admin HTTP API and the dashboard,
//! rebuilt from the core at most every refresh and published through a `watch` channel, so
//! that no HTTP request ever waits on the actor for lists or counts (only per-action lookups
//! ask it, each O(1) or O(hosts × procs)).
//!
//! ```text
//!  actor: Core::handle ─▶ Observer::observe(effects)  counters, histograms, recent transitions
//!         Internal::Refresh (every 500 ms, when something changed) ─▶ Observer::refresh(core)
//!                                   └▶ watch::Sender<Arc<View>>  ─▶ /api/v1/summary, hosts, queues, SSE
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use procmesh_orchestrator_core::{Core, Effect};
use procmesh_protocol::messages::orchestrator::{HostState, StateCounts};
use procmesh_protocol::{ActionState, AttemptRef, ProcId, Timestamp};
use serde::Serialize;
use tokio::sync::watch;

use super::metrics::{reason_of, Metrics};

/// How many of the latest transitions the view keeps.
pub(crate) const RECENT: usize = 100;

/// Most queues the view lists (the newest); the counts cover every queue.
pub(crate) const MAX_QUEUE_ROWS: usize = 10_000;

/// Totals since this orchestrator process started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    /// Actions accepted.
    pub submitted: u64,
    /// Actions that ended `Completed`.
    pub completed: u64,
    /// Actions that ended `Failed` with no retry to come.
    pub failed: u64,
    /// Actions that ended `Abandoned` with no retry to come.
    pub abandoned: u64,
    /// Actions that ended `Cancelled`.
    pub cancelled: u64,
    /// Attempts retried.
    pub retries: u64,
    /// Transitions applied.
    pub transitions: u64,
}

/// The hosts, counted.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HostTotals {
    /// Alive hosts.
    pub alive: u64,
    /// Lost hosts (not yet registered again).
    pub lost: u64,
    /// Ready procs of alive hosts.
    pub procs: u64,
    /// Their slots with an action placed.
    pub slots_used: u64,
    /// Their free slots.
    pub slots_free: u64,
}

/// One of the latest transitions.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    /// The action.
    pub lsn: u64,
    /// Its queue.
    pub queue: u64,
    /// The attempt.
    pub attempt: u32,
    /// The state entered.
    pub state: &'static str,
    /// When, in ms since the epoch.
    pub at_ms: u64,
    /// Where (a proc), when known; serialized as its text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc: Option<ProcId>,
    /// Why, for an ending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Everything at a glance: what the dashboard receives on every push.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Bumped at every refresh.
    pub version: u64,
    /// When it was built, in ms since the epoch.
    pub at_ms: u64,
    /// Unretired actions by state.
    pub counts: StateCounts,
    /// Totals since the start.
    pub totals: Totals,
    /// Hosts, procs, slots.
    pub hosts: HostTotals,
    /// Queues.
    pub queues: u64,
    /// The latest transitions, newest first.
    pub recent: Vec<Recent>,
    /// Whether state is journaled.
    pub journal: bool,
}

/// One proc of a host.
#[derive(Debug, Clone, Serialize)]
pub struct ProcRow {
    /// Its name.
    pub name: String,
    /// Its agent.
    pub agent: String,
    /// Most actions at once.
    pub max: u32,
    /// Actions placed on it.
    pub used: u64,
    /// Free slots, as the scheduler counts them (ORC-16).
    pub free: u64,
    /// Respawns by its host.
    pub restarts: u32,
}

/// One host.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    /// Its frontend address.
    pub addr: String,
    /// Its node name.
    pub node: String,
    /// `alive` or `lost`.
    pub state: &'static str,
    /// Its last heartbeat, in ms since the epoch.
    pub last_heartbeat_ms: u64,
    /// Its capacity setting.
    pub capacity: u32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its isolation mode (`namespaces`, `none`), when it said.
    pub isolation: Option<String>,
    /// Its cgroup version (`v1`, `v2`), when actions run with limits.
    pub cgroups: Option<String>,
    /// What its machine could not give for isolation.
    pub isolation_warnings: Vec<String>,
    /// Its version.
    pub version: String,
    /// Its procs.
    pub procs: Vec<ProcRow>,
    /// Slots used on its procs.
    pub slots_used: u64,
    /// Slots free on its procs.
    pub slots_free: u64,
}

/// One queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// Its id.
    pub id: u64,
    /// Its label.
    pub name: String,
    /// Unretired actions by state.
    pub counts: StateCounts,
    /// Actions ever accepted.
    pub accepted: u64,
    /// Whether it refuses new actions.
    pub draining: bool,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Whether every action is final.
    pub complete: bool,
}

/// What the admin API serves without asking the actor.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The summary.
    pub summary: Summary,
    /// Every host, by address.
    pub hosts: Vec<HostRow>,
    /// The newest queues first.
    pub queues: Vec<QueueRow>,
}

/// The actor's side: keeps the metrics and the recent transitions, and rebuilds the view.
#[derive(Debug)]
pub(crate) struct Observer {
    pub metrics: Arc<Metrics>,
    tx: watch::Sender<Arc<View>>,
    totals: Totals,
    recent: VecDeque<Recent>,
    /// When each placed attempt started running (bounded by the placed attempts).
    running_since: HashMap<AttemptRef, Timestamp>,
    dirty: bool,
    version: u64,
    dropped_seen: u64,
    journal: bool,
}

impl Observer {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        journal: bool,
    ) -> (Observer, watch::Receiver<Arc<View>>) {
        let (tx, rx) = watch::channel(Arc::new(View::default()));
        let observer = Observer {
            metrics,
            tx,
            totals: Totals::default(),
            recent: VecDeque::with_capacity(RECENT),
            running_since: HashMap::new(),
            dirty: true,
            version: 0,
            dropped_seen: 0,
            journal,
        };
        (observer, rx)
    }

    /// Counts what an input did: its published transitions (the shell follows every queue)
    /// and its error answer. `core` is the state right after the input.
    pub(crate) fn observe(&mut self, core: &Core, effects: &[Effect], changed: bool) {
        if changed {
            self.dirty = true;
        }
        // The ending of the attempt an update retried comes right before its `Pending`.
        let mut ended: Option<(AttemptRef, &'static str)> = None;
        for effect in effects {
            let Effect::Publish {
                queue, transition, ..
            } = effect
            else {
                continue;
            };
            let t = transition;
            let m = &self.metrics;
            self.totals.transitions += 1;
            m.transition(t.state);
            let attempt = AttemptRef {
                lsn: t.lsn,
                attempt: t.attempt,
            };
            let reason = t.detail.reason.as_deref();
            match t.state {
                ActionState::Pending => {
                    if t.attempt.get() == 1 {
                        self.totals.submitted += 1;
                        m.submitted.inc();
                    } else if let Some((before, why)) = ended.take() {
                        if before.lsn == t.lsn {
                            self.totals.retries += 1;
                            m.retry(why);
                        }
                    }
                }
                ActionState::Running => {
                    self.running_since.insert(attempt, t.at);
                    if let Some(entry) = core.book().action(t.lsn) {
                        if entry.record.attempt() == t.attempt {
                            if let Some(pending) = entry.record.entered(ActionState::Pending) {
                                m.dispatch_latency.observe(seconds_between(pending, t.at));
                            }
                        }
                    }
                }
                state if state.is_terminal() => {
                    if let Some(since) = self.running_since.remove(&attempt) {
                        m.run_time.observe(seconds_between(since, t.at));
                    }
                    let why = reason_of(state, reason);
                    if state == ActionState::Abandoned {
                        m.abandon(why);
                    }
                    ended = Some((attempt, why));
                    // Final unless the record moved on to another attempt (a retry).
                    let last = core
                        .book()
                        .action(t.lsn)
                        .is_none_or(|e| e.record.attempt() == t.attempt && e.record.is_terminal());
                    if last {
                        m.finished(state);
                        match state {
                            ActionState::Completed => self.totals.completed += 1,
                            ActionState::Failed => self.totals.failed += 1,
                            ActionState::Abandoned => self.totals.abandoned += 1,
                            _ => self.totals.cancelled += 1,
                        }
                    }
                }
                _ => {}
            }
            if self.recent.len() == RECENT {
                self.recent.pop_back();
            }
            self.recent.push_front(Recent {
                lsn: t.lsn.0,
                queue: *queue,
                attempt: t.attempt.get(),
                state: t.state.as_str(),
                at_ms: t.at.0,
                proc: t.detail.location.clone(),
                reason: reason.map(|r| truncate(r, 200)),
            });
            self.dirty = true;
        }
        if self.running_since.len() > 4 * core.book().len().max(1024) {
            // Attempts that ended without a published ending (retired while placed): forget.
            self.running_since.clear();
        }
    }

    /// Rebuilds the view and the gauges if anything changed, or `force`.
    pub(crate) fn refresh(
        &mut self,
        core: &Core,
        now: Timestamp,
        dropped: u64,
        subscriptions: usize,
        force: bool,
    ) {
        let m = &self.metrics;
        if dropped > self.dropped_seen {
            m.events_dropped.inc_by(dropped - self.dropped_seen);
            self.dropped_seen = dropped;
        }
        m.subscriptions.set(subscriptions as i64);
        if !self.dirty && !force {
            return;
        }
        self.dirty = false;
        self.version += 1;
        let book = core.book();
        let counts = *book.counts();
        for state in ActionState::ALL {
            Metrics::set_state(&m.actions, state.as_str(), counts.get(state));
        }
        m.pending.set(book.pending().len() as i64);
        let mut host_totals = HostTotals::default();
        let mut hosts = Vec::new();
        for view in core.host_views() {
            let alive = view.state == HostState::Alive;
            let mut row = HostRow {
                addr: view.info.addr.to_string(),
                node: view.info.node.clone(),
                state: if alive { "alive" } else { "lost" },
                last_heartbeat_ms: view.last_heartbeat.0,
                capacity: view.info.capacity,
                labels: view.info.labels.clone(),
                isolation: view.info.isolation.as_ref().map(|i| i.mode.to_string()),
                cgroups: view.info.isolation.as_ref().and_then(|i| i.cgroup.clone()),
                isolation_warnings: view
                    .info
                    .isolation
                    .as_ref()
                    .map(|i| i.warnings.clone())
                    .unwrap_or_default(),
                version: view.info.version.clone(),
                procs: Vec::with_capacity(view.procs.len()),
                slots_used: 0,
                slots_free: 0,
            };
            for p in &view.procs {
                let proc_id = p.agent.proc_id();
                let used = book.placed_on(proc_id).count() as u64;
                let free = u64::from(p.capacity.max).saturating_sub(used);
                row.slots_used += used;
                row.slots_free += free;
                row.procs.push(ProcRow {
                    name: proc_id.name().to_string(),
                    agent: p.agent.to_string(),
                    max: p.capacity.max,
                    used,
                    free,
                    restarts: p.restarts,
                });
            }
            if alive {
                host_totals.alive += 1;
                host_totals.procs += row.procs.len() as u64;
                host_totals.slots_used += row.slots_used;
                host_totals.slots_free += row.slots_free;
            } else {
                host_totals.lost += 1;
            }
            hosts.push(row);
        }
        Metrics::set_state(&m.hosts, "alive", host_totals.alive);
        Metrics::set_state(&m.hosts, "lost", host_totals.lost);
        m.procs.set(host_totals.procs as i64);
        Metrics::set_state(&m.slots, "used", host_totals.slots_used);
        Metrics::set_state(&m.slots, "free", host_totals.slots_free);
        let mut queue_count = 0u64;
        let mut queues: Vec<QueueRow> = Vec::new();
        for q in book.queues() {
            queue_count += 1;
            queues.push(QueueRow {
                id: q.id(),
                name: q.config().name.clone(),
                counts: *q.counts(),
                accepted: q.accepted(),
                draining: q.is_draining(),
                cancelled: q.is_cancelled(),
                complete: q.is_complete(),
            });
        }
        queues.reverse();
        queues.truncate(MAX_QUEUE_ROWS);
        m.queues.set(queue_count as i64);
        let view = View {
            summary: Summary {
                version: self.version,
                at_ms: now.0,
                counts,
                totals: self.totals,
                hosts: host_totals,
                queues: queue_count,
                recent: self.recent.iter().cloned().collect(),
                journal: self.journal,
            },
            hosts,
            queues,
        };
        self.tx.send_replace(Arc::new(view));
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    to.0.saturating_sub(from.0) as f64 / 1000.0
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One action for the admin API: its record (state, timeline, where, how it ended), its
/// queue, priority and required labels; with `explain`, why it is (not) running. `None` when
/// the book does not hold it.
pub(crate) fn action_json(
    core: &Core,
    lsn: procmesh_protocol::Lsn,
    explain: bool,
    now: Timestamp,
) -> Option<serde_json::Value> {
    let entry = core.book().action(lsn)?;
    let record = entry.record;
    let timeline: Vec<serde_json::Value> = record
        .times()
        .iter()
        .map(|(state, at)| serde_json::json!({ "state": state.as_str(), "at_ms": at.0 }))
        .collect();
    let mut value = serde_json::json!({
        "lsn": lsn.0,
        "queue": entry.queue,
        "priority": entry.priority,
        "state": record.state().as_str(),
        "attempt": record.attempt().get(),
        "timeline": timeline,
        "execution": record.execution(),
        "last_error": record.last_error(),
        "requires": entry.requires,
        "attempts": core.attempts(lsn),
    });
    if explain {
        // The admin listener is an operator's: other queues' occupants are shown.
        let explanation = core.explain_as(lsn, now, true);
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "explanation".into(),
                serde_json::to_value(explanation).unwrap_or_default(),
            );
        }
    }
    Some(value)
}
