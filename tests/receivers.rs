//! Verifies pull-style receivers and what the builder registers before the
//! first connect: nothing sent right after the handshake is missed, a full
//! receiver holds reading back without growing, losing or reordering
//! anything and without a false dead-peer verdict, dropping a receiver
//! unsubscribes, a closed link ends its receivers, and a message nobody
//! takes is counted.
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::{Client, Error, LinkState};
use serde_json::json;
use support::{Server, answer_ok, init_log, raw_server, wait_until};

const WAIT: Duration = Duration::from_secs(5);

/// A server that greets every connection right after the handshake.
fn greeting_server() -> String {
    let (addr, _) = raw_server(|_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        let hello = json!({"Operator": "Welcome", "motd": "hi"}).to_string();
        ws.send(tungstenite::Message::text(hello)).unwrap();
        answer_ok(&mut ws);
    });
    format!("ws://{addr}")
}

#[test]
fn what_the_builder_registers_sees_the_first_push_and_the_first_state() {
    init_log();
    let url = greeting_server();
    let states = Arc::new(Mutex::new(Vec::new()));
    let greeted = Arc::new(Mutex::new(Vec::new()));
    let (s, g) = (states.clone(), greeted.clone());
    let mut builder = Client::builder(&url)
        .on_state(move |st| s.lock().unwrap().push(st.clone()))
        .on("Welcome", move |m| g.lock().unwrap().push(m.clone()));
    let welcome = builder.receiver("Welcome");
    let client = builder.connect().unwrap();
    let m = welcome.recv_timeout(WAIT).unwrap();
    assert_eq!(m.get("motd"), Some(&json!("hi")));
    assert!(wait_until(WAIT, || greeted.lock().unwrap().len() == 1));
    assert!(wait_until(WAIT, || states
        .lock()
        .unwrap()
        .contains(&LinkState::Open)));
    assert_eq!(
        states.lock().unwrap()[0],
        LinkState::Connecting {
            attempt: 0,
            endpoint: 0
        },
        "the first state is seen"
    );
    assert_eq!(client.stats().unclaimed, 0);
    client.close(WAIT).unwrap();
}

#[test]
fn a_push_nobody_takes_is_counted_not_dropped_without_a_trace() {
    init_log();
    let url = greeting_server();
    // Nothing registered: the welcome comes before anyone could subscribe.
    let client = Client::builder(&url).connect().unwrap();
    assert!(wait_until(WAIT, || client.stats().unclaimed == 1));
    client.close(WAIT).unwrap();

    // With a dispatcher running, an operator nobody takes is counted too.
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let news = client.receiver("News");
    server.push(json!({"Operator": "Gossip"}));
    server.push(json!({"Operator": "News", "n": 1}));
    assert_eq!(news.recv_timeout(WAIT).unwrap().get("n"), Some(&json!(1)));
    assert_eq!(client.stats().unclaimed, 1, "the Gossip");
    client.close(WAIT).unwrap();
}

#[test]
fn a_full_receiver_holds_reading_back_and_loses_or_reorders_nothing() {
    init_log();
    const CAP: usize = 8;
    const N: u64 = 600;
    let server = Server::start();
    let client = Client::builder(server.url())
        .dispatch_capacity(CAP)
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_timeout(Duration::from_secs(1))
        .connect()
        .unwrap();
    let ticks = client.receiver("Tick");
    let server = Arc::new(server);
    let s = server.clone();
    let pusher = std::thread::spawn(move || {
        for n in 0..N {
            s.push(json!({"Operator": "Tick", "n": n}));
        }
    });
    let mut most_ahead = 0;
    for n in 0..N {
        let m = ticks.recv_timeout(WAIT).unwrap();
        assert_eq!(m.get("n"), Some(&json!(n)), "in order, none missing");
        assert!(ticks.len() <= CAP);
        let read = client.stats().messages_received;
        // Read from the socket but not yet taken: the dispatcher's queue
        // and the receiver's, nothing more.
        let ahead = read.saturating_sub(n + 1);
        most_ahead = most_ahead.max(ahead);
        assert!(ahead <= 2 * CAP as u64 + 2, "{ahead} messages read ahead");
        if n % 200 == 100 {
            // A slow consumer: longer than the heartbeat timeout.
            std::thread::sleep(Duration::from_millis(1300));
        }
    }
    pusher.join().unwrap();
    let stats = client.stats();
    assert_eq!(stats.connects, 1, "the pause is no dead peer");
    assert_eq!(stats.heartbeat_misses, 0);
    assert_eq!(stats.unclaimed, 0);
    eprintln!(
        "at most {most_ahead} messages read ahead of the consumer (bound {})",
        2 * CAP + 2
    );
    client.close(WAIT).unwrap();
}

