//! Test your application across disconnects (feature `testkit`).
//!
//! Two real parts, no mocks: a scriptable WebSocket [`Server`] on
//! `127.0.0.1:0` that answers each message with a handler and can drop its
//! connections in every way a network does, and a TCP [`Proxy`] to put
//! between your client and any server, which cuts, resets, black-holes,
//! stalls or delays connections on command. The crate's own tests use them.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use longlink::testkit::{Dedup, Proxy, Server, ServerOpts, dedup_handler, ok_handler, wait_until};
//! use longlink::Client;
//! use serde_json::json;
//!
//! // A server that acknowledges message ids and drops duplicates.
//! let seen = Arc::new(Mutex::new(Dedup { ack: true, ..Dedup::default() }));
//! let server = Server::start_with(ServerOpts {
//!     handler: Some(dedup_handler(seen.clone(), ok_handler())),
//!     ..ServerOpts::default()
//! });
//! let proxy = Proxy::start(server.addr);
//! let client = Client::builder(proxy.url())
//!     .at_least_once(true)
//!     .reconnect_min_delay(Duration::from_millis(5))
//!     .connect()?;
//!
//! for n in 0..100 {
//!     client.send(json!({"Operator": "Post", "n": n}))?;
//!     if n == 50 {
//!         proxy.reset(); // RST both ways, mid-stream, as a dying NAT would
//!     }
//! }
//! // Every post arrives once, in order, across the reconnect.
//! assert!(wait_until(Duration::from_secs(10), || seen.lock().unwrap().accepted.len() == 100));
//! let ns: Vec<u64> = seen.lock().unwrap().accepted.iter().map(|v| v["n"].as_u64().unwrap()).collect();
//! assert_eq!(ns, (0..100).collect::<Vec<_>>());
//! assert_eq!(client.stats().reconnects, 1);
//! # Ok::<(), longlink::Error>(())
//! ```
//!
//! Everything here is for tests: it binds loopback only and panics (with a
//! message) when the operating system refuses a socket.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};
use tungstenite::Message as Frame;

/// (RSS KiB, threads, open file descriptors) of this process, from
/// `/proc/self` (zeros where it does not exist): to check that an
/// application keeps memory flat and leaks no thread or socket across
/// reconnects.
pub fn process_usage() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (field("VmRSS:"), field("Threads:"), fds)
}

/// Wait up to `timeout` for `cond`, polling it every 2 ms; returns its
/// last value. For tests: a bounded wait for an event, never a fixed sleep.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// What the server saw, in order, on [`Server::seen`].
#[derive(Debug, Clone)]
pub enum Seen {
    /// Connection `n` (counted from 1) completed its handshake.
    Open(u64),
    /// A text message on connection `n`, parsed (`Null` if not JSON).
    Text(u64, Value),
    /// Connection `n` ended.
    Closed(u64),
}

/// Answers one inbound message: what to send back.
pub type Handler = Arc<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

/// Answers one inbound message on connection `conn`.
pub type ConnHandler = Arc<dyn Fn(u64, &Value) -> Vec<Value> + Send + Sync>;

/// Messages the server sends when a connection has been quiet a few ms.
pub type QuietHandler = Arc<dyn Fn() -> Vec<Value> + Send + Sync>;

/// The default handler: `X` → `XOK` echoing `reqId`, `seq` and `n`;
/// `Heart` → `HeartOK`; operators starting with `Fire` get no answer.
pub fn ok_handler() -> Handler {
    Arc::new(|v: &Value| {
        let op = v["Operator"].as_str().unwrap_or_default();
        if op == "Heart" {
            return vec![json!({"Operator": "HeartOK"})];
        }
        if op.starts_with("Fire") {
            return vec![];
        }
        let mut reply = json!({"Operator": format!("{op}OK")});
        for f in ["reqId", "seq", "n"] {
            if let Some(x) = v.get(f) {
                reply[f] = x.clone();
            }
        }
        vec![reply]
    })
}

/// What a deduplicating at-least-once server accepted.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Run of the messages being accepted (`msgRun`; `None` for messages
    /// without one).
    pub run: Option<u64>,
    /// Highest message id accepted in that run.
    pub highest: u64,
    /// Messages accepted (the first copy of each id), in order.
    pub accepted: Vec<Value>,
    /// Copies of ids already accepted: dropped, but acknowledged.
    pub duplicates: u64,
    /// When false, nothing is acknowledged (messages are still accepted).
    pub ack: bool,
}

