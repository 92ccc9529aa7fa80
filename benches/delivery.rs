//! What each delivery mode costs: messages per second from the first `send`
//! until the server has all of them (and, with acknowledgements, until the
//! client has every ack), and how long the sending thread spent in `send`.
//! Same server, same run; ratios against at-most-once and raw tungstenite.
//! `cargo bench --bench delivery`

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use longlink::{Client, JournalSync, Overflow};
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
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if let Some(id) = v.get("msgId").and_then(Value::as_u64) {
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

fn payload(i: u64) -> Value {
    json!({"Operator": "Bench", "seq": i, "pad": "0123456789abcdef"})
}

struct Run {
    /// Messages per second, first send to the last one received (and acknowledged).
    rate: f64,
    /// Mean time inside `send`, in microseconds.
    send_us: f64,
}

fn run(
    name: &str,
    n: u64,
    f: impl FnOnce(longlink::ClientBuilder) -> longlink::ClientBuilder,
) -> Run {
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

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let raw = raw();
    let amo = run("at most once", N, |b| b);
    let alo = run("at least once", N, |b| b.at_least_once(true));
    let dur = |sync, name: &str, n| {
        let p = journal_path(name);
        let r = run(name, n, |b| b.durable(&p).journal_sync(sync));
        let _ = std::fs::remove_file(&p);
        r
    };
    let never = dur(JournalSync::Never, "durable, sync never", N);
    let second = dur(
        JournalSync::Interval(Duration::from_secs(1)),
        "durable, sync every 1 s",
        N,
    );
    // One disk flush per message: fewer messages, same rate measure.
    let every = dur(
        JournalSync::EveryMessage,
        "durable, sync every message",
        N / 10,
    );
    let _ = std::fs::remove_dir_all(journal_path("x").parent().unwrap());

    println!(
        "{:<56} {:>10} {:>9} {:>9} {:>11}",
        "mode (100,000 messages; 10,000 for sync every message)",
        "msg/s",
        "vs AMO",
        "vs raw",
        "µs in send"
    );
    println!(
        "{:<56} {:>10.0} {:>9} {:>9.2} {:>11}",
        "raw tungstenite (flush per 64)", raw, "", 1.0, ""
    );
    for (name, r) in [
        ("at most once (default)", &amo),
        ("at least once", &alo),
        ("durable, sync never", &never),
        ("durable, sync every 1 s (default)", &second),
        ("durable, sync every message", &every),
    ] {
        println!(
            "{:<56} {:>10.0} {:>9.2} {:>9.2} {:>11.2}",
            name,
            r.rate,
            r.rate / amo.rate,
            r.rate / raw,
            r.send_us
        );
    }
}
