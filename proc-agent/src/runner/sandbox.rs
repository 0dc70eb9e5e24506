//! Sandboxes and the file placement rules shared with the worker cache: every path is checked
//! lexically (SPEC-1) before anything is written, and on disk no existing component is ever
//! followed if it is a symbolic link (PA-5).
//!
//! ```text
//! <work_dir>/sandboxes/<lsn>-<attempt>/      one per attempt, fresh (PA-9)
//!   <worker files and directories>           hard links into <workers_dir>/<id>/ (or copies)
//!   <inputs>                                 hard links into the blob store (or copies)
//!   Outputs/                                 what the action leaves here is collected (PA-7)
//! ```
//!
//! Hard links share the inode with the worker cache or the blob store, so those files are made
//! read-only (0444, 0555 for executables) before they are linked: an action running as an
//! ordinary user cannot modify them in place. An action running as root can; only the isolated
//! mode (read-only binds) closes that.
//!
//! Races: the checks use `symlink_metadata` and then the path, so they rely on nobody else
//! writing into the directory while it is prepared. That holds: a sandbox is fresh and its
//! action has not started, and a worker's temporary directory is private to one preparer.
//! `create_dir`, `O_CREAT|O_EXCL` and `link` never follow a symbolic link in the last component.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use procmesh_protocol::cas::{BlobHash, BlobHasher};
use procmesh_protocol::spec::{validate_path, InputFile, OUTPUTS_DIR};
use procmesh_transport::BlobStore;

use super::cleanup::remove_tree;
use super::error::PrepareError;
use super::worker_cache::Worker;

/// Mode of a read-only file shared by hard link.
pub(crate) const READ_ONLY: u32 = 0o444;
/// Mode of a read-only executable shared by hard link.
pub(crate) const READ_ONLY_EXEC: u32 = 0o555;

/// Checks `rel` lexically (SPEC-1): relative, no `..`, `.` or empty component.
pub(crate) fn check_relative(rel: &str) -> Result<(), PrepareError> {
    validate_path(rel).map_err(|reason| PrepareError::unsafe_path(rel, reason.to_string()))
}

