//! A seeded, virtual-time simulation of the orchestrator core with its shell, fake hosts, fake
//! proc agents and a client, with message loss and delay, proc crashes, host crashes and
//! orchestrator restarts.
//!
//! ```text
//!  client ──Submit/Cancel/ListResults/Retire──┐            ┌──▶ replies (after commit, ORC-30)
//!  host   ──RegisterHost/Heartbeat/ProcLost───┼─▶ shell ─▶ Core::handle ─▶ journal ─▶ commit
//!  agent  ──ActionUpdate(s) (outbox, resent)──┘    ▲                               │
//!                                                  │      SubmitBatch / Cancel ◀───┘
//!      SubmitFailed / StopFailed (refused, lost) ──┘      to agents, lossy
//! ```
//!
//! One event queue ordered by (virtual time, sequence) drives everything, so a seed replays
//! exactly. A message may be dropped or delayed while faults are on; a restart of the
//! orchestrator loses what was not committed (the tail of the journal, held replies and
//! effects) and rebuilds the core from the committed journal (or a snapshot and its tail), then
//! feeds `Input::Recovered`. After every event the invariants are checked
//! ([`Sim::check`]); when faults stop, every queue must complete within a bounded time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use procmesh_orchestrator_core::{Answer, Core, CoreConfig, Effect, Input, Logged};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest as R, QueueRef, QueueToken,
};
use procmesh_protocol::spec::WorkerId;
use procmesh_protocol::{ActionState, AttemptRef, Lsn, ProcId, Timestamp, Transition};

use crate::utils::*;

/// The shape of one simulated run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Capacity of each proc, per host.
    pub caps: Vec<Vec<u32>>,
    pub queues: usize,
    pub actions: usize,
    /// Faults (loss, delay, crashes, restarts) happen before this virtual time only.
    pub faults_until: u64,
}

impl Plan {
    pub fn draw(rng: &mut Rng) -> Plan {
        let caps = (0..rng.range(2, 4))
            .map(|_| {
                (0..rng.range(1, 3))
                    .map(|_| rng.range(1, 4) as u32)
                    .collect()
            })
            .collect();
        Plan {
            caps,
            queues: rng.range(2, 3) as usize,
            actions: rng.range(20, 60) as usize,
            faults_until: rng.range(15_000, 40_000),
        }
    }
}

/// Where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Nobody,
    Host {
        host: usize,
        inc: u32,
    },
    Agent {
        host: usize,
        proc: usize,
        inc: u32,
        msg: u64,
    },
    Client {
        req: u64,
    },
}

#[derive(Debug)]
enum Ev {
    /// A message reaches the orchestrator (lost if it is down).
    Arrive {
        input: Input,
        dest: Dest,
    },
    /// The shell's own input (a failed ask), from the orchestrator's incarnation `orch`.
    Shell {
        input: Input,
        orch: u32,
    },
    /// An answer reaches its destination.
    Answer {
        dest: Dest,
        answer: Answer,
    },
    /// A `SubmitBatch` reaches an agent.
    Submit {
        host: usize,
        proc: usize,
        attempts: Vec<AttemptRef>,
        reply_lost: bool,
        orch: u32,
    },
    /// A stop order reaches an agent.
    Cancel {
        host: usize,
        proc: usize,
        attempt: AttemptRef,
        reply_lost: bool,
        orch: u32,
    },
    /// An attempt's run ends on its agent.
    Ends {
        host: usize,
        proc: usize,
        inc: u32,
        attempt: AttemptRef,
        state: ActionState,
    },
    Beat {
        host: usize,
    },
    Resend {
        host: usize,
        proc: usize,
        inc: u32,
        msg: u64,
    },
    Commit,
    Dispatch {
        orch: u32,
    },
    Tick,
    ClientTimer,
    OrchCrash,
    OrchStart,
    HostBack {
        host: usize,
    },
    ProcBack {
        host: usize,
        proc: usize,
    },
}

