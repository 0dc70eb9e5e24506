//! The proc table: which names are taken, by which proc, and where a starting proc's ready
//! callback goes.
//!
//! A name is taken from the moment a spawn reserves it until the proc's exit monitor releases
//! it, *after* removing its route (HST-6). While the proc is being launched its handle does not
//! exist yet; lookups wait for it ([`ProcTable::handle`]).
//!
//! # Invariants
//! - **HST-1** A name is held by at most one proc: a spawn of a name that is reserved or live is
//!   refused [`HostError::NameInUse`]; `service` and `local` are refused
//!   [`HostError::ReservedName`]; anything that is not a valid proc name (ID-2) is refused
//!   [`HostError::BadName`].

use std::collections::HashMap;
use std::sync::Mutex;

use procmesh_protocol::ids::validate_name;
use procmesh_protocol::messages::{HostError, ProcReady};
use procmesh_protocol::{LOCAL_PROC, SERVICE_PROC};
use tokio::sync::{mpsc, oneshot, watch};

use crate::handle::ProcHandle;

/// How far a proc's launch is, as the backend admission sees it (HST-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launched {
    /// The manager has not returned its handle yet: the child may already be connecting.
    Launching,
    /// An OS child with this pid.
    Os(u32),
    /// A proc inside this process (never on the backend socket).
    InProcess,
}

/// A ready callback on its way to the spawn that waits for it, with the slot for its answer.
pub(crate) struct Callback {
    pub ready: ProcReady,
    pub reply: oneshot::Sender<Result<(), HostError>>,
}

/// One name's entry.
struct Entry {
    /// Where ready callbacks for the proc go (to its spawn driver).
    callbacks: mpsc::UnboundedSender<Callback>,
    /// The proc's handle, once launched; the sender is dropped if the launch failed.
    handle: watch::Receiver<Option<ProcHandle>>,
    /// The bootstrap secret the proc proves on its backend link (HST-18).
    secret: [u8; 32],
    /// The slots it holds (its `max_actions`, HST-25).
    slots: u32,
}

/// What a spawn holds while it launches the proc: it publishes the handle through it.
pub(crate) struct Reservation {
    pub callbacks: mpsc::UnboundedReceiver<Callback>,
    pub handle: watch::Sender<Option<ProcHandle>>,
    /// The proc's bootstrap secret, passed to it at launch.
    pub secret: [u8; 32],
    /// The slots granted to it: its `max_actions` (HST-25).
    pub slots: u32,
}

