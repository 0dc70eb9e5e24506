//! Blobs: content-addressed files (worker files, inputs, outputs), stored by blake3 hash and
//! moved on streams of their own — chunked, never as one frame — and verified on arrival.
//!
//! ```text
//! blob stream := "PMBL" ‖ frame(BlobRequest)
//!   Push  { hash, size }  client → size raw bytes, then end of stream
//!                         server → frame(BlobReply::Stored | Refused { reason })
//!   Fetch { hash, ticket? } server → frame(BlobReply::Sending { size } | Missing | Forbidden) ‖ size raw bytes
//! ```
//!
//! Who may push and fetch is the node's [`BlobPolicy`] ([`Node::set_blob_policy`]), asked with
//! a [`BlobPeer`] — the transport, the verified certificate identity (QUIC), the remote address
//! and `SO_PEERCRED` (Unix) of the stream — since a blob stream has no hello of its own. No
//! policy installed means every request is allowed: a bare node (a test, a client's store)
//! guards nothing, and each service that serves blobs worth guarding installs its own.
//!
//! # Invariants
//! - **BLOB-1** A blob enters a store only after its bytes hashed to its name and its length
//!   equalled the announced size; otherwise the partial file is deleted and nothing is kept.
//! - **BLOB-2** Partial files live in `tmp/` and become visible by one atomic rename into
//!   `objects/`; `tmp/` is emptied when a store opens.
//! - **BLOB-3** No read allocates more than one chunk ([`CHUNK`]) whatever size is announced.
//! - **BLOB-4** Every blob request is put to the node's [`BlobPolicy`] before anything is read
//!   or sent: a refused push is answered `Refused` (nothing kept), a refused fetch `Forbidden`
//!   (nothing sent), and counted as `blob_forbidden`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use procmesh_protocol::cas::{BlobHash, BlobHasher};
use procmesh_protocol::codec::{decode_body, CodecError, FrameCodec};
use procmesh_protocol::HostAddr;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use procmesh_protocol::cas::DownloadTicket;

use crate::link::TransportKind;
use crate::node::{refusal, Node, NodeInner, PeerCred};
use crate::tls::PeerIdentity;

/// Who opened a blob stream, as far as the transport knows (BLOB-4).
#[derive(Debug, Clone)]
pub struct BlobPeer {
    /// The transport it came over.
    pub transport: TransportKind,
    /// The verified certificate identity (QUIC).
    pub identity: Option<Arc<PeerIdentity>>,
    /// The remote socket address (QUIC).
    pub remote: Option<std::net::SocketAddr>,
    /// `SO_PEERCRED` of the connection (Unix).
    pub cred: Option<PeerCred>,
}

impl BlobPeer {
    /// Whether the peer is on this machine (see [`PeerInfo::is_loopback`](crate::PeerInfo::is_loopback)).
    pub fn is_loopback(&self) -> bool {
        match self.transport {
            TransportKind::Unix | TransportKind::Local => true,
            TransportKind::Quic => self.remote.is_some_and(|a| a.ip().is_loopback()),
        }
    }

    /// An in-process stream.
    pub(crate) fn local() -> BlobPeer {
        BlobPeer {
            transport: TransportKind::Local,
            identity: None,
            remote: None,
            cred: None,
        }
    }
}

/// Decides which blob requests a node serves (BLOB-4).
pub trait BlobPolicy: Send + Sync + 'static {
    /// `Ok` to serve `request` from `peer`; `Err(reason)` refuses it.
    fn allow(&self, peer: &BlobPeer, request: &BlobRequest) -> Result<(), String>;
}

/// The first bytes of a blob stream.
pub const BLOB_MAGIC: [u8; 4] = *b"PMBL";
/// Bytes moved per read or write.
pub const CHUNK: usize = 256 * 1024;

/// What a blob stream asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// "Here come `size` bytes hashing to `hash`."
    Push {
        /// The blob's blake3 hash.
        hash: BlobHash,
        /// Its length in bytes.
        size: u64,
    },
    /// "Send me `hash`."
    Fetch {
        /// The blob's blake3 hash.
        hash: BlobHash,
        /// A download ticket for it, if the store wants one (an action's output).
        #[serde(default)]
        ticket: Option<DownloadTicket>,
    },
}

