//! QUIC over real sockets: two OS processes, mutual TLS refusals, and blobs.

mod utils;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::codec::{FrameCodec, Hello};
use procmesh_protocol::{ActorId, Body, Envelope, HostAddr};
use procmesh_transport::{BlobStore, MeshCa, NodeBuilder, Role, TlsIdentity};
use utils::{identity, loopback, Recorder, TestMsg};

const T: Duration = Duration::from_secs(10);
const CHILD_ENV: &str = "PROCMESH_TEST_CHILD_IDENTITY";

/// Runs only as the child of `two_processes_ask_and_tell` (it is ignored otherwise): serves a
/// `Recorder` named `rec` over QUIC until its stdin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by two_processes_ask_and_tell"]
async fn child_serves_recorder() {
    let dir = std::env::var(CHILD_ENV).expect("started by the parent test");
    let id = TlsIdentity::load(Path::new(&dir)).unwrap();
    let node = NodeBuilder::new("child")
        .quic(loopback(), id)
        .start()
        .await
        .unwrap();
    let actor = node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    println!("READY {actor}");
    std::io::stdout().flush().unwrap();
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    })
    .await
    .unwrap();
}

struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_ask_and_tell() {
    let (ca, id) = identity();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(Role::Host, "child", &[], T * 100)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_serves_recorder",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let actor: ActorId = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            if let Some(id) = line.unwrap().strip_prefix("READY ") {
                return id.parse().unwrap();
            }
        }
        panic!("child exited before it was ready");
    })
    .await
    .unwrap();
    assert_ne!(actor.addr(), &HostAddr::Local("x".into()));

    let node = NodeBuilder::new("parent")
        .quic(loopback(), id)
        .start()
        .await
        .unwrap();
    let rec = node.remote_ref::<TestMsg>(actor);
    assert_eq!(rec.ask(TestMsg::Ping(1), T).await.unwrap(), 2);
    for i in 0..1000 {
        rec.tell(TestMsg::Seq(i)).await.unwrap();
    }
    assert_eq!(rec.ask(TestMsg::Count, T).await.unwrap(), 1000);
    assert_eq!(rec.ask(TestMsg::OrderViolations, T).await.unwrap(), 0);
    assert_eq!(rec.ask(TestMsg::IsLoopback, T).await.unwrap(), 1);
    let child_pid = child.0.id();
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{child_pid}/status")).exists() || {
            let s =
                std::fs::read_to_string(format!("/proc/{child_pid}/status")).unwrap_or_default();
            s.contains("State:\tZ")
        }
    );
}

/// A raw quinn client with the given rustls config: connects, and if it gets that far, sends a
/// valid handshake and a tell to `actor`. Returns whether anything was refused on the way.
async fn raw_client_tell(config: rustls::ClientConfig, actor: &ActorId) {
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let addr = actor.addr().socket_addr().unwrap();
    let Ok(connecting) = endpoint.connect(addr, "node.procmesh") else {
        return;
    };
    let Ok(Ok(conn)) = tokio::time::timeout(T, connecting).await else {
        return;
    };
    let attempt = async {
        let (mut send, _recv) = conn.open_bi().await.ok()?;
        let codec = FrameCodec::default();
        let mut out = Vec::new();
        let me: ActorId = "quic!127.0.0.1:1,intruder.x".parse().unwrap();
        codec
            .encode_handshake(&Hello::new(me.addr().clone(), "intruder"), &mut out)
            .unwrap();
        let msg = procmesh_protocol::codec::encode_body(&TestMsg::Seq(0)).unwrap();
        let env = Envelope {
            dest: actor.clone(),
            sender: me,
            body: Body::Tell { message: msg },
            trace: None,
        };
        codec.encode(&env, &mut out).unwrap();
        send.write_all(&out).await.ok()?;
        send.finish().ok()?;
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), attempt).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
}

// Attests TLS-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_mesh_certificate_are_refused() {
    let (ca, id) = identity();
    let node = NodeBuilder::new("b")
        .quic(loopback(), id)
        .start()
        .await
        .unwrap();
    let actor = node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    let local = node.remote_ref::<TestMsg>(actor.clone());

    // No client certificate at all, trusting the right CA.
    procmesh_transport::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut no_cert = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"procmesh/1".to_vec()];
    raw_client_tell(no_cert, &actor).await;

    // A certificate from another CA (the client still trusts the right server CA).
    let other = MeshCa::generate("other", T)
        .unwrap()
        .issue(Role::Client, "mallory", &[], T)
        .unwrap();
    let mut mixed = other.clone();
    mixed.ca_cert_pem = ca.cert_pem().to_owned();
    raw_client_tell(mixed.client_config().unwrap(), &actor).await;

    // A whole node of another mesh: its asks fail, it never reaches the actor.
    let stranger = NodeBuilder::new("s")
        .quic(
            loopback(),
            MeshCa::generate("other", T)
                .unwrap()
                .issue(Role::Host, "s", &[], T)
                .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let err = stranger
        .remote_ref::<TestMsg>(actor.clone())
        .ask(TestMsg::Seq(0), T)
        .await
        .unwrap_err();
    assert!(err.is_undeliverable(), "{err}");

    // Nothing got through.
    assert_eq!(local.ask(TestMsg::Count, T).await.unwrap(), 0);
}

fn write_pseudo_random(path: &Path, size: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_blob_arrives_intact_and_a_corrupt_one_is_refused() {
    let (_, id) = identity();
    let dir = tempfile::tempdir().unwrap();
    let store_a = BlobStore::open(dir.path().join("a")).unwrap();
    let store_b = BlobStore::open(dir.path().join("b")).unwrap();
    let a = NodeBuilder::new("a")
        .quic(loopback(), id.clone())
        .blob_store(store_a.clone())
        .start()
        .await
        .unwrap();
    let b = NodeBuilder::new("b")
        .quic(loopback(), id)
        .blob_store(store_b.clone())
        .start()
        .await
        .unwrap();

    let file = dir.path().join("big.bin");
    write_pseudo_random(&file, 256 << 20);
    let (hash, size) = a.push_file(b.addr(), &file).await.unwrap();
    assert_eq!(size, 256 << 20);
    assert!(store_b.contains(&hash));
    let (stored_hash, stored_size) = procmesh_transport::blob::hash_file(&store_b.path(&hash))
        .await
        .unwrap();
    assert_eq!((stored_hash, stored_size), (hash, size));

    // The same bytes announced under another hash: refused, nothing kept.
    let wrong = BlobHash::from_bytes([7u8; 32]);
    let source = tokio::fs::File::open(&file).await.unwrap();
    let err = a
        .push_blob(b.addr(), wrong, size, source)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!store_b.contains(&wrong));
    assert_eq!(store_b.partial_files(), 0);

    // Fewer bytes than announced: refused too.
    let small = b"hello".as_slice();
    let hash_small = BlobHash::of(small);
    let err = a
        .push_blob(b.addr(), hash_small, 10, small)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("of 10"), "{err}");
    assert!(!store_b.contains(&hash_small));

    // Fetch the other way; a missing blob is a clear error naming it.
    let fetched = a.fetch_blob(b.addr(), hash).await.unwrap();
    assert!(fetched.starts_with(store_a.root()));
    let err = a.fetch_blob(b.addr(), wrong).await.unwrap_err();
    assert!(err.to_string().contains(&wrong.to_string()), "{err}");
}
