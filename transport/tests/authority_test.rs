//! Identity and authority at the transport, with real QUIC peers on 127.0.0.1: certificate
//! identities, sender and relay checks, address binding, admission, dial policy, revocation
//! and blob policy. The limits are in `limits_test`.

mod utils;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::cas::{BlobHash, DownloadTicket};
use procmesh_protocol::codec::Hello;
use procmesh_protocol::{Envelope, HostAddr};
use procmesh_transport::{
    node_proof, proc_proof, verify_node_proof, Admission, BlobError, BlobPeer, BlobPolicy,
    BlobRequest, BlobStore, DialPolicy, LocalHub, MeshCa, NodeBuilder, PeerIdentity, PeerInfo,
    Revocations, Role, TlsIdentity,
};
use utils::raw::{
    ca, connected, counted, host, issue, quic_node, raw_connect, raw_endpoint, raw_link, refused,
    serving, tell, T,
};
use utils::{eventually, loopback, Recorder, TestMsg};

/// An identity signed by the mesh CA with exactly the SANs given (URIs start `spiffe://`).
fn custom_identity(ca: &MeshCa, dns: &[&str], uris: &[&str]) -> TlsIdentity {
    let key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    for uri in uris {
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(*uri).unwrap(),
        ));
    }
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    TlsIdentity {
        ca_cert_pem: ca.cert_pem().to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Records every admitted peer; refuses the roles listed.
#[derive(Default)]
struct Capture {
    seen: Mutex<Vec<PeerInfo>>,
    refuse: Vec<Role>,
    refuse_relay: bool,
}

impl Admission for Capture {
    fn admit(&self, peer: &PeerInfo) -> Result<(), String> {
        self.seen.lock().unwrap().push(peer.clone());
        match peer.role() {
            Some(role) if self.refuse.contains(&role) => Err(format!("no {role}s here")),
            _ => Ok(()),
        }
    }

    fn relay(&self, _peer: &PeerInfo, proc: &str, _env: &Envelope) -> Result<(), String> {
        if self.refuse_relay {
            Err(format!("nobody reaches {proc}"))
        } else {
            Ok(())
        }
    }
}

// Attests TLS-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_server_must_be_a_node_and_every_peer_needs_one_identity() {
    let ca = ca();
    // A certificate naming the node server name but the client role: a dialler refuses it.
    let fake = custom_identity(&ca, &["node.procmesh"], &["spiffe://test/client/evil"]);
    let (server, rec) = serving(NodeBuilder::new("s").quic(loopback(), fake)).await;
    let dialler = quic_node("d", issue(&ca, Role::Host, "d")).await;
    let err = dialler
        .remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not an orchestrator or a host"),
        "{err}"
    );
    assert_eq!(refused(&dialler, "bad_identity"), 1);

    // A server holding a host certificate: its identity reaches the handler as `Host`.
    let (good, good_rec) = serving(host(&ca, "g")).await;
    let client = quic_node("c", issue(&ca, Role::Client, "c")).await;
    let role = client
        .remote_ref::<TestMsg>(good_rec.clone())
        .ask(TestMsg::PeerRole, T)
        .await
        .unwrap();
    assert_eq!(role, 3, "the server sees a client");

    // A peer whose certificate has no identity URI, or two, is refused at the connection.
    for uris in [
        &[][..],
        &["spiffe://test/host/a", "spiffe://test/host/b"][..],
    ] {
        let bad = custom_identity(&ca, &["node.procmesh"], uris);
        let endpoint = raw_endpoint(&bad);
        if let Some(conn) = raw_connect(&endpoint, good.quic_addr().unwrap()).await {
            let _ = tokio::time::timeout(T, conn.closed()).await;
            assert!(conn.close_reason().is_some());
        }
    }
    assert!(
        eventually(T, || async { refused(&good, "bad_identity") == 2 }).await,
        "{:?}",
        good.refusals()
    );
    // A certificate of another mesh's name, signed by our CA, is refused too.
    let other = custom_identity(&ca, &["node.procmesh"], &["spiffe://elsewhere/host/x"]);
    let endpoint = raw_endpoint(&other);
    if let Some(conn) = raw_connect(&endpoint, good.quic_addr().unwrap()).await {
        let _ = tokio::time::timeout(T, conn.closed()).await;
    }
    assert!(eventually(T, || async { refused(&good, "bad_identity") == 3 }).await);
    drop(server);
}

