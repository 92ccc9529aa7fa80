//! Delivery guarantees: at-least-once through faults, receipts, time to
//! live, volatile messages, idempotent requests.
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use longlink::{Client, Error, Failure, LinkState, Overflow, RequestOptions, SendOptions, Status};
use serde_json::{Value, json};
use support::{
    Proxy, Seen, Server, ServerOpts, dead_addr, dedup_handler, dedup_server, init_log, wait_until,
};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_hundred_thousand_messages_arrive_once_and_in_order_through_cuts_resets_and_black_holes() {
    init_log();
    let (server, dedup) = dedup_server();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url())
        .at_least_once(true)
        .heartbeat_interval(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(100))
        .reconnect_min_delay(Duration::from_millis(2))
        .reconnect_max_delay(Duration::from_millis(20))
        .reconnect_healthy_after(Duration::from_millis(1))
        .outbox_overflow(Overflow::Block(Duration::from_secs(60)))
        .connect()
        .unwrap();
    const N: u64 = 100_000;
    const EVERY: usize = 200;

    // A fault every 200 messages, each on a fresh connection.
    let mut faults = 0u64;
    for seq in 0..N {
        client
            .send(json!({"Operator": "FireSeq", "seq": seq}))
            .unwrap();
        if (seq as usize) % EVERY == EVERY - 1 {
            // Strike when about half of this burst has been accepted: the
            // rest is in flight, in buffers or not yet written.
            let half = seq as usize + 1 - EVERY / 2;
            assert!(wait_until(Duration::from_secs(10), || {
                dedup.lock().unwrap().accepted.len() >= half
            }));
            let connects = client.stats().connects;
            match faults % 3 {
                0 => proxy.cut(),
                1 => proxy.reset(),
                _ => {
                    // Existing connections go silent; new ones work.
                    proxy.blackhole();
                    proxy.restore();
                }
            }
            faults += 1;
            assert!(wait_until(Duration::from_secs(10), || client
                .stats()
                .connects
                > connects));
        }
    }
    let delivered = wait_until(Duration::from_secs(180), || {
        let s = client.stats();
        s.outbox_depth == 0 && s.awaiting_ack == 0
    });
    let stats = client.stats();
    let d = std::mem::take(&mut *dedup.lock().unwrap());
    eprintln!(
        "{} of {N} accepted, through {faults} faults; {} reconnects, {} re-sent, \
         {} duplicates dropped by the server; {stats:?}",
        d.accepted.len(),
        stats.reconnects,
        stats.resent,
        d.duplicates
    );
    assert!(
        delivered,
        "not all acknowledged: {stats:?}; accepted {}",
        d.accepted.len()
    );
    assert_eq!(d.accepted.len() as u64, N, "{stats:?}");
    let first = d.accepted[0]["msgId"].as_u64().unwrap();
    for (i, v) in d.accepted.iter().enumerate() {
        assert_eq!(v["seq"], i as u64, "out of order at {i}");
        assert_eq!(v["msgId"], first + i as u64, "ids are consecutive");
    }
    assert!(faults >= 400, "only {faults} faults");
    assert_eq!(stats.acknowledged, N);
    assert_eq!(
        stats.possibly_lost, 0,
        "at-least-once messages are re-sent, not lost"
    );
    assert_eq!(stats.dropped, 0);
    client.close(WAIT).unwrap();
}

