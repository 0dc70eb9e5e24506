//! The exporter against a loopback collector, the layer under filters, ids, bounds.

use std::io::{Read as _, Write as _};
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
