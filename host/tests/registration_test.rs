//! Registration, heartbeats and lost procs, against a test orchestrator actor on a node of its
//! own that records what it receives.

mod utils;

use std::sync::atomic::Ordering;
use std::time::Duration;

use procmesh_protocol::messages::{Capacity, OrchestratorRequest, ProcConfig, SpawnSpec};
use procmesh_protocol::ExitStatus;
use procmesh_transport::Role;
use utils::{identity, orchestrator, test_host_in, T};

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

// Attests HST-11, HST-7
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_registers_heartbeats_registers_again_and_reports_lost_procs() {
    let (ca, id) = identity();
    let mut orch = orchestrator(&utils::issue(&ca, Role::Orchestrator), 50).await;
    let actor = orch.id.clone();
    let t = test_host_in(&ca, id, Duration::from_millis(10), |c| {
        c.orchestrator = Some(actor);
        c.labels.insert("zone".into(), "test".into());
        c.capacity = Some(6);
        // The orchestrator's 50 ms wins over this.
        c.heartbeat_interval_ms = 60_000;
    })
    .await;

    let info = orch
        .next(|e| match e {
            OrchestratorRequest::RegisterHost(info) => Some(info.clone()),
            OrchestratorRequest::Heartbeat(_) => panic!("HST-11: a heartbeat before registering"),
            _ => None,
        })
        .await;
    assert_eq!(info.addr, *t.host.addr());
    assert_eq!(info.capacity, 6);
    assert_eq!(info.labels["zone"], "test");
    assert!(info.system.cores >= 1);
    assert!(info.system.memory_bytes > 0);
    assert!(info.system.os.starts_with("linux"), "{}", info.system.os);
    assert!(!info.version.is_empty());
    assert_eq!(info, t.host.info());

    // Heartbeats carry each ready proc's agent and capacity.
    let w1 = t.host.spawn(spec("w1")).await.unwrap();
    let agent = w1.ready().await.unwrap().agent;
    let hb = orch
        .next(|e| match e {
            OrchestratorRequest::Heartbeat(hb) if !hb.procs.is_empty() => Some(hb.clone()),
            _ => None,
        })
        .await;
    assert_eq!(hb.addr, *t.host.addr());
    assert_eq!(hb.procs.len(), 1);
    assert_eq!(hb.procs[0].agent, agent);
    assert_eq!(hb.procs[0].capacity, Capacity { max: 4, free: 3 });
    assert_eq!(hb.free(), 3);
    assert!(hb.running.is_empty());

    // HST-11: an orchestrator that forgot us gets a registration again, then heartbeats.
    orch.forget.store(true, Ordering::SeqCst);
    orch.next_event(|e| e.refused.then_some(())).await;
    orch.next(|e| match e {
        OrchestratorRequest::RegisterHost(_) => Some(()),
        OrchestratorRequest::Heartbeat(_) => panic!("heartbeat instead of registering again"),
        _ => None,
    })
    .await;
    orch.next(|e| matches!(e, OrchestratorRequest::Heartbeat(_)).then_some(()))
        .await;

    // HST-7: a terminated proc is not lost; a crashed one is.
    let w2 = t.host.spawn(spec("w2")).await.unwrap();
    assert_eq!(w2.terminate(T, "asked").await, Ok(ExitStatus::Code(0)));
    t.tracker.crash("w1", 3);
    assert_eq!(w1.wait().await, ExitStatus::Code(3));
    let (proc_id, status, reason) = orch
        .next(|e| match e {
            OrchestratorRequest::ProcLost {
                proc_id,
                status,
                reason,
            } => Some((proc_id.clone(), *status, reason.clone())),
            _ => None,
        })
        .await;
    assert_eq!(proc_id, *w1.proc_id(), "w2 was asked to stop: not lost");
    assert_eq!(status, Some(ExitStatus::Code(3)));
    assert!(reason.contains("without being asked"), "{reason}");

    // Heartbeats carry the running attempts; the ones the orchestrator calls orphans are
    // cancelled on the proc that runs them.
    let busy = t.host.spawn(spec("busy-1")).await.unwrap();
    let hb = orch
        .next(|e| match e {
            OrchestratorRequest::Heartbeat(hb) if !hb.running.is_empty() => Some(hb.clone()),
            _ => None,
        })
        .await;
    assert_eq!(hb.running, vec![utils::busy_attempt()]);
    orch.orphans.lock().unwrap().push(utils::busy_attempt());
    let cancelled = || t.tracker.cancelled.lock().unwrap().clone();
    assert!(
        utils::eventually(T, || async { !cancelled().is_empty() }).await,
        "the orphan was cancelled"
    );
    assert_eq!(cancelled()[0], utils::busy_attempt());
    assert_eq!(
        busy.status(),
        procmesh_protocol::messages::ProcStatus::Ready
    );

    // After shutdown, nothing more is sent.
    t.host.shutdown(T).await;
    while orch.events.try_recv().is_ok() {}
    orch.node.shutdown(Duration::ZERO).await;
}
