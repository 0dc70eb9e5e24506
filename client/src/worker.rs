//! Packaging local files into a worker: [`WorkerBuilder`] collects files (from disk or memory)
//! under their in-worker paths, [`WorkerBuilder::prepare`] hashes and validates them into a
//! [`PreparedWorker`] — the descriptor plus where each blob's bytes come from — which
//! [`Client::register_worker`](crate::Client::register_worker) registers, uploading only the
//! blobs the orchestrator lacks.
//!
//! Also [`input_file`]: one local file as an action input, hashed and path-checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use procmesh_protocol::spec::{validate_path, OUTPUTS_DIR};
use procmesh_protocol::{BlobHash, InputFile, SpecError, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_transport::blob::hash_file;

use crate::error::ClientError;

/// Where the bytes of one worker file or input come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// A local file.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
}

impl BlobSource {
    /// A description for error messages.
    pub fn describe(&self) -> PathBuf {
        match self {
            BlobSource::File(path) => path.clone(),
            BlobSource::Bytes(bytes) => PathBuf::from(format!("<{} bytes in memory>", bytes.len())),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    source: BlobSource,
    executable: Option<bool>,
}

/// Builds a worker package from local files and in-memory content.
///
/// ```no_run
/// # async fn f(client: &procmesh_client::Client) -> Result<(), procmesh_client::ClientError> {
/// use procmesh_client::WorkerBuilder;
/// let worker = WorkerBuilder::new()
///     .bytes("run.sh", b"#!/bin/sh\necho hello \"$@\"\n".to_vec(), true)
///     .file("/usr/share/dict/words", "data/words")
///     .env("LANG", "C.UTF-8")
///     .executable("run.sh");
/// let id = client.register_worker(&worker).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct WorkerBuilder {
    entries: Vec<Entry>,
    directories: Vec<String>,
    env: BTreeMap<String, String>,
    executable: Option<String>,
    host_program: Option<String>,
}

impl WorkerBuilder {
    /// An empty package.
    pub fn new() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A package of one local program, placed at `bin/<file name>` and run.
    pub fn program(local: impl AsRef<Path>) -> WorkerBuilder {
        let local = local.as_ref();
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".to_owned());
        let path = format!("bin/{name}");
        WorkerBuilder::new()
            .executable_file(local, path.clone())
            .executable(path)
    }

    /// Adds the local file `local` at `path` in the worker directory; it gets the executable
    /// bit if the local file has any.
    pub fn file(mut self, local: impl Into<PathBuf>, path: impl Into<String>) -> Self {
        self.entries.push(Entry {
            path: path.into(),
            source: BlobSource::File(local.into()),
            executable: None,
        });
        self
    }

    /// Adds the local file `local` at `path`, with the executable bit.
    pub fn executable_file(mut self, local: impl Into<PathBuf>, path: impl Into<String>) -> Self {
        self.entries.push(Entry {
            path: path.into(),
            source: BlobSource::File(local.into()),
            executable: Some(true),
        });
        self
    }

    /// Adds `content` at `path`.
    pub fn bytes(mut self, path: impl Into<String>, content: Vec<u8>, executable: bool) -> Self {
        self.entries.push(Entry {
            path: path.into(),
            source: BlobSource::Bytes(content.into()),
            executable: Some(executable),
        });
        self
    }

    /// Adds an empty directory at `path`.
    pub fn directory(mut self, path: impl Into<String>) -> Self {
        self.directories.push(path.into());
        self
    }

    /// Sets an environment variable for every action of the worker.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Runs `path`, an executable that lives on the host (e.g. `/usr/bin/gcc`), instead of a
    /// file of the package; the host runs it only from its `allowed_host_programs` roots. The
    /// package's files (sources, say) are still placed in the sandbox.
    pub fn host_program(mut self, path: impl Into<String>) -> Self {
        self.host_program = Some(path.into());
        self
    }

    /// Names the file to run (one of the files; it gets the executable bit).
    pub fn executable(mut self, path: impl Into<String>) -> Self {
        self.executable = Some(path.into());
        self
    }

    /// Hashes every file and validates the package (SPEC-1, SPEC-3), touching nothing remote.
    pub async fn prepare(&self) -> Result<PreparedWorker, ClientError> {
        let named = match &self.host_program {
            Some(_) => Some(String::new()),
            None => self.executable.clone(),
        };
        let executable = named
            .or_else(|| match self.entries.as_slice() {
                [only] => Some(only.path.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                ClientError::Config(
                    "the worker names no executable (WorkerBuilder::executable)".into(),
                )
            })?;
        let mut files = Vec::with_capacity(self.entries.len());
        let mut sources = BTreeMap::new();
        for entry in &self.entries {
            check_path(&entry.path)?;
            let (hash, size, local_exec) = match &entry.source {
                BlobSource::File(local) => {
                    let (hash, size) = hash_file(local).await.map_err(|e| ClientError::Upload {
                        path: local.clone(),
                        error: e,
                    })?;
                    (hash, size, is_executable(local)?)
                }
                BlobSource::Bytes(bytes) => (BlobHash::of(bytes), bytes.len() as u64, false),
            };
            let executable = entry.path == executable || entry.executable.unwrap_or(local_exec);
            files.push(WorkerFile {
                path: entry.path.clone(),
                hash,
                size,
                executable,
            });
            sources.entry(hash).or_insert_with(|| entry.source.clone());
        }
        for dir in &self.directories {
            check_path(dir)?;
        }
        let descriptor = WorkerDescriptor {
            executable,
            files,
            directories: self.directories.clone(),
            env: self.env.clone(),
            host_program: self.host_program.clone(),
        };
        descriptor.validate().map_err(|error| ClientError::Spec {
            what: "worker",
            error,
        })?;
        Ok(PreparedWorker {
            id: descriptor.id(),
            descriptor,
            sources,
        })
    }
}

fn is_executable(path: &Path) -> Result<bool, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(ClientError::io(path))?;
    Ok(meta.permissions().mode() & 0o111 != 0)
}

fn check_path(path: &str) -> Result<(), ClientError> {
    validate_path(path).map_err(|reason| ClientError::Path {
        path: path.to_owned(),
        reason,
    })
}

/// A hashed, validated worker package: its descriptor and where each blob comes from.
#[derive(Debug, Clone)]
pub struct PreparedWorker {
    id: WorkerId,
    descriptor: WorkerDescriptor,
    sources: BTreeMap<BlobHash, BlobSource>,
}

impl PreparedWorker {
    /// The worker's id (the hash of its descriptor, SPEC-2).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &WorkerDescriptor {
        &self.descriptor
    }

