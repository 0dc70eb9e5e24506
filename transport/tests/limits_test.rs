//! Limits against abuse at the transport (NODE-10), with real QUIC peers on 127.0.0.1:
//! connections in all and per certificate, pending asks, the handshake timeout, streams per
//! connection; and the refusal of a peer of another major version (STR-4).

mod utils;

use std::time::Duration;

use procmesh_protocol::codec::{FrameCodec, Hello, MAGIC};
use procmesh_protocol::HostAddr;
use procmesh_transport::{NodeConfig, Role};
use utils::raw::{
    ca, connected, counted, host, issue, quic_node, raw_connect, raw_endpoint, raw_link, refused,
    serving, tell, T,
};
use utils::{eventually, TestMsg};

// Attests NODE-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_identity_limit_are_refused_while_others_are_served() {
    let ca = ca();
    let mut config = NodeConfig::default();
    config.limits.max_connections_per_identity = 8;
    let (node, rec) = serving(host(&ca, "b").config(config)).await;
    let flood_id = issue(&ca, Role::Client, "flood");
    let to = node.quic_addr().unwrap();
    // One endpoint (source port) per connection: a newer connection from the same address
    // would replace the older one (QUIC-4). In waves, so the Initial packets fit the buffers.
    let mut conns: Vec<(quinn::Endpoint, quinn::Connection)> = Vec::new();
    for _ in 0..10 {
        let wave = futures_join((0..30).map(|_| {
            let endpoint = raw_endpoint(&flood_id);
            async move { raw_connect(&endpoint, to).await.map(|c| (endpoint, c)) }
        }))
        .await;
        conns.extend(wave.into_iter().flatten());
    }
    assert!(
        eventually(T, || async {
            refused(&node, "too_many_per_identity") == 300 - 8
        })
        .await,
        "{:?}",
        node.refusals()
    );
    let open = conns
        .iter()
        .filter(|(_, c)| c.close_reason().is_none())
        .count();
    assert!(open <= 8, "{open} connections stayed open");
    // Another identity is still served.
    let other = quic_node("o", issue(&ca, Role::Client, "other")).await;
    assert_eq!(
        other
            .remote_ref::<TestMsg>(rec)
            .ask(TestMsg::Ping(1), T)
            .await
            .unwrap(),
        2
    );
    drop(conns);
}

/// Runs futures concurrently.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// Attests NODE-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_ask_limits_hold() {
    let ca = ca();
    let mut config = NodeConfig::default();
    config.limits.max_connections = 2;
    config.limits.max_pending_asks_per_connection = 2;
    let (node, rec) = serving(host(&ca, "b").config(config)).await;
    let a = quic_node("a", issue(&ca, Role::Host, "a")).await;
    let remote = a.remote_ref::<TestMsg>(rec.clone());
    let asks = futures_join((0..5).map(|_| {
        let remote = remote.clone();
        async move { remote.ask(TestMsg::Sleep(300), T).await }
    }))
    .await;
    let refused_asks = asks
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.to_string().contains("too many pending asks"))
        })
        .count();
    assert_eq!(refused_asks, 3, "{asks:?}");
    assert_eq!(refused(&node, "too_many_asks"), 3);

    // Two connections at once at most: a third identity is refused before TLS.
    let b = quic_node("c", issue(&ca, Role::Host, "c")).await;
    b.remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap();
    let c = quic_node("d", issue(&ca, Role::Host, "d")).await;
    assert!(c
        .remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), T)
        .await
        .is_err());
    assert!(refused(&node, "too_many_connections") >= 1);
    // The first two are still served.
    assert_eq!(remote.ask(TestMsg::Ping(1), T).await.unwrap(), 2);
}

