//! The admin HTTP surface of real nodes (an orchestrator and a host as OS processes): a host's
//! `/readyz` is 503 while it has no orchestrator and 200 once its procs are heard; the
//! orchestrator's `/metrics` parses as Prometheus text and its counters move as actions
//! complete; the JSON API answers from the same state; a public listener without a token does
//! not start; errors print no backtrace. Every wait is bounded.

mod utils;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procmesh_client::WorkerBuilder;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_protocol::ActorId;
use procmesh_transport::Role;
use utils::admin::{get, sample, scrape};
use utils::{node_name, procmesh_bin, start_procmesh_admin, Certs, Proc};

fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = get(addr, path).unwrap_or_else(|| panic!("GET {path} at {addr}"));
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, value)
}

fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_procs_and_metrics_move_as_actions_complete() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();

    // A host whose orchestrator is not up yet: alive, not ready.
    let orchestrator_port = free_port_udp();
    let orchestrator_id = format!("quic!127.0.0.1:{orchestrator_port},service.orchestrator");
    let host_admin = format!("127.0.0.1:{}", free_port_tcp());
    let host_state = dir.path().join("host");
    let mut host = Command::new(procmesh_bin())
        .arg("host")
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(certs.host_dir())
        .args(["--node-name", &node_name(&host_state), "--state-dir"])
        .arg(&host_state)
        .args([
            "--orchestrator",
            &orchestrator_id,
            "--procs",
            "2",
            "--max-actions",
            "2",
            "--capacity",
            "4",
        ])
        .args(["--isolation", "none", "--admin-listen", &host_admin])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("procmesh host starts");
    let stdout = host.stdout.take().unwrap();
    let _host = Proc(host);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("ready ") {
                let _ = ready_tx.send(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        if let Some(answer) = get(&host_admin, "/readyz") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the host's admin listener never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not registered"), "{body}");
    assert_eq!(get(&host_admin, "/healthz").unwrap().0, 200);
    assert!(
        ready_rx.try_recv().is_err(),
        "the host printed ready without its orchestrator"
    );

    // The orchestrator comes up on that address: the host turns ready.
    let orch_state = dir.path().join("orchestrator");
    let tls = certs.orchestrator_dir();
    let listen = format!("127.0.0.1:{orchestrator_port}");
    let (_orchestrator, id, admin) = start_procmesh_admin(
        "orchestrator",
        &[
            "--listen",
            &listen,
            "--tls-dir",
            tls.to_str().unwrap(),
            "--state-dir",
            orch_state.to_str().unwrap(),
            "--heartbeat-interval-ms",
            "200",
            "--lost-after-ms",
            "3000",
        ],
    );
    assert_eq!(id, orchestrator_id);
    let admin = admin.expect("the orchestrator prints its admin address");
    let (code, ready) = get_json(&admin, "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["journal"]["recovered"], true, "{ready}");
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the host prints ready once its procs are heard");
    let (code, body) = get_json(&host_admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["procs_ready"], 2, "{body}");
    let host_metrics = scrape(&host_admin);
    assert_eq!(
        sample(&host_metrics, "procmesh_host_procs{status=\"ready\"}"),
        2.0
    );
    assert_eq!(sample(&host_metrics, "procmesh_host_registered"), 1.0);
    // --capacity 4 held by 2 procs × --max-actions 2 (HST-25).
    assert_eq!(sample(&host_metrics, "procmesh_host_capacity_slots"), 4.0);
    assert_eq!(sample(&host_metrics, "procmesh_host_slots_held"), 4.0);

    // A workload: the counters move to completion.
    let before = scrape(&admin);
    let id: ActorId = id.parse().unwrap();
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = client
        .register_worker(
            &WorkerBuilder::new()
                .bytes("run.sh", b"#!/bin/sh\nexit 0\n".to_vec(), true)
                .executable("run.sh"),
        )
        .await
        .expect("worker registered");
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    const N: usize = 40;
    let actions = (0..N)
        .map(|_| SubmitAction {
            action: ActionDef::new(worker),
            priority: None,
            idempotency_key: None,
        })
        .collect();
    let lsns = queue.submit(actions).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let m = scrape(&admin);
        if sample(&m, "procmesh_actions_finished_total{state=\"completed\"}") >= N as f64 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "not every action completed within 60 s: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved("procmesh_actions_submitted_total"), N as f64);
    assert!(moved("procmesh_dispatch_latency_seconds_count") >= N as f64);
    assert!(moved("procmesh_action_run_seconds_count") >= N as f64);
    assert!(moved("procmesh_journal_commit_seconds_count") > 0.0);
    assert!(moved("procmesh_journal_records_total") > 0.0);
    // Gauges follow at the next refresh of the view (every 500 ms when something changed),
    // which may come after the counters: a fast run completes before the refresh that shows
    // the procs of the last heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&admin);
        if sample(&m, "procmesh_actions{state=\"completed\"}") == N as f64 {
            assert_eq!(sample(&m, "procmesh_pending_actions"), 0.0);
            assert_eq!(sample(&m, "procmesh_hosts{state=\"alive\"}"), 1.0);
            assert_eq!(sample(&m, "procmesh_procs"), 2.0);
            assert_eq!(
                sample(&m, "procmesh_proc_slots{state=\"used\"}")
                    + sample(&m, "procmesh_proc_slots{state=\"free\"}"),
                4.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gauges did not follow: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The JSON API answers from the same state.
    let (code, summary) = get_json(&admin, "/api/v1/summary");
    assert_eq!(code, 200);
    assert_eq!(summary["counts"]["completed"], N as u64, "{summary}");
    assert_eq!(summary["hosts"]["alive"], 1, "{summary}");
    let (_, hosts) = get_json(&admin, "/api/v1/hosts?limit=10");
    assert_eq!(hosts["total"], 1, "{hosts}");
    assert_eq!(
        hosts["items"][0]["procs"].as_array().unwrap().len(),
        2,
        "{hosts}"
    );
    assert!(hosts["items"][0].get("node_secret").is_none());
    let (_, queues) = get_json(&admin, "/api/v1/queues");
    assert_eq!(
        queues["items"][0]["counts"]["completed"], N as u64,
        "{queues}"
    );
    let lsn = lsns[0].0;
    let (code, action) = get_json(&admin, &format!("/api/v1/actions/{lsn}"));
    assert_eq!(code, 200, "{action}");
    let states: Vec<&str> = action["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"running") && states.contains(&"completed"),
        "{action}"
    );
    let (code, explained) = get_json(&admin, &format!("/api/v1/actions/{lsn}/explain"));
    assert_eq!(code, 200, "{explained}");
    assert_eq!(explained["explanation"]["lsn"], lsn, "{explained}");
    assert_eq!(get_json(&admin, "/api/v1/actions/999999").0, 404);
    assert_eq!(get_json(&admin, "/api/v1/actions/x").0, 400);
    let (code, page) = get(&admin, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("/assets/dashboard.js"), "{page}");
    client.close().await;
}

#[test]
fn a_public_admin_listener_needs_a_token_and_errors_carry_no_backtrace() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(procmesh_bin())
        .arg("orchestrator")
        .args(["--listen", "127.0.0.1:0", "--tls-dir"])
        .arg(certs.orchestrator_dir())
        .arg("--state-dir")
        .arg(dir.path().join("orchestrator"))
        .args(["--admin-listen", "0.0.0.0:0"])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("procmesh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a token: {stderr}");
    assert!(stderr.contains("admin_token_file"), "{stderr}");
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("stack backtrace"),
        "{stderr}"
    );

    // A client error, RUST_BACKTRACE=1: one error line and its causes.
    let out = Command::new(procmesh_bin())
        .args(["queue", "status", "-q", "0123456789abcdef01234567"])
        .args([
            "--orchestrator",
            "quic!127.0.0.1:9,service.orchestrator",
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--tls-dir")
        .arg(certs.tls_dir(Role::Client))
        .args(["--request-timeout", "1s"])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("procmesh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}
