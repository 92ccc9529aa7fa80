//! The connection being logged in, as the `on_open` hook sees it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::command::Command;
use crate::send::{FATAL_REPLY, IN_HOOK, Route, take_fatal_reply};
use crate::shared::Shared;
use crate::state::Counters;
use crate::{Error, Expect, Message, SendOptions, Stats};

/// The connection being logged in, as the [`on_open`](crate::ClientBuilder::on_open)
/// hook sees it. Its messages bypass the outbox and are the only ones
/// written until the hook returns. Bound to one connection: once it is gone,
/// its calls fail with [`Error::ConnectionLost`].
pub struct Link {
    shared: Arc<Shared>,
    conn: u64,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("conn", &self.conn).finish()
    }
}

impl Link {
    pub(crate) fn new(shared: Arc<Shared>, conn: u64) -> Self {
        Link { shared, conn }
    }

    pub(crate) fn enter_hook(&self) -> HookGuard {
        IN_HOOK.with(|c| c.set(Some(self.conn)));
        FATAL_REPLY.with(|f| f.set(None));
        HookGuard
    }

    /// Writes `msg` now, ahead of the outbox.
    ///
    /// # Errors
    /// As [`Client::send`](crate::Client::send), except that nothing waits in the outbox.
    pub fn send(&self, msg: impl Serialize) -> Result<(), Error> {
        self.shared
            .send(Route::OnOpen(self.conn), msg, SendOptions::new(), false)
            .map(drop)
    }

    /// Requests on this connection, ahead of the outbox; see [`Client::request`](crate::Client::request).
    ///
    /// # Errors
    /// As [`Client::request`](crate::Client::request).
    pub fn request(&self, msg: impl Serialize, timeout: Duration) -> Result<Message, Error> {
        self.shared
            .request(Route::OnOpen(self.conn), msg, None, timeout, false)
    }

    /// See [`Client::request_expect`](crate::Client::request_expect), e.g. `userLogin` → `LoginOK` / `LoginError`.
    ///
    /// # Errors
    /// As [`Client::request`](crate::Client::request).
    pub fn request_expect(
        &self,
        msg: impl Serialize,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.shared
            .request_expecting(Route::OnOpen(self.conn), msg, expect, timeout, false)
    }

    /// Counters of the client, e.g. to tell a first login from a re-login.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

/// Clears the in-hook mark when the hook returns or panics.
pub(crate) struct HookGuard;

impl Drop for HookGuard {
    fn drop(&mut self) {
        IN_HOOK.with(|c| c.set(None));
    }
}

/// Run the `on_open` hook for connection `conn` (on the dispatcher thread)
/// and tell the I/O thread how it went. A panic is contained and counts as
/// a failed attempt.
pub(crate) fn run_hook(shared: &Arc<Shared>, conn: u64) {
    let Some(hook) = shared.cfg.on_open.clone() else {
        return;
    };
    let link = Link::new(shared.clone(), conn);
    let result = match catch_unwind(AssertUnwindSafe(|| {
        let _in_hook = link.enter_hook();
        hook(&link)
    })) {
        Ok(r) => r,
        Err(_) => {
            Counters::add(&shared.counters.handler_panics, 1);
            Err(Error::Connect {
                context: "the on_open hook panicked".into(),
                source: "panic".into(),
            })
        }
    };
    // A plain `?` on an `or_fatal` reply: the hook failed on it.
    let fatal = take_fatal_reply().is_some_and(
        |op| matches!(&result, Err(e) if e.remote().is_some_and(|m| m.operator() == op)),
    );
    shared.command(Command::HookDone {
        conn,
        result,
        fatal,
    });
}
