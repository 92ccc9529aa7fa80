//! When the client hears its peer, and what the session may conclude from
//! silence: the dispatcher's backpressure (the driver stops reading while
//! subscribers lag, as `Io::deliver` and `Io::resume_reading` do), a
//! process frozen for a while (the driver wakes late and says so, as
//! `Io::park` does), and the check of every dead-peer verdict.
//!
//! The model: a verdict on the peer rests on what the client could have
//! heard. While the driver does not read, the session hears nothing and
//! must conclude nothing; after reading resumes, after a freeze is noticed,
//! after `reconnect_now` on a live link, the silence starts over. So at a
//! dead-peer verdict the driver is reading, and for at least the heartbeat
//! timeout it has read nothing (the probe that went unanswered was sent
//! then); at a deaf-peer one (a ping unanswered while confirmations are at
//! their bound) it has been reading for an interval and a timeout at least.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, Sim, login_timeout};
use crate::InvalidFrame;
use crate::LinkState;
use crate::command::Event;

/// Waking this much later than planned means the process was frozen
/// (`io::FREEZE_GAP`).
const FREEZE_GAP: Duration = Duration::from_secs(2);
/// Bytes read past a full dispatcher while a request waits for its reply
/// (`io::REPLY_RESERVE` is 1 MiB: small here, so that it runs out).
const REPLY_RESERVE: usize = 64;

impl Sim {
    /// An event for the subscribers: the dispatcher queues it, and the
    /// driver stops reading once it is full (unless a request waits for
    /// its reply, which may sit behind the pushes: then up to
    /// [`REPLY_RESERVE`] bytes more).
    pub(super) fn deliver(&mut self, ev: &Event) {
        let Some(cap) = self.cfg.dispatch_capacity else {
            return;
        };
        let size = match ev {
            Event::Message(m) => m.len(),
            Event::Invalid(InvalidFrame::Binary(b)) => b.len(),
            _ => 0,
        };
        self.dispatch_depth += 1;
        if self.dispatch_depth < cap || self.sock.is_none() {
            return;
        }
        if !self.session.awaiting_reply() || self.reserve_used >= REPLY_RESERVE {
            if !self.paused {
                self.figures.pauses += 1;
                let depth = self.dispatch_depth;
                self.note(|| format!("the dispatcher holds {depth}: reading pauses"));
            }
            self.paused = true;
            self.session.handle_reading(self.now, false);
        } else {
            self.reserve_used += size.max(1);
        }
    }

    /// Read again once the dispatcher has caught up, or while a request
    /// waits and the reply reserve is not used up.
    pub(super) fn resume_reading(&mut self) {
        let Some(cap) = self.cfg.dispatch_capacity else {
            return;
        };
        if self.sock.is_none() || !self.paused {
            return;
        }
        let caught_up = self.dispatch_depth <= cap / 2;
        if caught_up {
            self.reserve_used = 0;
        }
        if caught_up || (self.session.awaiting_reply() && self.reserve_used < REPLY_RESERVE) {
            self.note(|| "reading resumes".into());
            self.paused = false;
            self.quiet_from = self.now;
            self.reading_since = self.now;
            self.session.handle_reading(self.now, true);
        }
    }

    /// The dispatcher's bound: its capacity, and what a waiting request's
    /// reserve lets through.
    pub(super) fn check_dispatch(&self) {
        if let Some(cap) = self.cfg.dispatch_capacity
            && !self.finished
            && self.dispatch_depth > cap + REPLY_RESERVE
        {
            let depth = self.dispatch_depth;
            self.fail(format!(
                "the dispatcher holds {depth} events (capacity {cap})"
            ));
        }
    }

    /// The subscribers run up to `n` queued events.
    pub(super) fn handle_events(&mut self, n: u8) {
        self.dispatch_depth -= self.dispatch_depth.min(usize::from(n));
    }

    /// The process is frozen for `ms`: the driver had parked until the
    /// session's next deadline, and wakes this much later; the server
    /// went on meanwhile. Far past its plan, it tells the session.
    pub(super) fn freeze(&mut self, ms: u16) {
        let planned = self.session.poll_timeout();
        self.advance(self.now + Duration::from_millis(u64::from(ms)));
        let late = planned.is_some_and(|p| self.now > crate::time::after(p, FREEZE_GAP));
        if self.sock.is_some() && late {
            self.figures.resumes += 1;
            self.note(|| "woke late: the process was frozen".into());
            self.quiet_from = self.now;
            self.session.handle_resumed(self.now);
        }
    }

    /// Let the session judge time, and check any verdict on the peer it
    /// reaches: dead (its probe went unanswered: a miss is counted as the
    /// connection is buried), or deaf to pings (with confirmations at
    /// their bound, the oldest ping went unanswered: the connection goes
    /// with no miss counted, and not for the `on_open` step's deadline).
    pub(super) fn judge_time(&mut self) {
        let now = self.now;
        let misses = &self.counters.heartbeat_misses;
        let before = misses.load(Ordering::Relaxed);
        let conn = self.session.conn_id();
        let (paused, quiet_from, reading_since) =
            (self.paused, self.quiet_from, self.reading_since);
        let login_over = self.state == Some(LinkState::LoggingIn)
            && now >= crate::time::after(self.connected_at, login_timeout(&self.cfg));
        self.session.handle_timeout(now);
        let dead = self.counters.heartbeat_misses.load(Ordering::Relaxed) > before;
        let deaf = !dead && !login_over && conn.is_some() && self.session.conn_id() != conn;
        if !(dead || deaf) {
            return;
        }
        self.figures.verdicts += 1;
        if paused {
            self.fail("a verdict on the peer while the driver was not reading".into());
        }
        // Silence after a probe; or a ping unanswered for an interval and
        // a timeout of reading (a freeze does not restart that wait: the
        // pong of a live peer arrives meanwhile and is read first).
        let (since, needed, what) = if dead {
            (
                quiet_from,
                HEARTBEAT_TIMEOUT,
                "silence the client could hear (since it last read a frame, resumed reading, \
                 woke from a freeze or was asked to reconnect now)",
            )
        } else {
            (
                reading_since,
                HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT,
                "reading (since it connected or resumed reading) with a ping unanswered",
            )
        };
        let waited = now.saturating_duration_since(since);
        if waited < needed {
            let verdict = if dead { "dead-peer" } else { "deaf-peer" };
            self.fail(format!(
                "a {verdict} verdict after only {waited:?} of {what}; it takes {needed:?}"
            ));
        }
    }
}
