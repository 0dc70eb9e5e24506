//! The orchestrator's Prometheus metrics (names under `procmesh_`, base units, counters ending
//! in `_total`). Counters and histograms move as the actor handles inputs; gauges are set from
//! the core when the admin view is refreshed, so a scrape reads atomics only and costs the
//! same with a million pending actions as with none.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `procmesh_actions` | gauge: unretired actions | `state` |
//! | `procmesh_pending_actions` | gauge: the pending depth | |
//! | `procmesh_queues` | gauge | |
//! | `procmesh_actions_submitted_total` | counter: actions accepted | |
//! | `procmesh_action_transitions_total` | counter: transitions applied | `state` |
//! | `procmesh_actions_finished_total` | counter: actions that reached a final state | `state` |
//! | `procmesh_action_retries_total` | counter: attempts retried | `reason` |
//! | `procmesh_action_abandons_total` | counter: attempts abandoned | `reason` |
//! | `procmesh_dispatch_latency_seconds` | histogram: pending → running | |
//! | `procmesh_action_run_seconds` | histogram: running → final state of an attempt | |
//! | `procmesh_hosts` | gauge | `state` |
//! | `procmesh_procs` | gauge: ready procs of alive hosts | |
//! | `procmesh_proc_slots` | gauge | `state` = `used` \| `free` |
//! | `procmesh_journal_commit_seconds` | histogram: one group commit | |
//! | `procmesh_journal_records_total` | counter: inputs committed | |
//! | `procmesh_events_dropped_total` | counter: events a lagging subscriber missed | |
//! | `procmesh_subscriptions` | gauge | |
//! | `procmesh_requests_refused_total` | counter: requests answered with an error | `code` |
//! | `procmesh_forbidden_total` | counter: requests and connections refused by authority | `request` |
//! | `procmesh_admin_refused_total` | counter: admin HTTP requests refused (no or wrong token) | |
//! | `procmesh_transport_refused` | gauge: links, envelopes and blob requests the QUIC node refused since the start (bad or revoked certificates, limits, forged senders, relays, bound addresses, …) | `reason` |
//! | `procmesh_updates_ignored_total` | counter: agent reports not applied (a stale attempt's, a finished action's, …) | `reason` |
//!
//! `reason` is a small fixed set ([`reason_of`]): `host_lost`, `host_restarted`, `proc_lost`,
//! `silent`, `submit_failed`, `sandbox_setup`, `oom`, `timeout`, `cancelled`, `exit`, `other`.

use std::collections::BTreeMap;

use procmesh_protocol::ActionState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A `state` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct StateLabel {
    state: &'static str,
}

/// A `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    reason: &'static str,
}

/// A `code` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    code: &'static str,
}

/// A `request` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabel {
    request: String,
}

