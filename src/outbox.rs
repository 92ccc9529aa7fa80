//! The outbox: messages accepted by `send` and not yet written, in order.
//!
//! The bound is enforced by callers at `send` time through a shared
//! [`Budget`] (count and bytes), so a full outbox is reported to the caller
//! who overflowed it, synchronously. The queue itself lives on the I/O thread.

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
mod tests {
    use super::*;

    impl Weighed for (u32, usize) {
        fn weight(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn count_bound_rejects_and_release_frees() {
        let b = Budget::new(2, 1000);
        assert!(b.try_reserve(10));
        assert!(b.try_reserve(10));
        assert!(!b.try_reserve(10));
        assert_eq!(b.depth(), (2, 20));
        b.release(10);
        assert!(b.try_reserve(10));
    }

    #[test]
    fn byte_bound_rejects_but_one_oversized_message_fits_an_empty_outbox() {
        let b = Budget::new(100, 100);
        assert!(b.try_reserve(150));
        assert!(!b.try_reserve(1));
        b.release(150);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        assert_eq!(b.depth(), (2, 100));
    }

    #[test]
    fn drop_oldest_trims_from_the_front_until_within_bounds() {
        let b = Budget::new(3, 1000);
        let mut q = VecDeque::new();
        for i in 0..5u32 {
            b.force_reserve(10);
            q.push_back((i, 10));
        }
        let dropped = trim_oldest(&mut VecDeque::new(), &mut q, &b);
        assert_eq!(dropped, [(0, 10), (1, 10)]);
        assert_eq!(q.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(b.depth(), (3, 30));
    }

    #[test]
    fn drop_oldest_takes_written_unacknowledged_ones_first_and_never_the_newest() {
        let b = Budget::new(3, 1000);
        let (mut unacked, mut q) = (VecDeque::new(), VecDeque::new());
        for i in 0..3u32 {
            b.force_reserve(10);
            unacked.push_back((i, 10));
        }
        b.force_reserve(10);
        q.push_back((3, 10));
        assert_eq!(trim_oldest(&mut unacked, &mut q, &b), [(0, 10)]);
        assert_eq!(q.iter().map(|x| x.0).collect::<Vec<_>>(), [3]);
        // Room counted for messages not in the queues yet (still on their
        // way to it): the queue gives up its older items, never the newest.
        b.force_reserve(10);
        b.force_reserve(10);
        let (mut none, mut one) = (VecDeque::new(), VecDeque::from([(9, 10)]));
        assert!(trim_oldest(&mut none, &mut one, &b).is_empty());
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn drop_oldest_room_waits_only_past_its_hard_limit() {
        let b = std::sync::Arc::new(Budget::new(1, 1000));
        b.force_reserve_below(1, 2);
        b.force_reserve_below(1, 2); // over the bound, under the limit
        assert_eq!(b.depth(), (2, 2));
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || b2.force_reserve_below(1, 2));
        // The trim (a release) lets the waiter in.
        b.release(1);
        waiter.join().unwrap();
        assert_eq!(b.depth(), (2, 2));
    }

    #[test]
    fn blocked_reserve_gives_up_at_its_deadline() {
        let b = Budget::new(1, 1000);
        assert!(b.try_reserve(1));
        // A deadline already passed: no wait at all.
        assert!(!b.reserve_until(1, Instant::now()));
    }
}
