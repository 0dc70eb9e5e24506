//! Deferred deletion of sandboxes (PA-9): after an attempt's final transition its sandbox is
//! renamed out of the way at once (so the name is free again) and deleted by a background task,
//! retried with exponential backoff a bounded number of times, each failure logged. Whatever is
//! still pending when the runner shuts down is deleted before `shutdown` returns; what a failed
//! retry series leaves behind is wiped when the next runner starts.
//!
//! Deletion copes with what an action may leave: read-only files and directories (made writable
//! by their owner, through file descriptors opened without following symbolic links, then
//! deleted again) and symbolic links (deleted, never followed: `std::fs::remove_dir_all` works
//! with `openat`/`unlinkat`).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, error, warn, Instrument};

/// How many times a deletion is tried before it is given up (until the next start).
pub(crate) const MAX_ATTEMPTS: u32 = 8;
/// The wait after the first failed deletion; doubled after each further one.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Most directories visited when making a tree writable (bounds the walk).
const MAX_WALK: usize = 1_000_000;

/// Deletes `path` and everything under it, without following symbolic links. A missing path is
/// success. If a first try fails (a read-only directory, for one), the directories of the tree
/// are made writable by their owner and it is tried once more.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return ignore_missing(fs::remove_file(path));
    }
    match ignore_missing(fs::remove_dir_all(path)) {
        Ok(()) => Ok(()),
        Err(first) => {
            debug!(path = %path.display(), error = %first, "making a tree writable to delete it");
            make_writable(path);
            ignore_missing(fs::remove_dir_all(path))
        }
    }
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Adds u+rwx to every directory of the tree at `root` (best effort). Each directory is opened
/// with `O_NOFOLLOW | O_DIRECTORY` and changed through its descriptor, so a symbolic link is
/// never followed to change something outside.
fn make_writable(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK {
            warn!(path = %root.display(), "tree too large to make writable");
            return;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(&dir)
        else {
            continue;
        };
        if let Ok(meta) = file.metadata() {
            let mode = meta.permissions().mode();
            if mode & 0o700 != 0o700 {
                let _ = file.set_permissions(Permissions::from_mode((mode | 0o700) & 0o7777));
            }
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// The background deleter of sandboxes.
#[derive(Debug, Clone)]
pub(crate) struct Cleaner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where sandboxes are renamed to before deletion (same file system).
    trash_dir: PathBuf,
    next: AtomicU64,
    pending: Mutex<BTreeSet<PathBuf>>,
    handle: tokio::runtime::Handle,
}

impl Cleaner {
    /// A cleaner that renames sandboxes to `<trash_dir>/.deleting-<n>` and spawns its deletions
    /// on `handle`.
    pub(crate) fn new(trash_dir: PathBuf, handle: tokio::runtime::Handle) -> Cleaner {
        Cleaner {
            inner: Arc::new(Inner {
                trash_dir,
                next: AtomicU64::new(0),
                pending: Mutex::new(BTreeSet::new()),
                handle,
            }),
        }
    }

    /// Moves `sandbox` out of the way at once (its name can be used again) and returns where it
    /// went; it stays where it is if the rename fails.
    pub(crate) fn set_aside(&self, sandbox: &Path) -> PathBuf {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let trash = self.inner.trash_dir.join(format!(".deleting-{n}"));
        match fs::rename(sandbox, &trash) {
            Ok(()) => trash,
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    warn!(path = %sandbox.display(), %error, "could not set a sandbox aside");
                }
                sandbox.to_path_buf()
            }
        }
    }

    /// Deletes `path` in the background, with retries (PA-9).
    pub(crate) fn schedule(&self, path: PathBuf) {
        self.lock().insert(path.clone());
        let inner = self.inner.clone();
        let span = tracing::info_span!("sandbox_cleanup", path = %path.display());
        self.inner.handle.spawn(
            async move {
                let mut backoff = FIRST_BACKOFF;
                for attempt in 1..=MAX_ATTEMPTS {
                    let target = path.clone();
                    let result = tokio::task::spawn_blocking(move || remove_tree(&target))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)));
                    match result {
                        Ok(()) => {
                            debug!(attempt, "sandbox deleted");
                            inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
                            return;
                        }
                        Err(error) if attempt < MAX_ATTEMPTS => {
                            warn!(%error, attempt, retry_in_ms = backoff.as_millis() as u64, "could not delete a sandbox");
                            tokio::time::sleep(backoff).await;
                            backoff = backoff.saturating_mul(2);
                        }
                        Err(error) => {
                            error!(%error, attempt, "giving up deleting a sandbox; the next start wipes it");
                        }
                    }
                }
                inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
            }
            .instrument(span),
        );
    }

    /// How many deletions are pending.
    pub(crate) fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Deletes everything pending now, waiting for it; returns how many could not be deleted.
    pub(crate) async fn flush(&self) -> usize {
        let paths: Vec<PathBuf> = std::mem::take(&mut *self.lock()).into_iter().collect();
        let result = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .filter(|path| match remove_tree(path) {
                    Ok(()) => false,
                    Err(error) => {
                        error!(path = %path.display(), %error, "could not delete a sandbox");
                        true
                    }
                })
                .count()
        })
        .await;
        result.unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    // Attests PA-9
    #[test]
    fn read_only_trees_and_links_are_deleted_without_following() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        fs::set_permissions(&outside, Permissions::from_mode(0o500)).unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        fs::set_permissions(tree.join("a/b/f"), Permissions::from_mode(0o444)).unwrap();
        symlink(&outside, tree.join("a/link")).unwrap();
        fs::set_permissions(tree.join("a/b"), Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(tree.join("a"), Permissions::from_mode(0o500)).unwrap();

        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        // The link's target was neither deleted nor made writable.
        let mode = fs::metadata(&outside).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o500);
        // Missing is fine.
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn make_writable_fixes_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("a")).unwrap();
        fs::set_permissions(tree.join("a"), Permissions::from_mode(0o500)).unwrap();
        make_writable(&tree);
        let mode = fs::metadata(tree.join("a")).unwrap().permissions().mode();
        assert_eq!(mode & 0o700, 0o700);
    }
}
