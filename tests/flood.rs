//! A server that floods faster than the handlers run: the client stops
//! reading (TCP pushes back on the server), memory stays bounded, nothing is
//! lost or reordered, and the pause is not mistaken for a dead peer.
//! Alone in its binary so the RSS it measures is its own.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::Client;
use support::*;

const FLOOD: u64 = 300_000;

#[test]
fn a_flooding_server_is_held_back_and_memory_stays_bounded() {
    init_log();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let (addr, _) = raw_server(move |_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        for n in 0..FLOOD {
            let text = format!(r#"{{"Operator":"Flood","n":{n},"pad":"{:032}"}}"#, n);
            if ws.write(tungstenite::Message::text(text)).is_err() {
                return;
            }
            if n % 64 == 63 && ws.flush().is_err() {
                return;
            }
            w.store(n + 1, Ordering::Relaxed);
        }
        let _ = ws.flush();
        let _ = ws.get_mut().flush();
        answer_ok(&mut ws);
    });
    let (rss0, _, _) = process_usage();
    let client = Client::builder(format!("ws://{addr}"))
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    let seen = Arc::new(Mutex::new((0u64, true)));
    let s = seen.clone();
    let slow_until = Instant::now() + Duration::from_millis(800);
    let _sub = client.on("Flood", move |m| {
        // Slow for the first 800 ms: far slower than the server writes.
        if Instant::now() < slow_until {
            std::thread::sleep(Duration::from_micros(500));
        }
        let n = m.get("n").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
        let mut g = s.lock().unwrap();
        g.1 &= n == g.0;
        g.0 += 1;
    });
    // Watch memory while the handler is slow.
    let mut peak = 0;
    while Instant::now() < slow_until {
        peak = peak.max(process_usage().0.saturating_sub(rss0));
        std::thread::sleep(Duration::from_millis(20)); // sampling period, bounded by slow_until
    }
    let handled_while_slow = seen.lock().unwrap().0;
    let written_while_slow = written.load(Ordering::Relaxed);
    eprintln!(
        "slow phase: server wrote {written_while_slow}, handlers ran {handled_while_slow}, \
         RSS peak +{peak} KiB"
    );
    assert!(
        written_while_slow < FLOOD,
        "the server was never held back ({written_while_slow} written)"
    );
    assert!(
        peak < 32 * 1024,
        "RSS grew by {peak} KiB while handlers lagged"
    );
    assert!(wait_until(Duration::from_secs(60), || seen
        .lock()
        .unwrap()
        .0
        == FLOOD));
    let (n, in_order) = *seen.lock().unwrap();
    assert_eq!(n, FLOOD);
    assert!(in_order, "messages were reordered or lost");
    assert_eq!(
        client.stats().connects,
        1,
        "the pause was taken for a dead peer"
    );
    client.close(Duration::from_secs(2)).unwrap();
}
