//! Waiting for a condition: the one polling loop of the e2e code.
//!
//! [`poll`] calls a step until it has an answer, gives up, or the deadline passes; every
//! wait of the harness and of the tests (an API server ready, a Canary phase, a Prometheus
//! series, a recorded route) is a step handed to it. [`eventually`] is the common case: an
//! `Option` step, every 100 ms, with an error naming what was awaited.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Calls `step` every `every` until it returns `Ok(Some(_))`, which is the answer, or an
/// error, which stops the wait at once; `Ok(None)` once `deadline` has passed after a
/// step that had no answer. `step` runs at least once, even past the deadline. The
/// caller says what timed out, typically with what the last step saw (which `step` can
/// keep in a variable it captures).
pub async fn poll<T, E>(
    deadline: Instant,
    every: Duration,
    mut step: impl AsyncFnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    loop {
        if let Some(answer) = step().await? {
            return Ok(Some(answer));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Result<T> {
    poll(Instant::now() + timeout, Duration::from_millis(100), async || Ok::<_, anyhow::Error>(check().await))
        .await?
        .ok_or_else(|| anyhow!("timed out after {timeout:?} waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[tokio::test]
    async fn a_step_answers_after_a_few_tries() {
        let mut tries = 0;
        let answer = poll(Instant::now() + Duration::from_secs(60), Duration::from_millis(1), async || {
            tries += 1;
            Ok::<_, Infallible>((tries == 3).then_some(tries))
        })
        .await;
        assert_eq!(answer, Ok(Some(3)));
    }

    #[tokio::test]
    async fn no_answer_by_the_deadline_is_none_after_at_least_one_step() {
        let mut tries = 0;
        let answer: Result<Option<()>, Infallible> = poll(Instant::now(), Duration::from_millis(1), async || {
            tries += 1;
            Ok(None)
        })
        .await;
        assert_eq!((answer, tries), (Ok(None), 1));
    }

    #[tokio::test]
    async fn an_error_stops_the_wait_at_once() {
        let mut tries = 0;
        let answer: Result<Option<()>, &str> =
            poll(Instant::now() + Duration::from_secs(60), Duration::from_millis(1), async || {
                tries += 1;
                Err("the operator exited")
            })
            .await;
        assert_eq!((answer, tries), (Err("the operator exited"), 1));
    }

    #[tokio::test]
    async fn eventually_names_what_it_waited_for() {
        let error = eventually::<()>("the Canary to be Initialized", Duration::ZERO, async || None).await.unwrap_err();
        assert_eq!(error.to_string(), "timed out after 0ns waiting for the Canary to be Initialized");
        assert_eq!(eventually("a number", Duration::ZERO, async || Some(7)).await.unwrap(), 7);
    }
}
