//! Outstanding requests and how replies find them. Pure: takes `now`.
//!
//! By name, replies are matched first in, first out per reply operator
//! (servers answer one connection in order). With a correlation field, each
//! request carries a unique id and the reply is matched by it.
//!
//! A request whose caller gave up is kept as a *ghost* for as long again as
//! its timeout: if its late reply arrives in that window it is swallowed,
//! instead of being handed to the next caller of the same operator.
//!
//! What matching by name cannot know: when a ghost and a live request of
//! one operator both wait, a reply may be the ghost's late one or the live
//! request's own (the ghost's was lost). The ghost takes it (a late reply
//! must never reach the wrong caller), and the live request is marked as
//! possibly robbed: if it then times out it leaves no ghost, since the one
//! reply the two of them were owed has come. So for requests made one
//! after another (a caller retrying), one lost reply costs at most one
//! more timeout, never a chain of them; the price is that a robbed
//! request's own reply, if it was merely late too, goes to the next
//! caller. With requests of one operator in flight at once, a lost reply
//! (or an error reply that fits several of them) can cost more than one
//! timeout: by name nothing tells their replies apart. A correlation field
//! removes the ambiguity: each reply names its request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry<W> {
    waiter: W,
    deadline: Instant,
    forget_at: Instant,
    /// Error operators that also answer this request.
    errors: Vec<String>,
}

/// Where a request waits for its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Operator { reply: String, errors: Vec<String> },
    Id(u64),
}

/// The outcome of offering an inbound message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Matched<W> {
    /// A live request: `error` tells an error reply.
    Reply { waiter: W, error: bool },
    /// A reply to a request whose caller gave up: swallow it.
    Late,
    /// Not a reply: dispatch it to subscribers.
    None,
}

/// Outstanding requests of one connection.
#[derive(Debug)]
pub(crate) struct Pending<W> {
    by_reply: HashMap<String, VecDeque<Entry<W>>>,
    /// Error operator -> reply operators whose requests it can answer.
    by_error: HashMap<String, Vec<String>>,
    by_id: HashMap<u64, Entry<W>>,
    inserts: u64,
}

impl<W> Default for Pending<W> {
    fn default() -> Self {
        Pending {
            by_reply: HashMap::new(),
            by_error: HashMap::new(),
            by_id: HashMap::new(),
            inserts: 0,
        }
    }
}

impl<W> Pending<W> {
    pub(crate) fn insert(&mut self, key: Key, waiter: W, now: Instant, deadline: Instant) {
        let forget_at = crate::time::after(
            deadline,
            deadline
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        );
        self.inserts += 1;
        match key {
            Key::Operator { reply, errors } => {
                for e in &errors {
                    let list = self.by_error.entry(e.clone()).or_default();
                    if !list.contains(&reply) {
                        list.push(reply.clone());
                    }
                }
                let queue = self.by_reply.entry(reply).or_default();
                prune_front(queue, now);
                queue.push_back(Entry {
                    waiter,
                    deadline,
                    forget_at,
                    errors,
                });
            }
            Key::Id(id) => {
                if self.inserts.is_multiple_of(1024) {
                    self.by_id.retain(|_, e| e.forget_at > now);
                }
                self.by_id.insert(
                    id,
                    Entry {
                        waiter,
                        deadline,
                        forget_at,
                        errors: Vec::new(),
                    },
                );
            }
        }
    }

