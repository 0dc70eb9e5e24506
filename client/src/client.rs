//! [`Client`]: a QUIC node with a client certificate, talking to one orchestrator.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::Spawn;
use procmesh_protocol::messages::orchestrator::{
    ActionResult, EventFilter, HostView, OrchestratorReply, OrchestratorRequest, QueueConfig,
    QueueRef, SubscriptionTarget,
};
use procmesh_protocol::messages::requests::{client as req, Ask};
use procmesh_protocol::spec::validate_path;
use procmesh_protocol::{
    ActorId, BlobHash, DownloadTicket, InputFile, Lsn, OutputFile, ProcId, WorkerId,
};
use procmesh_transport::{BlobStore, Node, NodeBuilder, RemoteRef};
use tokio::sync::mpsc;

use crate::error::ClientError;
use crate::queue::Queue;
use crate::watch::{self, EventSink, Watch, WATCH_BUFFER};
use crate::worker::{distinct_hashes, input_file, BlobSource, PreparedWorker, WorkerBuilder};
use crate::ClientConfig;

/// A connection to one orchestrator. Cheap to clone; every clone shares the node.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub node: Node,
    orchestrator: RemoteRef<OrchestratorRequest>,
    timeout: Duration,
    next_watch: AtomicU64,
}

/// A random proc name, so that two clients on one machine never share one.
fn proc_name() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes[..4].copy_from_slice(&nanos.to_le_bytes());
        bytes[4..].copy_from_slice(&(std::process::id() as u16).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("client-{hex}")
}

