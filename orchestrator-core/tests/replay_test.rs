//! Replay property test of the orchestrator core (ORC-26): random sequences of host, agent,
//! client and shell inputs over virtual time, driven the way the shell drives the core (journal
//! every input that changed state), with a crash at a random point and a snapshot taken at
//! another. The journal replayed from an empty core, or from the snapshot plus the tail after
//! it, rebuilds exactly the live state; every effect that left is covered by the journal; and the
//! recovered cores continue exactly as the live one would.

mod utils;

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::Index;

use procmesh_orchestrator_core::{Core, Effect, Input, Logged, Outcome, Replay};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorReply, OrchestratorRequest as R, QueueRef, QueueToken,
};
use procmesh_protocol::{ActionState, Attempt, AttemptRef, Lsn, Timestamp};

use utils::*;

const HOSTS: usize = 3;
const PROCS: usize = 3;

/// The capacity of proc `j` of host `i` (fixed: a proc's maximum does not change).
fn capacity(i: usize, j: usize) -> u32 {
    1 + ((i + j) % 3) as u32
}

/// One step of a run, interpreted against the live state when it is taken (so that reports
/// name attempts that exist, cancellations name actions that exist, …).
#[derive(Debug, Clone)]
enum Op {
    /// Virtual time passes; not an input.
    Advance(u64),
    CreateQueue {
        retry_limit: u32,
        reuse_token: bool,
    },
    /// Worker 0..=2; 3 is an invalid descriptor. Worker 1's blob is missing from the store.
    RegisterWorker(u8),
    /// `worker` 3 was never registered; `n` above 8 is too large a batch.
    Submit {
        queue: usize,
        n: usize,
        worker: u8,
        absent_input: bool,
        key: Option<u8>,
    },
    RegisterHost(usize),
    /// Names the procs in `procs` (a bit mask), and the attempts placed on the host whose bit
    /// (LSN mod 8) is set in `keep`.
    Heartbeat {
        host: usize,
        procs: u8,
        keep: u8,
    },
    Dispatch,
    /// An agent reports a placed attempt (`state`: Running, Completed, Failed, Cancelled); two
    /// at once in an `ActionUpdates` with `batch`.
    Report {
        pick: Index,
        state: u8,
        batch: bool,
    },
    /// The last report again (an agent re-sending what was not acknowledged).
    Duplicate,
    /// A report for an attempt before or after the current one.
    WrongAttempt {
        pick: Index,
        earlier: bool,
    },
    Tick,
    ProcLost {
        host: usize,
        proc: usize,
    },
    SubmitFailed {
        pick: Index,
    },
    StopFailed {
        pick: Index,
    },
    CancelAction {
        pick: Index,
    },
    CancelQueue {
        queue: usize,
    },
    Drain {
        queue: usize,
    },
    Retire {
        queue: usize,
    },
    Reschedule {
        pick: Index,
    },
    SetPriority {
        pick: Index,
        priority: i32,
    },
    /// A read (status, results, action, hosts, blobs), or a queue id from a remote peer.
    Read {
        queue: usize,
        kind: u8,
    },
    Recovered,
}

/// How most runs start: two queues, two workers (one missing its blob), two hosts.
fn prelude() -> Vec<Op> {
    vec![
        Op::CreateQueue {
            retry_limit: 2,
            reuse_token: false,
        },
        Op::CreateQueue {
            retry_limit: 0,
            reuse_token: false,
        },
        Op::RegisterWorker(0),
        Op::RegisterWorker(1),
        Op::RegisterWorker(2),
        Op::RegisterHost(0),
        Op::RegisterHost(1),
        Op::Heartbeat {
            host: 0,
            procs: 0b111,
            keep: 0xff,
        },
        Op::Heartbeat {
            host: 1,
            procs: 0b011,
            keep: 0xff,
        },
    ]
}