    /// Where the bytes of `hash` come from.
    pub fn source(&self, hash: &BlobHash) -> Option<&BlobSource> {
        self.sources.get(hash)
    }
}

/// Hashes the local file `local` as the input `path` of an action, checking the path
/// (SPEC-1, and not inside `Outputs/`).
pub async fn input_file(path: &str, local: &Path) -> Result<InputFile, ClientError> {
    check_input_path(path)?;
    let (hash, size) = hash_file(local).await.map_err(|e| ClientError::Upload {
        path: local.to_owned(),
        error: e,
    })?;
    Ok(InputFile {
        path: path.to_owned(),
        hash,
        size,
    })
}

/// Checks that `path` may hold an action input.
pub fn check_input_path(path: &str) -> Result<(), ClientError> {
    check_path(path)?;
    if path == OUTPUTS_DIR || path.starts_with("Outputs/") {
        return Err(ClientError::Spec {
            what: "action",
            error: SpecError::Reserved(path.to_owned()),
        });
    }
    Ok(())
}

/// The distinct hashes of `inputs`, in order of first appearance.
pub(crate) fn distinct_hashes<'a>(hashes: impl IntoIterator<Item = &'a BlobHash>) -> Vec<BlobHash> {
    let mut seen = BTreeSet::new();
    hashes
        .into_iter()
        .filter(|h| seen.insert(**h))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_hashed_and_modes_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, b"data").unwrap();

        let worker = WorkerBuilder::new()
            .file(&tool, "bin/tool")
            .file(&data, "share/data")
            .bytes("share/inline", b"data".to_vec(), false)
            .directory("cache")
            .env("LANG", "C")
            .executable("bin/tool")
            .prepare()
            .await
            .unwrap();
        let d = worker.descriptor();
        assert_eq!(d.executable, "bin/tool");
        assert_eq!(d.files.len(), 3);
        assert!(d.files[0].executable);
        assert!(!d.files[1].executable);
        assert_eq!(d.files[1].hash, BlobHash::of(b"data"));
        assert_eq!(d.files[1].size, 4);
        // Same content, one blob.
        assert_eq!(d.blobs().len(), 2);
        assert_eq!(worker.id(), d.id());
        assert!(matches!(
            worker.source(&BlobHash::of(b"data")),
            Some(BlobSource::File(p)) if p == &data
        ));
    }

    #[tokio::test]
    async fn the_executable_gets_its_bit_and_programs_land_in_bin() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job.sh");
        std::fs::write(&script, b"echo").unwrap(); // mode 0644
        let worker = WorkerBuilder::program(&script).prepare().await.unwrap();
        assert_eq!(worker.descriptor().executable, "bin/job.sh");
        assert!(worker.descriptor().files[0].executable);
        // A single file is the executable even when not named.
        let single = WorkerBuilder::new()
            .bytes("run", b"x".to_vec(), false)
            .prepare()
            .await
            .unwrap();
        assert_eq!(single.descriptor().executable, "run");
        assert!(single.descriptor().files[0].executable);
    }

    #[tokio::test]
    async fn bad_packages_are_refused_before_anything_is_sent() {
        let err = WorkerBuilder::new()
            .bytes("../escape", b"x".to_vec(), true)
            .executable("../escape")
            .prepare()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "bad_path");
        let err = WorkerBuilder::new()
            .bytes("a", b"x".to_vec(), true)
            .bytes("a", b"y".to_vec(), true)
            .executable("a")
            .prepare()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "duplicate_path");
        let err = WorkerBuilder::new()
            .bytes("a", b"x".to_vec(), true)
            .executable("b")
            .prepare()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "missing_executable");
        let err = WorkerBuilder::new()
            .bytes("a", b"x".to_vec(), true)
            .bytes("b", b"x".to_vec(), true)
            .prepare()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "config");
        let err = WorkerBuilder::new()
            .file("/nonexistent/procmesh", "a")
            .prepare()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/procmesh"), "{err}");
    }

    #[tokio::test]
    async fn inputs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("in");
        std::fs::write(&local, b"abc").unwrap();
        let input = input_file("in/x", &local).await.unwrap();
        assert_eq!((input.hash, input.size), (BlobHash::of(b"abc"), 3));
        assert_eq!(
            input_file("Outputs/x", &local).await.unwrap_err().code(),
            "reserved_path"
        );
        assert_eq!(
            input_file("/abs", &local).await.unwrap_err().code(),
            "bad_path"
        );
        let h = BlobHash::of(b"a");
        let g = BlobHash::of(b"b");
        assert_eq!(distinct_hashes([&h, &g, &h]), vec![h, g]);
    }
}
