//! Property tests of the action state machine over random sequences of transitions and
//! retries, including stale, future and foreign updates.

use proptest::collection::vec;
use proptest::prelude::*;

use procmesh_protocol::action::{
    ActionRecord, ActionState, Attempt, Ignored, Lsn, Timestamp, Transition, TransitionDetail,
};
use procmesh_protocol::{ExitStatus, ProcId};

const LSN: Lsn = Lsn(7);

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// A transition; `attempt_delta` is relative to the record's attempt when it is applied.
    Apply {
        other_lsn: bool,
        attempt_delta: i64,
        state: ActionState,
        at: u64,
        detail: bool,
    },
    Retry {
        now: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let state = proptest::sample::select(ActionState::ALL.to_vec());
    prop_oneof![
        6 => (
            prop::bool::weighted(0.05),
            prop_oneof![8 => Just(0i64), 1 => -3i64..0, 1 => 1i64..3],
            state,
            0u64..2_000,
            any::<bool>(),
        )
            .prop_map(|(other_lsn, attempt_delta, state, at, detail)| Op::Apply {
                other_lsn,
                attempt_delta,
                state,
                at,
                detail,
            }),
        1 => (0u64..2_000).prop_map(|now| Op::Retry { now }),
    ]
}

fn detail() -> TransitionDetail {
    TransitionDetail {
        location: Some("local!h,p".parse::<ProcId>().unwrap()),
        exit: Some(ExitStatus::Code(1)),
        reason: Some("boom".into()),
        cpu_ms: Some(10),
        peak_memory_bytes: Some(4096),
        ..TransitionDetail::default()
    }
}

/// The transition `op` stands for, given the record it is applied to.
fn transition_for(record: &ActionRecord, op: &Op) -> Option<Transition> {
    let Op::Apply {
        other_lsn,
        attempt_delta,
        state,
        at,
        detail: with_detail,
    } = op
    else {
        return None;
    };
    let n = (i64::from(record.attempt().get()) + attempt_delta).max(1);
    let attempt = Attempt::new(u32::try_from(n).unwrap()).unwrap();
    let lsn = if *other_lsn { Lsn(LSN.0 + 1) } else { LSN };
    let t = Transition::new(lsn, attempt, *state, Timestamp(*at));
    Some(if *with_detail {
        t.with_detail(detail())
    } else {
        t
    })
}

