//! The simulated hosts and proc agents: heartbeats, crashes, outboxes, submissions and
//! cancellations as they arrive.

use super::*;

impl Sim {
    // ---- hosts and agents -----------------------------------------------------------------

    pub(super) fn beat(&mut self, host: usize) {
        let interval = self.config.heartbeat_interval_ms;
        let jitter = self.rng.range(0, 60);
        self.at(interval + jitter, Ev::Beat { host });
        if !self.hosts[host].up {
            return;
        }
        if self.faults() {
            if self.rng.chance_permille(12) {
                self.crash_host(host);
                return;
            }
            for proc in 0..self.hosts[host].agents.len() {
                if self.hosts[host].agents[proc].up && self.rng.chance_permille(25) {
                    self.crash_proc(host, proc);
                }
            }
        }
        let h = &self.hosts[host];
        let inc = h.inc;
        let input = if h.registered {
            let procs: Vec<(usize, u32)> = h
                .agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.up)
                .map(|(j, a)| (j, a.cap))
                .collect();
            let running = h
                .agents
                .iter()
                .filter(|a| a.up)
                .flat_map(|a| a.held.iter().copied())
                .collect();
            request(
                R::Heartbeat(heartbeat(host, &procs, running)),
                agent_id(host, 0),
            )
        } else {
            let total = h.agents.iter().map(|a| a.cap).sum();
            request(R::RegisterHost(host_info(host, total)), agent_id(host, 0))
        };
        self.send(input, Dest::Host { host, inc });
    }

    pub(super) fn crash_host(&mut self, host: usize) {
        self.stats.host_crashes += 1;
        let h = &mut self.hosts[host];
        h.up = false;
        h.inc += 1;
        h.registered = false;
        for a in &mut h.agents {
            a.inc += 1;
            a.held.clear();
            a.outbox.clear();
            a.in_flight = None;
        }
        let back = self.rng.range(1_000, 8_000);
        self.at(back, Ev::HostBack { host });
    }

    pub(super) fn crash_proc(&mut self, host: usize, proc: usize) {
        self.stats.proc_crashes += 1;
        let a = &mut self.hosts[host].agents[proc];
        a.up = false;
        a.inc += 1;
        a.held.clear();
        a.outbox.clear();
        a.in_flight = None;
        if self.rng.chance(50) {
            // The host saw its child exit.
            let input = request(
                R::ProcLost {
                    proc_id: proc_id(host, proc),
                    status: None,
                    reason: "killed".into(),
                },
                agent_id(host, 0),
            );
            let inc = self.hosts[host].inc;
            self.send(input, Dest::Host { host, inc });
            let back = self.rng.range(100, 3_000);
            self.at(back, Ev::ProcBack { host, proc });
        } else {
            // Restarted at once: it simply stops mentioning what it ran.
            self.hosts[host].agents[proc].up = true;
        }
    }

    /// An agent reports a transition: into its outbox, sent when nothing is in flight.
    pub(super) fn report(&mut self, host: usize, proc: usize, t: Transition) {
        self.hosts[host].agents[proc].outbox.push_back(t);
        self.pump(host, proc);
    }

    /// Sends the head of the outbox if nothing is in flight (PA-AG-4).
    pub(super) fn pump(&mut self, host: usize, proc: usize) {
        let a = &self.hosts[host].agents[proc];
        if a.in_flight.is_some() || a.outbox.is_empty() || !a.up || !self.hosts[host].up {
            return;
        }
        let n = a.outbox.len().min(4);
        let batch: Vec<Transition> = a.outbox.iter().take(n).cloned().collect();
        let inc = a.inc;
        self.send_batch(host, proc, inc, batch);
    }

    pub(super) fn send_batch(
        &mut self,
        host: usize,
        proc: usize,
        inc: u32,
        batch: Vec<Transition>,
    ) {
        self.seq += 1;
        let msg = self.seq;
        self.hosts[host].agents[proc].in_flight = Some((msg, batch.len()));
        let message = if batch.len() == 1 {
            R::ActionUpdate(batch.into_iter().next().expect("one"))
        } else {
            R::ActionUpdates(batch)
        };
        self.send(
            request(message, agent_id(host, proc)),
            Dest::Agent {
                host,
                proc,
                inc,
                msg,
            },
        );
        self.at(
            RESEND,
            Ev::Resend {
                host,
                proc,
                inc,
                msg,
            },
        );
    }

    pub(super) fn agent_ok(&self, host: usize, proc: usize) -> bool {
        self.hosts[host].up && self.hosts[host].agents[proc].up
    }

    pub(super) fn submit_arrives(
        &mut self,
        host: usize,
        proc: usize,
        attempts: Vec<AttemptRef>,
        reply_lost: bool,
        orch: u32,
    ) {
        let pid = proc_id(host, proc);
        let up = self.agent_ok(host, proc);
        let mut refused = Vec::new();
        for attempt in attempts.iter().copied() {
            let a = &mut self.hosts[host].agents[proc];
            if !up || a.held.len() >= a.cap as usize {
                if up {
                    self.stats.refused += 1;
                }
                refused.push(attempt);
                continue;
            }
            a.held.insert(attempt);
            let inc = a.inc;
            let t = report(attempt, ActionState::Running, &pid, Timestamp(self.now));
            self.report(host, proc, t);
            let run = self.rng.range(50, 3_000);
            let state = if self.rng.chance(75) {
                ActionState::Completed
            } else {
                ActionState::Failed
            };
            self.at(
                run,
                Ev::Ends {
                    host,
                    proc,
                    inc,
                    attempt,
                    state,
                },
            );
        }
        // What the shell learns: every attempt failed if no answer comes, else the refused.
        let (failed, wait) = if reply_lost || !up {
            (attempts, ASK_TIMEOUT)
        } else {
            (refused, self.delay())
        };
        for attempt in failed {
            let input = Input::SubmitFailed {
                attempt,
                proc: pid.clone(),
                reason: "refused".into(),
            };
            self.at(wait, Ev::Shell { input, orch });
        }
    }

    pub(super) fn cancel_arrives(
        &mut self,
        host: usize,
        proc: usize,
        attempt: AttemptRef,
        reply_lost: bool,
        orch: u32,
    ) {
        let up = self.agent_ok(host, proc);
        let found = up && self.hosts[host].agents[proc].held.remove(&attempt);
        if found {
            let t = report(
                attempt,
                ActionState::Cancelled,
                &proc_id(host, proc),
                Timestamp(self.now),
            );
            self.report(host, proc, t);
        }
        if reply_lost || !found {
            let input = Input::StopFailed {
                attempt,
                reason: "not found".into(),
            };
            let wait = if reply_lost {
                ASK_TIMEOUT
            } else {
                self.delay()
            };
            self.at(wait, Ev::Shell { input, orch });
        }
    }

    pub(super) fn answer(&mut self, dest: Dest, answer: Answer) {
        match dest {
            Dest::Nobody => {}
            Dest::Host { host, inc } => {
                if self.hosts[host].inc != inc || !self.hosts[host].up {
                    return;
                }
                match answer {
                    Ok(OrchestratorReply::HostRegistered { .. }) => {
                        self.hosts[host].registered = true
                    }
                    Err(OrchestratorError::UnknownHost(_)) => self.hosts[host].registered = false,
                    Ok(OrchestratorReply::HeartbeatAck { orphans }) => {
                        // The host stops them: no report.
                        for a in &mut self.hosts[host].agents {
                            for orphan in &orphans {
                                a.held.remove(orphan);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Dest::Agent {
                host,
                proc,
                inc,
                msg,
            } => {
                let a = &mut self.hosts[host].agents[proc];
                if a.inc != inc {
                    return;
                }
                if let Some((m, n)) = a.in_flight {
                    if m == msg {
                        // Any answer acknowledges the message (PA-AG-3).
                        a.outbox.drain(..n.min(a.outbox.len()));
                        a.in_flight = None;
                        self.pump(host, proc);
                    }
                }
            }
            Dest::Client { req } => self.client_answer(req, answer),
        }
    }
}