    /// Offer an inbound message with operator `op` and correlation `id`.
    /// `is_error_op` tells whether `op` is an error reply by naming convention
    /// (used for id-matched replies).
    pub(crate) fn offer(
        &mut self,
        op: &str,
        id: Option<u64>,
        is_error_op: bool,
        now: Instant,
    ) -> Matched<W> {
        if let Some(id) = id
            && let Some(e) = self.by_id.remove(&id)
        {
            return deliver(e, is_error_op, now);
        }
        if let Some(queue) = self.by_reply.get_mut(op) {
            prune_front(queue, now);
            if let Some(e) = queue.pop_front() {
                return deliver_in(queue, e, None, now);
            }
        }
        if let Some(replies) = self.by_error.get(op) {
            for reply in replies {
                let Some(queue) = self.by_reply.get_mut(reply) else {
                    continue;
                };
                prune_front(queue, now);
                // FIFO: the error answers the oldest request that accepts it.
                if let Some(pos) = queue.iter().position(|e| e.errors.iter().any(|x| x == op))
                    && let Some(e) = queue.remove(pos)
                {
                    return deliver_in(queue, e, Some(op), now);
                }
            }
        }
        Matched::None
    }

    /// Everything outstanding, oldest first per key: the link died.
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<W> {
        let mut out: Vec<W> = Vec::new();
        for (_, q) in self.by_reply.drain() {
            out.extend(q.into_iter().filter(|e| e.deadline > now).map(|e| e.waiter));
        }
        out.extend(
            self.by_id
                .drain()
                .filter(|(_, e)| e.deadline > now)
                .map(|(_, e)| e.waiter),
        );
        self.by_error.clear();
        out
    }

    /// No request (live, or a ghost) waits on this connection.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.by_reply.values().all(VecDeque::is_empty)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_reply.values().map(VecDeque::len).sum::<usize>() + self.by_id.len()
    }
}

fn deliver<W>(e: Entry<W>, error: bool, now: Instant) -> Matched<W> {
    if now >= e.deadline {
        Matched::Late
    } else {
        Matched::Reply {
            waiter: e.waiter,
            error,
        }
    }
}

/// [`deliver`] for a request matched by name in `queue` (by the error
/// operator `error_op`, for an error reply): when a ghost takes the reply,
/// the oldest live request still owed one that the reply could answer may
/// have been robbed of it, and leaves no ghost when it times out.
fn deliver_in<W>(
    queue: &mut VecDeque<Entry<W>>,
    e: Entry<W>,
    error_op: Option<&str>,
    now: Instant,
) -> Matched<W> {
    let m = deliver(e, error_op.is_some(), now);
    if matches!(m, Matched::Late)
        && let Some(live) = queue.iter_mut().find(|e| {
            e.deadline > now
                && e.forget_at > e.deadline
                && error_op.is_none_or(|op| e.errors.iter().any(|x| x == op))
        })
    {
        live.forget_at = live.deadline;
    }
    m
}

