//! Verifies `close`: it returns by its deadline whatever the I/O thread is
//! doing, hands back what never left, and says `Ok` only when every
//! message it answers for is known to have arrived (a pong after it, an
//! acknowledgement, or the journal), never on a Close frame alone.
mod support;

use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use longlink::{Client, Error, Failure, LinkState, SendOptions, Status};
use serde_json::json;
use support::*;

/// A client whose connect attempt hangs: TCP connects to the proxy, the
/// upgrade never gets an answer, so the attempt runs for its whole 20 s
/// connect timeout. The server and proxy must outlive the test.
fn stuck_in_a_connect_attempt(
    configure: impl FnOnce(longlink::ClientBuilder) -> longlink::ClientBuilder,
) -> (Server, Proxy, Client) {
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    proxy.blackhole();
    let builder = Client::builder(proxy.url()).connect_timeout(Duration::from_secs(20));
    let client = configure(builder).start().unwrap();
    assert!(wait_until(Duration::from_secs(5), || matches!(
        client.state(),
        LinkState::Connecting { .. }
    )));
    (server, proxy, client)
}

#[test]
fn close_during_a_connect_attempt_returns_by_its_deadline_with_the_outbox() {
    init_log();
    let (_server, _proxy, client) = stuck_in_a_connect_attempt(|b| b);
    for n in 0..3 {
        client
            .send(json!({"Operator": "FirePost", "n": n}))
            .unwrap();
    }
    let t0 = Instant::now();
    let r = client.close(Duration::from_millis(300));
    let took = t0.elapsed();
    match r {
        Err(Error::Unsent { messages }) => {
            let ns: Vec<_> = messages.iter().map(|m| m["n"].as_u64().unwrap()).collect();
            assert_eq!(ns, [0, 1, 2], "handed back in order");
        }
        other => panic!("expected the three messages back, got {other:?}"),
    }
    // Not the connect timeout: the attempt does not hold close up.
    assert!(took < Duration::from_secs(5), "close took {took:?}");
    assert_eq!(client.stats().dropped, 0);
}

#[test]
fn dropping_the_last_clone_during_a_connect_attempt_returns_at_once() {
    init_log();
    let (_server, _proxy, client) =
        stuck_in_a_connect_attempt(|b| b.drop_close_timeout(Duration::from_millis(200)));
    client.send(json!({"Operator": "FirePost"})).unwrap();
    let t0 = Instant::now();
    drop(client);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn a_close_frame_that_crosses_ours_confirms_nothing() {
    init_log();
    // The server's application reads 5 messages, then (when told) closes
    // with 1001 on its own and discards whatever else arrives, as servers
    // that are shutting down do. Once it has sent its Close it answers no
    // ping (tungstenite, like Python's websockets).
    let (ready_tx, ready) = bounded::<()>(1);
    let (go, go_rx) = bounded::<()>(1);
    let (addr, _) = raw_server(move |_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        let mut read = 0;
        while read < 5 {
            match ws.read() {
                Ok(tungstenite::Message::Text(_)) => read += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = ready_tx.send(());
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "".into(),
        }));
        while ws.read().is_ok() {}
    });
    let client = Client::builder(format!("ws://{addr}")).connect().unwrap();
    let receipts: Vec<_> = (0..50)
        .map(|n| {
            client
                .send_with(json!({"Operator": "FirePost", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    ready.recv_timeout(Duration::from_secs(5)).unwrap();
    let c = client.clone();
    let closing = std::thread::spawn(move || c.close(Duration::from_secs(3)));
    // close has begun once it refuses new messages; only then does the
    // server's Close go out, crossing ours.
    let mut accepted = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        let refused = client.send(json!({"Operator": "FireProbe"})).is_err();
        accepted += usize::from(!refused);
        refused
    }));
    go.send(()).unwrap();
    let r = closing.join().unwrap();
    let lost = receipts
        .iter()
        .filter(|r| r.status() == Status::Failed(Failure::PossiblyLost))
        .count();
    match r {
        Err(Error::PossiblyLost { count, unsent }) => {
            assert!(
                count >= 45,
                "{count} possibly lost; 45 never reached the application"
            );
            assert!(unsent.is_empty());
            assert_eq!(count as usize, lost + accepted, "receipts agree");
            assert!(client.stats().possibly_lost >= count);
        }
        other => panic!("45 messages never reached the application, close said {other:?}"),
    }
}

#[test]
fn close_says_how_many_may_be_lost_when_no_pong_confirms_them() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url()).connect().unwrap();
    let a = client
        .send_with(json!({"Operator": "FireA"}), SendOptions::new())
        .unwrap();
    assert_eq!(a.wait(Duration::from_secs(5)), Status::Confirmed);
    // The server freezes: nothing it reads, nothing it answers.
    proxy.blackhole();
    let b = client
        .send_with(json!({"Operator": "FireB"}), SendOptions::new())
        .unwrap();
    let c = client
        .send_with(json!({"Operator": "FireC"}), SendOptions::new())
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || b.status()
        == Status::Written
        && c.status() == Status::Written));
    let r = client.close(Duration::from_millis(300));
    assert!(
        matches!(&r, Err(Error::PossiblyLost { count: 2, unsent }) if unsent.is_empty()),
        "{r:?}"
    );
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("2 messages possibly lost")
    );
    assert_eq!(b.status(), Status::Failed(Failure::PossiblyLost));
    assert_eq!(c.status(), Status::Failed(Failure::PossiblyLost));
    assert_eq!(client.stats().possibly_lost, 2);
}