/// A run: usually the prelude, then random steps.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(op(), 1..200),
    )
        .prop_map(|(prelude_first, ops)| {
            if prelude_first {
                prelude().into_iter().chain(ops).collect()
            } else {
                ops
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..700).prop_map(Op::Advance),
        2 => (0u32..3, prop::bool::weighted(0.1))
            .prop_map(|(retry_limit, reuse_token)| Op::CreateQueue { retry_limit, reuse_token }),
        2 => (0u8..4).prop_map(Op::RegisterWorker),
        8 => (0usize..4, 1usize..11, prop_oneof![6 => Just(0u8), 1 => Just(1), 2 => Just(2), 1 => Just(3)], prop::bool::weighted(0.1), prop::option::weighted(0.3, 0u8..6))
            .prop_map(|(queue, n, worker, absent_input, key)| Op::Submit { queue, n, worker, absent_input, key }),
        2 => (0..HOSTS).prop_map(Op::RegisterHost),
        6 => (0..HOSTS, any::<u8>(), any::<u8>())
            .prop_map(|(host, procs, keep)| Op::Heartbeat { host, procs: procs | 1, keep: keep | 0x0f }),
        5 => Just(Op::Dispatch),
        8 => (any::<Index>(), 0u8..4, prop::bool::weighted(0.2))
            .prop_map(|(pick, state, batch)| Op::Report { pick, state, batch }),
        2 => Just(Op::Duplicate),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(pick, earlier)| Op::WrongAttempt { pick, earlier }),
        3 => Just(Op::Tick),
        1 => (0..HOSTS, 0..PROCS).prop_map(|(host, proc)| Op::ProcLost { host, proc }),
        1 => any::<Index>().prop_map(|pick| Op::SubmitFailed { pick }),
        1 => any::<Index>().prop_map(|pick| Op::StopFailed { pick }),
        1 => any::<Index>().prop_map(|pick| Op::CancelAction { pick }),
        1 => (0usize..4).prop_map(|queue| Op::CancelQueue { queue }),
        1 => (0usize..4).prop_map(|queue| Op::Drain { queue }),
        2 => (0usize..4).prop_map(|queue| Op::Retire { queue }),
        1 => any::<Index>().prop_map(|pick| Op::Reschedule { pick }),
        1 => (any::<Index>(), -2i32..3).prop_map(|(pick, priority)| Op::SetPriority { pick, priority }),
        2 => (0usize..4, 0u8..6).prop_map(|(queue, kind)| Op::Read { queue, kind }),
        1 => Just(Op::Recovered),
    ]
}

/// What the driver remembers between steps to make meaningful inputs.
#[derive(Debug, Default, Clone)]
struct Ctx {
    now: u64,
    /// The token of queue `id`, at `id - 1`.
    tokens: Vec<QueueToken>,
    drawn: u64,
    last_report: Option<Input>,
}

impl Ctx {
    fn queue(&self, n: usize) -> QueueRef {
        match n {
            // A token nobody drew: UnknownQueue.
            3 => QueueRef::Token(QueueToken::from_bytes([0xee; 12])),
            _ if self.tokens.is_empty() => QueueRef::Token(QueueToken::from_bytes([0xee; 12])),
            _ => QueueRef::Token(self.tokens[n % self.tokens.len()]),
        }
    }

    /// Remembers the token of a queue just created.
    fn note(&mut self, outcome: &Outcome) {
        if let Some(Ok(OrchestratorReply::QueueCreated { id, token })) = &outcome.reply {
            assert_eq!(*id as usize, self.tokens.len() + 1, "queue ids are 1, 2, …");
            self.tokens.push(*token);
        }
    }

    fn queue_of(&self, core: &Core, lsn: Lsn) -> QueueRef {
        match core.book().action(lsn) {
            Some(entry) => QueueRef::Token(self.tokens[entry.queue as usize - 1]),
            None => self.queue(0),
        }
    }
}

/// The attempts placed (`Submitting` or `Running`), by LSN.
fn placed(core: &Core) -> Vec<AttemptRef> {
    lsns(core)
        .into_iter()
        .filter_map(|lsn| core.book().action(lsn))
        .filter(|e| {
            matches!(
                e.record.state(),
                ActionState::Submitting | ActionState::Running
            )
        })
        .map(|e| e.record.attempt_ref())
        .collect()
}

/// An LSN ever assigned (perhaps retired since), or 1.
fn any_lsn(core: &Core, pick: &Index) -> Lsn {
    let last = core.book().last_lsn().0;
    if last == 0 {
        Lsn(1)
    } else {
        Lsn(1 + pick.index(last as usize) as u64)
    }
}

