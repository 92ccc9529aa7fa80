//! The performance harness: `cargo bench --bench perf`.
//!
//! Each figure is measured side by side with its baseline in the same run,
//! against a WebSocket server in a separate process (this binary run again
//! with `LONGLINK_PERF_SERVER=1`), over loopback, with 64-byte text
//! messages. It ends with one summary table (figure, ours, baseline, ratio)
//! and writes `target/bench-summary.json` to compare across commits.
//!
//! 1. one-way throughput, one caller thread: `Client::send` vs raw
//!    tungstenite `send()` per message and `write()` + `flush()` per 64, and
//!    vs tokio-tungstenite (`feed` + `flush` per 64);
//! 2. the same with 4 caller threads sharing one `Client`;
//! 3. request/reply round trip p50 and p99, by name and by correlation id,
//!    vs raw tungstenite ping-pong of the same bytes and vs tokio-tungstenite;
//! 4. idle cost: CPU time and wake-ups of the I/O thread over 10 s;
//! 5. failure timing: black hole → dead verdict vs the configured deadline;
//!    server back → first buffered message delivered.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use longlink::testkit::{Proxy, Seen, Server, ServerOpts, process_usage};
use longlink::{Client, ClientBuilder, JournalSync, LinkState, Overflow};
use serde_json::{Value, json};
use tungstenite::Message;

const N: u64 = 200_000;
const RTT_ROUNDS: usize = 5_000;
const SERVER_ENV: &str = "LONGLINK_PERF_SERVER";
/// Throughput runs per contender; the median is reported (2 cores, 3 busy
/// threads: single runs vary by ±30 %).
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---------------------------------------------------------------- server

/// The server process: per connection, count text frames; answer `End`
/// with `Done{count}` and `Echo` with `EchoOK` (echoing `reqId`).
fn run_server() {
    let port = std::env::var("LONGLINK_PERF_PORT").unwrap_or_else(|_| "0".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind");
    println!("PORT={}", listener.local_addr().expect("addr").port());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // Small stacks: the scale figures hold thousands of these.
        let _ = thread::Builder::new().stack_size(64 << 10).spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tungstenite::accept(stream) else {
                return;
            };
            let mut count = 0u64;
            let mut highest = 0u64;
            while let Ok(m) = ws.read() {
                let Message::Text(t) = m else { continue };
                let t = t.as_str();
                // At least once: acknowledge cumulatively every 64 messages
                // and at `End` (acking each would cost the server a write each).
                if let Some(id) = msg_id(t) {
                    highest = highest.max(id);
                    count += 1;
                    if count.is_multiple_of(64) {
                        let ack = json!({"Operator": "Ack", "msgId": highest});
                        if ws.send(Message::Text(ack.to_string().into())).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                let reply = if t.contains("\"Echo\"") {
                    let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                    json!({"Operator": "EchoOK", "reqId": v.get("reqId")})
                } else if t.contains("\"End\"") {
                    if highest > 0 {
                        let ack = json!({"Operator": "Ack", "msgId": highest});
                        if ws.send(Message::Text(ack.to_string().into())).is_err() {
                            return;
                        }
                    }
                    let done = json!({"Operator": "Done", "count": count});
                    count = 0;
                    done
                } else {
                    count += 1;
                    continue;
                };
                if ws.send(Message::Text(reply.to_string().into())).is_err() {
                    return;
                }
            }
        });
    }
}

