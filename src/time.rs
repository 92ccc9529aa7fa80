//! Deadlines that never overflow: every duration the API accepts works,
//! `Duration::MAX` included, where it means "no limit".

use std::time::{Duration, Instant};

/// A hundred years: later than anything this process will live to see.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `t + d`, or a moment far enough away to mean "never" when that
/// overflows the clock's range.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR))
        .or_else(|| t.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(t)
}

/// [`after`] from now.
pub(crate) fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let t = Instant::now();
        assert_eq!(after(t, Duration::from_secs(1)), t + Duration::from_secs(1));
        let never = after(t, Duration::MAX);
        assert!(never >= t + FAR);
        // Saturated deadlines still compose.
        let _ = after(never, Duration::MAX);
    }

    #[test]
    fn an_overflowing_deadline_is_a_century_away() {
        let t = Instant::now();
        let never = after(t, Duration::MAX);
        assert!(never - t >= Duration::from_secs(99 * 365 * 24 * 3600));
        assert!(from_now(Duration::MAX) >= never);
    }

    /// The latest instant the clock can represent, found by bisection.
    fn clock_end(t: Instant) -> Instant {
        let (mut ok, mut over) = (0u64, u64::MAX);
        while over - ok > 1 {
            let mid = ok + (over - ok) / 2;
            if t.checked_add(Duration::from_secs(mid)).is_some() {
                ok = mid;
            } else {
                over = mid;
            }
        }
        let end = t + Duration::from_secs(ok);
        let (mut ok, mut over) = (0u32, 1_000_000_000u32);
        while over - ok > 1 {
            let mid = ok + (over - ok) / 2;
            if end.checked_add(Duration::from_nanos(mid.into())).is_some() {
                ok = mid;
            } else {
                over = mid;
            }
        }
        end + Duration::from_nanos(ok.into())
    }

    #[test]
    fn near_the_clock_end_never_is_a_day_away_then_the_end_itself() {
        let end = clock_end(Instant::now());
        let day = Duration::from_secs(24 * 3600);
        // A century does not fit, a day does.
        let t = end - 2 * day;
        assert_eq!(after(t, Duration::MAX), t + day);
        // Not even a day fits: the deadline is the moment itself.
        let t = end - Duration::from_secs(3600);
        assert_eq!(after(t, Duration::MAX), t);
        assert_eq!(after(end, Duration::from_nanos(1)), end);
    }
}
