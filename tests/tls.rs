//! Verifies `wss://` against a real TLS server whose certificate comes from a
//! generated CA: accepted when the CA is trusted; refused with a clear,
//! permanent error for an untrusted CA, a wrong host name or an expired
//! certificate; accepted anyway only by the named opt-in, which warns.
#![cfg(feature = "native-tls")]
mod support;

use std::time::Duration;

use longlink::{Client, Error};
use serde_json::json;
use support::{
    Pki, Server, ServerOpts, capture_log, pki, pki_for, raw_server, tls_acceptor, wait_until,
};

/// A TLS server with a certificate from a fresh CA, and its `wss://` URL.
fn tls_server() -> (Pki, Server, String) {
    tls_server_with(pki())
}

fn tls_server_with(pki: Pki) -> (Pki, Server, String) {
    capture_log();
    let server = Server::start_with(ServerOpts {
        tls: Some(tls_acceptor(&pki)),
        ..Default::default()
    });
    let url = format!("wss://localhost:{}", server.addr.port());
    (pki, server, url)
}

#[test]
fn wss_works_with_a_trusted_generated_ca() {
    let (pki, _server, url) = tls_server();
    let client = Client::builder(url)
        .tls_root_certificate_pem(pki.ca_pem.as_bytes())
        .connect()
        .unwrap();
    let reply = client
        .request(json!({"Operator": "Secure"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(reply.operator(), "SecureOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn wss_refuses_an_untrusted_certificate_with_a_clear_error() {
    let (_pki, _server, url) = tls_server();
    let started = std::time::Instant::now();
    let err = Client::builder(url)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    // A bad certificate is permanent: no retrying until the timeout.
    assert!(started.elapsed() < Duration::from_secs(4));
    let cause = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(cause.contains("certificate"), "{cause}");
}

/// `connect` with the CA trusted fails at once (no retries) with a TLS
/// error whose description names the problem.
fn refused(pki: &Pki, url: &str, why: &[&str]) {
    let started = std::time::Instant::now();
    let err = Client::builder(url)
        .tls_root_certificate_pem(pki.ca_pem.as_bytes())
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "not retried");
    let cause = std::error::Error::source(&err)
        .map(|s| s.to_string().to_lowercase())
        .unwrap_or_default();
    assert!(why.iter().any(|w| cause.contains(w)), "{cause}");
    // A started client ends the link with the cause in its reason.
    let client = Client::builder(url)
        .tls_root_certificate_pem(pki.ca_pem.as_bytes())
        .start()
        .unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || matches!(
        client.state(),
        longlink::LinkState::Closed(_)
    )));
    let state = format!("{:?}", client.state()).to_lowercase();
    assert!(why.iter().any(|w| state.contains(w)), "{state}");
}

#[test]
fn wss_refuses_a_certificate_for_another_host_name() {
    let (pki, _server, url) = tls_server_with(pki_for(&["other.example"], false));
    refused(&pki, &url, &["hostname", "host name"]);
}

#[test]
fn wss_refuses_an_expired_certificate() {
    let (pki, _server, url) = tls_server_with(pki_for(&["localhost"], true));
    refused(&pki, &url, &["expired"]);
}

#[test]
fn accepting_invalid_certificates_is_an_explicit_opt_in_that_warns_at_connect() {
    let (_pki, _server, url) = tls_server_with(pki_for(&["other.example"], true));
    let log = capture_log();
    let client = Client::builder(url.as_str())
        .danger_accept_invalid_certificates(true)
        .connect()
        .unwrap();
    let reply = client
        .request(json!({"Operator": "Anyway"}), Duration::from_secs(5))
        .unwrap();
    assert_eq!(reply.operator(), "AnywayOK");
    let warned = log.lock().unwrap().iter().any(|r| {
        r.level == log::Level::Warn
            && r.text.contains("danger_accept_invalid_certificates")
            && r.text.contains(&url)
    });
    assert!(warned, "no warning at connect");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn a_tls_server_trickling_its_handshake_is_cut_at_the_connect_deadline() {
    use std::io::{Read, Write};
    capture_log();
    // After the ClientHello: a 16 KiB handshake record announced, then
    // one byte every 50 ms (each well within a read timeout) for 3 s.
    let (addr, _) = raw_server(|_, mut stream| {
        let _ = stream.read(&mut [0; 4096]);
        if stream.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
            return;
        }
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(50));
            if stream.write_all(&[0]).is_err() {
                return;
            }
        }
    });
    let url = format!("wss://localhost:{}", addr.port());
    let t0 = std::time::Instant::now();
    let client = Client::builder(url.as_str())
        .connect_timeout(Duration::from_millis(300))
        .reconnect_min_delay(Duration::from_secs(30))
        .reconnect_max_delay(Duration::from_secs(30))
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || client
        .stats()
        .connect_failures
        >= 1));
    let took = t0.elapsed();
    let _ = client.close(Duration::from_millis(100));
    // 300 ms, plus room for a loaded machine; the trickle lasts 3 s.
    assert!(took < Duration::from_millis(800), "{took:?}");
    let err = Client::builder(url.as_str())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap_err();
    // (On a very loaded machine `connect` may give up before the attempt
    // reports its own error: then it says it timed out itself.)
    assert!(
        err.is_timeout() || format!("{err:?}").contains("timed out"),
        "{err}: {err:?}"
    );
}
