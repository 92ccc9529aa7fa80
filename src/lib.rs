//! # longlink
//!
//! A synchronous, runtime-free WebSocket client that keeps **one link alive
//! for good**, so that application code can act as if it never breaks:
//! heartbeat, dead-peer detection, reconnect with backoff, re-login, an
//! ordered outbox, operator subscriptions and blocking request/reply. No
//! async runtime: one I/O thread owns the socket, callers hold a cloneable
//! blocking handle.
//!
//! Messages are JSON objects with an operator field, in the style of
//! mini-program backends: `{"Operator": "LoginOK", "openId": "…"}`.
//!
//! ## Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use longlink::{Client, Expect};
//! use serde_json::json;
//!
//! let client = Client::builder("wss://example.com/ws")
//!     .heartbeat_interval(Duration::from_secs(25))
//!     .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
//!     .at_least_once(true) // msgId + Ack: re-sent until acknowledged
//!     // Runs after every (re)connect, before anything buffered is sent.
//!     .on_open(|link| {
//!         let ok = link.request_expect(
//!             json!({"Operator": "userLogin", "userCode": "abc"}),
//!             // BanLogin: with `?` the link ends for good instead of retrying.
//!             Expect::reply("LoginOK").or_fatal("BanLogin"),
//!             Duration::from_secs(5),
//!         )?; // a reply goes to its request, not to subscribers
//!         println!("logged in as {}", ok.value()["openId"]);
//!         Ok(())
//!     })
//!     .connect()?;
//!
//! // Messages no request waits for go to subscribers, by operator.
//! let _sub = client.on("CreateInvitationOK", |msg| println!("posted #{}", msg.value()["id"]));
//! client.on_state(|s| println!("link is {s:?}"));
//! client.send(json!({"Operator": "CreateInvitation", "Table": "hi"}))?; // queued, in order
//! let page = client.request(json!({"Operator": "GetInvitation", "limt": 10}), Duration::from_secs(5))?;
//! println!("{}", page.value()["data"]);
//! client.close(Duration::from_secs(2))?;
//! # Ok::<(), longlink::Error>(())
//! ```
//!
//! ## The app's life: pause and resume
//!
//! [`Client::pause`] when the app goes to the background (the connection
//! closes with 1001, nothing more happens on the network, `send` queues),
//! [`Client::resume`] when it comes back (connect at once, `on_open`,
//! flush in order).
//!
//! ## Where to connect
//!
//! [`ClientBuilder::url_with`] computes the URL at every attempt (a signed
//! URL, an expiring token); [`ClientBuilder::endpoints`] lists several URLs
//! for one service, an attempt that fails moving to the next.
//! [`LinkState::Connecting`] names each attempt's endpoint and
//! [`Stats::endpoint`] the one in use.
//!
//! ## Receiving: closures or receivers
//!
//! What is registered on the builder misses nothing: a push sent right
//! after the handshake, the first state. A [`Receiver`] is pulled in the
//! application's own loop; bounded, it holds reading back when full.
//! Messages nobody takes are counted in [`Stats::unclaimed`].
//!
//! ```no_run
//! # use std::time::Duration;
//! # use longlink::Client;
//! let mut builder = Client::builder("wss://example.com/ws")
//!     .on_state(|s| println!("link: {s:?}")) // sees Connecting { attempt: 0, .. } too
//!     .on("Notice", |m| println!("notice: {}", m.value()["text"]));
//! let welcome = builder.receiver("Welcome"); // before the first connect
//! let client = builder.connect()?;
//! let hello = welcome.recv_timeout(Duration::from_secs(5))?;
//! let rest = client.receiver_any(); // every operator nobody else takes
//! for msg in rest.try_iter() { /* in the app's own loop */ }
//! # Ok::<(), longlink::Error>(())
//! ```
//!
//! ## Threading model
//!
//! Each [`Client`] has one or two threads:
//!
//! - the **I/O thread** owns the socket alone. It sleeps in a readiness
//!   poller (epoll/kqueue/IOCP) until the socket is ready, a caller wakes
//!   it, or the next timer is due: an idle link costs no wake-ups between
//!   heartbeats. It batches writes (many frames, one flush), reads until the
//!   socket is empty, runs the heartbeat, reconnects and flushes the outbox.
//! - the **dispatcher thread** runs all user code: subscriber closures,
//!   state callbacks and the `on_open` hook, one at a time, in arrival
//!   order. A panic there is caught and counted in [`Stats::handler_panics`].
//!   It starts with the first subscription (at once with an `on_open`
//!   hook): a link nobody subscribes to has no dispatcher, and what arrives
//!   before a subscription is not kept for it.
//!
//! A clone of `Client` shares the link, the outbox and the subscriptions.
//! `Client` is `Send + Sync`; every method may be called from any thread.
//! A slow closure delays only later closures. When the dispatcher's queue is
//! full ([`ClientBuilder::dispatch_capacity`]) the I/O thread stops reading
//! (TCP backpressure) rather than growing memory; that pause never counts as
//! a dead peer. Replies to [`Client::request`] go straight from the I/O
//! thread to the waiting caller, so a closure may make requests: while a
//! request waits, reading goes on past a full dispatcher for up to 1 MiB
//! more, so that a reply behind a burst of pushes still reaches a
//! closure (or the `on_open` hook) that waits for it.
//!
//! A closure stored in the client's own subscriptions that holds a strong
//! `Client` keeps the link alive until [`Client::close`]; hold a
//! [`WeakClient`] ([`Client::downgrade`]) there instead. When the last
//! `Client` is dropped, the link closes as `close` does.
//!
//! ## Reconnect, re-login and the outbox
//!
//! - Any inbound frame proves the peer alive. After
//!   [`heartbeat_interval`](ClientBuilder::heartbeat_interval) of silence a
//!   ping goes out; with no frame within
//!   [`heartbeat_timeout`](ClientBuilder::heartbeat_timeout) the link is
//!   declared dead — also when the peer vanished without a FIN. At most
//!   65,536 receipts and answered requests wait for a pong; past that,
//!   writing waits for one, and a peer that still answers no ping within
//!   interval + timeout (a pong lagging behind a flood is no fault until
//!   then) is declared dead: nothing it read could ever be confirmed.
//! - A link that was up for 5 s is retried at once when it drops; then the
//!   delay grows ×2 from 500 ms to 30 s with jitter. A server Close frame
//!   (code 1000 included) is a drop like any other: only
//!   [`Client::close`] stops the link.
//! - After each handshake the [`on_open`](ClientBuilder::on_open) hook runs
//!   (e.g. log in with a cached session id); only its own messages are
//!   written until it returns `Ok`.
//! - [`Client::send`] puts the message in the outbox: it leaves in the order
//!   accepted, across any number of reconnects. The outbox is bounded
//!   (10,000 messages, 8 MiB); when full, `send` hands the message back
//!   ([`Overflow`] lists the other policies).
//! - Delivery is *at most once* unless configured otherwise (see below):
//!   a message written into a socket that then died may be lost, and is
//!   counted in [`Stats::possibly_lost`].
//! - A request whose link dies after it was written fails with
//!   [`Error::ConnectionLost`]: the outcome is unknown.
//!
//! ## Delivery modes
//!
//! | mode | turn on | guarantees | costs (`cargo bench --bench perf`, median of 5; a 2-core machine shared with the server process: runs vary by ±30 %) |
//! |---|---|---|---|
//! | at most once | default | order; each message leaves once; a message written into a link that then dies may be lost: counted in `possibly_lost`, reported per message by a receipt | 1.0M msg/s (0.5–0.8× raw tungstenite batched), 0.9 µs per `send` |
//! | at least once | [`at_least_once(true)`](ClientBuilder::at_least_once) | order; every accepted message arrives, re-sent until the server acknowledges it; with the server's duplicate check (below), effectively once | 0.42–0.63× (584k–883k msg/s, 1.1–1.7 µs per `send`); each message stays in memory (and in the outbox bounds) until acknowledged; ~50 bytes of `msgRun` and `msgId` per message |
//! | durable | [`durable(path)`](ClientBuilder::durable) | at least once, and accepted messages survive a crash, kill or restart of the process: the next client on the same file sends them, same ids, in order | 0.11–0.18× (167k–210k msg/s, 4.8–6.0 µs per `send`: one `write(2)` per message) with `JournalSync::Interval(1 s)` (default) or `Never`; `EveryMessage` survives power loss too at one `fdatasync` per message (about 2k msg/s, 0.5 ms per `send` on the development machine's disk) |
//!
//! ```no_run
//! # use longlink::{Client, JournalSync};
//! let client = Client::builder("wss://example.com/ws")
//!     .durable("outbox.journal") // implies at least once
//!     .journal_sync(JournalSync::EveryMessage) // survive power loss too
//!     .connect()?;
//! for m in client.recovered() {
//!     println!("re-sending {} left by the last run", m.operator());
//! }
//! # Ok::<(), longlink::Error>(())
//! ```
//!
//! The wire contract of at least once:
//!
//! ```text
//! client → {"msgRun":4503599627370495,"msgId":1795726594488260,"Operator":"CreateInvitation","Table":"hi"}
//! server → {"Operator":"Ack","msgId":1795726594488260}     every id ≤ this one is received
//! ```
//!
//! Every message carries the client's *run* (`msgRun`, a random number below
//! 2^53 chosen when the client starts; a durable client keeps its journal's
//! run across restarts) and an id (`msgId`) that grows within the run. The
//! server keeps, per client (per login), the (run, highest id) pair it has
//! handled: a message whose run differs from the stored one starts a new
//! sequence (handle it, store its run and id); within the run, a message with
//! an id at most the highest is a duplicate, dropped but still acknowledged.
//! Nothing relies on ids growing across processes or on the clock: a process
//! restarted after the clock stepped back, or on another machine, has a new
//! run. Acks carry only the id, may be cumulative and batched. Operator and
//! fields are configurable (`ack_operator`, `message_id_field`,
//! `message_run_field`). Requests, volatile messages, heartbeats and the
//! `on_open` step's messages are not stamped.
//!
//! Per message, [`send_with(msg, SendOptions)`](Client::send_with) returns a [`Receipt`] that can be
//! polled (`status()`) or waited on (`wait(timeout)`): `Queued` → `Written` →
//! `Confirmed` (pong, at most once) / `Acknowledged` (at least once) /
//! `Expired` / `Failed(PossiblyLost | NotOpen | Dropped | TooLarge | Closed)`.
//! `SendOptions::new().ttl(d)` drops a message not written within `d` (never
//! sent late); `SendOptions::volatile()` is never buffered: written if the link
//! is open, otherwise dropped and reported (typing, presence).
//! [`request_with`](Client::request_with)`(msg, RequestOptions::new(t).idempotent(true))` writes a
//! request again after a reconnect instead of failing with `ConnectionLost`.
//!
//! What a pong proves: a WebSocket pong answers a ping written after some
//! frames, so the peer's WebSocket layer read those frames. It is used to
//! narrow `possibly_lost` to the frames written after the last answered ping,
//! and to move receipts to `Confirmed`. It does not prove that the application
//! handled or stored them, and if a WebSocket-terminating proxy answers pings
//! itself it proves only that the proxy read them. Only an application ack
//! (at least once) proves the server has the message.
//!
//! ## Features
//!
//! - `native-tls` (default): `wss://` through the platform's TLS; supports
//!   [`ClientBuilder::tls_root_certificate_pem`].
//! - `rustls`: `wss://` through rustls and the webpki roots, used when
//!   `native-tls` is off.
//! - `testkit`: the `testkit` module, a scriptable WebSocket server and a
//!   fault-injecting TCP proxy to test your application across disconnects.
//!
//! ## Logging
//!
//! Through the `log` crate. `info`: connects, drops and their reasons,
//! backoff delays. `warn`: failed attempts, giving up, unsent messages at
//! close, disabled certificate checks. `debug`: state changes, heartbeats,
//! invalid frames (by size, not content). Header values, URL queries and
//! user info, proxy credentials and message payloads are never logged, and
//! `Debug` of this crate's types never shows them either (handed-back
//! messages appear as operator and size). tungstenite's own `trace` level
//! prints the raw upgrade request and every frame: keep the `tungstenite`
//! target at `debug` or below where secrets matter.
//!
//! ## Proxies and TLS
//!
//! [`ClientBuilder::proxy`] tunnels through an HTTP `CONNECT` proxy (basic
//! authentication optional; `wss://` stays end to end);
//! [`ClientBuilder::proxy_from_env`] reads `HTTPS_PROXY` / `HTTP_PROXY` /
//! `ALL_PROXY` and `NO_PROXY`, only when asked. `wss://` verifies the
//! certificate and the host name; a failure ends the link with
//! [`Error::Tls`]. [`ClientBuilder::danger_accept_invalid_certificates`]
//! is the explicit way around it, and warns at every connect.

mod backoff;
mod client;
mod command;
mod config;
mod delivery;
mod dispatch;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod io;
mod journal;
mod link;
mod liveness;
mod message;
mod outbox;
mod owner;
mod pending;
mod send;
mod sequence;
mod session;
mod shared;
mod stack;
mod state;
mod subscribe;
#[cfg(feature = "testkit")]
pub mod testkit;
mod time;
mod tunnel;

pub use client::{Client, Expect, WeakClient};
pub use config::ClientBuilder;
pub use delivery::{Failure, Receipt, RequestOptions, SendOptions, Status};
pub use error::{Error, Result};
pub use journal::JournalSync;
pub use link::Link;
pub use message::{InvalidFrame, Message};
pub use outbox::Overflow;
pub use state::{Cause, CloseReason, LinkState, Stats};
pub use subscribe::{Receiver, Subscription};
