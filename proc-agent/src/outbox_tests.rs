//! Unit tests of the pure outbox (`outbox.rs`).

use super::*;
use procmesh_protocol::action::{ActionState, Attempt, Lsn, Timestamp};
use procmesh_protocol::messages::orchestrator::OrchestratorReply;

fn t(lsn: u64, state: ActionState) -> Transition {
    Transition::new(Lsn(lsn), Attempt::FIRST, state, Timestamp::default())
}

fn lsns(outbox: &Outbox) -> Vec<(u64, ActionState)> {
    outbox.iter().map(|t| (t.lsn.0, t.state)).collect()
}

#[test]
fn defaults_are_pinned() {
    let c = PumpConfig::default();
    assert_eq!(c.max_unacknowledged, 100_000);
    assert_eq!(c.max_batch, 512);
    assert_eq!(c.ask_timeout, Duration::from_secs(5));
    assert_eq!(c.backoff_min, Duration::from_millis(100));
    assert_eq!(c.backoff_max, Duration::from_secs(2));
    assert_eq!(c.linger, Duration::from_millis(3));
}

#[test]
fn only_progress_may_be_held() {
    let mut o = Outbox::new(10);
    assert!(!o.progress_only(), "nothing waits");
    o.push(t(1, ActionState::Running));
    o.push(t(2, ActionState::Running));
    assert!(o.progress_only());
    o.push(t(1, ActionState::Completed));
    assert!(!o.progress_only(), "a final transition is never held");
    let _ = o.next_message(512);
    o.push(t(3, ActionState::Running));
    assert!(!o.progress_only(), "a message is in flight");
}

#[test]
fn backoff_doubles_to_its_cap() {
    let c = PumpConfig::default();
    let waits: Vec<u64> = (1..=7).map(|n| backoff(n, &c).as_millis() as u64).collect();
    assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(backoff(u32::MAX, &c), c.backoff_max);
}

#[test]
fn verdicts_follow_the_table() {
    use OrchestratorError as E;
    let v = |r| Verdict::of(&r);
    assert_eq!(v(Ok(Ok(OrchestratorReply::Ack))), Verdict::Acknowledged);
    // The pump's typed answer: a reply, whatever it says.
    assert_eq!(
        Verdict::of(&Ok::<_, SendFailure>(Ok::<(), E>(()))),
        Verdict::Acknowledged
    );
    assert_eq!(
        v(Ok(Err(E::UnknownAction(Lsn(1))))),
        Verdict::Judged("unknown_action")
    );
    assert_eq!(
        v(Ok(Err(E::Internal("x".into())))),
        Verdict::Judged("internal")
    );
    assert!(matches!(v(Ok(Err(E::ShuttingDown))), Verdict::Retry(_)));
    assert!(matches!(
        v(Ok(Err(E::Journal("x".into())))),
        Verdict::Retry(_)
    ));
    assert!(matches!(
        v(Err(SendFailure::Timeout(Duration::from_secs(1)))),
        Verdict::Retry(_)
    ));
    for remote in [
        RemoteError::Undeliverable("x".into()),
        RemoteError::ActorStopped("x".into()),
        RemoteError::Handler("x".into()),
    ] {
        assert!(matches!(v(Err(remote.into())), Verdict::Retry(_)));
    }
    assert!(matches!(
        v(Err(RemoteError::BadMessage("x".into()).into())),
        Verdict::Unsendable(_)
    ));
    assert!(matches!(
        v(Err(SendFailure::Encode("x".into()))),
        Verdict::Unsendable(_)
    ));
    assert_eq!(
        v(Err(SendFailure::Decode("x".into()))),
        Verdict::Acknowledged
    );
}

// Attests PA-AG-3, PA-AG-4
#[test]
fn transitions_stay_until_answered_and_are_resent_first() {
    use ActionState::*;
    let c = PumpConfig::default();
    let mut o = Outbox::new(100);
    o.push(t(1, Running));
    o.push(t(2, Running));
    let first = o.next_message(512).expect("a message");
    assert!(
        matches!(first.clone().request(), OrchestratorRequest::ActionUpdates(ts) if ts.len() == 2)
    );
    assert!(o.next_message(512).is_none(), "one message in flight");
    o.push(t(1, Completed));
    assert_eq!(
        o.answered(&Verdict::Retry("timeout".into()), &c),
        Answered::RetryAfter(Duration::from_millis(100))
    );
    assert!(o.next_message(512).is_none(), "backing off");
    assert_eq!(
        o.answered(&Verdict::Retry("x".into()), &c),
        Answered::RetryAfter(Duration::from_millis(200)),
        "a stray verdict still doubles"
    );
    o.wake();
    let again = o.next_message(2).expect("a message");
    assert_eq!(again, first, "the same transitions, first");
    assert_eq!(o.answered(&Verdict::Acknowledged, &c), Answered::Popped);
    assert_eq!(lsns(&o), [(1, Completed)]);
    assert_eq!(
        o.next_message(512).map(Message::request),
        Some(OrchestratorRequest::ActionUpdate(t(1, Completed)))
    );
    assert_eq!(
        o.answered(&Verdict::Judged("unknown_action"), &c),
        Answered::Popped
    );
    assert!(o.is_empty());
}

#[test]
fn unsendable_messages_are_counted() {
    use ActionState::*;
    let mut o = Outbox::new(10);
    o.push(t(1, Running));
    o.push(t(1, Failed));
    o.next_message(512);
    assert_eq!(
        o.answered(&Verdict::Unsendable("bad".into()), &PumpConfig::default()),
        Answered::Lost {
            count: 2,
            terminal: 1
        }
    );
    assert!(o.is_empty());
    assert_eq!(o.stats.unsendable, 2);
}

// Attests PA-AG-3 (the bound)
#[test]
fn a_full_outbox_drops_superseded_transitions_first_and_never_a_final_silently() {
    use ActionState::*;
    let mut o = Outbox::new(4);
    o.push(t(1, Running));
    o.next_message(1); // 1/Running in flight: never dropped
    o.push(t(2, Submitting));
    o.push(t(2, Running));
    o.push(t(1, Completed));
    // Full: 2/Submitting is superseded by 2/Running.
    assert_eq!(o.push(t(3, Running)), Admitted::MadeRoom(1));
    assert_eq!(
        lsns(&o),
        [(1, Running), (2, Running), (1, Completed), (3, Running)]
    );
    // Full, nothing superseded: a non-terminal is refused.
    assert_eq!(o.push(t(4, Running)), Admitted::Refused);
    assert_eq!(o.stats.refused, 1);
    // A final replaces its own attempt's older transition.
    assert_eq!(o.push(t(3, Completed)), Admitted::MadeRoom(1));
    assert_eq!(
        lsns(&o),
        [(1, Running), (2, Running), (1, Completed), (3, Completed)]
    );
    // A final with nothing to replace is refused, and counted.
    assert_eq!(o.push(t(5, Failed)), Admitted::Refused);
    assert_eq!(o.stats.refused_terminal, 1);
    assert_eq!(o.stats.superseded, 2);
    assert_eq!(o.len(), 4);
}

#[test]
fn compaction_is_amortised() {
    use ActionState::*;
    let mut o = Outbox::new(32);
    for lsn in 0..32 {
        o.push(t(lsn, Completed));
    }
    // Full of finals: refused without rescanning every time.
    for lsn in 100..200 {
        assert_eq!(o.push(t(lsn, Running)), Admitted::Refused);
    }
    assert_eq!(o.pushed_since_compaction, 0);
    assert_eq!(o.len(), 32);
}