// Attests NODE-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_finishes_its_hello_is_refused_after_the_handshake_timeout() {
    let ca = ca();
    let within = Duration::from_millis(500);
    let config = NodeConfig {
        handshake_timeout: within,
        ..NodeConfig::default()
    };
    let (node, rec) = serving(host(&ca, "b").config(config)).await;
    // The TLS handshake completes; then streams stop partway: in the magic, after it, halfway
    // through the hello.
    let (_endpoint, conn) = connected(&issue(&ca, Role::Host, "mute"), &node).await;
    let mut hello = Vec::new();
    FrameCodec::default()
        .encode_handshake(
            &Hello::new("quic!127.0.0.1:5".parse().unwrap(), "mute"),
            &mut hello,
        )
        .unwrap();
    let started = tokio::time::Instant::now();
    // Another peer's connection finishes TLS and opens no stream at all.
    let (_silent_ep, silent) = connected(&issue(&ca, Role::Host, "silent"), &node).await;
    let mut stalled = Vec::new();
    // Half the magic, the magic alone, half a hello.
    for part in [&MAGIC[..2], &MAGIC[..], &hello[..hello.len() / 2]] {
        let (mut send, recv) = tokio::time::timeout(T, conn.open_bi())
            .await
            .unwrap()
            .unwrap();
        send.write_all(part).await.unwrap();
        stalled.push((send, recv));
    }
    // Meanwhile another peer is served.
    let other = quic_node("o", issue(&ca, Role::Client, "other")).await;
    let remote = other.remote_ref::<TestMsg>(rec);
    assert_eq!(remote.ask(TestMsg::Ping(1), T).await.unwrap(), 2);

    // Each stalled stream is ended by the node, unanswered, once the timeout has passed (and
    // well before the default timeout of 10 s).
    for (_, recv) in &mut stalled {
        let end = tokio::time::timeout_at(started + 10 * within, recv.read_to_end(1 << 16))
            .await
            .expect("the node kept a stalled handshake open");
        assert!(
            end.as_ref().map_or(true, Vec::is_empty),
            "a stalled handshake was answered: {end:?}"
        );
    }
    // The silent connection is closed too.
    tokio::time::timeout_at(started + 10 * within, silent.closed())
        .await
        .expect("the node kept a connection that opened no stream");
    assert!(
        started.elapsed() >= within,
        "refused before the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(refused(&node, "handshake"), 4, "{:?}", node.refusals());
    // The node keeps serving.
    assert_eq!(remote.ask(TestMsg::Ping(2), T).await.unwrap(), 3);
}

// Attests NODE-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_at_most_max_bidi_streams_open_at_once() {
    let ca = ca();
    let mut config = NodeConfig::default();
    config.quic.max_bidi_streams = 4;
    // Long enough that the held streams' begun handshakes stay open through the test.
    config.handshake_timeout = Duration::from_secs(60);
    let (node, rec) = serving(host(&ca, "b").config(config)).await;
    let (_endpoint, conn) = connected(&issue(&ca, Role::Host, "greedy"), &node).await;
    // Four streams, each a handshake begun and never finished: the node holds them open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (mut send, recv) = tokio::time::timeout(T, conn.open_bi())
            .await
            .expect("a stream within the limit")
            .unwrap();
        send.write_all(&MAGIC).await.unwrap();
        held.push((send, recv));
    }
    // A fifth (a whole link) does not open while four are.
    let claimed: HostAddr = "quic!127.0.0.1:6".parse().unwrap();
    let mut fifth = tokio::spawn({
        let conn = conn.clone();
        let hello = Hello::new(claimed.clone(), "greedy");
        async move { raw_link(&conn, &hello, 1).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut fifth)
            .await
            .is_err(),
        "a fifth stream opened while four were open"
    );
    assert_eq!(refused(&node, "handshake"), 0);

    // One of the four ends (its handshake refused): the fifth opens and its link is served.
    let (mut send, _recv) = held.remove(0);
    send.finish().unwrap();
    let mut link = tokio::time::timeout(T, fifth)
        .await
        .expect("the fifth stream did not open once one was closed")
        .unwrap();
    assert_eq!(link.answer.refused, None);
    assert_eq!(refused(&node, "handshake"), 1);
    let me = claimed.proc("greedy").unwrap().actor("x").unwrap();
    link.send(&tell(&rec, &me, &TestMsg::Seq(0))).await;
    assert!(counted(&node, &rec, 1).await);
    // Four are open again: a sixth waits as well.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), conn.open_bi())
            .await
            .is_err(),
        "a sixth stream opened while four were open"
    );
}

// Attests STR-4, WIRE-4
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_major_is_told_both_versions() {
    let ca = ca();
    let node = quic_node("b", issue(&ca, Role::Host, "b")).await;
    let (_endpoint, conn) = connected(&issue(&ca, Role::Host, "future"), &node).await;
    let hello = Hello::new("quic!127.0.0.1:4".parse().unwrap(), "future");
    let link = raw_link(&conn, &hello, 2).await;
    let reason = link.answer.refused.expect("a refusal");
    assert!(
        reason.contains("the peer speaks 2.0") && reason.contains("we speak 1.0"),
        "{reason}"
    );
    assert_eq!(refused(&node, "version"), 1);
}
