//! `FetchBlobs`: making sure blobs are in the host's store (which its procs read on disk),
//! fetching the missing ones from another node, verified (BLOB-1).
//!
//! ```text
//! FetchBlobs { hashes, from } ─▶ in store? ─ yes ─▶ done
//!                                   │ no
//!                                   ▼
//!                     transfer in flight for this hash? ─ yes ─▶ wait for it
//!                                   │ no
//!                                   ▼
//!              start one (a task: it finishes even if the asker goes away), wait for it
//! ```
//!
//! # Invariants
//! - **HST-10** Concurrent requests for the same missing blob share one transfer; a blob enters
//!   the store only after its bytes hashed to its name (BLOB-1), and a failed transfer is not
//!   remembered (the next request tries again).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::HostError;
use procmesh_protocol::HostAddr;
use procmesh_transport::Node;
use tokio::sync::{watch, Semaphore};

/// At most this many transfers run at once; more wait for a slot.
pub(crate) const MAX_CONCURRENT_TRANSFERS: usize = 8;

type Outcome = Option<Result<(), String>>;

pub(crate) struct BlobFetcher {
    node: Node,
    inflight: Arc<Mutex<HashMap<BlobHash, watch::Receiver<Outcome>>>>,
    slots: Arc<Semaphore>,
    started: Arc<AtomicU64>,
}

impl BlobFetcher {
    pub fn new(node: Node) -> Self {
        BlobFetcher {
            node,
            inflight: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_TRANSFERS)),
            started: Arc::default(),
        }
    }

    /// How many transfers were started so far.
    pub fn transfers(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Makes sure every blob is in the store; returns how many were missing when asked.
    pub async fn ensure(&self, hashes: Vec<BlobHash>, from: HostAddr) -> Result<u32, HostError> {
        let Some(store) = self.node.blob_store().cloned() else {
            return Err(HostError::Internal("the host keeps no blob store".into()));
        };
        let mut waits = Vec::new();
        for hash in hashes.into_iter().collect::<BTreeSet<_>>() {
            if store.contains(&hash) {
                continue;
            }
            waits.push((hash, self.transfer(hash, &from)));
        }
        let missing = waits.len() as u32;
        for (hash, mut rx) in waits {
            let outcome = rx.wait_for(Option::is_some).await;
            let outcome = match outcome {
                Ok(outcome) => outcome.clone().expect("checked by wait_for"),
                Err(_) => Err("the transfer task ended without an outcome".to_owned()),
            };
            outcome.map_err(|reason| HostError::Blob { hash, reason })?;
        }
        Ok(missing)
    }

    /// The transfer of `hash`: the one in flight (HST-10), or a new one.
    fn transfer(&self, hash: BlobHash, from: &HostAddr) -> watch::Receiver<Outcome> {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(rx) = inflight.get(&hash) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(hash, rx.clone());
        self.started.fetch_add(1, Ordering::Relaxed);
        let node = self.node.clone();
        let from = from.clone();
        let slots = self.slots.clone();
        let map = self.inflight.clone();
        tokio::spawn(async move {
            let outcome = match slots.acquire_owned().await {
                Ok(_permit) => node
                    .fetch_blob(&from, hash)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(_) => Err("the host is shutting down".to_owned()),
            };
            if let Err(reason) = &outcome {
                tracing::warn!(%hash, %from, %reason, "blob fetch failed");
            }
            // Forget the transfer before announcing it: a later request finds the blob in the
            // store, or (after a failure) starts afresh.
            map.lock().expect("inflight lock").remove(&hash);
            tx.send_replace(Some(outcome));
        });
        rx
    }
}
