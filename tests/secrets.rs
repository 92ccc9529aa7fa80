//! A secret planted everywhere a secret travels (URL query, headers, proxy
//! credentials, login, payloads both ways, error replies, invalid frames)
//! must appear in no log record of longlink at any level, in no record of
//! any crate at debug level or above, and in no `Debug` or `Display` output
//! — except the `Display` of an error reply, which shows the server's
//! reason fields on purpose (see `Error::Remote`).
//!
//! Also: a server that never acknowledges at-least-once messages is named
//! in one warning, with what it must send.
//!
//! One exception, outside longlink: tungstenite's *trace* level prints the
//! raw upgrade request and every frame. This test records that it does, so
//! the README's advice (keep `tungstenite` at debug or lower) stays true.

mod support;

use std::time::Duration;

use longlink::{Client, Error, Expect};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "pl4nted-S3CRET-7f3a";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Every form the secret could leak in.
fn leaks(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains(&SECRET.to_lowercase())
        || lower.contains(&hex(SECRET))
        // "u:SECRET" as the proxy's basic token, in base64.
        || text.contains("dTpwbDRudGVkLVMzQ1JFVC03ZjNh")
}

fn secret_server() -> Server {
    Server::start_with(ServerOpts {
        handler: Some(std::sync::Arc::new(|v: &Value| {
            let op = v["Operator"].as_str().unwrap_or_default().to_owned();
            let mut reply = match op.as_str() {
                "userLogin" => json!({"Operator": "LoginOK", "openId": SECRET}),
                "Fail" => json!({"Operator": "FailError", "reason": SECRET}),
                _ => json!({"Operator": format!("{op}OK"), "echo": SECRET}),
            };
            if let Some(id) = v.get("msgId") {
                return vec![reply, json!({"Operator": "Ack", "msgId": id})];
            }
            if let Some(id) = v.get("reqId") {
                reply["reqId"] = id.clone();
            }
            vec![reply]
        })),
        ..Default::default()
    })
}

#[test]
fn a_planted_secret_reaches_no_log_record_and_no_debug_output() {
    let log = capture_log();
    let server = secret_server();
    let faults = Proxy::start(server.addr);
    let connect_proxy = ConnectProxy::start(Some("dTpwbDRudGVkLVMzQ1JFVC03ZjNh"));
    let url = format!(
        "ws://127.0.0.1:{}/ws?token={SECRET}&v=1",
        faults.addr.port()
    );
    let builder = Client::builder(url.as_str())
        .header("Authorization", format!("Bearer {SECRET}"))
        .headers_with(|| vec![("X-Session".into(), SECRET.into())])
        .proxy(&format!("http://u:{SECRET}@{}", connect_proxy.addr))
        .heartbeat_interval(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(200))
        .reconnect_min_delay(Duration::from_millis(10))
        .app_heartbeat(json!({"Operator": "Heart", "t": SECRET}), "HeartOK")
        .at_least_once(true)
        .on_open(|link| {
            link.request_expect(
                json!({"Operator": "userLogin", "userCode": SECRET}),
                Expect::reply("LoginOK"),
                Duration::from_secs(5),
            )?;
            Ok(())
        });
    let mut shown = vec![format!("{builder:?}")];
    let client = builder.connect().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _sub = client.on_any(move |m| {
        let _ = tx.send(format!("{m:?}"));
    });
    let _bad = client.on_invalid(|f| log::debug!("app saw {f:?}"));
    for n in 0..20 {
        client
            .send(json!({"Operator": "Post", "n": n, "body": SECRET}))
            .unwrap();
    }
    let ok = client
        .request(
            json!({"Operator": "Get", "q": SECRET}),
            Duration::from_secs(5),
        )
        .unwrap();
    shown.push(format!("{ok:?}"));
    let err = client
        .request(
            json!({"Operator": "Fail", "q": SECRET}),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Remote(_)));
    shown.push(format!("{err:?}"));
    // The one deliberate exception: `Display` of an error reply shows its
    // conventional reason fields (the server's words for a human, where
    // the application prints the error), never in a log or in `Debug`.
    assert!(err.to_string().contains(SECRET), "{err}");
    server.push(json!({"Operator": "Notice", "text": SECRET}));
    server.push(json!(SECRET));
    server.push(json!([SECRET]));
    shown.push(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    // A reconnect: cut, re-login, resend.
    faults.cut();
    assert!(wait_until(Duration::from_secs(10), || client
        .stats()
        .connects
        >= 2));
    for n in 20..30 {
        client
            .send(json!({"Operator": "Post", "n": n, "body": SECRET}))
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || client
        .stats()
        .acknowledged
        == 30));
    shown.push(format!(
        "{client:?} {:?} {:?}",
        client.stats(),
        client.state()
    ));
    let err = client.send(Value::from(vec![SECRET])).unwrap_err();
    shown.push(format!("{err:?} / {err}"));
    let closed = client.close(Duration::from_secs(2));
    assert!(closed.is_ok(), "{closed:?} {:?}", client.stats());
    let err = client
        .send(json!({"Operator": "Late", "body": SECRET}))
        .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }));
    shown.push(format!("{err:?} / {err}"));

    for s in &shown {
        assert!(!leaks(s), "Debug/Display leaked: {s}");
    }
    let records = log.lock().unwrap().clone();
    let ours = records
        .iter()
        .filter(|r| r.target.starts_with("longlink"))
        .count();
    assert!(ours > 10, "the capture saw only {ours} longlink records");
    assert!(
        records
            .iter()
            .any(|r| r.text.contains("connected to ws://127.0.0.1")
                && r.text.contains("?<redacted>")),
        "no connect record"
    );
    for r in &records {
        let strict = r.target.starts_with("longlink") || r.level <= log::Level::Debug;
        assert!(
            !(strict && leaks(&r.text)),
            "{} record of {} leaked: {}",
            r.level,
            r.target,
            r.text
        );
    }
    // The documented exception: tungstenite's own trace level.
    let tungstenite_trace = records.iter().any(|r| {
        r.target.starts_with("tungstenite") && r.level == log::Level::Trace && leaks(&r.text)
    });
    eprintln!(
        "{} records captured; tungstenite trace prints traffic: {tungstenite_trace}",
        records.len()
    );
}

#[test]
fn a_server_that_never_acknowledges_is_named_once_in_a_warning() {
    let log = capture_log();
    // The testkit's plain server answers requests but sends no `Ack`.
    let server = Server::start();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .outbox_capacity(20)
        .connect()
        .unwrap();
    let warnings = || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|r| r.level == log::Level::Warn && r.text.contains("no acknowledgement"))
            .map(|r| r.text.clone())
            .collect::<Vec<_>>()
    };
    let mut refused = false;
    for n in 0..40 {
        if client.send(json!({"Operator": "Note", "n": n})).is_err() {
            refused = true;
        }
    }
    assert!(refused, "the outbox filled");
    assert!(wait_until(Duration::from_secs(5), || !warnings().is_empty()));
    let got = warnings();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains(r#""Operator": "Ack""#) && got[0].contains(r#""msgId""#),
        "names what the server must send: {}",
        got[0]
    );
    drop(client);
}
