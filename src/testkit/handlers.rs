//! What a [`Server`](super::Server) answers: the handler types and two
//! ready-made handlers.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// Answers one inbound message: what to send back.
pub type Handler = Arc<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

/// Answers one inbound message on connection `conn`.
pub type ConnHandler = Arc<dyn Fn(u64, &Value) -> Vec<Value> + Send + Sync>;

/// Messages the server sends when a connection has been quiet a few ms.
pub type QuietHandler = Arc<dyn Fn() -> Vec<Value> + Send + Sync>;

/// The default handler: `X` → `XOK` echoing `reqId`, `seq` and `n`;
/// `Heart` → `HeartOK`; operators starting with `Fire` get no answer.
pub fn ok_handler() -> Handler {
    Arc::new(|v: &Value| {
        let op = v["Operator"].as_str().unwrap_or_default();
        if op == "Heart" {
            return vec![json!({"Operator": "HeartOK"})];
        }
        if op.starts_with("Fire") {
            return vec![];
        }
        let mut reply = json!({"Operator": format!("{op}OK")});
        for f in ["reqId", "seq", "n"] {
            if let Some(x) = v.get(f) {
                reply[f] = x.clone();
            }
        }
        vec![reply]
    })
}

/// What a deduplicating at-least-once server accepted.
#[derive(Debug, Default)]
pub struct Dedup {
    /// Run of the messages being accepted (`msgRun`; `None` for messages
    /// without one).
    pub run: Option<u64>,
    /// Highest message id accepted in that run.
    pub highest: u64,
    /// Messages accepted (the first copy of each id), in order.
    pub accepted: Vec<Value>,
    /// Copies of ids already accepted: dropped, but acknowledged.
    pub duplicates: u64,
    /// When false, nothing is acknowledged (messages are still accepted).
    pub ack: bool,
}

impl Dedup {
    /// Field `name` of each accepted message, in order (`Null` where it
    /// is missing): what arrived, as a test compares it.
    pub fn field(&self, name: &str) -> Vec<Value> {
        self.accepted.iter().map(|m| m[name].clone()).collect()
    }
}

/// The server side of at-least-once, for one client: it keeps the (run,
/// highest id) pair. A message whose `msgRun` differs from the stored run
/// starts a new sequence (accepted; its run and id are stored); within the
/// run, a `msgId` at most the highest is a duplicate (dropped, still
/// acknowledged). Every message is answered with a cumulative
/// `{"Operator":"Ack","msgId":highest}`. Messages without an id go to
/// `other`.
pub fn dedup_handler(state: Arc<Mutex<Dedup>>, other: Handler) -> Handler {
    Arc::new(move |v: &Value| {
        let Some(id) = v.get("msgId").and_then(Value::as_u64) else {
            return other(v);
        };
        let run = v.get("msgRun").and_then(Value::as_u64);
        let mut d = state.lock().unwrap_or_else(|e| e.into_inner());
        if run != d.run || id > d.highest {
            d.run = run;
            d.highest = id;
            d.accepted.push(v.clone());
        } else {
            d.duplicates += 1;
        }
        if d.ack {
            vec![json!({"Operator": "Ack", "msgId": d.highest})]
        } else {
            vec![]
        }
    })
}