/// The input `op` makes now, if any (time passing is not one).
fn input_of(op: &Op, core: &Core, ctx: &mut Ctx) -> Option<Input> {
    let now = Timestamp(ctx.now);
    let client = client_id();
    let from_agent = |core: &Core, lsn: Lsn| {
        core.book()
            .action(lsn)
            .and_then(|e| e.record.location().cloned())
            .and_then(|p| p.actor("agent").ok())
            .unwrap_or_else(|| agent_id(0, 0))
    };
    let input = match op {
        Op::Advance(ms) => {
            ctx.now += ms;
            return None;
        }
        Op::CreateQueue {
            retry_limit,
            reuse_token,
        } => {
            let token = match (reuse_token, ctx.tokens.first()) {
                (true, Some(token)) => *token,
                _ => {
                    ctx.drawn += 1;
                    let mut bytes = [0u8; 12];
                    bytes[..8].copy_from_slice(&ctx.drawn.to_le_bytes());
                    QueueToken::from_bytes(bytes)
                }
            };
            create_queue(*retry_limit, token)
        }
        Op::RegisterWorker(n) => {
            let descriptor = if *n == 3 {
                invalid_worker()
            } else {
                worker(*n)
            };
            request(R::RegisterWorker(descriptor), client)
        }
        Op::Submit {
            queue,
            n,
            worker: w,
            absent_input,
            key,
        } => {
            let id = worker(*w).id();
            let actions = (0..*n)
                .map(|i| {
                    let key = key.map(|k| format!("k{}", k as usize + i));
                    action(id, *absent_input && i == n / 2, key)
                })
                .collect();
            request(
                R::Submit {
                    queue: ctx.queue(*queue),
                    actions,
                },
                client,
            )
        }
        Op::RegisterHost(i) => {
            let total = (0..PROCS).map(|j| capacity(*i, j)).sum();
            request(R::RegisterHost(host_info(*i, total)), agent_id(*i, 0))
        }
        Op::Heartbeat { host, procs, keep } => {
            let names: Vec<(usize, u32)> = (0..PROCS)
                .filter(|j| procs & (1 << j) != 0)
                .map(|j| (j, capacity(*host, j)))
                .collect();
            let running = placed(core)
                .into_iter()
                .filter(|a| {
                    core.book()
                        .action(a.lsn)
                        .and_then(|e| e.record.location().cloned())
                        .is_some_and(|p| *p.addr() == host_addr(*host))
                })
                .filter(|a| keep & (1 << (a.lsn.0 % 8)) != 0)
                .collect();
            request(
                R::Heartbeat(heartbeat(*host, &names, running)),
                agent_id(*host, 0),
            )
        }
        Op::Dispatch => Input::Dispatch,
        Op::Report { pick, state, batch } => {
            let placed = placed(core);
            if placed.is_empty() {
                return None;
            }
            let state = [
                ActionState::Running,
                ActionState::Completed,
                ActionState::Failed,
                ActionState::Cancelled,
            ][*state as usize];
            let first = pick.index(placed.len());
            let chosen: Vec<AttemptRef> = if *batch {
                vec![placed[first], placed[(first + 1) % placed.len()]]
            } else {
                vec![placed[first]]
            };
            let transitions: Vec<_> = chosen
                .iter()
                .map(|a| {
                    let proc = core
                        .book()
                        .action(a.lsn)
                        .and_then(|e| e.record.location().cloned())
                        .unwrap_or_else(|| proc_id(0, 0));
                    report(*a, state, &proc, now)
                })
                .collect();
            let agent = from_agent(core, chosen[0].lsn);
            let message = if *batch {
                R::ActionUpdates(transitions)
            } else {
                R::ActionUpdate(transitions[0].clone())
            };
            let input = request(message, agent);
            ctx.last_report = Some(input.clone());
            input
        }
        Op::Duplicate => ctx.last_report.clone()?,
        Op::WrongAttempt { pick, earlier } => {
            let lsn = any_lsn(core, pick);
            let current = core
                .book()
                .action(lsn)
                .map_or(1, |e| e.record.attempt().get());
            let n = if *earlier {
                current.saturating_sub(1).max(1)
            } else {
                current + 1
            };
            let attempt = AttemptRef {
                lsn,
                attempt: Attempt::new(n).unwrap_or(Attempt::FIRST),
            };
            request(
                R::ActionUpdate(report(attempt, ActionState::Running, &proc_id(0, 0), now)),
                agent_id(0, 0),
            )
        }
        Op::Tick => Input::Tick,
        Op::ProcLost { host, proc } => request(
            R::ProcLost {
                proc_id: proc_id(*host, *proc),
                status: None,
                reason: "exited".into(),
            },
            agent_id(*host, 0),
        ),
        Op::SubmitFailed { pick } => {
            let placed = placed(core);
            let attempt = *placed.get(pick.index(placed.len().max(1)))?;
            let proc = core
                .book()
                .action(attempt.lsn)
                .and_then(|e| e.record.location().cloned())
                .unwrap_or_else(|| proc_id(0, 0));
            Input::SubmitFailed {
                attempt,
                proc,
                reason: "no capacity".into(),
            }
        }
        Op::StopFailed { pick } => {
            let lsn = any_lsn(core, pick);
            let attempt = core.book().action(lsn).map_or(
                AttemptRef {
                    lsn,
                    attempt: Attempt::FIRST,
                },
                |e| e.record.attempt_ref(),
            );
            Input::StopFailed {
                attempt,
                reason: "unreachable".into(),
            }
        }
        Op::CancelAction { pick } => {
            let lsn = any_lsn(core, pick);
            request(
                R::CancelAction {
                    queue: ctx.queue_of(core, lsn),
                    lsn,
                },
                client,
            )
        }
        Op::CancelQueue { queue } => request(R::CancelQueue(ctx.queue(*queue)), client),
        Op::Drain { queue } => request(R::Drain(ctx.queue(*queue)), client),
        Op::Retire { queue } => {
            let q = ctx.queue(*queue);
            let mut lsns: Vec<Lsn> = match core.queue(q, true) {
                Ok(id) => core
                    .book()
                    .results(id, None, 5)
                    .map(|r| r.iter().map(|r| r.lsn()).collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            // An unfinished or unknown one beside them is left alone.
            lsns.push(Lsn(core.book().last_lsn().0 + 1));
            request(R::Retire { queue: q, lsns }, client)
        }
        Op::Reschedule { pick } => {
            let lsn = any_lsn(core, pick);
            request(
                R::Reschedule {
                    queue: ctx.queue_of(core, lsn),
                    lsn,
                },
                client,
            )
        }
        Op::SetPriority { pick, priority } => {
            let lsn = any_lsn(core, pick);
            request(
                R::SetPriority {
                    queue: ctx.queue_of(core, lsn),
                    lsn,
                    priority: *priority,
                },
                client,
            )
        }
        Op::Read { queue, kind } => {
            let q = ctx.queue(*queue);
            let message = match kind {
                0 => R::QueueStatus(q),
                1 => R::ListResults {
                    queue: q,
                    after: None,
                    limit: Some(3),
                },
                2 => R::GetAction {
                    queue: q,
                    lsn: Lsn(1),
                },
                3 => R::ListHosts,
                4 => R::MissingBlobs(vec![worker_blob(0), worker_blob(1)]),
                // A queue id from a remote peer: Forbidden (ORC-15), whatever the queue.
                _ => {
                    return Some(Input::Request(procmesh_orchestrator_core::Request {
                        message: R::Drain(QueueRef::Id(1)),
                        from: client,
                        loopback: false,
                        token: None,
                        peer: None,
                    }))
                }
            };
            request(message, client)
        }
        Op::Recovered => Input::Recovered,
    };
    Some(input)
}

/// The environment of a live run: worker 1's blob was never uploaded.
fn env() -> TestEnv {
    TestEnv {
        missing: BTreeSet::from([worker_blob(1)]),
        follow_all: false,
    }
}

/// The decisions among `effects`: what a replay (where nobody listens) must make the same way.
fn decisions(effects: &[Effect]) -> Vec<&Effect> {
    effects
        .iter()
        .filter(|e| !matches!(e, Effect::Publish { .. } | Effect::QueueComplete(_)))
        .collect()
}

/// Checks that what `effects` announced is in `core` (the replay after the input that made
/// them): a submission is placed there, a stop order's attempt is current and unfinished or
/// moved on only by that same input, an event's transition happened.
fn check_covered(effects: &[Effect], core: &Core, at: usize) -> Result<(), TestCaseError> {
    for effect in effects {
        match effect {
            Effect::SubmitBatch { proc, specs, .. } => {
                for spec in specs {
                    let record = core.book().action(spec.lsn).map(|e| e.record.clone());
                    let ok = record.as_ref().is_some_and(|r| {
                        r.attempt() > spec.attempt
                            || (r.attempt() == spec.attempt
                                && r.entered(ActionState::Submitting).is_some()
                                && r.location() == Some(proc))
                    });
                    prop_assert!(
                        ok,
                        "journal entry {at}: submission of {}/{} to {proc} not in the replay: {record:?}",
                        spec.lsn,
                        spec.attempt
                    );
                }
            }
            Effect::Cancel { attempt, .. } => {
                let record = core.book().action(attempt.lsn).map(|e| e.record.clone());
                prop_assert!(
                    record
                        .as_ref()
                        .is_some_and(|r| r.attempt() >= attempt.attempt),
                    "journal entry {at}: stop order for {attempt:?} not in the replay: {record:?}"
                );
            }
            Effect::Publish { transition: t, .. } => {
                let record = core.book().action(t.lsn).map(|e| e.record.clone());
                prop_assert!(
                    record.as_ref().is_some_and(|r| r.attempt() > t.attempt
                        || (r.attempt() == t.attempt && r.entered(t.state).is_some())),
                    "journal entry {at}: event {t:?} not in the replay: {record:?}"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    a.reply == b.reply && a.changed == b.changed && a.effects == b.effects
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // Attests ORC-26
    #[test]
    fn replaying_the_journal_rebuilds_the_state(
        ops in ops(),
        crash in any::<Index>(),
        snap in any::<Index>(),
    ) {
        let env = env();
        let crash = crash.index(ops.len() + 1);
        let snap_after = snap.index(crash + 1);
        let mut live = Journaled::new(config());
        let mut ctx = Ctx::default();
        // The effects that left, by the journal entry of the input that made them.
        let mut sent: Vec<(usize, Vec<Effect>)> = Vec::new();
        let mut snapshot: Option<(Vec<u8>, usize)> = None;
        for (i, op) in ops[..crash].iter().enumerate() {
            if i == snap_after {
                let bytes = rmp_serde::to_vec_named(&live.core).expect("a core serialises");
                snapshot = Some((bytes, live.journal.len()));
            }
            let Some(input) = input_of(op, &live.core, &mut ctx) else { continue };
            let outcome = live.handle(input, Timestamp(ctx.now), &env);
            ctx.note(&outcome);
            if outcome.changed {
                sent.push((live.journal.len() - 1, outcome.effects));
            }
            prop_assert_eq!(live.core.audit(), Ok(()));
        }
        let snapshot = snapshot.unwrap_or_else(|| {
            (rmp_serde::to_vec_named(&live.core).expect("a core serialises"), live.journal.len())
        });

        // (b) Replaying entry by entry makes the same decisions, and each entry's effects are in
        // the state right after it: nothing left that the journal does not cover.
        let mut replayed = Core::new(config());
        let mut sent = sent.into_iter().peekable();
        for (at, Logged { now, input }) in live.journal.iter().enumerate() {
            let again = replayed.handle(input.clone(), *now, &Replay);
            prop_assert!(again.changed, "journal entry {} changes nothing on replay: {:?}", at, input);
            if let Some((_, effects)) = sent.next_if(|(k, _)| *k == at) {
                prop_assert_eq!(decisions(&again.effects), decisions(&effects), "journal entry {}: {:?}", at, input);
                check_covered(&effects, &replayed, at)?;
            }
        }

        // (a) The whole journal, and the snapshot plus its tail, rebuild the live state.
        if let Some(diff) = difference(&live.core, &replayed) {
            return Err(TestCaseError::fail(format!("replay differs from the live core: {diff}")));
        }
        let (bytes, covered) = snapshot;
        let restored: Core = rmp_serde::from_slice(&bytes).expect("the snapshot deserialises");
        let from_snapshot = replay(restored, &live.journal[covered..]);
        if let Some(diff) = difference(&live.core, &from_snapshot) {
            return Err(TestCaseError::fail(format!("snapshot + tail differs from the live core: {diff}")));
        }
        prop_assert_eq!(difference(&live.core, &snapshot_round_trip(&live.core)), None);

        // (c) Deterministic: the recovered cores answer the next inputs as the live one does.
        let mut cores = [replayed, from_snapshot];
        for op in ops[crash..].iter().take(40) {
            let Some(input) = input_of(op, &live.core, &mut ctx) else { continue };
            let now = Timestamp(ctx.now);
            let expected = live.core.handle(input.clone(), now, &env);
            ctx.note(&expected);
            for core in &mut cores {
                let got = core.handle(input.clone(), now, &env);
                prop_assert!(same_outcome(&expected, &got), "{:?}: {:?} vs {:?}", input, expected, got);
            }
        }
        for core in &cores {
            prop_assert_eq!(difference(&live.core, core), None);
        }
    }
}
