//! Simulated time and the network: frames in flight each way, in order,
//! with a latency.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Down, Flight, Sim, Up};

impl Sim {
    pub(super) fn advance(&mut self, to: Instant) {
        if to > self.now {
            self.now = to;
        }
        self.server_turn(self.now);
    }

    /// To the next deadline or arrival (at most a few seconds on).
    pub(super) fn sleep(&mut self) {
        let next = [
            self.session.poll_timeout(),
            self.up.front().map(|f| f.at),
            self.down.front().map(|f| f.at),
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
}