/// The server side of at-least-once, for one client: it keeps the (run,
/// highest id) pair. A message whose `msgRun` differs from the stored run
/// starts a new sequence (accepted; its run and id are stored); within the
/// run, a `msgId` at most the highest is a duplicate (dropped, still
/// acknowledged). Every message is answered with a cumulative
/// `{"Operator":"Ack","msgId":highest}`. Messages without an id go to
/// `other`.
pub fn dedup_handler(state: Arc<Mutex<Dedup>>, other: Handler) -> Handler {
    Arc::new(move |v: &Value| {
        let Some(id) = v.get("msgId").and_then(Value::as_u64) else {
            return other(v);
        };
        let run = v.get("msgRun").and_then(Value::as_u64);
        let mut d = state.lock().unwrap_or_else(|e| e.into_inner());
        if run != d.run || id > d.highest {
            d.run = run;
            d.highest = id;
            d.accepted.push(v.clone());
        } else {
            d.duplicates += 1;
        }
        if d.ack {
            vec![json!({"Operator": "Ack", "msgId": d.highest})]
        } else {
            vec![]
        }
    })
}

/// How a [`Server`] behaves. `Default` is [`ok_handler`], no idle cut.
#[derive(Clone, Default)]
pub struct ServerOpts {
    /// Answers each message (used when `conn_handler` is `None`).
    pub handler: Option<Handler>,
    /// Answers each message, knowing its connection.
    pub conn_handler: Option<ConnHandler>,
    /// Close connections (TCP FIN, no Close frame) after this long without
    /// an inbound frame. Can be changed later: [`Server::set_idle_cut`].
    pub idle_cut: Option<Duration>,
    /// Called when a connection has been quiet a few ms; what it returns is sent.
    pub on_quiet: Option<QuietHandler>,
    /// Serve `wss://` with this acceptor.
    #[cfg(feature = "native-tls")]
    pub tls: Option<native_tls::TlsAcceptor>,
    /// Do not record text messages on [`Server::seen`] (opens and closes
    /// still are): for long runs, where the record would grow without bound.
    pub forget_texts: bool,
}

impl std::fmt::Debug for ServerOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOpts")
            .field("idle_cut", &self.idle_cut)
            .finish_non_exhaustive()
    }
}

struct ServerShared {
    seen: Sender<Seen>,
    conns: AtomicU64,
    live: AtomicUsize,
    stop: AtomicBool,
    /// Bumped to make every live connection end: see `Fault`.
    kick: AtomicU64,
    reset: AtomicU64,
    blackhole: AtomicU64,
    /// Milliseconds; 0 = off.
    idle_cut_ms: AtomicU64,
    pushes: Mutex<Vec<Sender<Value>>>,
}

