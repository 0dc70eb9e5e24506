//! SIGTERM drains a host (HST-27, PA-AG-7), on a real mesh of OS processes: the actions it runs
//! finish and complete there, nothing new is placed on it meanwhile, and it exits 0 once they
//! are done, well before its drain grace; what waited is placed on the next host.

mod utils;

use std::time::{Duration, Instant};

use procmesh_protocol::action::ActionState;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use utils::{start_mesh_host, Certs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_actions_finish_and_places_nothing_new() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, id) =
        utils::start_quick_orchestrator(&certs, &dir.path().join("orchestrator"));
    let (mut first, first_addr, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host-1"),
        &id,
        (1, 2),
        &["--isolation", "none", "--drain-grace-ms", "30000"],
    );
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = utils::shell_worker(&client, "sleep 3\necho done > Outputs/done.txt").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let action = || SubmitAction {
        action: ActionDef::new(worker),
        priority: None,
        idempotency_key: None,
    };
    let lsns = queue
        .submit((0..6).map(|_| action()).collect())
        .await
        .unwrap();
    // Both slots busy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = queue.status().await.unwrap();
        if status.counts.running == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never 2 running: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut running = Vec::new();
    for &lsn in &lsns {
        let view = queue.action(lsn).await.unwrap();
        if view.record.state() == ActionState::Running {
            running.push(lsn);
        }
    }
    assert_eq!(running.len(), 2);

    // SIGTERM: the two finish there; the host exits 0 soon after, long before the 30 s grace.
    let sent = Instant::now();
    // SAFETY: kill(2) on the host process this test started.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGTERM) };
    let exit = loop {
        if let Some(status) = first.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(25),
            "the host did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained_in = sent.elapsed();
    assert!(exit.success(), "the host exits 0 after a drain: {exit:?}");
    for &lsn in &running {
        let view = queue.action(lsn).await.unwrap();
        assert_eq!(
            view.record.state(),
            ActionState::Completed,
            "a running action finished during the drain: {view:?}"
        );
        assert_eq!(view.record.attempt().get(), 1, "{view:?}");
        assert_eq!(
            view.record.location().map(|p| p.addr().clone()),
            Some(first_addr.clone()),
            "{view:?}"
        );
    }
    // Nothing else went to the draining host: the others wait, at their first attempt.
    for lsn in lsns.iter().filter(|l| !running.contains(l)) {
        let view = queue.action(*lsn).await.unwrap();
        assert_eq!(view.record.state(), ActionState::Pending, "{view:?}");
        assert_eq!(
            view.record.attempt().get(),
            1,
            "never placed, never retried: {view:?}"
        );
    }

    // The next host takes them.
    let (_second, _, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host-2"),
        &id,
        (1, 2),
        &["--isolation", "none"],
    );
    let status = queue
        .wait_complete(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(status.counts.completed, 6, "{status:?}");
    eprintln!(
        "drain test: 2 running actions finished and the host exited {drained_in:?} after SIGTERM"
    );
    client.close().await;
}
