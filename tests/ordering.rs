//! Verifies that messages leave in `send` order across many cuts and resets,
//! with nothing duplicated and every loss accounted for.
mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::Client;
use serde_json::json;
use support::{Proxy, Seen, Server, init_log, wait_until};

#[test]
fn ten_thousand_messages_arrive_in_order_through_twenty_cuts_and_resets() {
    init_log();
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    // (connection, seq) as the server saw them.
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let rx = server.seen.clone();
    let sink = seen.clone();
    std::thread::spawn(move || {
        while let Ok(s) = rx.recv_timeout(Duration::from_secs(120)) {
            if let Seen::Text(conn, v) = s {
                sink.lock()
                    .unwrap()
                    .push((conn, v["seq"].as_u64().unwrap()));
            }
        }
    });
    let client = Client::builder(proxy.url())
        .reconnect_min_delay(Duration::from_millis(5))
        .reconnect_max_delay(Duration::from_millis(50))
        .reconnect_healthy_after(Duration::from_millis(1))
        .outbox_capacity(20_000)
        .connect()
        .unwrap();
    const N: u64 = 10_000;
    let mut faults = 0;
    for seq in 0..N {
        client
            .send(json!({"Operator": "FireSeq", "seq": seq}))
            .unwrap();
        if seq % 450 == 449 {
            // Break the link while the last messages are still in flight.
            wait_until(Duration::from_secs(5), || client.stats().outbox_depth < 50);
            let connects = client.stats().connects;
            if faults % 2 == 0 {
                proxy.cut()
            } else {
                proxy.reset()
            }
            faults += 1;
            // The next fault hits the next connection.
            assert!(wait_until(Duration::from_secs(10), || client
                .stats()
                .connects
                > connects));
        }
    }
    assert!(faults >= 20, "only {faults} faults injected");
    let settled = wait_until(Duration::from_secs(30), || {
        let s = client.stats();
        s.outbox_depth == 0 && seen.lock().unwrap().len() as u64 + s.possibly_lost >= N
    });
    // Nothing more may arrive: the link is idle and open.
    client.close(Duration::from_secs(2)).unwrap();
    let stats = client.stats();
    let seen = seen.lock().unwrap().clone();
    assert!(settled, "got {} of {N}; {stats:?}", seen.len());

    // Each connection's stream is in order, and connections carry
    // successive parts of the sequence: the server, reading connections in
    // the order they opened, sees every message once and in send order.
    let mut by_conn: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (conn, seq) in &seen {
        by_conn.entry(*conn).or_default().push(*seq);
    }
    let in_order: Vec<u64> = by_conn.values().flatten().copied().collect();
    for w in in_order.windows(2) {
        assert!(
            w[0] < w[1],
            "out of order or duplicated: {} then {}",
            w[0],
            w[1]
        );
    }
    let got: HashSet<u64> = in_order.iter().copied().collect();
    let missing = N - got.len() as u64;
    assert!(
        missing <= stats.possibly_lost,
        "{missing} missing but only {} counted as possibly lost",
        stats.possibly_lost
    );
    assert!(stats.reconnects >= 20, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    eprintln!(
        "received {} of {N} on {} connections; possibly lost {}; reconnects {}",
        got.len(),
        by_conn.len(),
        stats.possibly_lost,
        stats.reconnects
    );
}
