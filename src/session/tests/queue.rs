//! The outbox in memory: time to live, volatile messages, acknowledgements
//! and re-sending, drop-oldest.

use super::*;

#[test]
fn a_message_whose_time_to_live_runs_out_before_writing_expires_and_is_counted() {
    let mut t = Sim::new(rules());
    let mut item = t.item(r#"{"Operator":"Quote"}"#);
    let cell = ReceiptCell::new();
    item.receipt = Some(cell.clone());
    item.expires = Some(t.now + 100 * MS);
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    assert_eq!(
        t.s.poll_timeout().map(|d| d <= t.now + 100 * MS),
        Some(true)
    );
    t.advance(100 * MS);
    assert_eq!(status(&cell), Status::Expired);
    assert_eq!(
        t.counters
            .expired
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn a_volatile_message_is_not_buffered_while_the_link_is_down() {
    let mut t = Sim::new(rules());
    let mut item = t.item(r#"{"Operator":"Typing"}"#);
    let cell = ReceiptCell::new();
    item.receipt = Some(cell.clone());
    item.volatile = true;
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    assert_eq!(status(&cell), Status::Failed(Failure::NotOpen));
    assert_eq!(
        t.counters
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn at_least_once_keeps_messages_until_acknowledged_and_resends_them_first() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    let mut cells = Vec::new();
    for id in 1..=3u64 {
        let mut item = t.item(&format!(r#"{{"msgId":{id},"Operator":"Post"}}"#));
        item.id = Some(id);
        let cell = ReceiptCell::new();
        item.receipt = Some(cell.clone());
        cells.push(cell);
        t.s.handle_command(t.now, Command::Send(item));
    }
    t.perform();
    assert_eq!(t.write().len(), 4, "three messages and a ping");
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    assert_eq!(status(&cells[0]), Status::Acknowledged);
    assert_eq!(t.budget.depth().0, 2, "unacknowledged ones hold their room");
    t.frame(Inbound::Close(None));
    // Healthy for a while before: retried at once; 2 and 3 go first again.
    t.advance(Duration::from_secs(1));
    t.s.handle_connected(t.now);
    t.perform();
    let frames = t.write();
    assert!(frames[0].contains(r#""msgId":2"#) && frames[1].contains(r#""msgId":3"#));
    assert_eq!(
        t.counters.resent.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        t.counters
            .possibly_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    t.text(r#"{"Operator":"Ack","msgId":3}"#);
    assert!(cells.iter().all(|c| status(c) == Status::Acknowledged));
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn drop_oldest_gives_up_the_oldest_message_and_keeps_the_newest() {
    let mut t = Sim::with_outbox(
        Rules {
            overflow: Overflow::DropOldest,
            ..rules()
        },
        2,
    );
    let cells: Vec<_> = ["A", "B", "C"]
        .iter()
        .map(|op| {
            let mut item = Item::new(format!(r#"{{"Operator":"{op}"}}"#));
            t.budget.force_reserve(item.weight);
            let cell = ReceiptCell::new();
            item.receipt = Some(cell.clone());
            t.s.handle_command(t.now, Command::Send(item));
            cell
        })
        .collect();
    t.perform();
    assert_eq!(status(&cells[0]), Status::Failed(Failure::Dropped));
    assert_eq!(
        t.counters
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    t.connect();
    let frames = t.write();
    assert_eq!(frames[..2], [r#"{"Operator":"B"}"#, r#"{"Operator":"C"}"#]);
}

/// Send with a receipt; `f` sets the item's options (given `now`).
fn send_with(t: &mut Sim, text: &str, f: impl FnOnce(&mut Item, Instant)) -> Arc<ReceiptCell> {
    let mut item = t.item(text);
    let cell = ReceiptCell::new();
    item.receipt = Some(cell.clone());
    f(&mut item, t.now);
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    cell
}

#[test]
fn a_volatile_message_goes_while_open_and_is_dropped_when_the_link_is_lost() {
    let mut t = Sim::new(rules());
    t.connect();
    let sent = send_with(&mut t, r#"{"Operator":"Typing"}"#, |i, _| i.volatile = true);
    assert_eq!(t.write()[0], r#"{"Operator":"Typing"}"#);
    assert_eq!(status(&sent), Status::Written);
    let stale = send_with(&mut t, r#"{"Operator":"Typing"}"#, |i, _| i.volatile = true);
    let kept = t.send(r#"{"Operator":"Post"}"#);
    t.frame(Inbound::Close(None));
    assert_eq!(status(&stale), Status::Failed(Failure::NotOpen));
    assert_eq!(
        status(&kept),
        Status::Queued,
        "kept for the next connection"
    );
    assert_eq!(t.budget.depth().0, 1);
}

#[test]
fn each_message_expires_at_its_own_time() {
    let mut t = Sim::new(rules());
    let soon = send_with(&mut t, r#"{"Operator":"A"}"#, |i, now| {
        i.expires = Some(now + 100 * MS)
    });
    let later = send_with(&mut t, r#"{"Operator":"B"}"#, |i, now| {
        i.expires = Some(now + Duration::from_secs(1))
    });
    t.advance(100 * MS);
    assert_eq!(status(&soon), Status::Expired);
    assert_eq!(status(&later), Status::Queued);
    assert_eq!(t.s.poll_timeout(), Some(t.now + 900 * MS));
    t.advance(900 * MS);
    assert_eq!(status(&later), Status::Expired);
}

#[test]
fn a_message_whose_time_ran_out_between_timeouts_is_never_written() {
    let mut t = Sim::new(rules());
    t.connect();
    let cell = send_with(&mut t, r#"{"Operator":"Quote"}"#, |i, now| {
        i.expires = Some(now + 100 * MS)
    });
    // The driver writes after a socket event, before its timer fired.
    t.now += 200 * MS;
    assert!(t.write().is_empty());
    assert_eq!(status(&cell), Status::Expired);
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn an_at_least_once_message_written_once_is_sent_again_after_its_time_to_live() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    let cell = send_with(&mut t, r#"{"msgId":1,"Operator":"Post"}"#, |i, now| {
        i.id = Some(1);
        i.expires = Some(now + 100 * MS);
    });
    t.write();
    t.frame(Inbound::Close(None));
    // It may have arrived: it is re-sent, not expired, whatever its TTL.
    t.advance(Duration::from_secs(1));
    t.now += Duration::from_secs(1);
    t.s.handle_connected(t.now);
    t.perform();
    assert_eq!(t.write()[0], r#"{"msgId":1,"Operator":"Post"}"#);
    assert_eq!(status(&cell), Status::Written);
}

#[test]
fn a_link_that_ended_keeps_sends_for_close_and_refuses_requests() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, Error::Fatal("banned".into()));
    t.perform();
    let cell = t.send(r#"{"Operator":"A"}"#);
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    assert!(matches!(rx.try_recv(), Ok(Err(Error::Closed { .. }))));
    assert_eq!(status(&cell), Status::Queued);
    let unsent = t.s.finish(t.now);
    assert_eq!(unsent.len(), 1, "handed back by close");
}

#[test]
fn writes_are_counted_once_per_batch_with_their_bytes_and_re_sends() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    send_with(&mut t, r#"{"msgId":1,"Operator":"Post"}"#, |i, _| {
        i.id = Some(1)
    });
    t.send(r#"{"Operator":"A"}"#);
    t.write();
    let s = t.counters.snapshot(t.budget.depth());
    assert_eq!((s.messages_sent, s.bytes_sent, s.resent), (2, 29 + 16, 0));
    t.frame(Inbound::Close(None));
    t.advance(Duration::from_secs(1));
    t.s.handle_connected(t.now);
    t.perform();
    t.write();
    let s = t.counters.snapshot(t.budget.depth());
    assert_eq!(
        (s.messages_sent, s.bytes_sent, s.resent),
        (3, 2 * 29 + 16, 1)
    );
}

#[test]
fn a_message_too_large_to_write_fails_and_leaves_the_journal() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    let big = send_with(&mut t, r#"{"msgId":1,"Operator":"Big"}"#, |i, _| {
        i.id = Some(1)
    });
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    for _ in 0..2 {
        let Some(Transmit::Text(text)) = t.s.poll_transmit(t.now) else {
            panic!("a message to write");
        };
        t.s.transmitted(t.now, text.len(), Written::TooLarge);
    }
    assert_eq!(t.s.end_batch(t.now), None, "nothing was written");
    t.perform();
    assert_eq!(status(&big), Status::Failed(Failure::TooLarge));
    assert_eq!(t.journal_drops, [1], "never to be sent again");
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(Error::InvalidMessage { .. }))
    ));
    let s = t.counters.snapshot(t.budget.depth());
    assert_eq!(
        (s.messages_sent, s.dropped),
        (0, 1),
        "the request is answered, not counted"
    );
    assert_eq!(t.budget.depth(), (0, 0));
}

#[test]
fn a_request_dropped_to_make_room_is_counted_as_dropped() {
    let mut t = Sim::with_outbox(
        Rules {
            overflow: Overflow::DropOldest,
            ..rules()
        },
        1,
    );
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    let mut item = Item::new(r#"{"Operator":"B"}"#.to_owned());
    t.budget.force_reserve(item.weight);
    item.receipt = None;
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    assert!(matches!(rx.try_recv(), Ok(Err(Error::OutboxFull { .. }))));
    assert_eq!(
        t.counters
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