/// The `msgId` of a message, found without parsing the whole JSON (the
/// server must not be the bottleneck being measured).
fn msg_id(text: &str) -> Option<u64> {
    let at = text.find("\"msgId\":")? + 8;
    let digits = text[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

struct ServerProcess {
    child: Child,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_process(port: u16) -> ServerProcess {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(SERVER_ENV, "1")
        .env("LONGLINK_PERF_PORT", port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the server process");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("port line");
    let port = line.trim().strip_prefix("PORT=").expect("PORT=").to_owned();
    ServerProcess {
        child,
        url: format!("ws://127.0.0.1:{port}"),
    }
}

// ---------------------------------------------------------------- payloads

/// A 64-byte message (for 6-digit sequence numbers), serialized by serde
/// on every send, on both sides: what an application does with its types.
#[derive(serde::Serialize)]
#[allow(non_snake_case)]
struct Bench {
    Operator: &'static str,
    seq: u64,
    pad: &'static str,
}

fn msg(seq: u64) -> Bench {
    Bench {
        Operator: "Bench",
        seq,
        pad: "xxxxxxxxxxxxxxxxxxxxxxxxxxx",
    }
}

/// The frame of one message, serialized the same way.
fn frame(seq: u64) -> Message {
    Message::Text(serde_json::to_string(&msg(seq)).unwrap_or_default().into())
}

fn text(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

fn end() -> Value {
    json!({"Operator": "End"})
}

fn echo(i: u64) -> Value {
    json!({"Operator": "Echo", "reqId": i, "pad": "yyyyyyyyyyyyyyyyyyyy"})
}

fn count_of(v: &Value) -> u64 {
    v["count"].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------- raw tungstenite

fn raw_connect(url: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(url.trim_start_matches("ws://")).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    tungstenite::client(url, stream).expect("handshake").0
}

fn raw_read_op(ws: &mut tungstenite::WebSocket<TcpStream>, op: &str) -> Value {
    loop {
        if let Message::Text(t) = ws.read().expect("read") {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v["Operator"] == op {
                return v;
            }
        }
    }
}

/// Messages per second, raw, flushing every `batch` frames.
fn raw_throughput(url: &str, batch: u64) -> f64 {
    let mut ws = raw_connect(url);
    let start = Instant::now();
    for i in 0..N {
        ws.write(frame(i)).expect("write");
        if i % batch == batch - 1 {
            ws.flush().expect("flush");
        }
    }
    ws.send(text(&end())).expect("end");
    let done = raw_read_op(&mut ws, "Done");
    assert_eq!(count_of(&done), N);
    N as f64 / start.elapsed().as_secs_f64()
}

fn raw_rtt(url: &str) -> Vec<Duration> {
    let mut ws = raw_connect(url);
    (0..RTT_ROUNDS as u64 + 200)
        .map(|i| {
            let t = Instant::now();
            ws.send(text(&echo(i))).expect("send");
            raw_read_op(&mut ws, "EchoOK");
            t.elapsed()
        })
        .skip(200)
        .collect()
}

// ---------------------------------------------------------------- longlink

/// A delivery mode: how the builder is set, given a fresh journal path.
type Mode = (&'static str, fn(ClientBuilder, &Path) -> ClientBuilder);

fn ours_throughput(url: &str, threads: u64) -> f64 {
    ours_mode(url, threads, N, |b, _| b).0
}

/// (messages per second until the server has all of them and the client
/// every acknowledgement, mean µs inside `send`) for `n` messages.
fn ours_mode(
    url: &str,
    threads: u64,
    n: u64,
    mode: fn(ClientBuilder, &Path) -> ClientBuilder,
) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("longlink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let journal = dir.join("bench.journal");
    let _ = std::fs::remove_file(&journal);
    let builder = Client::builder(url)
        .outbox_capacity(n as usize)
        .outbox_max_bytes(1 << 30)
        .outbox_overflow(Overflow::Block(Duration::from_secs(60)));
    let client = mode(builder, &journal).connect().expect("connect");
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let c = client.clone();
            thread::spawn(move || {
                for i in (t..n).step_by(threads as usize) {
                    c.send(msg(i)).expect("send");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("sender");
    }
    let sent = start.elapsed();
    await_done(&client, n);
    // With acknowledgements: until the client has them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.stats().outbox_depth > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_micros(200));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = client.close(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
    (rate, sent.as_secs_f64() * 1e6 / n as f64)
}

/// Ask the server for its count once everything is sent; it must be `n`.
fn await_done(client: &Client, n: u64) {
    let done = client
        .request_expect(
            end(),
            longlink::Expect::reply("Done"),
            Duration::from_secs(120),
        )
        .expect("Done");
    assert_eq!(count_of(done.value()), n);
}

fn ours_rtt(url: &str, by_id: bool) -> Vec<Duration> {
    let mut b = Client::builder(url);
    if by_id {
        b = b.correlation_field("reqId");
    }
    let client = b.connect().expect("connect");
    let out = (0..RTT_ROUNDS as u64 + 200)
        .map(|i| {
            let t = Instant::now();
            client
                .request(echo(i), Duration::from_secs(5))
                .expect("EchoOK");
            t.elapsed()
        })
        .skip(200)
        .collect();
    let _ = client.close(Duration::from_secs(1));
    out
}

// ---------------------------------------------------------------- tokio-tungstenite

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn tokio_read_op<S>(ws: &mut S, op: &str) -> Value
where
    S: StreamExt<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let m = ws.next().await.expect("open").expect("read");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v["Operator"] == op {
                return v;
            }
        }
    }
}

fn tokio_text(v: &Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Text(v.to_string().into())
}

fn tokio_throughput(url: &str) -> f64 {
    tokio_rt().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let start = Instant::now();
        for i in 0..N {
            ws.feed(tokio_tungstenite::tungstenite::Message::Text(
                serde_json::to_string(&msg(i)).unwrap_or_default().into(),
            ))
            .await
            .expect("feed");
            if i % 64 == 63 {
                ws.flush().await.expect("flush");
            }
        }
        ws.send(tokio_text(&end())).await.expect("end");
        let done = tokio_read_op(&mut ws, "Done").await;
        assert_eq!(count_of(&done), N);
        N as f64 / start.elapsed().as_secs_f64()
    })
}

fn tokio_rtt(url: &str) -> Vec<Duration> {
    tokio_rt().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut out = Vec::with_capacity(RTT_ROUNDS);
        for i in 0..RTT_ROUNDS as u64 + 200 {
            let t = Instant::now();
            ws.send(tokio_text(&echo(i))).await.expect("send");
            tokio_read_op(&mut ws, "EchoOK").await;
            if i >= 200 {
                out.push(t.elapsed());
            }
        }
        out
    })
}

// ---------------------------------------------------------------- idle

/// (CPU ticks, voluntary context switches) of the thread named `name`.
fn thread_usage(name: &str) -> Option<(u64, u64)> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()?;
        return Some((ticks, switches));
    }
    None
}

