//! `procmesh explain` against a real mesh (an orchestrator and a host as OS processes): a
//! pending action behind a busy proc names the proc and who occupies it, one requiring a label
//! no host has says so, and a drained queue is reported. Every wait is bounded.

mod utils;

use std::process::Command;
use std::time::{Duration, Instant};

use procmesh_protocol::action::ActionState;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_protocol::Lsn;
use procmesh_transport::Role;
use utils::{procmesh_bin, start_mesh_host, Certs};

/// `procmesh explain --json` for `lsn` of the queue `token`, parsed.
fn explain(certs: &Certs, orchestrator: &str, token: &str, lsn: Lsn) -> serde_json::Value {
    let out = Command::new(procmesh_bin())
        .args([
            "explain",
            "-q",
            token,
            "--lsn",
            &lsn.0.to_string(),
            "--json",
        ])
        .args(["--orchestrator", orchestrator, "--bind", "127.0.0.1:0"])
        .arg("--tls-dir")
        .arg(certs.tls_dir(Role::Client))
        .output()
        .expect("procmesh explain runs");
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

fn kinds(e: &serde_json::Value) -> Vec<String> {
    e["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["reason"]["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_busy_slots_unmet_labels_and_a_drained_queue() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, id) =
        utils::start_quick_orchestrator(&certs, &dir.path().join("orchestrator"));
    // One proc with one slot.
    let (_host, addr, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host"),
        &id,
        (1, 1),
        &["--isolation", "none"],
    );
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = utils::shell_worker(&client, "sleep 30").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let token = queue.token().expect("a token").to_string();
    let plain = |labels: &[(&str, &str)]| {
        let mut action = ActionDef::new(worker);
        action.resources.host_labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SubmitAction {
            action,
            priority: None,
            idempotency_key: None,
        }
    };
    let first = queue.submit(vec![plain(&[])]).await.unwrap()[0];
    // Bounded: the first action takes the only slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = queue.action(first).await.unwrap().record.state();
        if matches!(state, ActionState::Submitting | ActionState::Running) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first action is {state} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lsns = queue
        .submit(vec![plain(&[]), plain(&[("gpu", "a100")])])
        .await
        .unwrap();
    let (second, labelled) = (lsns[0], lsns[1]);
    let orchestrator = id.to_string();

    let busy = explain(&certs, &orchestrator, &token, second);
    assert_eq!(busy["state"], "Pending", "{busy}");
    assert_eq!(kinds(&busy), ["all_slots_busy"], "{busy}");
    let procs = &busy["reasons"][0]["reason"]["procs"];
    assert!(
        procs[0]["proc"].to_string().contains(&addr.to_string()),
        "{procs}"
    );
    assert_eq!(procs[0]["max"], 1);
    assert_eq!(
        procs[0]["own"][0], first.0,
        "occupied by the first action: {procs}"
    );

    let unmet = explain(&certs, &orchestrator, &token, labelled);
    assert_eq!(kinds(&unmet), ["labels_unmet"], "{unmet}");
    assert_eq!(unmet["reasons"][0]["reason"]["requires"]["gpu"], "a100");
    assert_eq!(unmet["reasons"][0]["reason"]["alive_hosts"], 1);

    queue.drain().await.unwrap();
    let drained = explain(&certs, &orchestrator, &token, second);
    assert_eq!(kinds(&drained)[0], "queue_draining", "{drained}");

    let running = explain(&certs, &orchestrator, &token, first);
    assert_eq!(kinds(&running), ["placed"], "{running}");
    assert_eq!(running["attempts"].as_array().map(Vec::len), Some(1));

    queue.cancel().await.unwrap();
    client.close().await;
}
