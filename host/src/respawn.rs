//! Proc respawn: a proc that exits without being asked comes back under the same name with the
//! same spec, so a crash does not cost capacity until someone restarts the host.
//!
//! ```text
//! ready proc exits unasked ─▶ ProcLost to the orchestrator (HST-7, as before)
//!   │ respawn = true, host not shutting down
//!   ▼
//! wait the backoff: 200 ms, doubling to 10 s; back to 200 ms once the proc had stayed up 30 s
//!   ▼
//! spawn(same spec) ─ ready ─▶ restarts += 1 (reported per proc in every heartbeat)
//!   │ name taken meanwhile (someone spawned it) / record gone / shutting down ─▶ stop
//!   └ other failure ─▶ wait a longer backoff, try again
//! ```
//!
//! # Invariants
//! - **HST-14** Only a proc that was spawned by a request, became ready, and then exited with
//!   no stop asked for (terminate, kill, bulk terminate, shutdown) is respawned; a purposeful
//!   stop forgets the proc's record, so it stays down. Respawns of one name never overlap, and
//!   the wait between two attempts is bounded by [`MAX_BACKOFF`]. A spawn by request under a
//!   name starts its record afresh (restarts 0).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procmesh_protocol::messages::{HostError, SpawnSpec};
use tokio::time::Instant;
use tracing::Instrument;

use crate::host::HostInner;

/// The first wait before a respawn.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait before a respawn.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A proc that stayed up this long is respawned after [`MIN_BACKOFF`] again.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What the host remembers of a proc it may respawn.
struct Record {
    spec: SpawnSpec,
    restarts: u32,
    /// The wait before the next respawn.
    backoff: Duration,
    /// When its current run became ready.
    up_since: Instant,
    /// Whether a respawn of it is under way (HST-14: never two at once).
    respawning: bool,
}

/// The respawn records of a host's procs, by name.
#[derive(Default)]
pub(crate) struct Respawns {
    records: Mutex<HashMap<String, Record>>,
}

impl Respawns {
    /// A proc spawned by a request became ready: its record starts afresh (HST-14).
    pub(crate) fn spawned(&self, spec: &SpawnSpec) {
        self.records.lock().expect("respawn lock").insert(
            spec.name.clone(),
            Record {
                spec: spec.clone(),
                restarts: 0,
                backoff: MIN_BACKOFF,
                up_since: Instant::now(),
                respawning: false,
            },
        );
    }

    /// A proc was stopped on purpose: it stays down (HST-14).
    pub(crate) fn forget(&self, name: &str) {
        self.records.lock().expect("respawn lock").remove(name);
    }

    /// How many times `name` was respawned since it was last spawned by a request.
    pub(crate) fn restarts(&self, name: &str) -> u32 {
        self.records
            .lock()
            .expect("respawn lock")
            .get(name)
            .map_or(0, |r| r.restarts)
    }

    /// Claims the respawn of `name` after a crash; `false` if it has no record (not spawned by
    /// a request) or a respawn is already under way.
    fn claim(&self, name: &str) -> bool {
        let mut records = self.records.lock().expect("respawn lock");
        let Some(record) = records.get_mut(name) else {
            return false;
        };
        if record.respawning {
            return false;
        }
        record.respawning = true;
        if record.up_since.elapsed() >= STABLE_AFTER {
            record.backoff = MIN_BACKOFF;
        }
        true
    }

    /// The wait before the next attempt, and the spec; `None` if the record is gone.
    fn next_attempt(&self, name: &str) -> Option<(Duration, SpawnSpec)> {
        let mut records = self.records.lock().expect("respawn lock");
        let record = records.get_mut(name)?;
        let wait = record.backoff;
        record.backoff = (record.backoff * 2).min(MAX_BACKOFF);
        Some((wait, record.spec.clone()))
    }

    /// A respawn succeeded: one restart more; the run starts now.
    fn respawned(&self, name: &str) -> u32 {
        let mut records = self.records.lock().expect("respawn lock");
        let Some(record) = records.get_mut(name) else {
            return 0;
        };
        record.restarts += 1;
        record.up_since = Instant::now();
        record.respawning = false;
        record.restarts
    }

    /// The respawn gave up (name taken, shutting down).
    fn abandon(&self, name: &str) {
        if let Some(record) = self.records.lock().expect("respawn lock").get_mut(name) {
            record.respawning = false;
        }
    }
}

impl HostInner {
    /// After a crash of `name` (HST-7 already reported): respawn it in the background, if the
    /// configuration and its record allow (HST-14).
    pub(crate) fn schedule_respawn(self: &Arc<Self>, name: &str) {
        if !self.config.respawn || self.is_shutting_down() || !self.respawns.claim(name) {
            return;
        }
        let inner = self.clone();
        let name = name.to_owned();
        let span = tracing::info_span!("respawn", proc = %name);
        tokio::spawn(async move { inner.respawn(&name).await }.instrument(span));
    }

    async fn respawn(self: Arc<Self>, name: &str) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let Some((wait, spec)) = self.respawns.next_attempt(name) else {
                return;
            };
            tracing::info!(?wait, "respawning a proc that exited unasked");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return self.respawns.abandon(name),
            }
            if self.is_shutting_down() {
                return self.respawns.abandon(name);
            }
            let asks = spec.config.max_actions;
            let reservation = match self.table.reserve(name, asks, self.capacity()) {
                Ok(reservation) => reservation,
                Err(error) => {
                    // Someone spawned the name (or took its slots) meanwhile: theirs it is.
                    tracing::info!(%error, "not respawning");
                    return self.respawns.abandon(name);
                }
            };
            match self.clone().drive_spawn(spec, reservation).await {
                Ok(handle) => {
                    let restarts = self.respawns.respawned(name);
                    tracing::info!(restarts, "proc respawned");
                    // It may have crashed again before we counted it (its exit found the
                    // respawn still under way): go on.
                    let state = handle.state();
                    if state.exit_status().is_some() && !state.stop_requested {
                        self.schedule_respawn(name);
                    }
                    return;
                }
                Err(HostError::ShuttingDown) => return self.respawns.abandon(name),
                Err(error) => tracing::warn!(%error, "respawn failed; trying again"),
            }
        }
    }
}