/// ACT-4: within an attempt, entered states' times are non-decreasing in lifecycle order, and
/// at most one terminal state was entered (ACT-2).
fn check_times(record: &ActionRecord) -> Result<(), TestCaseError> {
    let times: Vec<_> = record.times().iter().collect();
    for pair in times.windows(2) {
        prop_assert!(pair[0].1 <= pair[1].1, "times run backwards: {:?}", times);
    }
    let terminal = times.iter().filter(|(s, _)| s.is_terminal()).count();
    prop_assert!(terminal <= 1, "two terminal states entered: {:?}", times);
    prop_assert!(
        record.entered(record.state()).is_some(),
        "current state has no time"
    );
    for (state, _) in &times {
        prop_assert!(
            state.stage() <= record.state().stage(),
            "{} entered but the record is {}",
            state,
            record.state()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // Attests ACT-1, ACT-2, ACT-3, ACT-4, ACT-8, ACT-9
    #[test]
    fn histories_only_move_forward_except_by_retry(ops in vec(op(), 0..40)) {
        let mut record = ActionRecord::new(LSN, Timestamp(100));
        for op in &ops {
            let before = record.clone();
            match transition_for(&record, op) {
                Some(t) => match record.apply(&t) {
                    Ok(applied) => {
                        // ACT-1: strictly forward; ACT-2: never out of a terminal state.
                        prop_assert!(applied.to.is_after(before.state()));
                        prop_assert!(!before.state().is_terminal());
                        prop_assert_eq!(applied.from, before.state());
                        prop_assert_eq!(record.state(), t.state);
                        // ACT-8: transitions never change the attempt.
                        prop_assert_eq!(record.attempt(), before.attempt());
                        // ACT-4: earlier entries are kept; the new one is not before them.
                        for (state, at) in before.times().iter() {
                            prop_assert_eq!(record.entered(state), Some(at));
                            prop_assert!(at <= applied.at);
                        }
                        prop_assert!(applied.at >= Timestamp(t.at.as_millis().max(1)));
                    }
                    Err(ignored) => {
                        // ACT-9
                        prop_assert_eq!(&record, &before, "{} changed the record", ignored);
                        if before.state().is_terminal() && t.lsn == LSN && t.attempt == before.attempt() {
                            let finished = matches!(ignored, Ignored::Finished { .. });
 prop_assert!(finished, "expected Finished, got {:?}", ignored);
                        }
                    }
                },
                None => {
                    let Op::Retry { now } = op else { unreachable!() };
                    match record.retry(Timestamp(*now)) {
                        Ok(attempt) => {
                            // ACT-3, ACT-8: the one way back, one attempt further.
                            prop_assert!(before.state().is_retryable());
                            prop_assert_eq!(attempt.get(), before.attempt().get() + 1);
                            prop_assert_eq!(record.attempt(), attempt);
                            prop_assert_eq!(record.state(), ActionState::Pending);
                            prop_assert_eq!(record.execution(), None);
                            prop_assert_eq!(record.last_error(), before.last_error());
                            prop_assert_eq!(
                                record.entered(ActionState::New),
                                before.entered(ActionState::New)
                            );
                            prop_assert_eq!(record.times().iter().count(), 2);
                        }
                        Err(_) => {
                            prop_assert!(!before.state().is_retryable());
                            prop_assert_eq!(&record, &before);
                        }
                    }
                }
            }
            // ACT-8: attempts only grow.
            prop_assert!(record.attempt() >= before.attempt());
            // ACT-1, ACT-3: the stage only drops through a retry to Pending.
            if record.state().stage() < before.state().stage() {
                prop_assert_eq!(record.state(), ActionState::Pending);
                prop_assert!(record.attempt() > before.attempt());
            }
            check_times(&record)?;
        }
    }

    // Attests ACT-5, ACT-6, ACT-7, ACT-9
    #[test]
    fn stale_future_and_foreign_updates_change_nothing(ops in vec(op(), 0..40)) {
        let mut record = ActionRecord::new(LSN, Timestamp(100));
        let mut sent = Vec::new();
        for op in &ops {
            match transition_for(&record, op) {
                Some(t) => {
                    let _ = record.apply(&t);
                    sent.push(t);
                }
                None => {
                    let Op::Retry { now } = op else { unreachable!() };
                    let _ = record.retry(Timestamp(*now));
                }
            }
        }
        // Replay every update ever sent: what names an older attempt is stale, what names a
        // newer one or another action is refused, and none of them changes anything.
        let before = record.clone();
        let foreign = sent
            .iter()
            .filter(|t| t.lsn != LSN || t.attempt != before.attempt());
        for t in foreign {
            let result = record.apply(t);
            if t.lsn != LSN {
                prop_assert_eq!(result, Err(Ignored::OtherLsn { record: LSN, got: t.lsn }));
            } else if t.attempt < before.attempt() {
                prop_assert_eq!(
                    result,
                    Err(Ignored::Stale { current: before.attempt(), got: t.attempt })
                );
            } else {
                let future = matches!(result, Err(Ignored::FutureAttempt { .. }));
 prop_assert!(future, "expected FutureAttempt, got {:?}", result);
                prop_assert!(result.unwrap_err().is_violation());
            }
            prop_assert_eq!(&record, &before);
        }
    }
}

// Attests ACT-2
#[test]
fn cancelled_is_reachable_from_every_live_state_only() {
    for (i, from) in ActionState::ALL.into_iter().enumerate() {
        let mut record = ActionRecord::new(LSN, Timestamp(1));
        if from != ActionState::New {
            record
                .apply(&record.transition_to(from, Timestamp(2)))
                .unwrap();
        }
        let result = record.apply(&record.transition_to(ActionState::Cancelled, Timestamp(3)));
        assert_eq!(
            result.is_ok(),
            !from.is_terminal(),
            "cancel from {from} (#{i})"
        );
    }
}
