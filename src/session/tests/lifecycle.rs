//! The lifecycle in memory: each phase's deadline is the next timeout and
//! acts exactly when it comes; `reconnect_now`, a frozen process and a
//! paused reader ask the peer instead of waiting or failing.

use super::*;

fn refused() -> Error {
    Error::Connect {
        context: "test".into(),
        source: "refused".into(),
    }
}

#[test]
fn an_attempt_that_never_answers_is_given_up_at_its_deadline() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    // Connect timeout 10 s, plus the grace for DNS.
    let until = t.now + Duration::from_secs(10) + Duration::from_millis(500);
    assert_eq!(t.s.poll_timeout(), Some(until));
    t.advance(until - t.now - MS);
    assert_eq!(
        t.state(),
        LinkState::Connecting {
            attempt: 0,
            endpoint: 0
        }
    );
    t.advance(MS);
    let LinkState::Backoff {
        attempt: 1, delay, ..
    } = t.state()
    else {
        panic!("{:?}", t.state());
    };
    assert_eq!(
        t.counters
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(t.s.poll_timeout(), Some(t.now + delay), "the retry's time");
}

#[test]
fn a_backoff_wait_ends_exactly_at_its_deadline_with_a_new_attempt() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, refused());
    t.perform();
    let LinkState::Backoff { delay, .. } = t.state() else {
        panic!("{:?}", t.state());
    };
    assert_eq!(t.s.poll_timeout(), Some(t.now + delay));
    t.advance(delay - MS);
    assert_eq!(t.connects.len(), 1, "still waiting");
    t.advance(MS);
    assert_eq!(t.connects.len(), 2);
    assert_eq!(
        t.state(),
        LinkState::Connecting {
            attempt: 1,
            endpoint: 0
        }
    );
}

#[test]
fn reconnect_now_skips_the_backoff_wait() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    t.s.handle_connect_failed(t.now, refused());
    t.perform();
    assert!(matches!(t.state(), LinkState::Backoff { .. }));
    t.s.handle_command(t.now, Command::ReconnectNow);
    t.advance(Duration::ZERO);
    assert_eq!(t.connects.len(), 2, "dialed without waiting");
}

#[test]
fn an_on_open_step_that_never_reports_fails_the_attempt_at_its_deadline() {
    let mut t = Sim::new(Rules {
        on_open: true,
        login_timeout: Duration::from_secs(3),
        ..rules()
    });
    t.connect();
    assert_eq!(t.state(), LinkState::LoggingIn);
    let deadline = t.now + Duration::from_secs(3);
    assert_eq!(t.s.poll_timeout(), Some(deadline), "before the heartbeat");
    t.advance(deadline - t.now - MS);
    assert_eq!(t.state(), LinkState::LoggingIn);
    t.advance(MS);
    assert_eq!(t.disconnects, 1);
    assert!(matches!(t.state(), LinkState::Backoff { attempt: 1, .. }));
}

#[test]
fn the_app_heartbeat_waits_for_open_while_the_on_open_step_runs() {
    let heart = r#"{"Operator":"Heart"}"#;
    let mut t = Sim::new(Rules {
        on_open: true,
        login_timeout: Duration::from_secs(60),
        app_heartbeat: Some((Utf8Bytes::from_static(heart), "HeartOK".into())),
        ..rules()
    });
    let conn = t.connect();
    t.advance(Duration::from_secs(25));
    assert_eq!(t.write(), ["ping 1"], "only the ping proves liveness");
    t.text(r#"{"Operator":"HeartOK"}"#);
    t.hook_done(conn, Ok(()));
    t.advance(Duration::from_secs(25));
    assert_eq!(t.write(), ["ping 2", heart], "open: both");
    assert!(
        t.dispatched.is_empty(),
        "the heartbeat's reply is not a push"
    );
}

#[test]
fn reconnect_now_on_an_open_link_probes_the_peer_at_once() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(1));
    assert!(t.write().is_empty());
    t.s.handle_command(t.now, Command::ReconnectNow);
    t.advance(Duration::ZERO);
    assert_eq!(t.write(), ["ping 1"]);
    assert_eq!(t.connects.len(), 1, "an open link is kept");
}

#[test]
fn a_frozen_process_probes_the_peer_instead_of_declaring_it_dead() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(25));
    assert_eq!(t.write(), ["ping 1"]);
    // Frozen for an hour: the probe's timeout passed while nobody looked.
    t.now += Duration::from_secs(3600);
    t.s.handle_resumed(t.now);
    t.advance(Duration::ZERO);
    assert_eq!(t.disconnects, 0, "no verdict on a silence nobody watched");
    assert_eq!(t.write(), ["ping 2"], "asked again at once");
    t.advance(Duration::from_secs(10));
    assert_eq!(t.disconnects, 1, "no answer to the new probe: dead");
}

