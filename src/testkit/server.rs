//! The scriptable WebSocket server: answers with a handler, reports what
//! it saw, drops its connections on command.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::Value;
use tungstenite::Message as Frame;

use super::{ConnHandler, Handler, QuietHandler, ok_handler};

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
            let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            }));
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
