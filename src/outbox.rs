//! The outbox: messages accepted by `send` and not yet written, in order.
//!
//! Its room is counted in one place, the shared [`Budget`] (count and
//! bytes): [`Budget::admit`] takes room when `send` accepts a message, by
//! the overflow policy, on the caller's thread, so a full outbox is
//! reported to the caller who overflowed it, synchronously; the session
//! gives the room back ([`Budget::release`]) when a message leaves it
//! (written and not awaiting an acknowledgement, acknowledged, dropped,
//! expired or handed back). The queue itself lives in the session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What `send` does when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Refuse the new message and hand it back in [`Error::OutboxFull`](crate::Error::OutboxFull).
    Reject,
    /// Accept the new message and drop the oldest one the outbox holds
    /// (under at least once, written messages awaiting their
    /// acknowledgement first), counted in [`Stats::dropped`](crate::Stats::dropped),
    /// or in [`Stats::possibly_lost`](crate::Stats::possibly_lost) if it had been written.
    DropOldest,
    /// Wait up to this long for room, then refuse as [`Overflow::Reject`] does.
    Block(Duration),
}

/// Shared count/bytes budget of the outbox.
#[derive(Debug)]
pub(crate) struct Budget {
    count: AtomicUsize,
    bytes: AtomicUsize,
    max_count: usize,
    max_bytes: usize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

impl Budget {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Budget {
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_count,
            max_bytes,
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            room: Condvar::new(),
        }
    }

    /// Take room for one message of `bytes` as `overflow` says, for `send`:
    /// `Reject` takes it only if free; `Block` waits for it within its
    /// time; `DropOldest` always takes it (the session trims the oldest),
    /// but waits once twice the count bound is taken, for the case where
    /// the I/O thread is busy elsewhere (a connect attempt) and cannot trim,
    /// so memory stays bounded. Whether room was taken.
    pub(crate) fn admit(&self, bytes: usize, overflow: Overflow) -> bool {
        match overflow {
            Overflow::Reject => self.try_reserve(bytes),
            Overflow::DropOldest => {
                self.force_reserve_below(bytes, self.max_count.saturating_mul(2));
                true
            }
            Overflow::Block(wait) => self.reserve_within(bytes, wait),
        }
    }

    /// Take room for one message of `bytes`, or nothing at all.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_count {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        // A single message larger than the byte budget is still accepted
        // into an empty outbox, or it could never be sent.
        if before > 0 && before + bytes > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Take room unconditionally (the drop-oldest policy trims afterwards).
    pub(crate) fn force_reserve(&self, bytes: usize) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Wait until room is free, at most `wait` (the clock is read only
    /// when there is no room at once).
    pub(crate) fn reserve_within(&self, bytes: usize, wait: Duration) -> bool {
        self.try_reserve(bytes) || self.reserve_until(bytes, crate::time::from_now(wait))
    }

    /// Wait until room is free or `deadline` passes.
    pub(crate) fn reserve_until(&self, bytes: usize, deadline: Instant) -> bool {
        if self.try_reserve(bytes) {
            return true;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let ok = loop {
            if self.try_reserve(bytes) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = self
                .room
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        ok
    }

    /// Take room unconditionally once fewer than `limit` messages are
    /// counted (drop-oldest: the I/O thread trims to the bound, and this
    /// keeps what waits for it from growing past `limit`).
    pub(crate) fn force_reserve_below(&self, bytes: usize, limit: usize) {
        if self.count.load(Ordering::Acquire) < limit {
            self.force_reserve(bytes);
            return;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.count.load(Ordering::Acquire) >= limit {
            guard = self
                .room
                .wait_timeout(guard, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        self.force_reserve(bytes);
    }

    /// A message left the outbox (written, dropped or handed back).
    pub(crate) fn release(&self, bytes: usize) {
        self.release_many(1, bytes);
    }

    /// `count` messages of `bytes` in all left the outbox.
    pub(crate) fn release_many(&self, count: usize, bytes: usize) {
        self.count.fetch_sub(count, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.room.notify_all();
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        let count = self.count.load(Ordering::Acquire);
        count > self.max_count || (count > 1 && self.bytes.load(Ordering::Acquire) > self.max_bytes)
    }

    /// The count bound.
    pub(crate) fn capacity(&self) -> usize {
        self.max_count
    }

    pub(crate) fn depth(&self) -> (usize, usize) {
        (
            self.count.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// An item with its byte size, as the budget counted it.
pub(crate) trait Weighed {
    fn weight(&self) -> usize;
}

/// Drop the oldest items while the budget is over its bound: first from
/// `older` (written, awaiting acknowledgement: they hold room too), then
/// from `queue`, never the newest item of `queue` (the one just accepted).
/// Returns them, oldest first.
pub(crate) fn trim_oldest<T: Weighed>(
    older: &mut VecDeque<T>,
    queue: &mut VecDeque<T>,
    budget: &Budget,
) -> Vec<T> {
    let mut dropped = Vec::new();
    while budget.is_over() {
        let item = match older.pop_front() {
            Some(item) => item,
            None if queue.len() > 1 => match queue.pop_front() {
                Some(item) => item,
                None => break,
            },
            None => break,
        };
        budget.release(item.weight());
        dropped.push(item);
    }
    dropped
}

#[cfg(test)]
mod tests;
