//! `close` in memory: what it hands back, when it may finish, the
//! goodbye's ping.

use super::*;

#[test]
fn close_hands_back_what_never_left_in_order_and_answers_requests() {
    let mut t = Sim::new(rules());
    t.send(r#"{"Operator":"A"}"#);
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.send(r#"{"Operator":"B"}"#);
    t.s.handle_close(t.now + Duration::from_secs(1));
    assert!(
        t.s.close_ready(t.now, true),
        "nothing more can be flushed offline"
    );
    let unsent = t.s.finish(t.now);
    t.perform();
    let texts: Vec<_> = unsent.iter().map(|u| u.to_string()).collect();
    assert_eq!(texts, [r#"{"Operator":"A"}"#, r#"{"Operator":"B"}"#]);
    assert!(matches!(rx.try_recv(), Ok(Err(Error::Closed { .. }))));
    assert_eq!(t.state(), LinkState::Closed(CloseReason::Requested));
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn close_waits_for_the_outbox_while_open_and_its_ping_confirms() {
    let mut t = Sim::new(rules());
    t.connect();
    let r = t.send(r#"{"Operator":"A"}"#);
    t.s.handle_close(t.now + Duration::from_secs(1));
    assert!(!t.s.close_ready(t.now, true), "A is still queued");
    let frames = t.write();
    t.pong(ping_of(&frames));
    assert!(t.s.close_ready(t.now, true));
    let seq = t.s.goodbye_ping(t.now).unwrap();
    assert!(!t.s.confirmed());
    t.pong(seq);
    assert!(t.s.confirmed());
    assert!(t.s.finish(t.now).is_empty());
    t.perform();
    assert_eq!(status(&r), Status::Confirmed);
    assert_eq!(
        t.counters
            .possibly_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
