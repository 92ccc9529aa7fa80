//! Verifies `wss://` against a real TLS server whose certificate comes from a
//! generated CA: accepted when the CA is trusted, refused otherwise.
#![cfg(feature = "native-tls")]
mod support;

use std::time::Duration;

use longlink::{Client, Error};
use serde_json::json;
use support::{Server, ServerOpts, init_log, pki, tls_acceptor};

/// A TLS server with a certificate from a fresh CA, and its `wss://` URL.
fn tls_server() -> (support::Pki, Server, String) {
    init_log();
    let pki = pki();
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
