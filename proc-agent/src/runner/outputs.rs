//! Collecting an action's `Outputs/` into the blob store (PA-7).
//!
//! The tree is walked without following symbolic links: only regular files are taken. A
//! symbolic link (which could point anywhere, `/etc/shadow` included) — `Outputs` itself
//! included, if the action replaced it by one —, a FIFO, socket or device, and a name that is not
//! UTF-8 are skipped and named in a note that the runner appends to the transition's reason; the
//! action still completes. Directories are listed by path after their entry was seen as a
//! directory (not a link); only a process that escaped the action's group could swap one in
//! between, and files are opened with `O_NOFOLLOW` regardless. Each file is opened with `O_NOFOLLOW`, hashed
//! from that descriptor and stored from it, so its path is not resolved twice.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use procmesh_protocol::cas::{BlobHash, BlobHasher};
use procmesh_protocol::spec::{OutputFile, OUTPUTS_DIR};
use procmesh_transport::BlobStore;

use super::error::PrepareError;

/// Most entries looked at in one `Outputs/` tree (bounds the walk).
pub(crate) const MAX_ENTRIES: usize = 1_000_000;
/// How many skipped names a note lists.
const NOTE_NAMES: usize = 5;

/// What was collected.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// The stored files, sorted by path.
    pub(crate) files: Vec<OutputFile>,
    /// What was skipped and why, e.g. `symbolic link`, with the path.
    pub(crate) skipped: Vec<Skipped>,
}

impl Collected {
    /// A one-line note about what was skipped, if anything was.
    pub(crate) fn note(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .skipped
            .iter()
            .take(NOTE_NAMES)
            .map(|(path, why)| format!("{path} ({why})"))
            .collect();
        let more = self.skipped.len().saturating_sub(NOTE_NAMES);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Some(format!(
            "skipped {} output(s) that are not regular files: {}{more}",
            self.skipped.len(),
            names.join(", ")
        ))
    }
}

/// A skipped entry: its path relative to `Outputs/`, and why.
type Skipped = (String, &'static str);
/// A regular file found: its path relative to `Outputs/`, and its full path.
type Found = (String, PathBuf);

/// Whether `dir` is a real directory (not a link to one) with no entries.
fn is_empty_dir(dir: &Path) -> bool {
    fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// The regular files under `dir` (relative path and full path, sorted) and what was skipped.
fn walk(dir: &Path) -> Result<(Vec<Found>, Vec<Skipped>), PrepareError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    // The action may have replaced Outputs/ itself: it must still be a real directory.
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            skipped.push((OUTPUTS_DIR.to_owned(), "symbolic link"));
            return Ok((files, skipped));
        }
        Ok(meta) if !meta.is_dir() => {
            skipped.push((OUTPUTS_DIR.to_owned(), "not a directory"));
            return Ok((files, skipped));
        }
        Ok(_) => {}
        // Removed by the action: nothing to collect.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((files, skipped)),
        Err(e) => return Err(PrepareError::io(dir)(e)),
    }
    let mut stack: Vec<Found> = vec![(String::new(), dir.to_path_buf())];
    let mut seen = 0usize;
    while let Some((prefix, path)) = stack.pop() {
        let entries = fs::read_dir(&path).map_err(PrepareError::io(&path))?;
        for entry in entries {
            let entry = entry.map_err(PrepareError::io(&path))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(PrepareError::unsafe_path(
                    "Outputs",
                    format!("more than {MAX_ENTRIES} entries"),
                ));
            }
            let name = entry.file_name();
            let rel_name = name.to_string_lossy();
            let rel = if prefix.is_empty() {
                rel_name.to_string()
            } else {
                format!("{prefix}/{rel_name}")
            };
            if name.to_str().is_none() {
                skipped.push((rel, "name is not UTF-8"));
                continue;
            }
            // The d_type of the directory entry: a symbolic link is seen as one, not followed.
            let kind = entry.file_type().map_err(PrepareError::io(&entry.path()))?;
            if kind.is_symlink() {
                skipped.push((rel, "symbolic link"));
            } else if kind.is_dir() {
                stack.push((rel, entry.path()));
            } else if kind.is_file() {
                files.push((rel, entry.path()));
            } else {
                skipped.push((rel, "special file"));
            }
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// Opens `path` without following a symbolic link and hashes it; returns the file rewound.
fn open_and_hash(path: &Path) -> Result<(std::fs::File, BlobHash, u64), PrepareError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(PrepareError::io(path))?;
    let mut hasher = BlobHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PrepareError::io(path)(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    file.rewind().map_err(PrepareError::io(path))?;
    Ok((file, hasher.finalize(), size))
}

/// Puts every regular file under `dir` into `store` (PA-7).
pub(crate) async fn collect(dir: PathBuf, store: &BlobStore) -> Result<Collected, PrepareError> {
    // Most actions leave `Outputs/` empty: told at once, without a hop to a blocking thread.
    if is_empty_dir(&dir) {
        return Ok(Collected::default());
    }
    let walk_dir = dir.clone();
    let (files, skipped) = tokio::task::spawn_blocking(move || walk(&walk_dir))
        .await
        .map_err(|e| PrepareError::Io {
            path: dir.clone(),
            source: io::Error::other(e),
        })??;
    let mut collected = Collected {
        files: Vec::with_capacity(files.len()),
        skipped,
    };
    for (rel, path) in files {
        let hash_path = path.clone();
        let (file, hash, size) = tokio::task::spawn_blocking(move || open_and_hash(&hash_path))
            .await
            .map_err(|e| PrepareError::Io {
                path: path.clone(),
                source: io::Error::other(e),
            })??;
        if !store.contains(&hash) {
            store
                .put(hash, size, tokio::fs::File::from_std(file))
                .await
                .map_err(|e| PrepareError::Io {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        collected.files.push(OutputFile {
            path: rel,
            hash,
            size,
        });
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    // Attests PA-7
    #[tokio::test]
    async fn only_regular_files_are_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("store")).unwrap();
        let out = tmp.path().join("Outputs");
        fs::create_dir_all(out.join("sub/deeper")).unwrap();
        fs::write(out.join("b.txt"), b"bee").unwrap();
        fs::write(out.join("sub/a.txt"), b"ay").unwrap();
        fs::write(out.join("sub/deeper/c"), b"").unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, b"top secret").unwrap();
        symlink(&secret, out.join("leak")).unwrap();
        symlink(tmp.path(), out.join("sub/dirlink")).unwrap();
        nix::unistd::mkfifo(&out.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let collected = collect(out, &store).await.unwrap();
        let paths: Vec<&str> = collected.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["b.txt", "sub/a.txt", "sub/deeper/c"]);
        assert_eq!(collected.files[0].hash, BlobHash::of(b"bee"));
        assert_eq!(collected.files[0].size, 3);
        assert!(store.contains(&BlobHash::of(b"ay")));
        assert!(!store.contains(&BlobHash::of(b"top secret")));
        let note = collected.note().unwrap();
        assert!(note.contains("leak (symbolic link)"), "{note}");
        assert!(note.contains("sub/dirlink (symbolic link)"), "{note}");
        assert!(note.contains("fifo (special file)"), "{note}");
    }
}
