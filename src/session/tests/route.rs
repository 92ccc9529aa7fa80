//! Where an inbound frame goes: a reply to its caller (by name or by
//! id, an error reply as an error), an acknowledgement to the outbox, the
//! app heartbeat's answer nowhere unless asked, anything else to the
//! subscribers; and how it is counted.

use super::*;
use crate::InvalidFrame;

/// A request matched by id, whose caller also takes `errors` as failure.
fn request_by_id(t: &mut Sim, id: u64, errors: &[&str]) -> Receiver<Result<Message, Error>> {
    let (tx, rx) = bounded(1);
    let mut item = t.item(&format!(r#"{{"Operator":"Get","reqId":{id}}}"#));
    item.reply = Some(Box::new(ReplyTo {
        key: Key::Id(id),
        deadline: t.now + Duration::from_secs(5),
        waiter: Waiter {
            tx,
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
            retry: None,
            written_at: 0,
        },
        idempotent: false,
    }));
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    rx
}

fn by_id() -> Rules {
    Rules {
        correlation_field: Some("reqId".into()),
        ..rules()
    }
}

#[test]
fn a_reply_by_id_is_an_error_only_when_named_so_or_expected_as_one() {
    let mut t = Sim::new(by_id());
    t.connect();
    let ok = request_by_id(&mut t, 1, &["Banned"]);
    let named = request_by_id(&mut t, 2, &["Banned"]);
    let expected = request_by_id(&mut t, 3, &["Banned"]);
    t.write();
    t.text(r#"{"Operator":"GetOK","reqId":1}"#);
    t.text(r#"{"Operator":"GetError","reqId":2}"#);
    t.text(r#"{"Operator":"Banned","reqId":3}"#);
    assert!(matches!(ok.try_recv(), Ok(Ok(_))));
    assert!(matches!(named.try_recv(), Ok(Err(Error::Remote(_)))));
    assert!(matches!(expected.try_recv(), Ok(Err(Error::Remote(_)))));
    assert!(t.dispatched.is_empty());
}

#[test]
fn without_an_error_suffix_a_reply_by_id_is_never_an_error_by_its_name() {
    let mut t = Sim::new(Rules {
        error_suffix: "".into(),
        ..by_id()
    });
    t.connect();
    let rx = request_by_id(&mut t, 1, &[]);
    t.write();
    t.text(r#"{"Operator":"GetError","reqId":1}"#);
    assert!(matches!(rx.try_recv(), Ok(Ok(_))));
}

#[test]
fn an_acknowledgement_settles_messages_and_reaches_no_subscriber() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    let mut item = t.item(r#"{"msgId":1,"Operator":"Post"}"#);
    item.id = Some(1);
    let cell = ReceiptCell::new();
    item.receipt = Some(cell.clone());
    t.s.handle_command(t.now, Command::Send(item));
    t.write();
    t.text(r#"{"Operator":"Ack"}"#);
    t.text(r#"{"Operator":"Ack","msgId":"1"}"#);
    assert_eq!(status(&cell), Status::Written, "no numeric id: ignored");
    t.text(r#"{"Operator":"News","msgId":1}"#);
    assert_eq!(status(&cell), Status::Written, "not an acknowledgement");
    assert!(matches!(&t.dispatched[..], [Event::Message(m)] if m.operator() == "News"));
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert_eq!(status(&cell), Status::Acknowledged);
    assert_eq!(t.dispatched.len(), 1);
    assert_eq!(
        t.counters
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn without_at_least_once_an_ack_is_an_ordinary_push() {
    let mut t = Sim::new(rules());
    t.connect();
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert!(matches!(&t.dispatched[..], [Event::Message(m)] if m.operator() == "Ack"));
}

#[test]
fn the_heartbeat_reply_reaches_subscribers_only_when_asked() {
    let heart = Some((
        Utf8Bytes::from_static(r#"{"Operator":"Heart"}"#),
        "HeartOK".to_owned(),
    ));
    let mut t = Sim::new(Rules {
        app_heartbeat: heart.clone(),
        ..rules()
    });
    t.connect();
    t.text(r#"{"Operator":"HeartOK"}"#);
    t.text(r#"{"Operator":"News"}"#);
    assert!(matches!(&t.dispatched[..], [Event::Message(m)] if m.operator() == "News"));

    let mut t = Sim::new(Rules {
        app_heartbeat: heart,
        app_heartbeat_dispatch: true,
        ..rules()
    });
    t.connect();
    t.text(r#"{"Operator":"HeartOK"}"#);
    t.text(r#"{"Operator":"News"}"#);
    assert_eq!(t.dispatched.len(), 2);
}

#[test]
fn inbound_frames_are_counted_and_bad_ones_handed_to_subscribers() {
    let mut t = Sim::new(rules());
    t.connect();
    t.text(r#"{"Operator":"News"}"#);
    t.frame(Inbound::Binary(vec![1, 2, 3]));
    t.frame(Inbound::NotUtf8);
    t.frame(Inbound::Ping);
    let s = t.counters.snapshot(t.budget.depth());
    assert_eq!(s.messages_received, 2, "the text and the binary frame");
    assert_eq!(s.bytes_received, 19 + 3);
    assert_eq!(s.invalid_frames, 2);
    assert!(matches!(
        &t.dispatched[1..],
        [
            Event::Invalid(InvalidFrame::Binary(b)),
            Event::Invalid(InvalidFrame::NotUtf8)
        ] if b == &[1, 2, 3]
    ));
}

#[test]
fn a_frame_after_the_connection_is_gone_is_ignored() {
    let mut t = Sim::new(rules());
    t.connect();
    t.frame(Inbound::Close(Some(1000)));
    t.text(r#"{"Operator":"News"}"#);
    assert!(t.dispatched.is_empty());
}