impl Client {
    /// Starts a QUIC node with the configured identity and checks that the orchestrator
    /// answers (`ListHosts`).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let bind = config.bind_addr()?;
        let cache = config.cache_dir();
        let store = BlobStore::open_shared(&cache)
            .map_err(|e| ClientError::Config(format!("blob cache {}: {e}", cache.display())))?;
        let node = NodeBuilder::new(&proc_name())
            .quic(bind, config.identity.clone())
            .blob_store(store)
            .start()
            .await?;
        let client = Client::from_node(node, config.orchestrator.clone(), config.timeout);
        // Any answer will do: a refusal (or a reply of another kind) comes from the orchestrator.
        let check = client.call_within(req::ListHosts, config.timeout).await;
        if let Err(ClientError::Transport { error, .. }) = check {
            client.close().await;
            return Err(ClientError::Unreachable {
                orchestrator: config.orchestrator,
                error,
            });
        }
        Ok(client)
    }

    /// A client on an existing node (one in the same process as the orchestrator, a test's).
    /// Downloads need the node to keep a blob store.
    pub fn from_node(node: Node, orchestrator: ActorId, timeout: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                orchestrator: node.remote_ref(orchestrator),
                node,
                timeout,
                next_watch: AtomicU64::new(1),
            }),
        }
    }

    /// The client's node.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The orchestrator's actor id.
    pub fn orchestrator(&self) -> &ActorId {
        self.inner.orchestrator.id()
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Stops the client's node: what was sent is still delivered for up to a second.
    pub async fn close(&self) {
        self.inner.node.shutdown(Duration::from_secs(1)).await;
    }

    /// Sends `request` and returns the orchestrator's reply, its refusal as
    /// [`ClientError::Orchestrator`].
    pub async fn request(
        &self,
        request: OrchestratorRequest,
    ) -> Result<OrchestratorReply, ClientError> {
        self.ask(request.kind(), request).await
    }

    /// Sends a typed request and returns its typed reply: a reply of another kind is
    /// [`ClientError::UnexpectedReply`], decided here once for every request.
    pub async fn call<A: Ask>(&self, request: A) -> Result<A::Reply, ClientError> {
        self.call_within(request, self.inner.timeout).await
    }

    /// [`call`](Self::call) with its own timeout.
    pub async fn call_within<A: Ask>(
        &self,
        request: A,
        timeout: Duration,
    ) -> Result<A::Reply, ClientError> {
        let reply = self.ask_within(A::KIND, request.request(), timeout).await?;
        A::reply(reply).map_err(|other| unexpected(A::KIND, &other))
    }

    pub(crate) async fn ask(
        &self,
        name: &'static str,
        request: OrchestratorRequest,
    ) -> Result<OrchestratorReply, ClientError> {
        self.ask_within(name, request, self.inner.timeout).await
    }

    pub(crate) async fn ask_within(
        &self,
        name: &'static str,
        request: OrchestratorRequest,
        timeout: Duration,
    ) -> Result<OrchestratorReply, ClientError> {
        match self.inner.orchestrator.ask(request, timeout).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(refusal)) => Err(ClientError::Orchestrator(refusal)),
            Err(error) => Err(ClientError::Transport {
                request: name,
                error,
            }),
        }
    }

    /// Every host the orchestrator knows.
    pub async fn hosts(&self) -> Result<Vec<HostView>, ClientError> {
        self.call(req::ListHosts).await
    }

    /// Creates a queue. The handle addresses it by token, so it works from anywhere.
    pub async fn create_queue(&self, config: QueueConfig) -> Result<Queue, ClientError> {
        let created = self.call(req::CreateQueue { config }).await?;
        Ok(Queue::new(
            self.clone(),
            QueueRef::Token(created.token),
            Some(created.id),
            Some(created.token),
        ))
    }

    /// A handle on an existing queue, checked by reading its status (a wrong token is
    /// `unknown_queue`; an id from a remote client is `forbidden`).
    pub async fn queue(&self, queue: QueueRef) -> Result<Queue, ClientError> {
        let token = match queue {
            QueueRef::Token(token) => Some(token),
            QueueRef::Id(_) => None,
        };
        let mut handle = Queue::new(self.clone(), queue, None, token);
        let status = handle.status().await?;
        handle.id = Some(status.id);
        Ok(handle)
    }

    /// Hashes and registers a worker, uploading only the blobs the orchestrator lacks.
    pub async fn register_worker(&self, worker: &WorkerBuilder) -> Result<WorkerId, ClientError> {
        let prepared = worker.prepare().await?;
        self.register_prepared(&prepared).await
    }

    /// Registers an already prepared worker, uploading only the blobs the orchestrator lacks.
    pub async fn register_prepared(
        &self,
        worker: &PreparedWorker,
    ) -> Result<WorkerId, ClientError> {
        let (id, missing) = self
            .call(req::RegisterWorker {
                descriptor: worker.descriptor().clone(),
            })
            .await?;
        if id != worker.id() {
            return Err(ClientError::WorkerIdMismatch {
                ours: worker.id(),
                theirs: id,
            });
        }
        for hash in distinct_hashes(&missing) {
            let source = worker
                .source(&hash)
                .ok_or_else(|| ClientError::UnexpectedReply {
                    request: "RegisterWorker",
                    reply: format!("asked for blob {hash}, which is not in the worker"),
                })?;
            self.push(hash, source).await?;
        }
        self.confirm_uploaded(missing).await?;
        tracing::debug!(worker = %id, "worker registered");
        Ok(id)
    }

    /// Hashes local files as action inputs (`(path in the sandbox, local file)`), uploads the
    /// ones the orchestrator lacks, and returns them in order.
    pub async fn upload_inputs<P: AsRef<Path>>(
        &self,
        files: &[(String, P)],
    ) -> Result<Vec<InputFile>, ClientError> {
        let mut inputs = Vec::with_capacity(files.len());
        let mut sources = std::collections::BTreeMap::new();
        for (path, local) in files {
            let input = input_file(path, local.as_ref()).await?;
            sources
                .entry(input.hash)
                .or_insert_with(|| BlobSource::File(local.as_ref().to_owned()));
            inputs.push(input);
        }
        let hashes = distinct_hashes(inputs.iter().map(|i| &i.hash));
        let missing = self.missing_blobs(hashes).await?;
        for hash in &missing {
            if let Some(source) = sources.get(hash) {
                self.push(*hash, source).await?;
            }
        }
        self.confirm_uploaded(missing).await?;
        Ok(inputs)
    }

    /// Which of `hashes` the orchestrator lacks.
    pub async fn missing_blobs(&self, hashes: Vec<BlobHash>) -> Result<Vec<BlobHash>, ClientError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        self.call(req::MissingBlobs { hashes }).await
    }

    async fn confirm_uploaded(&self, uploaded: Vec<BlobHash>) -> Result<(), ClientError> {
        let still = self.missing_blobs(uploaded).await?;
        if still.is_empty() {
            Ok(())
        } else {
            Err(ClientError::StillMissing(still))
        }
    }

    async fn push(&self, hash: BlobHash, source: &BlobSource) -> Result<(), ClientError> {
        let to = self.orchestrator().addr();
        let result = match source {
            BlobSource::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(ClientError::io(path))?;
                let size = file.metadata().await.map_err(ClientError::io(path))?.len();
                self.inner.node.push_blob(to, hash, size, file).await
            }
            BlobSource::Bytes(bytes) => {
                self.inner
                    .node
                    .push_blob(to, hash, bytes.len() as u64, &bytes[..])
                    .await
            }
        };
        result.map_err(|e| ClientError::Upload {
            path: source.describe(),
            error: e,
        })
    }

    /// Downloads an output file of `result` into `dest_dir`, at its path relative to
    /// `Outputs/`. It is fetched from the host that ran the action with the output's download
    /// ticket (the result carries one per output), then from the orchestrator. Returns the
    /// file written.
    pub async fn download(
        &self,
        result: &ActionResult,
        output: &OutputFile,
        dest_dir: &Path,
    ) -> Result<PathBuf, ClientError> {
        let location = result.record.location();
        let ticket = result
            .tickets
            .iter()
            .find(|t| t.hash == output.hash)
            .copied();
        // An output path comes from a remote runner: never let it leave `dest_dir`.
        validate_path(&output.path).map_err(|reason| ClientError::Path {
            path: output.path.clone(),
            reason,
        })?;
        let dest = dest_dir.join(&output.path);
        refuse_symlinks(dest_dir, &output.path).await?;
        let blob = self
            .fetch_with(output.hash, &output.path, location, ticket)
            .await?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(ClientError::io(parent))?;
        }
        let partial = dest.with_file_name(format!(
            ".{}.partial",
            dest.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        tokio::fs::copy(&blob, &partial)
            .await
            .map_err(ClientError::io(&partial))?;
        tokio::fs::rename(&partial, &dest)
            .await
            .map_err(ClientError::io(&dest))?;
        Ok(dest)
    }

    /// Fetches the blob `hash` into the client's cache, from `location`'s host, then from the
    /// orchestrator. Returns where it lives.
    pub async fn fetch(
        &self,
        hash: BlobHash,
        what: &str,
        location: Option<&ProcId>,
    ) -> Result<PathBuf, ClientError> {
        self.fetch_with(hash, what, location, None).await
    }

    /// [`fetch`](Self::fetch) presenting a download ticket: an output blob is served by the
    /// host that holds it only with the ticket its result carries.
    pub async fn fetch_with(
        &self,
        hash: BlobHash,
        what: &str,
        location: Option<&ProcId>,
        ticket: Option<DownloadTicket>,
    ) -> Result<PathBuf, ClientError> {
        let mut sources = Vec::with_capacity(2);
        if let Some(proc_id) = location {
            sources.push(proc_id.addr().clone());
        }
        let orchestrator = self.orchestrator().addr().clone();
        if !sources.contains(&orchestrator) {
            sources.push(orchestrator);
        }
        let mut last = None;
        for from in &sources {
            match self.inner.node.fetch_blob_with(from, hash, ticket).await {
                Ok(path) => return Ok(path),
                Err(error) => {
                    tracing::debug!(%error, %hash, %from, "blob not fetched");
                    last = Some(error);
                }
            }
        }
        Err(ClientError::Download {
            hash,
            path: what.to_owned(),
            error: last.expect("at least one source"),
        })
    }

    /// Follows one action's transitions.
    pub async fn action_watch(&self, queue: QueueRef, lsn: Lsn) -> Result<Watch, ClientError> {
        self.subscribe(SubscriptionTarget::Action { queue, lsn })
            .await
    }

    /// Subscribes to `target`: its events arrive on the returned [`Watch`], which resumes by
    /// itself after a reconnect or an orchestrator restart (see [`Watch`]).
    pub async fn subscribe(&self, target: SubscriptionTarget) -> Result<Watch, ClientError> {
        self.subscribe_from(target, None).await
    }

    /// [`subscribe`](Self::subscribe), first replaying the queue's transitions from index
    /// `from` on (the index after the last one seen, e.g. by an earlier process).
    pub async fn subscribe_from(
        &self,
        target: SubscriptionTarget,
        from: Option<u64>,
    ) -> Result<Watch, ClientError> {
        self.subscribe_filtered(target, from, EventFilter::All)
            .await
    }

    /// [`subscribe_from`](Self::subscribe_from), told only the transitions `events` lets
    /// through (the queue's completion, `Lagged` and `Ended` come always). A client that only
    /// waits for a queue asks for [`EventFilter::Completion`]: the orchestrator then encodes
    /// and sends nothing per action.
    pub async fn subscribe_filtered(
        &self,
        target: SubscriptionTarget,
        from: Option<u64>,
        events: EventFilter,
    ) -> Result<Watch, ClientError> {
        let name = format!(
            "watch-{}",
            self.inner.next_watch.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let sink = EventSink::spawn(EventSink::new(tx));
        let subscriber = self
            .inner
            .node
            .expose(&name, sink)
            .map_err(|e| ClientError::Config(format!("watch actor name: {e}")))?;
        match watch::subscribe(self, &target, &subscriber, from, events).await {
            Ok((subscription, next)) => Ok(Watch::start(
                self.clone(),
                name,
                (target, events),
                subscriber,
                subscription,
                from.unwrap_or(next),
                rx,
            )),
            Err(e) => {
                self.inner.node.unexpose(&name);
                Err(e)
            }
        }
    }
}

pub(crate) fn unexpected(request: &'static str, reply: &OrchestratorReply) -> ClientError {
    let mut text = format!("{reply:?}");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    ClientError::UnexpectedReply {
        request,
        reply: text,
    }
}

/// Refuses a download whose destination, `dest_dir` joined with the (validated, relative)
/// `path`, would be reached through a symbolic link: each directory already there below
/// `dest_dir`, and the file itself, must be what they seem, so that a link planted in the
/// download directory cannot send an output elsewhere.
async fn refuse_symlinks(dest_dir: &Path, path: &str) -> Result<(), ClientError> {
    let mut at = dest_dir.to_path_buf();
    for part in Path::new(path).components() {
        at.push(part);
        match tokio::fs::symlink_metadata(&at).await {
            Ok(meta) if meta.file_type().is_symlink() => {
                let error = std::io::Error::other(
                    "is a symbolic link: refusing to write an output through it",
                );
                return Err(ClientError::io(&at)(error));
            }
            Ok(_) => {}
            // Nothing there yet: nothing below it either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ClientError::io(&at)(e)),
        }
    }
    Ok(())
}
