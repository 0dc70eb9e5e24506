//! The same conformance suite over every transport: QUIC (mTLS, 127.0.0.1), Unix sockets and
//! in-process queues. Each test runs once per transport.

mod utils;

use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::RemoteError;
use procmesh_transport::SendFailure;
use utils::{eventually, pair, Kind, Recorder, TestMsg};

const T: Duration = Duration::from_secs(10);

async fn ask_and_tell(kind: Kind) {
    let (a, b, _dir) = pair(kind).await;
    let id = b
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let rec = a.remote_ref::<TestMsg>(id);
    assert_eq!(rec.ask(TestMsg::Ping(41), T).await.unwrap(), 42);
    rec.tell(TestMsg::Seq(0)).await.unwrap();
    assert_eq!(
        rec.ask(TestMsg::Count, T).await.unwrap(),
        1,
        "tell before ask arrives first"
    );
    // A handler error comes back as such, not as a hang.
    let err = rec.ask(TestMsg::Fail, T).await.unwrap_err();
    assert!(
        matches!(err, SendFailure::Remote(RemoteError::Handler(ref m)) if m.contains("asked to fail")),
        "{err}"
    );
    // Replies find their way back the other way too.
    let back = a
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    assert_eq!(
        b.remote_ref::<TestMsg>(back)
            .ask(TestMsg::Ping(1), T)
            .await
            .unwrap(),
        2
    );
}

async fn pipelined_tells_arrive_complete_and_in_order(kind: Kind) {
    let (a, b, _dir) = pair(kind).await;
    let id = b
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let rec = a.remote_ref::<TestMsg>(id);
    const N: u64 = 10_000;
    for i in 0..N {
        rec.tell(TestMsg::Seq(i)).await.unwrap();
    }
    let complete = eventually(Duration::from_secs(30), || async {
        rec.ask(TestMsg::Count, T).await.unwrap() == N
    })
    .await;
    assert!(
        complete,
        "got {} of {N}",
        rec.ask(TestMsg::Count, T).await.unwrap()
    );
    assert_eq!(rec.ask(TestMsg::OrderViolations, T).await.unwrap(), 0);
}

async fn unknown_actor_is_undeliverable(kind: Kind) {
    let (a, b, _dir) = pair(kind).await;
    b.expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let mut notices = a.undeliverable();
    let ghost = b.actor_id("ghost").unwrap();
    let r = a.remote_ref::<TestMsg>(ghost.clone());
    // An ask fails with Undeliverable naming the actor…
    let err = r.ask(TestMsg::Ping(1), T).await.unwrap_err();
    assert!(err.is_undeliverable(), "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");
    // …and a tell comes back as an Undeliverable notice.
    r.tell(TestMsg::Seq(0)).await.unwrap();
    let notice = tokio::time::timeout(T, notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.dest, ghost);
    assert!(
        notice.reason.contains("no actor named"),
        "{}",
        notice.reason
    );
    // An unknown proc on a known host is undeliverable as well.
    let other_proc = b.addr().proc("nope").unwrap().actor("rec").unwrap();
    let err = a
        .remote_ref::<TestMsg>(other_proc)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(
        err.is_undeliverable() && err.to_string().contains("no proc"),
        "{err}"
    );
}

async fn unreachable_peer_is_undeliverable(kind: Kind) {
    let (a, b, _dir) = pair(kind).await;
    let id = b
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    b.shutdown(Duration::from_millis(100)).await;
    drop(b);
    let err = a
        .remote_ref::<TestMsg>(id)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(
        err.is_undeliverable() || matches!(err, SendFailure::Timeout(_)),
        "{err}"
    );
}

// Attests LNK-3
async fn shutdown_flushes_what_was_sent(kind: Kind) {
    let (a, b, _dir) = pair(kind).await;
    let id = b
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let rec = a.remote_ref::<TestMsg>(id.clone());
    const N: u64 = 2_000;
    for i in 0..N {
        rec.tell(TestMsg::Seq(i)).await.unwrap();
    }
    // Close at once: everything already sent must still arrive.
    a.shutdown(Duration::from_secs(10)).await;
    let local = b.remote_ref::<TestMsg>(id);
    let complete = eventually(Duration::from_secs(10), || async {
        local.ask(TestMsg::Count, T).await.unwrap() == N
    })
    .await;
    assert!(
        complete,
        "got {} of {N}",
        local.ask(TestMsg::Count, T).await.unwrap()
    );
    assert_eq!(local.ask(TestMsg::OrderViolations, T).await.unwrap(), 0);
}

async fn local_actor_same_api(kind: Kind) {
    let (a, _b, _dir) = pair(kind).await;
    let id = a
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let rec = a.remote_ref::<TestMsg>(id);
    assert_eq!(rec.ask(TestMsg::Ping(9), T).await.unwrap(), 10);
    assert_eq!(rec.ask(TestMsg::IsLoopback, T).await.unwrap(), 1);
    let err = rec
        .ask(TestMsg::Sleep(2_000), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, SendFailure::Timeout(_)), "{err}");
}

macro_rules! conformance {
    ($($kind:ident),*) => {$(
        #[allow(non_snake_case)]
        mod $kind {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ask_tell() { ask_and_tell(Kind::$kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ordering_10k() { pipelined_tells_arrive_complete_and_in_order(Kind::$kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn undeliverable() { unknown_actor_is_undeliverable(Kind::$kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unreachable() { unreachable_peer_is_undeliverable(Kind::$kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local_same_api() { local_actor_same_api(Kind::$kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_flushes() { shutdown_flushes_what_was_sent(Kind::$kind).await }
        }
    )*};
}

conformance!(Quic, Unix, Local);
