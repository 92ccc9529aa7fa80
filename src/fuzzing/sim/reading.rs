//! When the client hears its peer, and what the session may conclude from
//! silence: the dispatcher's backpressure (the driver stops reading while
//! subscribers lag, as `Io::deliver` and `Io::resume_reading` do), a
//! process frozen for a while (the driver wakes late and says so, as
//! `Io::park` does), and the check of every dead-peer verdict.
//!
//! The model: a dead-peer verdict rests on silence the client could have
//! heard. While the driver does not read, the session hears nothing and
//! must conclude nothing; after reading resumes, after a freeze is noticed,
//! after `reconnect_now` on a live link, the silence starts over. So at a
//! verdict the driver is reading, and for at least the heartbeat timeout
//! it has read nothing (the probe that went unanswered was sent then).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{HEARTBEAT_TIMEOUT, Sim};
use crate::InvalidFrame;
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

    /// Let the session judge time, and check any dead-peer verdict it
    /// reaches (a miss is counted as the connection is buried).
    pub(super) fn judge_time(&mut self) {
        let misses = &self.counters.heartbeat_misses;
        let before = misses.load(Ordering::Relaxed);
        let (paused, quiet_from) = (self.paused, self.quiet_from);
        self.session.handle_timeout(self.now);
        if self.counters.heartbeat_misses.load(Ordering::Relaxed) == before {
            return;
        }
        self.figures.verdicts += 1;
        let silent = self.now.saturating_duration_since(quiet_from);
        let timeout = HEARTBEAT_TIMEOUT;
        if paused {
            self.fail("a dead-peer verdict while the driver was not reading".into());
        }
        if silent < timeout {
            self.fail(format!(
                "a dead-peer verdict after only {silent:?} of silence the client could hear \
                 (since it last read a frame, resumed reading, woke from a freeze or was \
                 asked to reconnect now); the heartbeat timeout is {timeout:?}"
            ));
        }
    }
}
