//! The host-wide worker cache: `<workers_dir>/<worker id>/`, shared by the sibling procs of a
//! host. A worker is materialised once, verified, and then hard-linked into every sandbox.
//!
//! ```text
//! descriptor ── resolver.worker(id) ──▶ check id() == id, validate()      kept in memory
//! blobs      ── resolver.ensure_blobs(missing) ──▶ shared blob store
//! files      ── copy + hash + size check ──▶ <workers_dir>/.tmp-<id>-<pid>-<n>/
//!            ── rename ──▶ <workers_dir>/<id>/   (atomic; a sibling that won the race is reused)
//! ```
//!
//! The host wipes stale caches when it starts; the runner never deletes a cache entry.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use procmesh_protocol::cas::BlobHasher;
use procmesh_protocol::ids::ActorId;
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_transport::BlobStore;
use tracing::{debug, info};

use super::cleanup::remove_tree;
use super::error::PrepareError;
use super::sandbox::{ensure_dir, ensure_parent, READ_ONLY, READ_ONLY_EXEC};
use super::Resolver;

/// A worker ready to be linked into sandboxes.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its id.
    pub(crate) id: WorkerId,
    /// Its verified descriptor.
    pub(crate) descriptor: Arc<WorkerDescriptor>,
    /// Its cache directory, `<workers_dir>/<id>`.
    pub(crate) dir: PathBuf,
}

/// Numbers temporary directories: process-wide, because several runners (in-process procs) may
/// share one cache directory under one pid.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
/// How many temporary names are tried (one may be a leftover of a dead process with our pid).
const TMP_TRIES: u32 = 16;

/// The workers this proc has resolved and materialised.
#[derive(Debug)]
pub(crate) struct WorkerCache {
    dir: PathBuf,
    /// Verified descriptors, by id.
    descriptors: Mutex<HashMap<WorkerId, Arc<WorkerDescriptor>>>,
    /// Workers known to be materialised.
    ready: Mutex<HashMap<WorkerId, Arc<Worker>>>,
    /// One materialisation at a time per worker within this proc.
    building: Mutex<HashMap<WorkerId, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerCache {
    /// A cache in `dir` (created by the runner).
    pub(crate) fn new(dir: PathBuf) -> WorkerCache {
        WorkerCache {
            dir,
            descriptors: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            building: Mutex::new(HashMap::new()),
        }
    }

    /// The worker `id`, resolved, verified and materialised if needed (PA-6).
    pub(crate) async fn get(
        &self,
        id: WorkerId,
        resolver: &dyn Resolver,
        report_to: &ActorId,
        store: &Arc<BlobStore>,
    ) -> Result<Arc<Worker>, PrepareError> {
        if let Some(worker) = lock(&self.ready).get(&id) {
            return Ok(worker.clone());
        }
        let descriptor = self.descriptor(id, resolver, report_to).await?;
        let gate = lock(&self.building).entry(id).or_default().clone();
        let _building = gate.lock().await;
        if let Some(worker) = lock(&self.ready).get(&id) {
            return Ok(worker.clone());
        }
        let final_dir = self.dir.join(id.to_string());
        if !is_real_dir(&final_dir)? {
            let missing: Vec<_> = descriptor
                .blobs()
                .into_iter()
                .filter(|h| !store.contains(h))
                .collect();
            if !missing.is_empty() {
                let n = missing.len();
                resolver
                    .ensure_blobs(missing, report_to)
                    .await
                    .map_err(|message| PrepareError::Resolver {
                        what: format!("fetching {n} blob(s) of worker {id}"),
                        message,
                    })?;
            }
            let (store, d, dir) = (store.clone(), descriptor.clone(), self.dir.clone());
            // Runs to its end even if this future is dropped (a cancelled attempt): the
            // temporary directory is then renamed into place or deleted all the same.
            tokio::task::spawn_blocking(move || materialise(&store, &d, &dir, id))
                .await
                .map_err(|e| PrepareError::Io {
                    path: final_dir.clone(),
                    source: io::Error::other(e),
                })??;
        }
        let worker = Arc::new(Worker {
            id,
            descriptor,
            dir: final_dir,
        });
        lock(&self.ready).insert(id, worker.clone());
        Ok(worker)
    }

    /// Throws away the cache entry of `worker` (a file in it no longer matches its hash): it is
    /// renamed out of the way at once and deleted, so the next [`get`](Self::get) builds it
    /// again from the store.
    pub(crate) async fn discard(&self, worker: &Worker) {
        self.forget(&worker.id);
        let gate = lock(&self.building).entry(worker.id).or_default().clone();
        let _building = gate.lock().await;
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let trash = self
            .dir
            .join(format!(".bad-{}-{}-{n}", worker.id, std::process::id()));
        match fs::rename(&worker.dir, &trash) {
            Ok(()) => {
                if let Err(error) = remove_tree(&trash) {
                    tracing::warn!(%error, path = %trash.display(), "could not delete a damaged worker cache entry");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %worker.dir.display(), "could not move a damaged worker cache entry away");
            }
        }
    }

    /// Forgets that `id` is materialised, so the next attempt checks the disk again (after a
    /// sandbox could not be filled from it).
    pub(crate) fn forget(&self, id: &WorkerId) {
        lock(&self.ready).remove(id);
    }

    async fn descriptor(
        &self,
        id: WorkerId,
        resolver: &dyn Resolver,
        report_to: &ActorId,
    ) -> Result<Arc<WorkerDescriptor>, PrepareError> {
        if let Some(d) = lock(&self.descriptors).get(&id) {
            return Ok(d.clone());
        }
        let descriptor =
            resolver
                .worker(id, report_to)
                .await
                .map_err(|message| PrepareError::Resolver {
                    what: format!("resolving worker {id}"),
                    message,
                })?;
        let got = descriptor.id();
        if got != id {
            return Err(PrepareError::WorkerIdMismatch { asked: id, got });
        }
        descriptor
            .validate()
            .map_err(|source| PrepareError::InvalidWorker { id, source })?;
        let descriptor = Arc::new(descriptor);
        lock(&self.descriptors).insert(id, descriptor.clone());
        Ok(descriptor)
    }
}

/// Whether `path` is a directory (not a symbolic link to one); refuses a link.
fn is_real_dir(path: &Path) -> Result<bool, PrepareError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(PrepareError::unsafe_path(
            &path.display().to_string(),
            "the worker cache entry is a symbolic link",
        )),
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => Err(PrepareError::unsafe_path(
            &path.display().to_string(),
            "the worker cache entry is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PrepareError::io(path)(e)),
    }
}

/// Creates a fresh temporary directory `<dir>/.tmp-<id>-<pid>-<n>`.
fn create_tmp(dir: &Path, id: WorkerId) -> Result<PathBuf, PrepareError> {
    let pid = std::process::id();
    let mut tries = 0;
    loop {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{id}-{pid}-{n}"));
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < TMP_TRIES => {
                tries += 1;
            }
            Err(e) => return Err(PrepareError::io(&tmp)(e)),
        }
    }
}

