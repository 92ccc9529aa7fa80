//! The app-lifecycle promises tried from outside: tests written to break
//! the promises of the README sections
//! "The app's life: pause and resume", "Where to connect", "Receiving:
//! closures or receivers", "Semantics" and "Delivery modes", and of the
//! rustdoc of `pause`, `resume`, `endpoints`, `url_with`, receivers,
//! `LinkState`, `Cause` and `Stats`. Real servers on 127.0.0.1:0, every
//! wait bounded, no sleep used as synchronisation (a few short
//! observation windows say "nothing happened meanwhile"). Seven failed
//! when written (timed-out requests holding room while paused, a password
//! with `#`, `/` or `?` shown, a 404 endpoint ending a link whose other
//! endpoint worked, a full receiver keeping `on_open` from running, two
//! sizes that panicked); they pass since the fixes, and three of them live
//! beside their features now (`pause.rs`, `endpoints.rs`, `receivers.rs`).
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use longlink::{
    Cause, Client, CloseReason, Error, JournalSync, LinkState, Overflow, RequestOptions,
    SendOptions, Status,
};
use serde_json::{Value, json};
use support::{
    Server, ServerOpts, answer_ok, dead_addr, dedup_server, ok_handler, raw_server, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);

fn wait_for(client: &Client, what: &str, mut f: impl FnMut(&LinkState) -> bool) -> LinkState {
    assert!(
        wait_until(WAIT, || f(&client.state())),
        "waited for {what}; state is {:?}",
        client.state()
    );
    client.state()
}

fn wait_state(client: &Client, want: LinkState) {
    wait_for(client, &format!("{want:?}"), |s| *s == want);
}

fn is_backoff(s: &LinkState) -> bool {
    matches!(s, LinkState::Backoff { .. })
}

/// States recorded by an `on_state` registered on the builder.
fn recorder() -> (
    Arc<Mutex<Vec<LinkState>>>,
    impl FnMut(&LinkState) + Send + 'static,
) {
    let states = Arc::new(Mutex::new(Vec::new()));
    let s = states.clone();
    (states, move |st: &LinkState| {
        s.lock().unwrap().push(st.clone())
    })
}

/// Read an HTTP request's head from `stream` (up to the blank line).
/// The causes of the backoffs recorded, in order.
fn causes(states: &Mutex<Vec<LinkState>>) -> Vec<Cause> {
    let states = states.lock().unwrap();
    let backoffs = states.iter().filter_map(|s| match s {
        LinkState::Backoff { cause, .. } => Some(cause.clone()),
        _ => None,
    });
    backoffs.collect()
}

fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longlink-redteam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

// ---------------------------------------------------------------- pause

#[test]
fn resume_does_nothing_in_backoff_but_pause_then_resume_skips_the_wait() {
    // The first connection is dropped before the handshake: a failed
    // attempt, then a backoff of at least 30 s.
    let (addr, conns) = raw_server(|n, stream| {
        if n == 0 {
            drop(stream);
            return;
        }
        let mut ws = tungstenite::accept(stream).unwrap();
        answer_ok(&mut ws);
    });
    let client = Client::builder(format!("ws://{addr}"))
        .reconnect_min_delay(Duration::from_secs(30))
        .reconnect_max_delay(Duration::from_secs(60))
        .start()
        .unwrap();
    wait_for(&client, "a backoff", is_backoff);
    // "Does nothing unless paused."
    client.resume();
    std::thread::sleep(Duration::from_millis(300)); // observation window
    assert!(is_backoff(&client.state()), "{:?}", client.state());
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    // A pause during the backoff, then resume: "connect at once (no backoff wait)".
    client.pause();
    wait_state(&client, LinkState::Paused);
    let t = Instant::now();
    client.resume();
    wait_state(&client, LinkState::Open);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    client.close(WAIT).unwrap();
}

