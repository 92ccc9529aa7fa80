//! Subscribing: closures called on the dispatcher thread
//! ([`Client::on`] and its kin), and pull-style [`Receiver`]s for programs
//! with a loop of their own. Both can be registered on the builder, before
//! the first connect, so that no early push and no state change is missed.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, TryRecvError};

use crate::dispatch::{MAX_CAPACITY, Registry, Sink, Topic};
use crate::{Client, ClientBuilder, Error, InvalidFrame, LinkState, Message};

/// A registered closure. Dropping it does **not** unsubscribe: call
/// [`unsubscribe`](Self::unsubscribe).
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    registry: Weak<Registry>,
}

impl Subscription {
    fn new(id: u64, registry: &Arc<Registry>) -> Subscription {
        Subscription {
            id,
            registry: Arc::downgrade(registry),
        }
    }

    /// Removes the closure; it is not called for messages dispatched after
    /// this returns (one already running finishes). Returns false if it was
    /// already gone.
    pub fn unsubscribe(self) -> bool {
        self.registry.upgrade().is_some_and(|r| r.remove(self.id))
    }
}

/// Messages of one operator (or of every operator nobody else takes), to
/// pull in the application's own loop: [`recv`](Self::recv),
/// [`recv_timeout`](Self::recv_timeout), [`try_recv`](Self::try_recv), or
/// iterate. Made by [`Client::receiver`], [`Client::receiver_any`] or
/// their builder twins.
///
/// It holds at most [`dispatch_capacity`](ClientBuilder::dispatch_capacity)
/// messages (as set when it was made). While it is full the link stops
/// reading from the server until there is room again: it never grows,
/// nothing is dropped, and the pause is never taken for a dead server.
/// Messages come in the order they arrived. Dropping it unsubscribes; a
/// message that arrives for it afterwards is counted in
/// [`Stats::unclaimed`](crate::Stats::unclaimed) if nobody else takes it.
/// Once the link is closed, the messages already held can still be
/// received, then [`recv`](Self::recv) says [`Error::Closed`].
///
/// ```no_run
/// # use std::time::Duration;
/// let mut builder = longlink::Client::builder("wss://example.com/ws");
/// // Registered before the first connect: the server's welcome is not missed.
/// let welcome = builder.receiver("Welcome");
/// let client = builder.connect()?;
/// let first = welcome.recv_timeout(Duration::from_secs(5))?;
/// loop {
///     // The application's own loop: a frame, a tick…
///     for notice in welcome.try_iter() {
///         println!("{notice:?}");
///     }
///     # break;
/// }
/// # Ok::<(), longlink::Error>(())
/// ```
pub struct Receiver {
    rx: crossbeam_channel::Receiver<Message>,
    sub: Subscription,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("held", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    fn new(registry: &Arc<Registry>, topic: Topic, capacity: usize) -> Receiver {
        // Within bounds even before the configuration is checked (a
        // receiver may be made on the builder): never a panic here.
        let (tx, rx) = crossbeam_channel::bounded(capacity.clamp(1, MAX_CAPACITY));
        let id = registry.add_message(topic, Sink::Queue(tx));
        Receiver {
            rx,
            sub: Subscription::new(id, registry),
        }
    }

    /// The next message, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`] once the link is closed and every message it
    /// held has been received.
    pub fn recv(&self) -> Result<Message, Error> {
        self.rx.recv().map_err(|_| Error::Closed { message: None })
    }

    /// The next message, waiting at most `timeout` ([`Duration::MAX`]: no limit).
    ///
    /// # Errors
    /// [`Error::Timeout`] if none came in time; [`Error::Closed`] as
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, Error> {
        self.rx
            .recv_deadline(crate::time::from_now(timeout))
            .map_err(|e| match e {
                RecvTimeoutError::Timeout => Error::Timeout(timeout),
                RecvTimeoutError::Disconnected => Error::Closed { message: None },
            })
    }

    /// The next message if one is here now, without waiting.
    ///
    /// # Errors
    /// [`Error::Closed`] as [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        match self.rx.try_recv() {
            Ok(m) => Ok(Some(m)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::Closed { message: None }),
        }
    }

    /// Every message, waiting for each; ends when the link is closed and
    /// drained.
    pub fn iter(&self) -> impl Iterator<Item = Message> + '_ {
        self.rx.iter()
    }

    /// The messages here now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = Message> + '_ {
        self.rx.try_iter()
    }

    /// How many messages it holds now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether it holds no message now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(r) = self.sub.registry.upgrade() {
            r.remove(self.sub.id);
        }
    }
}

impl<'a> IntoIterator for &'a Receiver {
    type Item = Message;
    type IntoIter = crossbeam_channel::Iter<'a, Message>;