/// Copies every file of `descriptor` from the store into a fresh temporary directory in `dir`,
/// verifying hash and size, then renames it to `<dir>/<id>`. On any error the temporary
/// directory is deleted and nothing appears at `<dir>/<id>`.
fn materialise(
    store: &BlobStore,
    descriptor: &WorkerDescriptor,
    dir: &Path,
    id: WorkerId,
) -> Result<(), PrepareError> {
    let dest = &dir.join(id.to_string());
    let tmp = &create_tmp(dir, id)?;
    let result = fill(store, descriptor, tmp).and_then(|()| match fs::rename(tmp, dest) {
        Ok(()) => {
            info!(worker = %dest.display(), files = descriptor.files.len(), "worker materialised");
            Ok(())
        }
        // A sibling proc renamed its copy first: use that one.
        Err(_) if is_real_dir(dest)? => {
            debug!(worker = %dest.display(), "a sibling materialised the worker first");
            let _ = remove_tree(tmp);
            Ok(())
        }
        Err(e) => Err(PrepareError::io(dest)(e)),
    });
    if result.is_err() {
        let _ = remove_tree(tmp);
    }
    result
}

fn fill(store: &BlobStore, descriptor: &WorkerDescriptor, tmp: &Path) -> Result<(), PrepareError> {
    for dir in &descriptor.directories {
        ensure_dir(tmp, dir)?;
    }
    for file in &descriptor.files {
        let dest = ensure_parent(tmp, &file.path)?;
        let source = store.path(&file.hash);
        let mode = if file.executable {
            READ_ONLY_EXEC
        } else {
            READ_ONLY
        };
        let mut hasher = BlobHasher::new();
        let (size, hash) =
            match super::sandbox::copy_file(&source, &dest, file.size, mode, Some(&mut hasher)) {
                Ok(copied) => copied,
                Err(PrepareError::Io { path, source: e })
                    if path == source && e.kind() == io::ErrorKind::NotFound =>
                {
                    return Err(PrepareError::MissingBlob(file.hash))
                }
                Err(e) => return Err(e),
            };
        // PA-6: size and hash, both.
        if size != file.size {
            let got = if size > file.size {
                format!("more than {}", file.size)
            } else {
                size.to_string()
            };
            return Err(PrepareError::BlobMismatch {
                hash: file.hash,
                reason: format!(
                    "{}: the store has {got} bytes, the descriptor says {}",
                    file.path, file.size
                ),
            });
        }
        if hash != Some(file.hash) {
            return Err(PrepareError::BlobMismatch {
                hash: file.hash,
                reason: format!(
                    "{}: the content hashes to {}",
                    file.path,
                    hash.map_or_else(String::new, |h| h.to_string())
                ),
            });
        }
    }
    Ok(())
}
