//! Caller misuse: each gets a clear error or just works; never a panic, a
//! deadlock, or a dead I/O thread.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use longlink::{Client, CloseReason, Error, LinkState, SendOptions};
use serde::ser::{Serialize, Serializer};
use serde_json::json;
use support::*;

fn ask(client: &Client, op: &str) -> String {
    client
        .request(json!({"Operator": op}), Duration::from_secs(5))
        .map(|m| m.operator().to_owned())
        .unwrap_or_else(|e| format!("{e}"))
}

/// A message whose serialization fails.
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this type refuses"))
    }
}

#[test]
fn messages_that_cannot_be_sent_are_refused_with_a_clear_error_and_the_link_goes_on() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    // Does not serialize: a map with non-string keys, a failing impl.
    let mut map = HashMap::new();
    map.insert(vec![1u8], 1);
    let err = client.send(&map).unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    assert!(err.to_string().contains("serialized"), "{err}");
    let err = client.send(Unserializable).unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    let err = client
        .request(Unserializable, Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(err, Error::Serialize(_)), "{err:?}");
    // Not an object; no operator; an operator that is not a string.
    for bad in [json!([1]), json!("text"), json!(5), json!(null)] {
        let err = client.send(bad.clone()).unwrap_err();
        assert!(matches!(err, Error::InvalidMessage { .. }), "{err:?}");
        assert_eq!(err.into_message(), Some(bad), "handed back");
    }
    for bad in [
        json!({"op": "x"}),
        json!({"Operator": 1}),
        json!({"Operator": null}),
    ] {
        let err = client
            .send_with(bad.clone(), SendOptions::new())
            .unwrap_err();
        assert!(err.to_string().contains("Operator"), "{err}");
        assert_eq!(err.into_message(), Some(bad));
    }
    assert_eq!(ask(&client, "Fine"), "FineOK");
    assert_eq!(client.stats().connects, 1);
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn after_close_every_call_is_refused_and_hands_the_message_back() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url()).connect().unwrap();
    let other = client.clone();
    client.close(Duration::from_secs(1)).unwrap();
    let msg = json!({"Operator": "Late", "n": 1});
    let err = other.send(msg.clone()).unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    assert_eq!(err.into_message(), Some(msg.clone()));
    let err = other
        .send_with(msg.clone(), SendOptions::new())
        .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    let err = other.request(msg, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
    // Closing again, from any clone, says so and changes nothing.
    let again = other.close(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(again, Error::Closed { message: None }),
        "{again:?}"
    );
    assert_eq!(other.state(), LinkState::Closed(CloseReason::Requested));
    other.reconnect_now();
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
}

#[test]
fn requests_from_inside_the_on_open_hook_work_through_the_link_and_the_client() {
    init_log();
    let server = Server::start();
    let slot: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let s = slot.clone();
    let (tx, rx) = unbounded();
    let client = Client::builder(server.url())
        .on_open(move |link| {
            let a = link.request(json!({"Operator": "ViaLink"}), Duration::from_secs(5))?;
            // The hook may also hold a `Client` (here once it exists): its
            // calls go past the login gate instead of waiting behind it.
            let b = match s.get() {
                Some(c) => c
                    .request(json!({"Operator": "ViaClient"}), Duration::from_secs(5))?
                    .operator()
                    .to_owned(),
                None => "none yet".to_owned(),
            };
            let _ = tx.send((a.operator().to_owned(), b));
            Ok(())
        })
        .connect()
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ("ViaLinkOK".to_owned(), "none yet".to_owned())
    );
    slot.set(client.clone()).unwrap();
    client.reconnect_now();
    server.kick_all();
    let started = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ("ViaLinkOK".to_owned(), "ViaClientOK".to_owned())
    );
    assert!(started.elapsed() < Duration::from_secs(4), "no deadlock");
    assert!(wait_until(Duration::from_secs(5), || client.state() == LinkState::Open));
    // The hook's clone keeps the link alive: close it explicitly.
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_handler_may_close_the_link_or_drop_the_last_client() {
    init_log();
    let server = Server::start();
    // close() from a handler returns and ends the link.
    let client = Client::builder(server.url()).connect().unwrap();
    let c = client.clone();
    let (tx, rx) = unbounded();
    let _sub = client.on("Stop", move |_| {
        let started = Instant::now();
        let r = c.close(Duration::from_secs(2));
        let _ = tx.send((r.is_ok(), started.elapsed()));
    });
    server.push(json!({"Operator": "Stop"}));
    let (ok, took) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(ok);
    assert!(
        took < Duration::from_secs(2),
        "close from a handler took {took:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || client.state()
        == LinkState::Closed(CloseReason::Requested)));
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
    drop(client);

    // The last clone dropped inside a handler: the link closes, no deadlock.
    let client = Client::builder(server.url()).connect().unwrap();
    let weak = client.downgrade();
    let slot = Arc::new(Mutex::new(Some(client.clone())));
    let s = slot.clone();
    let (tx, rx) = unbounded();
    let _sub = client.on("Drop", move |_| {
        let last = s.lock().unwrap().take();
        drop(last);
        let _ = tx.send(());
    });
    drop(client);
    assert!(weak.upgrade().is_some(), "the handler's clone keeps it");
    server.push(json!({"Operator": "Drop"}));
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || weak
        .upgrade()
        .is_none()));
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
}