#[test]
fn pausing_twice_says_goodbye_once_and_close_while_paused_is_prompt() {
    let (codes_tx, codes) = unbounded();
    let (addr, conns) = raw_server(move |_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        while let Ok(m) = ws.read() {
            if let tungstenite::Message::Close(frame) = m {
                let _ = codes_tx.send(frame.map(|f| u16::from(f.code)));
                return;
            }
        }
    });
    let (states, on_state) = recorder();
    let client = Client::builder(format!("ws://{addr}"))
        .on_state(on_state)
        .connect()
        .unwrap();
    client.pause();
    client.pause();
    assert_eq!(codes.recv_timeout(WAIT).unwrap(), Some(1001));
    wait_state(&client, LinkState::Paused);
    client.pause();
    assert!(wait_until(WAIT, || states
        .lock()
        .unwrap()
        .contains(&LinkState::Paused)));
    std::thread::sleep(Duration::from_millis(200)); // observation window
    assert!(codes.try_recv().is_err(), "a second Close frame");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let paused = states
        .lock()
        .unwrap()
        .iter()
        .filter(|s| **s == LinkState::Paused)
        .count();
    assert_eq!(paused, 1, "{:?}", states.lock().unwrap());
    // Nothing queued: close while paused is Ok and does not wait out its deadline.
    let t = Instant::now();
    client.close(WAIT).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // After close, pause and resume are harmless.
    client.pause();
    client.resume();
    assert_eq!(client.state(), LinkState::Closed(CloseReason::Requested));
}

#[test]
fn requests_wait_while_paused_within_their_deadline_and_are_answered_after_resume() {
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    client.pause();
    wait_state(&client, LinkState::Paused);
    let c = client.clone();
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        let _ = tx.send(c.request(json!({"Operator": "Get", "n": 7}), WAIT));
    });
    assert!(wait_until(WAIT, || client.stats().outbox_depth == 1));
    assert!(rx.try_recv().is_err(), "answered while paused");
    client.resume();
    let reply = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(reply.operator(), "GetOK");
    assert_eq!(reply.get("n"), Some(&json!(7)));
    client.close(WAIT).unwrap();
}

