//! The views the simulator checks its invariants with must tell what the
//! session holds (a view that lies makes every invariant on it pass), and
//! an idle link gives back the room of a burst.

use super::*;

#[test]
fn the_held_view_counts_queued_and_unacknowledged_messages_with_their_bytes() {
    let mut t = Sim::new(acked_rules());
    assert_eq!(t.s.held(), (0, 0));
    for id in 1..=2u64 {
        let mut item = t.item(&format!(r#"{{"msgId":{id},"Operator":"Post"}}"#));
        item.id = Some(id);
        t.s.handle_command(t.now, Command::Send(item));
    }
    assert_eq!(t.s.held(), (2, 2 * 29), "queued");
    t.connect();
    t.write();
    assert_eq!(t.s.held(), (2, 2 * 29), "written, awaiting their ack");
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert_eq!(t.s.held(), (1, 29));
    assert_eq!(t.s.held(), t.budget.depth());
}

#[test]
fn the_tracked_view_tells_receipts_from_answered_requests() {
    let mut t = Sim::new(rules());
    assert_eq!(t.s.tracked(), (0, 0), "no connection");
    t.connect();
    t.send(r#"{"Operator":"A"}"#);
    t.send(r#"{"Operator":"B"}"#);
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    assert_eq!(t.s.tracked(), (2, 1));
    t.pong(1);
    assert_eq!(t.s.tracked(), (0, 0), "the pong confirms all three");
}

#[test]
fn the_requeued_view_counts_only_requests_written_before() {
    let mut t = Sim::new(rules());
    t.connect();
    let (tx, _rx) = bounded(1);
    let mut item = t.item(r#"{"Operator":"Get"}"#);
    item.reply = Some(Box::new(ReplyTo {
        key: Key::Operator {
            reply: "GetOK".into(),
            errors: Vec::new(),
        },
        deadline: t.now + Duration::from_secs(30),
        waiter: waiter(tx),
        idempotent: true,
    }));
    t.s.handle_command(t.now, Command::Send(item));
    t.write();
    t.request(
        r#"{"Operator":"Other"}"#,
        "OtherOK",
        Duration::from_secs(30),
    );
    t.send(r#"{"Operator":"A"}"#);
    assert_eq!(t.s.requeued_requests(), 0);
    t.frame(Inbound::Close(None));
    assert_eq!(t.s.requeued_requests(), 1, "the idempotent one, again");
}
