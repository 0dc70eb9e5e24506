//! Optional OTLP export of action-attempt spans (off by default).
//!
//! When `--otlp-endpoint URL` (or `PROCMESH_OTLP_ENDPOINT`) is set, [`OtlpLayer`] records the
//! spans named `attempt` — **only those**; every other span and every event is ignored — and an
//! exporter thread (`otlp-export`) POSTs them as OTLP/HTTP JSON to `<endpoint>/v1/traces`.
//!
//! * Only plain `http://host[:port][/path]` endpoints: TLS export is not built in; point it at
//!   a local collector or agent that forwards.
//! * The traced code never waits: finished spans go through a bounded channel with
//!   `try_send`; when it is full the span is dropped and counted. Failed exports (I/O error,
//!   non-2xx) drop their batch, count it, and warn at most once a minute.
//! * The exporter thread starts with the first finished `attempt` span, so a process that
//!   never runs an attempt (an orchestrator, a host) never starts it — and a proc agent forks
//!   its zygote before any export thread exists.
//! * Batches: up to 512 spans or 1 s, whichever comes first.
//! * [`OtlpGuard`] flushes on exit, best effort: it waits at most 2 s for the last batch.
//!
//! Span mapping: the `trace_id` field (32 lowercase hex, not all zeros) is the trace id, else a
//! random one; the `parent_span_id` field (16 lowercase hex, not all zeros) is the parent, kept
//! only when the trace id came from the field; the span id is random. Every other field
//! becomes an attribute `procmesh.<field>`: integers as `intValue`, `Display`/`Debug` values
//! that read as an integer (e.g. `lsn = %lsn`) as `intValue`, strings as `stringValue`.

use std::fmt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod endpoint;

use endpoint::post;
pub use endpoint::Endpoint;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The environment variable that carries the endpoint (and hands it to proc agents).
pub const ENDPOINT_ENV: &str = "PROCMESH_OTLP_ENDPOINT";
/// The only span name exported.
pub const SPAN_NAME: &str = "attempt";
/// Finished spans waiting for the exporter; beyond this they are dropped.
pub const CHANNEL_CAPACITY: usize = 4096;
/// Spans per POST at most.
const BATCH_MAX: usize = 512;
/// How long a span waits for its batch at most.
const BATCH_INTERVAL: Duration = Duration::from_secs(1);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The endpoint to use: `flag`, else `$PROCMESH_OTLP_ENDPOINT`; `None` when unset or empty.
pub fn configured_endpoint(flag: Option<&str>) -> Option<String> {
    let value = match flag {
        Some(flag) => flag.to_string(),
        None => std::env::var(ENDPOINT_ENV).ok()?,
    };
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// A field value kept for an attribute.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::json!({ "stringValue": s }),
            Value::Int(i) => serde_json::json!({ "intValue": i.to_string() }),
            Value::Bool(b) => serde_json::json!({ "boolValue": b }),
            Value::Double(d) => serde_json::json!({ "doubleValue": d }),
        }
    }
}

