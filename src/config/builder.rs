//! The builder's defaults and setters, and the two ways to start a client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{ClientBuilder, Config};
use crate::backoff::BackoffPolicy;
use crate::session::{Rules, TRACK_CAP};
use crate::tunnel::HttpProxy;
use crate::{Client, Error, JournalSync, Link, Overflow};

impl ClientBuilder {
    /// The rules being built (the builder is their only holder yet).
    fn rules(&mut self) -> &mut Rules {
        Arc::make_mut(&mut self.cfg.rules)
    }

    pub(crate) fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            cfg: Config {
                url: url.into(),
                endpoints: Vec::new(),
                url_fn: None,
                headers: Vec::new(),
                header_fn: None,
                outbox_capacity: 10_000,
                outbox_max_bytes: 8 << 20,
                on_open: None,
                reply_suffix: "OK".into(),
                request_timeout: Duration::from_secs(10),
                dispatch_capacity: 1024,
                max_message_size: 16 << 20,
                read_buffer_size: 4096,
                drop_close_timeout: Duration::from_secs(1),
                rules: Arc::new(Rules {
                    connect_timeout: Duration::from_secs(10),
                    heartbeat_interval: Duration::from_secs(25),
                    heartbeat_timeout: Duration::from_secs(10),
                    app_heartbeat: None,
                    app_heartbeat_dispatch: false,
                    backoff: BackoffPolicy {
                        min: Duration::from_millis(500),
                        max: Duration::from_secs(30),
                        healthy_after: Duration::from_secs(5),
                        max_attempts: None,
                        spread: Duration::from_millis(250),
                    },
                    retry_rejections: false,
                    overflow: Overflow::Reject,
                    login_timeout: Duration::from_secs(10),
                    operator_field: "Operator".into(),
                    error_suffix: "Error".into(),
                    correlation_field: None,
                    window: (256, 1 << 20),
                    on_open: false,
                    acks: None,
                    durable: false,
                    track_cap: TRACK_CAP,
                    endpoints: 1,
                }),
                at_least_once: false,
                ack_operator: "Ack".into(),
                msg_id_field: "msgId".into(),
                msg_run_field: "msgRun".into(),
                journal: None,
                journal_sync: JournalSync::Interval(Duration::from_secs(1)),
                #[cfg(feature = "native-tls")]
                tls_roots: Vec::new(),
                accept_invalid_certs: false,
                proxy: None,
                proxy_from_env: false,
            },
            problems: Vec::new(),
            registry: Arc::default(),
        }
    }

    /// Adds a header to the upgrade request. Its value never appears in logs or `Debug`.
    /// Defaults to no headers.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cfg.headers.push((name.into(), value.into()));
        self
    }

    /// Produces headers at every connect, after the fixed ones: for tokens
    /// that are refreshed. Runs on the I/O thread, so keep it quick.
    /// Defaults to none.
    pub fn headers_with(
        mut self,
        f: impl Fn() -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> Self {
        self.cfg.header_fn = Some(Arc::new(f));
        self
    }

    /// Time allowed for TCP connect, TLS and the WebSocket handshake
    /// together; also how long [`connect`](Self::connect) waits for the
    /// first usable link. Defaults to 10 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.rules().connect_timeout = d;
        self
    }

    /// Silence (in either direction) after which a WebSocket ping (and the
    /// application heartbeat, if set) is sent. Defaults to 25 s, below common
    /// 30–60 s NAT and proxy idle cuts.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.rules().heartbeat_interval = d;
        self
    }

    /// How long after a ping any inbound frame must arrive before the peer
    /// is declared dead and the link reconnects. Defaults to 10 s.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.rules().heartbeat_timeout = d;
        self
    }

    /// Also send this application message with every ping, e.g. the
    /// recipe's `{"Operator":"Heart"}` answered by `HeartOK`. Its replies
    /// prove liveness like any frame and are not dispatched to subscribers
    /// (see [`app_heartbeat_dispatch`](Self::app_heartbeat_dispatch)).
    /// Defaults to off.
    pub fn app_heartbeat(
        mut self,
        payload: impl Serialize,
        reply_operator: impl Into<String>,
    ) -> Self {
        match serde_json::to_value(payload) {
            Ok(v) => match crate::message::encode(v, &self.cfg.rules.operator_field) {
                Ok((text, _)) => {
                    let reply = reply_operator.into();
                    self.rules().app_heartbeat = Some((tungstenite::Utf8Bytes::from(text), reply));
                }
                Err(e) => self.problems.push(format!("app_heartbeat: {e}")),
            },
            Err(e) => self.problems.push(format!("app_heartbeat: {e}")),
        }
        self
    }

    /// Dispatch application heartbeat replies to subscribers too.
    /// Defaults to false.
    pub fn app_heartbeat_dispatch(mut self, yes: bool) -> Self {
        self.rules().app_heartbeat_dispatch = yes;
        self
    }

    /// Lower bound of the reconnect backoff (also the floor of its jitter;
    /// the jitter window is at least four times this wide). Defaults to
    /// 500 ms.
    pub fn reconnect_min_delay(mut self, d: Duration) -> Self {
        self.rules().backoff.min = d;
        self
    }

    /// Upper bound of the reconnect backoff; jitter still applies there.
    /// Defaults to 30 s.
    pub fn reconnect_max_delay(mut self, d: Duration) -> Self {
        self.rules().backoff.max = d;
        self
    }

    /// The first retry after a working link drops waits a random time below
    /// this (uniformly): when a server restarts, its clients do not all
    /// come back in the same instant. Defaults to 250 ms: a lone drop is
    /// still retried at once (125 ms at the median); a restarting server
    /// is usually still down by then, and the attempts that fail are
    /// spread over at least six minimum delays
    /// ([`reconnect_min_delay`](Self::reconnect_min_delay)). Zero retries
    /// at once.
    pub fn reconnect_spread(mut self, d: Duration) -> Self {
        self.rules().backoff.spread = d;
        self
    }

    /// How long a link must stay open to count as healthy: after that, a drop
    /// is retried after the spread and the backoff starts over. Shorter-lived links
    /// keep backing off, so a server that accepts and drops is not hammered.
    /// Defaults to 5 s.
    pub fn reconnect_healthy_after(mut self, d: Duration) -> Self {
        self.rules().backoff.healthy_after = d;
        self
    }

    /// Give up after this many consecutive failed attempts and end in
    /// [`CloseReason::GaveUp`](crate::CloseReason::GaveUp): with 3, the
    /// third failed attempt in a row is the last one (the first connect
    /// counts as an attempt). Must be at least 1. Defaults to unlimited.
    pub fn reconnect_max_attempts(mut self, n: u32) -> Self {
        self.rules().backoff.max_attempts = Some(n);
        self
    }

    /// Keep retrying when the server refuses the upgrade with a 4xx status.
    /// Defaults to false: 4xx other than 408 and 429 end the link in
    /// [`CloseReason::Fatal`](crate::CloseReason::Fatal); 5xx are always retried.
    pub fn reconnect_on_rejection(mut self, yes: bool) -> Self {
        self.rules().retry_rejections = yes;
        self
    }

    /// Most messages the outbox holds. Defaults to 10,000.
    pub fn outbox_capacity(mut self, n: usize) -> Self {
        self.cfg.outbox_capacity = n;
        self
    }

    /// Most bytes of JSON the outbox holds (one larger message still fits an
    /// empty outbox). Defaults to 8 MiB.
    pub fn outbox_max_bytes(mut self, n: usize) -> Self {
        self.cfg.outbox_max_bytes = n;
        self
    }

    /// What `send` does when the outbox is full. Defaults to [`Overflow::Reject`].
    pub fn outbox_overflow(mut self, policy: Overflow) -> Self {
        self.rules().overflow = policy;
        self
    }

    /// The re-login step: runs after every successful handshake and before
    /// the outbox is flushed, on the dispatcher thread (never on the I/O
    /// thread). Messages sent or requested through the given [`Link`] are
    /// the only ones written while it runs. `Ok` opens the link; an error
    /// counts as a failed attempt (backoff); [`Error::fatal`] ends the link.
    /// Defaults to none.
    pub fn on_open(
        mut self,
        hook: impl Fn(&Link) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.cfg.on_open = Some(Arc::new(hook));
        self
    }

    /// How long the `on_open` hook may take before the attempt counts as
    /// failed. Defaults to 10 s.
    pub fn login_timeout(mut self, d: Duration) -> Self {
        self.rules().login_timeout = d;
        self
    }

    /// The JSON field that names a message's operator. Defaults to `"Operator"`.
    pub fn operator_field(mut self, field: impl Into<String>) -> Self {
        self.rules().operator_field = field.into().into();
        self
    }

    /// Suffix of the reply operator: `X` is answered by `X` + suffix.
    /// Defaults to `"OK"`.
    pub fn reply_suffix(mut self, s: impl Into<String>) -> Self {
        self.cfg.reply_suffix = s.into().into();
        self
    }

    /// Suffix of the error reply operator: `X` + suffix fails the request
    /// with [`Error::Remote`]. Defaults to `"Error"`.
    pub fn error_suffix(mut self, s: impl Into<String>) -> Self {
        self.rules().error_suffix = s.into().into();
        self
    }

    /// Stamp every request with a unique number in this field and match the
    /// reply by it (the server must echo it), so concurrent requests of one
    /// operator are safe and a lost or late reply never costs another
    /// request its answer. Defaults to off: replies are matched by
    /// operator, first in, first out (see [`Client::request`]).
    pub fn correlation_field(mut self, field: impl Into<String>) -> Self {
        self.rules().correlation_field = Some(field.into().into());
        self
    }

    /// Deadline of [`Client::request`] calls that do not give one.
    /// Defaults to 10 s.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.cfg.request_timeout = d;
        self
    }

    /// Inbound messages waiting for subscriber closures. When full, the I/O
    /// thread stops reading (TCP backpressure) instead of growing memory; it
    /// does not count as silence. While a request waits for its reply it
    /// reads on for up to 1 MiB more, so that the reply is not stuck behind
    /// pushes (its caller may be the closure the queue waits for).
    /// Also each [`Receiver`](crate::Receiver)'s bound: a receiver
    /// allocates its slots up front (16 bytes each: 16 KiB at the default).
    /// Defaults to 1024; at most 1,048,576.
    pub fn dispatch_capacity(mut self, n: usize) -> Self {
        self.cfg.dispatch_capacity = n;
        self
    }

    /// Largest inbound message; a larger one resets the connection.
    /// Defaults to 16 MiB.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.cfg.max_message_size = n;
        self
    }

    /// Socket read buffer per connection, allocated at every connect.
    /// Defaults to 4 KiB (tungstenite's 128 KiB costs memory on every idle
    /// link); at most 64 MiB.
    pub fn read_buffer_size(mut self, n: usize) -> Self {
        self.cfg.read_buffer_size = n;
        self
    }

    /// How long dropping the last [`Client`] clone may spend flushing.
    /// Defaults to 1 s.
    pub fn drop_close_timeout(mut self, d: Duration) -> Self {
        self.cfg.drop_close_timeout = d;
        self
    }

    /// At-least-once delivery: every message queued by `send` is stamped
    /// with an increasing id in [`message_id_field`](Self::message_id_field)
    /// and the client's run id in
    /// [`message_run_field`](Self::message_run_field), kept after writing
    /// until the server acknowledges it with
    /// `{"Operator": "Ack", "msgId": N}` (cumulative: all ids up to N), and
    /// re-sent first, in order, after every reconnect and re-login. The
    /// server drops messages it has seen (and still acknowledges them):
    /// within one run, an id at most the highest it has seen is a
    /// duplicate; a message of another run starts a new sequence. Each
    /// client starts a new random run (a durable one keeps its journal's
    /// run, and its ids continue after the journal's last id), so no
    /// ordering of ids across processes, and no clock, is relied on. Ids
    /// and runs stay below 2^53 (exact in JavaScript). Messages
    /// awaiting their ack count toward the outbox bounds. Requests, volatile
    /// messages, heartbeats and the `on_open` hook's messages are not
    /// stamped. Defaults to false (at most once).
    pub fn at_least_once(mut self, yes: bool) -> Self {
        self.cfg.at_least_once = yes;
        self
    }

    /// At least once: how far writing may run ahead of the server's
    /// acknowledgements on a new connection, in messages and bytes
    /// (whichever comes first). After a cut, what was written and not
    /// acknowledged is written again: the window bounds that, and what a
    /// reconnect must replay. As the connection delivers, its window grows
    /// to half of what it has had acknowledged, up to 16 times these: a
    /// cut then makes write again at most about half of what the
    /// connection delivered, and a link that works is not held back.
    /// Defaults to 256 messages and 1 MiB (growing to 4,096 and 16 MiB).
    /// 1 MiB covers the bandwidth-delay product of an 80 Mbit/s link with
    /// 100 ms of round trip (a slow mobile link, 1 Mbit/s at 300 ms, needs
    /// 38 KB); 256 messages keep a server that cuts every connection after
    /// 500 messages from making each message be written more than about
    /// 2.7 times (30 times without a window). On loopback a fixed window
    /// of 256 cost 10–18 % of at-least-once throughput, the growing one
    /// 4–6 % (`LONGLINK_PERF_ONLY=window cargo bench --bench perf`).
    /// `usize::MAX` for both: no window. Both must be at least 1.
    pub fn in_flight_window(mut self, messages: usize, bytes: usize) -> Self {
        self.rules().window = (messages, bytes);
        self
    }

    /// Operator of the server's acknowledgements. Defaults to `"Ack"`.
    pub fn ack_operator(mut self, op: impl Into<String>) -> Self {
        self.cfg.ack_operator = op.into().into();
        self
    }

    /// Field carrying the message id, on messages and on acknowledgements.
    /// A field of that name in an application message is replaced.
    /// Defaults to `"msgId"`.
    pub fn message_id_field(mut self, field: impl Into<String>) -> Self {
        self.cfg.msg_id_field = field.into().into();
        self
    }

    /// Field carrying the run id on at-least-once messages: a random number
    /// (below 2^53, never 0) chosen when the client starts, kept in the
    /// journal by a [durable](Self::durable) client so that a restarted
    /// process continues its run. Ids only grow within a run. The server
    /// keeps, per client, the (run, highest id) pair it has accepted: a
    /// message whose run differs from the stored one starts a new sequence
    /// (accept it and store its run and id); within the run, an id at most
    /// the highest is a duplicate (drop it, still acknowledge it).
    /// Acknowledgements carry only the id. Defaults to `"msgRun"`.
    pub fn message_run_field(mut self, field: impl Into<String>) -> Self {
        self.cfg.msg_run_field = field.into().into();
        self
    }

    /// Durable outbox (implies [`at_least_once`](Self::at_least_once)):
    /// accepted messages and the id counter are appended to the journal at
    /// `path` before `send` returns, so they survive a crash or restart. A
    /// client started later with the same path sends what was left, in
    /// order, with the same ids (see [`Client::recovered`]). One client per
    /// file: a second one is refused while the first runs. A torn tail
    /// left by a crash is cut off with a warning. Defaults to none.
    pub fn durable(mut self, path: impl Into<PathBuf>) -> Self {
        self.cfg.journal = Some(path.into());
        self.cfg.at_least_once = true;
        self
    }

    /// When the journal is forced to disk. A killed process loses nothing
    /// under any policy; this bounds what a power loss can take. Defaults
    /// to [`JournalSync::Interval`] of 1 s.
    pub fn journal_sync(mut self, policy: JournalSync) -> Self {
        self.cfg.journal_sync = policy;
        self
    }

    /// Trust this CA (PEM) for `wss://`, in addition to the system's roots.
    /// Defaults to the system's roots only. Needs the `native-tls` feature.
    pub fn tls_root_certificate_pem(mut self, pem: &[u8]) -> Self {
        #[cfg(feature = "native-tls")]
        match native_tls::Certificate::from_pem(pem) {
            Ok(c) => self.cfg.tls_roots.push(c),
            Err(e) => self.problems.push(format!("tls_root_certificate_pem: {e}")),
        }
        #[cfg(not(feature = "native-tls"))]
        {
            let _ = pem;
            self.problems
                .push("tls_root_certificate_pem needs the native-tls feature".into());
        }
        self
    }

    /// **Insecure**: accept any certificate and host name on `wss://`. For
    /// tests against self-signed servers only; a warning is logged at every
    /// connect. Defaults to false (certificates and host names are verified).
    pub fn danger_accept_invalid_certificates(mut self, yes: bool) -> Self {
        self.cfg.accept_invalid_certs = yes;
        self
    }

    /// Reach the server through this HTTP proxy with `CONNECT`:
    /// `http://host:port`, or `http://user:password@host:port` for basic
    /// authentication (percent-encode special characters). `wss://` goes
    /// end to end through the tunnel: the proxy sees only the host and
    /// port. The credentials never appear in logs or `Debug`. Overrides
    /// [`proxy_from_env`](Self::proxy_from_env). Defaults to none.
    pub fn proxy(mut self, url: &str) -> Self {
        match HttpProxy::parse(url) {
            Ok(p) => self.cfg.proxy = Some(Box::new(p)),
            Err(e) => self.problems.push(format!("proxy: {e}")),
        }
        self
    }

    /// Take the proxy from the environment, as curl does: `HTTPS_PROXY`
    /// for `wss://`, `HTTP_PROXY` for `ws://`, else `ALL_PROXY` (upper or
    /// lower case), unless `NO_PROXY` lists the server's host (names,
    /// domain suffixes, IP addresses, `*`; no CIDR ranges). Read once, when
    /// the client is built. Defaults to off: the environment is ignored.
    pub fn proxy_from_env(mut self) -> Self {
        self.cfg.proxy_from_env = true;
        self
    }

    /// Starts the link and blocks until it is usable (handshake and `on_open`
    /// done) or `connect_timeout` passes. Retries with backoff meanwhile.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; the last attempt's error ([`Error::Connect`],
    /// [`Error::Rejected`], [`Error::Tls`]…) when the timeout passes or a
    /// permanent failure ends the link; its threads are then stopped.
    pub fn connect(self) -> Result<Client, Error> {
        let timeout = self.cfg.rules.connect_timeout;
        let registry = self.registry.clone();
        let client = Client::spawn(self.validate()?, registry)?;
        client.wait_open(timeout)?;
        Ok(client)
    }

    /// Starts the link and returns at once; it connects in the background
    /// and `send` queues meanwhile.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], or an I/O error creating the poller or threads.
    pub fn start(self) -> Result<Client, Error> {
        let registry = self.registry.clone();
        Client::spawn(self.validate()?, registry)
    }
}
