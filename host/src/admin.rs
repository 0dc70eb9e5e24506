//! The host's admin HTTP surface (served by `procmesh-admin`'s listener): `/healthz`,
//! `/readyz`, `/metrics` and `/api/v1/procs`.
//!
//! - **HST-24** Ready ([`Host::readiness`], `/readyz` 200, the `ready` line of `procmesh host`)
//!   means: not shutting down, every proc in the table `Ready`, and — when it has an
//!   orchestrator — its registration acknowledged, an answer from the orchestrator within the
//!   last [`CONTACT_WINDOW`] heartbeat intervals (at least [`MIN_CONTACT`]), and the last
//!   acknowledged heartbeat offering every ready proc. A heartbeat answered `UnknownHost` makes
//!   it unready until it has registered again. Otherwise 503, saying why.
//!
//! Everything is read from the host's own state at request time (no actor is asked): the proc
//! table, the link to the orchestrator, the refusal counts.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use procmesh_protocol::messages::host::ProcStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::host::{now, Host};

/// Heartbeat intervals without an answer after which the host is no longer ready.
pub const CONTACT_WINDOW: u64 = 3;

/// The shortest contact window.
pub const MIN_CONTACT: Duration = Duration::from_secs(5);

/// The host's link to its orchestrator, as registration and heartbeats leave it.
#[derive(Debug, Default)]
pub struct Link {
    registered: AtomicBool,
    /// The last answer from the orchestrator (ms since the epoch; 0: never).
    last_contact_ms: AtomicU64,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    /// Procs the last acknowledged heartbeat offered.
    reported: AtomicU32,
    /// Wakes the heartbeat loop for a beat now (a proc became ready).
    pub(crate) beat_now: Arc<tokio::sync::Notify>,
}

