//! The orchestrator's admin HTTP surface (served by `procmesh-admin`'s listener): health,
//! readiness, Prometheus metrics, a JSON API and the live dashboard.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard (one self-contained page, pushed updates over SSE) |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 once the journal is recovered and the actor accepts; 503 while starting or stopping |
//! | `/metrics` | Prometheus (OpenMetrics text), see [`metrics`] |
//! | `/api/v1/summary` | counts, totals, hosts, the latest transitions |
//! | `/api/v1/hosts?offset=&limit=` | hosts with their procs and slots, paged (limit ≤ 1000) |
//! | `/api/v1/queues?offset=&limit=` | queues, newest first, paged |
//! | `/api/v1/actions/{lsn}` | one action: its record, timeline and attempts |
//! | `/api/v1/actions/{lsn}/explain` | why it is (not) running, and its attempts |
//! | `/api/v1/stream` | server-sent events: the summary each time it changes |
//!
//! Lists and counts come from the [`View`] the actor publishes (never by waiting on it);
//! per-action answers ask the actor, bounded by [`ASK_TIMEOUT`]. The admin listener is an
//! operator's tool: it sees every queue by id (ADM-1 keeps it on loopback or behind a token);
//! it never shows queue tokens, node secrets, action environments or arguments.

pub(crate) mod metrics;
pub mod page;
pub(crate) mod view;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kameo::actor::ActorRef;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::watch;

use crate::service::{AdminAsk, Service};
pub use view::{HostRow, ProcRow, QueueRow, Recent, Summary, View};

/// How often the actor rebuilds its admin view (when something changed).
pub const REFRESH: Duration = Duration::from_millis(500);

/// How long a per-action request waits for the actor.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Most rows in one page.
const MAX_PAGE: usize = 1000;

/// Where the orchestrator is in its life, as the admin listener sees it.
#[derive(Clone)]
enum Phase {
    /// Recovering the journal, binding the frontend.
    Starting,
    /// Serving.
    Serving(Serving),
    /// Shutting down.
    Stopping,
}

/// What the handlers reach once the orchestrator serves.
#[derive(Clone)]
pub(crate) struct Serving {
    pub view: watch::Receiver<Arc<View>>,
    pub actor: ActorRef<Service>,
    pub actor_id: String,
    pub recovered: crate::Recovered,
}

/// The orchestrator's admin state, created before the orchestrator starts so that the listener
/// can answer `/readyz` with 503 while the journal is recovered. Cheap to clone.
#[derive(Clone)]
pub struct AdminSlot {
    phase: Arc<RwLock<Phase>>,
    pub(crate) metrics: Arc<metrics::Metrics>,
}

impl std::fmt::Debug for AdminSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSlot").finish_non_exhaustive()
    }
}

impl Default for AdminSlot {
    fn default() -> Self {
        AdminSlot::new()
    }
}

impl AdminSlot {
    /// A slot for an orchestrator that has not started yet.
    pub fn new() -> AdminSlot {
        AdminSlot {
            phase: Arc::new(RwLock::new(Phase::Starting)),
            metrics: Arc::new(metrics::Metrics::new()),
        }
    }

    /// The counter the admin listener counts its refusals in (`procmesh_admin_refused_total`).
    pub fn refused_counter(&self) -> Counter {
        self.metrics.admin_refused.clone()
    }

    pub(crate) fn serving(&self, serving: Serving) {
        *self.phase.write().expect("lock") = Phase::Serving(serving);
    }

    /// The orchestrator is shutting down: `/readyz` answers 503 from now on.
    pub fn stopping(&self) {
        *self.phase.write().expect("lock") = Phase::Stopping;
    }

    fn phase(&self) -> Phase {
        self.phase.read().expect("lock").clone()
    }

    /// The routes of the orchestrator's admin listener.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page::dashboard))
            .route("/assets/dashboard.css", get(page::stylesheet))
            .route("/assets/dashboard.js", get(page::script))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/api/v1/summary", get(summary))
            .route("/api/v1/hosts", get(hosts))
            .route("/api/v1/queues", get(queues))
            .route("/api/v1/actions/{lsn}", get(action))
            .route("/api/v1/actions/{lsn}/explain", get(explain))
            .route("/api/v1/stream", get(stream))
            .fallback(|| async {
                procmesh_admin::error_response(StatusCode::NOT_FOUND, "not_found", "no such path")
            })
            .with_state(self.clone())
    }

    fn serving_or_503(&self) -> Result<Serving, Unavailable> {
        match self.phase() {
            Phase::Serving(serving) => Ok(serving),
            Phase::Starting => Err(Unavailable::Starting),
            Phase::Stopping => Err(Unavailable::Stopping),
        }
    }
}

/// Why the orchestrator cannot answer yet: a 503.
enum Unavailable {
    Starting,
    Stopping,
}

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        let (code, reason) = match self {
            Unavailable::Starting => ("starting", "the orchestrator is recovering its journal"),
            Unavailable::Stopping => ("stopping", "the orchestrator is shutting down"),
        };
        procmesh_admin::error_response(StatusCode::SERVICE_UNAVAILABLE, code, reason)
    }
}

async fn healthz(State(slot): State<AdminSlot>) -> Response {
    let phase = match slot.phase() {
        Phase::Starting => "starting",
        Phase::Serving(_) => "serving",
        Phase::Stopping => "stopping",
    };
    procmesh_admin::health_response(
        true,
        serde_json::json!({ "role": "orchestrator", "phase": phase }),
    )
}