#[test]
fn unacknowledged_messages_are_resent_first_after_the_relogin_with_their_ids() {
    init_log();
    let dedup = Arc::new(Mutex::new(support::Dedup::default())); // no acks yet
    let server = Server::start_with(ServerOpts {
        handler: Some(dedup_handler(dedup.clone(), support::ok_handler())),
        ..ServerOpts::default()
    });
    let client = Client::builder(server.url())
        .at_least_once(true)
        .reconnect_min_delay(Duration::from_millis(5))
        .on_open(|link| link.send(json!({"Operator": "FireLogin"})))
        .connect()
        .unwrap();
    for n in 0..5 {
        client
            .send(json!({"Operator": "Post", "n": n, "msgId": "mine"}))
            .unwrap();
    }
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 5));
    assert_eq!(client.stats().awaiting_ack, 5);
    let before = client.stats().connects;
    dedup.lock().unwrap().ack = true;
    server.kick_all();
    assert!(wait_until(WAIT, || client.stats().connects > before));
    client.send(json!({"Operator": "Post", "n": 5})).unwrap();
    assert!(wait_until(WAIT, || client.stats().acknowledged == 6));

    // What the server read on each connection, in order.
    let mut by_conn: Vec<(u64, Value)> = Vec::new();
    while let Ok(s) = server.seen.try_recv() {
        if let Seen::Text(c, v) = s {
            by_conn.push((c, v));
        }
    }
    let second: Vec<&Value> = by_conn
        .iter()
        .filter(|(c, _)| *c == 2)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(second[0]["Operator"], "FireLogin");
    assert!(
        second[0].get("msgId").is_none(),
        "re-login messages are not stamped"
    );
    let ids: Vec<u64> = second[1..]
        .iter()
        .map(|v| v["msgId"].as_u64().unwrap())
        .collect();
    let first = ids[0];
    assert_eq!(
        ids,
        (first..first + 6).collect::<Vec<_>>(),
        "re-sent first, in order, then the rest"
    );
    let d = dedup.lock().unwrap();
    assert_eq!(d.duplicates, 5);
    let ns: Vec<u64> = d
        .accepted
        .iter()
        .map(|v| v["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4, 5]);
    assert_eq!(client.stats().resent, 5);
}

#[test]
fn receipts_are_confirmed_by_pong_or_acknowledged_by_the_server() {
    init_log();
    let server = Server::start();
    let plain = Client::builder(server.url()).connect().unwrap();
    let r = plain
        .send_with(json!({"Operator": "FireA"}), SendOptions::new())
        .unwrap();
    assert_eq!(r.wait(WAIT), Status::Confirmed);
    assert_eq!(r.msg_id(), None);

    let (server, _dedup) = dedup_server();
    let alo = Client::builder(server.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    let r = alo
        .send_with(json!({"Operator": "Post"}), SendOptions::new())
        .unwrap();
    assert_eq!(r.wait(WAIT), Status::Acknowledged);
    let id = r.msg_id().unwrap();
    let r2 = alo
        .send_with(json!({"Operator": "Post"}), SendOptions::new())
        .unwrap();
    assert_eq!(r2.wait(WAIT), Status::Acknowledged);
    assert_eq!(r2.msg_id(), Some(id + 1));
}

#[test]
fn a_receipt_says_possibly_lost_when_the_link_dies_before_a_pong() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .connect()
        .unwrap();
    proxy.stall(); // nothing reaches the server, no pong comes back
    let r = client
        .send_with(json!({"Operator": "FireA"}), SendOptions::new())
        .unwrap();
    assert!(
        wait_until(WAIT, || r.status() == Status::Written),
        "{:?}",
        r.status()
    );
    proxy.cut();
    assert_eq!(r.wait(WAIT), Status::Failed(Failure::PossiblyLost));
    assert!(client.stats().possibly_lost >= 1);
}

/// A client whose `on_open` hook waits for the test: the link stays in
/// `LoggingIn`, so the outbox does not flow until `go` is sent.
fn gated_client(
    server: &Server,
    tweak: impl FnOnce(longlink::ClientBuilder) -> longlink::ClientBuilder,
) -> (Client, crossbeam_channel::Sender<()>) {
    let (go, gate) = bounded::<()>(1);
    let client = tweak(
        Client::builder(server.url())
            .login_timeout(Duration::from_secs(20))
            .on_open(move |_| {
                let _ = gate.recv_timeout(Duration::from_secs(10));
                Ok(())
            }),
    )
    .start()
    .unwrap();
    assert!(wait_until(WAIT, || client.state() == LinkState::LoggingIn));
    (client, go)
}

#[test]
fn an_expired_message_is_never_sent_late_and_a_volatile_one_is_not_buffered() {
    init_log();
    let server = Server::start();
    let (client, go) = gated_client(&server, |b| b);
    let stale = client
        .send_with(
            json!({"Operator": "FireStale"}),
            SendOptions::new().ttl(Duration::from_millis(50)),
        )
        .unwrap();
    let fresh = client
        .send_with(
            json!({"Operator": "FireFresh"}),
            SendOptions::new().ttl(Duration::from_secs(30)),
        )
        .unwrap();
    let typing = client
        .send_with(json!({"Operator": "FireTyping"}), SendOptions::volatile())
        .unwrap();
    // The time to live runs out while the link is still logging in.
    assert_eq!(stale.wait(WAIT), Status::Expired);
    assert_eq!(typing.wait(WAIT), Status::Failed(Failure::NotOpen));
    assert_eq!(fresh.status(), Status::Queued);
    go.send(()).unwrap();
    assert_eq!(fresh.wait(WAIT), Status::Confirmed);
    // Once open, a volatile message goes out.
    let typing = client
        .send_with(json!({"Operator": "FireTyping"}), SendOptions::volatile())
        .unwrap();
    assert_eq!(typing.wait(WAIT), Status::Confirmed);
    let ops: Vec<Value> = (0..2)
        .map(|_| server.next_text(WAIT).unwrap()["Operator"].clone())
        .collect();
    assert_eq!(
        ops,
        ["FireFresh", "FireTyping"],
        "the expired message never left"
    );
    let s = client.stats();
    assert_eq!((s.expired, s.dropped), (1, 1), "{s:?}");
}

#[test]
fn receipts_report_messages_dropped_for_room_and_unsent_at_close() {
    init_log();
    let server = Server::start();
    let (client, _go) = gated_client(&server, |b| {
        b.outbox_capacity(2).outbox_overflow(Overflow::DropOldest)
    });
    let rs: Vec<_> = (0..3)
        .map(|n| {
            client
                .send_with(json!({"Operator": "FireN", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    assert_eq!(rs[0].wait(WAIT), Status::Failed(Failure::Dropped));
    drop(client);

    let down = Client::builder(format!("ws://{}", dead_addr()))
        .start()
        .unwrap();
    let r = down
        .send_with(json!({"Operator": "FireLater"}), SendOptions::new())
        .unwrap();
    match down.close(Duration::from_millis(200)) {
        Err(Error::Unsent { messages }) => assert_eq!(messages[0]["Operator"], "FireLater"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.status(), Status::Failed(Failure::Closed));
}

/// A server that swallows the first `Get` (no reply) and answers the rest.
fn forgetful_server() -> Server {
    let first = Arc::new(AtomicBool::new(true));
    let ok = support::ok_handler();
    Server::start_with(ServerOpts {
        handler: Some(Arc::new(move |v: &Value| {
            if v["Operator"] == "Get" && first.swap(false, Ordering::SeqCst) {
                return vec![];
            }
            ok(v)
        })),
        ..ServerOpts::default()
    })
}

#[test]
fn an_idempotent_request_is_resent_after_a_reconnect_and_others_fail_as_lost() {
    init_log();
    for idempotent in [true, false] {
        let server = forgetful_server();
        let proxy = Proxy::start(server.addr);
        let client = Client::builder(proxy.url())
            .reconnect_min_delay(Duration::from_millis(5))
            .connect()
            .unwrap();
        let c = client.clone();
        let call = thread::spawn(move || {
            c.request_with(
                json!({"Operator": "Get"}),
                RequestOptions::new(Duration::from_secs(5)).idempotent(idempotent),
            )
        });
        assert_eq!(server.next_text(WAIT).unwrap()["Operator"], "Get");
        proxy.cut();
        let result = call.join().unwrap();
        if idempotent {
            assert_eq!(result.unwrap().operator(), "GetOK");
            assert!(client.stats().resent >= 1);
        } else {
            assert!(result.unwrap_err().is_connection_lost());
        }
    }
}

#[test]
fn close_waits_for_acknowledgements_and_hands_back_what_was_not_acknowledged() {
    init_log();
    let (_server, client) = support::three_unacknowledged();
    match client.close(Duration::from_millis(300)) {
        Err(Error::Unsent { messages }) => {
            let ns: Vec<&Value> = messages.iter().map(|m| &m["n"]).collect();
            assert_eq!(ns, [0, 1, 2], "written but never acknowledged");
            assert!(messages.iter().all(|m| m["msgId"].is_u64()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_too_large_to_write_fails_alone_and_the_link_goes_on() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .outbox_max_bytes(1024)
        .max_message_size(1024)
        .connect()
        .unwrap();
    let huge = json!({"Operator": "FireHuge", "blob": "x".repeat(1 << 20)});
    let r = client.send_with(huge, SendOptions::new()).unwrap();
    assert_eq!(r.wait(WAIT), Status::Failed(Failure::TooLarge));
    let after = client
        .send_with(json!({"Operator": "FireAfter"}), SendOptions::new())
        .unwrap();
    assert_eq!(after.wait(WAIT), Status::Confirmed);
    assert_eq!(server.next_text(WAIT).unwrap()["Operator"], "FireAfter");
    assert_eq!(client.stats().connects, 1);
}

/// Whoever sees a receipt's final status also sees it counted in the stats:
/// counters move before receipts (and replies) do.
#[test]
fn every_final_receipt_is_already_counted_in_the_stats() {
    init_log();
    let (server, _dedup) = dedup_server();
    let proxy = Proxy::start(server.addr);
    let acked = Client::builder(proxy.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    let receipts: Vec<_> = (0..2000)
        .map(|n| {
            acked
                .send_with(json!({"Operator": "Post", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(r.wait(WAIT), Status::Acknowledged);
        let counted = acked.stats().acknowledged;
        assert!(
            counted > i as u64,
            "receipt {i} acknowledged, {counted} counted"
        );
    }
    acked.close(WAIT).unwrap();

    // At most once: messages written into a link that dies unconfirmed.
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_secs(10))
        .connect()
        .unwrap();
    proxy.blackhole();
    let receipts: Vec<_> = (0..500)
        .map(|n| {
            client
                .send_with(json!({"Operator": "FirePost", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    assert!(wait_until(WAIT, || receipts
        .iter()
        .all(|r| r.status() == Status::Written)));
    let watcher = {
        let last = receipts[receipts.len() - 1].clone();
        let c = client.clone();
        thread::spawn(move || {
            let s = last.wait(WAIT);
            (s, c.stats().possibly_lost)
        })
    };
    proxy.cut();
    let (status, counted) = watcher.join().unwrap();
    assert_eq!(status, Status::Failed(Failure::PossiblyLost));
    assert_eq!(counted, 500, "the receipt said so before the count did");
}

/// The previous process of this client ran while the clock was ahead (its
/// ids are high), then the clock stepped back: the new process's ids are
/// lower than the highest the server has seen. A server following the
/// documented rule must still take them, since they belong to a new run.
#[test]
fn messages_of_a_restarted_client_whose_ids_went_back_are_not_taken_for_duplicates() {
    init_log();
    let (server, dedup) = dedup_server();
    // The earlier run's last message, as it was on the wire.
    let earlier = Client::builder(server.url()).connect().unwrap();
    let high = (1u64 << 53) - 1;
    earlier
        .send(json!({"msgRun": 12345, "msgId": high, "Operator": "Post", "n": 0}))
        .unwrap();
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 1));
    earlier.close(WAIT).unwrap();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    for n in 1..=3 {
        client.send(json!({"Operator": "Post", "n": n})).unwrap();
    }
    assert!(wait_until(WAIT, || client.stats().acknowledged == 3));
    let d = dedup.lock().unwrap();
    let ns: Vec<u64> = d
        .accepted
        .iter()
        .map(|v| v["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        [0, 1, 2, 3],
        "dropped as duplicates: {:?}",
        d.duplicates
    );
    assert_eq!(d.duplicates, 0);
    let runs: Vec<&Value> = d.accepted[1..].iter().map(|v| &v["msgRun"]).collect();
    assert!(
        runs.iter()
            .all(|r| r.is_u64() && **r == *runs[0] && **r != json!(12345)),
        "one new run on every message: {runs:?}"
    );
    assert!(d.accepted[1]["msgId"].as_u64().unwrap() < high);
    drop(d);
    client.close(WAIT).unwrap();
}

#[test]
fn a_message_field_named_like_the_run_field_is_replaced() {
    init_log();
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .message_run_field("run")
        .connect()
        .unwrap();
    client
        .send(json!({"Operator": "Post", "n": 0, "run": "mine"}))
        .unwrap();
    assert!(wait_until(WAIT, || client.stats().acknowledged == 1));
    let d = dedup.lock().unwrap();
    assert!(d.accepted[0]["run"].is_u64(), "{}", d.accepted[0]);
    assert!(d.accepted[0].get("msgRun").is_none());
    drop(d);
    client.close(WAIT).unwrap();
}

/// A deduplicating, acknowledging peer that cuts every connection after
/// reading `every` messages (TCP close, no Close frame). Returns its
/// address and the messages it accepted, in order.
fn cutting_peer(every: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let highest = Arc::new(Mutex::new(0u64));
    let a = accepted.clone();
    let (addr, _) = support::raw_server(move |_, stream| {
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        for _ in 0..every {
            let Ok(tungstenite::Message::Text(t)) = ws.read() else {
                return;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            let id = v["msgId"].as_u64().unwrap();
            let mut h = highest.lock().unwrap();
            if id == *h + 1 || *h == 0 {
                *h = id;
                a.lock().unwrap().push(v);
            }
            let ack = json!({"Operator": "Ack", "msgId": *h}).to_string();
            drop(h);
            if ws.send(tungstenite::Message::text(ack)).is_err() {
                return;
            }
        }
    });
    (addr, accepted)
}

#[test]
fn the_in_flight_window_bounds_what_cuts_make_to_write_again() {
    init_log();
    const N: usize = 10_000;
    let mut ratios = Vec::new();
    for window in [None, Some((usize::MAX, usize::MAX))] {
        let (addr, accepted) = cutting_peer(500);
        let builder = Client::builder(format!("ws://{addr}"))
            .at_least_once(true)
            .outbox_capacity(N)
            .outbox_max_bytes(64 << 20)
            .reconnect_min_delay(Duration::from_millis(1))
            .reconnect_max_delay(Duration::from_millis(5))
            .reconnect_healthy_after(Duration::from_millis(1));
        let builder = match window {
            Some((count, bytes)) => builder.in_flight_window(count, bytes),
            None => builder,
        };
        let client = builder.connect().unwrap();
        for n in 0..N {
            client.send(json!({"Operator": "Note", "n": n})).unwrap();
        }
        assert!(wait_until(Duration::from_secs(120), || {
            accepted.lock().unwrap().len() == N
        }));
        let in_order = accepted
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, v)| v["n"] == json!(i));
        assert!(in_order, "every message once, in order");
        let stats = client.stats();
        let ratio = stats.resent as f64 / N as f64;
        eprintln!(
            "window {window:?}: {} written for {N} accepted, {} re-sent ({ratio:.2} per message), {} connections",
            stats.messages_sent, stats.resent, stats.connects
        );
        ratios.push(ratio);
        client.close(WAIT).unwrap();
    }
    assert!(
        ratios[0] <= 2.0,
        "re-sent / accepted = {:.2} with the default window",
        ratios[0]
    );
}
