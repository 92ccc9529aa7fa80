//! Verifies dead-peer detection (black hole), keep-alive against an idle
//! cutting server, that `reconnect_now` skips a long backoff, and that the
//! attempt limit counts attempts as documented.
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::{Client, CloseReason, LinkState};
use serde_json::json;
use support::{Proxy, Server, ServerOpts, dead_addr, init_log, wait_until};

#[test]
fn black_holed_peer_is_declared_dead_within_deadline_and_link_recovers() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let interval = Duration::from_millis(300);
    let timeout = Duration::from_millis(200);
    let client = Client::builder(proxy.url())
        .heartbeat_interval(interval)
        .heartbeat_timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(100))
        .connect()
        .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _sub = client.on_state(move |s| {
        let _ = tx.send((Instant::now(), s.clone()));
    });
    // Let it settle into an idle link that has exchanged a heartbeat.
    assert!(wait_until(Duration::from_secs(3), || client
        .stats()
        .last_rtt
        .is_some()));
    let start = Instant::now();
    proxy.blackhole();
    let dead_at = loop {
        let (at, s) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("no state change after black hole");
        if !matches!(s, LinkState::Open) {
            break at;
        }
    };
    let took = dead_at - start;
    // Worst case: the last inbound frame came just before the black hole.
    let bound = interval + timeout + Duration::from_millis(100);
    assert!(
        took <= bound,
        "declared dead after {took:?}, bound {bound:?}"
    );
    assert!(client.stats().heartbeat_misses >= 1);
    proxy.restore();
    assert!(wait_until(Duration::from_secs(10), || client.state()
        == LinkState::Open));
    client
        .request(json!({"Operator": "Ping"}), Duration::from_secs(5))
        .unwrap();
    eprintln!("black hole detected after {took:?} (bound {bound:?})");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn idle_cutting_server_keeps_the_link_when_heartbeat_is_shorter() {
    init_log();
    let cut = Duration::from_millis(400);
    let server = Server::start_with(ServerOpts {
        idle_cut: Some(cut),
        ..Default::default()
    });
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_millis(150))
        .heartbeat_timeout(Duration::from_millis(500))
        .connect()
        .unwrap();
    let until = Instant::now() + cut * 5;
    // Bounded: watch the link for five idle-cut periods.
    while Instant::now() < until {
        assert_eq!(client.state(), LinkState::Open);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.stats().connects, 1, "{:?}", client.stats());
    assert_eq!(server.connections(), 1);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn idle_cutting_server_does_cut_a_client_without_heartbeat() {
    // The control for the test above: the server really cuts idle links.
    init_log();
    let cut = Duration::from_millis(200);
    let server = Server::start_with(ServerOpts {
        idle_cut: Some(cut),
        ..Default::default()
    });
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_secs(60))
        .reconnect_min_delay(Duration::from_millis(10))
        .connect()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .connects
        >= 2));
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn app_heartbeat_goes_with_the_ping_and_its_reply_is_not_dispatched() {
    init_log();
    let server = Server::start();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_millis(100))
        .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
        .connect()
        .unwrap();
    let h = heard.clone();
    let _sub = client.on_any(move |m| h.lock().unwrap().push(m.operator().to_owned()));
    let first = server.next_text(Duration::from_secs(5)).unwrap();
    assert_eq!(first["Operator"], "Heart");
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .messages_received
        >= 2));
    client.send(json!({"Operator": "Visible"})).unwrap();
    assert!(wait_until(Duration::from_secs(5), || heard
        .lock()
        .unwrap()
        .contains(&"VisibleOK".to_owned())));
    assert!(!heard.lock().unwrap().iter().any(|op| op == "HeartOK"));
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn reconnect_now_skips_a_long_backoff() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_secs(60))
        .reconnect_max_delay(Duration::from_secs(120))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    // A flapping link (up < 5 s) backs off for at least a minute.
    proxy.cut();
    assert!(wait_until(Duration::from_secs(5), || matches!(
        client.state(),
        LinkState::Backoff { .. }
    )));
    match client.state() {
        LinkState::Backoff { delay, .. } => assert!(delay >= Duration::from_secs(60)),
        other => panic!("{other:?}"),
    }
    let asked = Instant::now();
    client.reconnect_now();
    assert!(wait_until(Duration::from_secs(5), || client.state() == LinkState::Open));
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(client.stats().connects, 2);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn server_close_frame_with_1000_leads_to_reconnect() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::from_millis(10))
        .connect()
        .unwrap();
    server.kick_all();
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .connects
        >= 2));
    assert!(wait_until(Duration::from_secs(5), || client.state() == LinkState::Open));
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn max_attempts_of_three_gives_up_after_three_failed_attempts() {
    init_log();
    let client = Client::builder(format!("ws://{}", dead_addr()))
        .reconnect_min_delay(Duration::from_millis(5))
        .reconnect_max_delay(Duration::from_millis(10))
        .reconnect_max_attempts(3)
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || matches!(
        client.state(),
        LinkState::Closed(_)
    )));
    match client.state() {
        LinkState::Closed(CloseReason::GaveUp { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.stats().connect_failures, 3);
    assert_eq!(client.stats().connects, 0);
    let _ = client.close(Duration::from_millis(100));
    // 0 attempts means nothing: refused with a clear error.
    let err = Client::builder(format!("ws://{}", dead_addr()))
        .reconnect_max_attempts(0)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("reconnect_max_attempts"), "{err}");
}