async fn readyz(State(slot): State<AdminSlot>) -> Response {
    match slot.phase() {
        Phase::Serving(serving) => {
            let alive = serving.actor.is_alive();
            let summary = &serving.view.borrow().summary;
            procmesh_admin::health_response(
                alive,
                serde_json::json!({
                    "role": "orchestrator",
                    "actor": serving.actor_id,
                    "accepting": alive,
                    "journal": {
                        "enabled": summary.journal,
                        "recovered": true,
                        "snapshot": serving.recovered.snapshot,
                        "records": serving.recovered.records,
                        "actions": serving.recovered.actions,
                    },
                    "hosts_alive": summary.hosts.alive,
                    "reason": if alive { None } else { Some("the orchestrator actor stopped") },
                }),
            )
        }
        Phase::Starting => procmesh_admin::health_response(
            false,
            serde_json::json!({
                "role": "orchestrator",
                "journal": { "recovered": false },
                "reason": "recovering the journal",
            }),
        ),
        Phase::Stopping => procmesh_admin::health_response(
            false,
            serde_json::json!({ "role": "orchestrator", "reason": "shutting down" }),
        ),
    }
}

async fn metrics(State(slot): State<AdminSlot>) -> Response {
    procmesh_admin::metrics_response(&slot.metrics.registry)
}

async fn summary(State(slot): State<AdminSlot>) -> Response {
    match slot.serving_or_503() {
        Ok(serving) => {
            let view = serving.view.borrow().clone();
            Json(&view.summary).into_response()
        }
        Err(unavailable) => unavailable.into_response(),
    }
}

/// A page of a list.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    limit: Option<usize>,
}

fn page<T: serde::Serialize>(rows: &[T], page: &Page) -> Response {
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let start = page.offset.min(rows.len());
    let end = (start + limit).min(rows.len());
    Json(serde_json::json!({
        "total": rows.len(),
        "offset": start,
        "limit": limit,
        "items": &rows[start..end],
    }))
    .into_response()
}

async fn hosts(State(slot): State<AdminSlot>, Query(p): Query<Page>) -> Response {
    match slot.serving_or_503() {
        Ok(serving) => {
            let view = serving.view.borrow().clone();
            page(&view.hosts, &p)
        }
        Err(unavailable) => unavailable.into_response(),
    }
}

async fn queues(State(slot): State<AdminSlot>, Query(p): Query<Page>) -> Response {
    match slot.serving_or_503() {
        Ok(serving) => {
            let view = serving.view.borrow().clone();
            page(&view.queues, &p)
        }
        Err(unavailable) => unavailable.into_response(),
    }
}

async fn ask(slot: &AdminSlot, lsn: &str, explain: bool) -> Response {
    let serving = match slot.serving_or_503() {
        Ok(serving) => serving,
        Err(unavailable) => return unavailable.into_response(),
    };
    let Ok(lsn) = lsn.parse::<u64>() else {
        return procmesh_admin::error_response(
            StatusCode::BAD_REQUEST,
            "bad_lsn",
            format!("{lsn:?} is not an LSN (a positive integer)"),
        );
    };
    let asked = serving.actor.ask(AdminAsk {
        lsn: procmesh_protocol::Lsn(lsn),
        explain,
    });
    match tokio::time::timeout(ASK_TIMEOUT, asked).await {
        Ok(Ok(Some(value))) => Json(value).into_response(),
        Ok(Ok(None)) => procmesh_admin::error_response(
            StatusCode::NOT_FOUND,
            "unknown_action",
            format!("no action {lsn} (never submitted, or retired)"),
        ),
        Ok(Err(error)) => procmesh_admin::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the orchestrator did not answer: {error}"),
        ),
        Err(_) => procmesh_admin::error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the orchestrator did not answer within {ASK_TIMEOUT:?}"),
        ),
    }
}

async fn action(State(slot): State<AdminSlot>, Path(lsn): Path<String>) -> Response {
    ask(&slot, &lsn, false).await
}

async fn explain(State(slot): State<AdminSlot>, Path(lsn): Path<String>) -> Response {
    ask(&slot, &lsn, true).await
}

/// `?max_s=`: how long one event stream lasts before the server ends it (the browser's
/// `EventSource` reconnects after the `retry` it was sent).
#[derive(Debug, Deserialize)]
struct StreamQuery {
    max_s: Option<u64>,
}

/// Streams last at most this long by default; a reconnect follows.
const STREAM_MAX: Duration = Duration::from_secs(300);

/// The summary, pushed each time it changes (at most every refresh), with a keep-alive comment
/// every 15 s. Each stream ends after `max_s` seconds (default 300, at most 3600): proxies
/// and headless browsers see a response that completes, and the page reconnects.
async fn stream(State(slot): State<AdminSlot>, Query(q): Query<StreamQuery>) -> Response {
    use tokio_stream::StreamExt as _;
    let serving = match slot.serving_or_503() {
        Ok(serving) => serving,
        Err(unavailable) => return unavailable.into_response(),
    };
    let max = q
        .max_s
        .map(|s| Duration::from_secs(s.clamp(1, 3600)))
        .unwrap_or(STREAM_MAX);
    let mut first = true;
    let events = tokio_stream::wrappers::WatchStream::new(serving.view).map(move |view| {
        let data = serde_json::to_string(&view.summary).unwrap_or_else(|_| "{}".into());
        let mut event = Event::default().event("summary").data(data);
        if std::mem::take(&mut first) {
            event = event.retry(Duration::from_secs(2));
        }
        Ok::<_, std::convert::Infallible>(event)
    });
    let events = Until {
        inner: Box::pin(events),
        deadline: Box::pin(tokio::time::sleep(max)),
    };
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// A stream that ends at a deadline.
struct Until<S> {
    inner: std::pin::Pin<Box<S>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S: futures_core::Stream> futures_core::Stream for Until<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        self.inner.as_mut().poll_next(cx)
    }
}
