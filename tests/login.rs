//! Verifies the re-login gate: `on_open` runs after every handshake and its
//! messages go before anything buffered; failures back off, fatal ones end.
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::{Client, CloseReason, Error, Expect, LinkState, SendOptions, Status};
use serde_json::{Value, json};
use support::{Proxy, Seen, Server, ServerOpts, init_log, raw_server, wait_until};

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

/// The quick start's login: a plain `?`, `BanLogin` fatal.
fn login_or_fatal(link: &longlink::Link) -> Result<(), Error> {
    link.request_expect(
        json!({"Operator": "userLogin", "userCode": "banned"}),
        Expect::reply("LoginOK").or_fatal("BanLogin"),
        Duration::from_secs(5),
    )?;
    Ok(())
}

#[test]
fn an_or_fatal_reply_in_the_hook_ends_the_link_at_once_and_connect_says_so() {
    init_log();
    let server = login_server();
    let t0 = Instant::now();
    let err = Client::builder(server.url())
        .on_open(login_or_fatal)
        .connect()
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("the on_open step failed"), "{err}");
    assert_eq!(err.remote().map(|m| m.operator()), Some("BanLogin"));
    // In the background: no retry, the state says why.
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .on_open(login_or_fatal)
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || matches!(
        client.state(),
        LinkState::Closed(_)
    )));
    match client.state() {
        LinkState::Closed(CloseReason::Fatal(why)) => {
            assert!(
                why.contains("on_open step failed") && why.contains("BanLogin"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.stats().connects, 1);
    let _ = client.close(Duration::from_secs(1));
}

#[test]
fn or_fatal_outside_the_hook_is_an_error_reply_and_the_link_goes_on() {
    init_log();
    let server = Server::start_with(ServerOpts {
        handler: Some(Arc::new(|v: &Value| match v["Operator"].as_str() {
            Some("Get") => vec![json!({"Operator": "GetBan", "reason": "not yours"})],
            Some(op) => vec![json!({"Operator": format!("{op}OK")})],
            None => vec![],
        })),
        ..Default::default()
    });
    let client = Client::builder(server.url()).connect().unwrap();
    let err = client
        .request_expect(
            json!({"Operator": "Get"}),
            Expect::reply("GetOK").or_fatal("GetBan"),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert_eq!(err.remote().map(|m| m.operator()), Some("GetBan"));
    assert_eq!(client.state(), LinkState::Open);
    let ok = client
        .request(json!({"Operator": "Other"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(ok.operator(), "OtherOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_login_that_times_out_says_the_on_open_step_failed() {
    init_log();
    let server = login_server();
    let err = Client::builder(server.url())
        .connect_timeout(Duration::from_millis(500))
        .reconnect_min_delay(Duration::from_secs(30))
        .on_open(|link| {
            // The login server answers nothing but userLogin.
            link.request(json!({"Operator": "Hello"}), Duration::from_millis(50))?;
            Ok(())
        })
        .connect()
        .unwrap_err();
    assert!(err.to_string().contains("the on_open step failed"), "{err}");
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.starts_with("no reply within")),
        "{err}: {cause:?}"
    );
}

#[test]
fn a_fatal_login_answer_followed_by_a_close_still_ends_the_link_at_once() {
    init_log();
    // The server refuses the login and hangs up at once: the reply and the
    // Close frame arrive together, before the hook has returned.
    let (addr, count) = raw_server(|_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        if ws.read().is_ok() {
            let ban = json!({"Operator": "BanLogin", "reason": "banned"});
            let _ = ws.write(tungstenite::Message::text(ban.to_string()));
            let _ = ws.close(None);
            let _ = ws.flush();
            while ws.read().is_ok() {}
        }
    });
    for (n, hook) in [
        login_or_fatal as fn(&longlink::Link) -> Result<(), Error>,
        |link| match login_or_fatal(link) {
            Err(e) if e.remote().is_some() => Err(Error::fatal("banned")),
            r => r,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let t0 = Instant::now();
        let err = Client::builder(format!("ws://{addr}"))
            .reconnect_min_delay(Duration::from_millis(5))
            .reconnect_max_delay(Duration::from_millis(10))
            .on_open(hook)
            .connect()
            .unwrap_err();
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "hook {n}: {took:?} {err:?}");
        assert!(
            err.remote().is_some() || matches!(&err, Error::Fatal(w) if w == "banned"),
            "hook {n}: {err:?}"
        );
    }
    // A banned user is not retried (a retry may have begun before the
    // verdict arrived; its login is refused the same way).
    let n = count.load(Ordering::SeqCst);
    assert!((2..=4).contains(&n), "{n} connections");
}

#[test]
fn close_after_a_fatal_end_says_closed_or_hands_back_what_was_queued() {
    init_log();
    let server = login_server();
    let ended = |queued: bool| {
        let client = Client::builder(server.url())
            .on_open(login_or_fatal)
            .start()
            .unwrap();
        if queued {
            client.send(json!({"Operator": "Post"})).unwrap();
        }
        assert!(wait_until(Duration::from_secs(5), || matches!(
            client.state(),
            LinkState::Closed(CloseReason::Fatal(_))
        )));
        client.close(Duration::from_secs(1))
    };
    let err = ended(false).unwrap_err();
    assert!(matches!(err, Error::Closed { message: None }), "{err:?}");
    match ended(true) {
        Err(Error::Unsent { messages }) => assert_eq!(messages, vec![json!({"Operator": "Post"})]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_app_heartbeat_waits_for_open_while_the_on_open_step_runs() {
    init_log();
    // A peer that reports every text operator and every ping, in order.
    let (tx, seen) = crossbeam_channel::unbounded::<String>();
    let (addr, _) = support::raw_server(move |_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        while let Ok(m) = ws.read() {
            let what = match m {
                tungstenite::Message::Ping(_) => "ping".to_owned(),
                tungstenite::Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    v["Operator"].as_str().unwrap_or_default().to_owned()
                }
                _ => continue,
            };
            let _ = tx.send(what);
        }
    });
    let (go, gate) = crossbeam_channel::bounded::<()>(1);
    let client = Client::builder(format!("ws://{addr}"))
        .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
        .login_timeout(Duration::from_secs(20))
        .on_open(move |link| {
            link.send(json!({"Operator": "FireLogin"}))?;
            let _ = gate.recv_timeout(Duration::from_secs(10));
            Ok(())
        })
        .start()
        .unwrap();
    let next = || seen.recv_timeout(Duration::from_secs(5)).unwrap();
    // The hook's message, and the ping that confirms it.
    assert_eq!(next(), "FireLogin");
    assert_eq!(next(), "ping");
    assert_eq!(client.state(), LinkState::LoggingIn);
    // Its pong is read (a frame read after the probe below would make
    // the probe unnecessary).
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .last_rtt
        .is_some()));
    // A probe falls due during the step (an app back in the foreground).
    client.reconnect_now();
    assert_eq!(next(), "ping");
    go.send(()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || client.state() == LinkState::Open));
    client.send(json!({"Operator": "FireAfter"})).unwrap();
    assert_eq!(
        next(),
        "FireAfter",
        "the app heartbeat went out during the on_open step"
    );
}

#[test]
fn a_link_whose_connection_is_gone_refuses_with_connection_lost() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let (go, gate) = crossbeam_channel::bounded::<()>(1);
    let result = Arc::new(Mutex::new(None));
    let res = result.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .login_timeout(Duration::from_secs(20))
        .on_open(move |link| {
            if first.swap(false, Ordering::SeqCst) {
                let _ = gate.recv_timeout(Duration::from_secs(10));
                let sent = link.send(json!({"Operator": "FireLate"}));
                let asked = link.request(json!({"Operator": "Get"}), Duration::from_secs(1));
                *res.lock().unwrap() = Some((sent, asked.map(drop)));
            }
            Ok(())
        })
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || client.state()
        == LinkState::LoggingIn));
    proxy.cut();
    // The first connection is gone for good once the second one is made.
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .connects
        == 2));
    go.send(()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || result
        .lock()
        .unwrap()
        .is_some()));
    let (sent, asked) = result.lock().unwrap().take().unwrap();
    assert!(matches!(sent, Err(Error::ConnectionLost)), "{sent:?}");
    assert!(matches!(asked, Err(Error::ConnectionLost)), "{asked:?}");
    assert_eq!(client.stats().dropped, 0, "refused, not silently dropped");
}
