//! Verifies request/reply: concurrent matching by name (FIFO) and by
//! correlation id, error replies, timeouts, and "connection lost" for a
//! request in flight when the link dies.
mod support;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use longlink::{Client, Error};
use serde_json::{Value, json};
use support::{Proxy, Server, ServerOpts, answer_ok, init_log, raw_server, wait_until};

fn hammer(client: &Client) {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in 0..1000u64 {
                    let n = t * 1_000_000 + i;
                    let reply = client
                        .request(json!({"Operator": "Echo", "n": n}), Duration::from_secs(20))
                        .unwrap();
                    assert_eq!(reply.operator(), "EchoOK");
                    assert_eq!(
                        reply.get("n"),
                        Some(&json!(n)),
                        "reply went to the wrong caller"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn eight_threads_of_a_thousand_requests_are_matched_by_name() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    hammer(&client);
    assert_eq!(client.stats().messages_sent, 8000);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn eight_threads_of_a_thousand_requests_are_matched_by_correlation_id() {
    init_log();
    // This server answers out of order: it holds every other reply back
    // and sends it after the next one; only ids can match that.
    let held: Arc<std::sync::Mutex<Option<Value>>> = Arc::default();
    let quiet = held.clone();
    let server = Server::start_with(ServerOpts {
        on_quiet: Some(Arc::new(move || {
            quiet.lock().unwrap().take().into_iter().collect()
        })),
        handler: Some(Arc::new(move |v: &Value| {
            let reply = json!({"Operator": "EchoOK", "n": v["n"], "reqId": v["reqId"]});
            let mut h = held.lock().unwrap();
            match h.take() {
                Some(prev) => vec![reply, prev],
                None => {
                    *h = Some(reply);
                    vec![]
                }
            }
        })),
        ..Default::default()
    });
    let client = Client::builder(server.url())
        .correlation_field("reqId")
        .connect()
        .unwrap();
    // A reply held with no partner goes out when the connection is quiet.
    hammer(&client);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn error_reply_fails_the_request_with_the_message() {
    init_log();
    let server = Server::start_with(ServerOpts {
        handler: Some(Arc::new(|_: &Value| {
            vec![json!({"Operator": "CreateInvitationCommentError", "why": "closed"})]
        })),
        ..Default::default()
    });
    let client = Client::builder(server.url()).connect().unwrap();
    let err = client
        .request(
            json!({"Operator": "CreateInvitationComment", "id": 1}),
            Duration::from_secs(5),
        )
        .unwrap_err();
    let m = err.remote().expect("a remote error");
    assert_eq!(m.get("why"), Some(&json!("closed")));
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn unanswered_request_times_out_and_its_late_reply_is_not_misdelivered() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url()).connect().unwrap();
    proxy.delay(Duration::from_millis(300));
    let err = client
        .request(
            json!({"Operator": "Slow", "n": 1}),
            Duration::from_millis(100),
        )
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    proxy.delay(Duration::ZERO);
    // The late SlowOK for n=1 arrives meanwhile; it must not answer n=2.
    let ok = client.request(json!({"Operator": "Slow", "n": 2}), Duration::from_secs(5));
    match ok {
        Ok(m) => assert_eq!(m.get("n"), Some(&json!(2))),
        Err(e) => assert!(e.is_timeout(), "{e:?}"),
    }
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn request_in_flight_fails_with_connection_lost_when_the_link_dies() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_secs(30))
        .connect()
        .unwrap();
    // The server never answers "Fire*"; cut the link while we wait.
    let c = client.clone();
    let waiter = thread::spawn(move || {
        c.request(json!({"Operator": "FireAndWait"}), Duration::from_secs(10))
    });
    support::wait_until(Duration::from_secs(5), || client.stats().messages_sent >= 1);
    proxy.reset();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost), "{err:?}");
    client.close(Duration::from_secs(1)).unwrap_or(());
}

#[test]
fn request_made_while_offline_waits_in_the_outbox() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    proxy.blackhole();
    let client = Client::builder(proxy.url())
        .connect_timeout(Duration::from_millis(200))
        .reconnect_min_delay(Duration::from_millis(10))
        .reconnect_max_delay(Duration::from_millis(50))
        .start()
        .unwrap();
    let c = client.clone();
    let waiter =
        thread::spawn(move || c.request(json!({"Operator": "Later"}), Duration::from_secs(10)));
    support::wait_until(Duration::from_secs(5), || {
        client.stats().connect_failures >= 1
    });
    assert_eq!(client.stats().outbox_depth, 1);
    proxy.restore();
    assert_eq!(waiter.join().unwrap().unwrap().operator(), "LaterOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_request_answered_before_the_link_died_is_not_counted_as_possibly_lost() {
    use std::io::Write;
    init_log();
    // Answer the request with a raw frame (so no pong goes out), take the
    // one-way message after it, then drop the connection: the reply proves
    // the request arrived; nothing proves the message did.
    let (addr, _) = raw_server(|n, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        if n > 0 {
            return answer_ok(&mut ws);
        }
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        if let Ok(tungstenite::Message::Text(_)) = ws.read() {
            let reply = br#"{"Operator":"AskOK"}"#;
            let mut frame = vec![0x81, reply.len() as u8];
            frame.extend_from_slice(reply);
            ws.get_mut().write_all(&frame).unwrap();
        }
        // Read (pings included) until the one-way message is in, then drop.
        while let Ok(m) = ws.read() {
            if matches!(&m, tungstenite::Message::Text(t) if t.contains("OneWay")) {
                break;
            }
        }
    });
    let client = Client::builder(format!("ws://{addr}"))
        .reconnect_min_delay(Duration::from_millis(10))
        .connect()
        .unwrap();
    let reply = client
        .request(json!({"Operator": "Ask"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(reply.operator(), "AskOK");
    client.send(json!({"Operator": "OneWay"})).unwrap();
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .connects
        == 2));
    assert_eq!(client.stats().possibly_lost, 1, "{:?}", client.stats());
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn after_one_lost_reply_a_retry_answered_promptly_succeeds_within_two_tries() {
    init_log();
    // The first Get is never answered; every later one at once.
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = first.clone();
    let ok = support::ok_handler();
    let server = Server::start_with(ServerOpts {
        handler: Some(Arc::new(move |v: &Value| {
            if v["Operator"] == "Get" && f.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return vec![];
            }
            ok(v)
        })),
        ..ServerOpts::default()
    });
    let client = Client::builder(server.url()).connect().unwrap();
    let t = Duration::from_millis(300);
    let e = client.request(json!({"Operator": "Get"}), t).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // Retrying at once: the first retry's reply may be taken by the lost
    // request's ghost (by name, nothing tells them apart); the second
    // retry must not be.
    let outcomes: Vec<_> = (0..2)
        .map(|_| {
            client
                .request(json!({"Operator": "Get"}), t)
                .map(|m| m.operator().to_owned())
        })
        .collect();
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Ok(op) if op == "GetOK")),
        "{outcomes:?}"
    );
}
