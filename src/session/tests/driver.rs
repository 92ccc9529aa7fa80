//! What the driver asks the session before it sleeps or reads: whether to
//! dial, write or keep reading, which connection is current, and what the
//! journal records.

use super::*;

#[test]
fn an_attempt_is_wanted_only_while_connecting_and_never_once_closing() {
    let mut t = Sim::new(rules());
    assert!(t.s.wants_connect(), "a new link dials at once");
    t.advance(Duration::ZERO);
    assert!(!t.s.wants_connect(), "the attempt runs: no second socket");
    t.s.handle_connected(t.now);
    t.perform();
    assert!(!t.s.wants_connect());

    let mut closing = Sim::new(rules());
    closing.s.handle_close(closing.now + Duration::from_secs(1));
    assert!(
        !closing.s.wants_connect(),
        "never open a connection just to close it"
    );
    closing.advance(Duration::ZERO);
    assert!(closing.connects.is_empty());
}

#[test]
fn writing_is_wanted_for_queued_messages_only_once_open() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    t.send(r#"{"Operator":"Queued"}"#);
    assert!(!t.s.wants_write(), "no connection to write to");
    let conn = t.connect();
    assert!(
        !t.s.wants_write(),
        "the outbox waits for the on_open step to finish"
    );
    let item = t.item(r#"{"Operator":"userLogin"}"#);
    t.budget.release(item.weight);
    t.s.handle_command(t.now, Command::OnOpen { conn, item });
    assert!(t.s.wants_write(), "the on_open step's message goes now");
    assert_eq!(t.write()[0], r#"{"Operator":"userLogin"}"#);
    assert!(!t.s.wants_write());
    t.hook_done(conn, Ok(()));
    assert!(t.s.wants_write(), "open: the outbox flows");
    t.write();
    assert!(!t.s.wants_write(), "everything left");
}

#[test]
fn a_probe_wants_writing_even_with_nothing_queued() {
    let mut t = Sim::new(rules());
    t.connect();
    assert!(!t.s.wants_write());
    t.advance(Duration::from_secs(25));
    assert!(t.s.wants_write(), "the probe's ping waits to be written");
    assert!(t.write()[0].starts_with("ping"));
}

#[test]
fn a_request_awaiting_its_reply_is_known_until_answered() {
    let mut t = Sim::new(rules());
    assert!(!t.s.awaiting_reply(), "no connection");
    t.connect();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    assert!(!t.s.awaiting_reply(), "queued, not yet written");
    t.write();
    assert!(
        t.s.awaiting_reply(),
        "written: the driver reads on for its reply"
    );
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    assert!(!t.s.awaiting_reply());
}

#[test]
fn an_answer_is_reported_to_the_driver_once() {
    let mut t = Sim::new(rules());
    t.connect();
    assert!(!t.s.take_answered(), "nothing answered yet");
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"News"}"#);
    assert!(!t.s.take_answered(), "a push answers nobody");
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    assert!(t.s.take_answered());
    assert!(!t.s.take_answered(), "taken: not reported again");
}

#[test]
fn a_verdict_for_an_earlier_connection_does_not_open_the_current_one() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let first = t.connect();
    assert_eq!(t.s.conn_id(), Some(first));
    t.advance(Duration::from_secs(1));
    t.frame(Inbound::Close(Some(1001)));
    assert_eq!(t.s.conn_id(), None, "the connection is gone");
    let LinkState::Backoff { delay, .. } = t.state() else {
        panic!("{:?}", t.state());
    };
    t.advance(delay);
    let second = t.connect();
    assert_ne!(first, second);
    assert_eq!(t.s.conn_id(), Some(second));
    assert_eq!(t.state(), LinkState::LoggingIn);
    // The first connection's hook finishes late: it proves nothing about
    // the second, whose own hook still runs.
    t.hook_done(first, Ok(()));
    assert_eq!(t.state(), LinkState::LoggingIn);
    let item = t.item(r#"{"Operator":"userLogin"}"#);
    t.budget.release(item.weight);
    let cell = ReceiptCell::new();
    let mut item = item;
    item.receipt = Some(cell.clone());
    t.s.handle_command(t.now, Command::OnOpen { conn: first, item });
    t.perform();
    assert_eq!(status(&cell), Status::Failed(Failure::NotOpen));
    assert!(t.write().is_empty(), "nothing of the first hook is written");
}

#[test]
fn acknowledgements_are_recorded_up_to_the_highest_id_sent() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    assert_eq!(t.s.acked(), 0);
    for id in 1..=2u64 {
        let mut item = t.item(&format!(r#"{{"msgId":{id},"Operator":"Post"}}"#));
        item.id = Some(id);
        t.s.handle_command(t.now, Command::Send(item));
    }
    t.write();
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert_eq!(t.s.acked(), 1, "the journal may forget id 1");
    // A server acknowledging ids never sent must not settle later ones.
    t.text(r#"{"Operator":"Ack","msgId":99}"#);
    assert_eq!(t.s.acked(), 2);
    let mut item = t.item(r#"{"msgId":3,"Operator":"Post"}"#);
    item.id = Some(3);
    let cell = ReceiptCell::new();
    item.receipt = Some(cell.clone());
    t.s.handle_command(t.now, Command::Send(item));
    t.write();
    assert_eq!(status(&cell), Status::Written, "3 still awaits its ack");
    t.text(r#"{"Operator":"Ack","msgId":3}"#);
    assert_eq!(status(&cell), Status::Acknowledged);
    assert_eq!(t.s.acked(), 3);
}

#[test]
fn writing_waits_while_confirmations_are_at_their_bound_but_a_probe_still_goes() {
    let mut t = Sim::new(Rules {
        track_cap: 1,
        ..rules()
    });
    t.connect();
    t.send(r#"{"Operator":"A"}"#);
    let frames = t.write();
    assert_eq!(frames.len(), 2, "A and the ping that confirms it");
    let b = t.send(r#"{"Operator":"B"}"#);
    assert!(
        !t.s.wants_write(),
        "A's receipt fills the tracking: B waits for the pong"
    );
    assert!(t.write().is_empty());
    t.advance(Duration::from_secs(25));
    assert!(t.s.wants_write(), "the probe is no message: it goes");
    assert_eq!(t.write(), ["ping 2"]);
    assert_eq!(status(&b), Status::Queued);
    t.pong(2);
    assert!(t.s.wants_write(), "confirmed: room to track B");
    assert_eq!(t.write()[0], r#"{"Operator":"B"}"#);
}

#[test]
fn an_idle_link_gives_back_the_room_of_a_burst() {
    let mut t = Sim::new(rules());
    t.connect();
    for _ in 0..64 {
        t.send(r#"{"Operator":"A"}"#);
    }
    t.write();
    t.pong(1);
    assert!(t.s.outbox.capacity() > 0);
    assert!(t.s.conn.as_ref().unwrap().awaiting.capacity() > 0);
    t.s.release_memory();
    assert_eq!(t.s.outbox.capacity(), 0);
    assert_eq!(t.s.outputs.capacity(), 0);
    assert_eq!(t.s.conn.as_ref().unwrap().awaiting.capacity(), 0);
}

#[test]
fn an_open_idle_link_sleeps_until_its_heartbeat_is_due() {
    let mut t = Sim::new(rules());
    t.connect();
    assert_eq!(t.s.poll_timeout(), Some(t.now + Duration::from_secs(25)));
}
