//! Verifies subscriptions: several handlers per operator in order, catch-all
//! and invalid-frame handlers, unsubscribe, panics contained, and a handler
//! that itself makes a request.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::{Client, InvalidFrame};
use serde_json::json;
use support::{Server, init_log, wait_until};

#[test]
fn handlers_run_in_registration_order_and_unsubscribe_works() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (a, b, c) = (log.clone(), log.clone(), log.clone());
    let first = client.on("News", move |m| {
        a.lock().unwrap().push(format!("1:{}", m.get("n").unwrap()))
    });
    let _second = client.on("News", move |m| {
        b.lock().unwrap().push(format!("2:{}", m.get("n").unwrap()))
    });
    let _any = client.on_any(move |m| c.lock().unwrap().push(format!("any:{}", m.operator())));
    server.push(json!({"Operator": "News", "n": 1}));
    server.push(json!({"Operator": "Other"}));
    assert!(wait_until(Duration::from_secs(5), || log
        .lock()
        .unwrap()
        .len()
        == 3));
    assert!(first.unsubscribe());
    server.push(json!({"Operator": "News", "n": 2}));
    assert!(wait_until(Duration::from_secs(5), || log
        .lock()
        .unwrap()
        .len()
        == 4));
    assert_eq!(*log.lock().unwrap(), ["1:1", "2:1", "any:Other", "2:2"]);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn invalid_frames_reach_their_handler_and_never_harm_the_link() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let bad = Arc::new(Mutex::new(Vec::new()));
    let b = bad.clone();
    let _sub = client.on_invalid(move |f| b.lock().unwrap().push(f.clone()));
    for v in [
        json!([1, 2]),
        json!({"no": "operator"}),
        json!({"Operator": 7}),
        json!("text"),
    ] {
        server.push(v);
    }
    assert!(wait_until(Duration::from_secs(5), || bad
        .lock()
        .unwrap()
        .len()
        == 4));
    assert!(
        bad.lock()
            .unwrap()
            .iter()
            .all(|f| matches!(f, InvalidFrame::Text { .. }))
    );
    assert_eq!(client.stats().invalid_frames, 4);
    assert_eq!(
        client
            .request(json!({"Operator": "Still"}), Duration::from_secs(5))
            .unwrap()
            .operator(),
        "StillOK"
    );
    assert_eq!(client.stats().connects, 1);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn panicking_handler_is_counted_and_the_link_keeps_working() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let after = Arc::new(Mutex::new(0));
    let a = after.clone();
    let _boom = client.on("Boom", |_| panic!("handler bug"));
    let _after = client.on("After", move |_| *a.lock().unwrap() += 1);
    server.push(json!({"Operator": "Boom"}));
    server.push(json!({"Operator": "After"}));
    assert!(wait_until(Duration::from_secs(5), || *after
        .lock()
        .unwrap()
        == 1));
    assert_eq!(client.stats().handler_panics, 1);
    assert_eq!(
        client
            .request(json!({"Operator": "Still"}), Duration::from_secs(5))
            .unwrap()
            .operator(),
        "StillOK"
    );
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn handler_that_makes_a_request_does_not_deadlock() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let got = Arc::new(Mutex::new(None));
    let (g, weak) = (got.clone(), client.downgrade());
    let _sub = client.on("Invite", move |_| {
        let c = weak.upgrade().expect("client alive");
        let r = c.request(json!({"Operator": "GetInvitation"}), Duration::from_secs(5));
        *g.lock().unwrap() = Some(r.map(|m| m.operator().to_owned()));
    });
    server.push(json!({"Operator": "Invite"}));
    assert!(wait_until(Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .is_some()));
    assert_eq!(
        got.lock().unwrap().take().unwrap().unwrap(),
        "GetInvitationOK"
    );
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn reply_taken_by_a_request_is_not_dispatched_to_subscribers() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let seen = Arc::new(Mutex::new(0));
    let s = seen.clone();
    let _sub = client.on("AskOK", move |_| *s.lock().unwrap() += 1);
    client
        .request(json!({"Operator": "Ask"}), Duration::from_secs(5))
        .unwrap();
    // An unsolicited AskOK does reach the subscriber: proves it is listening.
    server.push(json!({"Operator": "AskOK"}));
    assert!(wait_until(Duration::from_secs(5), || *seen.lock().unwrap() == 1));
    assert_eq!(*seen.lock().unwrap(), 1);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn slow_handler_applies_backpressure_without_a_false_dead_verdict() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .dispatch_capacity(8)
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(100))
        .connect()
        .unwrap();
    let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let _sub = client.on("Flood", move |_| {
        // The first message blocks until the test releases it.
        if *c.lock().unwrap() == 0 {
            let _ = gate_rx.recv_timeout(Duration::from_secs(5));
        }
        *c.lock().unwrap() += 1;
    });
    for n in 0..200 {
        server.push(json!({"Operator": "Flood", "n": n}));
    }
    // While the handler is stuck for longer than interval + timeout, the
    // link must stay up: not reading is our choice, not peer silence.
    std::thread::sleep(Duration::from_millis(500)); // observe, bounded
    assert_eq!(client.stats().connects, 1);
    assert!(
        client.stats().messages_received <= 8 + 8,
        "{:?}",
        client.stats()
    );
    gate_tx.send(()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || *count
        .lock()
        .unwrap()
        == 200));
    assert_eq!(client.stats().connects, 1);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_subscription_made_on_a_running_link_starts_receiving_at_once() {
    init_log();
    // No subscriber at first: no dispatcher thread, nothing queued for one.
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    server.push(json!({"Operator": "News", "n": 0}));
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .messages_received
        >= 1));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let _sub = client.on("News", move |m| {
        g.lock().unwrap().push(m.value()["n"].clone())
    });
    let states = Arc::new(Mutex::new(Vec::new()));
    let st = states.clone();
    client.on_state(move |s| st.lock().unwrap().push(format!("{s:?}")));
    server.push(json!({"Operator": "News", "n": 1}));
    assert!(wait_until(Duration::from_secs(5), || !got
        .lock()
        .unwrap()
        .is_empty()));
    assert_eq!(
        *got.lock().unwrap(),
        [json!(1)],
        "only what came after subscribing"
    );
    server.kick_all();
    assert!(wait_until(Duration::from_secs(5), || states
        .lock()
        .unwrap()
        .iter()
        .any(
            |s| s.starts_with("Backoff") || s.starts_with("Connecting")
        )));
}

