//! One-way throughput of each delivery mode against raw tungstenite, same
//! server, same run, printed as ratios: messages per second from the first
//! `send` until the server has all of them (and, with acknowledgements,
//! until the client has every ack), and the time the sending thread spent
//! inside `send`. `cargo bench --bench throughput` (issue 5 grows this into
//! the full suite).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use longlink::{Client, ClientBuilder, JournalSync, Overflow};
use serde_json::{Value, json};
use tungstenite::Message;

const N: u64 = 100_000;

/// Counts text frames; acknowledges `msgId`s cumulatively every 64 messages
/// and at the last one (a server acking each message costs it a write each).
fn server(n: u64) -> (String, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        let mut count = 0;
        let mut highest = 0u64;
        while let Ok(m) = ws.read() {
            let Message::Text(t) = m else { continue };
            count += 1;
            if let Some(id) = msg_id(t.as_str()) {
                highest = highest.max(id);
                if count % 64 == 0 || count == n {
                    let ack = json!({"Operator": "Ack", "msgId": highest});
                    let _ = ws.send(Message::Text(ack.to_string().into()));
                }
            }
            if count == n {
                let _ = tx.send(Instant::now());
            }
        }
    });
    (url, rx)
}

/// The `msgId` of a message, found without parsing the whole JSON (the
/// server must not be the bottleneck being measured).
fn msg_id(text: &str) -> Option<u64> {
    let at = text.find("\"msgId\":")? + 8;
    let digits = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

fn payload(i: u64) -> Value {
    json!({"Operator": "Bench", "seq": i, "pad": "0123456789abcdef"})
}

struct Run {
    /// Messages per second, first send to the last one received (and acknowledged).
    rate: f64,
    /// Mean time inside `send`, in microseconds.
    send_us: f64,
}

fn run(name: &str, n: u64, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Run {
    let (url, done) = server(n);
    let client = f(Client::builder(url)
        .outbox_capacity(n as usize)
        .outbox_max_bytes(1 << 30)
        .outbox_overflow(Overflow::Block(Duration::from_secs(60))))
    .connect()
    .unwrap();
    let start = Instant::now();
    for i in 0..n {
        client.send(payload(i)).unwrap();
    }
    let sent = start.elapsed();
    let received = done.recv_timeout(Duration::from_secs(300)).unwrap();
    // With acknowledgements, done means the client has them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.stats().outbox_depth > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_micros(200));
    }
    let end = Instant::now().max(received);
    let _ = client.close(Duration::from_secs(5));
    let r = Run {
        rate: n as f64 / (end - start).as_secs_f64(),
        send_us: sent.as_secs_f64() * 1e6 / n as f64,
    };
    eprintln!("{name}: {:.0} msg/s, {:.2} µs per send", r.rate, r.send_us);
    r
}

fn raw() -> f64 {
    let (url, done) = server(N);
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

fn journal_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longlink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// A delivery mode: how the builder is set, given a fresh journal path.
type Mode = (&'static str, u64, fn(ClientBuilder, &Path) -> ClientBuilder);

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let modes: [Mode; 5] = [
        ("at most once (default)", N, |b, _| b),
        ("at least once", N, |b, _| b.at_least_once(true)),
        ("durable, sync never", N, |b, p| {
            b.durable(p).journal_sync(JournalSync::Never)
        }),
        ("durable, sync every 1 s (default)", N, |b, p| {
            b.durable(p)
                .journal_sync(JournalSync::Interval(Duration::from_secs(1)))
        }),
        // One disk flush per message: fewer messages, same rate measure.
        ("durable, sync every message", N / 20, |b, p| {
            b.durable(p).journal_sync(JournalSync::EveryMessage)
        }),
    ];
    // Rounds interleave the modes, so drift on a shared machine hits all alike.
    let mut raws = Vec::new();
    let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        raws.push(raw());
        for (i, (name, n, tweak)) in modes.iter().enumerate() {
            let p = journal_path("bench.journal");
            runs[i].push(run(name, *n, |b| tweak(b, &p)));
            let _ = std::fs::remove_file(&p);
        }
    }
    let _ = std::fs::remove_dir_all(journal_path("x").parent().unwrap());
    let raw = median(raws);
    let rate = |i: usize| median(runs[i].iter().map(|r| r.rate).collect());
    let send_us = |i: usize| median(runs[i].iter().map(|r| r.send_us).collect());
    let amo = rate(0);

    println!(
        "{:<36} {:>10} {:>8} {:>8} {:>11}",
        "mode (median of 3 runs)", "msg/s", "vs AMO", "vs raw", "µs in send"
    );
    println!(
        "{:<36} {:>10.0} {:>8} {:>8.2} {:>11}",
        "raw tungstenite (flush per 64)", raw, "", 1.0, ""
    );
    for (i, (name, ..)) in modes.iter().enumerate() {
        println!(
            "{:<36} {:>10.0} {:>8.2} {:>8.2} {:>11.2}",
            name,
            rate(i),
            rate(i) / amo,
            rate(i) / raw,
            send_us(i)
        );
    }
    println!("({N} messages per run; {} for sync every message)", N / 20);
}
