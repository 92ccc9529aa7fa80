//! Endpoints: an attempt that fails moves to the next one, round the list;
//! a link that was open retries its own first.

use super::*;

/// Run to the next attempt; where it goes, as the state says it.
fn attempt_endpoint(t: &mut Sim) -> usize {
    t.advance(Duration::from_secs(120));
    let LinkState::Connecting { endpoint, .. } = t.state() else {
        panic!("{:?}", t.state());
    };
    assert_eq!(
        endpoint,
        t.s.endpoint(),
        "the state names the attempt's endpoint"
    );
    endpoint
}

fn refused() -> Error {
    Error::Connect {
        context: "test".into(),
        source: "refused".into(),
    }
}

#[test]
fn failed_attempts_go_round_the_endpoints_and_a_working_one_is_kept() {
    let mut t = Sim::new(Rules {
        endpoints: 3,
        ..rules()
    });
    let mut tried = vec![attempt_endpoint(&mut t)];
    for _ in 0..3 {
        t.s.handle_connect_failed(t.now, refused());
        t.perform();
        tried.push(attempt_endpoint(&mut t));
    }
    assert_eq!(tried, [0, 1, 2, 0], "round the list");
    // Endpoint 0 works, then drops: it is tried again first.
    t.s.handle_connected(t.now);
    t.perform();
    t.advance(Duration::from_secs(10));
    t.frame(Inbound::Close(Some(1001)));
    assert_eq!(attempt_endpoint(&mut t), 0);
    // A failed on_open step is a failed attempt.
    let mut t = Sim::new(Rules {
        endpoints: 2,
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    t.hook_done(conn, Err(Error::Timeout(Duration::ZERO)));
    assert_eq!(attempt_endpoint(&mut t), 1);
}

/// The running attempt fails with `e`; the state after it.
fn fail_attempt(t: &mut Sim, e: Error) -> LinkState {
    t.s.handle_connect_failed(t.now, e);
    t.perform();
    t.state()
}

#[test]
fn an_endpoint_that_refuses_for_good_is_passed_over_until_every_one_has() {
    let rejected = || Error::Rejected { status: 404 };
    let backoff = |s: LinkState| matches!(s, LinkState::Backoff { .. });
    let mut t = Sim::new(Rules {
        endpoints: 2,
        ..rules()
    });
    assert_eq!(attempt_endpoint(&mut t), 0);
    assert!(backoff(fail_attempt(&mut t, rejected())));
    // The next works: the link lives on it, and the count starts afresh.
    assert_eq!(attempt_endpoint(&mut t), 1);
    t.s.handle_connected(t.now);
    t.perform();
    assert_eq!(t.state(), LinkState::Open);
    t.frame(Inbound::Close(Some(1001)));
    assert_eq!(attempt_endpoint(&mut t), 1);
    assert!(backoff(fail_attempt(&mut t, rejected())));
    // A failure for now between two refusals: no end.
    assert_eq!(attempt_endpoint(&mut t), 0);
    assert!(backoff(fail_attempt(&mut t, refused())));
    assert_eq!(attempt_endpoint(&mut t), 1);
    assert!(backoff(fail_attempt(&mut t, rejected())));
    // Each endpoint in turn refused for good: the link ends.
    assert_eq!(attempt_endpoint(&mut t), 0);
    let end = fail_attempt(&mut t, rejected());
    assert!(
        matches!(end, LinkState::Closed(CloseReason::Fatal(ref why)) if why.contains("404")),
        "{end:?}"
    );
    // One endpoint: a refusal ends the link at once, as before.
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    let end = fail_attempt(&mut t, rejected());
    assert!(matches!(end, LinkState::Closed(_)), "{end:?}");
}
