//! What a pong proves: one confirmation ping at a time, each confirming
//! only what was written before it; what counts as possibly lost when the
//! link dies; the bound on what waits for a pong; the round trip.

use super::*;

fn lost(t: &Sim) -> u64 {
    t.counters
        .possibly_lost
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A request answered by name, with the caller's end of its channel.
fn idempotent_request(t: &mut Sim, timeout: Duration) -> Receiver<Result<Message, Error>> {
    let (tx, rx) = bounded(1);
    let mut item = t.item(r#"{"Operator":"Get"}"#);
    item.reply = Some(Box::new(ReplyTo {
        key: Key::Operator {
            reply: "GetOK".into(),
            errors: Vec::new(),
        },
        deadline: t.now + timeout,
        waiter: waiter(tx),
        idempotent: true,
    }));
    t.s.handle_command(t.now, Command::Send(item));
    t.perform();
    rx
}

#[test]
fn one_confirmation_ping_at_a_time_and_only_for_unconfirmed_frames() {
    let mut t = Sim::new(rules());
    t.connect();
    assert!(t.write().is_empty(), "nothing written: nothing to confirm");
    let a = t.send(r#"{"Operator":"A"}"#);
    assert_eq!(t.write(), [r#"{"Operator":"A"}"#, "ping 1"]);
    let b = t.send(r#"{"Operator":"B"}"#);
    assert_eq!(
        t.write(),
        [r#"{"Operator":"B"}"#],
        "ping 1 is still out: at most one per round trip"
    );
    t.pong(1);
    assert_eq!(status(&a), Status::Confirmed);
    assert_eq!(status(&b), Status::Written, "B left after ping 1");
    assert_eq!(t.write(), ["ping 2"], "B is not confirmed yet");
    t.pong(2);
    assert_eq!(status(&b), Status::Confirmed);
    assert!(t.write().is_empty());
}

#[test]
fn a_pong_to_another_ping_confirms_nothing() {
    let mut t = Sim::new(rules());
    t.connect();
    let a = t.send(r#"{"Operator":"A"}"#);
    t.write();
    t.pong(7);
    t.frame(Inbound::Pong(Vec::new()));
    assert_eq!(status(&a), Status::Written);
    assert!(!t.s.confirmed(), "ping 1 still waits");
    t.pong(1);
    assert_eq!(status(&a), Status::Confirmed);
    assert!(t.s.confirmed());
}

#[test]
fn a_pong_records_the_round_trip_even_when_it_is_instant() {
    let mut t = Sim::new(rules());
    t.connect();
    t.send(r#"{"Operator":"A"}"#);
    t.write();
    assert_eq!(t.counters.snapshot(t.budget.depth()).last_rtt, None);
    t.pong(1);
    assert_eq!(
        t.counters.snapshot(t.budget.depth()).last_rtt,
        Some(Duration::ZERO)
    );
    t.send(r#"{"Operator":"B"}"#);
    t.write();
    t.now += 30 * MS;
    t.pong(2);
    assert_eq!(
        t.counters.snapshot(t.budget.depth()).last_rtt,
        Some(30 * MS)
    );
}

#[test]
fn a_reply_proves_only_its_own_request_arrived() {
    let mut t = Sim::new(rules());
    t.connect();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    t.frame(Inbound::Close(None));
    assert_eq!(lost(&t), 0, "its reply proves the request was read");

    // Confirmed by a pong before its reply came: the reply proves nothing
    // about B, written after the pong.
    let mut t = Sim::new(rules());
    t.connect();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.pong(1);
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    let b = t.send(r#"{"Operator":"B"}"#);
    t.write();
    t.frame(Inbound::Close(None));
    assert_eq!(status(&b), Status::Failed(Failure::PossiblyLost));
    assert_eq!(lost(&t), 1);
}

#[test]
fn an_idempotent_request_written_again_is_not_possibly_lost() {
    let mut t = Sim::new(rules());
    t.connect();
    let rx = idempotent_request(&mut t, Duration::from_secs(30));
    let b = t.send(r#"{"Operator":"B"}"#);
    t.write();
    t.frame(Inbound::Close(None));
    assert_eq!(lost(&t), 1, "B only: the request is written again");
    assert_eq!(status(&b), Status::Failed(Failure::PossiblyLost));
    assert!(rx.try_recv().is_err(), "not answered: it goes again");
    t.advance(Duration::from_secs(1));
    t.s.handle_connected(t.now);
    t.perform();
    assert_eq!(t.write()[0], r#"{"Operator":"Get"}"#);
    assert_eq!(
        t.counters.resent.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Confirmed before the link died: B, written after, is the one lost.
    let mut t = Sim::new(rules());
    t.connect();
    idempotent_request(&mut t, Duration::from_secs(30));
    t.write();
    t.pong(1);
    t.send(r#"{"Operator":"B"}"#);
    t.write();
    t.frame(Inbound::Close(None));
    assert_eq!(lost(&t), 1);
}

#[test]
fn an_answered_request_awaiting_its_pong_counts_against_the_tracking_bound() {
    let mut t = Sim::new(Rules {
        track_cap: 1,
        ..rules()
    });
    t.connect();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    t.send(r#"{"Operator":"B"}"#);
    assert!(t.write().is_empty(), "B waits for the pong");
    t.pong(1);
    assert_eq!(t.write()[0], r#"{"Operator":"B"}"#);
}

#[test]
fn a_peer_that_talks_but_never_answers_pings_is_dead_once_writing_waits() {
    let mut t = Sim::new(Rules {
        track_cap: 1,
        ..rules()
    });
    t.connect();
    t.send(r#"{"Operator":"A"}"#);
    t.write();
    t.send(r#"{"Operator":"B"}"#);
    // Pushes keep the link alive, but nothing can be confirmed: B would
    // wait for ever.
    let dead_at = t.now + Duration::from_secs(35);
    while t.now + Duration::from_secs(5) < dead_at {
        t.advance(Duration::from_secs(5));
        t.text(r#"{"Operator":"News"}"#);
        t.write();
    }
    assert_eq!(t.disconnects, 0);
    assert!(t.s.poll_timeout().is_some_and(|d| d <= dead_at));
    t.advance(dead_at - t.now - MS);
    assert_eq!(t.disconnects, 0);
    t.advance(MS);
    assert_eq!(t.disconnects, 1, "no pong within interval + timeout");
}

#[test]
fn a_peer_that_never_answers_pings_is_fine_while_writing_need_not_wait() {
    let mut t = Sim::new(rules());
    t.connect();
    t.send(r#"{"Operator":"A"}"#);
    t.write();
    for _ in 0..12 {
        t.advance(Duration::from_secs(5));
        t.text(r#"{"Operator":"News"}"#);
        t.write();
    }
    assert_eq!(t.disconnects, 0, "a pong may lag far behind data");
}

#[test]
fn an_empty_batch_is_no_traffic_and_the_probe_still_goes_on_our_silence() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(20));
    t.text(r#"{"Operator":"News"}"#);
    assert!(t.write().is_empty());
    t.advance(Duration::from_secs(5));
    assert_eq!(
        t.write(),
        ["ping 1"],
        "25 s without a frame from us: middleboxes cut such links"
    );
}

#[test]
fn replies_confirmed_by_a_pong_are_no_longer_counted_as_delivered_on_their_own() {
    let mut t = Sim::new(rules());
    t.connect();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(rx.try_recv().unwrap().is_ok());
    t.pong(1);
    // Confirmed by the pong: its reply proves nothing about B.
    t.send(r#"{"Operator":"B"}"#);
    t.write();
    t.frame(Inbound::Close(None));
    assert_eq!(lost(&t), 1);

    // Answered after the ping's frame: the pong does not cover it, its
    // reply still proves it arrived.
    let mut t = Sim::new(rules());
    t.connect();
    let first = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    assert_eq!(t.write().len(), 2, "the request and ping 1");
    let second = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK"}"#);
    t.text(r#"{"Operator":"GetOK"}"#);
    assert!(first.try_recv().unwrap().is_ok() && second.try_recv().unwrap().is_ok());
    t.pong(1);
    t.frame(Inbound::Close(None));
    assert_eq!(lost(&t), 0, "the second request's reply proves it arrived");
}

#[test]
fn our_own_writes_postpone_the_probe_while_the_peer_talks() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(20));
    t.text(r#"{"Operator":"News"}"#);
    t.send(r#"{"Operator":"A"}"#);
    t.write();
    t.pong(1);
    t.advance(Duration::from_secs(5));
    assert!(t.write().is_empty(), "traffic both ways 5 s ago");
    t.advance(Duration::from_secs(20));
    assert_eq!(t.write(), ["ping 2"]);
}
