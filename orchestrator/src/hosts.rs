//! What hosts tell the orchestrator: registration, heartbeats, lost procs, and the tick that
//! declares silent hosts lost (ORC-18). Their bookkeeping is the `registry`; the book abandons
//! (then retries) what a lost proc or host ran (ORC-12).

use procmesh_protocol::messages::host::HostInfo;
use procmesh_protocol::messages::orchestrator::{Heartbeat, OrchestratorError, OrchestratorReply};
use procmesh_protocol::{ProcId, Timestamp};

use crate::service::Service;

impl Service {
    pub(crate) fn register_host(&mut self, info: HostInfo, now: Timestamp) -> OrchestratorReply {
        let addr = info.addr.clone();
        let capacity = info.capacity;
        if self.registry.register(info, now) {
            // ORC-18: a host registering while alive restarted; what it ran is gone.
            let updates = self.book.host_lost(
                &addr,
                "the host registered again: its earlier procs are gone",
                now,
            );
            if !updates.is_empty() {
                tracing::warn!(host = %addr, abandoned = updates.len(), "host restarted");
            }
            self.publish_updates(&updates, "the host restarted");
        }
        tracing::info!(host = %addr, capacity, "host registered");
        OrchestratorReply::HostRegistered {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            lost_after_ms: self.config.lost_after_ms,
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        heartbeat: Heartbeat,
        now: Timestamp,
    ) -> crate::service::Answer {
        if !self.registry.heartbeat(&heartbeat, now) {
            return Err(OrchestratorError::UnknownHost(heartbeat.addr));
        }
        let orphans = self.book.orphans(&heartbeat.addr, &heartbeat.running);
        if !orphans.is_empty() {
            tracing::info!(host = %heartbeat.addr, orphans = orphans.len(), "orphaned attempts");
        }
        self.trigger_dispatch();
        Ok(OrchestratorReply::HeartbeatAck { orphans })
    }

    pub(crate) fn proc_lost(&mut self, proc: &ProcId, reason: &str, now: Timestamp) {
        self.registry.proc_lost(proc);
        let reason = format!("proc {proc} lost: {reason}");
        let updates = self.book.proc_lost(proc, &reason, now);
        tracing::warn!(%proc, abandoned = updates.len(), "proc lost");
        self.publish_updates(&updates, &reason);
    }

    /// Declares silent hosts lost; their placed actions are abandoned and retried (ORC-12).
    pub(crate) fn tick(&mut self, now: Timestamp) {
        for addr in self.registry.expire(now, self.config.lost_after_ms) {
            let reason = format!(
                "host {addr} silent for more than {} ms",
                self.config.lost_after_ms
            );
            let updates = self.book.host_lost(&addr, &reason, now);
            tracing::warn!(host = %addr, abandoned = updates.len(), "host lost");
            self.publish_updates(&updates, &reason);
        }
    }
}