/// Checks a name a user wants to spawn (HST-1).
pub fn check_spawn_name(name: &str) -> Result<(), HostError> {
    if name == SERVICE_PROC || name == LOCAL_PROC {
        return Err(HostError::ReservedName(name.to_owned()));
    }
    validate_name(name).map_err(|e| HostError::BadName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The procs of a host by name.
#[derive(Default)]
pub(crate) struct ProcTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ProcTable {
    /// Takes `name` for a new proc (HST-1), drawing its bootstrap secret (HST-18), with the
    /// slots it `asks` for out of the host's `capacity` (HST-25).
    pub fn reserve(
        &self,
        name: &str,
        asks: Option<u32>,
        capacity: u32,
    ) -> Result<Reservation, HostError> {
        check_spawn_name(name)?;
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| {
            HostError::Internal(format!("no randomness for a bootstrap secret: {e}"))
        })?;
        let mut entries = self.entries.lock().expect("proc table lock");
        if entries.contains_key(name) {
            return Err(HostError::NameInUse(name.to_owned()));
        }
        let used = entries.values().map(|e| e.slots).sum();
        let slots = crate::slots::grant(name, asks, used, capacity)?;
        let (cb_tx, cb_rx) = mpsc::unbounded_channel();
        let (h_tx, h_rx) = watch::channel(None);
        entries.insert(
            name.to_owned(),
            Entry {
                callbacks: cb_tx,
                handle: h_rx,
                secret,
                slots,
            },
        );
        Ok(Reservation {
            callbacks: cb_rx,
            handle: h_tx,
            secret,
            slots,
        })
    }

    /// Releases `name` if it is still held by the reservation that never launched, or by
    /// `handle`.
    pub fn release(&self, name: &str, handle: Option<&ProcHandle>) {
        let mut entries = self.entries.lock().expect("proc table lock");
        let ours = entries.get(name).is_some_and(|e| {
            let current = e.handle.borrow();
            match (current.as_ref(), handle) {
                (Some(current), Some(handle)) => current.same(handle),
                (None, None) => true,
                _ => false,
            }
        });
        if ours {
            entries.remove(name);
        }
    }

    /// Hands a ready callback to the spawn waiting for it; false if no proc of that name is
    /// starting (the callback is dropped, and with it its answer slot).
    pub fn callback(&self, name: &str, callback: Callback) -> bool {
        let entries = self.entries.lock().expect("proc table lock");
        entries
            .get(name)
            .is_some_and(|entry| entry.callbacks.send(callback).is_ok())
    }

    /// The bootstrap secret of the proc `name` and how far its launch is (HST-18); `None` if
    /// no such proc is in the table.
    pub fn backend_identity(&self, name: &str) -> Option<([u8; 32], Launched)> {
        let entries = self.entries.lock().expect("proc table lock");
        let entry = entries.get(name)?;
        let launched = match entry.handle.borrow().as_ref() {
            None => Launched::Launching,
            Some(handle) => match handle.pid() {
                Some(pid) => Launched::Os(pid),
                None => Launched::InProcess,
            },
        };
        Some((entry.secret, launched))
    }

    /// The handle of the proc `name`, waiting for its launch if it is being launched.
    pub async fn handle(&self, name: &str) -> Result<ProcHandle, HostError> {
        let rx = {
            let entries = self.entries.lock().expect("proc table lock");
            entries.get(name).map(|e| e.handle.clone())
        };
        let Some(mut rx) = rx else {
            return Err(HostError::UnknownProc(name.to_owned()));
        };
        let handle = match rx.wait_for(Option::is_some).await {
            Ok(handle) => Ok(handle.clone().expect("checked by wait_for")),
            // The launch failed: the name is gone.
            Err(_) => Err(HostError::UnknownProc(name.to_owned())),
        };
        handle
    }

    /// Every launched proc.
    pub fn handles(&self) -> Vec<ProcHandle> {
        let entries = self.entries.lock().expect("proc table lock");
        entries
            .values()
            .filter_map(|e| e.handle.borrow().clone())
            .collect()
    }

    /// Every name taken (launched or being launched).
    pub fn names(&self) -> Vec<String> {
        let entries = self.entries.lock().expect("proc table lock");
        entries.keys().cloned().collect()
    }

    /// The slots held by the procs in the table (HST-25).
    pub fn slots_used(&self) -> u32 {
        let entries = self.entries.lock().expect("proc table lock");
        entries.values().map(|e| e.slots).sum()
    }

    /// How many names are taken.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("proc table lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests HST-1 (names)
    #[test]
    fn reserved_and_bad_names_are_refused() {
        assert_eq!(
            check_spawn_name("service"),
            Err(HostError::ReservedName("service".into()))
        );
        assert_eq!(
            check_spawn_name("local"),
            Err(HostError::ReservedName("local".into()))
        );
        for bad in ["", "a.b", "a,b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(check_spawn_name(bad), Err(HostError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(check_spawn_name("worker-3_b"), Ok(()));
    }

    // Attests HST-1 (uniqueness)
    #[tokio::test]
    async fn a_name_is_held_once_until_released() {
        let table = ProcTable::default();
        let r = table.reserve("w", Some(1), 4).unwrap();
        assert!(matches!(
            table.reserve("w", Some(1), 4),
            Err(HostError::NameInUse(_))
        ));
        assert_eq!(
            table.backend_identity("w"),
            Some((r.secret, Launched::Launching))
        );
        assert_ne!(r.secret, [0; 32]);
        assert_eq!(table.names(), vec!["w".to_owned()]);
        // A launch that failed: the handle sender goes away, lookups end.
        drop(r.handle);
        assert!(matches!(
            table.handle("w").await,
            Err(HostError::UnknownProc(_))
        ));
        table.release("w", None);
        assert_eq!(table.len(), 0);
        let again = table.reserve("w", Some(1), 4).unwrap();
        assert_ne!(again.secret, r.secret, "a fresh secret for every proc");
    }

    // Attests HST-25
    #[test]
    fn slots_are_held_until_released() {
        let table = ProcTable::default();
        let a = table.reserve("a", None, 3).unwrap();
        assert_eq!(a.slots, 3, "no ask: every slot left");
        assert!(matches!(
            table.reserve("b", Some(1), 3),
            Err(HostError::NoCapacity { left: 0, .. })
        ));
        assert_eq!(
            table.names(),
            vec!["a".to_owned()],
            "a refusal takes nothing"
        );
        drop(a.handle);
        table.release("a", None);
        let b = table.reserve("b", Some(2), 3).unwrap();
        assert_eq!((b.slots, table.slots_used()), (2, 2));
        assert_eq!(table.reserve("c", None, 3).unwrap().slots, 1);
    }
}