#[test]
fn dropping_a_receiver_unsubscribes_it() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let news = client.receiver("News");
    server.push(json!({"Operator": "News", "n": 1}));
    assert_eq!(news.recv_timeout(WAIT).unwrap().get("n"), Some(&json!(1)));
    drop(news);
    server.push(json!({"Operator": "News", "n": 2}));
    assert!(wait_until(WAIT, || client.stats().unclaimed == 1));
    // The catch-all receiver takes what has no receiver of its own.
    let rest = client.receiver_any();
    server.push(json!({"Operator": "News", "n": 3}));
    assert_eq!(rest.recv_timeout(WAIT).unwrap().get("n"), Some(&json!(3)));
    client.close(WAIT).unwrap();
}

#[test]
fn a_closed_link_ends_its_receivers_after_what_they_hold() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let news = client.receiver("News");
    assert!(matches!(news.try_recv(), Ok(None)));
    let t = Instant::now();
    assert!(matches!(
        news.recv_timeout(Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    for n in 0..3 {
        server.push(json!({"Operator": "News", "n": n}));
    }
    assert!(wait_until(WAIT, || news.len() == 3));
    client.close(WAIT).unwrap();
    let got: Vec<_> = news.iter().map(|m| m.get("n").cloned()).collect();
    assert_eq!(got, [Some(json!(0)), Some(json!(1)), Some(json!(2))]);
    assert!(matches!(news.recv(), Err(Error::Closed { .. })));
    assert!(matches!(news.try_recv(), Err(Error::Closed { .. })));
    // Made after the close: ends at once instead of waiting forever.
    let late = client.receiver("News");
    assert!(matches!(late.recv_timeout(WAIT), Err(Error::Closed { .. })));
}

#[test]
fn a_full_receiver_nobody_reads_does_not_hold_close_back() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .dispatch_capacity(2)
        .connect()
        .unwrap();
    let news = client.receiver("News");
    for n in 0..10 {
        server.push(json!({"Operator": "News", "n": n}));
    }
    assert!(wait_until(WAIT, || news.len() == 2));
    let t = Instant::now();
    client.close(Duration::from_secs(1)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        t.elapsed()
    );
    let held: Vec<_> = news.iter().map(|m| m.get("n").cloned()).collect();
    assert_eq!(held, [Some(json!(0)), Some(json!(1))]);
    let stats = client.stats();
    assert!(
        stats.unclaimed >= 1,
        "the message the dispatcher held is counted"
    );
    assert!(2 + stats.unclaimed <= stats.messages_received);
}

/// A receiver the application stopped pulling holds reading back; it must
/// not keep a new connection's `on_open` step from running (the step runs
/// on the thread that waits for the receiver's room).
#[test]
fn a_full_receiver_does_not_keep_the_link_from_logging_in_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    init_log();
    let server = Server::start();
    let logins = Arc::new(AtomicUsize::new(0));
    let l = logins.clone();
    let mut builder = Client::builder(server.url())
        .dispatch_capacity(2)
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(100))
        .on_open(move |link| {
            // A login whose reply comes behind the pushes nobody pulls.
            link.request(json!({"Operator": "Login"}), Duration::from_secs(5))?;
            l.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    let news = builder.receiver("News");
    let client = builder.connect().unwrap();
    for n in 0..10 {
        server.push(json!({"Operator": "News", "n": n}));
    }
    // Full, and the dispatcher waits for its room.
    assert!(wait_until(WAIT, || news.len() == 2));
    let connects = client.stats().connects;
    server.reset_all();
    // Reading is held back, so a write finds the reset: the application
    // goes on sending.
    assert!(
        wait_until(WAIT, || {
            let _ = client.send(json!({"Operator": "Tick"}));
            client.stats().connects > connects && client.state() == LinkState::Open
        }),
        "state {:?}, on_open ran {} times, {:?}",
        client.state(),
        logins.load(Ordering::SeqCst),
        client.stats()
    );
    assert_eq!(
        logins.load(Ordering::SeqCst) as u64,
        client.stats().connects
    );
    // Messages sent meanwhile flow; what the receiver was given stays in order.
    client.send(json!({"Operator": "After"})).unwrap();
    let flowed = wait_until(WAIT, || {
        std::iter::from_fn(|| server.next_text(Duration::ZERO)).any(|v| v["Operator"] == "After")
    });
    assert!(flowed);
    let ns: Vec<_> = (0..2)
        .map(|_| news.recv_timeout(WAIT).unwrap().get("n").cloned())
        .collect();
    assert_eq!(ns, [Some(json!(0)), Some(json!(1))]);
    client.close(WAIT).unwrap();
}