/// A WebSocket server in the test process, on `127.0.0.1:0` (or an address
/// of your choice), one thread per connection.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everything it saw, in order (unbounded; drain it or ignore it).
    pub seen: Receiver<Seen>,
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with [`ok_handler`] on `127.0.0.1:0`.
    pub fn start() -> Server {
        Server::start_with(ServerOpts::default())
    }

    /// A server with these options on `127.0.0.1:0`.
    pub fn start_with(opts: ServerOpts) -> Server {
        Server::start_on("127.0.0.1:0", opts).expect("binding 127.0.0.1:0")
    }

    /// A server with these options on `addr`.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub fn start_on(addr: impl ToSocketAddrs, opts: ServerOpts) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = unbounded();
        let shared = Arc::new(ServerShared {
            seen: tx,
            conns: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            kick: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            blackhole: AtomicU64::new(0),
            idle_cut_ms: AtomicU64::new(opts.idle_cut.map_or(0, |d| d.as_millis().max(1) as u64)),
            pushes: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                let opts = opts.clone();
                thread::spawn(move || serve(stream, s, opts));
            }
        });
        Ok(Server {
            addr,
            seen: rx,
            shared,
        })
    }

    /// `ws://` + its address.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Handshakes completed so far.
    pub fn connections(&self) -> u64 {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Close every live connection cleanly: a Close frame (1000), then TCP close.
    pub fn kick_all(&self) {
        self.shared.kick.fetch_add(1, Ordering::SeqCst);
    }

    /// Abort every live connection with a TCP RST, no Close frame.
    pub fn reset_all(&self) {
        self.shared.reset.fetch_add(1, Ordering::SeqCst);
    }

    /// Go silent on every live connection: read and discard everything,
    /// answer nothing (not even pings), keep the socket open until the
    /// client closes it. New connections are served normally.
    pub fn blackhole_all(&self) {
        self.shared.blackhole.fetch_add(1, Ordering::SeqCst);
    }

    /// Change the idle cut for all connections (`None`: off).
    pub fn set_idle_cut(&self, cut: Option<Duration>) {
        let ms = cut.map_or(0, |d| d.as_millis().max(1) as u64);
        self.shared.idle_cut_ms.store(ms, Ordering::SeqCst);
    }

    /// Send `v` to every live connection.
    pub fn push(&self, v: Value) {
        for p in self
            .shared
            .pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = p.send(v.clone());
        }
    }

    /// The next text message seen within `timeout`, skipping opens and closes.
    pub fn next_text(&self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.seen.recv_deadline(deadline).ok()? {
                Seen::Text(_, v) => return Some(v),
                _ => continue,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn serve(stream: TcpStream, s: Arc<ServerShared>, opts: ServerOpts) {
    if s.stop.load(Ordering::SeqCst) {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(raw) = stream.try_clone() else { return };
    #[cfg(feature = "native-tls")]
    let boxed: Box<dyn Stream> = match &opts.tls {
        Some(acceptor) => match acceptor.accept(stream) {
            Ok(tls) => Box::new(tls),
            Err(_) => return,
        },
        None => Box::new(stream),
    };
    #[cfg(not(feature = "native-tls"))]
    let boxed: Box<dyn Stream> = Box::new(stream);
    // Read before the handshake completes: a fault ordered after the client
    // saw the connection open must apply to it.
    let epochs = |s: &ServerShared| {
        (
            s.kick.load(Ordering::SeqCst),
            s.reset.load(Ordering::SeqCst),
            s.blackhole.load(Ordering::SeqCst),
        )
    };
    let start = epochs(&s);
    let (ptx, prx) = unbounded::<Value>();
    s.pushes.lock().unwrap_or_else(|e| e.into_inner()).push(ptx);
    let Ok(mut ws) = tungstenite::accept(boxed) else {
        return;
    };
    let _ = raw.set_read_timeout(Some(Duration::from_millis(5)));
    let id = s.conns.fetch_add(1, Ordering::SeqCst) + 1;
    s.live.fetch_add(1, Ordering::SeqCst);
    let _ = s.seen.send(Seen::Open(id));
    let handler: ConnHandler = match (&opts.conn_handler, &opts.handler) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => {
            let h = h.clone();
            Arc::new(move |_, v: &Value| h(v))
        }
        (None, None) => {
            let h = ok_handler();
            Arc::new(move |_, v: &Value| h(v))
        }
    };
    let mut last = Instant::now();
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let now = epochs(&s);
        if now.0 != start.0 {
            let _ = ws.close(None);
            // Drive the close handshake briefly, then go.
            let end = Instant::now() + Duration::from_millis(200);
            while Instant::now() < end && ws.read().is_ok() {}
            break;
        }
        if now.1 != start.1 {
            let _ = socket2::SockRef::from(&raw).set_linger(Some(Duration::ZERO));
            break; // dropping the socket with linger 0 sends RST
        }
        if now.2 != start.2 {
            swallow(&raw, &s);
            break;
        }
        let cut = s.idle_cut_ms.load(Ordering::SeqCst);
        if cut > 0 && last.elapsed() >= Duration::from_millis(cut) {
            break; // idle cut: drop the TCP connection
        }
        let mut out: Vec<Value> = prx.try_iter().collect();
        match ws.read() {
            Ok(Frame::Text(t)) => {
                last = Instant::now();
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                out.extend(handler(id, &v));
                if !opts.forget_texts {
                    let _ = s.seen.send(Seen::Text(id, v));
                }
            }
            Ok(_) => last = Instant::now(),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(q) = &opts.on_quiet {
                    out.extend(q());
                }
            }
            Err(_) => break,
        }
        for v in out {
            if ws.write(Frame::Text(v.to_string().into())).is_err() {
                break;
            }
        }
        if let Err(tungstenite::Error::Io(e)) = ws.flush()
            && !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            break;
        }
    }
    s.live.fetch_sub(1, Ordering::SeqCst);
    let _ = s.seen.send(Seen::Closed(id));
}

