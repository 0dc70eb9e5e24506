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

mod client;
mod hosts;
mod shell;

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
