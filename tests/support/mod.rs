//! Test support: a real, scriptable tungstenite server on `127.0.0.1:0`, a
//! fault-injecting TCP proxy, and TLS material from a generated CA.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};
use tungstenite::Message as Frame;

/// Wait for `cond` with a bounded deadline, polling a cheap predicate.
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

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// What the server saw.
#[derive(Debug, Clone)]
pub enum Seen {
    Open(u64),
    Text(u64, Value),
    Closed(u64),
}

/// Replies to one inbound message.
pub type Handler = Arc<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

/// The default handler: `X` → `XOK`, echoing `reqId` and `seq`.
pub fn ok_handler() -> Handler {
    Arc::new(|v: &Value| {
        let op = v["Operator"].as_str().unwrap_or_default();
        let mut reply = json!({"Operator": format!("{op}OK")});
        for f in ["reqId", "seq", "n"] {
            if let Some(x) = v.get(f) {
                reply[f] = x.clone();
            }
        }
        if op == "Heart" {
            return vec![json!({"Operator": "HeartOK"})];
        }
        if op.starts_with("Fire") {
            return vec![]; // fire and forget
        }
        vec![reply]
    })
}

#[derive(Clone, Default)]
pub struct ServerOpts {
    pub handler: Option<Handler>,
    /// Cut connections (TCP close) after this long without any inbound frame.
    pub idle_cut: Option<Duration>,
    /// Called when no frame arrived for a few milliseconds; what it returns is sent.
    pub on_quiet: Option<Arc<dyn Fn() -> Vec<Value> + Send + Sync>>,
    #[cfg(feature = "native-tls")]
    pub tls: Option<native_tls::TlsAcceptor>,
}

struct ServerShared {
    seen: Sender<Seen>,
    conns: AtomicU64,
    live: AtomicUsize,
    stop: AtomicBool,
    /// Bumped to make every live connection close with a Close frame.
    kick: AtomicU64,
    pushes: Mutex<Vec<Sender<Value>>>,
}

