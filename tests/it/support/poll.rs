//! Waiting for something to happen, with a deadline: one loop instead of one per test.

use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is looked at again.
const EVERY: Duration = Duration::from_millis(20);

/// Looks at `check` until it holds; panics saying what did not happen after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    poll(limit, what, async || check().await.then_some(())).await
}

/// Looks at `check` until it gives a value, and returns it; panics saying what did not
/// happen after `limit`.
pub async fn poll<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not after {limit:?}");
        tokio::time::sleep(EVERY).await;
    }
}

/// Takes samples until `done` says one is final or `limit` has passed, and returns the
/// last one either way (the caller's assertions then say what is wrong with it).
pub async fn settle<T>(
    limit: Duration,
    mut sample: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let value = sample().await;
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(EVERY).await;
    }
}