fn prune_front<W>(queue: &mut VecDeque<Entry<W>>, now: Instant) {
    while queue.front().is_some_and(|e| e.forget_at <= now) {
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(reply: &str, err: &str) -> Key {
        Key::Operator {
            reply: reply.into(),
            errors: vec![err.into()],
        }
    }

    #[test]
    fn replies_by_name_are_matched_first_in_first_out() {
        let t = Instant::now();
        let d = t + Duration::from_secs(10);
        let mut p = Pending::default();
        for w in 1..=3 {
            p.insert(by_name("GetOK", "GetError"), w, t, d);
        }
        let got: Vec<_> = (0..3).map(|_| p.offer("GetOK", None, false, t)).collect();
        assert_eq!(
            got,
            [1, 2, 3].map(|waiter| Matched::Reply {
                waiter,
                error: false
            })
        );
        assert_eq!(p.offer("GetOK", None, false, t), Matched::None);
    }

    #[test]
    fn error_reply_answers_the_oldest_request_that_accepts_it() {
        let t = Instant::now();
        let d = t + Duration::from_secs(10);
        let mut p = Pending::default();
        p.insert(
            Key::Operator {
                reply: "LoginOK".into(),
                errors: vec!["LoginError".into(), "BanLogin".into()],
            },
            1,
            t,
            d,
        );
        p.insert(by_name("LoginOK", "LoginError"), 2, t, d);
        assert_eq!(
            p.offer("BanLogin", None, false, t),
            Matched::Reply {
                waiter: 1,
                error: true
            }
        );
        assert_eq!(p.offer("BanLogin", None, false, t), Matched::None);
        assert_eq!(
            p.offer("LoginError", None, false, t),
            Matched::Reply {
                waiter: 2,
                error: true
            }
        );
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn replies_by_id_ignore_order() {
        let t = Instant::now();
        let d = t + Duration::from_secs(10);
        let mut p = Pending::default();
        for id in 1..=3u64 {
            p.insert(Key::Id(id), id, t, d);
        }
        assert_eq!(
            p.offer("XOK", Some(3), false, t),
            Matched::Reply {
                waiter: 3,
                error: false
            }
        );
        assert_eq!(
            p.offer("XError", Some(1), true, t),
            Matched::Reply {
                waiter: 1,
                error: true
            }
        );
        assert_eq!(p.offer("XOK", Some(9), false, t), Matched::None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn late_reply_is_swallowed_by_its_ghost_not_given_to_the_next_caller() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(
            by_name("GetOK", "GetError"),
            1,
            t,
            t + Duration::from_secs(5),
        );
        let later = t + Duration::from_secs(6);
        p.insert(
            by_name("GetOK", "GetError"),
            2,
            later,
            later + Duration::from_secs(5),
        );
        assert_eq!(p.offer("GetOK", None, false, later), Matched::Late);
        assert_eq!(
            p.offer("GetOK", None, false, later),
            Matched::Reply {
                waiter: 2,
                error: false
            }
        );
    }

    #[test]
    fn one_lost_reply_costs_at_most_one_more_timeout() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pending::default();
        // 1 is never answered: a ghost once its caller gives up.
        p.insert(by_name("GetOK", "GetError"), 1, t, t + ms(300));
        // The retry is answered promptly, but the ghost takes that reply.
        let t2 = t + ms(300);
        p.insert(by_name("GetOK", "GetError"), 2, t2, t2 + ms(300));
        assert_eq!(p.offer("GetOK", None, false, t2 + ms(10)), Matched::Late);
        // 2 times out robbed: no ghost of its own, so 3 gets its reply.
        let t3 = t2 + ms(300);
        p.insert(by_name("GetOK", "GetError"), 3, t3, t3 + ms(300));
        assert_eq!(
            p.offer("GetOK", None, false, t3 + ms(10)),
            Matched::Reply {
                waiter: 3,
                error: false
            }
        );
        // The same when the reply the ghost takes is an error reply.
        let t4 = t3 + ms(2000);
        p.insert(by_name("GetOK", "GetError"), 4, t4, t4 + ms(300));
        let t5 = t4 + ms(300);
        p.insert(by_name("GetOK", "GetError"), 5, t5, t5 + ms(300));
        assert_eq!(p.offer("GetError", None, false, t5 + ms(10)), Matched::Late);
        let t6 = t5 + ms(300);
        p.insert(by_name("GetOK", "GetError"), 6, t6, t6 + ms(300));
        assert_eq!(
            p.offer("GetError", None, false, t6 + ms(10)),
            Matched::Reply {
                waiter: 6,
                error: true
            }
        );
    }

    #[test]
    fn ghosts_are_forgotten_after_as_long_again_as_their_timeout() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(
            by_name("GetOK", "GetError"),
            1,
            t,
            t + Duration::from_secs(5),
        );
        let much_later = t + Duration::from_secs(11);
        p.insert(
            by_name("GetOK", "GetError"),
            2,
            much_later,
            much_later + Duration::from_secs(5),
        );
        assert_eq!(
            p.offer("GetOK", None, false, much_later),
            Matched::Reply {
                waiter: 2,
                error: false
            }
        );
    }

    #[test]
    fn drain_returns_only_live_waiters() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(by_name("AOK", "AError"), 1, t, t + Duration::from_secs(1));
        p.insert(Key::Id(7), 2, t, t + Duration::from_secs(10));
        let mut got = p.drain(t + Duration::from_secs(2));
        got.sort();
        assert_eq!(got, [2]);
        assert_eq!(p.len(), 0);
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn reply(waiter: i32) -> Matched<i32> {
        Matched::Reply {
            waiter,
            error: false,
        }
    }

    /// A request of `GetOK` timed out at `t + timeout` (its ghost), and a
    /// live one inserted at `at`; what does a `GetOK` reply at `at` reach?
    fn reply_after_ghost(timeout: Duration, at: Duration) -> Matched<i32> {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(by_name("GetOK", "GetError"), 1, t, t + timeout);
        let now = t + at;
        p.insert(by_name("GetOK", "GetError"), 2, now, now + S(60));
        p.offer("GetOK", None, false, now)
    }

    #[test]
    fn a_ghost_swallows_replies_until_exactly_twice_its_timeout() {
        let ns = Duration::from_nanos;
        assert_eq!(reply_after_ghost(S(5), S(10) - ns(1)), Matched::Late);
        assert_eq!(reply_after_ghost(S(5), S(10)), reply(2));
    }

    #[test]
    fn a_ghost_lives_at_least_a_second_after_a_short_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(reply_after_ghost(ms(100), ms(1099)), Matched::Late);
        assert_eq!(reply_after_ghost(ms(100), ms(1100)), reply(2));
    }

    #[test]
    fn a_reply_at_the_deadline_is_late() {
        let t = Instant::now();
        let d = t + S(5);
        let mut p = Pending::default();
        p.insert(by_name("GetOK", "GetError"), 1, t, d);
        p.insert(Key::Id(9), 2, t, d);
        assert_eq!(p.offer("GetOK", None, false, d), Matched::Late);
        assert_eq!(p.offer("XOK", Some(9), false, d), Matched::Late);
        assert!(p.is_empty());
    }

    #[test]
    fn id_ghosts_are_swept_every_1024_inserts_not_on_each() {
        let t = Instant::now();
        let mut p = Pending::default();
        // Forgotten at t + 2 s.
        p.insert(Key::Id(0), 0, t, t + S(1));
        // Forgotten exactly when the sweep runs, and live then.
        p.insert(Key::Id(1), 1, t, t + S(5));
        p.insert(Key::Id(2), 2, t, t + S(20));
        let later = t + S(10);
        for id in 3..1023u64 {
            p.insert(Key::Id(id), id as i32, later, later + S(60));
        }
        // Sweeping on each insert would cost a scan of every request.
        assert_eq!(p.len(), 1023);
        p.insert(Key::Id(1023), 1023, later, later + S(60));
        assert_eq!(p.len(), 1022, "the 1024th insert sweeps the forgotten");
        assert_eq!(p.offer("XOK", Some(0), false, later), Matched::None);
        assert_eq!(p.offer("XOK", Some(1), false, later), Matched::None);
        assert_eq!(p.offer("XOK", Some(2), false, later), reply(2));
    }

    #[test]
    fn drain_hands_back_only_requests_still_before_their_deadline() {
        let t = Instant::now();
        let now = t + S(10);
        let mut p = Pending::default();
        p.insert(by_name("AOK", "AError"), 1, t, t + S(5)); // a ghost
        p.insert(by_name("AOK", "AError"), 2, t, now); // times out now
        p.insert(by_name("AOK", "AError"), 3, t, now + S(1));
        p.insert(by_name("BOK", "BError"), 4, t, now + S(1));
        p.insert(Key::Id(1), 5, t, t + S(5));
        p.insert(Key::Id(2), 6, t, now);
        p.insert(Key::Id(3), 7, t, now + S(1));
        let mut got = p.drain(now);
        got.sort();
        assert_eq!(got, [3, 4, 7]);
        assert!(p.is_empty());
        // Error routes are gone too.
        assert_eq!(p.offer("AError", None, false, now), Matched::None);
    }

    #[test]
    fn is_empty_counts_ghosts_and_both_kinds_of_request() {
        let t = Instant::now();
        let mut p = Pending::<i32>::default();
        assert!(p.is_empty());
        p.insert(by_name("AOK", "AError"), 1, t, t + S(1));
        assert!(!p.is_empty(), "a request by name");
        assert_eq!(p.offer("AOK", None, false, t), reply(1));
        assert!(p.is_empty(), "an emptied queue holds nothing");
        p.insert(Key::Id(1), 2, t, t + S(1));
        assert!(!p.is_empty(), "a request by id");
        assert_eq!(p.offer("AOK", Some(1), false, t), reply(2));
        assert!(p.is_empty());
    }

    #[test]
    fn each_lost_reply_robs_a_different_live_request() {
        let t = Instant::now();
        let at = |s| t + S(s);
        let mut p = Pending::default();
        // Two requests never answered: ghosts from 5 s and 6 s, until 10 s and 11 s.
        p.insert(by_name("GetOK", "GetError"), 1, at(0), at(5));
        p.insert(by_name("GetOK", "GetError"), 2, at(1), at(6));
        // Two retries, answered promptly: both replies go to the ghosts.
        p.insert(by_name("GetOK", "GetError"), 3, at(6), at(11));
        p.insert(by_name("GetOK", "GetError"), 4, at(6), at(11));
        assert_eq!(p.offer("GetOK", None, false, at(7)), Matched::Late);
        assert_eq!(p.offer("GetOK", None, false, at(7)), Matched::Late);
        // 3 and 4 time out robbed, leaving no ghost: 5 gets its reply.
        p.insert(by_name("GetOK", "GetError"), 5, at(12), at(17));
        assert_eq!(p.offer("GetOK", None, false, at(12)), reply(5));
        assert!(p.is_empty());
    }

    #[test]
    fn a_request_timing_out_as_the_reply_comes_is_a_ghost_not_robbed() {
        let t = Instant::now();
        let at = |s| t + S(s);
        let mut p = Pending::default();
        p.insert(by_name("GetOK", "GetError"), 1, at(0), at(5));
        p.insert(by_name("GetOK", "GetError"), 2, at(1), at(7));
        p.insert(by_name("GetOK", "GetError"), 3, at(6), at(16));
        // At 7 s: 1's ghost takes the reply; 2 times out at that instant, so
        // 3 is the live request robbed, and 2 stays a ghost.
        assert_eq!(p.offer("GetOK", None, false, at(7)), Matched::Late);
        assert_eq!(p.offer("GetOK", None, false, at(7)), Matched::Late);
        assert_eq!(p.offer("GetOK", None, false, at(7)), reply(3));
    }

    #[test]
    fn a_late_error_reply_robs_no_request_that_does_not_accept_it() {
        let t = Instant::now();
        let at = |s| t + S(s);
        let mut p = Pending::default();
        let get = |errors: &[&str]| Key::Operator {
            reply: "GetOK".into(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        };
        // A long request that a ban cannot answer, then a short one that it can.
        p.insert(get(&["GetError"]), 1, at(0), at(60));
        p.insert(get(&["GetError", "BanGet"]), 2, at(1), at(6));
        // 2's late ban: its ghost swallows it. It cannot have been 1's reply.
        assert_eq!(p.offer("BanGet", None, false, at(7)), Matched::Late);
        // So 1 was not robbed: when it times out its ghost takes its late
        // reply, which must not reach the next caller.
        p.insert(get(&["GetError"]), 3, at(61), at(70));
        assert_eq!(p.offer("GetOK", None, false, at(61)), Matched::Late);
        assert_eq!(p.offer("GetOK", None, false, at(62)), reply(3));
    }
}
