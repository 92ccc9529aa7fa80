//! `pause` and `resume` in memory: what a pause ends, that nothing happens
//! while paused, what is kept, and that a resume connects at once.

use super::*;

#[test]
fn a_pause_closes_the_connection_and_nothing_happens_until_resume() {
    let mut t = Sim::new(Rules {
        heartbeat_interval: Duration::from_secs(1),
        ..rules()
    });
    t.connect();
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.go_aways, [1001], "a Close frame, going away");
    assert_eq!(t.disconnects, 1);
    assert_eq!(t.state(), LinkState::Paused);
    // No heartbeat, no attempt, no timer: the driver sleeps until told.
    assert_eq!(t.s.poll_timeout(), None);
    assert!(!t.s.wants_connect() && !t.s.wants_write());
    t.advance(Duration::from_secs(3600));
    assert_eq!(t.connects.len(), 1);
    // Sends queue; volatile ones are refused as on any link that is not open.
    let r = t.send(r#"{"Operator":"A"}"#);
    assert_eq!(status(&r), Status::Queued);
    assert_eq!(t.s.poll_timeout(), None);
    // Pausing twice is pausing once.
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.go_aways.len(), 1);
    // Resume: connect at once, then flush.
    t.s.handle_command(t.now, Command::Resume);
    t.perform();
    assert!(t.s.wants_connect());
    t.connect();
    assert_eq!(t.connects.len(), 2, "no backoff wait");
    assert_eq!(t.connects[1], t.now);
    assert_eq!(t.state(), LinkState::Open);
    assert_eq!(texts(t.write()), [r#"{"Operator":"A"}"#]);
    // Resuming an open link changes nothing.
    t.s.handle_command(t.now, Command::Resume);
    t.perform();
    assert_eq!(t.state(), LinkState::Open);
    assert!(!t.s.wants_connect());
}

#[test]
fn a_pause_during_an_attempt_or_the_on_open_step_ends_it() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    // During the attempt: abandoned, and a late answer cannot come.
    t.advance(Duration::ZERO);
    assert_eq!(t.connects.len(), 1);
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.state(), LinkState::Paused);
    assert!(t.go_aways.is_empty(), "no connection to close");
    // Its deadline passes: nothing (the attempt was given up).
    t.advance(Duration::from_secs(60));
    assert_eq!(t.connects.len(), 1);
    assert_eq!(t.state(), LinkState::Paused);
    // During the on_open step: the connection goes, the step's verdict is stale.
    t.s.handle_command(t.now, Command::Resume);
    let conn = t.connect();
    assert_eq!(t.state(), LinkState::LoggingIn);
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.go_aways, [1001]);
    t.hook_done(conn, Ok(()));
    assert_eq!(t.state(), LinkState::Paused, "a stale step opens nothing");
}

#[test]
fn at_least_once_keeps_its_unacknowledged_messages_across_a_pause() {
    let mut t = Sim::new(acked_rules());
    t.connect();
    for (id, text) in [(1, r#"{"msgId":1}"#), (2, r#"{"msgId":2}"#)] {
        let mut item = t.item(text);
        item.id = Some(id);
        t.s.handle_command(t.now, Command::Send(item));
    }
    assert_eq!(texts(t.write()).len(), 2);
    t.text(r#"{"Operator":"Ack","msgId":1}"#);
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.budget.depth().0, 1, "the unacknowledged one is kept");
    t.s.handle_command(t.now, Command::Resume);
    t.connect();
    assert_eq!(
        texts(t.write()),
        [r#"{"msgId":2}"#],
        "written again after the pause"
    );
}

#[test]
fn close_while_paused_hands_back_what_is_queued() {
    let mut t = Sim::new(rules());
    t.connect();
    t.s.handle_command(t.now, Command::Pause);
    t.send(r#"{"Operator":"A"}"#);
    t.s.handle_close(t.now + Duration::from_secs(1));
    assert!(
        t.s.close_ready(t.now, true),
        "nothing can leave while paused"
    );
    let unsent = t.s.finish(t.now);
    t.perform();
    assert_eq!(unsent.len(), 1);
    assert_eq!(t.state(), LinkState::Closed(CloseReason::Requested));
}

#[test]
fn a_link_that_ended_for_good_stays_ended_through_pause_and_resume() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, Error::Rejected { status: 403 });
    t.perform();
    let ended = t.state();
    assert!(matches!(ended, LinkState::Closed(_)), "{ended:?}");
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    assert_eq!(t.state(), ended, "a pause does not revive it");
    t.s.handle_command(t.now, Command::Resume);
    t.advance(Duration::from_secs(60));
    assert_eq!(t.state(), ended);
    assert_eq!(t.connects.len(), 1, "no attempt after the end");
}

#[test]
fn a_resume_starts_the_backoff_afresh() {
    let mut t = Sim::new(rules());
    let refused = || Error::Connect {
        context: "test".into(),
        source: "refused".into(),
    };
    for _ in 0..3 {
        t.advance(Duration::from_secs(120));
        t.s.handle_connect_failed(t.now, refused());
        t.perform();
    }
    assert!(matches!(t.state(), LinkState::Backoff { attempt: 3, .. }));
    t.s.handle_command(t.now, Command::Pause);
    t.s.handle_command(t.now, Command::Resume);
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, refused());
    t.perform();
    assert!(
        matches!(t.state(), LinkState::Backoff { attempt: 1, .. }),
        "{:?}",
        t.state()
    );
}

#[test]
fn a_request_that_times_out_while_paused_gives_its_room_back_at_its_deadline() {
    let mut t = Sim::new(rules());
    t.connect();
    t.s.handle_command(t.now, Command::Pause);
    t.perform();
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", 100 * MS);
    assert_eq!(t.s.held().0, 1);
    // Its deadline is the only timer: the driver wakes once for it.
    assert_eq!(t.s.poll_timeout(), Some(t.now + 100 * MS));
    t.advance(100 * MS);
    assert_eq!(t.s.held(), (0, 0), "no room held for a caller that gave up");
    assert_eq!(t.budget.depth(), (0, 0));
    assert_eq!(t.s.poll_timeout(), None, "and asleep again");
    // Let go without an answer, uncounted: its caller sees its own timeout.
    assert!(matches!(
        rx.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    ));
    assert_eq!(
        t.counters
            .expired
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Nothing of it is written after a resume.
    t.s.handle_command(t.now, Command::Resume);
    t.perform();
    t.connect();
    assert!(t.write().iter().all(|f| !f.contains("Get")));
}