// Attests NODE-5, NODE-11
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sender_is_dropped_not_bounced() {
    let ca = ca();
    let (node, rec) = serving(host(&ca, "b")).await;
    let (_endpoint, conn) = connected(&issue(&ca, Role::Host, "intruder"), &node).await;
    let mine: HostAddr = "quic!127.0.0.1:1".parse().unwrap();
    let mut link = raw_link(&conn, &Hello::new(mine.clone(), "intruder"), 1).await;
    assert_eq!(link.answer.refused, None);
    // As an actor of the node itself, and of a third address: both dropped.
    for forged in [
        node.actor_id("rec").unwrap(),
        "quic!10.9.9.9:7,x.y".parse().unwrap(),
    ] {
        link.send(&tell(&rec, &forged, &TestMsg::Seq(0))).await;
    }
    // Then one honest message: once it is counted, the forged ones were routed before it.
    let me = mine.proc("intruder").unwrap().actor("x").unwrap();
    link.send(&tell(&rec, &me, &TestMsg::Seq(0))).await;
    assert!(counted(&node, &rec, 1).await);
    assert_eq!(refused(&node, "sender_mismatch"), 2);
}

// Attests NODE-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_not_an_open_relay() {
    let ca = ca();
    let (node, rec) = serving(host(&ca, "b")).await;
    let (third, third_rec) = serving(host(&ca, "c")).await;
    let (_endpoint, conn) = connected(&issue(&ca, Role::Client, "cl"), &node).await;
    let mine: HostAddr = "quic!127.0.0.1:2".parse().unwrap();
    let me = mine.proc("cl").unwrap().actor("x").unwrap();
    let mut link = raw_link(&conn, &Hello::new(mine.clone(), "cl"), 1).await;
    link.send(&tell(&third_rec, &me, &TestMsg::Seq(0))).await;
    link.send(&tell(&rec, &me, &TestMsg::Seq(0))).await;
    assert!(counted(&node, &rec, 1).await);
    assert_eq!(refused(&node, "relay"), 1);
    let far = third.remote_ref::<TestMsg>(third_rec);
    assert_eq!(far.ask(TestMsg::Count, T).await.unwrap(), 0);
}

// Attests NODE-6 (the relay hook)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_hook_decides_who_reaches_a_proc() {
    let hub = LocalHub::new();
    let host = NodeBuilder::new("host")
        .local(&hub, "h")
        .start()
        .await
        .unwrap();
    let capture = Arc::new(Capture {
        refuse_relay: true,
        ..Capture::default()
    });
    host.set_admission(capture.clone());
    let proc_node = NodeBuilder::new("p")
        .local(&hub, "p")
        .addr(host.addr().clone())
        .default_route(HostAddr::Local("h".into()))
        .node_claim("p", Some([9; 32]))
        .start()
        .await
        .unwrap();
    let rec = proc_node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let host_rec = host
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    // The proc registers itself by sending to its host.
    proc_node
        .remote_ref::<TestMsg>(host_rec.clone())
        .ask(TestMsg::Ping(0), T)
        .await
        .unwrap();
    assert_eq!(host.proc_routes(), vec!["p".to_owned()]);
    // NODE-8 on a backend link: the proc's claim carries its bootstrap proof.
    let proc_peer = capture
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.hello.name == "p")
        .cloned()
        .unwrap();
    assert!(verify_node_proof(&proc_peer, &[9; 32]));
    assert!(!verify_node_proof(&proc_peer, &[8; 32]));
    assert_eq!(
        proc_peer
            .hello
            .node
            .as_ref()
            .unwrap()
            .proof
            .unwrap()
            .as_bytes(),
        &proc_proof(&[9; 32])
    );

    let client = NodeBuilder::new("c")
        .local(&hub, "c")
        .start()
        .await
        .unwrap();
    let err = client
        .remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no reply"), "{err}");
    assert_eq!(refused(&host, "relay"), 1);
    // Our own proc is never relayed into by the host's own sends (from = None).
    let direct = host.remote_ref::<TestMsg>(rec.clone());
    assert_eq!(direct.ask(TestMsg::Ping(1), T).await.unwrap(), 2);
}