/// A black hole: discard whatever arrives until the peer goes away.
fn swallow(mut raw: &TcpStream, s: &ServerShared) {
    let mut buf = [0u8; 4096];
    while !s.stop.load(Ordering::SeqCst) {
        match raw.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

const FORWARD: u8 = 0;
const BLACKHOLE: u8 = 1;
const STALL: u8 = 2;
const CUT: u8 = 3;
const RESET: u8 = 4;

struct Pipe {
    mode: AtomicU8,
    delay_ms: AtomicU64,
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream` that can cut (FIN),
/// reset (RST), black-hole, stall or delay the connections through it.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    pipes: Arc<Mutex<Vec<Arc<Pipe>>>>,
    /// Mode of connections accepted from now on.
    new_mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Connections accepted (and connected upstream) so far.
    pub accepted: Arc<AtomicU64>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("accepted", &self.accepted.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy on `127.0.0.1:0` forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_on("127.0.0.1:0", upstream).expect("binding 127.0.0.1:0")
    }

    /// A proxy on `addr` forwarding to `upstream`.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub fn start_on(addr: impl ToSocketAddrs, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let pipes: Arc<Mutex<Vec<Arc<Pipe>>>> = Arc::default();
        let new_mode = Arc::new(AtomicU8::new(FORWARD));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (p, m, d, st, acc) = (
            pipes.clone(),
            new_mode.clone(),
            delay_ms.clone(),
            stop.clone(),
            accepted.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let pipe = Arc::new(Pipe {
                    mode: AtomicU8::new(m.load(Ordering::SeqCst)),
                    delay_ms: AtomicU64::new(d.load(Ordering::SeqCst)),
                });
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(pipe.clone());
                let pipe2 = pipe.clone();
                thread::spawn(move || pump(client, server, pipe));
                thread::spawn(move || pump(s2, c2, pipe2));
            }
        });
        Ok(Proxy {
            addr,
            pipes,
            new_mode,
            delay_ms,
            stop,
            accepted,
        })
    }

    /// `ws://` + its address.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn set_all(&self, mode: u8) {
        let mut pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
        for p in pipes.iter() {
            p.mode.store(mode, Ordering::SeqCst);
        }
        if mode == CUT || mode == RESET {
            pipes.clear();
        }
    }

    /// Close current connections with FIN both ways.
    pub fn cut(&self) {
        self.set_all(CUT);
    }

    /// Close current connections with RST both ways.
    pub fn reset(&self) {
        self.set_all(RESET);
    }

    /// Stop forwarding on current and new connections, keeping the sockets
    /// open: data vanishes, as behind a dead NAT. [`restore`](Self::restore)
    /// brings back new connections only.
    pub fn blackhole(&self) {
        self.new_mode.store(BLACKHOLE, Ordering::SeqCst);
        self.set_all(BLACKHOLE);
    }

    /// Hold traffic on current connections: nothing is read, nothing is lost.
    pub fn stall(&self) {
        self.set_all(STALL);
    }

    /// New connections forward again; stalled ones resume. Black-holed ones
    /// stay dead, as they would on a real network.
    pub fn restore(&self) {
        self.new_mode.store(FORWARD, Ordering::SeqCst);
        for p in self.pipes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = p
                .mode
                .compare_exchange(STALL, FORWARD, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Delay every chunk by `d` on current and new connections.
    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
        for p in self.pipes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            p.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_all(RESET);
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, pipe: Arc<Pipe>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(5)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.mode.load(Ordering::SeqCst) {
            CUT => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            RESET => {
                for s in [&from, &to] {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
                return; // dropping both with linger 0 sends RST
            }
            STALL => {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Data read just as the mode changed obeys the new mode.
                let mode = loop {
                    match pipe.mode.load(Ordering::SeqCst) {
                        STALL => thread::sleep(Duration::from_millis(2)),
                        m => break m,
                    }
                };
                match mode {
                    BLACKHOLE => continue,   // swallowed
                    CUT | RESET => continue, // handled at the top of the loop
                    _ => {}
                }
                let d = pipe.delay_ms.load(Ordering::SeqCst);
                if d > 0 {
                    thread::sleep(Duration::from_millis(d));
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
