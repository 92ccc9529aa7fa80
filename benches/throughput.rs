//! One-way throughput: `Client::send` vs raw tungstenite writing and
//! flushing every 64 frames, same server, same run, printed as a ratio.
//! `cargo bench --bench throughput` (issue 5 grows this into the full suite).

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;

const N: u64 = 200_000;

/// A server that counts text frames and reports when it has `n`.
fn counting_server(n: u64) -> (String, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        let mut count = 0;
        while let Ok(m) = ws.read() {
            if m.is_text() {
                count += 1;
                if count == n {
                    let _ = tx.send(Instant::now());
                }
            }
        }
    });
    (url, rx)
}

fn payload(i: u64) -> serde_json::Value {
    json!({"Operator": "Bench", "seq": i, "pad": "0123456789abcdef"})
}

fn ours() -> f64 {
    let (url, done) = counting_server(N);
    let client = longlink::Client::builder(url)
        .outbox_capacity(N as usize)
        .connect()
        .unwrap();
    let start = Instant::now();
    for i in 0..N {
        client.send(payload(i)).unwrap();
    }
    let end = done.recv_timeout(Duration::from_secs(120)).unwrap();
    let _ = client.close(Duration::from_secs(1));
    N as f64 / (end - start).as_secs_f64()
}

fn raw_batched() -> f64 {
    let (url, done) = counting_server(N);
    let addr = url.trim_start_matches("ws://").to_owned();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
    let start = Instant::now();
    for i in 0..N {
        ws.write(Message::Text(payload(i).to_string().into()))
            .unwrap();
        if i % 64 == 63 {
            ws.flush().unwrap();
        }
    }
    ws.flush().unwrap();
    let end = done.recv_timeout(Duration::from_secs(120)).unwrap();
    N as f64 / (end - start).as_secs_f64()
}

fn main() {
    // `cargo test --all-targets` runs benches in test mode: keep that instant.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let ours = ours();
    let raw = raw_batched();
    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "figure", "longlink", "baseline", "ratio"
    );
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>7.2}",
        "send msg/s (raw: write + flush per 64)",
        ours,
        raw,
        ours / raw
    );
}
