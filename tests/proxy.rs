//! HTTP CONNECT proxies: `ws://` and `wss://` through a tunnel, basic
//! authentication, refusals, and the environment's proxy variables (read
//! only when asked).

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use longlink::{Client, Error, LinkState};
use serde_json::json;
use support::*;

fn ask(client: &Client) -> String {
    client
        .request(json!({"Operator": "Via"}), Duration::from_secs(5))
        .map(|m| m.operator().to_owned())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn ws_goes_through_the_proxy_on_every_reconnect() {
    init_log();
    let server = Server::start();
    let proxy = ConnectProxy::start(None);
    let client = Client::builder(server.url())
        .proxy(&format!("http://{}", proxy.addr))
        .reconnect_min_delay(Duration::from_millis(10))
        .connect()
        .unwrap();
    assert_eq!(ask(&client), "ViaOK");
    server.kick_all();
    assert!(wait_until(Duration::from_secs(5), || proxy
        .tunnels
        .load(Ordering::SeqCst)
        == 2
        && client.state() == LinkState::Open));
    assert_eq!(ask(&client), "ViaOK");
    let target = format!("127.0.0.1:{}", server.addr.port());
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(target.clone(), None), (target, None)]);
    client.close(Duration::from_secs(1)).unwrap();
}

#[cfg(feature = "native-tls")]
#[test]
fn wss_is_end_to_end_through_the_tunnel() {
    init_log();
    let pki = pki();
    let server = Server::start_with(ServerOpts {
        tls: Some(tls_acceptor(&pki)),
        ..Default::default()
    });
    let proxy = ConnectProxy::start(None);
    let client = Client::builder(format!("wss://localhost:{}", server.addr.port()))
        .tls_root_certificate_pem(pki.ca_pem.as_bytes())
        .proxy(&format!("http://{}", proxy.addr))
        .connect()
        .unwrap();
    assert_eq!(ask(&client), "ViaOK");
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, format!("localhost:{}", server.addr.port()));
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn basic_authentication_is_sent_and_a_refusal_is_a_clear_permanent_error() {
    init_log();
    let server = Server::start();
    // "alice:s3cret"
    let proxy = ConnectProxy::start(Some("YWxpY2U6czNjcmV0"));
    let url = |auth: &str| format!("http://{auth}{}", proxy.addr);
    let client = Client::builder(server.url())
        .proxy(&url("alice:s3cret@"))
        .connect()
        .unwrap();
    assert_eq!(ask(&client), "ViaOK");
    assert_eq!(
        proxy.seen.lock().unwrap()[0].1.as_deref(),
        Some("Basic YWxpY2U6czNjcmV0")
    );
    client.close(Duration::from_secs(1)).unwrap();
    for auth in ["", "alice:wrong@"] {
        let started = Instant::now();
        let err = Client::builder(server.url())
            .proxy(&url(auth))
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .unwrap_err();
        assert!(
            matches!(err, Error::ProxyRejected { status: 407, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("407"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4), "not retried");
        assert!(!format!("{err:?}").contains("wrong"));
    }
}

#[test]
fn an_unreachable_proxy_is_retried_and_named_in_the_error() {
    init_log();
    let server = Server::start();
    let dead = dead_addr();
    let client = Client::builder(server.url())
        .proxy(&format!("http://{dead}"))
        .reconnect_min_delay(Duration::from_millis(10))
        .reconnect_max_delay(Duration::from_millis(20))
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || client
        .stats()
        .connect_failures
        >= 3));
    assert!(!matches!(client.state(), LinkState::Closed(_)));
    client.close(Duration::from_secs(1)).unwrap();
    let err = Client::builder(server.url())
        .proxy(&format!("http://{dead}"))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap_err();
    assert!(err.to_string().contains(&format!("proxy {dead}")), "{err}");
}

#[test]
fn bad_proxy_urls_are_refused_at_build() {
    for bad in [
        "socks5://127.0.0.1:1080",
        "http://h:notaport",
        "http://h/path",
    ] {
        let err = Client::builder("ws://127.0.0.1:1")
            .proxy(bad)
            .start()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig(why) if why.contains("proxy")),
            "{err:?}"
        );
    }
}

/// The child half of the environment test: run by the test below in a
/// fresh process with the proxy variables set (they are process-global).
#[test]
fn proxy_env_child() {
    let Ok(mode) = std::env::var("LONGLINK_PROXY_CHILD") else {
        return;
    };
    let url = std::env::var("LONGLINK_PROXY_SERVER").unwrap();
    let mut b = Client::builder(url);
    if mode == "from_env" {
        b = b.proxy_from_env();
    }
    let client = b.connect().unwrap();
    assert_eq!(ask(&client), "ViaOK");
    client.close(Duration::from_secs(1)).unwrap();
}

#[test]
fn the_environment_is_honoured_only_when_asked_and_no_proxy_bypasses_it() {
    init_log();
    let server = Server::start();
    let proxy = ConnectProxy::start(None);
    let run = |mode: &str, no_proxy: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "proxy_env_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LONGLINK_PROXY_CHILD", mode)
            .env("LONGLINK_PROXY_SERVER", server.url())
            .env("HTTP_PROXY", format!("http://{}", proxy.addr))
            .env("NO_PROXY", no_proxy)
            .env_remove("http_proxy")
            .env_remove("no_proxy")
            .env_remove("ALL_PROXY")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        proxy.tunnels.load(Ordering::SeqCst)
    };
    assert_eq!(run("ignore", ""), 0, "the environment was read unasked");
    assert_eq!(run("from_env", ""), 1, "HTTP_PROXY was not used");
    assert_eq!(
        run("from_env", "example.org, 127.0.0.1"),
        1,
        "NO_PROXY ignored"
    );
    assert_eq!(server.connections(), 3);
}

#[test]
fn a_proxy_trickling_its_status_line_is_cut_at_the_connect_deadline() {
    use std::io::{Read, Write};
    init_log();
    let server = Server::start();
    // A "proxy" that reads the CONNECT and answers one byte every 50 ms:
    // 2 s in all, each byte well within a read timeout.
    let (addr, _) = raw_server(|_, mut stream| {
        let _ = stream.read(&mut [0; 4096]);
        for b in b"HTTP/1.1 200 Connection established\r\n\r\n" {
            std::thread::sleep(Duration::from_millis(50));
            if stream.write_all(&[*b]).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let t0 = Instant::now();
    let client = Client::builder(server.url())
        .proxy(&format!("http://{addr}"))
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
    // 300 ms, plus room for a loaded machine.
    assert!(took < Duration::from_millis(800), "{took:?}");
    let err = Client::builder(server.url())
        .proxy(&format!("http://{addr}"))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap_err();
    // (On a very loaded machine `connect` may give up before the attempt
    // reports its own error: then it says it timed out itself.)
    assert!(
        err.is_timeout()
            || err.to_string().contains("tunnel") && format!("{err:?}").contains("timed out"),
        "{err}: {err:?}"
    );
}
