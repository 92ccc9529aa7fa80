//! The in-flight window of at least once: writing stops while as many
//! messages (or bytes) as it allows wait for their acknowledgement, and
//! goes on as acknowledgements come; a cut re-sends at most a window.

use super::*;

fn with_ids(t: &mut Sim, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        let mut item = t.item(&format!(r#"{{"msgId":{id}}}"#));
        item.id = Some(id);
        t.s.handle_command(t.now, Command::Send(item));
    }
    t.perform();
}

#[test]
fn writing_waits_while_the_window_is_full_and_goes_on_with_acks() {
    let mut t = Sim::new(Rules {
        window: (3, 1 << 20),
        ..acked_rules()
    });
    t.connect();
    with_ids(&mut t, 1..=10);
    assert_eq!(texts(t.write()).len(), 3);
    assert!(!t.s.wants_write(), "the window is full");
    t.text(r#"{"Operator":"Ack","msgId":2}"#);
    assert!(t.s.wants_write());
    assert_eq!(
        texts(t.write()),
        [r#"{"msgId":4}"#, r#"{"msgId":5}"#],
        "as many as were acknowledged, in order"
    );
    // A cut re-sends only what the window let out.
    t.frame(Inbound::Close(None));
    t.advance(Duration::from_secs(60));
    t.connect();
    assert_eq!(
        texts(t.write()),
        [r#"{"msgId":3}"#, r#"{"msgId":4}"#, r#"{"msgId":5}"#]
    );
}

#[test]
fn the_window_also_counts_bytes_and_lets_one_large_message_through() {
    let mut t = Sim::new(Rules {
        window: (100, 30),
        ..acked_rules()
    });
    t.connect();
    with_ids(&mut t, 1..=5);
    // Each is 12 bytes: the third fills 30.
    assert_eq!(texts(t.write()).len(), 3);
    assert!(!t.s.wants_write());
    t.text(r#"{"Operator":"Ack","msgId":3}"#);
    assert_eq!(texts(t.write()).len(), 2);
    // Without at least once there is no window.
    let mut plain = Sim::new(Rules {
        window: (1, 1),
        ..rules()
    });
    plain.connect();
    for _ in 0..5 {
        plain.send(r#"{"Operator":"A"}"#);
    }
    assert_eq!(texts(plain.write()).len(), 5);
}

#[test]
fn each_acknowledgement_frees_exactly_its_own_bytes() {
    let mut t = Sim::new(Rules {
        window: (100, 30),
        ..acked_rules()
    });
    t.connect();
    with_ids(&mut t, 1..=6);
    assert_eq!(texts(t.write()).len(), 3, "36 bytes reach 30");
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert_eq!(
        texts(t.write()),
        [r#"{"msgId":4}"#],
        "24 bytes left: room for one more"
    );
}

#[test]
fn messages_dropped_for_room_leave_the_window_too() {
    let mut t = Sim::with_outbox(
        Rules {
            window: (100, 25),
            overflow: Overflow::DropOldest,
            ..acked_rules()
        },
        2,
    );
    t.connect();
    for id in 1..=4 {
        // As `send` admits it under drop-oldest: room taken past the bound.
        let mut item = Item::new(format!(r#"{{"msgId":{id}}}"#));
        t.budget.force_reserve(item.weight);
        item.id = Some(id);
        t.s.handle_command(t.now, Command::Send(item));
        t.perform();
        // Each new message drops the oldest written one (room for 2).
        assert_eq!(
            texts(t.write()),
            [format!(r#"{{"msgId":{id}}}"#)],
            "message {id} is written: what was dropped holds no window"
        );
    }
}

#[test]
fn a_server_that_never_acknowledges_is_named_once_at_half_the_outbox() {
    // An outbox of 10: the warning comes at 5 written and unacknowledged.
    let mut t = Sim::with_outbox(acked_rules(), 10);
    t.connect();
    with_ids(&mut t, 1..=4);
    t.write();
    assert!(!t.s.warned_of_silence(), "4 of 10: not yet");
    with_ids(&mut t, 5..=5);
    t.write();
    assert!(t.s.warned_of_silence(), "5 of 10");
    // Once an acknowledgement has come, silence is not the server's way.
    let mut t = Sim::with_outbox(acked_rules(), 10);
    t.connect();
    with_ids(&mut t, 1..=1);
    t.write();
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    with_ids(&mut t, 2..=8);
    t.write();
    assert!(!t.s.warned_of_silence());
}

#[test]
fn the_window_grows_with_what_the_connection_delivers_and_starts_afresh_on_the_next() {
    let written_ahead = |t: &mut Sim| texts(t.write()).len();
    let mut t = Sim::with_outbox(
        Rules {
            window: (2, 1 << 20),
            ..acked_rules()
        },
        1000,
    );
    t.connect();
    with_ids(&mut t, 1..=200);
    assert_eq!(
        written_ahead(&mut t),
        2,
        "a new connection starts at the window"
    );
    // Acknowledged: 2, then 4, … the window is half of what was delivered.
    t.text(r#"{"Operator":"Ack","msgId":2}"#);
    assert_eq!(written_ahead(&mut t), 2, "2 delivered: still 2");
    t.text(r#"{"Operator":"Ack","msgId":4}"#);
    assert_eq!(written_ahead(&mut t), 2);
    t.text(r#"{"Operator":"Ack","msgId":10}"#);
    // 10 delivered (7 to 10 before they were written): a window of 5.
    assert_eq!(written_ahead(&mut t), 5);
    t.text(r#"{"Operator":"Ack","msgId":100}"#);
    // Bounded at 16 times the window, whatever was delivered.
    let burst = written_ahead(&mut t);
    assert_eq!(burst, 32, "100 delivered: a window of 50, bounded at 32");
    // A cut: the next connection starts at the window again.
    t.frame(Inbound::Close(None));
    t.advance(Duration::from_secs(60));
    t.connect();
    assert_eq!(written_ahead(&mut t), 2);
}

#[test]
fn the_byte_window_grows_with_the_bytes_delivered() {
    let mut t = Sim::with_outbox(
        Rules {
            window: (1000, 40),
            ..acked_rules()
        },
        1000,
    );
    t.connect();
    with_ids(&mut t, 1..=200);
    // About 12 bytes a message: 40 bytes let 4 out (the last one past it).
    assert_eq!(texts(t.write()).len(), 4);
    t.text(r#"{"Operator":"Ack","msgId":40}"#);
    // 40 delivered (about 480 bytes): a window of about 240 bytes.
    let burst = texts(t.write()).len();
    assert!((15..=25).contains(&burst), "{burst}");
}