// Attests NODE-7, NODE-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_address_stays_with_its_first_identity() {
    let ca = ca();
    let (node, rec) = serving(host(&ca, "b")).await;
    let claimed: HostAddr = "quic!127.0.0.1:3".parse().unwrap();
    let me = claimed.proc("h").unwrap().actor("x").unwrap();
    let (_first_ep, first) = connected(&issue(&ca, Role::Host, "h1"), &node).await;
    let mut one = raw_link(&first, &Hello::new(claimed.clone(), "h"), 1).await;
    assert_eq!(one.answer.refused, None);
    one.send(&tell(&rec, &me, &TestMsg::Seq(0))).await;
    assert!(counted(&node, &rec, 1).await);

    let (_second_ep, second) = connected(&issue(&ca, Role::Host, "h2"), &node).await;
    let two = raw_link(&second, &Hello::new(claimed.clone(), "h"), 1).await;
    let reason = two.answer.refused.clone().expect("refused");
    assert!(reason.contains("bound to another identity"), "{reason}");
    assert_eq!(refused(&node, "address_bound"), 1);

    // The first keeps working, and the route to the address is still its link.
    one.send(&tell(&rec, &me, &TestMsg::Seq(1))).await;
    assert!(counted(&node, &rec, 2).await);
    node.remote_ref::<TestMsg>(me.clone())
        .tell(TestMsg::Seq(7))
        .await
        .unwrap();
    let env = one.next().await;
    assert_eq!(env.dest, me);

    // A QUIC peer claiming the node's own address is refused (NODE-3).
    let third = raw_link(&first, &Hello::new(node.addr().clone(), "b"), 1).await;
    assert!(third.answer.refused.unwrap().contains("our own address"));
}

// Attests NODE-7
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_keep_an_address_and_a_node_takes_its_own_over_from_a_client() {
    let ca = ca();
    let (node, rec) = serving(host(&ca, "b")).await;
    let claimed: HostAddr = "quic!127.0.0.1:3".parse().unwrap();
    let me = claimed.proc("h").unwrap().actor("x").unwrap();
    let hello = Hello::new(claimed.clone(), "h");

    // A client claims a node's address first (say, right after a restart).
    let (squatter_ep, squatter) = connected(&issue(&ca, Role::Client, "mallory"), &node).await;
    let mut squat = raw_link(&squatter, &hello, 1).await;
    assert_eq!(squat.answer.refused, None);
    // While its link lives, another client cannot take the address from it.
    let (_other_ep, other) = connected(&issue(&ca, Role::Operator, "eve"), &node).await;
    let refused_link = raw_link(&other, &hello, 1).await;
    assert!(refused_link.answer.refused.is_some());

    // The host whose address it is arrives: it takes the address over, the client's link is
    // closed, and what is sent to the address reaches the host.
    let (_host_ep, host) = connected(&issue(&ca, Role::Host, "h"), &node).await;
    let mut real = raw_link(&host, &hello, 1).await;
    assert_eq!(real.answer.refused, None);
    assert!(squat.ended().await, "the squatter's link was not closed");
    node.remote_ref::<TestMsg>(me.clone())
        .tell(TestMsg::Seq(7))
        .await
        .unwrap();
    assert_eq!(real.next().await.dest, me);
    real.send(&tell(&rec, &me, &TestMsg::Seq(0))).await;
    assert!(counted(&node, &rec, 1).await);
    // Now the address is the node's for good: no client gets it back.
    let squatter = raw_connect(&squatter_ep, node.quic_addr().unwrap())
        .await
        .unwrap();
    let again = raw_link(&squatter, &hello, 1).await;
    let reason = again.answer.refused.expect("refused");
    assert!(reason.contains("bound to another identity"), "{reason}");

    // A client's claim of an address nobody else holds ends with its connection.
    let free: HostAddr = "quic!127.0.0.1:4".parse().unwrap();
    let first = raw_link(&other, &Hello::new(free.clone(), "c"), 1).await;
    assert_eq!(first.answer.refused, None);
    other.close(0u32.into(), b"done");
    let (_next_ep, next) = connected(&issue(&ca, Role::Client, "carol"), &node).await;
    let mut taken = false;
    for _ in 0..50 {
        if raw_link(&next, &Hello::new(free.clone(), "c"), 1)
            .await
            .answer
            .refused
            .is_none()
        {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "a closed client's address stayed bound");
}

// Attests NODE-8
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_sees_every_link_and_may_refuse_it() {
    let ca = ca();
    let (node, rec) = serving(host(&ca, "b")).await;
    let capture = Arc::new(Capture {
        refuse: vec![Role::Client],
        ..Capture::default()
    });
    node.set_admission(capture.clone());
    let client = quic_node("c", issue(&ca, Role::Client, "c")).await;
    let err = client
        .remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no clients here"), "{err}");
    // (A sender may retry a refused link once: at least one refusal is counted.)
    assert!(refused(&node, "admission") >= 1);

    let secret = [5u8; 32];
    let host = NodeBuilder::new("h")
        .quic(loopback(), issue(&ca, Role::Host, ""))
        .node_claim("h7", Some(secret))
        .start()
        .await
        .unwrap();
    let remote = host.remote_ref::<TestMsg>(rec.clone());
    assert_eq!(remote.ask(TestMsg::PeerRole, T).await.unwrap(), 2);
    let peer = capture
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.hello.name == "h")
        .cloned()
        .unwrap();
    let identity = peer.identity.as_deref().unwrap();
    assert_eq!(
        (identity.role, identity.name.as_deref()),
        (Role::Host, None)
    );
    // The proof is bound to this connection's exporter.
    let binding = peer.binding.unwrap();
    assert!(verify_node_proof(&peer, &secret));
    assert_eq!(
        peer.hello.node.as_ref().unwrap().proof.unwrap().as_bytes(),
        &node_proof(&secret, &binding)
    );
    assert!(!verify_node_proof(&peer, &[6u8; 32]));

    // The dialler runs admission on its own links, too: it sees the server's identity.
    let dial_capture = Arc::new(Capture::default());
    host.set_admission(dial_capture.clone());
    let (other, other_rec) =
        serving(NodeBuilder::new("o").quic(loopback(), issue(&ca, Role::Orchestrator, "o"))).await;
    host.remote_ref::<TestMsg>(other_rec)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap();
    let seen = dial_capture.seen.lock().unwrap().clone();
    let server = seen.iter().find(|p| p.hello.addr == *other.addr()).unwrap();
    assert_eq!(server.role(), Some(Role::Orchestrator));
    // Both ends of one connection see the same binding.
    let accepted = capture
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.hello.name == "h")
        .count();
    assert!(accepted >= 1);
}

