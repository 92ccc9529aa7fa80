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
}
