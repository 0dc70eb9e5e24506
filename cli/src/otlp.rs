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
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
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
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where spans are POSTed: parsed from `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written (brackets stripped from an IPv6 literal).
    host: String,
    port: u16,
    /// The request path, ending with `/v1/traces`.
    path: String,
    /// The `Host` header: `host:port` as written.
    authority: String,
}

impl Endpoint {
    /// Accepts `http://host[:port][/path]` only; the path gets `/v1/traces` appended unless
    /// it already ends with it.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("grpcs://") {
            bail!(
                "OTLP endpoint {url:?}: TLS export is not built into procmesh; \
                 use a local collector or agent over http:// (e.g. http://127.0.0.1:4318)"
            );
        }
        if !lower.starts_with("http://") {
            bail!("OTLP endpoint {url:?}: expected http://host:port[/path] (OTLP/HTTP, JSON)");
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['@', '?', '#']) {
            bail!("OTLP endpoint {url:?}: expected http://host:port[/path], without user, query or fragment");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                bail!("OTLP endpoint {url:?}: unclosed [ in the host");
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').with_context(|| {
                    format!("OTLP endpoint {url:?}: expected :port after the IPv6 host")
                })?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("OTLP endpoint {url:?}: no host");
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .with_context(|| format!("OTLP endpoint {url:?}: bad port {p:?}"))?,
        };
        let path = if path.ends_with("/v1/traces") {
            path.to_string()
        } else {
            format!("{}/v1/traces", path.trim_end_matches('/'))
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path,
            authority: authority.to_string(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

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

/// One HTTP/1.1 POST of `body`; `Ok` on a 2xx status line.
fn post(endpoint: &Endpoint, body: &[u8]) -> anyhow::Result<()> {
    let addrs = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", endpoint.authority))?;
    let mut last_error = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                last_error = Some(anyhow::Error::new(e).context(format!("connecting to {addr}")))
            }
        }
    }
    let Some(stream) = stream else {
        return Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("{} resolves to no address", endpoint.authority)));
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         User-Agent: procmesh/{}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    let mut writer = &stream;
    writer
        .write_all(head.as_bytes())
        .context("sending the request")?;
    writer.write_all(body).context("sending the request")?;
    writer.flush().context("sending the request")?;
    let mut line = String::new();
    BufReader::new((&stream).take(8192))
        .read_line(&mut line)
        .context("reading the response")?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line {:?}", line.trim_end()))?;
    if !(200..300).contains(&status) {
        bail!("the collector answered {}", line.trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT: &str = "b7ad6b7169203331";

    /// A one-request collector: returns the request line and the JSON body.
    fn collector() -> (String, Receiver<(String, serde_json::Value)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0 && data.len() < 1 << 20, "bad request head");
                data.extend_from_slice(&buf[..n]);
            };
            let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("Content-Length");
            assert!(head
                .to_ascii_lowercase()
                .contains("content-type: application/json"));
            while data.len() < head_end + length {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "short body");
                data.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            let request_line = head.lines().next().unwrap_or_default().to_string();
            let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap();
            let _ = tx.send((request_line, body));
        });
        (url, rx)
    }

    fn emit_spans() {
        let span = tracing::info_span!(
            "attempt",
            lsn = %5u64,
            attempt = %2u32,
            queue = "q1",
            trace_id = Some(TRACE),
            parent_span_id = Some(PARENT),
        );
        span.in_scope(|| {
            tracing::info_span!("other", lsn = 9).in_scope(|| {});
        });
        drop(span);
    }

    #[test]
    fn attempt_spans_are_posted_as_otlp_json() {
        let (url, requests) = collector();
        let (layer, guard) = OtlpLayer::new(&url, "proc-agent").unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit_spans);
        guard.shutdown();
        let (request_line, body) = requests
            .recv_timeout(Duration::from_secs(10))
            .expect("a POST");
        assert_eq!(request_line, "POST /v1/traces HTTP/1.1");
        let resource = &body["resourceSpans"][0];
        let attrs = resource["resource"]["attributes"].as_array().unwrap();
        assert!(attrs.contains(
            &serde_json::json!({"key": "service.name", "value": {"stringValue": "procmesh"}})
        ));
        assert!(attrs.contains(
            &serde_json::json!({"key": "procmesh.role", "value": {"stringValue": "proc-agent"}})
        ));
        let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 1, "{body}");
        let span = &spans[0];
        assert_eq!(span["traceId"], TRACE);
        assert_eq!(span["parentSpanId"], PARENT);
        assert_eq!(span["name"], "attempt");
        assert_eq!(span["kind"], 1);
        assert!(is_hex_id(span["spanId"].as_str().unwrap(), 16));
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 0 && start <= end);
        let attributes = span["attributes"].as_array().unwrap();
        let attr = |key: &str| {
            attributes
                .iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            attr("procmesh.lsn"),
            Some(serde_json::json!({"intValue": "5"}))
        );
        assert_eq!(
            attr("procmesh.attempt"),
            Some(serde_json::json!({"intValue": "2"}))
        );
        assert_eq!(
            attr("procmesh.queue"),
            Some(serde_json::json!({"stringValue": "q1"}))
        );
        assert_eq!(attr("procmesh.trace_id"), None);
        assert_eq!(attr("procmesh.parent_span_id"), None);
        assert_eq!(guard.dropped(), 0);
    }

    #[test]
    fn the_layer_sees_attempt_spans_below_the_log_filter() {
        let (layer, rx) = OtlpLayer::unstarted(16);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry()
            .with(fmt)
            .with(layer.filtered());
        tracing::subscriber::with_default(subscriber, emit_spans);
        let names: Vec<_> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Span(s) => Some(s.name),
                Msg::Wake => None,
            })
            .collect();
        assert_eq!(names, ["attempt"]);
    }

    #[test]
    fn bad_trace_ids_get_a_random_trace_and_no_parent() {
        let (layer, rx) = OtlpLayer::unstarted(16);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let zeros = "0".repeat(32);
            let upper = TRACE.to_ascii_uppercase();
            for t in [None, Some(zeros.as_str()), Some(upper.as_str())] {
                tracing::info_span!("attempt", trace_id = t, parent_span_id = Some(PARENT))
                    .in_scope(|| {});
            }
        });
        let spans: Vec<_> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Span(s) => Some(s),
                Msg::Wake => None,
            })
            .collect();
        assert_eq!(spans.len(), 3);
        for span in spans {
            assert!(is_hex_id(&span.trace_id, 32) && span.trace_id != TRACE);
            assert_eq!(span.parent_span_id, None);
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let (layer, _rx) = OtlpLayer::unstarted(1);
        let shared = layer.shared.clone();
        let started = Instant::now();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            for lsn in 0..5u64 {
                tracing::info_span!("attempt", lsn).in_scope(|| {});
            }
        });
        assert!(started.elapsed() < Duration::from_secs(5), "never blocks");
        assert_eq!(shared.stats.dropped_full.load(Ordering::Relaxed), 4);
        let (layer, _rx) = OtlpLayer::unstarted(1);
        assert_eq!(layer.dropped_full(), 0);
    }

    #[test]
    fn an_unreachable_collector_drops_and_counts_without_blocking() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (layer, guard) = OtlpLayer::new(&format!("http://127.0.0.1:{port}"), "host").unwrap();
        let started = Instant::now();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit_spans);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the traced code never waits"
        );
        guard.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shutdown is bounded"
        );
        assert_eq!(guard.dropped(), 1);
        assert_eq!(guard.shared.stats.export_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn tls_and_other_schemes_are_refused() {
        let error = OtlpLayer::new("https://collector:4318", "host")
            .err()
            .unwrap();
        let text = error.to_string();
        assert!(text.contains("TLS export is not built"), "{text}");
        assert!(text.contains("local collector"), "{text}");
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://:4318",
            "http://c:notaport",
            "http://u@c:4318",
            "http://c:4318/x?y",
            "http://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_get_v1_traces_once() {
        let path = |url: &str| Endpoint::parse(url).unwrap().path;
        assert_eq!(path("http://127.0.0.1:4318"), "/v1/traces");
        assert_eq!(path("http://127.0.0.1:4318/"), "/v1/traces");
        assert_eq!(path("http://c:4318/v1/traces"), "/v1/traces");
        assert_eq!(path("http://c:4318/otlp/"), "/otlp/v1/traces");
        let e = Endpoint::parse("HTTP://[::1]:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 4318, "[::1]:4318")
        );
        assert_eq!(Endpoint::parse("http://collector").unwrap().port, 80);
    }

    #[test]
    fn the_endpoint_is_the_flag_else_the_environment() {
        assert_eq!(
            configured_endpoint(Some(" http://c:1 ")).as_deref(),
            Some("http://c:1")
        );
        assert_eq!(configured_endpoint(Some("")), None);
    }
}