// Attests NODE-8 (Unix peers carry SO_PEERCRED)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_peers_carry_their_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (node, rec) = serving(NodeBuilder::new("b").unix(dir.path().join("b.sock"))).await;
    let capture = Arc::new(Capture::default());
    node.set_admission(capture.clone());
    let other = NodeBuilder::new("a")
        .unix(dir.path().join("a.sock"))
        .start()
        .await
        .unwrap();
    other
        .remote_ref::<TestMsg>(rec)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap();
    let seen = capture.seen.lock().unwrap().clone();
    let cred = seen[0].cred.expect("SO_PEERCRED");
    assert_eq!(cred.pid as u32, std::process::id());
    assert_eq!(seen[0].identity, None);
}

// Attests NODE-9
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_dial_policy_dials_only_known_nodes() {
    let ca = ca();
    let orch = NodeBuilder::new("o")
        .quic(loopback(), issue(&ca, Role::Orchestrator, "o"))
        .dial_policy(DialPolicy::Listed)
        .start()
        .await
        .unwrap();
    let (host, rec) = serving(host(&ca, "h")).await;
    let err = orch
        .remote_ref::<TestMsg>(rec.clone())
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "not dialling {}: no link, and it is not a known node",
            host.addr()
        )),
        "{err}"
    );
    orch.allow_dial(host.addr());
    assert_eq!(
        orch.remote_ref::<TestMsg>(rec.clone())
            .ask(TestMsg::Ping(1), T)
            .await
            .unwrap(),
        2
    );
    // Replies to a peer go back over its own accepted link, listed or not.
    let orch_rec = orch
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let client = quic_node("c", issue(&ca, Role::Client, "c")).await;
    assert_eq!(
        client
            .remote_ref::<TestMsg>(orch_rec)
            .ask(TestMsg::Ping(4), T)
            .await
            .unwrap(),
        5
    );
}

