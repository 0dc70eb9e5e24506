//! Bounded waits: poll a condition until it holds or a bound passes, and say which.
//!
//! Callers decide what a timeout means (`assert!(eventually(..).await, "..")`). A synchronous
//! condition in async code is `eventually(within, || std::future::ready(cond()))`.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `check` every [`POLL`] (blocking the thread) until it returns true or `within`
/// passes; whether it did. For tests that run no async runtime on this thread.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls the async `check` every [`POLL`] until it returns true or `within` passes; whether it
/// did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_is_bounded() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), || {
            n += 1;
            n == 3
        }));
        assert!(!wait_until(Duration::from_millis(30), || false));
    }

    #[tokio::test]
    async fn eventually_is_bounded() {
        let mut n = 0;
        assert!(
            eventually(Duration::from_secs(1), || {
                n += 1;
                std::future::ready(n == 3)
            })
            .await
        );
        assert!(!eventually(Duration::from_millis(30), || async { false }).await);
    }
}
