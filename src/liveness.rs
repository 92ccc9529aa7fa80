//! Heartbeat and dead-peer verdict. Pure: takes `now`, returns what to do.
//!
//! Any inbound frame proves life. After `interval` without an inbound frame
//! (or without an outbound one, so that idle-cutting middleboxes and servers
//! see traffic) a probe is due: a WebSocket ping, plus the application
//! heartbeat when one is configured. If nothing at all arrives within
//! `timeout` after the probe, the peer is dead. The worst case from the last
//! inbound frame to the verdict is therefore `interval + timeout`.

use std::time::{Duration, Instant};

use crate::time::after;

/// What the I/O loop must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing until [`Liveness::next_deadline`].
    Alive,
    /// Send a probe now, then call [`Liveness::on_probe_sent`].
    Probe,
    /// The peer is gone.
    Dead,
}

/// Liveness state of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    interval: Duration,
    timeout: Duration,
    last_in: Instant,
    last_out: Instant,
    /// When the unanswered probe was sent.
    probe: Option<Instant>,
    /// Probes that went unanswered in time (stats).
    misses: u64,
}

impl Liveness {
    pub(crate) fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Liveness {
            interval,
            timeout,
            last_in: now,
            last_out: now,
            probe: None,
            misses: 0,
        }
    }

    /// Any inbound frame: data, ping, pong or close.
    pub(crate) fn on_inbound(&mut self, now: Instant) {
        self.last_in = now;
        self.probe = None;
    }

    /// Any frame written to the socket.
    pub(crate) fn on_outbound(&mut self, now: Instant) {
        self.last_out = now;
    }

    pub(crate) fn on_probe_sent(&mut self, now: Instant) {
        self.probe = Some(now);
        self.last_out = now;
    }

    /// The process was frozen (suspended laptop, backgrounded app, SIGSTOP):
    /// the silence says nothing about the peer. Ask it now instead of
    /// declaring it dead.
    pub(crate) fn on_resumed(&mut self, now: Instant) {
        self.probe = None;
        self.last_in = now.checked_sub(self.interval).unwrap_or(now);
    }

    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        match self.probe {
            Some(sent) if now >= after(sent, self.timeout) => {
                self.misses += 1;
                Verdict::Dead
            }
            Some(_) => Verdict::Alive,
            None if now >= after(self.last_in, self.interval)
                || now >= after(self.last_out, self.interval) =>
            {
                Verdict::Probe
            }
            None => Verdict::Alive,
        }
    }

    /// When [`check`](Self::check) must run again.
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.probe {
            Some(sent) => after(sent, self.timeout),
            None => after(self.last_in.min(self.last_out), self.interval),
        }
    }

    pub(crate) fn misses(&self) -> u64 {
        self.misses
    }

    #[cfg(test)]
    pub(crate) fn probe_outstanding(&self) -> bool {
        self.probe.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(25);
    const T: Duration = Duration::from_secs(10);

    #[test]
    fn silent_peer_is_dead_exactly_after_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        assert_eq!(l.check(t0 + I - Duration::from_millis(1)), Verdict::Alive);
        assert_eq!(l.next_deadline(), t0 + I);
        assert_eq!(l.check(t0 + I), Verdict::Probe);
        l.on_probe_sent(t0 + I);
        assert_eq!(l.next_deadline(), t0 + I + T);
        assert_eq!(
            l.check(t0 + I + T - Duration::from_millis(1)),
            Verdict::Alive
        );
        assert_eq!(l.check(t0 + I + T), Verdict::Dead);
        assert_eq!(l.misses(), 1);
    }

    #[test]
    fn any_inbound_frame_answers_the_probe() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        l.on_probe_sent(t0 + I);
        l.on_inbound(t0 + I + Duration::from_secs(1));
        assert!(!l.probe_outstanding());
        assert_eq!(l.check(t0 + I + T), Verdict::Alive);
        // The next probe is due an interval after our ping went out (outbound silence).
        assert_eq!(l.next_deadline(), t0 + I + I);
    }

    #[test]
    fn steady_inbound_traffic_still_probes_when_we_are_silent() {
        // Servers that cut idle clients count client frames, so we probe on
        // outbound silence too.
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        for s in 1..=24 {
            l.on_inbound(t0 + Duration::from_secs(s));
        }
        assert_eq!(l.check(t0 + I), Verdict::Probe);
    }

    #[test]
    fn writing_does_not_hide_a_black_hole() {
        // We keep writing, nothing comes back: the verdict still comes.
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        let mut now = t0;
        let mut verdict = Verdict::Alive;
        while now <= t0 + I + T {
            l.on_outbound(now);
            verdict = l.check(now);
            match verdict {
                Verdict::Probe => l.on_probe_sent(now),
                Verdict::Dead => break,
                Verdict::Alive => {}
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(verdict, Verdict::Dead);
        assert!(now <= t0 + I + T);
    }

    #[test]
    fn resuming_after_a_freeze_probes_instead_of_failing() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        l.on_probe_sent(t0 + I);
        let woke = t0 + Duration::from_secs(3600);
        l.on_resumed(woke);
        assert_eq!(l.check(woke), Verdict::Probe);
        l.on_probe_sent(woke);
        assert_eq!(l.check(woke + T - Duration::from_millis(1)), Verdict::Alive);
        assert_eq!(l.misses(), 0);
    }

    #[test]
    fn our_own_writes_postpone_the_probe_while_the_peer_talks() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, I, T);
        let s = Duration::from_secs;
        l.on_inbound(t0 + s(20));
        l.on_outbound(t0 + s(20));
        assert_eq!(l.check(t0 + I), Verdict::Alive);
        assert_eq!(l.next_deadline(), t0 + s(20) + I);
        assert_eq!(l.check(t0 + s(20) + I), Verdict::Probe);
    }
}
