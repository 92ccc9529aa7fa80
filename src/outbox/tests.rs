//! The outbox budget and trimming, with real threads for the blocking paths
//! (each wait bounded).

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
    let waiter = Bounded::spawn(move || b2.force_reserve_below(1, 2));
    // The trim (a release) lets the waiter in.
    b.release(1);
    waiter.join();
    assert_eq!(b.depth(), (2, 2));
}

#[test]
fn blocked_reserve_gives_up_at_its_deadline() {
    let b = Budget::new(1, 1000);
    assert!(b.try_reserve(1));
    // A deadline already passed: no wait at all.
    assert!(!bounded(move || b.reserve_until(1, Instant::now())));
}

/// How long a test waits for a blocking call before failing (rather
/// than hanging the suite).
const BOUND: Duration = Duration::from_secs(10);

/// A blocking call on a thread of its own, joined within [`BOUND`].
struct Bounded<T> {
    result: std::sync::mpsc::Receiver<T>,
    thread: std::thread::JoinHandle<()>,
}

impl<T: Send + 'static> Bounded<T> {
    fn spawn(f: impl FnOnce() -> T + Send + 'static) -> Self {
        let (tx, result) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        Bounded { result, thread }
    }

    fn join(self) -> T {
        self.result
            .recv_timeout(BOUND)
            .expect("still blocked (or panicked)")
    }

    /// Spins (never sleeps) until `b` has a waiter, failing if the call
    /// returned first: it took room it should have waited for.
    fn until_waiting(&self, b: &Budget) {
        while b.waiters.load(Ordering::SeqCst) == 0 {
            assert!(
                !self.thread.is_finished(),
                "returned without waiting for room"
            );
            std::thread::yield_now();
        }
    }
}

/// `f` (a call that may block), failing if it has not returned within [`BOUND`].
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    Bounded::spawn(f).join()
}

#[test]
fn a_full_count_is_not_over_and_one_more_message_is() {
    let b = Budget::new(2, 1000);
    assert!(!b.is_over());
    b.force_reserve(10);
    b.force_reserve(10);
    assert!(!b.is_over(), "at the count limit is within bounds");
    b.force_reserve(10);
    assert!(b.is_over(), "one past the count limit is over");
}

#[test]
fn bytes_exactly_at_the_limit_are_not_over_and_one_byte_more_is() {
    let b = Budget::new(100, 100);
    b.force_reserve(60);
    b.force_reserve(40);
    assert!(!b.is_over(), "at the byte limit is within bounds");
    b.force_reserve(1);
    assert!(b.is_over(), "three messages one byte over");
    b.release(1);
    b.release(40);
    b.force_reserve(41);
    assert!(b.is_over(), "two messages one byte over");
}

#[test]
fn one_oversized_message_alone_is_not_over_but_with_another_it_is() {
    let b = Budget::new(100, 100);
    b.force_reserve(150);
    assert!(!b.is_over(), "it could never be sent otherwise");
    b.force_reserve(1);
    assert!(b.is_over());
}

#[test]
fn reserve_within_takes_room_at_once_and_only_once() {
    let b = std::sync::Arc::new(Budget::new(2, 1000));
    assert!(b.reserve_within(10, Duration::ZERO));
    assert_eq!(b.depth(), (1, 10));
    assert!(b.reserve_within(10, Duration::from_secs(3600)));
    assert_eq!(b.depth(), (2, 20));
    // Full, and no time to wait: refused, nothing taken.
    let b2 = b.clone();
    assert!(!bounded(move || b2.reserve_within(10, Duration::ZERO)));
    assert_eq!(b.depth(), (2, 20));
}

#[test]
fn reserve_until_takes_free_room_even_past_its_deadline() {
    let b = std::sync::Arc::new(Budget::new(1, 1000));
    let past = Instant::now();
    assert!(b.reserve_until(7, past));
    assert_eq!(b.depth(), (1, 7));
    let b2 = b.clone();
    assert!(!bounded(move || b2.reserve_until(7, past)));
    assert_eq!(b.depth(), (1, 7));
}