#[test]
fn while_paused_ttls_run_bounds_hold_and_queued_messages_leave_in_order_after_resume() {
    let server = Server::start();
    let client = Client::builder(server.url())
        .outbox_capacity(3)
        .connect()
        .unwrap();
    client.pause();
    wait_state(&client, LinkState::Paused);
    let short = client
        .send_with(
            json!({"Operator": "FireShort"}),
            SendOptions::new().ttl(Duration::from_millis(100)),
        )
        .unwrap();
    assert_eq!(short.status(), Status::Queued);
    assert_eq!(
        short.wait(WAIT),
        Status::Expired,
        "the TTL runs while paused"
    );
    assert_eq!(client.stats().expired, 1);
    let receipts: Vec<_> = (0..3)
        .map(|n| {
            client
                .send_with(json!({"Operator": "FireKeep", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    match client.send(json!({"Operator": "FireKeep", "n": 3})) {
        Err(Error::OutboxFull { message }) => assert_eq!(message["n"], 3),
        other => panic!("a full outbox while paused: {other:?}"),
    }
    assert!(receipts.iter().all(|r| r.status() == Status::Queued));
    client.resume();
    for n in 0..3 {
        let m = server.next_text(WAIT).unwrap();
        assert_eq!(m["Operator"], "FireKeep", "{m}");
        assert_eq!(m["n"], n);
    }
    client.close(WAIT).unwrap();
}

#[test]
fn close_while_paused_under_at_least_once_hands_back_written_and_queued_in_order() {
    let (_server, client) = support::three_unacknowledged();
    client.pause();
    wait_state(&client, LinkState::Paused);
    for n in 3..6 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    assert_eq!(client.stats().outbox_depth, 6, "{:?}", client.stats());
    match client.close(WAIT) {
        Err(Error::Unsent { messages }) => {
            let ns: Vec<&Value> = messages.iter().map(|m| &m["n"]).collect();
            assert_eq!(ns, [0, 1, 2, 3, 4, 5]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn close_while_paused_with_a_durable_outbox_journals_and_the_next_client_sends_them() {
    let path = temp_path("paused.journal");
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .durable(&path)
        .connect()
        .unwrap();
    client.send(json!({"Operator": "Post", "n": 0})).unwrap();
    assert!(wait_until(WAIT, || client.stats().acknowledged == 1));
    client.pause();
    wait_state(&client, LinkState::Paused);
    for n in 1..5 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    let closed = client.close(WAIT);
    assert!(closed.is_ok(), "journaled, not handed back: {closed:?}");
    drop(client);
    let client = Client::builder(server.url())
        .durable(&path)
        .connect()
        .unwrap();
    let recovered: Vec<Value> = client
        .recovered()
        .iter()
        .map(|m| m.get("n").cloned().unwrap())
        .collect();
    assert_eq!(recovered, [json!(1), json!(2), json!(3), json!(4)]);
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 5));
    let ns: Vec<Value> = dedup.lock().unwrap().field("n");
    assert_eq!(ns, (0..5).map(Value::from).collect::<Vec<_>>());
    client.close(WAIT).unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_pause_during_the_on_open_step_fails_its_request_at_once_and_resume_logs_in() {
    // The first connection's login is never answered; later ones are.
    let server = Server::start_with(ServerOpts {
        conn_handler: Some(Arc::new(|conn, v: &Value| {
            if conn == 1 && v["Operator"] == "Login" {
                return vec![];
            }
            ok_handler()(v)
        })),
        ..ServerOpts::default()
    });
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o = outcomes.clone();
    let client = Client::builder(server.url())
        .login_timeout(Duration::from_secs(60))
        .on_open(move |link| {
            let r = link.request(json!({"Operator": "Login"}), Duration::from_secs(30));
            o.lock().unwrap().push(format!("{r:?}"));
            r.map(drop)
        })
        .start()
        .unwrap();
    wait_state(&client, LinkState::LoggingIn);
    let login = server.next_text(WAIT).unwrap();
    assert_eq!(login["Operator"], "Login");
    client.pause();
    wait_state(&client, LinkState::Paused);
    // "A pause during ... the on_open step ends it": its request fails now,
    // not after its own 30 s.
    assert!(
        wait_until(Duration::from_secs(5), || !outcomes
            .lock()
            .unwrap()
            .is_empty()),
        "the hook's request still waits after the pause"
    );
    assert!(
        outcomes.lock().unwrap()[0].contains("ConnectionLost"),
        "{outcomes:?}"
    );
    client.resume();
    wait_state(&client, LinkState::Open);
    client.close(WAIT).unwrap();
}

#[test]
fn many_pause_resume_cycles_in_every_phase_lose_and_repeat_nothing() {
    const N: usize = 3_000;
    let (server, dedup) = dedup_server();
    let logins = Arc::new(AtomicUsize::new(0));
    let l = logins.clone();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .outbox_capacity(N)
        .in_flight_window(16, 1 << 20)
        .on_open(move |link| {
            l.fetch_add(1, Ordering::SeqCst);
            link.request(json!({"Operator": "Login"}), Duration::from_secs(5))?;
            Ok(())
        })
        .connect()
        .unwrap();
    for n in 0..N {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
        if n % 150 == 0 {
            client.pause();
            if n % 300 == 0 {
                client.pause();
            }
            client.resume();
            if n % 450 == 0 {
                client.resume();
            }
        }
    }
    wait_for(&client, "open", |s| *s == LinkState::Open);
    assert!(
        wait_until(Duration::from_secs(30), || dedup
            .lock()
            .unwrap()
            .accepted
            .len()
            >= N),
        "accepted {} of {N}; stats {:?}",
        dedup.lock().unwrap().accepted.len(),
        client.stats()
    );
    let d = dedup.lock().unwrap();
    assert_eq!(d.accepted.len(), N);
    let first_bad = d
        .accepted
        .iter()
        .enumerate()
        .find(|(i, m)| m["n"] != json!(i));
    assert!(first_bad.is_none(), "out of order: {first_bad:?}");
    eprintln!(
        "{} logins, {} duplicates dropped, stats {:?}",
        logins.load(Ordering::SeqCst),
        d.duplicates,
        client.stats()
    );
    drop(d);
    client.close(WAIT).unwrap();
}

// ---------------------------------------------------------------- endpoints

/// A server that accepts TCP and never answers the upgrade.
fn hanging_server() -> String {
    let (addr, _) = raw_server(|_, stream| {
        let mut stream = stream;
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
        }
    });
    format!("ws://{addr}/")
}

#[test]
fn the_state_endpoint_matches_stats_endpoint_and_attempts_count_across_the_list() {
    let dead1 = format!("ws://{}/", dead_addr());
    let dead2 = format!("ws://{}/", dead_addr());
    let hang = hanging_server();
    let (states, on_state) = recorder();
    let client = Client::builder(&dead1)
        .endpoints([dead1.clone(), dead2.clone(), hang.clone()])
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(60))
        .on_state(on_state)
        .start()
        .unwrap();
    let s = wait_for(&client, "the attempt on the hanging endpoint", |s| {
        matches!(s, LinkState::Connecting { endpoint: 2, .. })
    });
    // A stable state: its endpoint and the stats agree.
    assert_eq!(client.stats().endpoint, hang, "state {s:?}");
    assert_eq!(
        s,
        LinkState::Connecting {
            attempt: 2,
            endpoint: 2
        },
        "backoff counts attempts across the list"
    );
    assert!(wait_until(WAIT, || states.lock().unwrap().iter().any(
        |s| matches!(s, LinkState::Connecting { endpoint: 2, .. })
    )));
    let tried: Vec<(u32, usize)> = states
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            LinkState::Connecting { attempt, endpoint } => Some((*attempt, *endpoint)),
            _ => None,
        })
        .collect();
    assert_eq!(tried, [(0, 0), (1, 1), (2, 2)]);
    let backoffs = states
        .lock()
        .unwrap()
        .iter()
        .filter(|s| is_backoff(s))
        .count();
    assert_eq!(
        backoffs,
        2,
        "a wait between endpoints: {:?}",
        states.lock().unwrap()
    );
    assert!(!format!("{client:?}").is_empty());
    let _ = client.close(Duration::from_millis(200));
}

#[test]
fn a_login_that_fails_on_one_endpoint_moves_to_the_next_and_stays_there() {
    // A refuses the login; B accepts it.
    let a = Server::start_with(ServerOpts {
        handler: Some(Arc::new(|v: &Value| {
            if v["Operator"] == "Login" {
                vec![json!({"Operator": "LoginError", "why": "not here"})]
            } else {
                ok_handler()(v)
            }
        })),
        ..ServerOpts::default()
    });
    let b = Server::start();
    let (states, on_state) = recorder();
    let client = Client::builder(a.url())
        .endpoints([a.url(), b.url()])
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .reconnect_spread(Duration::from_millis(20))
        .on_state(on_state)
        .on_open(|link| {
            link.request(json!({"Operator": "Login"}), Duration::from_secs(5))?;
            Ok(())
        })
        .connect()
        .unwrap();
    assert_eq!(client.stats().endpoint, b.url());
    assert!(wait_until(WAIT, || states
        .lock()
        .unwrap()
        .contains(&LinkState::Open)));
    let causes = causes(&states);
    assert!(
        matches!(causes.as_slice(), [Cause::OnOpenFailed(_)]),
        "{causes:?}"
    );
    // B drops; the link goes back to B first (it works), not to A.
    let connects = client.stats().connects;
    b.kick_all();
    assert!(wait_until(WAIT, || client.stats().connects > connects
        && client.state() == LinkState::Open));
    assert_eq!(client.stats().endpoint, b.url());
    assert_eq!(a.connections(), 1);
    client.close(WAIT).unwrap();
}

#[test]
fn url_with_sees_each_endpoint_once_per_attempt_and_secrets_never_show() {
    const SECRET: &str = "tok-Z9q8-SECRET";
    let live = Server::start();
    let dead = format!("ws://{}/ws", dead_addr());
    let bases = Arc::new(Mutex::new(Vec::new()));
    let b = bases.clone();
    let (states, on_state) = recorder();
    let client = Client::builder(&dead)
        .endpoints([dead.clone(), format!("{}/ws", live.url())])
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .url_with(move |base| {
            b.lock().unwrap().push(base.to_owned());
            let with_user = base.replacen("ws://", &format!("ws://user:{SECRET}@"), 1);
            format!("{with_user}?token={SECRET}")
        })
        .on_state(on_state)
        .connect()
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        bases.lock().unwrap().clone(),
        [dead.clone(), format!("{}/ws", live.url())]
    );
    assert_eq!(
        bases.lock().unwrap().len() as u64,
        stats.connects + stats.connect_failures
    );
    let mut shown = vec![
        format!("{client:?}"),
        format!("{stats:?}"),
        stats.endpoint.clone(),
    ];
    shown.extend(states.lock().unwrap().iter().map(|s| format!("{s:?}")));
    shown.extend(states.lock().unwrap().iter().filter_map(|s| match s {
        LinkState::Backoff { cause, .. } => Some(cause.to_string()),
        _ => None,
    }));
    client.close(WAIT).unwrap();
    // A client that never connects: its error, both ways.
    let never = Client::builder(&dead)
        .url_with(|base| format!("{base}?token={SECRET}"))
        .connect_timeout(Duration::from_millis(300))
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .connect()
        .unwrap_err();
    shown.push(format!("{never:?}"));
    shown.push(never.to_string());
    // A url_with whose URL is refused at the attempt.
    let (states, on_state) = recorder();
    let bad = Client::builder(&dead)
        .url_with(|_| format!("http://user:{SECRET}@example.com/?token={SECRET}"))
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .on_state(on_state)
        .start()
        .unwrap();
    assert!(wait_until(WAIT, || states
        .lock()
        .unwrap()
        .iter()
        .any(is_backoff)));
    shown.push(format!("{bad:?}"));
    shown.extend(states.lock().unwrap().iter().map(|s| format!("{s:?}")));
    let _ = bad.close(Duration::from_millis(200));
    for text in &shown {
        assert!(!text.contains(SECRET), "a secret shown: {text}");
    }
}

#[test]
fn user_info_with_a_hash_slash_or_question_mark_is_never_shown() {
    let mut leaks = Vec::new();
    for (url, secret) in [
        ("ws://alice:pa#ss-W0rd@example.com/ws", "pa#ss-W0rd"),
        ("ws://alice:pa/ss-W0rd@example.com/ws", "ss-W0rd"),
        ("ws://alice:pa?ss-W0rd@example.com/ws", "alice:pa"),
    ] {
        let text = match Client::builder(url)
            .connect_timeout(Duration::from_millis(200))
            .start()
        {
            Err(e) => format!("{e} / {e:?}"),
            Ok(c) => {
                let t = format!("{c:?} / {:?}", c.stats());
                let _ = c.close(Duration::from_millis(100));
                t
            }
        };
        if text.contains(secret) {
            leaks.push(format!("{url}: shown as {text}"));
        }
    }
    assert!(leaks.is_empty(), "user info shown:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------- receivers

#[test]
fn dropping_a_full_receiver_the_dispatcher_waits_on_unblocks_the_link() {
    let server = Server::start();
    let client = Client::builder(server.url())
        .dispatch_capacity(2)
        .connect()
        .unwrap();
    let news = client.receiver("News");
    for n in 0..20 {
        server.push(json!({"Operator": "News", "n": n}));
    }
    assert!(wait_until(WAIT, || news.len() == 2));
    drop(news);
    // Everything after the two it held has nobody: counted, not lost silently.
    assert!(
        wait_until(WAIT, || client.stats().unclaimed == 18),
        "{:?}",
        client.stats()
    );
    // And the link reads on.
    let other = client.receiver("Other");
    server.push(json!({"Operator": "Other"}));
    assert!(other.recv_timeout(WAIT).is_ok());
    assert_eq!(client.stats().connects, 1);
    client.close(WAIT).unwrap();
}

#[test]
fn a_receiver_from_a_builder_that_fails_validation_ends_at_once() {
    let mut builder = Client::builder("http://not-websocket.example/");
    let welcome = builder.receiver("Welcome");
    assert!(matches!(builder.start(), Err(Error::InvalidConfig(_))));
    let t = Instant::now();
    let r = welcome.recv_timeout(WAIT);
    assert!(matches!(r, Err(Error::Closed { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_receiver_and_a_closure_on_one_operator_both_see_a_flood_in_order() {
    const N: u64 = 500;
    let server = Arc::new(Server::start());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut builder = Client::builder(server.url())
        .dispatch_capacity(4)
        .on("Tick", move |m| s.lock().unwrap().push(m.get("n").cloned()));
    let ticks = builder.receiver("Tick");
    let client = builder.connect().unwrap();
    let srv = server.clone();
    let pusher = std::thread::spawn(move || {
        for n in 0..N {
            srv.push(json!({"Operator": "Tick", "n": n}));
        }
    });
    for n in 0..N {
        let m = ticks.recv_timeout(WAIT).unwrap();
        assert_eq!(m.get("n"), Some(&json!(n)));
        assert!(ticks.len() <= 4);
    }
    pusher.join().unwrap();
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() == N as usize));
    let ns: Vec<Option<Value>> = seen.lock().unwrap().clone();
    assert_eq!(ns, (0..N).map(|n| Some(json!(n))).collect::<Vec<_>>());
    assert_eq!(client.stats().unclaimed, 0);
    client.close(WAIT).unwrap();
}

// ---------------------------------------------------------------- causes

#[test]
fn a_close_frame_with_a_private_code_or_no_code_is_named_with_it() {
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::coding::CloseCode;
    let (addr, _) = raw_server(|n, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        match n {
            0 => {
                let _ = ws.close(Some(CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "go".into(),
                }));
            }
            1 => {
                let _ = ws.close(None);
            }
            _ => return answer_ok(&mut ws),
        }
        while ws.read().is_ok() {}
    });
    let (states, on_state) = recorder();
    let client = Client::builder(format!("ws://{addr}"))
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .reconnect_spread(Duration::ZERO)
        .on_state(on_state)
        .start()
        .unwrap();
    let causes = || -> Vec<Cause> {
        states
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                LinkState::Backoff { cause, .. } => Some(cause.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(
        wait_until(WAIT, || causes().len() >= 2),
        "{:?}",
        states.lock().unwrap()
    );
    assert_eq!(
        causes()[..2],
        [
            Cause::ServerClosed { code: Some(4000) },
            Cause::ServerClosed { code: None }
        ]
    );
    assert!(causes()[0].to_string().contains("4000"));
    wait_state(&client, LinkState::Open);
    client.close(WAIT).unwrap();
}

#[test]
fn a_failed_handshake_and_a_close_during_the_on_open_step_are_named() {
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::coding::CloseCode;
    // Connection 0: 503; connection 1: a Close 4001 answers the login; then fine.
    let (addr, _) = raw_server(|n, mut stream| {
        if n == 0 {
            read_head(&mut stream);
            let _ =
                stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let mut ws = tungstenite::accept(stream).unwrap();
        if n == 1 {
            let _ = ws.read();
            let _ = ws.close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "who are you".into(),
            }));
            while ws.read().is_ok() {}
            return;
        }
        answer_ok(&mut ws);
    });
    let (states, on_state) = recorder();
    let client = Client::builder(format!("ws://{addr}"))
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(50))
        .on_state(on_state)
        .on_open(|link| {
            link.request(json!({"Operator": "Login"}), Duration::from_secs(5))?;
            Ok(())
        })
        .start()
        .unwrap();
    wait_state(&client, LinkState::Open);
    assert!(wait_until(WAIT, || states
        .lock()
        .unwrap()
        .contains(&LinkState::Open)));
    let causes = causes(&states);
    assert_eq!(causes.len(), 2, "{causes:?}");
    let Cause::ConnectFailed(why) = &causes[0] else {
        panic!("{causes:?}");
    };
    assert!(why.contains("503"), "{why}");
    assert_eq!(causes[1], Cause::ServerClosed { code: Some(4001) });
    client.close(WAIT).unwrap();
}

// ---------------------------------------------------------------- bad input

#[test]
fn zero_durations_that_cannot_work_are_all_named_in_one_error() {
    let err = Client::builder("ws://127.0.0.1:9/")
        .connect_timeout(Duration::ZERO)
        .heartbeat_interval(Duration::ZERO)
        .heartbeat_timeout(Duration::ZERO)
        .login_timeout(Duration::ZERO)
        .request_timeout(Duration::ZERO)
        .start()
        .unwrap_err();
    let text = err.to_string();
    for name in [
        "connect_timeout",
        "heartbeat_interval",
        "heartbeat_timeout",
        "login_timeout",
        "request_timeout",
    ] {
        assert!(text.contains(name), "{name}: {text}");
    }
    for (m, b) in [(0, 1), (1, 0), (0, 0)] {
        let err = Client::builder("ws://127.0.0.1:9/")
            .at_least_once(true)
            .in_flight_window(m, b)
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("in_flight_window"), "{err}");
        // Durable implies at least once: the window is checked too.
        let err = Client::builder("ws://127.0.0.1:9/")
            .in_flight_window(m, b)
            .durable(temp_path("never-opened.journal"))
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("in_flight_window"), "{err}");
    }
}

#[test]
fn zero_and_max_durations_elsewhere_never_panic_and_mean_what_they_say() {
    let (server, _dedup) = dedup_server();
    let path = temp_path("sync-zero.journal");
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::ZERO)
        .reconnect_max_delay(Duration::ZERO)
        .reconnect_spread(Duration::ZERO)
        .reconnect_healthy_after(Duration::ZERO)
        .drop_close_timeout(Duration::ZERO)
        .durable(&path)
        .journal_sync(JournalSync::Interval(Duration::ZERO))
        .outbox_overflow(Overflow::Block(Duration::ZERO))
        .connect()
        .unwrap();
    // A zero deadline: a clear timeout, never a late write.
    let r = client.request(json!({"Operator": "Late"}), Duration::ZERO);
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    let r = client.request_with(
        json!({"Operator": "Late"}),
        RequestOptions::new(Duration::ZERO),
    );
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    let receipt = client
        .send_with(
            json!({"Operator": "FireZero"}),
            SendOptions::new().ttl(Duration::ZERO),
        )
        .unwrap();
    assert!(receipt.wait(WAIT).is_final());
    let _ = receipt.wait(Duration::ZERO);
    client.send(json!({"Operator": "Marker"})).unwrap();
    let first = server.next_text(WAIT).unwrap();
    assert_eq!(
        first["Operator"], "Marker",
        "sent although its time was up: {first}"
    );
    let kicked = client.stats().connects;
    server.kick_all();
    assert!(wait_until(WAIT, || client.stats().connects > kicked
        && client.state() == LinkState::Open));
    let news = client.receiver("News");
    assert!(matches!(
        news.recv_timeout(Duration::ZERO),
        Err(Error::Timeout(_))
    ));
    let t = Instant::now();
    let _ = client.close(Duration::ZERO);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(client);
    let _ = std::fs::remove_file(&path);

    // Duration::MAX backoff and spread: a very long wait, not a panic.
    let max = Duration::MAX;
    let (server, _dedup) = dedup_server();
    let path = temp_path("sync-max.journal");
    let client = Client::builder(server.url())
        .reconnect_min_delay(max)
        .reconnect_max_delay(max)
        .reconnect_spread(max)
        .reconnect_healthy_after(Duration::ZERO)
        .connect_timeout(max)
        .durable(&path)
        .journal_sync(JournalSync::Interval(max))
        .connect()
        .unwrap();
    client.send(json!({"Operator": "Post", "n": 1})).unwrap();
    assert_eq!(server.next_text(WAIT).unwrap()["n"], 1);
    server.kick_all();
    let s = wait_for(&client, "a backoff", is_backoff);
    let LinkState::Backoff { delay, .. } = s else {
        unreachable!()
    };
    assert!(delay > Duration::from_secs(3600), "{delay:?}");
    client.reconnect_now();
    wait_state(&client, LinkState::Open);
    let t = Instant::now();
    let closed = client.close(WAIT);
    assert!(closed.is_ok(), "{closed:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let _ = std::fs::remove_file(&path);

    // A dead server with a backoff of Duration::MAX: close still returns.
    let client = Client::builder(format!("ws://{}", dead_addr()))
        .reconnect_min_delay(max)
        .reconnect_max_delay(max)
        .start()
        .unwrap();
    wait_for(&client, "a backoff", is_backoff);
    client.send(json!({"Operator": "Post"})).unwrap();
    let t = Instant::now();
    assert!(matches!(
        client.close(Duration::from_millis(200)),
        Err(Error::Unsent { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_in_flight_window_of_one_byte_still_moves_every_message_in_order() {
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .in_flight_window(1, 1)
        .connect()
        .unwrap();
    for n in 0..200 {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
    }
    assert!(
        wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 200),
        "{:?}",
        client.stats()
    );
    let ns: Vec<Value> = dedup.lock().unwrap().field("n");
    assert_eq!(ns, (0..200).map(Value::from).collect::<Vec<_>>());
    client.close(WAIT).unwrap();
    // And a window of usize::MAX is no limit.
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .in_flight_window(usize::MAX, usize::MAX)
        .outbox_capacity(usize::MAX)
        .outbox_max_bytes(usize::MAX)
        .connect()
        .unwrap();
    for n in 0..200 {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
    }
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 200));
    client.close(WAIT).unwrap();
}

#[test]
fn a_dispatch_capacity_of_usize_max_is_refused_or_works_never_panics() {
    let server = Server::start();
    let made = std::panic::catch_unwind(|| {
        let mut builder = Client::builder(server.url()).dispatch_capacity(usize::MAX);
        let r = builder.receiver("News");
        (builder.connect(), r)
    });
    match made {
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("builder.receiver() panicked with dispatch_capacity(usize::MAX): {why:?}");
        }
        Ok((Ok(client), news)) => {
            server.push(json!({"Operator": "News"}));
            assert!(news.recv_timeout(WAIT).is_ok());
            client.close(WAIT).unwrap();
        }
        Ok((Err(e), _)) => assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}"),
    }
}

#[test]
fn a_read_buffer_of_usize_max_is_refused_or_works_never_panics() {
    let server = Server::start();
    let r = Client::builder(server.url())
        .read_buffer_size(usize::MAX)
        .connect_timeout(Duration::from_secs(3))
        .connect();
    match r {
        Ok(client) => {
            let reply = client.request(json!({"Operator": "Get"}), WAIT).unwrap();
            assert_eq!(reply.operator(), "GetOK");
            client.close(WAIT).unwrap();
        }
        Err(e) => assert!(
            matches!(e, Error::InvalidConfig(_)),
            "not a clear error: {e} ({e:?})"
        ),
    }
    // max_message_size of usize::MAX is no limit and no panic.
    let client = Client::builder(server.url())
        .max_message_size(usize::MAX)
        .connect()
        .unwrap();
    assert_eq!(
        client
            .request(json!({"Operator": "Get"}), WAIT)
            .unwrap()
            .operator(),
        "GetOK"
    );
    client.close(WAIT).unwrap();
}