/// What the layer keeps in a live `attempt` span's extensions.
#[derive(Debug)]
struct SpanData {
    start_wall: SystemTime,
    start: Instant,
    trace_id: Option<String>,
    parent_span_id: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl SpanData {
    fn set(&mut self, field: &Field, value: Value) {
        match field.name() {
            "trace_id" | "parent_span_id" => {
                let text = match value {
                    Value::Str(s) => s,
                    other => format!("{other:?}"),
                };
                if field.name() == "trace_id" {
                    self.trace_id = Some(text);
                } else {
                    self.parent_span_id = Some(text);
                }
            }
            name => match self.fields.iter_mut().find(|(k, _)| *k == name) {
                Some((_, slot)) => *slot = value,
                None => self.fields.push((name, value)),
            },
        }
    }
}

impl Visit for SpanData {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, Value::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).map_or_else(|_| Value::Str(value.to_string()), Value::Int);
        self.set(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, Value::Double(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` arrives here as its `Display`: a number-like value (an LSN) is an integer.
        let text = format!("{value:?}");
        let value = text.parse::<i64>().map_or(Value::Str(text), Value::Int);
        self.set(field, value);
    }
}

/// A finished span on its way to the exporter.
#[derive(Debug, Clone)]
struct FinishedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: &'static str,
    start_unix_nano: u64,
    end_unix_nano: u64,
    attributes: Vec<(&'static str, Value)>,
}

impl FinishedSpan {
    fn to_json(&self) -> serde_json::Value {
        let attributes: Vec<_> = self
            .attributes
            .iter()
            .map(|(k, v)| serde_json::json!({ "key": format!("procmesh.{k}"), "value": v.to_json() }))
            .collect();
        let mut span = serde_json::json!({
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": self.name,
            "kind": 1,
            "startTimeUnixNano": self.start_unix_nano.to_string(),
            "endTimeUnixNano": self.end_unix_nano.to_string(),
            "attributes": attributes,
        });
        if let Some(parent) = &self.parent_span_id {
            span["parentSpanId"] = serde_json::Value::String(parent.clone());
        }
        span
    }
}

/// The OTLP JSON body (`ExportTraceServiceRequest`) for one batch.
fn request_body(role: &str, spans: &[FinishedSpan]) -> Vec<u8> {
    let body = serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "procmesh" } },
                { "key": "procmesh.role", "value": { "stringValue": role } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "procmesh" },
                "spans": spans.iter().map(FinishedSpan::to_json).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Random bytes, never all zeros (an invalid id); falls back to a keyed hash of a counter and
/// the time should the OS generator fail.
fn random_id<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::getrandom(&mut bytes).is_err() {
        use std::hash::{BuildHasher as _, Hasher as _};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    if bytes.iter().all(|&b| b == 0) {
        bytes[N - 1] = 1;
    }
    bytes
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

enum Msg {
    Span(Box<FinishedSpan>),
    /// Look at the `closed` flag (sent by [`OtlpGuard::shutdown`]).
    Wake,
}

/// Export statistics.
#[derive(Debug, Default)]
struct Stats {
    /// Spans dropped because the channel was full (or the exporter gone).
    dropped_full: AtomicU64,
    /// Spans dropped because their POST failed.
    export_failed: AtomicU64,
    /// Spans a collector accepted.
    exported: AtomicU64,
}

enum ExporterState {
    /// Not started yet: starts with the first finished span.
    Pending(Box<Exporter>),
    Running {
        handle: std::thread::JoinHandle<()>,
        /// Disconnected when the thread ends.
        done: Receiver<()>,
    },
    /// Stopped, failed to start, or never to start (tests).
    Off,
}

struct Shared {
    stats: Stats,
    closed: AtomicBool,
    started: AtomicBool,
    state: Mutex<ExporterState>,
}

impl Shared {
    fn ensure_started(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let ExporterState::Pending(_) = &*state {
            let ExporterState::Pending(exporter) =
                std::mem::replace(&mut *state, ExporterState::Off)
            else {
                unreachable!()
            };
            let (done_tx, done) = mpsc::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || {
                    let _done = done_tx;
                    exporter.run();
                });
            if let Ok(handle) = spawned {
                *state = ExporterState::Running { handle, done };
            }
        }
        self.started.store(true, Ordering::Release);
    }
}

/// A `tracing_subscriber` layer recording `attempt` spans (only spans named `attempt`) for
/// OTLP export. Install it with its own filter ([`OtlpLayer::filtered`]) so that the log
/// filter (`RUST_LOG`, default `warn`) does not hide the info-level `attempt` spans from it.
pub struct OtlpLayer {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// Flushes and stops the exporter when shut down or dropped (waits 2 s at most).
pub struct OtlpGuard {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

/// The per-layer filter of [`OtlpLayer`]: spans named `attempt`, at any level.
pub type AttemptFilter = FilterFn<fn(&Metadata<'_>) -> bool>;

fn is_attempt(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == SPAN_NAME
}

impl OtlpLayer {
    /// A layer exporting to `endpoint` (see [`Endpoint::parse`]) as `role`, with its guard.
    /// No thread starts before the first `attempt` span closes.
    pub fn new(endpoint: &str, role: &str) -> anyhow::Result<(Self, OtlpGuard)> {
        Self::with_capacity(endpoint, role, CHANNEL_CAPACITY)
    }

    /// [`OtlpLayer::new`] with a channel of `capacity` finished spans.
    pub fn with_capacity(
        endpoint: &str,
        role: &str,
        capacity: usize,
    ) -> anyhow::Result<(Self, OtlpGuard)> {
        let endpoint = Endpoint::parse(endpoint)?;
        let (layer, rx) = Self::unstarted(capacity);
        let exporter = Exporter {
            rx,
            endpoint,
            role: role.to_string(),
            shared: layer.shared.clone(),
            last_warn: None,
        };
        *layer.shared.state.lock().expect("fresh mutex") =
            ExporterState::Pending(Box::new(exporter));
        let guard = OtlpGuard {
            tx: layer.tx.clone(),
            shared: layer.shared.clone(),
        };
        Ok((layer, guard))
    }

    /// A layer whose spans nobody drains but the returned receiver.
    fn unstarted(capacity: usize) -> (Self, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            state: Mutex::new(ExporterState::Off),
        });
        (Self { tx, shared }, rx)
    }

    /// This layer behind its own filter: `attempt` spans only, whatever the log filter says.
    pub fn filtered<S>(self) -> Filtered<Self, AttemptFilter, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.with_filter(tracing_subscriber::filter::filter_fn(
            is_attempt as fn(&Metadata<'_>) -> bool,
        ))
    }

    /// Spans dropped so far because the channel was full.
    #[cfg(test)]
    fn dropped_full(&self) -> u64 {
        self.shared.stats.dropped_full.load(Ordering::Relaxed)
    }

    fn send(&self, span: FinishedSpan) {
        if self.shared.closed.load(Ordering::Acquire) {
            self.shared
                .stats
                .dropped_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.ensure_started();
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared
                    .stats
                    .dropped_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !is_attempt(attrs.metadata()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut data = SpanData {
            start_wall: SystemTime::now(),
            start: Instant::now(),
            trace_id: None,
            parent_span_id: None,
            fields: Vec::new(),
        };
        attrs.record(&mut data);
        span.extensions_mut().insert(data);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(data) = extensions.get_mut::<SpanData>() {
            values.record(data);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        let end_wall = data.start_wall + data.start.elapsed();
        let (trace_id, parent_span_id) = match data.trace_id {
            Some(t) if is_hex_id(&t, 32) => (t, data.parent_span_id.filter(|p| is_hex_id(p, 16))),
            _ => (to_hex(&random_id::<16>()), None),
        };
        self.send(FinishedSpan {
            trace_id,
            span_id: to_hex(&random_id::<8>()),
            parent_span_id,
            name: span.metadata().name(),
            start_unix_nano: unix_nanos(data.start_wall),
            end_unix_nano: unix_nanos(end_wall),
            attributes: data.fields,
        });
    }
}

impl OtlpGuard {
    /// Exports what is queued and stops the exporter, waiting 2 s at most (then it is left to
    /// die with the process). Spans finishing afterwards are dropped.
    pub fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let state = match self.shared.state.lock() {
            Ok(mut state) => std::mem::replace(&mut *state, ExporterState::Off),
            Err(_) => return,
        };
        if let ExporterState::Running { handle, done } = state {
            // Full means the exporter is awake anyway and sees `closed` at its next message.
            let _ = self.tx.try_send(Msg::Wake);
            match done.recv_timeout(SHUTDOWN_WAIT) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Spans dropped so far: channel full, or their export failed.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        let stats = &self.shared.stats;
        stats.dropped_full.load(Ordering::Relaxed) + stats.export_failed.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The `otlp-export` thread's side: batches, POSTs, counts.
struct Exporter {
    rx: Receiver<Msg>,
    endpoint: Endpoint,
    role: String,
    shared: Arc<Shared>,
    last_warn: Option<Instant>,
}

impl Exporter {
    fn run(mut self) {
        let mut batch: Vec<FinishedSpan> = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                // Final flush: what is queued now, then stop.
                loop {
                    match self.rx.try_recv() {
                        Ok(Msg::Span(span)) => batch.push(*span),
                        Ok(Msg::Wake) => {}
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                self.flush(&mut batch);
                return;
            }
            let received = match deadline {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(Msg::Span(span)) => {
                    batch.push(*span);
                    deadline.get_or_insert_with(|| Instant::now() + BATCH_INTERVAL);
                    if batch.len() >= BATCH_MAX {
                        self.flush(&mut batch);
                        deadline = None;
                    }
                }
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.flush(&mut batch);
                    deadline = None;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut batch);
                    return;
                }
            }
        }
    }

    fn flush(&mut self, batch: &mut Vec<FinishedSpan>) {
        let spans = std::mem::take(batch);
        for chunk in spans.chunks(BATCH_MAX) {
            let stats = &self.shared.stats;
            match post(&self.endpoint, &request_body(&self.role, chunk)) {
                Ok(()) => {
                    stats
                        .exported
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    let n = chunk.len() as u64;
                    let failed = stats.export_failed.fetch_add(n, Ordering::Relaxed) + n;
                    if self.last_warn.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        self.last_warn = Some(Instant::now());
                        // Not an `attempt` span: this never comes back to the exporter.
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            error = format!("{error:#}"),
                            dropped_spans = failed,
                            "OTLP export failed; dropping the batch (warning at most once a minute)"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
