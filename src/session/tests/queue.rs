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
    let mut t = Sim::new(Rules {
        acks: Some(("Ack".into(), "msgId".into())),
        ..rules()
    });
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
    let mut t = Sim::new(Rules {
        overflow: Overflow::DropOldest,
        ..rules()
    });
    t.budget = Arc::new(Budget::new(2, 1 << 20));
    t.s = Session::new(
        Arc::new(Rules {
            overflow: Overflow::DropOldest,
            ..rules()
        }),
        t.budget.clone(),
        t.counters.clone(),
        Vec::new(),
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
