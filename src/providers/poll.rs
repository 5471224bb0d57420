//! Poll delays for every provider's wait loop (drains, in-service waits,
//! reloads), and the sleep between two polls that never oversleeps a deadline.
//!
//! One type, two shapes, because the providers poll very different things:
//! HAProxy's socket and nginx's /proc answer from memory in microseconds, so
//! they start fast and settle at a second ([`Backoff::fast_or_fixed`]); ELBv2
//! re-reads health checks that run every few seconds and bills API calls, so
//! it starts at a second and doubles up to the poll interval
//! ([`Backoff::doubling`]).

use std::time::Duration;

use tokio::time::Instant;

/// The next delay grows by `num / den` of the last, up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    num: u32,
    den: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const LONGEST: Duration = Duration::from_secs(1);

    /// Fixed when `lb.poll_interval` is set; else fast at first (a local
    /// drain often ends within a few hundred ms), backing off by half again
    /// each time to 1 s so a long wait does not hammer the LB.
    pub(crate) fn fast_or_fixed(fixed: Option<Duration>) -> Self {
        match fixed {
            Some(d) => {
                let d = d.max(Duration::from_millis(1));
                Self::growing(d, d, 1, 1)
            }
            None => Self::growing(Self::FIRST, Self::LONGEST, 3, 2),
        }
    }

    /// `first`, doubling up to `max`. Short first polls catch the common fast
    /// transitions; the cap keeps a long wait from hammering the API.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub(crate) fn doubling(first: Duration, max: Duration) -> Self {
        Self::growing(first.min(max), max, 2, 1)
    }

    fn growing(first: Duration, max: Duration, num: u32, den: u32) -> Self {
        Self {
            next: first,
            max,
            num,
            den,
        }
    }

    /// The delay before the next poll.
    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * self.num / self.den).min(self.max);
        d
    }

    /// Sleeps the next delay from `now`, but never past `deadline`.
    pub(crate) async fn pause(&mut self, now: Instant, deadline: Instant) {
        tokio::time::sleep_until((now + self.next()).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_fast_and_caps_at_a_second() {
        let mut b = Backoff::fast_or_fixed(None);
        let delays: Vec<Duration> = (0..20).map(|_| b.next()).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
        let mut fixed = Backoff::fast_or_fixed(Some(Duration::from_millis(200)));
        assert_eq!(
            (fixed.next(), fixed.next()),
            (Duration::from_millis(200), Duration::from_millis(200))
        );
    }
}