/// A WebSocket server in the test process.
pub struct Server {
    pub addr: SocketAddr,
    pub seen: Receiver<Seen>,
    shared: Arc<ServerShared>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerOpts::default())
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = unbounded();
        let shared = Arc::new(ServerShared {
            seen: tx,
            conns: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            kick: AtomicU64::new(0),
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
        Server {
            addr,
            seen: rx,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn connections(&self) -> u64 {
        self.shared.conns.load(Ordering::SeqCst)
    }

    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Close every live connection with a Close frame (code 1000).
    pub fn kick_all(&self) {
        self.shared.kick.fetch_add(1, Ordering::SeqCst);
    }

    /// Send `v` to every live connection.
    pub fn push(&self, v: Value) {
        for p in self.shared.pushes.lock().unwrap().iter() {
            let _ = p.send(v.clone());
        }
    }

    /// Next text message seen, skipping opens/closes.
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
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let raw = stream.try_clone().unwrap();
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
    // Read before the handshake completes: a kick after the client saw the
    // connection open must apply to it.
    let kick = s.kick.load(Ordering::SeqCst);
    let (ptx, prx) = unbounded::<Value>();
    s.pushes.lock().unwrap().push(ptx);
    let Ok(mut ws) = tungstenite::accept(boxed) else {
        return;
    };
    raw.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let id = s.conns.fetch_add(1, Ordering::SeqCst) + 1;
    s.live.fetch_add(1, Ordering::SeqCst);
    let _ = s.seen.send(Seen::Open(id));
    let handler = opts.handler.clone().unwrap_or_else(ok_handler);
    let mut last = Instant::now();
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        if s.kick.load(Ordering::SeqCst) != kick {
            let _ = ws.close(None);
            // Drive the close handshake briefly, then go.
            let end = Instant::now() + Duration::from_millis(200);
            while Instant::now() < end && ws.read().is_ok() {}
            break;
        }
        if let Some(cut) = opts.idle_cut
            && last.elapsed() >= cut
        {
            break; // idle cut: drop the TCP connection
        }
        let mut out = Vec::new();
        while let Ok(v) = prx.try_recv() {
            out.push(v);
        }
        match ws.read() {
            Ok(Frame::Text(t)) => {
                last = Instant::now();
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                out.extend(handler(&v));
                let _ = s.seen.send(Seen::Text(id, v));
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

const FORWARD: u8 = 0;
const BLACKHOLE: u8 = 1;
const STALL: u8 = 2;
const CUT: u8 = 3;
const RESET: u8 = 4;

struct Pipe {
    mode: AtomicU8,
    delay_ms: AtomicU64,
}

/// A TCP proxy that can cut (FIN), reset (RST), black-hole, stall or delay
/// the connections through it, on command.
pub struct Proxy {
    pub addr: SocketAddr,
    pipes: Arc<Mutex<Vec<Arc<Pipe>>>>,
    /// Mode of connections accepted from now on.
    new_mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
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
                acc.fetch_add(1, Ordering::SeqCst);
                let pipe = Arc::new(Pipe {
                    mode: AtomicU8::new(m.load(Ordering::SeqCst)),
                    delay_ms: AtomicU64::new(d.load(Ordering::SeqCst)),
                });
                p.lock().unwrap().push(pipe.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let pipe2 = pipe.clone();
                thread::spawn(move || pump(client, server, pipe));
                thread::spawn(move || pump(s2, c2, pipe2));
            }
        });
        Proxy {
            addr,
            pipes,
            new_mode,
            delay_ms,
            stop,
            accepted,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn set_all(&self, mode: u8) {
        let mut pipes = self.pipes.lock().unwrap();
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

    /// Stop forwarding on current and new connections; keep sockets open.
    pub fn blackhole(&self) {
        self.new_mode.store(BLACKHOLE, Ordering::SeqCst);
        self.set_all(BLACKHOLE);
    }

    /// Hold traffic on current connections (nothing read, nothing lost).
    pub fn stall(&self) {
        self.set_all(STALL);
    }

    /// New connections forward again; stalled ones resume. Black-holed ones
    /// stay dead, as they would on a real network.
    pub fn restore(&self) {
        self.new_mode.store(FORWARD, Ordering::SeqCst);
        for p in self.pipes.lock().unwrap().iter() {
            let _ = p
                .mode
                .compare_exchange(STALL, FORWARD, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Delay every chunk by `d` on current and new connections.
    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
        for p in self.pipes.lock().unwrap().iter() {
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
    from.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
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

/// A CA and a server certificate for `localhost` / 127.0.0.1, in PEM.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "longlink test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
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

/// What a deduplicating at-least-once server accepted.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Highest message id accepted.
    pub highest: u64,
    /// Messages accepted (first copy of each id), in order.
    pub accepted: Vec<Value>,
    /// Copies of ids already accepted (dropped, but acknowledged).
    pub duplicates: u64,
    /// When false, nothing is acknowledged (messages are still accepted).
    pub ack: bool,
}

/// The server side of at-least-once, as DESIGN.md describes it: a message
/// whose `msgId` is at most the highest seen is a duplicate (dropped, still
/// acknowledged); every message is answered with a cumulative `Ack`.
/// Other messages go to [`ok_handler`].
pub fn dedup_handler(state: Arc<Mutex<Dedup>>) -> Handler {
    let ok = ok_handler();
    Arc::new(move |v: &Value| {
        let Some(id) = v.get("msgId").and_then(Value::as_u64) else {
            return ok(v);
        };
        let mut d = state.lock().unwrap();
        if id > d.highest {
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

/// A deduplicating server that acknowledges.
pub fn dedup_server() -> (Server, Arc<Mutex<Dedup>>) {
    let state = Arc::new(Mutex::new(Dedup {
        ack: true,
        ..Dedup::default()
    }));
    let server = Server::start_with(ServerOpts {
        handler: Some(dedup_handler(state.clone())),
        ..ServerOpts::default()
    });
    (server, state)
}

/// A loopback address where nothing listens (connections are refused).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
