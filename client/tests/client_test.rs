//! The client against a real orchestrator on 127.0.0.1 over QUIC with mTLS, in-process. No
//! hosts: actions stay pending, which is enough for queues, workers, blobs, priorities,
//! cancellation, events and errors. Every wait is bounded.

use std::time::Duration;

use procmesh_client::{Client, ClientConfig, ClientError, EventFilter, WorkerBuilder};
use procmesh_orchestrator::{Orchestrator, OrchestratorConfig};
use procmesh_protocol::messages::orchestrator::{
    QueueConfig, QueueRef, SubmitAction, SubscriptionTarget,
};
use procmesh_protocol::{ActionDef, ActionState, BlobHash, ClientEvent, Lsn, WorkerId};
use procmesh_transport::{MeshCa, Role};

/// The bound of every wait.
const T: Duration = Duration::from_secs(20);

struct Mesh {
    orchestrator: Orchestrator,
    client: Client,
    ca: MeshCa,
    _dirs: Vec<tempfile::TempDir>,
}

async fn mesh() -> Mesh {
    procmesh_transport::install_crypto_provider();
    let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
    let node = ca
        .issue(
            Role::Orchestrator,
            "orchestrator",
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start(OrchestratorConfig::ephemeral(state.path()), node)
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let identity = ca
        .issue(Role::Client, "client", &[], Duration::from_secs(3600))
        .unwrap();
    let mut config = ClientConfig::new(orchestrator.actor_id(), identity);
    config.cache_dir = Some(cache.path().to_owned());
    config.timeout = T;
    let client = Client::connect(config).await.unwrap();
    Mesh {
        orchestrator,
        client,
        ca,
        _dirs: vec![state, cache],
    }
}

fn action(worker: WorkerId, arg: &str) -> SubmitAction {
    let mut action = ActionDef::new(worker);
    action.args.push(arg.to_owned());
    SubmitAction {
        action,
        priority: None,
        idempotency_key: None,
    }
}

fn stored(mesh: &Mesh, hash: &BlobHash) -> bool {
    mesh.orchestrator
        .node()
        .blob_store()
        .unwrap()
        .contains(hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_workers_and_actions() {
    let mesh = mesh().await;
    let client = &mesh.client;
    assert!(client.hosts().await.unwrap().is_empty());

    // Workers: blobs are uploaded, registering again is harmless.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, b"some data").unwrap();
    let builder = WorkerBuilder::new()
        .bytes("run.sh", b"#!/bin/sh\ncat share/data.txt\n".to_vec(), true)
        .file(&data, "share/data.txt")
        .executable("run.sh");
    let worker = client.register_worker(&builder).await.unwrap();
    assert_eq!(worker, builder.prepare().await.unwrap().id());
    assert!(stored(&mesh, &BlobHash::of(b"some data")));
    assert_eq!(client.register_worker(&builder).await.unwrap(), worker);

    // Inputs: uploaded once, described in order.
    let input = dir.path().join("input.bin");
    std::fs::write(&input, b"input bytes").unwrap();
    let inputs = client
        .upload_inputs(&[("in/a".to_owned(), &input), ("in/b".to_owned(), &input)])
        .await
        .unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[1].path, "in/b");
    assert!(stored(&mesh, &BlobHash::of(b"input bytes")));

    // A queue, by token; and the same queue by id (we are on loopback).
    let queue = client
        .create_queue(QueueConfig {
            name: "t".into(),
            ..QueueConfig::default()
        })
        .await
        .unwrap();
    let id = queue.id().unwrap();
    assert!(matches!(queue.queue_ref(), QueueRef::Token(_)));
    let by_id = client.queue(QueueRef::Id(id)).await.unwrap();
    assert_eq!(by_id.status().await.unwrap().name, "t");

    // Subscribe first, then submit: the transitions arrive. A filtered watch beside it is
    // told only the final ones.
    let mut watch = queue.watch().await.unwrap();
    let mut finals = client
        .subscribe_filtered(
            SubscriptionTarget::Queue(queue.queue_ref()),
            None,
            EventFilter::Finals,
        )
        .await
        .unwrap();
    let mut first = action(worker, "1");
    first.action.inputs = inputs;
    let lsns = queue
        .submit(vec![first, action(worker, "2")])
        .await
        .unwrap();
    assert_eq!(lsns.len(), 2);
    assert!(lsns[0] < lsns[1]);
    let status = queue.status().await.unwrap();
    assert_eq!(status.counts.total(), 2);
    assert!(!status.is_complete);

    let view = queue.action(lsns[0]).await.unwrap();
    assert_eq!(view.record.lsn(), lsns[0]);
    queue.set_priority(lsns[1], 10).await.unwrap();
    assert_eq!(queue.action(lsns[1]).await.unwrap().priority, 10);

    // Cancel one, then the queue; the queue completes.
    assert_eq!(queue.cancel_action(lsns[0]).await.unwrap(), 1);
    let cancelled = tokio::time::timeout(T, async {
        while let Some(event) = watch.next().await {
            if let ClientEvent::Transition { transition, .. } = event {
                if transition.lsn == lsns[0] && transition.state == ActionState::Cancelled {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(cancelled, "no Cancelled event");
    queue.cancel().await.unwrap();
    let done = queue.wait_complete(Some(T)).await.unwrap();
    assert!(done.is_complete);
    assert_eq!(done.counts.cancelled, 2);
    watch.close().await.unwrap();
    let told = tokio::time::timeout(T, async {
        let mut told = Vec::new();
        while let Some(event) = finals.next().await {
            match event {
                ClientEvent::Transition { transition, .. } => told.push(transition.state),
                ClientEvent::Batch { events, .. } => {
                    told.extend(events.iter().filter_map(|e| match e {
                        ClientEvent::Transition { transition, .. } => Some(transition.state),
                        _ => None,
                    }))
                }
                ClientEvent::QueueComplete { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        told
    })
    .await
    .unwrap();
    assert_eq!(told, [ActionState::Cancelled, ActionState::Cancelled]);
    finals.close().await.unwrap();

    // Results of cancelled actions can be read and retired.
    let results = queue.all_results().await.unwrap();
    assert_eq!(results.len(), 2);
    assert!(queue.result(lsns[1]).await.unwrap().is_some());
    assert_eq!(queue.retire(lsns.clone()).await.unwrap(), 2);
    assert!(queue.result(lsns[1]).await.unwrap().is_none());

    mesh.client.close().await;
    mesh.orchestrator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_their_codes() {
    let mesh = mesh().await;
    let client = &mesh.client;

    let wrong = QueueRef::Token("00112233445566778899aabb".parse().unwrap());
    let err = client.queue(wrong).await.unwrap_err();
    assert_eq!(err.code(), "unknown_queue", "{err}");
    assert!(err.orchestrator_error().is_some());

    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let unknown = WorkerId::from_bytes([7; 32]);
    let err = queue.submit(vec![action(unknown, "x")]).await.unwrap_err();
    assert_eq!(err.code(), "unknown_worker", "{err}");
    let err = queue.action(Lsn(999_999)).await.unwrap_err();
    assert_eq!(err.code(), "unknown_action", "{err}");

    let worker = client
        .register_worker(&WorkerBuilder::new().bytes("run", b"#!/bin/sh\n".to_vec(), true))
        .await
        .unwrap();
    // An input whose blob was never uploaded refuses the whole batch.
    let mut missing = action(worker, "x");
    missing.action.inputs.push(procmesh_protocol::InputFile {
        path: "in/x".into(),
        hash: BlobHash::of(b"never uploaded"),
        size: 14,
    });
    let err = queue
        .submit(vec![action(worker, "ok"), missing])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "missing_blobs", "{err}");
    assert_eq!(queue.status().await.unwrap().counts.total(), 0);

    queue.drain().await.unwrap();
    let err = queue
        .submit(vec![action(worker, "late")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "queue_draining", "{err}");

    // Rescheduling a pending action is refused.
    let open = client.create_queue(QueueConfig::default()).await.unwrap();
    let lsn = open.submit(vec![action(worker, "p")]).await.unwrap()[0];
    let err = open.reschedule(lsn).await.unwrap_err();
    assert_eq!(err.code(), "not_retryable", "{err}");

    // Nobody listens here: connecting fails, clearly.
    let dead = tempfile::tempdir().unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    drop(socket);
    let orchestrator = format!("quic!127.0.0.1:{port},service.orchestrator")
        .parse()
        .unwrap();
    let identity = mesh
        .ca
        .issue(Role::Client, "c2", &[], Duration::from_secs(60))
        .unwrap();
    let mut config = ClientConfig::new(orchestrator, identity);
    config.cache_dir = Some(dead.path().to_owned());
    config.timeout = Duration::from_secs(2);
    let err: ClientError = Client::connect(config).await.unwrap_err();
    assert_eq!(err.code(), "unreachable", "{err}");

    mesh.client.close().await;
    mesh.orchestrator.shutdown().await;
}
