//! Outstanding requests and how replies find them. Pure: takes `now`.
//!
//! By name, replies are matched first in, first out per reply operator
//! (servers answer one connection in order). With a correlation field, each
//! request carries a unique id and the reply is matched by it.
//!
//! A request whose caller gave up is kept as a *ghost* for as long again as
//! its timeout: if its late reply arrives in that window it is swallowed,
//! instead of being handed to the next caller of the same operator.
//!
//! What matching by name cannot know: when a ghost and a live request of
//! one operator both wait, a reply may be the ghost's late one or the live
//! request's own (the ghost's was lost). The ghost takes it (a late reply
//! must never reach the wrong caller), and the live request is marked as
//! possibly robbed: if it then times out it leaves no ghost, since the one
//! reply the two of them were owed has come. So for requests made one
//! after another (a caller retrying), one lost reply costs at most one
//! more timeout, never a chain of them; the price is that a robbed
//! request's own reply, if it was merely late too, goes to the next
//! caller. With requests of one operator in flight at once, a lost reply
//! (or an error reply that fits several of them) can cost more than one
//! timeout: by name nothing tells their replies apart. A correlation field
//! removes the ambiguity: each reply names its request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry<W> {
    waiter: W,
    deadline: Instant,
    forget_at: Instant,
    /// Error operators that also answer this request.
    errors: Vec<String>,
}

/// Where a request waits for its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Operator { reply: String, errors: Vec<String> },
    Id(u64),
}

/// The outcome of offering an inbound message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Matched<W> {
    /// A live request: `error` tells an error reply.
    Reply { waiter: W, error: bool },
    /// A reply to a request whose caller gave up: swallow it.
    Late,
    /// Not a reply: dispatch it to subscribers.
    None,
}

/// Outstanding requests of one connection.
#[derive(Debug)]
pub(crate) struct Pending<W> {
    by_reply: HashMap<String, VecDeque<Entry<W>>>,
    /// Error operator -> reply operators whose requests it can answer.
    by_error: HashMap<String, Vec<String>>,
    by_id: HashMap<u64, Entry<W>>,
    inserts: u64,
}

impl<W> Default for Pending<W> {
    fn default() -> Self {
        Pending {
            by_reply: HashMap::new(),
            by_error: HashMap::new(),
            by_id: HashMap::new(),
            inserts: 0,
        }
    }
}

impl<W> Pending<W> {
    pub(crate) fn insert(&mut self, key: Key, waiter: W, now: Instant, deadline: Instant) {
        let forget_at = crate::time::after(
            deadline,
            deadline
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        );
        self.inserts += 1;
        match key {
            Key::Operator { reply, errors } => {
                for e in &errors {
                    let list = self.by_error.entry(e.clone()).or_default();
                    if !list.contains(&reply) {
                        list.push(reply.clone());
                    }
                }
                let queue = self.by_reply.entry(reply).or_default();
                prune_front(queue, now);
                queue.push_back(Entry {
                    waiter,
                    deadline,
                    forget_at,
                    errors,
                });
            }
            Key::Id(id) => {
                if self.inserts.is_multiple_of(1024) {
                    self.by_id.retain(|_, e| e.forget_at > now);
                }
                self.by_id.insert(
                    id,
                    Entry {
                        waiter,
                        deadline,
                        forget_at,
                        errors: Vec::new(),
                    },
                );
            }
        }
    }

    /// Offer an inbound message with operator `op` and correlation `id`.
    /// `is_error_op` tells whether `op` is an error reply by naming convention
    /// (used for id-matched replies).
    pub(crate) fn offer(
        &mut self,
        op: &str,
        id: Option<u64>,
        is_error_op: bool,
        now: Instant,
    ) -> Matched<W> {
        if let Some(id) = id
            && let Some(e) = self.by_id.remove(&id)
        {
            return deliver(e, is_error_op, now);
        }
        if let Some(queue) = self.by_reply.get_mut(op) {
            prune_front(queue, now);
            if let Some(e) = queue.pop_front() {
                return deliver_in(queue, e, None, now);
            }
        }
        if let Some(replies) = self.by_error.get(op) {
            for reply in replies {
                let Some(queue) = self.by_reply.get_mut(reply) else {
                    continue;
                };
                prune_front(queue, now);
                // FIFO: the error answers the oldest request that accepts it.
                if let Some(pos) = queue.iter().position(|e| e.errors.iter().any(|x| x == op))
                    && let Some(e) = queue.remove(pos)
                {
                    return deliver_in(queue, e, Some(op), now);
                }
            }
        }
        Matched::None
    }

    /// Everything outstanding, oldest first per key: the link died.
    pub(crate) fn drain(&mut self, now: Instant) -> Vec<W> {
        let mut out: Vec<W> = Vec::new();
        for (_, q) in self.by_reply.drain() {
            out.extend(q.into_iter().filter(|e| e.deadline > now).map(|e| e.waiter));
        }
        out.extend(
            self.by_id
                .drain()
                .filter(|(_, e)| e.deadline > now)
                .map(|(_, e)| e.waiter),
        );
        self.by_error.clear();
        out
    }

    /// No request (live, or a ghost) waits on this connection.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.by_reply.values().all(VecDeque::is_empty)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_reply.values().map(VecDeque::len).sum::<usize>() + self.by_id.len()
    }
}

fn deliver<W>(e: Entry<W>, error: bool, now: Instant) -> Matched<W> {
    if now >= e.deadline {
        Matched::Late
    } else {
        Matched::Reply {
            waiter: e.waiter,
            error,
        }
    }
}

/// [`deliver`] for a request matched by name in `queue` (by the error
/// operator `error_op`, for an error reply): when a ghost takes the reply,
/// the oldest live request still owed one that the reply could answer may
/// have been robbed of it, and leaves no ghost when it times out.
fn deliver_in<W>(
    queue: &mut VecDeque<Entry<W>>,
    e: Entry<W>,
    error_op: Option<&str>,
    now: Instant,
) -> Matched<W> {
    let m = deliver(e, error_op.is_some(), now);
    if matches!(m, Matched::Late)
        && let Some(live) = queue.iter_mut().find(|e| {
            e.deadline > now
                && e.forget_at > e.deadline
                && error_op.is_none_or(|op| e.errors.iter().any(|x| x == op))
        })
    {
        live.forget_at = live.deadline;
    }
    m
}

fn prune_front<W>(queue: &mut VecDeque<Entry<W>>, now: Instant) {
    while queue.front().is_some_and(|e| e.forget_at <= now) {
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests;
