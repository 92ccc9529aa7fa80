//! Soak: continuous at-least-once traffic and requests through random
//! faults for `LONGLINK_SOAK_SECS` (default 600). Ignored by default; run:
//!
//! ```text
//! cargo test --release --all-features --test soak -- --ignored --nocapture
//! ```
//!
//! At the end every message was accepted once and in order, memory stayed
//! flat (RSS after warm-up vs at the end), and no thread or descriptor
//! leaked (counted before the client started and after it closed).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use longlink::{Client, Overflow};
use serde_json::{Value, json};
use support::*;

/// What the server saw, without keeping the messages (memory stays flat).
#[derive(Default)]
struct Tally {
    /// The client's run (`msgRun`) and the highest id accepted in it.
    run: Option<u64>,
    highest_id: u64,
    next_seq: u64,
    out_of_order: u64,
    duplicates: u64,
}

fn soak_secs() -> u64 {
    std::env::var("LONGLINK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

#[test]
#[ignore = "a long run: see the module docs"]
fn soak_through_random_faults_loses_nothing_and_leaks_nothing() {
    init_log();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t = tally.clone();
    let server = Server::start_with(ServerOpts {
        handler: Some(Arc::new(move |v: &Value| {
            let Some(id) = v.get("msgId").and_then(Value::as_u64) else {
                let op = v["Operator"].as_str().unwrap_or_default();
                let mut reply = json!({"Operator": format!("{op}OK")});
                if let Some(r) = v.get("reqId") {
                    reply["reqId"] = r.clone();
                }
                return vec![reply];
            };
            let mut t = t.lock().unwrap();
            let run = v.get("msgRun").and_then(Value::as_u64);
            if run != t.run || id > t.highest_id {
                t.run = run;
                t.highest_id = id;
                if v["seq"].as_u64() != Some(t.next_seq) {
                    t.out_of_order += 1;
                }
                t.next_seq += 1;
            } else {
                t.duplicates += 1;
            }
            vec![json!({"Operator": "Ack", "msgId": t.highest_id})]
        })),
        forget_texts: true,
        ..Default::default()
    });
    let proxy = Proxy::start(server.addr);
    let (_, threads0, fds0) = process_usage();
    let client = Client::builder(proxy.url())
        .at_least_once(true)
        .correlation_field("reqId")
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(200))
        .reconnect_min_delay(Duration::from_millis(5))
        .reconnect_max_delay(Duration::from_millis(100))
        .outbox_overflow(Overflow::Block(Duration::from_secs(60)))
        .connect()
        .unwrap();
    let secs = soak_secs();
    let end = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    // Traffic: about 2,000 messages a second.
    let sender = {
        let (client, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    client
                        .send(json!({"Operator": "Post", "seq": seq, "pad": "x".repeat(64)}))
                        .unwrap();
                    seq += 1;
                }
                sent.store(seq, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10)); // pacing, not synchronisation
            }
        })
    };
    // Requests: some fail across faults (connection lost, timeout); count them.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let asker = {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match client.request(json!({"Operator": "Get"}), Duration::from_secs(2)) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                thread::sleep(Duration::from_millis(50)); // pacing
            }
        })
    };

    // Faults, one every 0.3-2 s, until the end.
    let mut rng = fastrand::Rng::new();
    let mut faults = [0u64; 7];
    // RSS at each tenth of the run: a leak shows as a steady climb.
    let started = Instant::now();
    let mut rss_series = Vec::new();
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(rng.u64(300..2000))); // the fault schedule
        let tenth = (started.elapsed().as_secs_f64() * 10.0 / secs as f64) as usize;
        if tenth > rss_series.len() && tenth <= 10 {
            rss_series.push(process_usage().0);
        }
        let kind = rng.usize(..faults.len());
        faults[kind] += 1;
        match kind {
            0 => proxy.cut(),
            1 => proxy.reset(),
            2 => {
                proxy.blackhole();
                proxy.restore();
            }
            3 => {
                proxy.stall();
                thread::sleep(Duration::from_millis(rng.u64(50..400)));
                proxy.restore();
            }
            4 => {
                proxy.delay(Duration::from_millis(rng.u64(1..80)));
                thread::sleep(Duration::from_millis(500));
                proxy.restore();
            }
            5 => server.kick_all(),
            _ => server.reset_all(),
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    asker.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    let (rss_end, _, _) = process_usage();
    let drained = wait_until(Duration::from_secs(60), || {
        let s = client.stats();
        s.outbox_depth == 0 && s.awaiting_ack == 0
    });
    let stats = client.stats();
    client.close(Duration::from_secs(5)).unwrap();
    drop(client);
    let settled = wait_until(Duration::from_secs(10), || {
        let (_, th, fd) = process_usage();
        th <= threads0 && fd <= fds0
    });
    let (_, threads1, fds1) = process_usage();
    let t = tally.lock().unwrap();
    // After warm-up: the first tenth.
    let rss_warm = rss_series.first().copied().unwrap_or(rss_end);
    eprintln!(
        "soak {secs} s: {total} sent, {} accepted, {} duplicates dropped, {} out of order; \
         faults cut/reset/blackhole/stall/delay/kick/server-reset {faults:?}; \
         {} reconnects, {} re-sent; requests {} ok, {} failed; \
         RSS after warm-up {rss_warm} KiB, at the end {rss_end} KiB (each tenth: {rss_series:?}); \
         threads {threads0} -> {threads1}, descriptors {fds0} -> {fds1}",
        t.next_seq,
        t.duplicates,
        t.out_of_order,
        stats.reconnects,
        stats.resent,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(drained, "not everything acknowledged: {stats:?}");
    assert_eq!(t.next_seq, total, "messages lost");
    assert_eq!(t.out_of_order, 0);
    // Only requests can be possibly lost (their callers got ConnectionLost);
    // at-least-once messages are re-sent.
    assert!(
        stats.possibly_lost <= failed.load(Ordering::Relaxed),
        "{stats:?}"
    );
    assert!(
        rss_end <= rss_warm + 16 * 1024,
        "RSS grew from {rss_warm} to {rss_end} KiB"
    );
    assert!(
        settled,
        "threads {threads0} -> {threads1}, fds {fds0} -> {fds1}"
    );
    assert!(faults.iter().sum::<u64>() >= secs / 2);
}