impl Link {
    pub(crate) fn registered(&self) {
        self.registered.store(true, Ordering::Relaxed);
        self.registrations.fetch_add(1, Ordering::Relaxed);
        self.last_contact_ms.store(now().0, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, reported: u32) {
        self.reported.store(reported, Ordering::Relaxed);
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.last_contact_ms.store(now().0, Ordering::Relaxed);
    }

    pub(crate) fn unknown(&self) {
        self.registered.store(false, Ordering::Relaxed);
    }
}

/// Whether the host can take work, and why not (HST-24).
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Ready.
    pub ready: bool,
    /// The orchestrator it registers with, if any.
    pub orchestrator: Option<String>,
    /// Its registration was acknowledged (and not since answered `UnknownHost`).
    pub registered: bool,
    /// Milliseconds since the orchestrator last answered, if it ever did.
    pub last_contact_ms_ago: Option<u64>,
    /// Procs the last heartbeat the orchestrator acknowledged offered work on.
    pub procs_reported: u32,
    /// Procs in the table.
    pub procs: u32,
    /// Of which ready.
    pub procs_ready: u32,
    /// Shutting down.
    pub shutting_down: bool,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

/// A `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The state of the admin routes.
#[derive(Clone)]
struct AdminState {
    host: Host,
    metrics: std::sync::Arc<HostMetrics>,
}

/// The host's metrics: gauges set from its state at each scrape.
struct HostMetrics {
    registry: Registry,
    procs: Family<StatusLabel, Gauge>,
    restarts: Gauge,
    registered: Gauge,
    registrations: Gauge,
    heartbeats: Gauge,
    blob_transfers: Gauge,
    forbidden: Family<RequestLabel, Gauge>,
    transport_refused: Family<ReasonLabel, Gauge>,
    admin_refused: Counter,
    capacity: Gauge,
    slots_held: Gauge,
}

impl HostMetrics {
    fn new(admin_refused: Counter) -> HostMetrics {
        let mut registry = Registry::with_prefix("procmesh_host");
        let m = HostMetrics {
            procs: Family::default(),
            restarts: Gauge::default(),
            registered: Gauge::default(),
            registrations: Gauge::default(),
            heartbeats: Gauge::default(),
            blob_transfers: Gauge::default(),
            forbidden: Family::default(),
            transport_refused: Family::default(),
            admin_refused,
            capacity: Gauge::default(),
            slots_held: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("procs", "Procs in the table, by status", m.procs.clone());
        r.register(
            "proc_restarts",
            "Respawns of procs that exited unasked, summed over the current procs",
            m.restarts.clone(),
        );
        r.register(
            "registered",
            "1 while the orchestrator has acknowledged this host's registration",
            m.registered.clone(),
        );
        r.register(
            "registrations",
            "Registrations acknowledged since the start",
            m.registrations.clone(),
        );
        r.register(
            "heartbeats",
            "Heartbeats acknowledged since the start",
            m.heartbeats.clone(),
        );
        r.register(
            "blob_transfers",
            "Blob fetches from the orchestrator since the start",
            m.blob_transfers.clone(),
        );
        r.register(
            "forbidden",
            "Requests, links and relays refused by authority checks, by kind",
            m.forbidden.clone(),
        );
        r.register(
            "transport_refused",
            "Links, envelopes and blob requests the node refused since the start, by reason",
            m.transport_refused.clone(),
        );
        r.register(
            "capacity_slots",
            "Actions the host runs at once, across its procs (--capacity)",
            m.capacity.clone(),
        );
        r.register(
            "slots_held",
            "Slots held by the host's procs (the sum of their max_actions)",
            m.slots_held.clone(),
        );
        r.register(
            "admin_refused",
            "Admin HTTP requests refused for a missing or wrong token",
            m.admin_refused.clone(),
        );
        HostMetrics { registry, ..m }
    }

    fn update(&self, host: &Host) {
        let mut by_status = [0i64; STATUS_NAMES.len()];
        let mut restarts = 0i64;
        for info in host.list() {
            by_status[status_index(info.status)] += 1;
            restarts += i64::from(host.restarts(info.proc_id.name()));
        }
        for (i, name) in STATUS_NAMES.iter().enumerate() {
            self.procs
                .get_or_create(&StatusLabel { status: name })
                .set(by_status[i]);
        }
        self.restarts.set(restarts);
        let link = &host.inner.link;
        self.registered
            .set(i64::from(link.registered.load(Ordering::Relaxed)));
        self.registrations
            .set(link.registrations.load(Ordering::Relaxed) as i64);
        self.heartbeats
            .set(link.heartbeats.load(Ordering::Relaxed) as i64);
        self.blob_transfers.set(host.blob_transfers() as i64);
        self.capacity.set(i64::from(host.capacity()));
        self.slots_held.set(i64::from(host.slots_held()));
        for (request, n) in host.refusals() {
            self.forbidden
                .get_or_create(&RequestLabel { request })
                .set(n as i64);
        }
        for (reason, n) in host.inner.node.refusals() {
            self.transport_refused
                .get_or_create(&ReasonLabel { reason })
                .set(n as i64);
        }
    }
}

const STATUS_NAMES: [&str; 4] = ["starting", "ready", "terminating", "exited"];

fn status_index(status: ProcStatus) -> usize {
    match status {
        ProcStatus::Starting => 0,
        ProcStatus::Ready => 1,
        ProcStatus::Terminating => 2,
        ProcStatus::Exited(_) => 3,
    }
}

impl Host {
    /// Whether the host can take work (HST-24).
    pub fn readiness(&self) -> Readiness {
        let status = self.status();
        let link = &self.inner.link;
        let orchestrator = self.config().orchestrator.as_ref().map(|o| o.to_string());
        let registered = link.registered.load(Ordering::Relaxed);
        let reported = link.reported.load(Ordering::Relaxed);
        let last = link.last_contact_ms.load(Ordering::Relaxed);
        let ago = (last > 0).then(|| now().0.saturating_sub(last));
        let window = Duration::from_millis(
            self.config()
                .heartbeat_interval_ms
                .saturating_mul(CONTACT_WINDOW),
        )
        .max(MIN_CONTACT);
        let mut reasons = Vec::new();
        if status.shutting_down {
            reasons.push("shutting down".to_owned());
        }
        if status.ready < status.procs {
            reasons.push(format!(
                "{} of {} procs are not ready",
                status.procs - status.ready,
                status.procs
            ));
        }
        if orchestrator.is_some() {
            if !registered {
                reasons.push("not registered with the orchestrator".to_owned());
            } else if ago.is_none_or(|ms| ms > window.as_millis() as u64) {
                reasons.push(format!(
                    "no answer from the orchestrator for more than {} ms",
                    window.as_millis()
                ));
            } else if reported < status.ready {
                reasons.push(format!(
                    "the orchestrator has heard {reported} of {} ready procs",
                    status.ready
                ));
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            orchestrator,
            registered,
            last_contact_ms_ago: ago,
            procs_reported: reported,
            procs: status.procs,
            procs_ready: status.ready,
            shutting_down: status.shutting_down,
            reasons,
        }
    }

    /// Sends a heartbeat now rather than at the next interval (e.g. once procs are ready, so
    /// the orchestrator can place work on them at once).
    pub fn heartbeat_now(&self) {
        self.inner.link.beat_now.notify_one();
    }

    /// The routes of the host's admin listener; `refused` counts the listener's refusals.
    pub fn admin_router(&self, refused: Counter) -> Router {
        let state = AdminState {
            host: self.clone(),
            metrics: std::sync::Arc::new(HostMetrics::new(refused)),
        };
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/api/v1/procs", get(procs))
            .with_state(state)
    }
}

async fn healthz(State(state): State<AdminState>) -> Response {
    procmesh_admin::health_response(
        true,
        serde_json::json!({ "role": "host", "addr": state.host.addr().to_string() }),
    )
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let readiness = state.host.readiness();
    let ready = readiness.ready;
    let mut body = serde_json::to_value(&readiness).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("role".into(), "host".into());
        map.insert("addr".into(), state.host.addr().to_string().into());
    }
    procmesh_admin::health_response(ready, body)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.update(&state.host);
    procmesh_admin::metrics_response(&state.metrics.registry)
}

async fn procs(State(state): State<AdminState>) -> Response {
    let procs: Vec<serde_json::Value> = state
        .host
        .list()
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "proc": p.proc_id.to_string(),
                "name": p.proc_id.name(),
                "status": p.status,
                "agent": p.agent.map(|a| a.to_string()),
                "pid": p.pid,
                "started_at_ms": p.started_at.0,
                "restarts": state.host.restarts(p.proc_id.name()),
            })
        })
        .collect();
    Json(serde_json::json!({ "procs": procs })).into_response()
}