#[derive(Debug, Default)]
struct Agent {
    cap: u32,
    up: bool,
    inc: u32,
    held: BTreeSet<AttemptRef>,
    outbox: VecDeque<Transition>,
    /// The message in flight and how many transitions of the outbox's head it carries.
    in_flight: Option<(u64, usize)>,
}

#[derive(Debug, Default)]
struct Host {
    up: bool,
    inc: u32,
    registered: bool,
    agents: Vec<Agent>,
}

/// What the client asked and waits for.
#[derive(Debug, Clone)]
enum Ask {
    Submit { queue: usize, keys: Vec<String> },
    Cancel { queue: usize, lsn: Lsn },
    Results { queue: usize },
    Retire { queue: usize, lsns: Vec<Lsn> },
}

#[derive(Debug, Default)]
struct Client {
    worker: Option<WorkerId>,
    queues: Vec<(QueueToken, u64)>,
    next_key: usize,
    outstanding: Option<(u64, Ask, u64)>,
    next_req: u64,
    /// Every LSN `Submitted` gave back, with its key.
    accepted: BTreeMap<Lsn, String>,
    keys: BTreeMap<String, Lsn>,
    /// LSNs the client asked to retire: they may be gone.
    retiring: BTreeSet<Lsn>,
    /// The client queue (index) of each key number.
    submitted_to: BTreeMap<usize, usize>,
    /// How many batches it made.
    batches: u64,
}

/// Effects and replies held until the journal commit they depend on.
#[derive(Debug)]
struct Held {
    reply: Option<(Dest, Answer)>,
    effects: Vec<Effect>,
}

/// What a run saw, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub events: u64,
    pub inputs: u64,
    pub journal: usize,
    pub restarts: u32,
    pub host_crashes: u32,
    pub proc_crashes: u32,
    pub dropped: u64,
    pub completed: u64,
    pub end_ms: u64,
    /// Attempts abandoned as silent (ORC-28).
    pub silent_abandons: u64,
    /// Of those, attempts an agent of a live host was running at that moment.
    pub running_abandoned: u64,
    /// Attempts an agent refused for want of a free slot.
    pub refused: u64,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    plan: Plan,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Ev>,
    config: CoreConfig,
    env: TestEnv,
    core: Core,
    journal: Vec<Logged>,
    committed: usize,
    held: Vec<Held>,
    snapshot: Option<(Vec<u8>, usize)>,
    orch: u32,
    orch_up: bool,
    dispatch_queued: bool,
    hosts: Vec<Host>,
    client: Client,
    /// The final (attempt, state) of every action seen finished.
    finals: BTreeMap<Lsn, (AttemptRef, ActionState)>,
    /// Whether the core handled an input since the last check.
    dirty: bool,
    pub stats: Stats,
}

