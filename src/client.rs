//! The handle: `Client` (owning, cloneable), `WeakClient`, `Expect`.
//! Subscriptions are in [`subscribe`](crate::subscribe). Methods build a [`Command`] (through the send path),
//! hand it to the I/O thread and, for requests, wait for the answer.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::command::Command;
use crate::config::Config;
use crate::dispatch::Registry;
use crate::owner::Owner;
use crate::send::Route;
use crate::shared::Shared;
use crate::{
    ClientBuilder, Error, LinkState, Message, Receipt, RequestOptions, SendOptions, Stats,
};

/// A handle to one long-lived WebSocket link. Cheap to clone; `Send + Sync`.
///
/// All clones share one link, one outbox and one set of subscriptions.
/// When the last clone is dropped, the link closes as [`close`](Self::close)
/// does, with [`drop_close_timeout`](ClientBuilder::drop_close_timeout).
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    pub(crate) owner: Arc<Owner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &crate::config::redact_url(&self.shared.cfg.url))
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

/// The reply a request expects, when it is not `X` → `XOK` / `XError`.
///
/// ```
/// # use longlink::Expect;
/// let login = Expect::reply("LoginOK").or_error("LoginError").or_fatal("BanLogin");
/// # let _ = login;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub(crate) reply: String,
    pub(crate) errors: Vec<String>,
    /// Those of `errors` that end the link when the `on_open` hook fails on them.
    pub(crate) fatal: Vec<String>,
}

impl Expect {
    /// The operator of the successful reply.
    pub fn reply(operator: impl Into<String>) -> Self {
        Expect {
            reply: operator.into(),
            errors: Vec::new(),
            fatal: Vec::new(),
        }
    }

    /// An operator that answers the request with a failure ([`Error::Remote`]).
    pub fn or_error(mut self, operator: impl Into<String>) -> Self {
        self.errors.push(operator.into());
        self
    }

    /// An operator that answers the request with a failure that no retry
    /// can mend, like `BanLogin`. The request fails with [`Error::Remote`]
    /// as with [`or_error`](Self::or_error). In addition, when the request
    /// is made inside the [`on_open`](ClientBuilder::on_open) hook and the
    /// hook then fails with that error (a plain `?` does it), the link ends
    /// for good in [`CloseReason::Fatal`](crate::CloseReason::Fatal)
    /// instead of retrying, and [`connect`](ClientBuilder::connect) returns
    /// at once with [`Error::Connect`] ("the on_open step failed"), whose
    /// [`Error::remote`] is the reply. A hook that handles the error and
    /// returns `Ok` (or another error) decides for itself. Outside the hook
    /// it is the same as `or_error`: a normal [`Client::request`] gets
    /// [`Error::Remote`] and the link goes on.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use longlink::{Client, Expect};
    /// # use serde_json::json;
    /// let client = Client::builder("wss://example.com/ws")
    ///     .on_open(|link| {
    ///         link.request_expect(
    ///             json!({"Operator": "userLogin", "userCode": "abc"}),
    ///             Expect::reply("LoginOK").or_error("LoginError").or_fatal("BanLogin"),
    ///             Duration::from_secs(5),
    ///         )?; // BanLogin: the link ends; LoginError: retried with backoff
    ///         Ok(())
    ///     })
    ///     .connect()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn or_fatal(mut self, operator: impl Into<String>) -> Self {
        let operator = operator.into();
        self.errors.push(operator.clone());
        self.fatal.push(operator);
        self
    }
}

