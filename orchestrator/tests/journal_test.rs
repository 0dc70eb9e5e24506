//! The journal over a long run, through a real orchestrator on loopback QUIC: retired actions
//! leave the file, snapshots replace the log, and a restart continues ids and LSNs.

// Shared with orchestrator_test.rs, which uses the rest.
#[allow(unused_imports)]
mod utils;

use procmesh_orchestrator::Orchestrator;
use procmesh_protocol::messages::orchestrator::{OrchestratorReply, OrchestratorRequest, QueueRef};
use procmesh_protocol::Lsn;
use utils::{action, identity, orchestrator, worker, Client};

/// Cancels `queue` (its pending actions end `Cancelled`) and retires every result; how many.
async fn cancel_and_retire(client: &Client, queue: QueueRef) -> usize {
    let answer = client.ask(OrchestratorRequest::CancelQueue(queue)).await;
    assert!(
        matches!(answer, Ok(OrchestratorReply::Cancelled { .. })),
        "{answer:?}"
    );
    let mut retired = 0;
    loop {
        let page = match client
            .ask(OrchestratorRequest::ListResults {
                queue,
                after: None,
                limit: None,
            })
            .await
        {
            Ok(OrchestratorReply::Results(results)) => results,
            other => panic!("ListResults: {other:?}"),
        };
        if page.is_empty() {
            return retired;
        }
        let lsns: Vec<Lsn> = page.iter().map(|r| r.record.lsn()).collect();
        match client
            .ask(OrchestratorRequest::Retire { queue, lsns })
            .await
        {
            Ok(OrchestratorReply::Retired { count }) => retired += count as usize,
            other => panic!("Retire: {other:?}"),
        }
    }
}

// Attests ORC-31, JNL-3: 100,000 actions submitted and retired in rounds leave a small file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_retired_actions_keeps_the_journal_small() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 10_000;
    /// The stated bound. The live state peaks at one round (10,000 pending actions, ~5 MB
    /// encoded); the file holds the last snapshot, the log since (at most about one snapshot's
    /// size), and pages redb has freed but not yet handed back. Without snapshots the log alone
    /// would pass 60 MB by the end (~600 bytes journaled per action).
    const BOUND: u64 = 32 << 20;
    let id = identity();
    let (orch, dir) = orchestrator(&id.orchestrator, |c| c.snapshot_min_bytes = 1 << 20).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let w = client.register(&worker(&orch).await).await;
    let journal = dir.path().join("journal.redb");
    let mut largest = 0;
    let mut last_lsn = 0;
    for _ in 0..ROUNDS {
        let queue = client.queue(0).await;
        let lsns = client
            .submit(queue, (0..PER_ROUND).map(|_| action(w)).collect())
            .await
            .unwrap();
        last_lsn = lsns.last().unwrap().0;
        assert_eq!(cancel_and_retire(&client, queue).await, PER_ROUND);
        let now = std::fs::metadata(&journal).unwrap().len();
        eprintln!("after a round: journal {now} bytes");
        largest = largest.max(now);
    }
    orch.audit().await.unwrap();
    let size = std::fs::metadata(&journal).unwrap().len();
    eprintln!(
        "journal after {} actions: {size} bytes (largest {largest})",
        ROUNDS * PER_ROUND
    );
    assert!(
        largest < BOUND,
        "the journal grew to {largest} bytes (bound {BOUND})"
    );

    // A restart recovers an empty book and continues the counters (ids and LSNs are never
    // reused).
    let config = {
        let mut c = procmesh_orchestrator::OrchestratorConfig::ephemeral(dir.path());
        c.snapshot_min_bytes = 1 << 20;
        c
    };
    orch.shutdown().await;
    let again = Orchestrator::start(config, id.orchestrator.clone())
        .await
        .unwrap();
    assert_eq!(again.recovered().actions, 0);
    let client = Client::connect(&id.client, again.actor_id()).await;
    let answer = client
        .ask(OrchestratorRequest::CreateQueue(Default::default()))
        .await;
    match answer {
        Ok(OrchestratorReply::QueueCreated { id, .. }) => {
            assert_eq!(id, ROUNDS as u64 + 1, "queue ids continue after a restart")
        }
        other => panic!("CreateQueue: {other:?}"),
    }
    let queue = client.queue(0).await;
    let lsns = client.submit(queue, vec![action(w)]).await.unwrap();
    assert_eq!(lsns[0].0, last_lsn + 1, "LSNs continue after a restart");
    again.shutdown().await;
}
