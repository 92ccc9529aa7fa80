//! Waiting: when the I/O thread may sleep, and for how long.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use super::{FREEZE_GAP, Io, SPIN};

impl Io {
    /// Whether there is more to do right away (do not sleep): also when
    /// this turn made `close` ready (its last acknowledgement or flush),
    /// which the loop checks only after waking.
    fn busy(&self) -> bool {
        if self.closing.is_some() {
            let flushed = self.sock.as_ref().is_none_or(super::Socket::flushed);
            if self.session.close_ready(Instant::now(), flushed) {
                return true;
            }
        }
        match &self.sock {
            Some(s) => {
                (s.readable && !s.paused)
                    || (!s.write_blocked && self.session.wants_write())
                    || (s.need_flush && !s.write_blocked)
            }
            None => self.session.wants_connect(),
        }
    }

    /// Sleep in the poller until the socket, a caller or the next deadline wakes us.
    pub(super) fn park(&mut self) {
        let busy = self.busy();
        if self.session.take_answered() && !busy && self.spin() {
            return;
        }
        let sync = self.shared.try_journal(|j| j.sync_due()).flatten();
        let planned = [self.session.poll_timeout(), sync]
            .into_iter()
            .flatten()
            .min();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            planned.map(|d| d.saturating_duration_since(Instant::now()))
        };
        let cap = self.shared.cfg.dispatch_capacity;
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Shared::wake`: either the caller sees us
        // sleeping and notifies, or we see its command here.
        fence(Ordering::SeqCst);
        let resumable = self.sock.as_ref().is_some_and(|s| s.paused)
            && self.shared.dispatch_depth.load(Ordering::Acquire) <= cap / 2;
        let answered = self.attempt.as_ref().is_some_and(|a| !a.is_empty());
        if !self.rx.is_empty() || resumable || answered {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        if self.stack_dirty && !busy {
            // The first reads and writes went deep; the link may now idle
            // for hours.
            self.stack_dirty = false;
            crate::stack::release_below(self.stack_top);
            self.session.release_memory();
        }
        self.events.clear();
        let waited = self.shared.poller.wait(&mut self.events, timeout);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = waited {
            log::error!("longlink: poller wait failed: {e}");
        }
        let woke = Instant::now();
        if let Some(planned) = planned
            && self.sock.is_some()
            && woke > crate::time::after(planned, FREEZE_GAP)
        {
            log::info!(
                "longlink: woke {:?} late (process frozen?); probing the peer",
                woke - planned
            );
            self.session.handle_resumed(woke);
        }
        if let Some(s) = self.sock.as_mut() {
            for ev in self.events.iter() {
                if ev.key == s.key {
                    s.readable |= ev.readable;
                    s.writable |= ev.writable;
                }
            }
        }
    }

    /// After a reply, a caller usually asks again within microseconds:
    /// watching the channel for a moment saves it the wake-up syscall and
    /// this thread the trip through the scheduler. Bounded by [`SPIN`];
    /// never while idle. Whether a command came.
    fn spin(&self) -> bool {
        let until = Instant::now() + SPIN;
        while Instant::now() < until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if !self.rx.is_empty() {
                return true;
            }
        }
        false
    }
}
