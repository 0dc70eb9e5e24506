//! The host's node identity: its name, and the node secret it keeps in its state directory.
//!
//! ```text
//! node name   = the name in the host's certificate (a per-node certificate), else
//!               config node_name (--node-name), else the machine's hostname
//! node secret = <state_dir>/node.secret: 32 random bytes drawn at first start (OS CSPRNG),
//!               written 0600 (temp file, fsync, rename), read back on every later start
//! ```
//!
//! With a fleet-wide host certificate (no name in it) the host sends its secret (hex) with its
//! first `RegisterHost`; the orchestrator binds the node's name and address to it, and every
//! later connection of the host proves it in its hello (`node_claim`), so no other holder of
//! the shared certificate can speak for this node. A host whose certificate names its node
//! proves who it is by the certificate alone and never sends the secret.
//!
//! # Invariants
//! - **HST-21** The node secret is drawn once and kept: every later start reads the same 32
//!   bytes. A `node.secret` that is not a regular file of exactly 32 bytes, or that its group
//!   or others may read or write, stops the host from starting with an error naming the file
//!   (it is never silently replaced).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The length of a node secret.
pub const NODE_SECRET_LEN: usize = 32;

/// A problem with `node.secret`.
#[derive(Debug, thiserror::Error)]
#[error("node secret {path}: {reason}")]
pub struct NodeSecretError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// HST-21: the node secret at `path`, drawn and written there if there is none.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; NODE_SECRET_LEN], NodeSecretError> {
    let err = |reason: String| NodeSecretError {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(err("not a regular file".into()));
            }
            if meta.len() != NODE_SECRET_LEN as u64 {
                return Err(err(format!(
                    "{} bytes, not {NODE_SECRET_LEN}: remove it to draw a new one (the \
                     orchestrator will then refuse this node until its binding is reset)",
                    meta.len()
                )));
            }
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {mode:03o} lets others read it: chmod 600 it (or rotate it if it \
                     may have leaked)"
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            bytes
                .try_into()
                .map_err(|_| err("changed size while being read".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; NODE_SECRET_LEN];
            getrandom::getrandom(&mut secret).map_err(|e| err(format!("no randomness: {e}")))?;
            let tmp = path.with_extension("secret.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
            file.write_all(&secret)
                .and_then(|()| file.sync_all())
                .map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                if let Ok(dir) = std::fs::File::open(dir) {
                    let _ = dir.sync_all();
                }
            }
            tracing::info!(path = %path.display(), "drew a new node secret");
            Ok(secret)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex characters.
pub(crate) fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The node's name: the certificate's, else the configured one, else the hostname.
pub(crate) fn node_name(cert: Option<&str>, configured: Option<&str>, hostname: &str) -> String {
    cert.or(configured)
        .filter(|n| !n.is_empty())
        .unwrap_or(hostname)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    // Attests HST-21
    #[test]
    fn the_node_secret_is_drawn_once_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.secret");
        let first = load_or_create_secret(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        // Readable by others: refused, not replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_secret(&path).unwrap_err();
        assert!(e.to_string().contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The wrong size: refused.
        std::fs::write(&path, b"short").unwrap();
        let e = load_or_create_secret(&path).unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn the_node_name_prefers_the_certificate() {
        assert_eq!(node_name(Some("a"), Some("b"), "h"), "a");
        assert_eq!(node_name(None, Some("b"), "h"), "b");
        assert_eq!(node_name(None, None, "h"), "h");
        assert_eq!(node_name(None, Some(""), "h"), "h");
    }

    #[test]
    fn keys_round_trip_as_hex() {
        let k = [0xabu8; 32];
        assert_eq!(parse_key(&hex(&k)), Some(k));
        assert_eq!(parse_key("ab"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
