//! Test support: the crate's `testkit` (server, fault proxy), plus what
//! only this crate's tests need: TLS material from a generated CA, logging.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

pub use longlink::testkit::{
    Dedup, Handler, Proxy, Seen, Server, ServerOpts, dedup_handler, ok_handler, process_usage,
    wait_until,
};

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A CA and a server certificate for `localhost` / 127.0.0.1, in PEM.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    pki_for(&["localhost", "127.0.0.1"], false)
}

/// A CA and a server certificate for these names; `expired`: valid only
/// in 2020.
pub fn pki_for(names: &[&str], expired: bool) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "longlink test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[cfg(feature = "native-tls")]
pub fn tls_acceptor(pki: &Pki) -> native_tls::TlsAcceptor {
    let id =
        native_tls::Identity::from_pkcs8(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    native_tls::TlsAcceptor::new(id).unwrap()
}

/// A deduplicating server that acknowledges.
pub fn dedup_server() -> (Server, Arc<Mutex<Dedup>>) {
    let state = Arc::new(Mutex::new(Dedup {
        ack: true,
        ..Dedup::default()
    }));
    let server = Server::start_with(ServerOpts {
        handler: Some(dedup_handler(state.clone(), ok_handler())),
        ..ServerOpts::default()
    });
    (server, state)
}

/// As [`dedup_server`], acknowledging nothing (messages are still accepted).
pub fn silent_dedup_server() -> (Server, Arc<Mutex<Dedup>>) {
    let (server, state) = dedup_server();
    state.lock().unwrap().ack = false;
    (server, state)
}

/// An at-least-once client with three messages (`n` 0 to 2) written to a
/// server that never acknowledges them.
pub fn three_unacknowledged() -> (Server, longlink::Client) {
    let (server, dedup) = silent_dedup_server();
    let client = longlink::Client::builder(server.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    for n in 0..3 {
        client
            .send(serde_json::json!({"Operator": "Post", "n": n}))
            .unwrap();
    }
    let written = || dedup.lock().unwrap().accepted.len() == 3;
    assert!(wait_until(std::time::Duration::from_secs(10), written));
    (server, client)
}

/// A loopback address where nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A loopback listener whose every accepted connection runs
/// `script(n, stream)` on its own thread (`n` counts connections from 0).
/// For peers the testkit server cannot play: raw frames, broken handshakes.
/// Returns the address and the connection count.
pub fn raw_server(
    script: impl Fn(usize, std::net::TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let script = Arc::new(script);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            std::thread::spawn(move || script(n, stream));
        }
    });
    (addr, count)
}

/// After a handshake: answer every text `{"Operator": X, …}` with
/// `{"Operator": "XOK", "reqId": …}` until the peer goes.
pub fn answer_ok(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) {
    while let Ok(m) = ws.read() {
        if let tungstenite::Message::Text(t) = m
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            && let Some(op) = v.get("Operator").and_then(|o| o.as_str())
        {
            let mut reply = serde_json::json!({"Operator": format!("{op}OK")});
            if let Some(id) = v.get("reqId") {
                reply["reqId"] = id.clone();
            }
            if ws
                .send(tungstenite::Message::text(reply.to_string()))
                .is_err()
            {
                return;
            }
        }
    }
}

/// One log record, as a capturing logger saw it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: log::Level,
    pub target: String,
    pub text: String,
}

static CAPTURED: std::sync::OnceLock<Mutex<Vec<Captured>>> = std::sync::OnceLock::new();

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Some(records) = CAPTURED.get() {
            records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Captured {
                    level: r.level(),
                    target: r.target().to_owned(),
                    text: r.args().to_string(),
                });
        }
    }
    fn flush(&self) {}
}

/// Capture every log record of this test binary, at every level and from
/// every crate (instead of `init_log`; one logger per process).
pub fn capture_log() -> &'static Mutex<Vec<Captured>> {
    let records = CAPTURED.get_or_init(|| Mutex::new(Vec::new()));
    if log::set_logger(&Capture).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    records
}

/// (CONNECT target, Proxy-Authorization value) per request.
pub type ConnectLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A small HTTP CONNECT proxy on loopback: checks `Proxy-Authorization`
/// when `auth` is set (answering 407 otherwise), records each CONNECT
/// target and the credentials it carried, then pipes bytes both ways.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    /// (target, Proxy-Authorization value) per CONNECT, accepted or not.
    pub seen: ConnectLog,
    /// Tunnels opened.
    pub tunnels: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectProxy {
    /// `auth`: the expected `Basic …` token, if any.
    pub fn start(auth: Option<&str>) -> ConnectProxy {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(AtomicUsize::new(0));
        let (s, t) = (seen.clone(), tunnels.clone());
        let auth = auth.map(|a| format!("Basic {a}"));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let (seen, tunnels, auth) = (s.clone(), t.clone(), auth.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut given = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = h.split_once(':')
                            && name.eq_ignore_ascii_case("proxy-authorization")
                        {
                            given = Some(value.trim().to_owned());
                        }
                    }
                    seen.lock().unwrap().push((target.clone(), given.clone()));
                    if auth.is_some() && given != auth {
                        let _ = client.write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                              Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
                        );
                        return;
                    }
                    let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                        return;
                    };
                    tunnels.fetch_add(1, Ordering::SeqCst);
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let mut up = upstream;
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    // The BufReader may hold bytes read past the header.
                    let _ = up.write_all(reader.buffer());
                    let mut rest = reader.into_inner();
                    let _ = std::io::copy(&mut rest, &mut up);
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        ConnectProxy {
            addr,
            seen,
            tunnels,
        }
    }
}
