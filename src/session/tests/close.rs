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

#[test]
fn close_lets_a_running_on_open_step_finish_until_its_deadline() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    t.connect();
    let deadline = t.now + Duration::from_secs(2);
    t.s.handle_close(deadline);
    assert!(!t.s.close_ready(t.now, true), "the on_open step runs");
    assert!(!t.s.close_ready(deadline - MS, true));
    assert!(t.s.close_ready(deadline, true), "its deadline has come");
}

#[test]
fn close_while_open_waits_for_unacknowledged_messages_and_the_flush() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    let mut item = t.item(r#"{"msgId":1,"Operator":"Post"}"#);
    item.id = Some(1);
    t.s.handle_command(t.now, Command::Send(item));
    t.write();
    t.s.handle_close(t.now + Duration::from_secs(1));
    assert!(!t.s.close_ready(t.now, true), "1 awaits its ack");
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert!(
        !t.s.close_ready(t.now, false),
        "written, but not yet flushed"
    );
    assert!(t.s.close_ready(t.now, true));
}

#[test]
fn close_while_open_waits_for_a_kept_links_messages_and_a_probe() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    t.hook_done(conn, Ok(()));
    assert_eq!(t.state(), LinkState::Open);
    t.s.handle_close(t.now + Duration::from_secs(30));
    assert!(t.s.close_ready(t.now, true), "nothing to flush");
    // A `Link` kept after the on_open step still sends on its connection.
    let item = t.item(r#"{"Operator":"Later"}"#);
    t.budget.release(item.weight);
    t.s.handle_command(t.now, Command::OnOpen { conn, item });
    assert!(!t.s.close_ready(t.now, true), "the Link's message waits");
    assert_eq!(t.write()[0], r#"{"Operator":"Later"}"#);
    assert!(t.s.close_ready(t.now, true));
    // Silent for an interval: the probe's ping is queued, not yet written.
    t.advance(Duration::from_secs(25));
    assert!(
        !t.s.close_ready(t.now, true),
        "the probe waits to be written"
    );
}

#[test]
fn durable_messages_stay_in_the_journal_at_close_and_others_are_handed_back() {
    let mut t = Sim::new(Rules {
        durable: true,
        ..acked_rules()
    });
    let mut kept = t.item(r#"{"msgId":1,"Operator":"Post"}"#);
    kept.id = Some(1);
    let cell = ReceiptCell::new();
    kept.receipt = Some(cell.clone());
    t.s.handle_command(t.now, Command::Send(kept));
    // Without an id (the on_open step's, say): not in the journal.
    t.send(r#"{"Operator":"Plain"}"#);
    t.s.handle_close(t.now);
    let unsent: Vec<_> = t.s.finish(t.now).iter().map(|u| u.to_string()).collect();
    t.perform();
    assert_eq!(unsent, [r#"{"Operator":"Plain"}"#]);
    assert_eq!(status(&cell), Status::Failed(Failure::Closed));
    assert!(t.journal_drops.is_empty(), "1 is sent after the next start");
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn at_least_once_without_a_journal_hands_back_messages_with_ids() {
    let mut t = Sim::new(acked_rules());
    let mut item = t.item(r#"{"msgId":1,"Operator":"Post"}"#);
    item.id = Some(1);
    t.s.handle_command(t.now, Command::Send(item));
    t.s.handle_close(t.now);
    let unsent: Vec<_> = t.s.finish(t.now).iter().map(|u| u.to_string()).collect();
    assert_eq!(unsent, [r#"{"msgId":1,"Operator":"Post"}"#]);
}

#[test]
fn a_link_that_ended_keeps_its_reason_through_close() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, Error::Fatal("banned".into()));
    t.perform();
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::Fatal(_))
    ));
    t.s.handle_close(t.now);
    assert!(t.s.close_ready(t.now, true));
    t.s.finish(t.now);
    t.perform();
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::Fatal(_))
    ));
}
