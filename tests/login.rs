//! Verifies the re-login gate: `on_open` runs after every handshake and its
//! messages go before anything buffered; failures back off, fatal ones end.
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::{Client, CloseReason, Error, Expect, LinkState, SendOptions, Status};
use serde_json::{Value, json};
use support::{Proxy, Seen, Server, ServerOpts, init_log, wait_until};

fn login_server() -> Server {
    Server::start_with(ServerOpts {
        handler: Some(Arc::new(|v: &Value| match v["Operator"].as_str() {
            Some("userLogin") if v["userCode"] == "banned" => vec![json!({"Operator": "BanLogin"})],
            Some("userLogin") => vec![json!({"Operator": "LoginOK", "openId": "o-1"})],
            _ => vec![],
        })),
        ..Default::default()
    })
}

#[test]
fn login_runs_before_any_buffered_message_on_every_reconnect() {
    init_log();
    let server = login_server();
    let proxy = Proxy::start(server.addr);
    let logins = Arc::new(AtomicU32::new(0));
    let l = logins.clone();
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .reconnect_max_delay(Duration::from_millis(20))
        .on_open(move |link| {
            l.fetch_add(1, Ordering::SeqCst);
            let ok = link.request_expect(
                json!({"Operator": "userLogin", "userCode": "c"}),
                Expect::reply("LoginOK")
                    .or_error("LoginError")
                    .or_error("BanLogin"),
                Duration::from_secs(5),
            )?;
            assert_eq!(ok.get("openId"), Some(&json!("o-1")));
            Ok(())
        })
        .connect()
        .unwrap();
    let mut seq = 0;
    for round in 0..5 {
        // Buffer messages while the link is down, then let it come back.
        proxy.blackhole();
        proxy.cut();
        assert!(wait_until(Duration::from_secs(5), || !matches!(
            client.state(),
            LinkState::Open
        )));
        let mut last = None;
        for _ in 0..20 {
            let post = json!({"Operator": "FirePost", "seq": seq});
            last = Some(client.send_with(post, SendOptions::new()).unwrap());
            seq += 1;
        }
        proxy.restore();
        client.reconnect_now();
        // A pong after the last post: the server has read this round's
        // posts, so the next fault cannot swallow them in flight.
        assert_eq!(
            last.unwrap().wait(Duration::from_secs(10)),
            Status::Confirmed,
            "round {round}: {:?}",
            client.stats()
        );
    }
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .messages_sent
        >= 100 + 6));
    client.close(Duration::from_secs(2)).unwrap();
    // On every connection, the first message is the login.
    let mut first: std::collections::HashMap<u64, String> = Default::default();
    let mut posts = 0;
    while let Ok(s) = server.seen.try_recv() {
        if let Seen::Text(conn, v) = s {
            let op = v["Operator"].as_str().unwrap().to_owned();
            if op == "FirePost" {
                posts += 1;
            }
            first.entry(conn).or_insert(op);
        }
    }
    assert_eq!(posts, 100);
    assert!(first.len() >= 6, "{first:?}");
    assert!(first.values().all(|op| op == "userLogin"), "{first:?}");
    assert_eq!(logins.load(Ordering::SeqCst) as usize, first.len());
}

#[test]
fn fatal_login_error_ends_the_link_with_the_reason() {
    init_log();
    let server = login_server();
    let err = Client::builder(server.url())
        .on_open(|link| {
            match link.request_expect(
                json!({"Operator": "userLogin", "userCode": "banned"}),
                Expect::reply("LoginOK").or_error("BanLogin"),
                Duration::from_secs(5),
            ) {
                Ok(_) => Ok(()),
                Err(Error::Remote(m)) if m.operator() == "BanLogin" => Err(Error::fatal("banned")),
                Err(e) => Err(e),
            }
        })
        .connect()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Fatal(why) if why == "banned"),
        "{err:?}"
    );
}

#[test]
fn failing_login_backs_off_and_state_says_so() {
    init_log();
    let server = login_server();
    let states = Arc::new(Mutex::new(Vec::new()));
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::from_millis(10))
        .reconnect_max_delay(Duration::from_millis(40))
        .reconnect_max_attempts(3)
        .on_open(|_| Err(Error::Timeout(Duration::ZERO)))
        .start()
        .unwrap();
    let s = states.clone();
    let _sub = client.on_state(move |st| s.lock().unwrap().push(st.clone()));
    assert!(wait_until(Duration::from_secs(5), || matches!(
        client.state(),
        LinkState::Closed(_)
    )));
    match client.state() {
        LinkState::Closed(CloseReason::GaveUp { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("unexpected {other:?}"),
    }
    // Three failed attempts (each connects, then fails to log in), no fourth.
    assert_eq!(client.stats().connects, 3);
    assert!(
        client
            .send(json!({"Operator": "X"}))
            .unwrap_err()
            .is_closed()
    );
    let _ = client.close(Duration::from_millis(100));
    let states = states.lock().unwrap();
    assert!(
        states
            .iter()
            .any(|s| matches!(s, LinkState::Backoff { .. })),
        "{states:?}"
    );
}

#[test]
fn close_during_a_relogin_lets_the_login_finish_and_flushes_the_outbox() {
    init_log();
    let server = login_server();
    // The second login waits for this gate before it asks.
    let (gate_tx, gate_rx) = crossbeam_channel::unbounded::<()>();
    let logins = Arc::new(AtomicU32::new(0));
    let l = logins.clone();
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .on_open(move |link| {
            if l.fetch_add(1, Ordering::SeqCst) == 1 {
                let _ = gate_rx.recv_timeout(Duration::from_secs(5));
            }
            link.request_expect(
                json!({"Operator": "userLogin", "userCode": "c"}),
                Expect::reply("LoginOK"),
                Duration::from_secs(5),
            )?;
            Ok(())
        })
        .connect()
        .unwrap();
    server.kick_all();
    assert!(wait_until(Duration::from_secs(5), || client.state()
        == LinkState::LoggingIn));
    for n in 0..5 {
        client.send(json!({"Operator": "Bye", "n": n})).unwrap();
    }
    let closer = {
        let c = client.clone();
        std::thread::spawn(move || c.close(Duration::from_secs(5)))
    };
    // Once close refuses new messages, let the login ask. (Messages sent
    // before that are accepted and delivered like the others.)
    let mut late = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        let refused = client.send(json!({"Operator": "Late"})).is_err();
        late += usize::from(!refused);
        refused
    }));
    gate_tx.send(()).unwrap();
    let closed = closer.join().unwrap();
    assert!(closed.is_ok(), "{closed:?}");
    let mut ops = Vec::new();
    while let Ok(seen) = server.seen.try_recv() {
        if let Seen::Text(_, v) = seen {
            ops.push(v["Operator"].as_str().unwrap_or_default().to_owned());
        }
    }
    let mut expected = vec!["userLogin"; 2];
    expected.extend(["Bye"; 5]);
    expected.extend(vec!["Late"; late]);
    assert_eq!(ops, expected);
}
