//! What hosts tell the core: registration, heartbeats, lost procs, and the tick that declares
//! silent hosts lost (ORC-18). Their bookkeeping is the [`Registry`](crate::registry); the book
//! abandons (then retries) what a lost proc or host ran (ORC-12), and what a live host stopped
//! mentioning (ORC-28).

use std::collections::HashSet;

use procmesh_protocol::messages::host::HostInfo;
use procmesh_protocol::messages::orchestrator::{Heartbeat, OrchestratorError, OrchestratorReply};
use procmesh_protocol::{ActionState, AttemptRef, ProcId, Timestamp, Transition};

use crate::authority::{parse_secret, NodeGrant, Peer};
use crate::core::{reason_detail, Core, Step};
use crate::input::Answer;

/// The shortest silence after which a placed attempt is abandoned (ORC-28).
pub const MIN_SILENCE_MS: u64 = 1_000;

impl Core {
    pub(crate) fn register_host(
        &mut self,
        info: HostInfo,
        peer: Option<&Peer>,
        now: Timestamp,
        step: &mut Step<'_>,
    ) -> Answer {
        let grant = match peer {
            Some(peer) => self.check_register(&info, peer)?,
            // This process, or a replay of a registration that passed its checks.
            None => NodeGrant {
                name: if info.node.is_empty() {
                    info.addr.to_string()
                } else {
                    info.node.clone()
                },
                secret: info.node_secret.as_deref().and_then(parse_secret),
            },
        };
        let addr = info.addr.clone();
        let capacity = info.capacity;
        let node = grant.name.clone();
        step.changed = true;
        if self.registry.register(info, grant, now) {
            // ORC-18: a host registering while alive restarted; what it ran is gone.
            let updates = self.book.host_lost(
                &addr,
                "the host registered again: its earlier procs are gone",
                now,
            );
            if !updates.is_empty() {
                tracing::warn!(host = %addr, abandoned = updates.len(), "host restarted");
            }
            self.publish_updates(&updates, "the host restarted", step);
        }
        tracing::info!(host = %addr, %node, capacity, "host registered");
        Ok(OrchestratorReply::HostRegistered {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            lost_after_ms: self.config.lost_after_ms,
            ticket_key: None,
        })
    }

    pub(crate) fn heartbeat(
        &mut self,
        heartbeat: Heartbeat,
        now: Timestamp,
        step: &mut Step<'_>,
    ) -> Answer {
        if !self.registry.heartbeat(&heartbeat, now) {
            return Err(OrchestratorError::UnknownHost(heartbeat.addr));
        }
        step.changed = true;
        let orphans = self.book.orphans(&heartbeat.addr, &heartbeat.running);
        if !orphans.is_empty() {
            tracing::info!(host = %heartbeat.addr, orphans = orphans.len(), "orphaned attempts");
        }
        self.silent_attempts(&heartbeat, now, step);
        step.effects.push(crate::Effect::DispatchAgain);
        Ok(OrchestratorReply::HeartbeatAck { orphans })
    }

    /// ORC-28: an attempt placed on this host for longer than the silence window that two
    /// heartbeats at least that window apart do not mention is `Abandoned` (then retried): its
    /// submission or its final report was lost, or its proc forgot it. The window is one
    /// heartbeat interval, but at least [`MIN_SILENCE_MS`]: with very short intervals a busy
    /// agent's late status would otherwise cost retries of work that runs fine.
    fn silent_attempts(&mut self, heartbeat: &Heartbeat, now: Timestamp, step: &mut Step<'_>) {
        let interval = self.config.heartbeat_interval_ms.max(MIN_SILENCE_MS);
        let running: HashSet<AttemptRef> = heartbeat.running.iter().copied().collect();
        let mut silent = Vec::new();
        for (attempt, placed_at) in self.book.placed_at_host(&heartbeat.addr) {
            if running.contains(&attempt) {
                self.missing.remove(&attempt);
                continue;
            }
            if now.millis_since(placed_at) < interval {
                continue;
            }
            let since = *self.missing.entry(attempt).or_insert(now);
            if now.millis_since(since) >= interval {
                silent.push(attempt);
            }
        }
        // Forget what is no longer placed (it ended, or was retried).
        let book = &self.book;
        self.missing.retain(|attempt, _| {
            book.action(attempt.lsn).is_some_and(|e| {
                e.record.attempt_ref() == *attempt
                    && matches!(
                        e.record.state(),
                        ActionState::Submitting | ActionState::Running
                    )
            })
        });
        for attempt in silent {
            let reason = format!(
                "attempt absent from the heartbeats of host {} for {interval} ms",
                heartbeat.addr
            );
            tracing::warn!(lsn = %attempt.lsn, attempt = %attempt.attempt, %reason, "silent attempt");
            let t = Transition::new(attempt.lsn, attempt.attempt, ActionState::Abandoned, now)
                .with_detail(reason_detail(&reason));
            if let Ok(update) = self.book.apply(&t, now) {
                self.publish_updates(&[update], &reason, step);
            }
        }
    }

    pub(crate) fn proc_lost(
        &mut self,
        proc: &ProcId,
        reason: &str,
        now: Timestamp,
        step: &mut Step<'_>,
    ) {
        step.changed = true;
        self.registry.proc_lost(proc);
        let reason = format!("proc {proc} lost: {reason}");
        let updates = self.book.proc_lost(proc, &reason, now);
        tracing::warn!(%proc, abandoned = updates.len(), "proc lost");
        self.publish_updates(&updates, &reason, step);
    }

    /// Declares silent hosts lost; their placed actions are abandoned and retried (ORC-12).
    pub(crate) fn tick(&mut self, now: Timestamp, step: &mut Step<'_>) {
        for addr in self.registry.expire(now, self.config.lost_after_ms) {
            step.changed = true;
            let reason = format!(
                "host {addr} silent for more than {} ms",
                self.config.lost_after_ms
            );
            let updates = self.book.host_lost(&addr, &reason, now);
            tracing::warn!(host = %addr, abandoned = updates.len(), "host lost");
            self.publish_updates(&updates, &reason, step);
        }
    }
}
