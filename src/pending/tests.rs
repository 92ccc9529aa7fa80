//! Reply matching with fake instants: FIFO by name, by id, ghosts and the
//! robbed rule.

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