/// CPU milliseconds and wake-ups of the I/O thread over `secs` idle.
fn idle_cost(url: &str, secs: u64) -> (f64, u64) {
    let client = Client::builder(url).connect().expect("connect");
    thread::sleep(Duration::from_millis(200));
    let before = thread_usage("longlink-io").expect("the I/O thread");
    thread::sleep(Duration::from_secs(secs));
    let after = thread_usage("longlink-io").expect("the I/O thread");
    let _ = client.close(Duration::from_secs(1));
    // Kernel clock ticks are 10 ms.
    ((after.0 - before.0) as f64 * 10.0, after.1 - before.1)
}

// ---------------------------------------------------------------- failure timing

/// Time from a black hole to the dead verdict (median, max of 5).
fn dead_verdict(interval: Duration, timeout: Duration) -> (Duration, Duration) {
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let mut times = Vec::new();
    for _ in 0..5 {
        let client = Client::builder(proxy.url())
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
            .connect()
            .expect("connect");
        // A round trip, so the silence starts now.
        client
            .request(json!({"Operator": "Ping"}), Duration::from_secs(2))
            .expect("PingOK");
        let (tx, rx) = crossbeam_channel::bounded(1);
        client.on_state(move |s| {
            if !matches!(s, LinkState::Open) {
                let _ = tx.try_send(Instant::now());
            }
        });
        let t = Instant::now();
        proxy.blackhole();
        let dead = rx.recv_timeout(Duration::from_secs(10)).expect("verdict");
        times.push(dead - t);
        proxy.restore();
        drop(client);
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// Time from the server accepting again (handshake done) to the first
/// message buffered while it was down (median, max of 5).
fn first_buffered() -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..5 {
        let first = Server::start();
        let addr = first.addr;
        let client = Client::builder(first.url())
            .reconnect_min_delay(Duration::from_millis(20))
            .reconnect_max_delay(Duration::from_millis(40))
            .connect()
            .expect("connect");
        drop(first);
        let down = Instant::now();
        while client.state() == LinkState::Open && down.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(1));
        }
        client
            .send(json!({"Operator": "FireBuffered"}))
            .expect("queued");
        let again = Server::start_on(addr, ServerOpts::default()).expect("rebind");
        let stamps: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let mut opened = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(seen) = again.seen.recv_deadline(deadline) {
            match seen {
                Seen::Open(_) => opened = Some(Instant::now()),
                Seen::Text(_, _) => {
                    stamps.lock().expect("lock").push(Instant::now());
                    break;
                }
                Seen::Closed(_) => {}
            }
        }
        let got = stamps.lock().expect("lock").first().copied();
        if let (Some(o), Some(g)) = (opened, got) {
            times.push(g - o);
        }
        drop(client);
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

// ---------------------------------------------------------------- CPU per message

/// CPU time (ns) of the live threads of process `pid` ("self" for this one).
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time (ns) of this process's thread named `name`.
fn thread_cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// (client ns, server ns, of which the I/O thread ns) of CPU per message
/// for `n` one-way messages,
/// sent from this thread (so every thread involved is alive when counted).
fn cpu_per_message(srv: &ServerProcess, ours: bool) -> (f64, f64, f64) {
    let pid = srv.child.id().to_string();
    let n = N;
    let (c0, s0, c1, s1);
    let (mut io0, mut io1) = (0, 0);
    if ours {
        let client = Client::builder(srv.url.as_str())
            .outbox_capacity(n as usize)
            .outbox_max_bytes(1 << 30)
            .connect()
            .expect("connect");
        (c0, s0, io0) = (cpu_ns("self"), cpu_ns(&pid), thread_cpu_ns("longlink-io"));
        for i in 0..n {
            client.send(msg(i)).expect("send");
        }
        await_done(&client, n);
        (c1, s1, io1) = (cpu_ns("self"), cpu_ns(&pid), thread_cpu_ns("longlink-io"));
        let _ = client.close(Duration::from_secs(2));
    } else {
        let mut ws = raw_connect(&srv.url);
        (c0, s0) = (cpu_ns("self"), cpu_ns(&pid));
        for i in 0..n {
            ws.write(frame(i)).expect("write");
            if i % 64 == 63 {
                ws.flush().expect("flush");
            }
        }
        ws.send(text(&end())).expect("end");
        assert_eq!(count_of(&raw_read_op(&mut ws, "Done")), n);
        (c1, s1) = (cpu_ns("self"), cpu_ns(&pid));
    }
    let per = |a: u64, b: u64| (b - a) as f64 / n as f64;
    (per(c0, c1), per(s0, s1), per(io0, io1))
}

// ---------------------------------------------------------------- scale

/// How many idle links to hold (`LONGLINK_PERF_SCALE=1000,4000`). Each
/// link takes 4 file descriptors (socket; the poller's epoll, eventfd and
/// timerfd) and 2 threads: the default stays inside a 20,000-descriptor
/// limit; 10,000 links need `ulimit -n` ≥ 41,000.
fn scale_sizes() -> Vec<usize> {
    std::env::var("LONGLINK_PERF_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 4_000])
}

struct Scale {
    rss_per_conn_kib: f64,
    threads_per_conn: f64,
    /// From the server's restart until every client is open again.
    reconnect_all: Duration,
    /// Most connects completed in any 100 ms window after the restart.
    peak_per_100ms: usize,
}

/// `n` idle clients against a server process; then the server restarts.
fn scale(n: usize) -> Option<Scale> {
    let srv = server_process(0);
    let port: u16 = srv.url.rsplit(':').next()?.parse().ok()?;
    let (rss0, threads0, _) = process_usage();
    // Plain links: no subscriber, so no dispatcher thread (states are polled).
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::builder(srv.url.as_str()).start().ok()?);
    }
    let all_open = |clients: &[Client]| clients.iter().all(|c| c.state() == LinkState::Open);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_open(&clients) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if !all_open(&clients) {
        eprintln!("scale {n}: not all clients opened");
        return None;
    }
    thread::sleep(Duration::from_millis(500));
    let (rss1, threads1, _) = process_usage();
    if let Some(path) = std::env::var_os("LONGLINK_PERF_SMAPS") {
        let _ = std::fs::copy("/proc/self/smaps", path);
    }
    // Restart the server on the same port; clients were up for a while, so
    // each retries once at once, then backs off with jitter.
    drop(srv);
    let down = Instant::now();
    while clients.iter().any(|c| c.state() == LinkState::Open)
        && down.elapsed() < Duration::from_secs(30)
    {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    let _srv = server_process(port);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(120);
    // When each link was first seen open again (polled every 5 ms).
    let mut times: Vec<Option<Duration>> = vec![None; n];
    while times.iter().any(Option::is_none) && Instant::now() < deadline {
        for (t, c) in times.iter_mut().zip(&clients) {
            if t.is_none() && c.state() == LinkState::Open {
                *t = Some(back.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    let reconnect_all = back.elapsed();
    let mut times: Vec<Duration> = times.into_iter().flatten().collect();
    times.sort();
    let peak = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap_or(0);
    for c in &clients {
        let _ = c.close(Duration::from_millis(200));
    }
    Some(Scale {
        rss_per_conn_kib: rss1.saturating_sub(rss0) as f64 / n as f64,
        threads_per_conn: threads1.saturating_sub(threads0) as f64 / n as f64,
        reconnect_all,
        peak_per_100ms: peak,
    })
}

// ---------------------------------------------------------------- report

struct Row {
    figure: String,
    ours: f64,
    baseline: f64,
    unit: &'static str,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
        "os": std::env::consts::OS,
    })
}

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        run_server();
        return;
    }
    // `cargo test --all-targets` runs benches in test mode: keep that instant.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let srv = server_process(0);
    let url = srv.url.clone();
    let mut rows = Vec::new();
    let mut row = |figure: &str, ours: f64, baseline: f64, unit: &'static str| {
        eprintln!("{figure}: {ours:.1} vs {baseline:.1} {unit}");
        rows.push(Row {
            figure: figure.to_owned(),
            ours,
            baseline,
            unit,
        });
    };

    // LONGLINK_PERF_ONLY=send1 runs just that (for `perf record`).
    if std::env::var("LONGLINK_PERF_ONLY").as_deref() == Ok("send1") {
        for _ in 0..3 {
            eprintln!("send, 1 thread: {:.0} msg/s", ours_throughput(&url, 1));
        }
        return;
    }
    // LONGLINK_PERF_ONLY=cpu: CPU per message, ours vs raw batched.
    if std::env::var("LONGLINK_PERF_ONLY").as_deref() == Ok("cpu") {
        for _ in 0..3 {
            let (oc, os, oio) = cpu_per_message(&srv, true);
            let (rc, rs, _) = cpu_per_message(&srv, false);
            eprintln!(
                "CPU ns per message: longlink client {oc:.0} (I/O thread {oio:.0}) + server {os:.0}; \
                 raw batched client {rc:.0} + server {rs:.0}"
            );
        }
        return;
    }
    if std::env::var("LONGLINK_PERF_ONLY").as_deref() == Ok("rtt") {
        for _ in 0..2 {
            let (mut raw, mut name, mut id) =
                (raw_rtt(&url), ours_rtt(&url, false), ours_rtt(&url, true));
            eprintln!(
                "rtt p50 µs: raw {:.0}, by name {:.0}, by id {:.0}",
                pct(&mut raw, 0.5),
                pct(&mut name, 0.5),
                pct(&mut id, 0.5)
            );
        }
        return;
    }
    // LONGLINK_PERF_ONLY=window: at-least-once throughput with the default
    // in-flight window against none, interleaved.
    if std::env::var("LONGLINK_PERF_ONLY").as_deref() == Ok("window") {
        let (mut windowed, mut unbounded) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            windowed.push(ours_mode(&url, 1, N / 2, |b, _| b.at_least_once(true)).0);
            unbounded.push(
                ours_mode(&url, 1, N / 2, |b, _| {
                    b.at_least_once(true)
                        .in_flight_window(usize::MAX, usize::MAX)
                })
                .0,
            );
        }
        eprintln!("at least once, msg/s: default window {windowed:.0?}, no window {unbounded:.0?}");
        let (w, u) = (median(windowed), median(unbounded));
        eprintln!("medians: {w:.0} vs {u:.0} msg/s: {:.3}×", w / u);
        return;
    }
    if std::env::var("LONGLINK_PERF_ONLY").as_deref() == Ok("scale") {
        for n in scale_sizes() {
            if let Some(sc) = scale(n) {
                eprintln!(
                    "{n}: {:.1} KiB/link, {:.1} threads/link, all back in {:?}, peak {} per 100 ms",
                    sc.rss_per_conn_kib, sc.threads_per_conn, sc.reconnect_all, sc.peak_per_100ms
                );
            }
        }
        return;
    }
    eprintln!("throughput ({N} messages of 64 bytes, median of {ROUNDS} interleaved runs)…");
    let mut runs: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        runs[0].push(raw_throughput(&url, 1));
        runs[1].push(raw_throughput(&url, 64));
        runs[2].push(tokio_throughput(&url));
        runs[3].push(ours_throughput(&url, 1));
        runs[4].push(ours_throughput(&url, 4));
    }
    let [raw_send, raw_batched, tokio_batched, ours_1, ours_4] = runs.map(median);
    row(
        "send msg/s, 1 thread vs raw write+flush/64",
        ours_1,
        raw_batched,
        "msg/s",
    );
    row(
        "send msg/s, 1 thread vs raw send() each",
        ours_1,
        raw_send,
        "msg/s",
    );
    row(
        "send msg/s, 1 thread vs tokio-tungstenite",
        ours_1,
        tokio_batched,
        "msg/s",
    );
    row(
        "send msg/s, 4 threads vs raw write+flush/64",
        ours_4,
        raw_batched,
        "msg/s",
    );

    // What each delivery mode costs, against at most once, same server.
    let modes: [Mode; 5] = [
        ("at most once", |b, _| b),
        ("at least once", |b, _| b.at_least_once(true)),
        ("durable, sync never", |b, p| {
            b.durable(p).journal_sync(JournalSync::Never)
        }),
        ("durable, sync every 1 s (default)", |b, p| {
            b.durable(p)
                .journal_sync(JournalSync::Interval(Duration::from_secs(1)))
        }),
        ("durable, sync every message", |b, p| {
            b.durable(p).journal_sync(JournalSync::EveryMessage)
        }),
    ];
    // One disk flush per message: fewer of them, same rate measure.
    let size = |name: &str| {
        if name.ends_with("every message") {
            N / 40
        } else {
            N / 2
        }
    };
    eprintln!("delivery modes (median of {ROUNDS} interleaved runs)…");
    let mut by_mode: Vec<(Vec<f64>, Vec<f64>)> = modes.iter().map(|_| Default::default()).collect();
    for _ in 0..ROUNDS {
        for (i, (name, mode)) in modes.iter().enumerate() {
            let (rate, us) = ours_mode(&url, 1, size(name), *mode);
            by_mode[i].0.push(rate);
            by_mode[i].1.push(us);
        }
    }
    let by_mode: Vec<(f64, f64)> = by_mode
        .into_iter()
        .map(|(r, u)| (median(r), median(u)))
        .collect();
    let (amo_rate, amo_us) = by_mode[0];
    for ((name, _), (rate, us)) in modes.iter().zip(&by_mode).skip(1) {
        row(
            &format!("send msg/s, {name} vs at most once"),
            *rate,
            amo_rate,
            "msg/s",
        );
        row(
            &format!("µs in send, {name} vs at most once"),
            *us,
            amo_us,
            "µs",
        );
    }

    eprintln!("round trips ({RTT_ROUNDS} each)…");
    let mut raw = raw_rtt(&url);
    let mut by_name = ours_rtt(&url, false);
    let mut by_id = ours_rtt(&url, true);
    let mut tok = tokio_rtt(&url);
    let (raw50, raw99) = (pct(&mut raw, 0.5), pct(&mut raw, 0.99));
    row(
        "request p50 µs, by name vs raw ping-pong",
        pct(&mut by_name, 0.5),
        raw50,
        "µs",
    );
    row(
        "request p99 µs, by name vs raw ping-pong",
        pct(&mut by_name, 0.99),
        raw99,
        "µs",
    );
    row(
        "request p50 µs, by id vs raw ping-pong",
        pct(&mut by_id, 0.5),
        raw50,
        "µs",
    );
    row(
        "request p99 µs, by id vs raw ping-pong",
        pct(&mut by_id, 0.99),
        raw99,
        "µs",
    );
    row(
        "request p50 µs, by name vs tokio-tungstenite",
        pct(&mut by_name, 0.5),
        pct(&mut tok, 0.5),
        "µs",
    );

    eprintln!("idle 10 s…");
    let (cpu_ms, wakeups) = idle_cost(&url, 10);
    row(
        "idle 10 s: I/O thread wake-ups (goal 0)",
        wakeups as f64,
        0.0,
        "wake-ups",
    );
    row("idle 10 s: I/O thread CPU ms (goal 0)", cpu_ms, 0.0, "ms");

    eprintln!("failure timing…");
    let (interval, timeout) = (Duration::from_millis(300), Duration::from_millis(200));
    let deadline = (interval + timeout).as_secs_f64() * 1e3;
    let (dead50, dead_max) = dead_verdict(interval, timeout);
    row(
        "black hole → dead verdict ms, median vs deadline",
        dead50.as_secs_f64() * 1e3,
        deadline,
        "ms",
    );
    row(
        "black hole → dead verdict ms, max vs deadline",
        dead_max.as_secs_f64() * 1e3,
        deadline,
        "ms",
    );
    let (first50, first_max) = first_buffered();
    row(
        "server back → first buffered msg ms, median (goal ≤ 5)",
        first50.as_secs_f64() * 1e3,
        5.0,
        "ms",
    );
    row(
        "server back → first buffered msg ms, max (goal ≤ 5)",
        first_max.as_secs_f64() * 1e3,
        5.0,
        "ms",
    );
    drop(srv);

    for n in scale_sizes() {
        eprintln!("scale: {n} idle connections…");
        match scale(n) {
            Some(sc) => {
                row(
                    &format!("{n} idle links: RSS KiB per link (goal ≤ 24)"),
                    sc.rss_per_conn_kib,
                    24.0,
                    "KiB",
                );
                row(
                    &format!("{n} idle links: threads per link"),
                    sc.threads_per_conn,
                    0.0,
                    "threads",
                );
                row(
                    &format!("{n} idle links: all back after restart, s"),
                    sc.reconnect_all.as_secs_f64(),
                    0.0,
                    "s",
                );
                row(
                    &format!("{n} idle links: most reconnects in 100 ms"),
                    sc.peak_per_100ms as f64,
                    n as f64,
                    "links",
                );
            }
            None => eprintln!("scale {n}: skipped"),
        }
    }

    println!();
    println!(
        "{:<56} {:>12} {:>12} {:>7}",
        "figure", "longlink", "baseline", "ratio"
    );
    for r in &rows {
        let ratio = if r.baseline > 0.0 {
            format!("{:.2}", r.ours / r.baseline)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<56} {:>12.1} {:>12.1} {:>7}",
            r.figure, r.ours, r.baseline, ratio
        );
    }
    let summary = json!({
        "machine": machine(),
        "messages": N,
        "message_bytes": 64,
        "rtt_rounds": RTT_ROUNDS,
        "figures": rows.iter().map(|r| json!({
            "figure": r.figure,
            "longlink": r.ours,
            "baseline": r.baseline,
            "ratio": if r.baseline > 0.0 { json!(r.ours / r.baseline) } else { Value::Null },
            "unit": r.unit,
        })).collect::<Vec<_>>(),
    });
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("bench-summary.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwritten: {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