/// Whether `rel` lies in the runner's own `Outputs/` directory.
pub(crate) fn is_reserved(rel: &str) -> bool {
    rel == OUTPUTS_DIR
        || rel
            .strip_prefix(OUTPUTS_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Makes sure every component of `rel` is a real directory under `root`, creating the missing
/// ones; refuses a component that is a symbolic link or not a directory (PA-5). Returns the
/// full path.
pub(crate) fn ensure_dir(root: &Path, rel: &str) -> Result<PathBuf, PrepareError> {
    check_relative(rel)?;
    let mut path = root.to_path_buf();
    for component in rel.split('/') {
        path.push(component);
        ensure_component(&path, rel)?;
    }
    Ok(path)
}

/// Makes sure the parent directories of the file `rel` exist under `root` (as [`ensure_dir`])
/// and that nothing is at `rel` yet. Returns the full path of the file.
pub(crate) fn ensure_parent(root: &Path, rel: &str) -> Result<PathBuf, PrepareError> {
    check_relative(rel)?;
    let mut path = root.to_path_buf();
    let (parent, name) = match rel.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, rel),
    };
    if let Some(parent) = parent {
        for component in parent.split('/') {
            path.push(component);
            ensure_component(&path, rel)?;
        }
    }
    path.push(name);
    match fs::symlink_metadata(&path) {
        Ok(_) => Err(PrepareError::unsafe_path(rel, "something is already there")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
        Err(e) => Err(PrepareError::io(&path)(e)),
    }
}

/// One component: a directory that is not a symbolic link, created if missing.
fn ensure_component(path: &Path, rel: &str) -> Result<(), PrepareError> {
    // Two rounds: a concurrent creator of the same directory (sibling procs materialising a
    // shared parent) makes `create_dir` fail with AlreadyExists; then it is checked again.
    for _ in 0..2 {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // PA-5: never follow a link while creating.
                return Err(PrepareError::unsafe_path(
                    rel,
                    format!("{} is a symbolic link", path.display()),
                ));
            }
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(PrepareError::unsafe_path(
                    rel,
                    format!("{} is not a directory", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(PrepareError::io(path)(e)),
            },
            Err(e) => return Err(PrepareError::io(path)(e)),
        }
    }
    Err(PrepareError::unsafe_path(
        rel,
        format!("{} keeps changing", path.display()),
    ))
}

/// Checks that `rel` under `base` is a regular file of `size` bytes reached through real
/// directories only (no component is a symbolic link). Returns its full path.
pub(crate) fn checked_source(base: &Path, rel: &str, size: u64) -> Result<PathBuf, PrepareError> {
    check_relative(rel)?;
    let mut path = base.to_path_buf();
    let mut components = rel.split('/').peekable();
    while let Some(component) = components.next() {
        path.push(component);
        let meta = fs::symlink_metadata(&path).map_err(PrepareError::io(&path))?;
        if meta.file_type().is_symlink() {
            return Err(PrepareError::unsafe_path(
                rel,
                format!("{} is a symbolic link", path.display()),
            ));
        }
        let last = components.peek().is_none();
        if last && !meta.is_file() {
            return Err(PrepareError::unsafe_path(
                rel,
                format!("{} is not a regular file", path.display()),
            ));
        }
        if last && meta.len() != size {
            return Err(PrepareError::unsafe_path(
                rel,
                format!(
                    "{} has {} bytes, expected {size}",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        if !last && !meta.is_dir() {
            return Err(PrepareError::unsafe_path(
                rel,
                format!("{} is not a directory", path.display()),
            ));
        }
    }
    Ok(path)
}

/// The store's file for `hash`, checked to be a regular file of `size` bytes, and made
/// read-only so that hard links to it cannot change it in place (PA-6).
pub(crate) fn store_blob(
    store: &BlobStore,
    hash: &BlobHash,
    size: u64,
) -> Result<PathBuf, PrepareError> {
    let path = store.path(hash);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PrepareError::MissingBlob(*hash))
        }
        Err(e) => return Err(PrepareError::io(&path)(e)),
    };
    if !meta.is_file() {
        return Err(PrepareError::BlobMismatch {
            hash: *hash,
            reason: "the store holds something other than a regular file".into(),
        });
    }
    if meta.len() != size {
        return Err(PrepareError::BlobMismatch {
            hash: *hash,
            reason: format!("it has {} bytes, expected {size}", meta.len()),
        });
    }
    if meta.permissions().mode() & 0o222 != 0 {
        fs::set_permissions(&path, Permissions::from_mode(READ_ONLY))
            .map_err(PrepareError::io(&path))?;
    }
    Ok(path)
}

/// Places `source` at `dest` (which must not exist): a hard link when possible, else a copy
/// of exactly `size` bytes with `mode`.
pub(crate) fn link_or_copy(
    source: &Path,
    dest: &Path,
    size: u64,
    mode: u32,
) -> Result<(), PrepareError> {
    match fs::hard_link(source, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PrepareError::Io {
            path: dest.to_owned(),
            source: e,
        }),
        // EXDEV (another file system), EMLINK (too many links), EPERM (protected links): copy.
        Err(_) => {
            let copied = copy_file(source, dest, size, mode, None)?;
            if copied.0 != size {
                return Err(PrepareError::unsafe_path(
                    &dest.display().to_string(),
                    format!("copied {} bytes, expected {size}", copied.0),
                ));
            }
            Ok(())
        }
    }
}

/// Copies at most `limit + 1` bytes of `source` (opened without following a final symbolic
/// link) to a new file `dest` with `mode`, hashing them if `hasher` is given. Returns the bytes
/// copied and the hash (of the copied bytes) when hashing.
pub(crate) fn copy_file(
    source: &Path,
    dest: &Path,
    limit: u64,
    mode: u32,
    hasher: Option<&mut BlobHasher>,
) -> Result<(u64, Option<BlobHash>), PrepareError> {
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(source)
        .map_err(PrepareError::io(source))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(PrepareError::io(dest))?;
    let mut reader = src.take(limit.saturating_add(1));
    let (copied, hash) = match hasher {
        None => (
            io::copy(&mut reader, &mut out).map_err(PrepareError::io(dest))?,
            None,
        ),
        Some(hasher) => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut copied = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(PrepareError::io(source)(e)),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(PrepareError::io(dest))?;
                copied += n as u64;
            }
            (copied, Some(hasher.finalize()))
        }
    };
    set_mode(&out, dest, mode)?;
    Ok((copied, hash))
}

fn set_mode(file: &File, path: &Path, mode: u32) -> Result<(), PrepareError> {
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(PrepareError::io(path))
}