/// Every metric of the orchestrator, and the registry that exposes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub registry: Registry,
    pub actions: Family<StateLabel, Gauge>,
    pub pending: Gauge,
    pub queues: Gauge,
    pub submitted: Counter,
    pub transitions: Family<StateLabel, Counter>,
    pub finished: Family<StateLabel, Counter>,
    pub retries: Family<ReasonLabel, Counter>,
    pub abandons: Family<ReasonLabel, Counter>,
    pub dispatch_latency: Histogram,
    pub run_time: Histogram,
    pub hosts: Family<StateLabel, Gauge>,
    pub procs: Gauge,
    pub slots: Family<StateLabel, Gauge>,
    pub journal_commit: Histogram,
    pub journal_records: Counter,
    pub events_dropped: Counter,
    pub subscriptions: Gauge,
    pub refused: Family<CodeLabel, Counter>,
    pub forbidden: Family<RequestLabel, Counter>,
    pub admin_refused: Counter,
    pub ignored: Family<ReasonLabel, Counter>,
    pub transport_refused: Family<ReasonLabel, Gauge>,
    /// The gate's refusal counts as last added to `forbidden`.
    forbidden_seen: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// Buckets from 1 ms to ~33 min, doubling.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 22)
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("procmesh");
        let m = Metrics {
            actions: Family::default(),
            pending: Gauge::default(),
            queues: Gauge::default(),
            submitted: Counter::default(),
            transitions: Family::default(),
            finished: Family::default(),
            retries: Family::default(),
            abandons: Family::default(),
            dispatch_latency: Histogram::new(seconds_buckets()),
            run_time: Histogram::new(seconds_buckets()),
            hosts: Family::default(),
            procs: Gauge::default(),
            slots: Family::default(),
            journal_commit: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            journal_records: Counter::default(),
            events_dropped: Counter::default(),
            subscriptions: Gauge::default(),
            refused: Family::default(),
            forbidden: Family::default(),
            admin_refused: Counter::default(),
            ignored: Family::default(),
            transport_refused: Family::default(),
            forbidden_seen: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("actions", "Unretired actions by state", m.actions.clone());
        r.register(
            "pending_actions",
            "Actions waiting for a slot",
            m.pending.clone(),
        );
        r.register("queues", "Queues", m.queues.clone());
        r.register(
            "actions_submitted",
            "Actions accepted into a queue",
            m.submitted.clone(),
        );
        r.register(
            "action_transitions",
            "Transitions applied, by the state entered",
            m.transitions.clone(),
        );
        r.register(
            "actions_finished",
            "Actions that reached a final state (no retry to come), by that state",
            m.finished.clone(),
        );
        r.register(
            "action_retries",
            "Attempts retried, by what ended the attempt",
            m.retries.clone(),
        );
        r.register(
            "action_abandons",
            "Attempts abandoned, by reason",
            m.abandons.clone(),
        );
        r.register_with_unit(
            "dispatch_latency",
            "From entering Pending to Running, per attempt",
            Unit::Seconds,
            m.dispatch_latency.clone(),
        );
        r.register_with_unit(
            "action_run",
            "From Running to the attempt's final state",
            Unit::Seconds,
            m.run_time.clone(),
        );
        r.register("hosts", "Registered hosts by state", m.hosts.clone());
        r.register("procs", "Ready procs of alive hosts", m.procs.clone());
        r.register(
            "proc_slots",
            "Slots of the ready procs of alive hosts: used (placed) and free",
            m.slots.clone(),
        );
        r.register_with_unit(
            "journal_commit",
            "One group commit of the journal",
            Unit::Seconds,
            m.journal_commit.clone(),
        );
        r.register(
            "journal_records",
            "Inputs committed to the journal",
            m.journal_records.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped for lagging subscribers",
            m.events_dropped.clone(),
        );
        r.register(
            "subscriptions",
            "Live event subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "requests_refused",
            "Requests answered with an error, by its code",
            m.refused.clone(),
        );
        r.register(
            "forbidden",
            "Requests and connections refused by authority checks, by request kind",
            m.forbidden.clone(),
        );
        r.register(
            "transport_refused",
            "Links, envelopes and blob requests the node refused since the start, by reason",
            m.transport_refused.clone(),
        );
        r.register(
            "admin_refused",
            "Admin HTTP requests refused for a missing or wrong token",
            m.admin_refused.clone(),
        );
        r.register(
            "updates_ignored",
            "Agent reports not applied, by why: stale (an earlier attempt's), finished, …",
            m.ignored.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One transition applied, entering `state`.
    pub(crate) fn transition(&self, state: ActionState) {
        self.transitions
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    /// An action reached a final state.
    pub(crate) fn finished(&self, state: ActionState) {
        self.finished
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    /// An agent's report not applied, for `reason` (the [`Ignored`] variant).
    ///
    /// [`Ignored`]: procmesh_protocol::Ignored
    pub(crate) fn ignored(&self, reason: &'static str) {
        self.ignored.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A request answered with the error `code`.
    pub(crate) fn refused(&self, code: &'static str) {
        self.refused.get_or_create(&CodeLabel { code }).inc();
    }

    /// Brings `forbidden` up to the gate's counts.
    pub(crate) fn forbidden_counts(&self, counts: &BTreeMap<String, u64>) {
        let Ok(mut seen) = self.forbidden_seen.lock() else {
            return;
        };
        for (request, &n) in counts {
            let before = seen.get(request).copied().unwrap_or(0);
            if n > before {
                self.forbidden
                    .get_or_create(&RequestLabel {
                        request: request.clone(),
                    })
                    .inc_by(n - before);
                seen.insert(request.clone(), n);
            }
        }
    }

    /// Sets the transport's refusal counts (NODE-11).
    pub(crate) fn transport_refusals(&self, counts: &BTreeMap<&'static str, u64>) {
        for (&reason, &n) in counts {
            self.transport_refused
                .get_or_create(&ReasonLabel { reason })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets a `state`-labelled gauge.
    pub(crate) fn set_state(family: &Family<StateLabel, Gauge>, state: &'static str, v: u64) {
        family
            .get_or_create(&StateLabel { state })
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    pub(crate) fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn abandon(&self, reason: &'static str) {
        self.abandons.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Classifies the reason an attempt ended into a small fixed set, for labels.
pub(crate) fn reason_of(state: ActionState, reason: Option<&str>) -> &'static str {
    let Some(text) = reason.map(str::to_ascii_lowercase) else {
        return match state {
            ActionState::Failed => "exit",
            ActionState::Cancelled => "cancelled",
            _ => "other",
        };
    };
    let has = |s: &str| text.contains(s);
    if has("restarted") {
        "host_restarted"
    } else if text.starts_with("proc ") && has(" lost") {
        "proc_lost"
    } else if has("silent") || has("missing from") {
        "silent"
    } else if has("host") && (has("lost") || has("heartbeat")) {
        "host_lost"
    } else if has("submission failed") || has("no agent known") || has("refused the submission") {
        "submit_failed"
    } else if has("sandbox setup") {
        "sandbox_setup"
    } else if text.starts_with("oom") {
        "oom"
    } else if has("timed out") || has("timeout") {
        "timeout"
    } else if has("cancel") {
        "cancelled"
    } else if has("exit") || has("signal") {
        "exit"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_a_small_set() {
        use ActionState::*;
        assert_eq!(
            reason_of(Abandoned, Some("proc quic!1.2.3.4:5,p lost: exited")),
            "proc_lost"
        );
        assert_eq!(
            reason_of(Abandoned, Some("the host restarted")),
            "host_restarted"
        );
        assert_eq!(
            reason_of(Abandoned, Some("submission failed: refused")),
            "submit_failed"
        );
        assert_eq!(
            reason_of(Abandoned, Some("sandbox setup failed: EPERM")),
            "sandbox_setup"
        );
        assert_eq!(
            reason_of(Failed, Some("oom: killed by its memory limit")),
            "oom"
        );
        assert_eq!(reason_of(Failed, None), "exit");
        assert_eq!(reason_of(Abandoned, Some("something new")), "other");
    }

    #[test]
    fn the_exposition_follows_the_naming_rules() {
        let m = Metrics::new();
        m.submitted.inc();
        m.transition(ActionState::Running);
        m.retry("proc_lost");
        m.dispatch_latency.observe(0.02);
        m.forbidden_counts(&BTreeMap::from([("RegisterHost".to_owned(), 2)]));
        m.forbidden_counts(&BTreeMap::from([("RegisterHost".to_owned(), 3)]));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            "procmesh_actions_submitted_total 1",
            "procmesh_action_transitions_total{state=\"running\"} 1",
            "procmesh_action_retries_total{reason=\"proc_lost\"} 1",
            "procmesh_dispatch_latency_seconds_count 1",
            "procmesh_forbidden_total{request=\"RegisterHost\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("procmesh_"), "{name}");
        }
    }
}
