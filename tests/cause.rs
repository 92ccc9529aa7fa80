//! Verifies that the state says why a link dropped: `LinkState::Backoff`'s
//! `cause` for a server's Close frame, a reset, a dead peer, a failed
//! attempt and a failed `on_open` step, against real servers.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::{Cause, Client, ClientBuilder, Error, LinkState};
use support::{Server, dead_addr, init_log, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// A builder that records every state, retries after a short wait, and
/// counts no link as healthy (so each drop shows its backoff).
fn recorded(url: &str) -> (ClientBuilder, Arc<Mutex<Vec<LinkState>>>) {
    let states = Arc::new(Mutex::new(Vec::new()));
    let s = states.clone();
    let builder = Client::builder(url)
        .reconnect_min_delay(Duration::from_millis(50))
        .reconnect_max_delay(Duration::from_millis(200))
        .reconnect_healthy_after(Duration::from_secs(3600))
        .on_state(move |st| s.lock().unwrap().push(st.clone()));
    (builder, states)
}

/// The cause of the first backoff recorded, waiting for it.
fn first_cause(states: &Mutex<Vec<LinkState>>) -> Cause {
    let find = || {
        states.lock().unwrap().iter().find_map(|s| match s {
            LinkState::Backoff { cause, .. } => Some(cause.clone()),
            _ => None,
        })
    };
    assert!(wait_until(WAIT, || find().is_some()), "no backoff came");
    find().unwrap()
}

#[test]
fn a_close_frame_from_the_server_is_named_with_its_code() {
    init_log();
    let server = Server::start();
    let (builder, states) = recorded(&server.url());
    let client = builder.connect().unwrap();
    server.kick_all();
    assert_eq!(
        first_cause(&states),
        Cause::ServerClosed { code: Some(1000) }
    );
    let _ = client.close(WAIT);
}

#[test]
fn a_reset_connection_is_named_broken() {
    init_log();
    let server = Server::start();
    let (builder, states) = recorded(&server.url());
    let client = builder.connect().unwrap();
    server.reset_all();
    let cause = first_cause(&states);
    assert!(matches!(cause, Cause::Broken(_)), "{cause:?}");
    let _ = client.close(WAIT);
}

#[test]
fn a_silent_server_is_named_a_dead_peer() {
    init_log();
    let server = Server::start();
    let (builder, states) = recorded(&server.url());
    let client = builder
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    server.blackhole_all();
    assert_eq!(first_cause(&states), Cause::DeadPeer);
    let _ = client.close(WAIT);
}

#[test]
fn a_failed_attempt_is_named_with_why() {
    init_log();
    let (builder, states) = recorded(&format!("ws://{}", dead_addr()));
    let client = builder.start().unwrap();
    let cause = first_cause(&states);
    let Cause::ConnectFailed(why) = &cause else {
        panic!("{cause:?}");
    };
    assert!(!why.is_empty());
    assert!(cause.to_string().contains("attempt failed"), "{cause}");
    let _ = client.close(WAIT);
}

#[test]
fn a_failed_on_open_step_is_named_with_why() {
    init_log();
    let server = Server::start();
    let (builder, states) = recorded(&server.url());
    let client = builder
        .on_open(|_| Err(Error::Timeout(Duration::ZERO)))
        .start()
        .unwrap();
    let cause = first_cause(&states);
    assert!(matches!(cause, Cause::OnOpenFailed(_)), "{cause:?}");
    let _ = client.close(WAIT);
}
