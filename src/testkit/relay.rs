//! The fault-injecting TCP relay ([`Proxy`]): forwards bytes, and cuts,
//! resets, black-holes, stalls or delays them on command.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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
