//! The simulated server: deduplicates, acknowledges, answers requests and
//! pings (or not).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Sim;
use super::net::{Down, Flight, Up};

/// The server's view of one connection.
#[derive(Debug)]
pub(super) struct ServerConn {
    pub(super) id: u64,
    /// It sent a Close: what arrives after is discarded.
    pub(super) closing: bool,
    pub(super) no_pong: bool,
}

#[derive(Debug, Default)]
pub(super) struct Server {
    pub(super) conn: Option<ServerConn>,
    /// Dedup state: (run, highest id) of the at-least-once sequence.
    pub(super) run: Option<u64>,
    pub(super) highest: u64,
    /// An acknowledgement owed, sent with the next message's.
    pub(super) ack_owed: bool,
    /// Messages (their `k`) its application handled, first copies only.
    pub(super) app: Vec<u64>,
    pub(super) duplicates: u64,
    /// The last message with an id its application handled.
    pub(super) last_stamped: u64,
    /// Acknowledges every message at once (the network is perfect too).
    pub(super) steady: bool,
}

impl Sim {
    pub(super) fn server_read(&mut self, f: Flight<Up>) {
        let Some(c) = self
            .server
            .conn
            .as_ref()
            .filter(|c| c.id == f.conn && !c.closing)
        else {
            return;
        };
        let (conn, no_pong) = (c.id, c.no_pong);
        let at = f.at + self.latency();
        match f.frame {
            Up::Ping(n) => {
                if !no_pong {
                    self.push_down(at, conn, Down::Pong(n));
                }
            }
            Up::Close => {
                if let Some(c) = self.server.conn.as_mut() {
                    c.closing = true;
                }
                self.push_down(at, conn, Down::Close(1000));
            }
            Up::Text(text) => self.server_message(at, conn, &text),
        }
    }

    pub(super) fn server_message(&mut self, at: Instant, conn: u64, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            self.fail(format!(
                "the client wrote a frame that is not JSON ({e}): {text}"
            ))
        });
        let op = v["Operator"].as_str().unwrap_or_default().to_owned();
        let k = v["k"].as_u64();
        if op == "Post" {
            let k = k.unwrap_or_else(|| self.fail(format!("a Post without k: {text}")));
            let Some(m) = self.msgs.iter_mut().find(|m| m.k == k) else {
                self.fail(format!("the server read k{k}, which was never sent"));
            };
            m.read += 1;
            match v.get("msgId").and_then(Value::as_u64) {
                Some(id) => {
                    let run = v.get("msgRun").and_then(Value::as_u64);
                    if run != self.server.run || id > self.server.highest {
                        // Across reconnects and restarts, in the order accepted.
                        let last = self.server.last_stamped;
                        if last >= k {
                            self.fail(format!("the server's application got k{k} after k{last}"));
                        }
                        self.server.last_stamped = k;
                        self.server.run = run;
                        self.server.highest = id;
                        self.server.app.push(k);
                    } else {
                        self.server.duplicates += 1;
                    }
                    let roll = if self.server.steady {
                        0
                    } else {
                        self.rng.u8(..100)
                    };
                    match roll {
                        0..70 => self.ack(at, conn),
                        70..85 => self.server.ack_owed = true,
                        _ => {}
                    }
                }
                None => {
                    // At most once: each message once, in the order accepted.
                    // (the on_open step's messages go ahead of the outbox's)
                    let hook = |k: u64| self.msgs.iter().any(|m| m.k == k && m.hook.is_some());
                    let outbox_last = self.server.app.iter().rev().find(|k| !hook(**k));
                    if !hook(k)
                        && let Some(last) = outbox_last
                        && *last >= k
                    {
                        self.fail(format!("the server's application got k{k} after k{last}"));
                    }
                    self.server.app.push(k);
                }
            }
        } else if op.starts_with("Req") {
            let mut reply = match self.rng.u8(..100) {
                0..65 => json!({"Operator": format!("{op}OK")}),
                65..75 => json!({"Operator": format!("{op}Error"), "reason": "no"}),
                75..85 => {
                    self.robbery.entry((conn, op)).or_default().0 += 1;
                    return;
                }
                _ => json!({"Operator": format!("{op}OK"), "slow": true}),
            };
            reply["k"] = json!(k);
            if let Some(id) = v.get("reqId") {
                reply["reqId"] = id.clone();
            }
            let delay = if reply.get("slow").is_some() {
                Duration::from_millis(self.rng.u64(200..3000))
            } else {
                Duration::ZERO
            };
            self.server_send(at + delay, conn, reply);
        } else if op == "Heart" {
            self.server_send(at, conn, json!({"Operator": "HeartOK"}));
        }
        if self.server.ack_owed && op != "Post" {
            self.ack(at, conn);
        }
    }

    pub(super) fn ack(&mut self, at: Instant, conn: u64) {
        self.server.ack_owed = false;
        let n = self.server.highest;
        self.server_send(at, conn, json!({"Operator": "Ack", "msgId": n}));
    }

    /// The server pushes `n` messages.
    pub(super) fn push(&mut self, n: u8) {
        if let Some(c) = self.server.conn.as_ref().filter(|c| !c.closing) {
            let id = c.id;
            for _ in 0..n {
                let at = self.now + self.latency();
                self.server_send(at, id, json!({"Operator": "News"}));
            }
        }
    }

    /// The server sends a Close frame and reads nothing more.
    pub(super) fn peer_close(&mut self) {
        if let Some(c) = self.server.conn.as_mut().filter(|c| !c.closing) {
            c.closing = true;
            let id = c.id;
            let at = self.now + self.latency();
            self.push_down(at, id, Down::Close(1000));
        }
    }

    /// The server stops answering pings on this connection.
    pub(super) fn no_pong(&mut self) {
        if let Some(c) = self.server.conn.as_mut() {
            c.no_pong = true;
        }
    }
}
