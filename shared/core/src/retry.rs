//! Retrying a call that fails for want of a server: capped exponential backoff with jitter,
//! until the call succeeds, fails for good, or shutdown comes.
//!
//! A server restart looks to a client like a few seconds of timeouts, then "no responders"
//! (503) while JetStream reloads its streams, then normal answers. A function that waits out the
//! restart loses nothing; one that exits on the first timeout needs a supervisor to bring it
//! back. The jitter keeps the replicas that all lost the same server from all retrying at the
//! same instants.

use std::time::Duration;

use rand::Rng;

use crate::shutdown::Shutdown;

/// The first retry delay of [`Backoff::default`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The longest retry delay of [`Backoff::default`]: short enough to notice a server back within
/// a few seconds, long enough not to flood one that is struggling.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Delays that double from `first` up to `cap`, each drawn at random from its upper half
/// ("equal jitter"), so retries spread out but never come sooner than half the nominal delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
    }
}

impl Backoff {
    /// Delays from `first` doubling to `cap` (`cap` is raised to `first` if lower).
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap: cap.max(first),
            next: first,
        }
    }

    /// The delay before the next retry; each call doubles the next one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        let half = nominal / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Whether an error is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A timeout, a lost connection, JetStream not available yet: the same call may succeed.
    Transient,
    /// A definite answer (no such stream, an invalid name, a refused setting): retrying cannot help.
    Definite,
}

/// Calls `attempt` until it succeeds, retrying the errors `classify` calls transient after the
/// next `backoff` delay, each logged with `what`. A definite error is returned at once. Returns
/// `Ok(None)` if shutdown comes first.
pub async fn until_done<T, E, F, Fut>(
    what: &str,
    mut shutdown: Shutdown,
    mut backoff: Backoff,
    classify: impl Fn(&E) -> Verdict,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            _ = shutdown.wait() => return Ok(None),
        };
        match outcome {
            Ok(value) => return Ok(Some(value)),
            Err(err) if classify(&err) == Verdict::Definite => return Err(err),
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?delay, "{what}: cannot reach JetStream; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let nominal = [100, 200, 400, 800, 800, 800];
        for (round, ms) in nominal.into_iter().enumerate() {
            let delay = backoff.next_delay();
            let nominal = Duration::from_millis(ms);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "round {round}: {delay:?} outside [{:?}, {nominal:?}]",
                nominal / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(delays.len() > 1, "twenty identical delays: {delays:?}");
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_definite_ones_returned() {
        let (_trigger, shutdown) = Shutdown::manual();
        let calls = AtomicUsize::new(0);
        let classify = |e: &&str| {
            if *e == "timed out" {
                Verdict::Transient
            } else {
                Verdict::Definite
            }
        };
        let outcome = until_done("probe", shutdown.clone(), quick(), classify, || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { if n < 3 { Err("timed out") } else { Ok(n) } }
        })
        .await;
        assert_eq!(outcome, Ok(Some(3)));

        calls.store(0, Ordering::Relaxed);
        let outcome: Result<Option<()>, &str> =
            until_done("probe", shutdown, quick(), classify, || {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err("no such stream") }
            })
            .await;
        assert_eq!(outcome, Err("no such stream"));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "a definite error is not retried"
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_retries() {
        let (trigger, shutdown) = Shutdown::manual();
        let retrying = until_done(
            "probe",
            shutdown,
            quick(),
            |_: &&str| Verdict::Transient,
            || async { Err::<(), _>("timed out") },
        );
        let stop = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.trigger();
        };
        let (outcome, ()) = tokio::join!(retrying, stop);
        assert_eq!(outcome, Ok(None));
    }
}
