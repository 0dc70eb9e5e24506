//! Trace context end to end on a real mesh (an orchestrator and a host as OS processes): a
//! W3C `traceparent` attached to a submission reaches the action's environment as
//! `TRACEPARENT` unchanged; an invalid one is refused by the CLI before anything is sent.

mod utils;

use std::process::Command;
use std::time::Duration;

use procmesh_client::{Client, ClientConfig, WorkerBuilder};
use procmesh_protocol::action::ActionState;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_transport::Role;
use utils::{procmesh_bin, start_mesh_host, start_orchestrator, Certs};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_reaches_the_action_and_a_bad_one_is_refused() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, id) = start_orchestrator(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("orchestrator"),
        &["--heartbeat-interval-ms", "200", "--lost-after-ms", "3000"],
    );
    let (_host, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host"),
        &id,
        (1, 1),
        &["--isolation", "none"],
    );
    let mut config = ClientConfig::new(id.clone(), certs.client.clone());
    config.bind = Some("127.0.0.1:0".parse().unwrap());
    config.cache_dir = Some(dir.path().join("client-cache"));
    let client = Client::connect(config).await.expect("client connects");
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
