//! `close`: when it may finish, the goodbye's ping, and what is handed back.

use std::time::Instant;

use tungstenite::Utf8Bytes;

use super::{Output, Phase, Session};
use crate::{CloseReason, Error, Failure, Status};

impl Session {
    /// Whether `close` can finish now: its deadline passed, or everything
    /// it waits for has left (an on_open step in progress is let finish).
    pub(crate) fn close_ready(&self, now: Instant, flushed: bool) -> bool {
        let Some(deadline) = self.closing else {
            return false;
        };
        if now >= deadline {
            return true;
        }
        match self.phase {
            Phase::Open => {
                self.outbox.is_empty()
                    && self.unacked.is_empty()
                    && self.on_open_queue.is_empty()
                    && self.control.is_empty()
                    && flushed
            }
            Phase::LoggingIn { .. } => false,
            _ => true,
        }
    }

    /// The ping to write before the Close frame: only its pong proves the
    /// peer read what we wrote.
    pub(crate) fn goodbye_ping(&mut self, now: Instant) -> Option<u64> {
        self.conn.as_mut().map(|c| c.ping_now(now))
    }

    /// Close: bury the connection, answer and hand back what is left.
    /// Returns the texts of the messages that never left, in order.
    pub(crate) fn finish(&mut self, now: Instant) -> Vec<Utf8Bytes> {
        self.bury(now, false);
        for item in std::mem::take(&mut self.on_open_queue) {
            self.fail_item(item, Failure::Closed, || Error::Closed { message: None });
        }
        // What has run out of time is expired, not handed back or kept.
        self.expire_all(now);
        let mut unsent = Vec::new();
        let mut kept = 0;
        for item in std::mem::take(&mut self.outbox) {
            self.budget.release(item.weight);
            if let Some(r) = item.receipt {
                self.outputs
                    .push_back(Output::Receipt(r, Status::Failed(Failure::Closed)));
            }
            match item.reply {
                Some(r) => self.outputs.push_back(Output::answer(
                    r.waiter,
                    Err(Error::Closed { message: None }),
                )),
                // In the journal: sent after the next start, not handed back.
                None if self.rules.durable && item.id.is_some() => kept += 1,
                None => unsent.push(item.text),
            }
        }
        if kept > 0 {
            log::info!("longlink: closed; {kept} messages stay in the journal for the next start");
        }
        if !unsent.is_empty() {
            log::warn!("longlink: closed with {} messages unsent", unsent.len());
        }
        if !matches!(self.phase, Phase::Ended(_)) {
            self.phase = Phase::Ended(CloseReason::Requested);
        }
        unsent
    }
}
