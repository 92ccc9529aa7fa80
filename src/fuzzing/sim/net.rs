//! Simulated time and the network: frames in flight each way, in order,
//! with a latency.

use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Utf8Bytes;

use super::Sim;

/// A frame from the client.
#[derive(Debug)]
pub(super) enum Up {
    Text(Utf8Bytes),
    Ping(u64),
    Close,
}

/// A frame from the server.
#[derive(Debug)]
pub(super) enum Down {
    Text(String),
    Pong(u64),
    Close(u16),
}

#[derive(Debug)]
pub(super) struct Flight<F> {
    pub(super) at: Instant,
    pub(super) conn: u64,
    pub(super) frame: F,
}

impl Sim {
    pub(super) fn advance(&mut self, to: Instant) {
        if to > self.now {
            self.now = to;
        }
        self.server_turn(self.now);
    }

    /// To the next deadline or arrival (at most a few seconds on). A frame
    /// that arrived and waits unread (reading pauses) wakes nobody.
    pub(super) fn sleep(&mut self) {
        let now = self.now;
        let next = [
            self.session.poll_timeout(),
            self.up.front().map(|f| f.at),
            self.down.iter().map(|f| f.at).find(|at| *at > now),
        ]
        .into_iter()
        .flatten()
        .min();
        let cap = self.now + Duration::from_secs(5);
        self.advance(next.map_or(cap, |t| t.min(cap)));
    }

    pub(super) fn push_down(&mut self, at: Instant, conn: u64, frame: Down) {
        // In order, as on one TCP stream.
        let at = self.down.back().map_or(at, |f| f.at.max(at));
        self.down.push_back(Flight { at, conn, frame });
    }

    pub(super) fn push_up(&mut self, conn: u64, frame: Up) {
        if self.holes.contains(&conn) {
            return;
        }
        let at = self.now + self.latency();
        let at = self.up.back().map_or(at, |f| f.at.max(at));
        self.up.push_back(Flight { at, conn, frame });
    }

    pub(super) fn server_send(&mut self, at: Instant, conn: u64, v: Value) {
        self.push_down(at, conn, Down::Text(v.to_string()));
    }

    /// The server reads what has reached it by `until`, in order.
    pub(super) fn server_turn(&mut self, until: Instant) {
        while self.up.front().is_some_and(|f| f.at <= until) {
            let Some(f) = self.up.pop_front() else { break };
            self.server_read(f);
        }
    }

    /// The connection is reset: frames in flight are lost both ways and
    /// the client's next read fails.
    pub(super) fn reset_conn(&mut self) {
        if let Some(id) = self.sock {
            self.reset = Some(id);
            self.up.retain(|f| f.conn != id);
            self.down.retain(|f| f.conn != id);
            self.server.conn = None;
        }
    }

    /// The connection becomes a black hole: nothing arrives any more, and
    /// nobody is told.
    pub(super) fn black_hole(&mut self) {
        if let Some(id) = self.sock {
            self.holes.push(id);
            self.up.retain(|f| f.conn != id);
            self.down.retain(|f| f.conn != id);
            self.server.conn = None;
        }
    }
}
