//! Fixtures shared by the replay property test and the simulation: ids, workers, an [`Env`]
//! whose blob store can miss blobs, a journaling driver of the core, a small deterministic RNG,
//! and the checks both run (state equality after a replay, the invariants of a live core).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use procmesh_orchestrator_core::{Core, CoreConfig, Effect, Env, Input, Logged, Outcome, Replay};
use procmesh_protocol::messages::agent::Capacity;
use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorRequest, ProcCapacity, QueueToken, SubmitAction,
};
use procmesh_protocol::spec::{ActionDef, InputFile, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_protocol::{
    ActionState, ActorId, AttemptRef, BlobHash, ExitStatus, HostAddr, Lsn, ProcId, Timestamp,
    Transition, TransitionDetail,
};

// ---- ids and messages -------------------------------------------------------------------------

/// The address of fake host `i`.
pub fn host_addr(i: usize) -> HostAddr {
    HostAddr::Local(format!("host-{i}"))
}

/// Proc `j` of host `i`.
pub fn proc_id(i: usize, j: usize) -> ProcId {
    host_addr(i)
        .proc(&format!("proc-{j}"))
        .expect("a valid proc name")
}

/// The agent of proc `j` of host `i`.
pub fn agent_id(i: usize, j: usize) -> ActorId {
    proc_id(i, j).actor("agent").expect("a valid actor name")
}

/// The client's actor.
pub fn client_id() -> ActorId {
    HostAddr::Local("client".into())
        .proc("cli")
        .and_then(|p| p.actor("client"))
        .expect("a valid client id")
}

/// What fake host `i` registers with.
pub fn host_info(i: usize, capacity: u32) -> HostInfo {
    HostInfo {
        addr: host_addr(i),
        capacity,
        labels: BTreeMap::new(),
        system: SystemInfo {
            cores: 4,
            memory_bytes: 1 << 30,
            os: "linux".into(),
            hostname: format!("host-{i}"),
            arch: "x86_64".into(),
        },
        version: "0.1.0".into(),
        node: String::new(),
        node_secret: None,
        isolation: None,
    }
}

/// A heartbeat of host `i` naming `procs` (proc index, max) and `running`.
pub fn heartbeat(i: usize, procs: &[(usize, u32)], running: Vec<AttemptRef>) -> Heartbeat {
    Heartbeat {
        addr: host_addr(i),
        procs: procs
            .iter()
            .map(|&(j, max)| ProcCapacity {
                agent: agent_id(i, j),
                capacity: Capacity { max, free: max },
                restarts: 0,
            })
            .collect(),
        running,
    }
}

/// A request as the shell hands it over (loopback, no token).
pub fn request(message: OrchestratorRequest, from: ActorId) -> Input {
    Input::Request(procmesh_orchestrator_core::Request {
        message,
        from,
        loopback: true,
        token: None,
        peer: None,
    })
}

/// `CreateQueue` with the drawn token `token`.
pub fn create_queue(retry_limit: u32, token: QueueToken) -> Input {
    let config = procmesh_protocol::messages::orchestrator::QueueConfig {
        retry_limit,
        name: "q".into(),
        ..Default::default()
    };
    Input::Request(procmesh_orchestrator_core::Request {
        message: OrchestratorRequest::CreateQueue(config),
        from: client_id(),
        loopback: false,
        token: Some(token),
        peer: None,
    })
}

/// The blob of worker `n`'s one file.
pub fn worker_blob(n: u8) -> BlobHash {
    BlobHash::of(&[b'w', n])
}

/// A blob no store holds (see [`TestEnv`]).
pub fn absent_blob() -> BlobHash {
    BlobHash::of(b"nobody uploaded this")
}

/// A valid worker package, distinct per `n`.
pub fn worker(n: u8) -> WorkerDescriptor {
    WorkerDescriptor {
        executable: "run.sh".into(),
        files: vec![WorkerFile {
            path: "run.sh".into(),
            hash: worker_blob(n),
            size: 2,
            executable: true,
        }],
        directories: Vec::new(),
        env: BTreeMap::new(),
        host_program: None,
    }
}

/// A worker package that fails validation (its executable is not among its files).
pub fn invalid_worker() -> WorkerDescriptor {
    WorkerDescriptor {
        executable: "missing.sh".into(),
        ..worker(200)
    }
}

/// One action of `worker`, optionally with an input nobody uploaded and an idempotency key.
pub fn action(worker: WorkerId, absent_input: bool, key: Option<String>) -> SubmitAction {
    let mut def = ActionDef::new(worker);
    if absent_input {
        def.inputs.push(InputFile {
            path: "in.txt".into(),
            hash: absent_blob(),
            size: 1,
        });
    }
    SubmitAction {
        action: def,
        priority: None,
        idempotency_key: key,
    }
}

/// An agent's report of `attempt` entering `state` on `proc`.
pub fn report(attempt: AttemptRef, state: ActionState, proc: &ProcId, at: Timestamp) -> Transition {
    let mut detail = TransitionDetail::default();
    match state {
        ActionState::Running => detail.location = Some(proc.clone()),
        ActionState::Completed => {
            detail.exit = Some(ExitStatus::Code(0));
            detail.stdout_tail = format!("{} {}", attempt.lsn, attempt.attempt).into_bytes();
        }
        ActionState::Failed => {
            detail.exit = Some(ExitStatus::Code(1));
            detail.stderr_tail = b"boom".to_vec();
        }
        _ => detail.reason = Some("stopped".into()),
    }
    Transition::new(attempt.lsn, attempt.attempt, state, at).with_detail(detail)
}

// ---- the world outside the core -------------------------------------------------------------

/// An [`Env`]: a blob store holding everything but [`absent_blob`] and the blobs in `missing`,
/// and subscribers on every queue with an odd id (or on all, with `follow_all`).
#[derive(Debug, Clone, Default)]
pub struct TestEnv {
    pub missing: BTreeSet<BlobHash>,
    pub follow_all: bool,
}

impl Env for TestEnv {
    fn has_blob(&self, hash: &BlobHash) -> bool {
        *hash != absent_blob() && !self.missing.contains(hash)
    }

    fn follows(&self, queue: u64) -> bool {
        self.follow_all || queue % 2 == 1
    }
}

/// The settings of the tests: small batches so that `BatchTooLarge` and `DispatchAgain` happen.
// The defaults fill in settings added later.
#[allow(clippy::needless_update)]
pub fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_interval_ms: 1_000,
        lost_after_ms: 3_500,
        max_submit_batch: 8,
        dispatch_batch: 4,
        result_page: 16,
        ..CoreConfig::default()
    }
}

