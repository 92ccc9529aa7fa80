//! Verifies `pause` and `resume` against real servers: a pause closes the
//! connection with 1001 and stops everything, queued messages arrive once
//! and in order after `resume`, a pause during the connect attempt, the
//! `on_open` step or a flush ends it cleanly, resume is idempotent, and
//! `close` while paused hands back what is queued.
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};
use longlink::{Client, Error, LinkState};
use serde_json::{Value, json};
use support::{answer_ok, dedup_server, init_log, raw_server, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn wait_state(client: &Client, want: LinkState) {
    assert!(
        wait_until(WAIT, || client.state() == want),
        "state {:?}, not {want:?}",
        client.state()
    );
}

#[test]
fn a_pause_says_going_away_and_the_queue_arrives_once_in_order_after_resume() {
    init_log();
    // A peer that reports each connection's Close code.
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
    let client = Client::builder(format!("ws://{addr}"))
        .heartbeat_interval(Duration::from_millis(100))
        .connect()
        .unwrap();
    client.pause();
    assert_eq!(codes.recv_timeout(WAIT).unwrap(), Some(1001));
    wait_state(&client, LinkState::Paused);
    let receipt = client
        .send_with(json!({"Operator": "Draft"}), Default::default())
        .unwrap();
    assert_eq!(receipt.status(), longlink::Status::Queued);
    // No reconnect while paused (the heartbeat would have found it gone).
    std::thread::sleep(Duration::from_millis(300)); // observation window, not synchronisation
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().connects, 1);
    let _ = client.close(Duration::from_millis(100));

    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    for n in 0..50 {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
    }
    client.pause();
    for n in 50..100 {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
    }
    wait_state(&client, LinkState::Paused);
    client.resume();
    client.resume();
    wait_state(&client, LinkState::Open);
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 100));
    let got: Vec<Value> = dedup.lock().unwrap().field("n");
    assert_eq!(got, (0..100).map(Value::from).collect::<Vec<_>>());
    assert_eq!(client.stats().connects, 2, "resume twice is resume once");
    client.close(WAIT).unwrap();
}

#[test]
fn a_pause_during_the_connect_attempt_ends_it_and_resume_connects() {
    init_log();
    // The first connection stalls before the handshake; later ones work.
    let (addr, conns) = raw_server(|n, stream| {
        if n == 0 {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        let mut ws = tungstenite::accept(stream).unwrap();
        answer_ok(&mut ws);
    });
    let client = Client::builder(format!("ws://{addr}")).start().unwrap();
    assert!(wait_until(WAIT, || conns.load(Ordering::SeqCst) == 1));
    client.pause();
    wait_state(&client, LinkState::Paused);
    client.resume();
    wait_state(&client, LinkState::Open);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    client.close(WAIT).unwrap();
}

#[test]
fn a_pause_during_the_on_open_step_ends_it_and_resume_runs_it_again() {
    init_log();
    let (server, _) = dedup_server();
    let (go_tx, go) = bounded::<()>(4);
    let steps = Arc::new(AtomicUsize::new(0));
    let s = steps.clone();
    let client = Client::builder(server.url())
        .on_open(move |_| {
            // The first step waits until the test lets it go.
            if s.fetch_add(1, Ordering::SeqCst) == 0 {
                let _ = go.recv_timeout(WAIT);
            }
            Ok(())
        })
        .start()
        .unwrap();
    wait_state(&client, LinkState::LoggingIn);
    client.pause();
    wait_state(&client, LinkState::Paused);
    go_tx.send(()).unwrap();
    // The stale step's success opens nothing.
    assert!(wait_until(WAIT, || steps.load(Ordering::SeqCst) == 1));
    std::thread::sleep(Duration::from_millis(100)); // observation window
    assert_eq!(client.state(), LinkState::Paused);
    client.resume();
    wait_state(&client, LinkState::Open);
    assert_eq!(steps.load(Ordering::SeqCst), 2);
    client.close(WAIT).unwrap();
}

#[test]
fn a_pause_during_a_flush_loses_and_repeats_nothing_under_at_least_once() {
    init_log();
    const N: usize = 5_000;
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .outbox_capacity(N)
        .connect()
        .unwrap();
    let paused_at = Arc::new(Mutex::new(None));
    for n in 0..N {
        client.send(json!({"Operator": "Note", "n": n})).unwrap();
        // Pause once the server has taken some: in the middle of the flush.
        if paused_at.lock().unwrap().is_none() && !dedup.lock().unwrap().accepted.is_empty() {
            client.pause();
            *paused_at.lock().unwrap() = Some(n);
        }
    }
    if paused_at.lock().unwrap().is_none() {
        client.pause();
    }
    wait_state(&client, LinkState::Paused);
    client.resume();
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == N));
    let d = dedup.lock().unwrap();
    let in_order = d
        .accepted
        .iter()
        .enumerate()
        .all(|(i, m)| m["n"] == json!(i));
    assert!(in_order, "every message once, in order");
    eprintln!(
        "paused after {:?} sends; {} duplicates dropped by the server",
        paused_at.lock().unwrap(),
        d.duplicates
    );
    drop(d);
    client.close(WAIT).unwrap();
}

#[test]
fn close_while_paused_hands_back_what_is_queued() {
    init_log();
    let (server, _) = dedup_server();
    let client = Client::builder(server.url()).connect().unwrap();
    client.pause();
    wait_state(&client, LinkState::Paused);
    client.send(json!({"Operator": "A"})).unwrap();
    client.send(json!({"Operator": "B"})).unwrap();
    let Err(Error::Unsent { messages }) = client.close(WAIT) else {
        panic!("the queue is handed back");
    };
    assert_eq!(
        messages,
        [json!({"Operator": "A"}), json!({"Operator": "B"})]
    );
}

#[test]
fn a_request_that_times_out_while_paused_gives_its_room_back() {
    init_log();
    let server = support::Server::start();
    let client = Client::builder(server.url())
        .outbox_capacity(2)
        .connect()
        .unwrap();
    client.pause();
    wait_state(&client, LinkState::Paused);
    for _ in 0..2 {
        let r = client.request(json!({"Operator": "Stale"}), Duration::from_millis(50));
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    }
    // Both callers gave up: their room comes back at their deadlines.
    assert!(wait_until(Duration::from_secs(10), || client
        .stats()
        .outbox_depth
        == 0));
    client.send(json!({"Operator": "Fresh"})).unwrap();
    client.resume();
    let first = server.next_text(Duration::from_secs(10)).unwrap();
    assert_eq!(
        first["Operator"], "Fresh",
        "a request written after its caller gave up"
    );
    client.close(Duration::from_secs(10)).unwrap();
}
