//! Hostile peers: frames no client should get and handshakes that go
//! wrong. Each is a counted event or a clear error; never a panic, never a
//! dead I/O thread.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::{Client, CloseReason, Error, InvalidFrame, LinkState};
use serde_json::json;
use support::*;

/// A server frame (unmasked) with this opcode and payload.
fn raw_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// A builder that retries every 10-20 ms.
fn quick(url: impl Into<String>) -> longlink::ClientBuilder {
    Client::builder(url)
        .reconnect_min_delay(Duration::from_millis(10))
        .reconnect_max_delay(Duration::from_millis(20))
}

/// Wait until the server has seen `n` connection attempts.
fn attempts(count: &std::sync::atomic::AtomicUsize, n: usize) -> bool {
    wait_until(Duration::from_secs(10), || {
        count.load(Ordering::SeqCst) >= n
    })
}

fn wait_state(client: &Client, want: impl Fn(&LinkState) -> bool) -> bool {
    wait_until(Duration::from_secs(10), || want(&client.state()))
}

#[test]
fn bad_frames_of_every_kind_are_counted_and_the_link_goes_on() {
    init_log();
    let (addr, _) = raw_server(|_, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        let frames = [
            raw_frame(1, b"not json"),
            raw_frame(1, b"[1, 2]"),
            raw_frame(1, b"\"a string\""),
            raw_frame(1, br#"{"no": "operator"}"#),
            raw_frame(1, br#"{"Operator": 7}"#),
            raw_frame(1, br#"{"Operator": null}"#),
            raw_frame(1, b"{\"Operator\": \"\xff\xfe\"}"),
            raw_frame(1, b""),
            raw_frame(2, &[0, 159, 146, 150]),
            raw_frame(2, b""),
            raw_frame(1, br#"{"Operator": "Hello"}"#),
        ];
        for f in frames {
            ws.get_mut().write_all(&f).unwrap();
        }
        answer_ok(&mut ws);
    });
    let client = Client::builder(format!("ws://{addr}")).start().unwrap();
    let bad = Arc::new(Mutex::new(Vec::new()));
    let b = bad.clone();
    let _s = client.on_invalid(move |f| b.lock().unwrap().push(f.clone()));
    let (tx, rx) = crossbeam_channel::unbounded();
    let _h = client.on("Hello", move |m| {
        let _ = tx.send(m.operator().to_owned());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "Hello");
    let bad = bad.lock().unwrap().clone();
    assert_eq!(bad.len(), 10, "{bad:?}");
    let texts = bad
        .iter()
        .filter(|f| matches!(f, InvalidFrame::Text { .. }))
        .count();
    let binaries = bad
        .iter()
        .filter(|f| matches!(f, InvalidFrame::Binary(_)))
        .count();
    let not_utf8 = bad
        .iter()
        .filter(|f| matches!(f, InvalidFrame::NotUtf8))
        .count();
    assert_eq!((texts, binaries, not_utf8), (7, 2, 1), "{bad:?}");
    let stats = client.stats();
    assert_eq!(stats.invalid_frames, 10);
    assert_eq!(stats.connects, 1, "no bad frame cost the connection");
    let reply = client
        .request(json!({"Operator": "Still"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(reply.operator(), "StillOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_frame_over_the_size_limit_resets_the_link_without_being_buffered() {
    init_log();
    let (addr, count) = raw_server(|n, stream| {
        let mut ws = tungstenite::accept(stream).unwrap();
        match n {
            // A header announcing 2^62 bytes: refused from the header alone.
            0 => {
                let mut f = vec![0x81, 127];
                f.extend_from_slice(&(1u64 << 62).to_be_bytes());
                let _ = ws.get_mut().write_all(&f);
                let _ = ws.get_mut().read(&mut [0; 64]);
            }
            // A real 1 MiB frame, four times the limit.
            1 => {
                let big = format!(r#"{{"Operator":"Big","pad":"{}"}}"#, "x".repeat(1 << 20));
                let _ = ws.get_mut().write_all(&raw_frame(1, big.as_bytes()));
                let _ = ws.get_mut().read(&mut [0; 64]);
            }
            _ => answer_ok(&mut ws),
        }
    });
    let (rss0, _, _) = process_usage();
    let client = quick(format!("ws://{addr}"))
        .max_message_size(256 * 1024)
        .start()
        .unwrap();
    assert!(attempts(&count, 3));
    assert!(wait_state(&client, |s| *s == LinkState::Open));
    let reply = client
        .request(json!({"Operator": "After"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(reply.operator(), "AfterOK");
    let stats = client.stats();
    assert!(stats.connects >= 3, "{stats:?}");
    let (rss1, _, _) = process_usage();
    // The 2^62-byte frame was never allocated; the 1 MiB one was not kept.
    assert!(
        rss1.saturating_sub(rss0) < 16 * 1024,
        "RSS grew by {} KiB",
        rss1.saturating_sub(rss0)
    );
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_server_that_never_completes_the_handshake_is_timed_out_and_retried() {
    init_log();
    let (addr, count) = raw_server(|_, mut stream| {
        // Read the upgrade request and never answer; hold the socket.
        let _ = stream.read(&mut [0; 4096]);
        std::thread::sleep(Duration::from_secs(5));
    });
    let client = quick(format!("ws://{addr}"))
        .connect_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    assert!(attempts(&count, 3));
    assert!(!matches!(
        client.state(),
        LinkState::Open | LinkState::Closed(_)
    ));
    let err = client
        .request(json!({"Operator": "X"}), Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let connect = Client::builder(format!("ws://{addr}"))
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .unwrap_err();
    assert!(
        connect.to_string().contains("handshake") && format!("{connect:?}").contains("timed out"),
        "{connect}: {connect:?}"
    );
    client.close(Duration::from_secs(1)).unwrap();
}

/// A server answering the upgrade with this HTTP status.
fn http_status_server(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, count) = raw_server(move |_, mut stream| {
        let _ = stream.read(&mut [0; 4096]);
        let body = "go away";
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    (format!("ws://{addr}"), count)
}

#[test]
fn an_upgrade_answered_with_5xx_is_retried_and_4xx_ends_the_link_with_the_status() {
    init_log();
    let (url, count) = http_status_server("503 Service Unavailable");
    let client = quick(url.as_str()).start().unwrap();
    assert!(attempts(&count, 3));
    assert!(!matches!(client.state(), LinkState::Closed(_)));
    client.close(Duration::from_secs(1)).unwrap();
    let err = Client::builder(url.as_str())
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 503 }), "{err:?}");

    let (url, count) = http_status_server("401 Unauthorized");
    let err = Client::builder(url.as_str()).connect().unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 401 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "server refused the WebSocket upgrade: HTTP 401"
    );
    let client = Client::builder(url.as_str()).start().unwrap();
    assert!(wait_state(&client, |s| matches!(s, LinkState::Closed(_))));
    match client.state() {
        LinkState::Closed(CloseReason::Fatal(why)) => assert!(why.contains("401"), "{why}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 2, "a 401 is not retried");
    assert!(matches!(
        client.send(json!({"Operator": "X"})),
        Err(Error::Closed { .. })
    ));
}

#[test]
fn a_server_that_closes_during_the_handshake_is_retried_until_it_answers() {
    init_log();
    let (addr, count) = raw_server(|n, mut stream| match n {
        // Close before reading anything, after half a request, after half a response.
        0 => drop(stream),
        1 => {
            let _ = stream.read(&mut [0; 16]);
        }
        2 => {
            let _ = stream.read(&mut [0; 4096]);
            let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgr");
        }
        _ => {
            let mut ws = tungstenite::accept(stream).unwrap();
            answer_ok(&mut ws);
        }
    });
    let client = quick(format!("ws://{addr}")).start().unwrap();
    let reply = client
        .request(json!({"Operator": "Hi"}), Duration::from_secs(10))
        .unwrap();
    assert_eq!(reply.operator(), "HiOK");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert_eq!(client.stats().connects, 1);
    client.close(Duration::from_secs(1)).unwrap();
}

/// Start a client with a 300 ms `connect_timeout` and a long backoff, and
/// return how long its first attempt took and whether it connected.
fn first_attempt(url: String) -> (Duration, bool) {
    let t0 = std::time::Instant::now();
    let client = Client::builder(url)
        .connect_timeout(Duration::from_millis(300))
        .reconnect_min_delay(Duration::from_secs(30))
        .reconnect_max_delay(Duration::from_secs(30))
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let s = client.stats();
        s.connects + s.connect_failures >= 1
    }));
    let took = t0.elapsed();
    let connected = client.stats().connects == 1;
    let _ = client.close(Duration::from_millis(100));
    (took, connected)
}

#[test]
fn a_trickled_upgrade_answer_is_cut_at_the_connect_deadline() {
    init_log();
    // Each header line arrives well within a read timeout; the whole
    // answer takes 3 s.
    let (addr, _) = raw_server(|_, mut stream| {
        let _ = stream.read(&mut [0; 4096]);
        let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\n");
        for i in 0..60 {
            std::thread::sleep(Duration::from_millis(50));
            if write!(stream, "X-Pad-{i}: a\r\n").is_err() {
                return;
            }
        }
    });
    let (took, connected) = first_attempt(format!("ws://{addr}"));
    assert!(!connected);
    // 300 ms, plus room for a loaded machine; the trickle lasts 3 s.
    assert!(took < Duration::from_millis(800), "{took:?}");
    let err = Client::builder(format!("ws://{addr}"))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap_err();
    // (On a very loaded machine `connect` may give up before the attempt
    // reports its own error: then it says it timed out itself.)
    assert!(
        err.is_timeout()
            || err.to_string().contains("handshake") && format!("{err:?}").contains("timed out"),
        "{err}: {err:?}"
    );
}