/// The server's reaction to `Start`: 20 pushes; `Get` is answered at once.
fn pushing_server() -> Server {
    let ok = support::ok_handler();
    Server::start_with(support::ServerOpts {
        handler: Some(Arc::new(move |v: &serde_json::Value| {
            match v["Operator"].as_str() {
                Some("Start") => (0..20)
                    .map(|i| json!({"Operator": "Push", "i": i}))
                    .collect(),
                Some("userLogin") => {
                    // A burst of pushes ahead of the login's reply.
                    let mut out: Vec<_> = (0..20)
                        .map(|i| json!({"Operator": "Push", "i": i}))
                        .collect();
                    out.push(json!({"Operator": "LoginOK"}));
                    out
                }
                _ => ok(v),
            }
        })),
        ..support::ServerOpts::default()
    })
}

#[test]
fn a_subscriber_request_is_answered_when_pushes_fill_the_dispatcher() {
    init_log();
    let server = pushing_server();
    let client = Client::builder(server.url())
        .dispatch_capacity(4)
        .connect()
        .unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let weak = client.downgrade();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    client.on("Push", move |m| {
        let i = m.get("i").and_then(|i| i.as_u64()).unwrap();
        s.lock().unwrap().push(i);
        if i == 0 {
            // The dispatcher waits here while the 19 other pushes and the
            // reply arrive.
            let c = weak.upgrade().unwrap();
            let r = c.request(json!({"Operator": "Get"}), Duration::from_secs(5));
            let _ = tx.send(r.map(|m| m.operator().to_owned()));
        }
    });
    client.send(json!({"Operator": "Start"})).unwrap();
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(r.unwrap(), "GetOK");
    // Nothing lost or reordered meanwhile.
    assert!(wait_until(Duration::from_secs(5), || seen
        .lock()
        .unwrap()
        .len()
        == 20));
    assert_eq!(*seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

#[test]
fn an_on_open_login_is_answered_behind_a_burst_of_pushes() {
    init_log();
    let server = pushing_server();
    let client = Client::builder(server.url())
        .dispatch_capacity(4)
        .login_timeout(Duration::from_secs(5))
        .on_open(|link| {
            link.request_expect(
                json!({"Operator": "userLogin"}),
                longlink::Expect::reply("LoginOK"),
                Duration::from_secs(5),
            )
            .map(drop)
        })
        .connect()
        .unwrap();
    assert_eq!(client.state(), longlink::LinkState::Open);
    assert_eq!(client.stats().connects, 1);
}