/// What a blob stream answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    /// The pushed blob was verified and stored.
    Stored,
    /// The pushed blob was refused; nothing was kept.
    Refused {
        /// Why.
        reason: String,
    },
    /// The fetched blob follows: `size` bytes.
    Sending {
        /// Its length in bytes.
        size: u64,
    },
    /// The fetched blob is not here.
    Missing,
    /// The fetch was refused by the store's policy (BLOB-4); nothing follows.
    Forbidden {
        /// Why.
        reason: String,
    },
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes did not match the announced hash or size (BLOB-1).
    #[error("blob {expected} refused: {reason}")]
    Mismatch {
        /// The announced hash.
        expected: BlobHash,
        /// What was wrong.
        reason: String,
    },
    /// The blob is not in the store asked.
    #[error("blob {0} not found")]
    Missing(BlobHash),
    /// The peer refused a push.
    #[error("peer refused blob: {0}")]
    Refused(String),
    /// The peer's policy forbids this fetch (BLOB-4).
    #[error("blob fetch forbidden: {0}")]
    Forbidden(String),
    /// The peer could not be reached or the stream broke.
    #[error("blob transfer: {0}")]
    Transfer(String),
    /// This node keeps no blob store.
    #[error("this node keeps no blob store")]
    NoStore,
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A blob stream frame was bad.
    #[error("blob stream: {0}")]
    Codec(#[from] CodecError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Names of arrivals in `tmp/`, unique across every store of this process (two stores may
/// share one directory: a host's and its in-process procs').
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A directory of blobs named by hash: `objects/<hex>`, with `tmp/` for arrivals.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating) a store at `root`, emptying its `tmp/` (BLOB-2).
    pub fn open(root: impl Into<PathBuf>) -> Result<Arc<BlobStore>, BlobError> {
        let root = root.into();
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        for dir in [root.join("objects"), tmp] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Arc::new(BlobStore { root }))
    }

    /// Opens (creating) a store another process also uses — a host's store, shared on disk
    /// with its procs. Unlike [`open`](Self::open) it leaves `tmp/` alone: files there may be
    /// arrivals in progress in the owning process.
    pub fn open_shared(root: impl Into<PathBuf>) -> Result<Arc<BlobStore>, BlobError> {
        let root = root.into();
        for dir in [root.join("objects"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Arc::new(BlobStore { root }))
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `hash` lives (whether or not it is there).
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join("objects").join(hash.to_string())
    }

    /// Whether the blob is here.
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    /// Files being received right now (or left by a crash before the store reopened).
    pub fn partial_files(&self) -> usize {
        std::fs::read_dir(self.root.join("tmp")).map_or(0, |d| d.count())
    }

    /// Stores `bytes`, returning their hash.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(bytes);
        self.put(hash, bytes.len() as u64, bytes).await?;
        Ok(hash)
    }

    /// Receives exactly `size` bytes from `source` that must hash to `hash` (BLOB-1, BLOB-3).
    /// Bytes beyond `size` are not read; callers that own the stream check for its end.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        hash: BlobHash,
        size: u64,
        mut source: R,
    ) -> Result<(), BlobError> {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{hash}.{}.{n}", std::process::id()));
        let result = async {
            // create_new: never write into another arrival's file, whatever the names.
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .await
                .map_err(io_err(&tmp))?;
            let mut hasher = BlobHasher::new();
            let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let got = source
                    .read(&mut buf[..want])
                    .await
                    .map_err(|e| BlobError::Transfer(e.to_string()))?;
                if got == 0 {
                    return Err(BlobError::Mismatch {
                        expected: hash,
                        reason: format!("stream ended after {} of {size} bytes", size - left),
                    });
                }
                hasher.update(&buf[..got]);
                file.write_all(&buf[..got]).await.map_err(io_err(&tmp))?;
                left -= got as u64;
            }
            let actual = hasher.finalize();
            if actual != hash {
                return Err(BlobError::Mismatch {
                    expected: hash,
                    reason: format!("content hashes to {actual}"),
                });
            }
            file.flush().await.map_err(io_err(&tmp))?;
            drop(file);
            let dest = self.path(&hash);
            tokio::fs::rename(&tmp, &dest).await.map_err(io_err(&dest))
        }
        .await;
        if result.is_err() {
            // BLOB-1: nothing is kept.
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Copies a local file into the store, returning its hash and size.
    pub async fn put_file(&self, path: &Path) -> Result<(BlobHash, u64), BlobError> {
        let (hash, size) = hash_file(path).await?;
        if !self.contains(&hash) {
            let file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
            self.put(hash, size, file).await?;
        }
        Ok((hash, size))
    }

    /// Opens a stored blob for reading, with its size.
    pub async fn open_blob(&self, hash: &BlobHash) -> Result<(tokio::fs::File, u64), BlobError> {
        let path = self.path(hash);
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let size = file.metadata().await.map_err(io_err(&path))?.len();
                Ok((file, size))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::Missing(*hash)),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// The blake3 hash and size of a local file, read in chunks.
pub async fn hash_file(path: &Path) -> Result<(BlobHash, u64), BlobError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
    let mut hasher = BlobHasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize(), size))
}