#[test]
fn close_is_ok_when_a_pong_confirms_everything() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    for n in 0..100 {
        client
            .send(json!({"Operator": "FirePost", "n": n}))
            .unwrap();
    }
    client.close(Duration::from_secs(5)).unwrap();
    let got: Vec<_> = (0..100)
        .map_while(|_| server.next_text(Duration::from_secs(5)))
        .map(|v| v["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn a_reply_that_arrives_while_close_says_goodbye_reaches_its_caller_at_once() {
    init_log();
    // A slow server: it answers a request 300 ms after reading it, and then
    // reads nothing more (no pong to the goodbye's ping, no Close): the
    // goodbye waits for its whole deadline.
    let (got_tx, got) = bounded::<()>(1);
    let (addr, _) = raw_server(move |_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) if t.contains("Get") => break,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = got_tx.send(());
        std::thread::sleep(Duration::from_millis(300)); // the server's own pace
        let reply = json!({"Operator": "GetOK"}).to_string();
        let _ = ws.send(tungstenite::Message::text(reply));
        std::thread::sleep(Duration::from_secs(5)); // holds the socket, reads nothing
    });
    let client = Client::builder(format!("ws://{addr}")).connect().unwrap();
    let c = client.clone();
    let asking = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = c.request(json!({"Operator": "Get"}), Duration::from_secs(1));
        (r.map(|m| m.operator().to_owned()), t0.elapsed())
    });
    got.recv_timeout(Duration::from_secs(5)).unwrap();
    let closed = client.close(Duration::from_secs(2));
    let (r, took) = asking.join().unwrap();
    assert_eq!(r.unwrap(), "GetOK", "after {took:?}; close said {closed:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn close_returns_as_soon_as_the_last_acknowledgement_comes_not_at_its_deadline() {
    init_log();
    let (server, dedup) = dedup_server();
    for round in 0..20 {
        let client = Client::builder(server.url())
            .at_least_once(true)
            .connect()
            .unwrap();
        for n in 0..100 {
            client.send(json!({"Operator": "Note", "n": n})).unwrap();
        }
        // Close while messages are still going out and acknowledgements
        // still coming: it ends when the last one comes.
        let t = Instant::now();
        client.close(Duration::from_secs(20)).unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "round {round}: close waited {took:?} after its last acknowledgement"
        );
    }
    assert_eq!(dedup.lock().unwrap().accepted.len(), 2000);
}
