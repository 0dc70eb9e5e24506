//! The simulated orchestrator shell: feeding the core, holding effects until the group commit,
//! carrying them out, crashing and restarting from the journal.

use super::*;

impl Sim {
    // ---- the orchestrator's shell ---------------------------------------------------------

    /// Hands one input to the core, as the shell does: journal it if it changed state, hold
    /// its reply and effects until that commit (and behind anything already held).
    pub(super) fn feed(&mut self, input: Input, dest: Dest) {
        self.stats.inputs += 1;
        let now = Timestamp(self.now);
        let logged = Logged {
            now,
            input: input.clone(),
        };
        let outcome = self.core.handle(input, now, &self.env);
        self.dirty = true;
        if outcome.changed {
            self.journal.push(logged);
        } else {
            check_quiet(&logged.input, &outcome);
        }
        self.observe(&outcome.effects);
        let reply = outcome.reply.map(|answer| (dest, answer));
        let held = Held {
            reply,
            effects: outcome.effects,
        };
        if outcome.changed || !self.held.is_empty() {
            self.held.push(held);
        } else {
            self.release(held);
        }
    }

    /// Counts the abandons of silent attempts (ORC-28), and those whose attempt an agent of
    /// a live host still ran (a heartbeat overtaken by a later one, or a submission that
    /// arrived after two heartbeats).
    pub(super) fn observe(&mut self, effects: &[Effect]) {
        for effect in effects {
            let Effect::Publish { transition: t, .. } = effect else {
                continue;
            };
            let silent = t.state == ActionState::Abandoned
                && t.detail
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("absent from the heartbeats"));
            if silent {
                self.stats.silent_abandons += 1;
                let attempt = t.attempt_ref();
                let running = self
                    .hosts
                    .iter()
                    .any(|h| h.up && h.agents.iter().any(|a| a.up && a.held.contains(&attempt)));
                if running {
                    self.stats.running_abandoned += 1;
                }
            }
        }
    }

    /// The journal's group commit: what was journaled is durable; what waited for it leaves.
    pub(super) fn commit(&mut self) {
        if self.committed == self.journal.len() && self.held.is_empty() {
            return;
        }
        self.committed = self.journal.len();
        // What is final now is final for good: a restart rebuilds at least this (ORC-26).
        for lsn in lsns(&self.core) {
            if let Some(entry) = self.core.book().action(lsn) {
                if entry.record.is_terminal() {
                    self.finals
                        .entry(lsn)
                        .or_insert((entry.record.attempt_ref(), entry.record.state()));
                }
            }
        }
        if self.rng.chance(3) {
            let bytes = rmp_serde::to_vec_named(&self.core).expect("a core serialises");
            self.snapshot = Some((bytes, self.committed));
        }
        for held in std::mem::take(&mut self.held) {
            self.release(held);
        }
    }

    pub(super) fn release(&mut self, held: Held) {
        if let Some((dest, answer)) = held.reply {
            if dest != Dest::Nobody && !self.lost() {
                let d = self.delay();
                self.at(d, Ev::Answer { dest, answer });
            }
        }
        for effect in held.effects {
            self.carry_out(effect);
        }
    }

    pub(super) fn locate(proc: &ProcId) -> (usize, usize) {
        let host = match proc.addr() {
            procmesh_protocol::HostAddr::Local(name) => name["host-".len()..].parse().ok(),
            _ => None,
        };
        let index = proc.name()["proc-".len()..].parse().ok();
        match (host, index) {
            (Some(h), Some(p)) => (h, p),
            _ => panic!("not a simulated proc: {proc}"),
        }
    }

    pub(super) fn carry_out(&mut self, effect: Effect) {
        let orch = self.orch;
        match effect {
            Effect::SubmitBatch { proc, specs, .. } => {
                let (host, index) = Self::locate(&proc);
                let attempts: Vec<AttemptRef> = specs.iter().map(|s| s.attempt_ref()).collect();
                if self.lost() {
                    // The ask times out: every attempt of it failed to submit.
                    for attempt in attempts {
                        let input = Input::SubmitFailed {
                            attempt,
                            proc: proc.clone(),
                            reason: "no answer".into(),
                        };
                        self.at(ASK_TIMEOUT, Ev::Shell { input, orch });
                    }
                } else {
                    let reply_lost = self.lost();
                    let d = self.delay();
                    self.at(
                        d,
                        Ev::Submit {
                            host,
                            proc: index,
                            attempts,
                            reply_lost,
                            orch,
                        },
                    );
                }
            }
            Effect::Cancel { agent, attempt, .. } => {
                let (host, proc) = Self::locate(agent.proc_id());
                if self.lost() {
                    let input = Input::StopFailed {
                        attempt,
                        reason: "no answer".into(),
                    };
                    self.at(ASK_TIMEOUT, Ev::Shell { input, orch });
                } else {
                    let reply_lost = self.lost();
                    let d = self.delay();
                    self.at(
                        d,
                        Ev::Cancel {
                            host,
                            proc,
                            attempt,
                            reply_lost,
                            orch,
                        },
                    );
                }
            }
            Effect::DispatchAgain => {
                if !self.dispatch_queued {
                    self.dispatch_queued = true;
                    self.at(1, Ev::Dispatch { orch });
                }
            }
            Effect::Publish { .. }
            | Effect::QueueComplete(_)
            | Effect::Subscribe { .. }
            | Effect::Unsubscribe { .. } => {}
        }
    }

    /// The orchestrator stops: what was not committed is gone.
    pub(super) fn crash_orchestrator(&mut self) {
        self.stats.restarts += 1;
        self.orch_up = false;
        self.orch += 1;
        self.held.clear();
        self.journal.truncate(self.committed);
        self.dispatch_queued = false;
    }

    /// The orchestrator starts again: replays the journal (from the snapshot when there is
    /// one, half of the time), then tells the core it recovered (ORC-27).
    pub(super) fn start_orchestrator(&mut self) -> Result<(), String> {
        let scratch = replay(Core::new(self.config), &self.journal);
        let core = match self.snapshot.take() {
            Some((bytes, covered)) if self.rng.chance(50) => {
                let restored: Core = rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())?;
                let core = replay(restored, &self.journal[covered..]);
                if let Some(diff) = difference(&scratch, &core) {
                    return Err(format!("snapshot + tail differs from the journal: {diff}"));
                }
                self.snapshot = Some((bytes, covered));
                core
            }
            other => {
                self.snapshot = other;
                scratch
            }
        };
        self.core = core;
        self.orch_up = true;
        self.feed(Input::Recovered, Dest::Nobody);
        Ok(())
    }
}
