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

mod handlers;
mod relay;
mod server;

use std::thread;
use std::time::{Duration, Instant};

pub use handlers::{ConnHandler, Dedup, Handler, QuietHandler, dedup_handler, ok_handler};
pub use relay::Proxy;
pub use server::{Seen, Server, ServerOpts};

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
