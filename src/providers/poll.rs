//! Poll delays for every provider's wait loop (drains, in-service waits,
//! reloads), and the sleep between two polls that never oversleeps a deadline.
//!
//! One type, two shapes, because the providers poll very different things:
//! HAProxy's socket and nginx's /proc answer from memory in microseconds, so
//! they start fast and settle at a second ([`Backoff::fast_or_fixed`]); ELBv2
//! re-reads health checks that run every few seconds and bills API calls, so
//! it starts at a second and doubles up to the poll interval
//! ([`Backoff::doubling`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long one kind of wait took so far in this run (the last few, on
/// every instance alike): where the next one's event most likely is.
#[derive(Debug, Default)]
pub(crate) struct Learned(Mutex<VecDeque<Duration>>);

impl Learned {
    const KEEP: usize = 9;

    pub(crate) fn record(&self, took: Duration) {
        let mut seen = self.0.lock().unwrap();
        if seen.len() == Self::KEEP {
            seen.pop_front();
        }
        seen.push_back(took);
    }

    /// The median of the waits seen, once there is one.
    pub(crate) fn expected(&self) -> Option<Duration> {
        let mut seen: Vec<Duration> = self.0.lock().unwrap().iter().copied().collect();
        seen.sort();
        seen.get(seen.len() / 2).copied()
    }
}

/// The poll step around an expected moment `e`: a fiftieth of it, at least
/// 10 ms (a cheap local read) and at most `cap`.
pub(crate) fn fine_step(e: Duration, cap: Duration) -> Duration {
    (e / 50)
        .max(Duration::from_millis(10))
        .min(cap.max(Duration::from_millis(1)))
}

#[derive(Debug, Clone, Copy)]
struct Window {
    step: Duration,
    from: Instant,
    until: Instant,
}

/// The next delay grows by `num / den` of the last, up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    num: u32,
    den: u32,
    /// Polls every `step` between `from` and `until` (a window around the
    /// expected moment); the growing delays before (never sleeping past
    /// `from`) and after it.
    fine: Option<Window>,
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

    /// For a local LB whose reads cost microseconds (HAProxy's socket):
    /// as [`Self::fast_or_fixed`], but with no `lb.poll_interval` set it
    /// first polls finely where the event is expected — up to twice the
    /// wait this run has `learned` plus 100 ms (the first time: 500 ms) —
    /// and only then backs off.
    pub(crate) fn around(fixed: Option<Duration>, learned: &Learned) -> Self {
        let mut b = Self::fast_or_fixed(fixed);
        if fixed.is_none() {
            let (step, window) = match learned.expected() {
                Some(e) => (
                    fine_step(e, Self::FIRST),
                    e * 2 + Duration::from_millis(100),
                ),
                None => (Duration::from_millis(10), Duration::from_millis(500)),
            };
            let now = Instant::now();
            b = b.fine_between(step, now, now + window);
        }
        b
    }

    /// Where the event is expected `e` from now (ELBv2: the target group's
    /// check interval × healthy threshold): the usual delays until 0.8 × `e`,
    /// then every `step` until 1.5 × `e` + `step`, then the usual again.
    pub(crate) fn expecting(self, e: Duration, step: Duration) -> Self {
        let now = Instant::now();
        self.fine_between(step, now + e * 4 / 5, now + e * 3 / 2 + step)
    }

    fn fine_between(mut self, step: Duration, from: Instant, until: Instant) -> Self {
        self.fine = Some(Window { step, from, until });
        self
    }

    fn growing(first: Duration, max: Duration, num: u32, den: u32) -> Self {
        Self {
            next: first,
            max,
            num,
            den,
            fine: None,
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
        let delay = match self.fine {
            Some(w) if now >= w.from && now < w.until => w.step,
            Some(w) if now < w.from => self.next().min(w.from - now),
            _ => self.next(),
        };
        tokio::time::sleep_until((now + delay).min(deadline)).await;
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

    #[test]
    fn learned_is_the_median_of_the_last_nine() {
        let l = Learned::default();
        assert_eq!(l.expected(), None);
        for ms in [900, 100, 120, 110] {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.expected(), Some(Duration::from_millis(120)));
        for _ in 0..9 {
            l.record(Duration::from_millis(40));
        }
        assert_eq!(l.expected(), Some(Duration::from_millis(40)));
    }

    #[test]
    fn fine_steps_scale_with_the_expected_moment() {
        let cap = Duration::from_millis(100);
        assert_eq!(
            fine_step(Duration::from_millis(150), cap),
            Duration::from_millis(10)
        );
        assert_eq!(
            fine_step(Duration::from_secs(2), cap),
            Duration::from_millis(40)
        );
        assert_eq!(fine_step(Duration::from_secs(60), cap), cap);
    }

    #[tokio::test(start_paused = true)]
    async fn around_polls_finely_in_the_window_then_backs_off() {
        let l = Learned::default();
        l.record(Duration::from_millis(200));
        let mut b = Backoff::around(None, &l);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        let mut at = Vec::new();
        while Instant::now() < start + Duration::from_secs(2) {
            b.pause(Instant::now(), far).await;
            at.push((Instant::now() - start).as_millis());
        }
        // Every 10 ms up to 2 × 200 + 100 ms, then 50, 75, 112 ... apart.
        assert_eq!(&at[..3], &[10, 20, 30]);
        let fine = at.iter().filter(|&&t| t <= 500).count();
        assert_eq!(fine, 50);
        assert_eq!(at[50] - at[49], 50);
        // lb.poll_interval set: the user's interval, always.
        let mut fixed = Backoff::around(Some(Duration::from_millis(30)), &l);
        assert_eq!(fixed.next(), Duration::from_millis(30));
        assert!(fixed.fine.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expecting_polls_coarsely_before_the_moment_and_finely_around_it() {
        // ELBv2 at 10 s × 2: healthy expected 20 s after registering.
        let mut b = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(5))
            .expecting(Duration::from_secs(20), Duration::from_millis(400));
        let start = Instant::now();
        let far = start + Duration::from_secs(120);
        let mut at = Vec::new();
        while Instant::now() < start + Duration::from_secs(60) {
            b.pause(Instant::now(), far).await;
            at.push((Instant::now() - start).as_millis() as u64);
        }
        // 1, 2, 4, 5 s apart up to 16 s (0.8 × 20 s, never slept past) ...
        assert_eq!(&at[..5], &[1000, 3000, 7000, 12000, 16000]);
        // ... every 400 ms until 30.4 s (1.5 × 20 s + a step) ...
        let fine: Vec<_> = at.iter().filter(|&&t| t > 16000 && t <= 30400).collect();
        assert_eq!(fine.len(), 36);
        // ... then the usual 5 s.
        let after: Vec<_> = at.iter().filter(|&&t| t > 30400).collect();
        assert_eq!(*after[1] - *after[0], 5000);
    }
}
