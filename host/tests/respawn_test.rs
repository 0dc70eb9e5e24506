//! Proc respawn (HST-14): a proc that exits unasked comes back under its name and is counted in
//! the heartbeats; one stopped on purpose stays down.

mod utils;

use std::time::{Duration, Instant};

use procmesh_protocol::messages::{
    AgentReply, AgentRequest, HostError, OrchestratorRequest, ProcConfig, ProcStatus, SpawnSpec,
};
use procmesh_protocol::ExitStatus;
use procmesh_transport::Role;
use utils::{eventually, identity, orchestrator, test_host, test_host_in, T};

fn spec(name: &str) -> SpawnSpec {
    SpawnSpec {
        name: name.to_owned(),
        // One slot: a spawn naming none takes every slot left (HST-25).
        config: ProcConfig {
            max_actions: Some(1),
            ..ProcConfig::default()
        },
    }
}

// Attests HST-14, HST-7
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_proc_is_respawned_reported_lost_and_counted() {
    let (ca, id) = identity();
    let mut orch = orchestrator(&utils::issue(&ca, Role::Orchestrator), 50).await;
    let actor = orch.id.clone();
    let t = test_host_in(&ca, id, Duration::from_millis(10), |c| {
        c.orchestrator = Some(actor);
    })
    .await;
    let w1 = t.host.spawn(spec("w1")).await.unwrap();
    let first_agent = w1.ready().await.unwrap().agent;
    assert_eq!(t.host.restarts("w1"), 0);

    let crashed = Instant::now();
    t.tracker.crash("w1", 3);
    assert_eq!(w1.wait().await, ExitStatus::Code(3));
    // HST-7 still: the orchestrator hears it was lost.
    let lost = orch
        .next(|e| match e {
            OrchestratorRequest::ProcLost { proc_id, .. } => Some(proc_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(lost, *w1.proc_id());

    // HST-14: back under the same name after the first backoff, and serving.
    assert!(
        eventually(T, || async { t.host.restarts("w1") == 1 }).await,
        "not respawned"
    );
    eprintln!("respawned after {:?}", crashed.elapsed());
    let again = t.host.proc("w1").await.unwrap();
    assert_eq!(again.state().status, ProcStatus::Ready);
    assert_eq!(again.proc_id(), w1.proc_id());
    let agent = again.ready().await.unwrap().agent;
    assert_eq!(agent, first_agent, "same proc id, same agent name");
    let status = t
        .host
        .local_proc()
        .await
        .unwrap()
        .remote_ref::<AgentRequest>(agent.clone())
        .ask(AgentRequest::Status, T)
        .await
        .unwrap();
    assert!(matches!(status, Ok(AgentReply::Status(_))), "{status:?}");

    // The heartbeats say how often.
    let restarts = orch
        .next(|e| match e {
            OrchestratorRequest::Heartbeat(hb) => hb
                .procs
                .iter()
                .find(|p| p.agent == agent && p.restarts == 1)
                .map(|p| p.restarts),
            _ => None,
        })
        .await;
    assert_eq!(restarts, 1);

    // A second crash soon after: respawned again, after a longer backoff.
    t.tracker.crash("w1", 4);
    assert_eq!(again.wait().await, ExitStatus::Code(4));
    assert!(eventually(T, || async { t.host.restarts("w1") == 2 }).await);

    // Stopped on purpose, it stays down.
    let third = t.host.proc("w1").await.unwrap();
    assert_eq!(third.terminate(T, "asked").await, Ok(ExitStatus::Code(0)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        t.host.proc("w1").await,
        Err(HostError::UnknownProc(_))
    ));
    assert_eq!(t.host.restarts("w1"), 0, "its record is gone");
}

// Attests HST-14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_terminated_or_unwanted_procs_are_not_respawned() {
    let t = test_host(|_| {}).await;
    let a = t.host.spawn(spec("a")).await.unwrap();
    let b = t.host.spawn(spec("b")).await.unwrap();
    a.kill().await.unwrap();
    b.terminate(T, "asked").await.unwrap();

    let off = test_host(|c| c.respawn = false).await;
    let c = off.host.spawn(spec("c")).await.unwrap();
    off.tracker.crash("c", 9);
    assert_eq!(c.wait().await, ExitStatus::Code(9));

    // Several times the first backoff (200 ms): nothing came back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (host, name) in [(&t.host, "a"), (&t.host, "b"), (&off.host, "c")] {
        assert!(
            matches!(host.proc(name).await, Err(HostError::UnknownProc(_))),
            "{name} came back"
        );
        assert_eq!(host.restarts(name), 0);
    }
}