impl Client {
    /// Starts configuring a client for `url` (`ws://` or `wss://`).
    ///
    /// ```no_run
    /// let client = longlink::Client::builder("wss://example.com/ws").connect()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    pub(crate) fn spawn(cfg: Config, registry: Arc<Registry>) -> Result<Client, Error> {
        let (shared, owner) = crate::owner::spawn(cfg, registry)?;
        Ok(Client { shared, owner })
    }

    pub(crate) fn wait_open(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::time::from_now(timeout);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let failure = loop {
            match &*state {
                LinkState::Open => return Ok(()),
                LinkState::Closed(reason) => break Some(format!("{reason:?}")),
                _ => {}
            }
            // An attempt still running at the deadline is bounded by the same
            // connect timeout: give it a moment to report its own error.
            let now = Instant::now();
            let connecting = matches!(*state, LinkState::Connecting { .. });
            let until = if now < deadline || !connecting {
                deadline
            } else {
                crate::time::after(deadline, Duration::from_millis(200))
            };
            if now >= until {
                break None;
            }
            state = self
                .shared
                .state_changed
                .wait_timeout(state, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(state);
        let last = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let _ = self.owner.close(Duration::from_millis(100));
        Err(match (last, failure) {
            (Some(e), _) => e,
            (None, Some(reason)) => Error::Fatal(reason),
            (None, None) => Error::Timeout(timeout),
        })
    }

    /// Queues `msg` for sending. Returns once it is in the outbox; it leaves
    /// in the order `send` accepted it, after the re-login step, across any
    /// number of reconnects. Blocks only under [`Overflow::Block`](crate::Overflow::Block).
    ///
    /// # Errors
    /// [`Error::Serialize`], [`Error::InvalidMessage`] (not an object with a
    /// string operator), [`Error::OutboxFull`], [`Error::Closed`]; the last
    /// three hand the message back ([`Error::into_message`]).
    ///
    /// ```no_run
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").start()?;
    /// client.send(serde_json::json!({"Operator": "CreateInvitation", "Table": "hi"}))?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn send(&self, msg: impl Serialize) -> Result<(), Error> {
        self.shared
            .send(Route::Outbox, msg, SendOptions::new(), false)
            .map(drop)
    }

    /// [`send`](Self::send) with a per-message policy (time to live,
    /// volatile), returning a [`Receipt`] that reports the message's fate:
    /// queued → written → acknowledged (at least once) or confirmed by a
    /// pong (at most once), or expired, or failed.
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`Error::Journal`] with a durable outbox.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use longlink::{SendOptions, Status};
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").start()?;
    /// let quote = serde_json::json!({"Operator": "Quote", "price": 101.5});
    /// let r = client.send_with(quote, SendOptions::new().ttl(Duration::from_secs(2)))?;
    /// match r.wait(Duration::from_secs(5)) {
    ///     Status::Expired => println!("too old by the time the link was back"),
    ///     s => println!("{s:?}"),
    /// }
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn send_with(&self, msg: impl Serialize, options: SendOptions) -> Result<Receipt, Error> {
        self.shared
            .send(Route::Outbox, msg, options, true)
            .map(|r| r.expect("a receipt was asked for"))
    }

    /// The messages recovered from the durable journal when this client
    /// started (accepted by an earlier process, not acknowledged), in the
    /// order they are being re-sent, with their ids. Empty otherwise.
    /// Messages whose [time to live](SendOptions::ttl) ran out before this
    /// start are not among them: they are dropped and counted in
    /// [`Stats::expired`].
    pub fn recovered(&self) -> Vec<Message> {
        self.shared.recovered.clone()
    }

    /// Sends `msg` (operator `X`) and blocks until the reply `X` + `"OK"`
    /// arrives, or `X` + `"Error"`, or `timeout` passes. The request waits in
    /// the outbox while the link is down, within the same deadline.
    ///
    /// Replies are matched first in, first out per operator, or by the
    /// [`correlation_field`](ClientBuilder::correlation_field) when set. A
    /// reply taken by a request is not dispatched to subscribers. Safe to
    /// call from a subscriber closure.
    ///
    /// By name, a reply does not say which request it answers: a request
    /// that timed out keeps a claim on the next reply of its operator (its
    /// late reply must not reach another caller), so after the server lost
    /// one reply, the next request of that operator may time out once; the
    /// one after it is matched again (with several requests of one
    /// operator in flight at once, a lost reply may cost more than one
    /// timeout). A correlation field removes the ambiguity.
    ///
    /// # Errors
    /// [`Error::Remote`] (error reply), [`Error::Timeout`],
    /// [`Error::ConnectionLost`] (written, link died, outcome unknown), plus
    /// those of [`send`](Self::send).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").connect()?;
    /// let page = client.request(
    ///     serde_json::json!({"Operator": "GetInvitation", "limt": 10}),
    ///     Duration::from_secs(5),
    /// )?;
    /// println!("{}", page.value()["data"]);
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn request(&self, msg: impl Serialize, timeout: Duration) -> Result<Message, Error> {
        self.shared
            .request(Route::Outbox, msg, None, timeout, false)
    }

    /// [`request`](Self::request) with options: the timeout, the reply
    /// operators, and whether it may be written again after a reconnect
    /// ([`RequestOptions::idempotent`]).
    ///
    /// # Errors
    /// As [`request`](Self::request); an idempotent request fails with
    /// [`Error::ConnectionLost`] only if the client closes, and otherwise
    /// with [`Error::Timeout`] when no reconnect brings its reply in time.
    pub fn request_with(
        &self,
        msg: impl Serialize,
        options: RequestOptions,
    ) -> Result<Message, Error> {
        let RequestOptions {
            timeout,
            expect,
            idempotent,
        } = options;
        match expect {
            Some(e) => self
                .shared
                .request_expecting(Route::Outbox, msg, e, timeout, idempotent),
            None => self
                .shared
                .request(Route::Outbox, msg, None, timeout, idempotent),
        }
    }

    /// [`request`](Self::request) with the configured
    /// [`request_timeout`](ClientBuilder::request_timeout).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn request_default(&self, msg: impl Serialize) -> Result<Message, Error> {
        self.request(msg, self.shared.cfg.request_timeout)
    }

    /// [`request`](Self::request) for pairs that do not follow the naming
    /// convention, like `userLogin` → `LoginOK` / `LoginError`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn request_expect(
        &self,
        msg: impl Serialize,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.shared
            .request_expecting(Route::Outbox, msg, expect, timeout, false)
    }

    /// The link's state now.
    pub fn state(&self) -> LinkState {
        self.shared.state()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The app goes to the background (mobile platforms cut sockets a few
    /// seconds later; a desktop app may be suspended). The connection
    /// closes cleanly (Close 1001, "going away") and nothing more happens
    /// on the network: no heartbeat, no reconnect, no wake-up of the I/O
    /// thread. The state is [`LinkState::Paused`]. `send` keeps queueing
    /// within the outbox bounds (receipts stay `Queued`, times to live
    /// keep running), requests wait within their deadlines, at least once
    /// keeps its unacknowledged messages for after [`resume`](Self::resume).
    /// Messages written just before and not yet confirmed count as at any
    /// loss of the connection. A pause during a connect attempt or the
    /// `on_open` step ends it. Pausing twice is pausing once; `close`
    /// while paused hands back (or journals) what is queued.
    ///
    /// ```no_run
    /// # let client = longlink::Client::builder("wss://example.com/ws").start()?;
    /// client.pause(); // the app's onHide
    /// client.send(serde_json::json!({"Operator": "Draft", "text": "later"}))?; // queued
    /// client.resume(); // onShow: connect now, on_open, flush
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn pause(&self) {
        self.shared.command(Command::Pause);
    }

    /// The app is back: connect at once (no backoff wait), run `on_open`,
    /// flush what was queued. Does nothing unless paused.
    pub fn resume(&self) {
        self.shared.command(Command::Resume);
    }

    /// Skip the current backoff wait and try at once (network came back, app
    /// came to the foreground). On an open link, probe the peer now instead.
    pub fn reconnect_now(&self) {
        self.shared.command(Command::ReconnectNow);
    }

    /// Flushes what is queued until `timeout`, then says goodbye (a ping,
    /// then a Close frame, and waits for the pong), stops and joins its
    /// threads. Returns by `timeout` (plus a few ms) whatever the I/O
    /// thread is doing: a connect attempt in progress is abandoned. New
    /// messages are refused from the start of the call (not the `on_open`
    /// hook's: a re-login in progress finishes, and the outbox flushes
    /// behind it). If the link is not open or logging in, nothing more can
    /// be flushed. Under at-least-once it also waits (within `timeout`) for
    /// the acknowledgements; messages not acknowledged are handed back.
    /// With a durable outbox they are not handed back: they stay in the
    /// journal and are sent by the next client started on it; one with a
    /// time to live keeps its deadline there, and the next start drops it
    /// if the deadline has passed. A message whose time to live has run
    /// out by the close is expired, neither handed back nor kept. The
    /// journal file is released.
    ///
    /// `Ok(())` means every message accepted before this call and not
    /// already reported lost (in [`Stats`] and receipts) is known to have
    /// arrived: a pong to a ping written after it (at most once), its
    /// acknowledgement (at least once), or it stays in the journal
    /// (durable). A Close frame from the server proves nothing: it may
    /// have crossed ours, sent before the server read our last messages.
    ///
    /// # Errors
    /// [`Error::Unsent`] with the messages that did not leave (or were not
    /// acknowledged), in order — also when the link had already ended for
    /// good; [`Error::PossiblyLost`] when, besides, messages were written
    /// that nothing confirmed (they may or may not have arrived);
    /// [`Error::Closed`] if it was already closed, by an earlier `close` or
    /// because the link had ended for good
    /// ([`CloseReason::Fatal`](crate::CloseReason::Fatal) or
    /// [`CloseReason::GaveUp`](crate::CloseReason::GaveUp)) with nothing
    /// left to hand back (the threads are stopped and joined all the same);
    /// [`Error::Timeout`] if the I/O thread did not finish in time (it then
    /// finishes alone).
    pub fn close(&self, timeout: Duration) -> Result<(), Error> {
        self.owner.close(timeout)
    }

    /// A handle that does not keep the link alive, for closures stored in
    /// the client's own subscriptions (a strong clone there would keep the
    /// link open until [`close`](Self::close)).
    pub fn downgrade(&self) -> WeakClient {
        WeakClient {
            shared: Arc::downgrade(&self.shared),
            owner: Arc::downgrade(&self.owner),
        }
    }
}

/// A [`Client`] that does not keep the link alive. See [`Client::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakClient {
    shared: Weak<Shared>,
    owner: Weak<Owner>,
}

impl WeakClient {
    /// The client, if it is still alive.
    pub fn upgrade(&self) -> Option<Client> {
        Some(Client {
            shared: self.shared.upgrade()?,
            owner: self.owner.upgrade()?,
        })
    }
}
