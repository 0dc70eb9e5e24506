//! Handshake refusals seen from a real node: a peer of another major version, and a peer that
//! is not procmesh at all.

mod utils;

use std::time::Duration;

use procmesh_protocol::codec::{FrameCodec, Hello, HANDSHAKE_PREFIX};
use procmesh_protocol::HostAddr;
use procmesh_transport::NodeBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use utils::TestMsg;

const T: Duration = Duration::from_secs(10);

/// A fake peer on a Unix socket that answers every connection with `reply`.
fn fake_peer(path: &std::path::Path, reply: Vec<u8>) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut theirs = [0u8; HANDSHAKE_PREFIX];
                let _ = stream.read_exact(&mut theirs).await;
                let _ = stream.write_all(&reply).await;
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_major_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.sock");
    let mut reply = Vec::new();
    let hello = Hello::new(HostAddr::Unix(path.clone()), "future");
    FrameCodec::default()
        .encode_handshake(&hello, &mut reply)
        .unwrap();
    reply[4..6].copy_from_slice(&2u16.to_be_bytes());
    fake_peer(&path, reply);

    let node = NodeBuilder::new("a")
        .unix(dir.path().join("a.sock"))
        .start()
        .await
        .unwrap();
    let dest = HostAddr::Unix(path).proc("p").unwrap().actor("x").unwrap();
    let err = node
        .remote_ref::<TestMsg>(dest)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_undeliverable(), "{text}");
    assert!(
        text.contains("we speak 1.0") && text.contains("the peer speaks 2.0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_procmesh_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    fake_peer(&path, b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
    let node = NodeBuilder::new("a")
        .unix(dir.path().join("a.sock"))
        .start()
        .await
        .unwrap();
    let dest = HostAddr::Unix(path).proc("p").unwrap().actor("x").unwrap();
    let err = node
        .remote_ref::<TestMsg>(dest)
        .ask(TestMsg::Ping(1), T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}
