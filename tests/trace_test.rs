//! Trace context end to end on a real mesh (an orchestrator and a host as OS processes): a
//! W3C `traceparent` attached to a submission reaches the action's environment as
//! `TRACEPARENT` unchanged, and the attempt's span reaches an OTLP collector (a loopback TCP
//! listener in this test) with that trace id, its parent and the action's lsn, attempt and
//! queue; an invalid traceparent is refused by the CLI before anything is sent.

mod utils;

use std::process::Command;
use std::time::Duration;

use procmesh_client::WorkerBuilder;
use procmesh_protocol::action::ActionState;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_transport::Role;
use utils::{procmesh_bin, start_mesh_host, Certs};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_reaches_the_action_and_a_bad_one_is_refused() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, id) =
        utils::start_quick_orchestrator(&certs, &dir.path().join("orchestrator"));
    let collector = Collector::start();
    let endpoint = format!("http://{}", collector.addr);
    let (_host, _, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host"),
        &id,
        (1, 1),
        &["--isolation", "none", "--otlp-endpoint", &endpoint],
    );
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = client
        .register_worker(
            &WorkerBuilder::new()
                .bytes(
                    "run.sh",
                    b"#!/bin/sh\necho \"tp=$TRACEPARENT\"\n".to_vec(),
                    true,
                )
                .executable("run.sh"),
        )
        .await
        .expect("worker registered");
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let mut action = ActionDef::new(worker);
    action.traceparent = Some(TRACEPARENT.to_owned());
    let lsn = queue
        .submit(vec![SubmitAction {
            action,
            priority: None,
            idempotency_key: None,
        }])
        .await
        .unwrap()[0];
    queue
        .wait_complete(Some(Duration::from_secs(60)))
        .await
        .expect("the action ends");
    let result = queue.result(lsn).await.unwrap().expect("a result");
    assert_eq!(result.record.state(), ActionState::Completed);
    let stdout = String::from_utf8_lossy(&result.stdout_tail);
    assert_eq!(stdout.trim(), format!("tp={TRACEPARENT}"));

    // The attempt's span, exported by the proc agent within its 1 s batching.
    let span = collector.wait_for_span("4bf92f3577b34da6a3ce929d0e0e4736", Duration::from_secs(20));
    assert_eq!(span["name"], "attempt", "{span}");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7", "{span}");
    let attribute = |key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or_else(|| panic!("no {key} in {span}"))
    };
    assert_eq!(attribute("procmesh.lsn")["intValue"], lsn.0.to_string());
    assert_eq!(attribute("procmesh.attempt")["intValue"], "1");
    assert_eq!(
        attribute("procmesh.queue")["intValue"],
        queue.id().expect("a queue id").to_string()
    );
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && start <= end, "{span}");

    // A malformed traceparent is a usage error, whatever the command.
    let out = Command::new(procmesh_bin())
        .args([
            "submit",
            "--worker",
            &worker.to_string(),
            "--traceparent",
            "00-nope",
        ])
        .args(["--orchestrator", &id.to_string(), "--bind", "127.0.0.1:0"])
        .arg("--tls-dir")
        .arg(certs.tls_dir(Role::Client))
        .output()
        .expect("procmesh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a W3C traceparent"), "{stderr}");
    client.close().await;
}

/// A stand-in OTLP/HTTP collector on loopback: answers every request 200 and keeps the JSON
/// bodies of `POST /v1/traces`. Its thread ends when the test process does.
struct Collector {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(1000) {
                let Ok(stream) = stream else { continue };
                if let Some(body) = serve(stream) {
                    kept.lock().unwrap().push(body);
                }
            }
        });
        Collector { addr, bodies }
    }

    /// The first exported span of `trace_id`, waiting up to `within`.
    fn wait_for_span(&self, trace_id: &str, within: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            for body in self.bodies.lock().unwrap().iter() {
                let doc: serde_json::Value = serde_json::from_str(body).expect("OTLP JSON");
                for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            if span["traceId"] == trace_id {
                                return span.clone();
                            }
                        }
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no span of trace {trace_id} within {within:?}; got {:?}",
                self.bodies.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads one HTTP/1.1 request (headers, then `Content-Length` bytes) and answers 200; the body
/// of a `POST /v1/traces`.
fn serve(mut stream: std::net::TcpStream) -> Option<String> {
    use std::io::{BufRead as _, Read as _, Write as _};
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = std::io::BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length.min(16 << 20)];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    request_line
        .starts_with("POST /v1/traces ")
        .then(|| String::from_utf8_lossy(&body).into_owned())
}
