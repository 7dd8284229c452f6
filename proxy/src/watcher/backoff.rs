//! [`RoundBackoff`]: how long the watcher pauses once every URL has failed
//! in a row — nothing after a single failure, since the next URL may well
//! answer; after a whole failed round, a pause that doubles from round to
//! round up to a cap, and starts over after a healthy stream.

use std::time::Duration;

/// The watcher's pause between rounds over the URLs.
#[derive(Debug)]
pub(super) struct RoundBackoff {
    /// First pause.
    min: Duration,
    /// Longest pause.
    max: Duration,
    /// The pause after the next failed round.
    next: Duration,
    /// Failures since the last pause or healthy stream.
    failures: usize,
}

impl RoundBackoff {
    pub(super) fn new(min: Duration, max: Duration) -> RoundBackoff {
        RoundBackoff {
            min,
            max,
            next: min,
            failures: 0,
        }
    }

    /// A stream was healthy: the next failure starts a fresh round.
    pub(super) fn healthy(&mut self) {
        self.failures = 0;
        self.next = self.min;
    }

    /// A stream failed. Once `urls` of them failed in a row (a whole round),
    /// pauses, then doubles the next pause.
    pub(super) async fn failed(&mut self, urls: usize) {
        self.failures += 1;
        if self.failures < urls {
            return;
        }
        tracing::warn!(
            backoff = ?self.next,
            urls,
            "no node is streaming the config; backing off"
        );
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// How long `failed(urls)` paused, on the paused clock.
    async fn pause_of(backoff: &mut RoundBackoff, urls: usize) -> Duration {
        let started = Instant::now();
        backoff.failed(urls).await;
        started.elapsed()
    }

    // Paused time: the sleeps complete at once, and `elapsed` is exactly
    // the pause asked for.
    #[tokio::test(start_paused = true)]
    async fn pauses_double_after_each_failed_round_up_to_the_cap() {
        let mut backoff = RoundBackoff::new(50 * MS, 200 * MS);
        let mut pauses = Vec::new();
        for _ in 0..5 {
            assert_eq!(pause_of(&mut backoff, 2).await, Duration::ZERO);
            pauses.push(pause_of(&mut backoff, 2).await);
        }
        assert_eq!(pauses, [50 * MS, 100 * MS, 200 * MS, 200 * MS, 200 * MS]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_stream_starts_over() {
        let mut backoff = RoundBackoff::new(50 * MS, 200 * MS);
        assert_eq!(pause_of(&mut backoff, 1).await, 50 * MS);
        assert_eq!(pause_of(&mut backoff, 1).await, 100 * MS);
        // Halfway through a round of three…
        assert_eq!(pause_of(&mut backoff, 3).await, Duration::ZERO);
        backoff.healthy();
        // …a healthy stream forgets both the failure and the growth.
        assert_eq!(pause_of(&mut backoff, 3).await, Duration::ZERO);
        assert_eq!(pause_of(&mut backoff, 3).await, Duration::ZERO);
        assert_eq!(pause_of(&mut backoff, 3).await, 50 * MS);
    }
}