#[test]
fn handlers_may_subscribe_and_unsubscribe_and_panicking_hooks_are_contained() {
    init_log();
    let server = Server::start();
    let panics = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = panics.clone();
    let client = Client::builder(server.url())
        .reconnect_min_delay(Duration::from_millis(10))
        .on_open(move |_| {
            if p.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                panic!("a hook that panics once");
            }
            Ok(())
        })
        .connect()
        .unwrap();
    assert!(
        panics.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the panic counted as a failed attempt"
    );
    let c = client.clone();
    let (tx, rx) = unbounded();
    let subs = Arc::new(Mutex::new(Vec::new()));
    let s = subs.clone();
    let _sub = client.on("Add", move |_| {
        let tx = tx.clone();
        s.lock().unwrap().push(c.on("Added", move |m| {
            let _ = tx.send(m.operator().to_owned());
        }));
    });
    let _state = client.on_state(|_| panic!("a state callback that panics"));
    server.push(json!({"Operator": "Add"}));
    assert!(wait_until(Duration::from_secs(5), || subs
        .lock()
        .unwrap()
        .len()
        == 1));
    server.push(json!({"Operator": "Added"}));
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "Added");
    let sub = subs.lock().unwrap().pop().unwrap();
    assert!(sub.unsubscribe());
    assert_eq!(ask(&client, "Alive"), "AliveOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn urls_are_checked_before_any_connection_and_shown_as_given() {
    init_log();
    let server = Server::start();
    // The scheme is case-insensitive.
    let upper = server.url().replacen("ws://", "WS://", 1);
    let client = Client::builder(upper).connect().unwrap();
    assert_eq!(ask(&client, "Hi"), "HiOK");
    client.close(Duration::from_secs(1)).unwrap();
    // Refused by the builder, before any thread or socket, naming the URL
    // as given (without its query or user info).
    for (url, shown, why) in [
        ("ws://127.0.0.1:99999", "url ws://127.0.0.1:99999", "65535"),
        ("ws://127.0.0.1:0", "url ws://127.0.0.1:0", "65535"),
        ("127.0.0.1:9003", "url 127.0.0.1:9003 ", "ws://"),
        ("ws:/x", "url ws:/x ", "ws://"),
        ("ws://:80/", "url ws://:80/ ", "host"),
        (
            "ws://u:pw@h:70000/?t=s3cret",
            "url ws://h:70000/?<redacted>",
            "65535",
        ),
    ] {
        let t0 = Instant::now();
        let err = Client::builder(url).connect().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidConfig(_)), "{url}: {err:?}");
        assert!(text.contains(shown) && text.contains(why), "{url}: {text}");
        assert!(!text.contains("s3cret") && !text.contains("pw@"), "{text}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{url}: no dialling");
        let err = Client::builder(url).start().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{url}: {err:?}");
    }
}

/// Run `f` on its own thread; its result, or None if it did not return
/// within `limit` (a hang) or panicked.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn duration_max_means_no_limit_everywhere_and_never_panics() {
    init_log();
    let server = Server::start();
    let max = Duration::MAX;
    let client = Client::builder(server.url())
        .heartbeat_interval(max)
        .heartbeat_timeout(max)
        .login_timeout(max)
        .request_timeout(max)
        .reconnect_max_delay(max)
        .reconnect_healthy_after(max)
        .drop_close_timeout(max)
        .outbox_overflow(longlink::Overflow::Block(max))
        .on_open(|_| Ok(()))
        .connect()
        .unwrap();
    // The I/O thread is alive: messages flow, requests are answered.
    client.send(json!({"Operator": "FireA"})).unwrap();
    assert_eq!(
        server.next_text(Duration::from_secs(5)).unwrap()["Operator"],
        "FireA"
    );
    let r = client
        .send_with(json!({"Operator": "FireB"}), SendOptions::new().ttl(max))
        .unwrap();
    assert_eq!(
        server.next_text(Duration::from_secs(5)).unwrap()["Operator"],
        "FireB"
    );
    assert!(r.wait(Duration::from_secs(5)).is_final() || r.status() == longlink::Status::Written);
    assert_eq!(ask(&client, "Get"), "GetOK");
    let c = client.clone();
    let got = within(Duration::from_secs(5), move || {
        c.request(json!({"Operator": "Get"}), Duration::MAX)
            .map(|m| m.operator().to_owned())
    });
    assert_eq!(got.map(|r| r.unwrap()), Some("GetOK".to_owned()));
    assert_eq!(client.state(), LinkState::Open);
    // close(Duration::MAX) flushes and returns; the link is closed for good.
    let c = client.clone();
    let closed = within(Duration::from_secs(5), move || c.close(Duration::MAX));
    assert!(matches!(closed, Some(Ok(()))), "{closed:?}");
    assert_eq!(client.state(), LinkState::Closed(CloseReason::Requested));
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
}

#[test]
fn a_connect_timeout_of_duration_max_connects_and_closes() {
    init_log();
    let server = Server::start();
    let client = Client::builder(server.url())
        .connect_timeout(Duration::MAX)
        .connect()
        .unwrap();
    assert_eq!(ask(&client, "Get"), "GetOK");
    drop(client);
    assert!(wait_until(Duration::from_secs(5), || server.live() == 0));
}