// Attests TLS-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_its_connection_closed() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    std::fs::write(&file, "# nothing revoked yet\n").unwrap();
    let list = Revocations::load(&file).unwrap();
    let (node, rec) = serving(host(&ca, "b").revocations(list)).await;
    let victim_id = issue(&ca, Role::Client, "laptop");
    let serial = victim_id.identity().unwrap().serial;
    let victim = quic_node("v", victim_id.clone()).await;
    let remote = victim.remote_ref::<TestMsg>(rec.clone());
    assert_eq!(remote.ask(TestMsg::Ping(1), T).await.unwrap(), 2);
    let (endpoint, held) = connected(&victim_id, &node).await;

    std::fs::write(&file, format!("# stolen\n{}\n", serial.to_uppercase())).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(4), held.closed()).await;
    assert!(closed.is_ok(), "the revoked connection stayed open");
    assert!(refused(&node, "revoked") >= 1);
    // A new connection with it is refused at the handshake.
    let err = remote.ask(TestMsg::Ping(1), T).await.unwrap_err();
    assert!(err.is_undeliverable(), "{err}");
    let again = raw_connect(&endpoint, node.quic_addr().unwrap()).await;
    if let Some(conn) = again {
        let _ = tokio::time::timeout(T, conn.closed()).await;
        assert!(conn.close_reason().is_some());
    }
    // Others are still served; a malformed file keeps the list.
    std::fs::write(&file, "zz-not-hex\n").unwrap();
    let other = quic_node("o", issue(&ca, Role::Client, "other")).await;
    assert_eq!(
        other
            .remote_ref::<TestMsg>(rec)
            .ask(TestMsg::Ping(1), T)
            .await
            .unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let conn = raw_connect(&endpoint, node.quic_addr().unwrap()).await;
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(T, conn.closed()).await;
        assert!(conn.close_reason().is_some());
    }
}

/// Fetches need a ticket under `key`; pushes are refused.
struct TicketPolicy {
    key: [u8; 32],
}

impl BlobPolicy for TicketPolicy {
    fn allow(&self, peer: &BlobPeer, request: &BlobRequest) -> Result<(), String> {
        assert!(peer.identity.is_some());
        match request {
            BlobRequest::Push { .. } => Err("no pushes".into()),
            BlobRequest::Fetch { hash, ticket } => ticket
                .ok_or_else(|| "a ticket is needed".to_owned())?
                .verify(&self.key, hash, u64::MAX - 1)
                .map_err(|e| e.to_string()),
        }
    }
}

// Attests BLOB-4
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_policy_refuses_fetches_and_pushes() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("server")).unwrap();
    let hash = store.put_bytes(b"secret output").await.unwrap();
    let server = host(&ca, "s").blob_store(store).start().await.unwrap();
    let key = [3u8; 32];
    server.set_blob_policy(Arc::new(TicketPolicy { key }));
    let client = NodeBuilder::new("c")
        .quic(loopback(), issue(&ca, Role::Client, "c"))
        .blob_store(BlobStore::open(dir.path().join("client")).unwrap())
        .start()
        .await
        .unwrap();
    let err = client.fetch_blob(server.addr(), hash).await.unwrap_err();
    assert!(
        matches!(&err, BlobError::Forbidden(r) if r.contains("a ticket is needed")),
        "{err}"
    );
    let forged = DownloadTicket::issue(&[4u8; 32], hash, u64::MAX);
    assert!(matches!(
        client
            .fetch_blob_with(server.addr(), hash, Some(forged))
            .await,
        Err(BlobError::Forbidden(_))
    ));
    let ticket = DownloadTicket::issue(&key, hash, u64::MAX);
    let path = client
        .fetch_blob_with(server.addr(), hash, Some(ticket))
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"secret output");
    let other = BlobHash::of(b"x");
    let err = client
        .push_blob(server.addr(), other, 1, &b"x"[..])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlobError::Refused(r) if r == "no pushes"),
        "{err}"
    );
    assert_eq!(refused(&server, "blob_forbidden"), 3);
}

#[test]
fn identities_parse_from_our_own_certificates() {
    let ca = ca();
    let id = issue(&ca, Role::Operator, "alice");
    let parsed: PeerIdentity = id.identity().unwrap();
    assert_eq!(parsed.role, Role::Operator);
    assert_eq!(parsed.name.as_deref(), Some("alice"));
    assert_eq!(parsed.uri(), "spiffe://test/operator/alice");
}