    fn into_iter(self) -> Self::IntoIter {
        self.rx.iter()
    }
}

impl Client {
    /// Calls `f` on the dispatcher thread for every inbound message with this
    /// operator, after the closures registered before it. Returns at once.
    /// To miss nothing sent right after the handshake, register on the
    /// builder instead ([`ClientBuilder::on`]).
    pub fn on(
        &self,
        operator: impl Into<String>,
        f: impl FnMut(&Message) + Send + 'static,
    ) -> Subscription {
        let topic = Topic::Operator(operator.into());
        let id = self.registry().add_message(topic, Sink::call(Box::new(f)));
        self.subscribed(id)
    }

    /// Calls `f` for every message whose operator has no subscriber.
    pub fn on_any(&self, f: impl FnMut(&Message) + Send + 'static) -> Subscription {
        let id = self
            .registry()
            .add_message(Topic::Any, Sink::call(Box::new(f)));
        self.subscribed(id)
    }

    /// Calls `f` for every inbound frame that is not an operator message:
    /// bad JSON, not an object, no string operator, binary, bad UTF-8.
    /// Such frames never harm the link; they are counted in
    /// [`Stats::invalid_frames`](crate::Stats::invalid_frames).
    pub fn on_invalid(&self, f: impl FnMut(&InvalidFrame) + Send + 'static) -> Subscription {
        let id = self.registry().add_invalid(Box::new(f));
        self.subscribed(id)
    }

    /// Calls `f` on every state change, in order, on the dispatcher thread.
    /// To see the first `Connecting`, register on the builder instead
    /// ([`ClientBuilder::on_state`]).
    pub fn on_state(&self, f: impl FnMut(&LinkState) + Send + 'static) -> Subscription {
        let id = self.registry().add_state(Box::new(f));
        self.subscribed(id)
    }

    /// A [`Receiver`] of every inbound message with this operator (beside
    /// the closures registered for it).
    pub fn receiver(&self, operator: impl Into<String>) -> Receiver {
        let capacity = self.shared.cfg.dispatch_capacity;
        let r = Receiver::new(self.registry(), Topic::Operator(operator.into()), capacity);
        self.start_dispatcher();
        r
    }

    /// A [`Receiver`] of every message whose operator has no subscriber
    /// (as [`on_any`](Self::on_any)).
    pub fn receiver_any(&self) -> Receiver {
        let capacity = self.shared.cfg.dispatch_capacity;
        let r = Receiver::new(self.registry(), Topic::Any, capacity);
        self.start_dispatcher();
        r
    }

    fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    fn subscribed(&self, id: u64) -> Subscription {
        self.start_dispatcher();
        Subscription::new(id, self.registry())
    }

    /// Something was registered: make sure the dispatcher runs.
    fn start_dispatcher(&self) {
        if let Err(e) = self.owner.start_dispatcher() {
            log::error!("longlink: cannot start the dispatcher thread: {e}");
        }
    }
}

/// Registered before the first connect, for the life of the client: no
/// push that comes right after the handshake and no state change
/// (the first `Connecting` included) is missed.
impl ClientBuilder {
    /// As [`Client::on`], from the start.
    pub fn on(self, operator: impl Into<String>, f: impl FnMut(&Message) + Send + 'static) -> Self {
        let topic = Topic::Operator(operator.into());
        self.registry.add_message(topic, Sink::call(Box::new(f)));
        self
    }

    /// As [`Client::on_any`], from the start.
    pub fn on_any(self, f: impl FnMut(&Message) + Send + 'static) -> Self {
        self.registry
            .add_message(Topic::Any, Sink::call(Box::new(f)));
        self
    }

    /// As [`Client::on_invalid`], from the start.
    pub fn on_invalid(self, f: impl FnMut(&InvalidFrame) + Send + 'static) -> Self {
        self.registry.add_invalid(Box::new(f));
        self
    }

    /// As [`Client::on_state`], from the start: the first state it sees is
    /// `Connecting { attempt: 0, endpoint: 0 }`.
    pub fn on_state(self, f: impl FnMut(&LinkState) + Send + 'static) -> Self {
        self.registry.add_state(Box::new(f));
        self
    }

    /// As [`Client::receiver`], from the start. Takes `&mut self`, so that
    /// the builder goes on after it (set
    /// [`dispatch_capacity`](Self::dispatch_capacity) first to change its
    /// bound).
    pub fn receiver(&mut self, operator: impl Into<String>) -> Receiver {
        let topic = Topic::Operator(operator.into());
        Receiver::new(&self.registry, topic, self.cfg.dispatch_capacity)
    }

    /// As [`Client::receiver_any`], from the start.
    pub fn receiver_any(&mut self) -> Receiver {
        Receiver::new(&self.registry, Topic::Any, self.cfg.dispatch_capacity)
    }
}
