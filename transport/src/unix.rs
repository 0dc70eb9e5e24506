//! Unix domain socket transport: host ↔ proc backends, and any two nodes on one machine.
//!
//! Each connection is one stream; it starts with `"PMSH"` (a control connection: handshake, then
//! envelope frames both ways) or `"PMBL"` (one blob transfer), exactly as a QUIC stream does.
//! A listening socket file left behind by a dead process is replaced; the file is created with
//! the process umask and lives in a directory the operator controls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use procmesh_protocol::codec::MAGIC;
use procmesh_protocol::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::blob::{self, BLOB_MAGIC};
use crate::link::{Link, TransportKind};
use crate::node::{NodeError, NodeInner, PeerCred};
use crate::stream::{handshake_timed, run_dialled, serve_control};

pub(crate) fn listen(node: &Arc<NodeInner>, path: &Path) -> Result<(), NodeError> {
    let bind_err = |source| NodeError::Bind {
        addr: format!("unix!{}", path.display()),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(bind_err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let node = Arc::downgrade(node);
    let path = path.to_path_buf();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "unix accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(inner) = node.upgrade() else { return };
            tokio::spawn(serve(inner, stream));
        }
    });
    Ok(())
}

/// `SO_PEERCRED` of a connected socket.
fn peer_cred(stream: &UnixStream) -> Option<PeerCred> {
    match stream.peer_cred() {
        Ok(c) => Some(PeerCred {
            pid: c.pid().unwrap_or(0),
            uid: c.uid(),
            gid: c.gid(),
        }),
        Err(error) => {
            tracing::warn!(%error, "no SO_PEERCRED for a unix connection");
            None
        }
    }
}

async fn serve(node: Arc<NodeInner>, stream: UnixStream) {
    let cred = peer_cred(&stream);
    let (mut read, write) = stream.into_split();
    let mut magic = [0u8; 4];
    if read.read_exact(&mut magic).await.is_err() {
        return;
    }
    if magic == BLOB_MAGIC {
        let peer = blob::BlobPeer {
            transport: TransportKind::Unix,
            identity: None,
            remote: None,
            cred,
        };
        return blob::serve(&node, read, write, peer).await;
    }
    if magic != MAGIC {
        tracing::warn!(?magic, "closing a unix connection that is not procmesh");
        return;
    }
    serve_control(node, read, write, TransportKind::Unix, None, cred).await;
}

pub(crate) async fn run_outbound(
    node: Arc<NodeInner>,
    path: PathBuf,
    link: Link,
    rx: mpsc::UnboundedReceiver<Envelope>,
) {
    let setup = async {
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| format!("cannot connect to unix!{}: {e}", path.display()))?;
        let (mut read, mut write) = stream.into_split();
        let hs = handshake_timed(&node, &mut read, &mut write, None)
            .await
            .map_err(|e| format!("handshake with unix!{} failed: {e}", path.display()))?;
        Ok::<_, String>((read, write, hs))
    };
    let setup = setup.await;
    run_dialled(node, link, rx, setup, None).await;
}

/// Opens a blob connection to the Unix socket at `path`.
pub(crate) async fn open_blob_stream(
    path: &Path,
) -> Result<
    (
        tokio::net::unix::OwnedWriteHalf,
        tokio::net::unix::OwnedReadHalf,
    ),
    String,
> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("cannot connect to unix!{}: {e}", path.display()))?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(&BLOB_MAGIC)
        .await
        .map_err(|e| format!("cannot write to unix!{}: {e}", path.display()))?;
    Ok((write, read))
}