async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    reader: &mut R,
    codec: FrameCodec,
) -> Result<T, BlobError> {
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|e| BlobError::Transfer(e.to_string()))?;
    let len = codec.peek_len(&prefix)?;
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| BlobError::Transfer(e.to_string()))?;
    Ok(decode_body(&body)?)
}

async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    codec: FrameCodec,
    msg: &T,
) -> Result<(), BlobError> {
    let mut out = Vec::new();
    codec.encode(msg, &mut out)?;
    writer
        .write_all(&out)
        .await
        .map_err(|e| BlobError::Transfer(e.to_string()))?;
    writer
        .flush()
        .await
        .map_err(|e| BlobError::Transfer(e.to_string()))
}

/// Answers one blob stream whose magic was already read.
pub(crate) async fn serve<R, W>(node: &NodeInner, mut reader: R, mut writer: W, peer: BlobPeer)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Blob requests are small: a tight frame limit (BLOB-3).
    let codec = FrameCodec::new(4096);
    let read = tokio::time::timeout(
        node.config.handshake_timeout,
        read_frame(&mut reader, codec),
    );
    let request: BlobRequest = match read.await {
        Ok(Ok(r)) => r,
        Ok(Err(error)) => {
            tracing::warn!(%error, "bad blob request");
            return;
        }
        Err(_) => {
            // NODE-10: no request within the handshake timeout.
            node.refuse(refusal::HANDSHAKE);
            tracing::warn!(remote = ?peer.remote, "no blob request within the handshake timeout");
            return;
        }
    };
    // BLOB-4
    let policy = node.blob_policy.read().expect("lock").clone();
    if let Some(Err(reason)) = policy.map(|p| p.allow(&peer, &request)) {
        node.refuse(refusal::BLOB_FORBIDDEN);
        tracing::warn!(
            %reason,
            ?request,
            identity = ?peer.identity.as_deref().map(PeerIdentity::uri),
            remote = ?peer.remote,
            "blob request refused"
        );
        let reply = match request {
            BlobRequest::Push { .. } => BlobReply::Refused { reason },
            BlobRequest::Fetch { .. } => BlobReply::Forbidden { reason },
        };
        let _ = write_frame(&mut writer, codec, &reply).await;
        let _ = writer.shutdown().await;
        return;
    }
    let reply = match (request, &node.blobs) {
        (BlobRequest::Push { .. }, None) => BlobReply::Refused {
            reason: "this node keeps no blob store".into(),
        },
        (BlobRequest::Push { hash, size }, Some(store)) => {
            match store.put(hash, size, &mut reader).await {
                Ok(()) => {
                    // Anything past the announced size is a lie about the size.
                    let mut extra = [0u8; 1];
                    match reader.read(&mut extra).await {
                        Ok(0) => BlobReply::Stored,
                        _ => {
                            let _ = tokio::fs::remove_file(store.path(&hash)).await;
                            BlobReply::Refused {
                                reason: format!(
                                    "blob {hash}: more than the announced {size} bytes"
                                ),
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "refused a pushed blob");
                    BlobReply::Refused {
                        reason: error.to_string(),
                    }
                }
            }
        }
        (BlobRequest::Fetch { .. }, None) => BlobReply::Missing,
        (BlobRequest::Fetch { hash, .. }, Some(store)) => match store.open_blob(&hash).await {
            Ok((mut file, size)) => {
                if write_frame(&mut writer, codec, &BlobReply::Sending { size })
                    .await
                    .is_err()
                {
                    return;
                }
                if let Err(error) = tokio::io::copy(&mut (&mut file).take(size), &mut writer).await
                {
                    tracing::debug!(%error, %hash, "blob fetch aborted");
                }
                let _ = writer.shutdown().await;
                return;
            }
            Err(_) => BlobReply::Missing,
        },
    };
    let _ = write_frame(&mut writer, codec, &reply).await;
    let _ = writer.shutdown().await;
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

impl Node {
    async fn open_blob_stream(&self, to: &HostAddr) -> Result<(BoxWrite, BoxRead), BlobError> {
        match to {
            HostAddr::Quic(addr) => {
                let (w, r) = crate::quic::open_blob_stream(&self.inner, *addr)
                    .await
                    .map_err(BlobError::Transfer)?;
                Ok((Box::new(w), Box::new(r)))
            }
            HostAddr::Unix(path) => {
                let (w, r) = crate::unix::open_blob_stream(path)
                    .await
                    .map_err(BlobError::Transfer)?;
                Ok((Box::new(w), Box::new(r)))
            }
            HostAddr::Local(name) => {
                let target = crate::local::target(&self.inner, name)
                    .ok_or_else(|| BlobError::Transfer(format!("no in-process node {to}")))?;
                let (ours, theirs) = tokio::io::duplex(CHUNK);
                let (their_read, their_write) = tokio::io::split(theirs);
                tokio::spawn(async move {
                    serve(&target, their_read, their_write, BlobPeer::local()).await
                });
                let (r, w) = tokio::io::split(ours);
                Ok((Box::new(w), Box::new(r)))
            }
        }
    }

    /// Pushes `size` bytes from `source`, which must hash to `hash`, into the blob store of the
    /// node at `to`. The receiver verifies hash and size and refuses a mismatch (BLOB-1).
    pub async fn push_blob<R: AsyncRead + Unpin>(
        &self,
        to: &HostAddr,
        hash: BlobHash,
        size: u64,
        mut source: R,
    ) -> Result<(), BlobError> {
        let (mut w, mut r) = self.open_blob_stream(to).await?;
        let codec = FrameCodec::new(4096);
        write_frame(&mut w, codec, &BlobRequest::Push { hash, size }).await?;
        let written = async {
            let sent = tokio::io::copy(&mut (&mut source).take(size), &mut w).await?;
            w.shutdown().await?;
            Ok::<_, std::io::Error>(sent)
        }
        .await;
        let sent = match written {
            Ok(sent) => sent,
            Err(e) => {
                // A store refusing the push (BLOB-4) answers before reading the bytes and stops
                // the stream: its answer says why.
                let reply = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    read_frame::<_, BlobReply>(&mut r, codec),
                )
                .await;
                return match reply {
                    Ok(Ok(BlobReply::Refused { reason })) => Err(BlobError::Refused(reason)),
                    _ => Err(BlobError::Transfer(e.to_string())),
                };
            }
        };
        let reply: BlobReply = read_frame(&mut r, codec).await?;
        match reply {
            BlobReply::Stored if sent == size => Ok(()),
            BlobReply::Stored => Err(BlobError::Transfer(format!(
                "source ended after {sent} of {size} bytes"
            ))),
            BlobReply::Refused { reason } => Err(BlobError::Refused(reason)),
            other => Err(BlobError::Transfer(format!("unexpected reply {other:?}"))),
        }
    }

    /// Hashes a local file and pushes it to `to`, returning its hash and size.
    pub async fn push_file(
        &self,
        to: &HostAddr,
        path: &Path,
    ) -> Result<(BlobHash, u64), BlobError> {
        let (hash, size) = hash_file(path).await?;
        let file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
        self.push_blob(to, hash, size, file).await?;
        Ok((hash, size))
    }

    /// Fetches the blob `hash` from the node at `from` into this node's store, verified
    /// (BLOB-1). Returns where it now lives.
    pub async fn fetch_blob(&self, from: &HostAddr, hash: BlobHash) -> Result<PathBuf, BlobError> {
        self.fetch_blob_with(from, hash, None).await
    }

    /// [`fetch_blob`](Self::fetch_blob) presenting a download ticket (an action's output from
    /// the host that ran it). A refusal by the store's policy is [`BlobError::Forbidden`].
    pub async fn fetch_blob_with(
        &self,
        from: &HostAddr,
        hash: BlobHash,
        ticket: Option<DownloadTicket>,
    ) -> Result<PathBuf, BlobError> {
        let store = self.inner.blobs.clone().ok_or(BlobError::NoStore)?;
        if store.contains(&hash) {
            return Ok(store.path(&hash));
        }
        let (mut w, mut r) = self.open_blob_stream(from).await?;
        let codec = FrameCodec::new(4096);
        write_frame(&mut w, codec, &BlobRequest::Fetch { hash, ticket }).await?;
        let _ = w.shutdown().await;
        match read_frame(&mut r, codec).await? {
            BlobReply::Sending { size } => {
                store.put(hash, size, &mut r).await?;
                Ok(store.path(&hash))
            }
            BlobReply::Missing => Err(BlobError::Missing(hash)),
            BlobReply::Forbidden { reason } => Err(BlobError::Forbidden(reason)),
            other => Err(BlobError::Transfer(format!("unexpected reply {other:?}"))),
        }
    }
}