#[test]
fn silence_while_the_driver_does_not_read_is_no_dead_verdict() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(25));
    assert_eq!(t.write(), ["ping 1"]);
    t.advance(Duration::from_secs(5));
    // The dispatcher is full: the driver stops reading, the pong may
    // wait unread in the socket.
    t.s.handle_reading(t.now, false);
    assert_eq!(
        t.s.poll_timeout(),
        None,
        "no liveness deadline while paused"
    );
    t.advance(Duration::from_secs(60));
    assert_eq!(t.disconnects, 0);
    t.s.handle_reading(t.now, true);
    t.advance(Duration::ZERO);
    assert_eq!(t.disconnects, 0, "the silence starts when reading resumes");
    assert_eq!(t.write(), ["ping 2"], "we were silent: a probe");
    t.pong(2);
    t.advance(Duration::from_secs(10));
    assert_eq!(t.disconnects, 0);
}

#[test]
fn a_resume_without_a_pause_hides_no_silence() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(25));
    assert_eq!(t.write(), ["ping 1"]);
    t.advance(Duration::from_secs(9));
    // Already reading: nothing was left unread, the peer is still silent.
    t.s.handle_reading(t.now, true);
    t.advance(Duration::from_secs(1));
    assert_eq!(t.disconnects, 1, "dead at interval + timeout as ever");
}

/// The on_open step of connection `conn` reports.
fn hook_done(t: &mut Sim, conn: u64, result: Result<(), Error>, fatal: bool) {
    t.s.handle_command(
        t.now,
        Command::HookDone {
            conn,
            result,
            fatal,
        },
    );
    t.perform();
}

/// A link with an on_open step whose first connection died during it.
fn hook_outlived_its_connection() -> (Sim, u64) {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    t.frame(Inbound::Close(Some(1000)));
    assert!(matches!(t.state(), LinkState::Backoff { .. }));
    (t, conn)
}

#[test]
fn a_fatal_verdict_ends_the_link_though_its_connection_died_meanwhile() {
    let (mut t, conn) = hook_outlived_its_connection();
    hook_done(&mut t, conn, Err(Error::Fatal("banned".into())), false);
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::Fatal(r)) if r == "banned"
    ));
    assert!(t.connects.len() == 1, "no retry after a ban");

    // An `or_fatal` reply says so with any error.
    let (mut t, conn) = hook_outlived_its_connection();
    hook_done(&mut t, conn, Err(Error::ConnectionLost), true);
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::Fatal(_))
    ));
}

#[test]
fn a_plain_failure_of_a_dead_connections_on_open_step_changes_nothing() {
    let (mut t, conn) = hook_outlived_its_connection();
    let before = t.state();
    hook_done(&mut t, conn, Err(Error::ConnectionLost), false);
    hook_done(&mut t, conn, Ok(()), false);
    assert_eq!(t.state(), before, "the retry goes on");
}

#[test]
fn a_fatal_verdict_after_a_later_on_open_step_succeeded_is_ignored() {
    let (mut t, first) = hook_outlived_its_connection();
    t.advance(Duration::from_secs(1));
    let second = t.connect();
    hook_done(&mut t, second, Ok(()), false);
    assert_eq!(t.state(), LinkState::Open);
    hook_done(&mut t, first, Err(Error::Fatal("banned".into())), false);
    assert_eq!(t.state(), LinkState::Open, "a later login succeeded");
}

#[test]
fn a_failed_on_open_step_retries_unless_its_failure_is_fatal() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    hook_done(&mut t, conn, Err(Error::ConnectionLost), false);
    assert_eq!(t.disconnects, 1);
    assert!(matches!(t.state(), LinkState::Backoff { attempt: 1, .. }));

    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    hook_done(&mut t, conn, Err(Error::ConnectionLost), true);
    assert_eq!(t.disconnects, 1);
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::Fatal(_))
    ));
}

#[test]
fn a_healthy_link_that_drops_dials_again_without_waiting() {
    let mut t = Sim::new(rules());
    t.connect();
    t.advance(Duration::from_secs(6));
    t.states.clear();
    t.s.handle_lost(t.now, "reset".into());
    t.perform();
    assert_eq!(t.disconnects, 1);
    assert!(t.s.wants_connect(), "no timer to wait for");
    assert_eq!(
        t.states,
        [LinkState::Connecting {
            attempt: 0,
            endpoint: 0
        }]
    );
}

#[test]
fn a_lost_connection_reported_twice_counts_once() {
    let mut t = Sim::new(rules());
    t.connect();
    t.s.handle_lost(t.now, "reset".into());
    t.perform();
    let after = t.state();
    t.s.handle_lost(t.now, "reset again".into());
    t.perform();
    assert_eq!(t.disconnects, 1);
    assert_eq!(t.state(), after, "no second failure counted");
}
