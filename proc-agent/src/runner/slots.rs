//! Warm slots (PA-12): what is expensive and the same for every action of a slot — its cgroup
//! and, in `namespaces` mode, its sandbox's namespaces and read-only root — is built once and
//! reused by one attempt after another.
//!
//! ```text
//!  take ─▶ idle slot (or a new one: cgroup + warden) ─▶ limits of this action ─▶ meter
//!       ─▶ launch … exit ─▶ figures since the meter ─▶ cgroup empty? (else kill) ─▶ idle again
//! ```
//!
//! A slot is held by one attempt at a time, and goes back only once the action's processes
//! are gone (its pid namespace died with its init, or the cgroup was killed), so an action
//! never shares a process, a `/tmp`, a mount or a network socket with the one before it. A
//! slot whose warden died, or whose cgroup could not be emptied, is dropped, not reused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use procmesh_sys::cgroup::{ActionCgroup, CgroupLimits, CgroupStats, Meter};
use procmesh_sys::sandbox::Slot;
use tracing::{debug, warn};

use super::isolate::Isolator;

/// One warm slot.
#[derive(Debug)]
pub(crate) struct Warm {
    name: String,
    /// The sandbox, in `namespaces` mode when the zygote serves this proc.
    slot: Option<Arc<Slot>>,
    /// Its root's mount point on the host (removed with the slot).
    root: Option<PathBuf>,
    cgroup: Option<ActionCgroup>,
    /// The limits last written to `cgroup`.
    limits: Option<CgroupLimits>,
}

impl Warm {
    /// The sandbox to launch in, if this slot has one.
    pub(crate) fn slot(&self) -> Option<Arc<Slot>> {
        self.slot.clone()
    }

    /// The cgroup the action runs in, if the host has cgroups.
    pub(crate) fn cgroup(&self) -> Option<&ActionCgroup> {
        self.cgroup.as_ref()
    }
}

/// The idle slots of one proc.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    idle: Mutex<Vec<Warm>>,
    made: AtomicU32,
    /// Set by [`clear`](Self::clear): a slot given back later is ended, not kept.
    closed: std::sync::atomic::AtomicBool,
}

impl Slots {
    /// An idle slot, or a new one; with the limits of `limits` in place.
    pub(crate) async fn take(&self, iso: &Isolator, limits: &CgroupLimits) -> Result<Warm, String> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.pop()
        };
        let mut warm = match idle {
            Some(warm) if warm.slot.as_ref().is_none_or(|s| s.is_alive()) => warm,
            Some(dead) => {
                warn!(slot = %dead.name, "a warm slot's warden is gone: starting a new slot");
                discard(dead);
                self.make(iso).await?
            }
            None => self.make(iso).await?,
        };
        if let Some(cgroup) = &warm.cgroup {
            if warm.limits.as_ref() != Some(limits) {
                if let Err(e) = cgroup.set_limits_exactly(limits) {
                    discard(warm);
                    return Err(format!("setting the action's cgroup limits: {e}"));
                }
                warm.limits = Some(limits.clone());
            }
        }
        Ok(warm)
    }

    async fn make(&self, iso: &Isolator) -> Result<Warm, String> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-slot-{n}", iso.proc_name());
        let cgroup = iso
            .create_cgroup(&name)
            .map_err(|e| format!("creating the action's cgroup: {e}"))?;
        let mut warm = Warm {
            name,
            slot: None,
            root: None,
            cgroup,
            limits: None,
        };
        if iso.warm_sandboxes() {
            let procs = match warm
                .cgroup
                .as_ref()
                .map(ActionCgroup::open_procs)
                .transpose()
            {
                Ok(procs) => procs.unwrap_or_default(),
                Err(e) => {
                    discard(warm);
                    return Err(format!("opening the slot's cgroup: {e}"));
                }
            };
            let root = match iso.new_root(&warm.name) {
                Ok(root) => root,
                Err(e) => {
                    discard(warm);
                    return Err(format!("preparing the sandbox root: {e}"));
                }
            };
            warm.root = Some(root.clone());
            match Slot::start(&iso.slot_spec(&root), iso.netns(), procs).await {
                Ok(slot) => {
                    debug!(slot = %warm.name, warden = slot.pid(), "warm slot started");
                    warm.slot = Some(Arc::new(slot));
                }
                Err(e) => {
                    discard(warm);
                    return Err(format!("sandbox setup failed: {}", setup_reason(e)));
                }
            }
        }
        Ok(warm)
    }

    /// Puts `warm` back once its action is over: its figures since `meter`, after making sure
    /// nothing of the action is left in its cgroup (else the slot is killed and dropped).
    pub(crate) fn give_back(&self, warm: Warm, meter: Option<Meter>) -> Option<CgroupStats> {
        let stats = match (&warm.cgroup, meter) {
            (Some(cgroup), Some(meter)) => Some(cgroup.since(meter)),
            _ => None,
        };
        if let Some(cgroup) = &warm.cgroup {
            if !cgroup.is_empty() {
                if let Err(error) = cgroup.kill_all() {
                    warn!(%error, slot = %warm.name, "a warm slot's cgroup could not be emptied: dropping the slot");
                    discard(warm);
                    return stats;
                }
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            drop(idle);
            discard(warm);
        } else {
            idle.push(warm);
        }
        stats
    }

    /// Drops `warm` instead of reusing it (its warden looked broken).
    pub(crate) fn drop_broken(&self, warm: Warm) {
        discard(warm);
    }

    /// Ends every idle slot: wardens stopped, cgroups removed, roots deleted; a slot given back
    /// after this is ended the same way.
    pub(crate) fn clear(&self) {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *idle)
        };
        for warm in idle {
            discard(warm);
        }
    }
}

/// Ends a slot: its warden first (so its cgroup empties), then its cgroup and root directory.
fn discard(warm: Warm) {
    drop(warm.slot);
    if let Some(cgroup) = warm.cgroup {
        if let Err(error) = cgroup.remove() {
            warn!(%error, slot = %warm.name, "could not remove a slot's cgroup");
        }
    }
    if let Some(root) = warm.root {
        // The warden's mount of the root went with its mount namespace: the directory is
        // empty; a warden still dying may hold it a moment longer (then the next start's
        // sweep of the roots directory removes it).
        let _ = std::fs::remove_dir(&root);
    }
}

fn setup_reason(e: procmesh_sys::sandbox::SpawnError) -> String {
    match e {
        procmesh_sys::sandbox::SpawnError::Setup(reason) => reason,
        procmesh_sys::sandbox::SpawnError::Start(e) => format!("starting the slot: {e}"),
    }
}
