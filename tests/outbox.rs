//! Verifies the outbox bounds and policies, and that `close` drains what is
//! queued and hands back what could not leave.
mod support;

use std::time::Duration;

use longlink::{Client, Error, Overflow};
use serde_json::json;
use support::{Proxy, Server, init_log, wait_until};

fn offline_client(policy: Overflow) -> (Server, Proxy, Client) {
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    proxy.blackhole();
    let client = Client::builder(proxy.url())
        .connect_timeout(Duration::from_millis(200))
        .reconnect_min_delay(Duration::from_millis(10))
        .reconnect_max_delay(Duration::from_millis(20))
        .outbox_capacity(3)
        .outbox_overflow(policy)
        .start()
        .unwrap();
    (server, proxy, client)
}

#[test]
fn full_outbox_hands_the_message_back() {
    init_log();
    let (_server, _proxy, client) = offline_client(Overflow::Reject);
    for n in 0..3 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    let err = client
        .send(json!({"Operator": "Post", "n": 3}))
        .unwrap_err();
    assert!(err.is_full(), "{err:?}");
    assert_eq!(
        err.into_message(),
        Some(json!({"Operator": "Post", "n": 3}))
    );
    assert_eq!(client.stats().outbox_depth, 3);
    let _ = client.close(Duration::from_millis(50));
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts() {
    init_log();
    let (server, proxy, client) = offline_client(Overflow::DropOldest);
    for n in 0..10 {
        client
            .send(json!({"Operator": "FirePost", "n": n}))
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .dropped
        == 7));
    proxy.restore();
    let got: Vec<_> = (0..3)
        .map(|_| server.next_text(Duration::from_secs(10)).unwrap()["n"].clone())
        .collect();
    assert_eq!(got, [json!(7), json!(8), json!(9)]);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn block_policy_waits_for_room_then_gives_up() {
    init_log();
    let (_server, _proxy, client) = offline_client(Overflow::Block(Duration::from_millis(100)));
    for n in 0..3 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    let started = std::time::Instant::now();
    let err = client
        .send(json!({"Operator": "Post", "n": 3}))
        .unwrap_err();
    assert!(err.is_full());
    assert!(started.elapsed() >= Duration::from_millis(100));
    let _ = client.close(Duration::from_millis(50));
}

#[test]
fn close_drains_the_outbox_when_open() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    for n in 0..2000 {
        client
            .send(json!({"Operator": "FirePost", "n": n}))
            .unwrap();
    }
    client.close(Duration::from_secs(5)).unwrap();
    let mut n = 0;
    while let Some(v) = server.next_text(Duration::from_millis(500)) {
        assert_eq!(v["n"], json!(n));
        n += 1;
    }
    assert_eq!(n, 2000);
    assert_eq!(
        client.stats().possibly_lost,
        0,
        "the server's Close reply confirms everything"
    );
    assert!(
        client
            .send(json!({"Operator": "Late"}))
            .unwrap_err()
            .is_closed()
    );
    assert!(
        client
            .close(Duration::from_secs(1))
            .unwrap_err()
            .is_closed()
    );
}

#[test]
fn close_while_offline_reports_unsent_in_order() {
    init_log();
    let (_server, _proxy, client) = offline_client(Overflow::Reject);
    for n in 0..3 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    match client.close(Duration::from_millis(100)) {
        Err(Error::Unsent { messages }) => {
            let ns: Vec<_> = messages.iter().map(|m| m["n"].clone()).collect();
            assert_eq!(ns, [json!(0), json!(1), json!(2)]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn dropping_the_last_clone_closes_and_joins() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let other = client.clone();
    drop(client);
    other.send(json!({"Operator": "FireLast"})).unwrap();
    drop(other);
    assert_eq!(
        server.next_text(Duration::from_secs(5)).unwrap()["Operator"],
        "FireLast"
    );
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
}

#[test]
fn bad_messages_are_refused_with_a_clear_error() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let err = client.send(json!([1])).unwrap_err();
    assert!(matches!(err, Error::InvalidMessage { .. }), "{err:?}");
    let err = client.send(json!({"op": "x"})).unwrap_err();
    assert!(err.to_string().contains("Operator"), "{err}");
    let err = client
        .request(json!({"Operator": 1}), Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMessage { .. }), "{err:?}");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn drop_oldest_under_at_least_once_drops_the_oldest_unacknowledged_message() {
    use longlink::{Failure, SendOptions, Status};
    use std::sync::{Arc, Mutex};
    init_log();
    // A server that deduplicates but does not acknowledge (yet).
    let dedup = Arc::new(Mutex::new(support::Dedup::default()));
    let server = Server::start_with(support::ServerOpts {
        handler: Some(support::dedup_handler(dedup.clone(), support::ok_handler())),
        ..support::ServerOpts::default()
    });
    let client = Client::builder(server.url())
        .at_least_once(true)
        .outbox_capacity(3)
        .outbox_overflow(Overflow::DropOldest)
        .connect()
        .unwrap();
    let old: Vec<_> = (0..3)
        .map(|n| {
            client
                .send_with(json!({"Operator": "Post", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || dedup
        .lock()
        .unwrap()
        .accepted
        .len()
        == 3));
    let new = client
        .send_with(json!({"Operator": "Post", "n": 3}), SendOptions::new())
        .unwrap();
    assert_eq!(
        old[0].wait(Duration::from_secs(5)),
        Status::Failed(Failure::Dropped)
    );
    assert_ne!(new.status(), Status::Failed(Failure::Dropped));
    // It had been written: it may have arrived (here it did), so it is
    // counted as possibly lost, not as dropped (never written).
    let s = client.stats();
    assert_eq!((s.dropped, s.possibly_lost), (0, 1), "{s:?}");
    assert_eq!(s.outbox_depth, 3);
    // The newest is written and, once acknowledged, done.
    assert!(wait_until(Duration::from_secs(5), || dedup
        .lock()
        .unwrap()
        .accepted
        .len()
        == 4));
    dedup.lock().unwrap().ack = true;
    client.send(json!({"Operator": "Post", "n": 4})).unwrap();
    assert_eq!(new.wait(Duration::from_secs(5)), Status::Acknowledged);
    assert_eq!(old[1].status(), Status::Failed(Failure::Dropped));
    assert_eq!(old[2].status(), Status::Acknowledged);
}
