//! Revoked certificate serials, read from a file and re-read when it changes (TLS-6).
//!
//! ```text
//! # one serial per line, hex (any case, ':' separators allowed), '#' starts a comment
//! 3a0c19e2…
//! ```
//!
//! A malformed line is an error naming the file and the line when the list is first loaded;
//! on a later reload a malformed (or vanished) file keeps the previous list and is logged.
//! Serials compare in a normal form (lowercase, no separators, no leading zeros), so the
//! serial a certificate reports ([`PeerIdentity::serial`](crate::PeerIdentity::serial)) matches
//! however an operator wrote it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::tls::TlsError;

/// How often [`Revocations::watch`] looks at the file.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// A shared, cheaply cloned list of revoked certificate serials.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

struct Inner {
    path: Option<PathBuf>,
    serials: RwLock<Arc<BTreeSet<String>>>,
    /// The content last loaded (changes are detected by content, whatever mtime says).
    last: Mutex<Option<Vec<u8>>>,
    /// Bumped on every change of the list.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.inner.path)
            .field("serials", &self.len())
            .finish()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::from_serials(std::iter::empty::<String>())
    }
}

/// The normal form of a serial: lowercase hex without separators or leading zeros.
pub(crate) fn normal_serial(serial: &str) -> Option<String> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

fn parse(path: &Path, text: &[u8]) -> Result<BTreeSet<String>, TlsError> {
    let text = std::str::from_utf8(text).map_err(|e| TlsError::Revocations {
        path: path.display().to_string(),
        line: 0,
        reason: format!("not UTF-8: {e}"),
    })?;
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let serial = normal_serial(line).ok_or_else(|| TlsError::Revocations {
            path: path.display().to_string(),
            line: i + 1,
            reason: format!("{line:?} is not a hex certificate serial"),
        })?;
        out.insert(serial);
    }
    Ok(out)
}

impl Revocations {
    /// A fixed list (no file).
    pub fn from_serials<S: AsRef<str>>(serials: impl IntoIterator<Item = S>) -> Revocations {
        let set = serials
            .into_iter()
            .filter_map(|s| normal_serial(s.as_ref()))
            .collect();
        Revocations {
            inner: Arc::new(Inner {
                path: None,
                serials: RwLock::new(Arc::new(set)),
                last: Mutex::new(None),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// Loads the list from `path`: one serial per line, hex, `#` comments, blank lines
    /// allowed. A malformed line is an error naming the file and line.
    pub fn load(path: impl Into<PathBuf>) -> Result<Revocations, TlsError> {
        let path = path.into();
        let text = std::fs::read(&path).map_err(|source| TlsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let set = parse(&path, &text)?;
        Ok(Revocations {
            inner: Arc::new(Inner {
                path: Some(path),
                serials: RwLock::new(Arc::new(set)),
                last: Mutex::new(Some(text)),
                changed: watch::channel(0).0,
            }),
        })
    }

    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        normal_serial(serial).is_some_and(|s| self.snapshot().contains(&s))
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file the list comes from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn snapshot(&self) -> Arc<BTreeSet<String>> {
        self.inner.serials.read().expect("lock").clone()
    }

    /// Replaces the list (tests, or a caller with its own source); notifies watchers.
    pub fn replace<S: AsRef<str>>(&self, serials: impl IntoIterator<Item = S>) {
        let set = serials
            .into_iter()
            .filter_map(|s| normal_serial(s.as_ref()))
            .collect();
        *self.inner.serials.write().expect("lock") = Arc::new(set);
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// Re-reads the file if its content changed. `Ok(true)`: the list changed. A malformed or
    /// unreadable file is an error and the previous list stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(path) = &self.inner.path else {
            return Ok(false);
        };
        let text = std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        {
            let last = self.inner.last.lock().expect("lock");
            if last.as_deref() == Some(&text[..]) {
                return Ok(false);
            }
        }
        let set = parse(path, &text)?;
        *self.inner.last.lock().expect("lock") = Some(text);
        let changed = *self.snapshot() != set;
        if changed {
            *self.inner.serials.write().expect("lock") = Arc::new(set);
            self.inner.changed.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// Polls the file every [`REVOCATION_POLL`] (content compared, so any edit counts) and
    /// reloads it when it changed; a bad file is logged and the previous list kept. The task
    /// ends when every clone of this list is dropped, or when the returned handle is aborted
    /// (a node aborts its own at shutdown).
    pub fn watch(&self) -> tokio::task::AbortHandle {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut last_error: Option<String> = None;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REVOCATION_POLL).await;
                let Some(inner) = weak.upgrade() else { return };
                let list = Revocations { inner };
                let path = list.path().map(|p| p.display().to_string());
                // File reads are small; keep them off the async workers anyway.
                let reloading = list.clone();
                let result = tokio::task::spawn_blocking(move || reloading.reload())
                    .await
                    .unwrap_or(Ok(false));
                match result {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(?path, revoked = list.len(), "revocation list reloaded");
                    }
                    Ok(false) => last_error = None,
                    Err(error) => {
                        let text = error.to_string();
                        if last_error.as_deref() != Some(&text) {
                            tracing::warn!(%error, "revocation list not reloaded; keeping the previous one");
                            last_error = Some(text);
                        }
                    }
                }
            }
        })
        .abort_handle()
    }

    /// Notified on every change of the list.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_parse_with_comments_and_bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        std::fs::write(&path, "# revoked\n\n00AB:cd  # old laptop\n  1f\n").unwrap();
        let list = Revocations::load(&path).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains("abcd") && list.contains("00abcd") && list.contains("1F"));
        assert!(!list.contains("ab"));

        std::fs::write(&path, "abcd\nnot-hex\n").unwrap();
        let err = list.reload().unwrap_err().to_string();
        assert!(
            err.contains("revoked:2:") && err.contains("not-hex"),
            "{err}"
        );
        // The previous list stays.
        assert!(list.contains("1f"));
        let err = Revocations::load(&path).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");

        std::fs::write(&path, "1f\n").unwrap();
        assert!(list.reload().unwrap());
        assert!(!list.contains("abcd") && list.contains("1f"));
        assert!(!list.reload().unwrap());
    }
}