/// One attempt's sandbox directory.
#[derive(Debug)]
pub(crate) struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    /// Creates the fresh directory `<sandboxes>/<name>`; a leftover of the same name is deleted
    /// first (PA-9), so nothing an earlier action left (a symbolic link among them) is reused.
    pub(crate) fn create(sandboxes: &Path, name: &str) -> Result<Sandbox, PrepareError> {
        let root = sandboxes.join(name);
        match fs::symlink_metadata(&root) {
            Ok(_) => remove_tree(&root).map_err(PrepareError::io(&root))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrepareError::io(&root)(e)),
        }
        fs::create_dir(&root).map_err(PrepareError::io(&root))?;
        Ok(Sandbox { root })
    }

    /// The sandbox directory (absolute if the sandboxes directory is).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Its `Outputs/` directory.
    pub(crate) fn outputs(&self) -> PathBuf {
        self.root.join(OUTPUTS_DIR)
    }

    /// Fills the sandbox: `Outputs/`, the worker's directories and files (from its cache
    /// directory), the inputs (from the store, size checked). Every path is checked lexically
    /// before the first write (PA-5). With `share`, files are hard links into the cache and
    /// the store (for actions that cannot write them: read-only binds); without, they are
    /// copies verified against their hash (ISO-3), so that what an action does to its copy
    /// never reaches the cache or the store, and a damaged cache entry is noticed.
    pub(crate) fn materialise(
        &self,
        worker: &Worker,
        inputs: &[InputFile],
        store: &BlobStore,
        share: bool,
    ) -> Result<(), PrepareError> {
        let descriptor = &worker.descriptor;
        // PA-5: every path first, before anything is written.
        let worker_paths = descriptor
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(descriptor.directories.iter().map(String::as_str));
        for rel in worker_paths {
            check_relative(rel)?;
            if is_reserved(rel) {
                return Err(PrepareError::unsafe_path(
                    rel,
                    "a worker may not place files in the reserved Outputs/ directory",
                ));
            }
        }
        for input in inputs {
            check_relative(&input.path)?;
            if is_reserved(&input.path) {
                return Err(PrepareError::unsafe_path(
                    &input.path,
                    "an input may not be placed in the reserved Outputs/ directory",
                ));
            }
        }

        ensure_dir(&self.root, OUTPUTS_DIR)?;
        for dir in &descriptor.directories {
            ensure_dir(&self.root, dir)?;
        }
        for file in &descriptor.files {
            let source = checked_source(&worker.dir, &file.path, file.size)?;
            let dest = ensure_parent(&self.root, &file.path)?;
            let mode = if file.executable {
                READ_ONLY_EXEC
            } else {
                READ_ONLY
            };
            if share {
                link_or_copy(&source, &dest, file.size, mode)?;
            } else {
                copy_verified(&source, &dest, file.size, &file.hash, mode)?;
            }
        }
        for input in inputs {
            let source = store_blob(store, &input.hash, input.size)?;
            let dest = ensure_parent(&self.root, &input.path).map_err(|e| match e {
                PrepareError::UnsafePath { path, reason } => PrepareError::UnsafePath {
                    path,
                    reason: format!("input: {reason}"),
                },
                other => other,
            })?;
            if share {
                link_or_copy(&source, &dest, input.size, READ_ONLY)?;
            } else {
                copy_verified(&source, &dest, input.size, &input.hash, READ_ONLY)?;
            }
        }
        Ok(())
    }
}

/// Copies `source` to the new file `dest` with `mode`, and checks that exactly `size` bytes
/// hashing to `hash` were copied (ISO-3).
fn copy_verified(
    source: &Path,
    dest: &Path,
    size: u64,
    hash: &BlobHash,
    mode: u32,
) -> Result<(), PrepareError> {
    let mut hasher = BlobHasher::new();
    let (copied, got) = copy_file(source, dest, size, mode, Some(&mut hasher))?;
    if copied != size || got.as_ref() != Some(hash) {
        return Err(PrepareError::BlobMismatch {
            hash: *hash,
            reason: format!(
                "{} does not hold these bytes any more ({copied} bytes, hash {})",
                source.display(),
                got.map(|h| h.to_string()).unwrap_or_default()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    // Attests PA-5
    #[test]
    fn existing_symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("link")).unwrap();
        symlink(outside.join("file"), root.join("dangling")).unwrap();

        let err = ensure_parent(&root, "link/x").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = ensure_dir(&root, "link/sub").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = ensure_parent(&root, "dangling").unwrap_err();
        assert!(err.to_string().contains("already there"), "{err}");
        let err = checked_source(&root, "link/x", 0).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        for bad in ["../x", "/etc/x", "a/../../x", ""] {
            assert!(ensure_parent(&root, bad).is_err(), "{bad:?}");
            assert!(ensure_dir(&root, bad).is_err(), "{bad:?}");
        }
        // Nothing was written outside, nor anything followed.
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!tmp.path().join("x").exists());

        // A regular file in the way of a directory.
        fs::write(root.join("plain"), b"x").unwrap();
        let err = ensure_parent(&root, "plain/x").unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        // The happy path creates the parents.
        let dest = ensure_parent(&root, "a/b/c.txt").unwrap();
        assert_eq!(dest, root.join("a/b/c.txt"));
        assert!(root.join("a/b").is_dir());
    }

    #[test]
    fn reserved_outputs() {
        assert!(is_reserved("Outputs"));
        assert!(is_reserved("Outputs/x"));
        assert!(!is_reserved("Outputs2"));
        assert!(!is_reserved("x/Outputs"));
    }

    // Attests PA-6
    #[test]
    fn copies_are_bounded_and_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::write(&src, b"hello world").unwrap();
        let mut hasher = BlobHasher::new();
        let (n, hash) =
            copy_file(&src, &tmp.path().join("dst"), 5, 0o444, Some(&mut hasher)).unwrap();
        // At most limit + 1 bytes are read, so an oversized blob is seen without reading it all.
        assert_eq!(n, 6);
        assert_eq!(hash, Some(BlobHash::of(b"hello ")));
        let mode = fs::metadata(tmp.path().join("dst"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
    }
}