/// A peer that sends (so it looks alive) and reads, but answers no ping:
/// after its handshake it speaks raw frames and discards what it reads.
fn pongless_peer() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let (addr, _) = support::raw_server(|_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        let sock = ws.get_mut();
        let mut reader = sock.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        // An unmasked text frame, every 20 ms.
        let text = br#"{"Operator":"Tick"}"#;
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text);
        while sock.write_all(&frame).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    addr
}

#[test]
fn receipts_awaiting_a_pong_are_bounded_and_a_peer_that_never_pongs_is_declared_dead() {
    use longlink::{Failure, SendOptions, Status};
    init_log();
    let addr = pongless_peer();
    let client = Client::builder(format!("ws://{addr}"))
        .heartbeat_interval(Duration::from_millis(300))
        .heartbeat_timeout(Duration::from_millis(300))
        .reconnect_min_delay(Duration::from_secs(30))
        .outbox_capacity(100_000)
        .outbox_max_bytes(64 << 20)
        .connect()
        .unwrap();
    let receipts: Vec<_> = (0..70_000)
        .map(|n| {
            client
                .send_with(json!({"Operator": "FirePost", "n": n}), SendOptions::new())
                .unwrap()
        })
        .collect();
    // 65,536 are written and wait for a pong that never comes; the rest
    // wait in the outbox; then the link is declared dead, and the written
    // ones end as possibly lost.
    assert!(wait_until(Duration::from_secs(20), || matches!(
        client.state(),
        LinkState::Backoff { .. }
    )));
    let s = client.stats();
    assert_eq!(s.messages_sent, 65_536, "{s:?}");
    assert_eq!(s.possibly_lost, 65_536, "{s:?}");
    assert_eq!(s.outbox_depth, 70_000 - 65_536, "{s:?}");
    assert_eq!(receipts[0].status(), Status::Failed(Failure::PossiblyLost));
    assert_eq!(
        receipts[65_535].status(),
        Status::Failed(Failure::PossiblyLost)
    );
    assert_eq!(receipts[65_536].status(), Status::Queued);
}

#[test]
fn a_dropped_working_link_comes_back_within_its_spread() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .reconnect_healthy_after(Duration::from_millis(1))
        .connect()
        .unwrap();
    let mut took = Vec::new();
    for _ in 0..20 {
        let connects = client.stats().connects;
        // A working link: up past its healthy mark.
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        server.kick_all();
        assert!(wait_until(Duration::from_secs(5), || client
            .stats()
            .connects
            > connects));
        took.push(t.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    eprintln!(
        "first retry after a drop: median {median:?}, max {:?}",
        took[took.len() - 1]
    );
    // Uniform within the 250 ms spread: 125 ms at the median.
    assert!(median < Duration::from_millis(500), "median {median:?}");
    assert!(
        took.iter().any(|d| *d > Duration::from_millis(20)),
        "spread, not at once: {took:?}"
    );
    client.close(Duration::from_secs(1)).unwrap();
}