// ---- the journaling driver --------------------------------------------------------------------

/// A core as the shell drives it: every input whose outcome changed state is journaled, in
/// order, with its `now` (ORC-26).
pub struct Journaled {
    pub core: Core,
    pub journal: Vec<Logged>,
}

impl Journaled {
    pub fn new(config: CoreConfig) -> Journaled {
        Journaled {
            core: Core::new(config),
            journal: Vec::new(),
        }
    }

    /// Hands `input` to the core; journals it if it changed state. Checks that an input that
    /// changed nothing sends nothing, and that the shell's pre-filter would have encoded it.
    pub fn handle(&mut self, input: Input, now: Timestamp, env: &dyn Env) -> Outcome {
        let may_change = input.may_change_state();
        let logged = Logged {
            now,
            input: input.clone(),
        };
        let outcome = self.core.handle(input, now, env);
        if outcome.changed {
            assert!(
                may_change,
                "ORC-26: {:?} changed state, but the shell does not journal it",
                logged.input
            );
            self.journal.push(logged);
        } else {
            check_quiet(&logged.input, &outcome);
        }
        outcome
    }
}

/// A refused or read-only input changes nothing and sends nothing: no submission, stop order,
/// event or dispatch pass leaves for it (only a subscription, which is not state).
pub fn check_quiet(input: &Input, outcome: &Outcome) {
    for effect in &outcome.effects {
        assert!(
            matches!(
                effect,
                Effect::Subscribe { .. } | Effect::Unsubscribe { .. }
            ),
            "ORC-26: {input:?} changed nothing but produced {effect:?}"
        );
    }
}

/// The core rebuilt from `journal` on top of `base` (a fresh core, or a restored snapshot).
pub fn replay(mut base: Core, journal: &[Logged]) -> Core {
    for logged in journal {
        base.handle(logged.input.clone(), logged.now, &Replay);
    }
    base
}

/// A snapshot as the shell writes it, and the core read back from it.
pub fn snapshot_round_trip(core: &Core) -> Core {
    let bytes = rmp_serde::to_vec_named(core).expect("a core serialises");
    rmp_serde::from_slice(&bytes).expect("a snapshot deserialises")
}

/// Every unretired action's LSN, ascending.
pub fn lsns(core: &Core) -> Vec<Lsn> {
    (1..=core.book().last_lsn().0)
        .map(Lsn)
        .filter(|lsn| core.book().action(*lsn).is_some())
        .collect()
}

/// Says where two cores differ, through what a client can see (counts, queue statuses, every
/// record, definition and result), then through their whole state: `None` when equal.
pub fn difference(a: &Core, b: &Core) -> Option<String> {
    if a.book().counts() != b.book().counts() {
        return Some(format!(
            "counts {:?} vs {:?}",
            a.book().counts(),
            b.book().counts()
        ));
    }
    let statuses = |c: &Core| c.book().queues().map(|q| q.status()).collect::<Vec<_>>();
    if statuses(a) != statuses(b) {
        return Some(format!("queues {:?} vs {:?}", statuses(a), statuses(b)));
    }
    if lsns(a) != lsns(b) || a.book().last_lsn() != b.book().last_lsn() {
        return Some(format!("actions {:?} vs {:?}", lsns(a), lsns(b)));
    }
    for lsn in lsns(a) {
        let (x, y) = (a.book().action(lsn), b.book().action(lsn));
        if x != y {
            return Some(format!("action {lsn}: {x:?} vs {y:?}"));
        }
        if a.records().action(lsn) != b.records().action(lsn)
            || a.records().result(lsn) != b.records().result(lsn)
        {
            return Some(format!("records of action {lsn} differ"));
        }
    }
    if a.book().pending().iter().collect::<Vec<_>>()
        != b.book().pending().iter().collect::<Vec<_>>()
    {
        return Some("pending order differs".into());
    }
    if a.audit() != b.audit() {
        return Some(format!("audit {:?} vs {:?}", a.audit(), b.audit()));
    }
    if a != b {
        return Some(format!(
            "hosts, missing attempts or internal indexes differ:\n{a:#?}\nvs\n{b:#?}"
        ));
    }
    None
}

// ---- randomness -------------------------------------------------------------------------------

/// splitmix64: small, fast, deterministic, good enough for a simulation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability `permille`/1000.
    pub fn chance_permille(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}
