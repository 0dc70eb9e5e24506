//! Retry decisions: what becomes of an attempt that ended `Failed` or `Abandoned` (ORC-6), and
//! whether an operator may reschedule an action by hand (ORC-7).
//!
//! The queue's `retry_limit` ([`QueueConfig::retry_limit`]) counts **automatic retries**, not
//! attempts: with limit `r` an action gets attempts `1 ..= r + 1`. Limit 0 never retries; the
//! default, 3, allows four attempts. This is [`ActionRecord::can_retry`]'s reading.
//!
//! ```text
//!  ended       retries so far < limit   queue cancelled / cancel asked   decision
//!  Failed      yes                      no                               Retry  (attempt + 1)
//!  Abandoned   yes                      no                               Retry
//!  Failed      no                       —                                GiveUp(LimitReached)
//!  any         —                        yes                              GiveUp(Cancelling)
//!  Completed, Cancelled, or not ended                                    GiveUp(NotRetryable)
//! ```
//!
//! [`QueueConfig::retry_limit`]: procmesh_protocol::messages::orchestrator::QueueConfig::retry_limit

use serde::{Deserialize, Serialize};

use procmesh_protocol::action::{ActionRecord, ActionState, RetryError};

/// What to do with an attempt that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryDecision {
    /// Send it back to `Pending` as the next attempt ([`ActionRecord::retry`]).
    Retry,
    /// It stays where it is: final.
    GiveUp(GiveUp),
}

/// Why an action is not retried automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GiveUp {
    /// Only `Failed` and `Abandoned` are ever retried (ACT-3): it is in this state.
    NotRetryable(ActionState),
    /// It was retried `retries` times already, the queue's limit.
    LimitReached {
        /// Retries so far (attempt − 1).
        retries: u32,
        /// The queue's retry limit.
        limit: u32,
    },
    /// Its queue was cancelled, or its own cancellation was asked for: no new attempt.
    Cancelling,
    /// The attempt counter cannot grow any further.
    AttemptsExhausted,
}

/// How many attempts `retry_limit` allows in total: `retry_limit + 1`.
pub const fn max_attempts(retry_limit: u32) -> u64 {
    retry_limit as u64 + 1
}

/// Decides whether `record`, whose attempt just ended, goes back to `Pending` (ORC-6).
/// `cancelling` says that its queue was cancelled or its cancellation was asked for.
pub fn decide(record: &ActionRecord, retry_limit: u32, cancelling: bool) -> RetryDecision {
    let state = record.state();
    if !state.is_retryable() {
        return RetryDecision::GiveUp(GiveUp::NotRetryable(state));
    }
    if cancelling {
        return RetryDecision::GiveUp(GiveUp::Cancelling);
    }
    if !record.can_retry(retry_limit) {
        return RetryDecision::GiveUp(GiveUp::LimitReached {
            retries: record.attempt().retries(),
            limit: retry_limit,
        });
    }
    if record.attempt().next().is_none() {
        return RetryDecision::GiveUp(GiveUp::AttemptsExhausted);
    }
    RetryDecision::Retry
}

/// Whether an operator may reschedule `record` now (ORC-7): a `Failed` or `Abandoned` action
/// may, whatever the retry limit; anything else is refused with
/// [`RetryError::NotRetryable`], naming its state.
pub fn check_reschedule(record: &ActionRecord) -> Result<(), RetryError> {
    if record.state().is_retryable() {
        Ok(())
    } else {
        Err(RetryError::NotRetryable {
            lsn: record.lsn(),
            state: record.state(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_protocol::action::{Lsn, Timestamp};

    fn ended(state: ActionState, attempt: u32) -> ActionRecord {
        let mut r = ActionRecord::new(Lsn(1), Timestamp(1));
        r.apply(&r.transition_to(ActionState::Pending, Timestamp(2)))
            .unwrap();
        for _ in 1..attempt {
            r.apply(&r.transition_to(ActionState::Failed, Timestamp(3)))
                .unwrap();
            r.retry(Timestamp(4)).unwrap();
        }
        r.apply(&r.transition_to(state, Timestamp(5))).unwrap();
        r
    }

    // Attests ORC-6
    #[test]
    fn the_limit_counts_retries() {
        assert_eq!(max_attempts(0), 1);
        assert_eq!(max_attempts(3), 4);
        for state in [ActionState::Failed, ActionState::Abandoned] {
            // Limit 3: attempts 1, 2, 3 retry; attempt 4 is the last.
            for attempt in 1..=3 {
                assert_eq!(
                    decide(&ended(state, attempt), 3, false),
                    RetryDecision::Retry
                );
            }
            assert_eq!(
                decide(&ended(state, 4), 3, false),
                RetryDecision::GiveUp(GiveUp::LimitReached {
                    retries: 3,
                    limit: 3
                })
            );
            assert_eq!(
                decide(&ended(state, 1), 0, false),
                RetryDecision::GiveUp(GiveUp::LimitReached {
                    retries: 0,
                    limit: 0
                })
            );
        }
    }

    // Attests ORC-6
    #[test]
    fn completed_cancelled_and_live_never_retry() {
        for state in [
            ActionState::Completed,
            ActionState::Cancelled,
            ActionState::Running,
            ActionState::Submitting,
        ] {
            assert_eq!(
                decide(&ended(state, 1), 10, false),
                RetryDecision::GiveUp(GiveUp::NotRetryable(state))
            );
        }
        let pending = {
            let mut r = ActionRecord::new(Lsn(1), Timestamp(1));
            r.apply(&r.transition_to(ActionState::Pending, Timestamp(2)))
                .unwrap();
            r
        };
        assert_eq!(
            decide(&pending, 10, false),
            RetryDecision::GiveUp(GiveUp::NotRetryable(ActionState::Pending))
        );
        assert_eq!(
            decide(&ended(ActionState::Failed, 1), 10, true),
            RetryDecision::GiveUp(GiveUp::Cancelling)
        );
    }

    // Attests ORC-7
    #[test]
    fn reschedule_ignores_the_limit_but_not_the_state() {
        assert_eq!(check_reschedule(&ended(ActionState::Failed, 9)), Ok(()));
        assert_eq!(check_reschedule(&ended(ActionState::Abandoned, 1)), Ok(()));
        for state in [ActionState::Completed, ActionState::Cancelled] {
            assert_eq!(
                check_reschedule(&ended(state, 1)),
                Err(RetryError::NotRetryable { lsn: Lsn(1), state })
            );
        }
        let error = check_reschedule(&ended(ActionState::Running, 1)).unwrap_err();
        assert!(error.to_string().contains("only failed or abandoned"));
    }
}
