//! Verifies where a link connects: several endpoints (an attempt that fails
//! moves to the next, a link that works stays, and back again), and a URL
//! computed at every attempt by `url_with`, against real servers.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use longlink::{Client, LinkState};
use support::{Server, ServerOpts, dead_addr, init_log, raw_server, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// A builder that retries quickly.
fn quick(url: &str) -> longlink::ClientBuilder {
    Client::builder(url)
        .reconnect_min_delay(Duration::from_millis(20))
        .reconnect_max_delay(Duration::from_millis(100))
        .reconnect_spread(Duration::from_millis(20))
}

#[test]
fn a_dead_endpoint_is_passed_over_for_a_live_one() {
    init_log();
    let live = Server::start();
    let dead = format!("ws://{}/", dead_addr());
    let (tx, states) = std::sync::mpsc::channel();
    let client = quick(&dead)
        .endpoints([dead.clone(), live.url()])
        .on_state(move |s| {
            let _ = tx.send(s.clone());
        })
        .connect()
        .unwrap();
    let stats = client.stats();
    assert_eq!(stats.endpoint, live.url());
    assert!(stats.connect_failures >= 1);
    // The state said where each attempt went: the dead one, then the live one.
    let mut tried = Vec::new();
    while let Ok(s) = states.recv_timeout(WAIT) {
        match s {
            LinkState::Connecting { endpoint, .. } => tried.push(endpoint),
            LinkState::Open => break,
            _ => {}
        }
    }
    assert_eq!(tried.first(), Some(&0), "{tried:?}");
    assert_eq!(tried.last(), Some(&1), "{tried:?}");
    client.close(WAIT).unwrap();
}

#[test]
fn a_link_goes_to_the_next_endpoint_when_its_own_dies_and_comes_back() {
    init_log();
    let a = Server::start();
    let b = Server::start();
    let (a_addr, a_url, b_url) = (a.addr, a.url(), b.url());
    let client = quick(&a_url)
        .endpoints([a_url.clone(), b_url.clone()])
        .connect()
        .unwrap();
    assert_eq!(client.stats().endpoint, a_url);
    // A goes away: its retry fails, B takes over.
    drop(a);
    assert!(wait_until(WAIT, || client.stats().endpoint == b_url
        && client.state() == LinkState::Open));
    // A is back; the link stays on B while B works.
    let a = Server::start_on(a_addr, ServerOpts::default()).unwrap();
    let connects = client.stats().connects;
    b.kick_all();
    assert!(wait_until(WAIT, || client.stats().connects > connects
        && client.state() == LinkState::Open));
    assert_eq!(
        client.stats().endpoint,
        b_url,
        "a working endpoint is retried first"
    );
    // B goes away: back to A.
    drop(b);
    assert!(wait_until(WAIT, || client.stats().endpoint == a_url
        && client.state() == LinkState::Open));
    assert!(a.connections() >= 1);
    client.close(WAIT).unwrap();
}

#[test]
fn url_with_computes_the_url_once_per_attempt_and_a_bad_one_only_fails_that_attempt() {
    init_log();
    let server = Server::start();
    let dead = format!("ws://{}/", dead_addr());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let client = quick(&dead)
        .endpoints([dead.clone(), server.url()])
        .url_with(move |base| {
            // The first computed URL is not usable at all.
            match c.fetch_add(1, Ordering::SeqCst) {
                0 => "not a url".to_owned(),
                n => format!("{}/?token=t{n}", base.trim_end_matches('/')),
            }
        })
        .connect()
        .unwrap();
    let stats = client.stats();
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        stats.connects + stats.connect_failures,
        "one call per attempt: {stats:?}"
    );
    assert!(!stats.endpoint.contains("token"), "shown without its query");
    // A reconnect computes a fresh URL.
    let before = calls.load(Ordering::SeqCst);
    let connects = stats.connects;
    server.kick_all();
    assert!(wait_until(WAIT, || client.stats().connects > connects));
    assert!(calls.load(Ordering::SeqCst) > before);
    client.close(WAIT).unwrap();
}

#[test]
fn an_empty_or_bad_endpoint_list_is_refused_before_any_connection() {
    let none: [&str; 0] = [];
    let err = Client::builder("ws://example.com/")
        .endpoints(none)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("endpoints"), "{err}");
    let err = Client::builder("ws://example.com/")
        .endpoints(["ws://example.com/", "http://example.com/?secret=1"])
        .start()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ws://"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn an_endpoint_that_refuses_the_upgrade_is_passed_over_and_the_link_ends_only_when_all_refuse() {
    use std::io::{Read, Write};
    init_log();
    // Answers every upgrade with 404 (a misconfigured host).
    let refuse = |_: usize, mut stream: std::net::TcpStream| {
        let _ = stream.read(&mut [0; 4096]);
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let (a, refusals) = raw_server(refuse);
    let a = format!("ws://{a}/");
    let live = Server::start();
    let client = quick(&a)
        .endpoints([a.clone(), live.url()])
        .connect()
        .unwrap();
    assert_eq!(client.stats().endpoint, live.url());
    assert_eq!(refusals.load(Ordering::SeqCst), 1);
    client.close(WAIT).unwrap();
    // Every endpoint refuses: the link ends with the status, as with one.
    let (b, _) = raw_server(refuse);
    let b = format!("ws://{b}/");
    let err = quick(&a).endpoints([a.clone(), b]).connect().unwrap_err();
    assert!(
        matches!(err, longlink::Error::Rejected { status: 404 }),
        "{err:?}"
    );
}