#[test]
fn blocked_reserve_waits_until_its_deadline_before_giving_up() {
    let b = Budget::new(1, 1000);
    assert!(b.try_reserve(1));
    let deadline = Instant::now() + Duration::from_millis(5);
    assert!(!b.reserve_until(1, deadline));
    assert!(Instant::now() >= deadline, "gave up before its deadline");
    assert_eq!(b.depth(), (1, 1));
    assert_eq!(b.waiters.load(Ordering::SeqCst), 0);
}

#[test]
fn a_release_wakes_a_blocked_reserve_long_before_its_deadline() {
    let b = std::sync::Arc::new(Budget::new(1, 1000));
    assert!(b.try_reserve(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    let b2 = b.clone();
    let waiter = Bounded::spawn(move || (b2.reserve_until(3, deadline), Instant::now()));
    waiter.until_waiting(&b);
    b.release(5);
    let (ok, at) = waiter.join();
    assert!(ok);
    assert!(at < deadline, "woken by its deadline, not by the release");
    assert_eq!(b.depth(), (1, 3));
    assert_eq!(b.waiters.load(Ordering::SeqCst), 0);
}

#[test]
fn release_many_frees_count_and_bytes_together() {
    let b = Budget::new(3, 100);
    for _ in 0..3 {
        assert!(b.try_reserve(30));
    }
    assert!(!b.try_reserve(1));
    b.release_many(2, 60);
    assert_eq!(b.depth(), (1, 30));
    assert!(b.try_reserve(70));
    assert!(!b.try_reserve(1));
}

#[test]
fn drop_oldest_room_waits_at_and_past_its_limit_until_a_release() {
    for already in [2, 3] {
        let b = std::sync::Arc::new(Budget::new(1, 1000));
        for _ in 0..already {
            b.force_reserve(1);
        }
        let b2 = b.clone();
        let waiter = Bounded::spawn(move || b2.force_reserve_below(1, 2));
        waiter.until_waiting(&b);
        // Waiting: it took nothing and stays blocked without a release.
        let watch_until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < watch_until {
            assert!(
                !waiter.thread.is_finished(),
                "took room at its limit ({already} counted)"
            );
            assert_eq!(b.depth(), (already, already));
            std::thread::yield_now();
        }
        b.release_many(already - 1, already - 1);
        waiter.join();
        assert_eq!(b.depth(), (2, 2));
        assert_eq!(b.waiters.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn drop_oldest_room_below_its_limit_is_taken_without_waiting() {
    let b = Budget::new(1, 1000);
    b.force_reserve_below(4, 2);
    assert_eq!(b.depth(), (1, 4));
    b.force_reserve_below(4, 2);
    assert_eq!(b.depth(), (2, 8));
    assert_eq!(b.waiters.load(Ordering::SeqCst), 0);
}

#[test]
fn admit_takes_room_as_the_overflow_policy_says() {
    let b = std::sync::Arc::new(Budget::new(1, 1000));
    assert!(b.admit(1, Overflow::Reject));
    assert!(!b.admit(1, Overflow::Reject), "reject past the bound");
    assert!(!b.admit(1, Overflow::Block(Duration::ZERO)));
    assert_eq!(b.depth(), (1, 1));
    // Drop-oldest takes room past the bound, up to twice the count...
    assert!(b.admit(2, Overflow::DropOldest));
    assert_eq!(b.depth(), (2, 3));
    // ...then waits for the session to trim.
    let b2 = b.clone();
    let waiter = Bounded::spawn(move || b2.admit(4, Overflow::DropOldest));
    waiter.until_waiting(&b);
    assert_eq!(b.depth(), (2, 3));
    b.release(2);
    assert!(waiter.join());
    assert_eq!(b.depth(), (2, 5));
    // A blocked send takes room freed within its time.
    b.release_many(2, 5);
    assert!(b.admit(1, Overflow::Block(Duration::from_secs(5))));
}