const ASK_TIMEOUT: u64 = 1_500;
const RESEND: u64 = 400;

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let plan = Plan::draw(&mut rng);
        let config = CoreConfig {
            max_submit_batch: 16,
            dispatch_batch: 8,
            result_page: 32,
            ..config()
        };
        let hosts = plan
            .caps
            .iter()
            .map(|caps| Host {
                up: true,
                inc: 0,
                registered: false,
                agents: caps
                    .iter()
                    .map(|&cap| Agent {
                        cap,
                        up: true,
                        ..Agent::default()
                    })
                    .collect(),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            plan,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            config,
            env: TestEnv {
                follow_all: true,
                ..TestEnv::default()
            },
            core: Core::new(config),
            journal: Vec::new(),
            committed: 0,
            held: Vec::new(),
            snapshot: None,
            orch: 0,
            orch_up: true,
            dispatch_queued: false,
            hosts,
            client: Client::default(),
            finals: BTreeMap::new(),
            dirty: false,
            stats: Stats::default(),
        };
        sim.setup();
        sim
    }

    fn faults(&self) -> bool {
        self.now < self.plan.faults_until
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), ev);
    }

    /// A network delay: usually short, sometimes long while faults are on.
    fn delay(&mut self) -> u64 {
        if self.faults() && self.rng.chance(5) {
            self.rng.range(200, 2_500)
        } else {
            self.rng.range(1, 30)
        }
    }

    /// Whether a message is lost.
    fn lost(&mut self) -> bool {
        let lost = self.faults() && self.rng.chance(8);
        if lost {
            self.stats.dropped += 1;
        }
        lost
    }

    /// Sends `input` to the orchestrator over the lossy network.
    fn send(&mut self, input: Input, dest: Dest) {
        if self.lost() {
            return;
        }
        let d = self.delay();
        self.at(d, Ev::Arrive { input, dest });
    }

    /// The client's worker and queues, before the faults begin (no loss at time 0).
    fn setup(&mut self) {
        let w = worker(0);
        let reply = self.direct(request(R::RegisterWorker(w.clone()), client_id()));
        assert!(
            matches!(reply, Some(Ok(OrchestratorReply::WorkerRegistered { .. }))),
            "{reply:?}"
        );
        self.client.worker = Some(w.id());
        for _ in 0..self.plan.queues {
            let mut bytes = [0u8; 12];
            bytes[..8].copy_from_slice(&self.rng.next().to_le_bytes());
            let token = QueueToken::from_bytes(bytes);
            let retry_limit = self.rng.range(1, 4) as u32;
            match self.direct(create_queue(retry_limit, token)) {
                Some(Ok(OrchestratorReply::QueueCreated { id, token })) => {
                    self.client.queues.push((token, id))
                }
                other => panic!("CreateQueue: {other:?}"),
            }
        }
        self.commit();
        for host in 0..self.hosts.len() {
            let d = self.rng.range(0, 900);
            self.at(d, Ev::Beat { host });
        }
        self.at(500, Ev::Tick);
        self.at(10, Ev::Commit);
        self.at(100, Ev::ClientTimer);
        let first = self.rng.range(2_000, 8_000);
        self.at(first, Ev::OrchCrash);
    }

    /// Feeds an input at once and returns its reply (setup only).
    fn direct(&mut self, input: Input) -> Option<Answer> {
        let outcome = self
            .core
            .handle(input.clone(), Timestamp(self.now), &self.env);
        if outcome.changed {
            self.journal.push(Logged {
                now: Timestamp(self.now),
                input,
            });
        }
        outcome.reply
    }

    // ---- the orchestrator's shell ---------------------------------------------------------

    /// Hands one input to the core, as the shell does: journal it if it changed state, hold
    /// its reply and effects until that commit (and behind anything already held).
    fn feed(&mut self, input: Input, dest: Dest) {
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
    fn observe(&mut self, effects: &[Effect]) {
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
    fn commit(&mut self) {
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

    fn release(&mut self, held: Held) {
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

    fn locate(proc: &ProcId) -> (usize, usize) {
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

    fn carry_out(&mut self, effect: Effect) {
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
    fn crash_orchestrator(&mut self) {
        self.stats.restarts += 1;
        self.orch_up = false;
        self.orch += 1;
        self.held.clear();
        self.journal.truncate(self.committed);
        self.dispatch_queued = false;
    }

    /// The orchestrator starts again: replays the journal (from the snapshot when there is
    /// one, half of the time), then tells the core it recovered (ORC-27).
    fn start_orchestrator(&mut self) -> Result<(), String> {
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

    // ---- hosts and agents -----------------------------------------------------------------

    fn beat(&mut self, host: usize) {
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

    fn crash_host(&mut self, host: usize) {
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

    fn crash_proc(&mut self, host: usize, proc: usize) {
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
    fn report(&mut self, host: usize, proc: usize, t: Transition) {
        self.hosts[host].agents[proc].outbox.push_back(t);
        self.pump(host, proc);
    }

    /// Sends the head of the outbox if nothing is in flight (PA-AG-4).
    fn pump(&mut self, host: usize, proc: usize) {
        let a = &self.hosts[host].agents[proc];
        if a.in_flight.is_some() || a.outbox.is_empty() || !a.up || !self.hosts[host].up {
            return;
        }
        let n = a.outbox.len().min(4);
        let batch: Vec<Transition> = a.outbox.iter().take(n).cloned().collect();
        let inc = a.inc;
        self.send_batch(host, proc, inc, batch);
    }

    fn send_batch(&mut self, host: usize, proc: usize, inc: u32, batch: Vec<Transition>) {
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

    fn agent_ok(&self, host: usize, proc: usize) -> bool {
        self.hosts[host].up && self.hosts[host].agents[proc].up
    }

    fn submit_arrives(
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

    fn cancel_arrives(
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

    fn answer(&mut self, dest: Dest, answer: Answer) {
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

    // ---- the client -----------------------------------------------------------------------

    fn queue_ref(&self, queue: usize) -> QueueRef {
        QueueRef::Token(self.client.queues[queue].0)
    }

    fn client_send(&mut self, ask: Ask) {
        let worker = self.client.worker.expect("registered at setup");
        let message = match &ask {
            Ask::Submit { queue, keys } => R::Submit {
                queue: self.queue_ref(*queue),
                actions: keys
                    .iter()
                    .map(|k| action(worker, false, Some(k.clone())))
                    .collect(),
            },
            Ask::Cancel { queue, lsn } => R::CancelAction {
                queue: self.queue_ref(*queue),
                lsn: *lsn,
            },
            Ask::Results { queue } => R::ListResults {
                queue: self.queue_ref(*queue),
                after: None,
                limit: Some(8),
            },
            Ask::Retire { queue, lsns } => {
                self.client.retiring.extend(lsns.iter().copied());
                R::Retire {
                    queue: self.queue_ref(*queue),
                    lsns: lsns.clone(),
                }
            }
        };
        self.client.next_req += 1;
        let req = self.client.next_req;
        self.client.outstanding = Some((req, ask, self.now));
        self.send(request(message, client_id()), Dest::Client { req });
    }

    fn client_timer(&mut self) {
        let wait = self.rng.range(200, 1_500);
        self.at(wait, Ev::ClientTimer);
        if let Some((_, ask, sent)) = &self.client.outstanding {
            if self.now - sent >= ASK_TIMEOUT {
                // No answer: ask again (submissions carry keys, so this is safe, ORC-9).
                let ask = ask.clone();
                self.client_send(ask);
            }
            return;
        }
        let queues = self.client.queues.len() as u64;
        let left = self.plan.actions - self.client.next_key.min(self.plan.actions);
        let roll = self.rng.below(100);
        if left > 0 && roll < 70 {
            let n = (self.rng.range(1, 6) as usize).min(left);
            // Round robin first, so that every queue gets actions; then at random.
            self.client.batches += 1;
            let queue = match self.client.batches - 1 {
                k if k < queues => k as usize,
                _ => self.rng.below(queues) as usize,
            };
            let keys = (0..n)
                .map(|i| format!("a{}", self.client.next_key + i))
                .collect();
            self.client.next_key += n;
            self.client_send(Ask::Submit { queue, keys });
        } else if roll < 78 && !self.client.accepted.is_empty() {
            let pick = self.rng.below(self.client.accepted.len() as u64) as usize;
            let Some((&lsn, _)) = self.client.accepted.iter().nth(pick) else {
                return;
            };
            let queue = self.queue_index(lsn);
            self.client_send(Ask::Cancel { queue, lsn });
        } else if roll < 90 {
            let queue = self.rng.below(queues) as usize;
            self.client_send(Ask::Results { queue });
        }
    }

    /// The queue (client index) an accepted action was submitted to.
    fn queue_index(&self, lsn: Lsn) -> usize {
        let key = &self.client.accepted[&lsn];
        let n: usize = key[1..].parse().expect("a key the client made");
        self.client
            .submitted_to
            .get(&n)
            .copied()
            .unwrap_or_default()
    }

    fn client_answer(&mut self, req: u64, answer: Answer) {
        let Some((id, ask, _)) = self.client.outstanding.clone() else {
            return;
        };
        if id != req {
            return;
        }
        self.client.outstanding = None;
        match (ask, answer) {
            (Ask::Submit { queue, keys }, Ok(OrchestratorReply::Submitted { lsns })) => {
                assert_eq!(lsns.len(), keys.len(), "one LSN per action");
                for (key, lsn) in keys.into_iter().zip(lsns) {
                    let n: usize = key[1..].parse().expect("a key the client made");
                    self.client.submitted_to.insert(n, queue);
                    if let Some(earlier) = self.client.keys.insert(key.clone(), lsn) {
                        assert_eq!(earlier, lsn, "ORC-9: key {key} got another LSN");
                    }
                    self.client.accepted.insert(lsn, key);
                }
            }
            (Ask::Submit { queue, keys }, other) => {
                panic!(
                    "seed {}: Submit to queue {queue} of {keys:?}: {other:?}",
                    self.seed
                )
            }
            (Ask::Results { queue }, Ok(OrchestratorReply::Results(results))) => {
                let lsns: Vec<Lsn> = results.iter().map(|r| r.record.lsn()).collect();
                if !lsns.is_empty() && self.rng.chance(60) {
                    self.client_send(Ask::Retire { queue, lsns });
                }
            }
            _ => {}
        }
    }

    // ---- the loop -------------------------------------------------------------------------

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Arrive { input, dest } => {
                if self.orch_up {
                    self.feed(input, dest);
                }
            }
            Ev::Shell { input, orch } => {
                if self.orch_up && orch == self.orch {
                    self.feed(input, Dest::Nobody);
                }
            }
            Ev::Answer { dest, answer } => self.answer(dest, answer),
            Ev::Submit {
                host,
                proc,
                attempts,
                reply_lost,
                orch,
            } => self.submit_arrives(host, proc, attempts, reply_lost, orch),
            Ev::Cancel {
                host,
                proc,
                attempt,
                reply_lost,
                orch,
            } => self.cancel_arrives(host, proc, attempt, reply_lost, orch),
            Ev::Ends {
                host,
                proc,
                inc,
                attempt,
                state,
            } => {
                let a = &mut self.hosts[host].agents[proc];
                if a.inc == inc && a.held.remove(&attempt) {
                    let t = report(attempt, state, &proc_id(host, proc), Timestamp(self.now));
                    self.report(host, proc, t);
                }
            }
            Ev::Beat { host } => self.beat(host),
            Ev::Resend {
                host,
                proc,
                inc,
                msg,
            } => {
                let a = &self.hosts[host].agents[proc];
                if a.inc == inc && a.in_flight.is_some_and(|(m, _)| m == msg) {
                    // No answer: the same transitions again, first (PA-AG-4).
                    let n = a.in_flight.map_or(0, |(_, n)| n);
                    let batch: Vec<Transition> = a.outbox.iter().take(n).cloned().collect();
                    self.send_batch(host, proc, inc, batch);
                }
            }
            Ev::Commit => {
                if self.orch_up {
                    self.commit();
                }
                let next = self.rng.range(5, 60);
                self.at(next, Ev::Commit);
            }
            Ev::Dispatch { orch } => {
                if self.orch_up && orch == self.orch {
                    self.dispatch_queued = false;
                    self.feed(Input::Dispatch, Dest::Nobody);
                }
            }
            Ev::Tick => {
                if self.orch_up {
                    self.feed(Input::Tick, Dest::Nobody);
                }
                self.at(500, Ev::Tick);
            }
            Ev::ClientTimer => self.client_timer(),
            Ev::OrchCrash => {
                if self.faults() {
                    self.crash_orchestrator();
                    let down = self.rng.range(50, 2_000);
                    self.at(down, Ev::OrchStart);
                    let next = self.rng.range(3_000, 12_000);
                    self.at(next, Ev::OrchCrash);
                }
            }
            Ev::OrchStart => self.start_orchestrator()?,
            Ev::HostBack { host } => {
                let h = &mut self.hosts[host];
                h.up = true;
                for a in &mut h.agents {
                    a.up = true;
                }
            }
            Ev::ProcBack { host, proc } => self.hosts[host].agents[proc].up = true,
        }
        Ok(())
    }

    /// The invariants after every event.
    fn check(&mut self) -> Result<(), String> {
        self.core.audit().map_err(|e| format!("audit: {e}"))?;
        // ORC-12: every accepted action is known until retired.
        for lsn in self.client.accepted.keys() {
            if self.client.retiring.contains(lsn) {
                continue;
            }
            let Some(entry) = self.core.book().action(*lsn) else {
                return Err(format!("accepted action {lsn} is lost"));
            };
            // At most one final record: once finished, an action stays as it ended.
            let record = entry.record;
            if let Some((attempt, state)) = self.finals.get(lsn) {
                if record.attempt_ref() != *attempt || record.state() != *state {
                    return Err(format!(
                        "action {lsn} finished {state} at {attempt:?}, now {} at {:?}",
                        record.state(),
                        record.attempt_ref()
                    ));
                }
            }
        }
        // ORC-16: no proc holds more placed attempts than its maximum.
        for (i, h) in self.hosts.iter().enumerate() {
            for (j, a) in h.agents.iter().enumerate() {
                let placed = self.core.book().placed_on(&proc_id(i, j)).count();
                if placed > a.cap as usize {
                    return Err(format!(
                        "proc {} has {placed} placed attempts, capacity {}",
                        proc_id(i, j),
                        a.cap
                    ));
                }
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        if self.faults() || !self.orch_up || self.client.next_key < self.plan.actions {
            return false;
        }
        if self.client.keys.len() < self.plan.actions {
            return false;
        }
        self.client.queues.iter().all(|(_, id)| {
            self.core
                .book()
                .status(*id)
                .is_ok_and(|status| status.is_complete)
        })
    }

    /// Runs to the end: every queue complete once faults stopped, within a bound.
    pub fn run(&mut self) -> Result<Stats, String> {
        let deadline = self.plan.faults_until + 120_000;
        while let Some(((at, _), ev)) = self.events.pop_first() {
            self.now = at;
            self.stats.events += 1;
            self.step(ev)?;
            if std::mem::take(&mut self.dirty) {
                self.check()?;
            }
            if self.done() {
                return self.finish();
            }
            if self.now > deadline {
                let pending: Vec<_> = self
                    .client
                    .queues
                    .iter()
                    .map(|(_, id)| self.core.book().status(*id))
                    .collect();
                return Err(format!(
                    "not complete {} ms after the faults stopped: {pending:?}; {} of {} keys accepted",
                    self.now - self.plan.faults_until,
                    self.client.keys.len(),
                    self.plan.actions
                ));
            }
        }
        Err("the event queue ran dry".into())
    }

    /// The end: every accepted, unretired action is final, each listed once in the results.
    fn finish(&mut self) -> Result<Stats, String> {
        let mut listed = BTreeSet::new();
        for (_, id) in &self.client.queues {
            let mut after = None;
            loop {
                let page = self
                    .core
                    .book()
                    .results(*id, after, 32)
                    .map_err(|e| e.to_string())?;
                let Some(last) = page.last().map(|r| r.lsn()) else {
                    break;
                };
                for record in page {
                    if !listed.insert(record.lsn()) {
                        return Err(format!("action {} listed twice", record.lsn()));
                    }
                }
                after = Some(last);
            }
        }
        for lsn in self.client.accepted.keys() {
            if self.client.retiring.contains(lsn) {
                continue;
            }
            let entry = self
                .core
                .book()
                .action(*lsn)
                .ok_or_else(|| format!("accepted action {lsn} is lost"))?;
            if !entry.record.is_terminal() || !listed.contains(lsn) {
                return Err(format!(
                    "action {lsn} is {} at the end (listed: {})",
                    entry.record.state(),
                    listed.contains(lsn)
                ));
            }
            if entry.record.state() == ActionState::Completed {
                self.stats.completed += 1;
            }
        }
        // The journal still rebuilds the state.
        self.commit();
        let rebuilt = replay(Core::new(self.config), &self.journal);
        if let Some(diff) = difference(&self.core, &rebuilt) {
            return Err(format!("the journal does not rebuild the state: {diff}"));
        }
        self.stats.journal = self.journal.len();
        self.stats.end_ms = self.now;
        Ok(self.stats)
    }
}
