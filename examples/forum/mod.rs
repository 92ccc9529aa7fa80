//! The recipe's forum server, built on `longlink::testkit::Server`: the
//! operators of a mini-program backend, at-least-once deduplication per
//! logged-in user, and the server-side faults (clean close, reset, black
//! hole, idle cut) the demo and `forum_server --chaos` inflict.
//!
//! Protocol (every message a JSON object with an `Operator`):
//!
//! | client sends | server answers |
//! |---|---|
//! | `userLogin{userCode, userOpenId?}` | `LoginOK{openId}` (reuses `userOpenId`), or `BanLogin` for `userCode: "banned"` |
//! | `Heart` | `HeartOK` |
//! | `CreateInvitation{Table, Image, Text, isRichText}` | `CreateInvitationOK{id}` |
//! | `GetInvitation{id?, mode?, time?, limt?, skip?}` | `GetInvitationOK{data, serverTime}`: one by `id`, newest first paged by `limt`/`skip`, or with `mode: "time"` those newer than `time` (ms) |
//! | `CreateInvitationComment{id, text}` | `CreateInvitationCommentOK{data}`, or `CreateInvitationCommentError{reason}` |
//! | `LoveInvitation{id}` | `LoveInvitationOK{id, loves}`, or `LoveInvitationError{reason}` |
//!
//! A message carrying `msgId` is handled once per user: the server keeps the
//! user's (`msgRun`, highest `msgId`) pair; a message of another run starts
//! a new sequence, and within the run an id at most the highest is a
//! duplicate, dropped; either way the server answers `Ack{msgId: highest}`.
//! A `reqId` is echoed in the reply.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use longlink::testkit::{Server, ServerOpts};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Invitation {
    id: u64,
    author: String,
    table: Value,
    image: Value,
    text: Value,
    rich: bool,
    time: u64,
    comments: Vec<Value>,
    loves: u64,
}

impl Invitation {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "author": self.author, "Table": self.table, "Image": self.image,
            "Text": self.text, "isRichText": self.rich, "time": self.time,
            "comments": self.comments, "loves": self.loves,
        })
    }
}

/// What the forum knows and what it saw.
#[derive(Debug, Default)]
pub struct Forum {
    inner: Mutex<State>,
    next_user: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Connection → logged-in user.
    sessions: HashMap<u64, String>,
    /// User → (run, highest message id handled in it).
    highest: HashMap<String, (Option<u64>, u64)>,
    invitations: Vec<Invitation>,
    /// (user, message) handled, in order: the first copy of each id.
    accepted: Vec<(String, Value)>,
    duplicates: u64,
    logins: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Forum {
    /// Messages handled for `user` (first copies, in order).
    pub fn accepted(&self, user: &str) -> Vec<Value> {
        let s = self.inner.lock().unwrap();
        s.accepted
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.inner.lock().unwrap().duplicates
    }

    /// Logins answered with `LoginOK`.
    pub fn logins(&self) -> u64 {
        self.inner.lock().unwrap().logins
    }

    /// Invitations posted so far.
    pub fn invitations(&self) -> usize {
        self.inner.lock().unwrap().invitations.len()
    }

    /// Answer one message on connection `conn`.
    pub fn handle(&self, conn: u64, v: &Value) -> Vec<Value> {
        let op = v["Operator"].as_str().unwrap_or_default().to_owned();
        let mut out = self.answer(conn, &op, v);
        if let Some(req) = v.get("reqId") {
            for m in out.iter_mut().filter(|m| m["Operator"] != "Ack") {
                m["reqId"] = req.clone();
            }
        }
        out
    }

    fn answer(&self, conn: u64, op: &str, v: &Value) -> Vec<Value> {
        match op {
            "Heart" => return vec![json!({"Operator": "HeartOK"})],
            "userLogin" => return self.login(conn, v),
            _ => {}
        }
        let mut s = self.inner.lock().unwrap();
        let Some(user) = s.sessions.get(&conn).cloned() else {
            return vec![json!({"Operator": format!("{op}Error"), "reason": "not logged in"})];
        };
        let mut acks = Vec::new();
        if let Some(id) = v.get("msgId").and_then(Value::as_u64) {
            let run = v.get("msgRun").and_then(Value::as_u64);
            if let Some(&(seen_run, highest)) = s.highest.get(&user)
                && seen_run == run
                && id <= highest
            {
                s.duplicates += 1;
                return vec![json!({"Operator": "Ack", "msgId": highest})];
            }
            s.highest.insert(user.clone(), (run, id));
            acks.push(json!({"Operator": "Ack", "msgId": id}));
            s.accepted.push((user.clone(), v.clone()));
        }
        let mut out = self.operate(&mut s, &user, op, v);
        out.extend(acks);
        out
    }

    fn login(&self, conn: u64, v: &Value) -> Vec<Value> {
        if v["userCode"] == "banned" {
            return vec![json!({"Operator": "BanLogin", "reason": "this user is banned"})];
        }
        let open_id = match v["userOpenId"].as_str() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!(
                "oUser-{}",
                self.next_user.fetch_add(1, Ordering::SeqCst) + 1
            ),
        };
        let mut s = self.inner.lock().unwrap();
        s.sessions.insert(conn, open_id.clone());
        s.logins += 1;
        vec![json!({"Operator": "LoginOK", "openId": open_id})]
    }

    fn operate(&self, s: &mut State, user: &str, op: &str, v: &Value) -> Vec<Value> {
        let find = |s: &mut State| {
            let id = v["id"].as_u64();
            id.and_then(|id| s.invitations.iter().position(|i| i.id == id))
        };
        match op {
            "CreateInvitation" => {
                let id = s.invitations.len() as u64 + 1;
                s.invitations.push(Invitation {
                    id,
                    author: user.to_owned(),
                    table: v["Table"].clone(),
                    image: v["Image"].clone(),
                    text: v["Text"].clone(),
                    rich: v["isRichText"].as_bool().unwrap_or(false),
                    time: now_ms(),
                    comments: Vec::new(),
                    loves: 0,
                });
                vec![json!({"Operator": "CreateInvitationOK", "id": id})]
            }
            "GetInvitation" => {
                let data: Vec<Value> = if let Some(i) = find(s) {
                    vec![s.invitations[i].to_json()]
                } else if v["mode"] == "time" {
                    let since = v["time"].as_u64().unwrap_or(0);
                    s.invitations
                        .iter()
                        .rev()
                        .filter(|i| i.time > since)
                        .map(Invitation::to_json)
                        .collect()
                } else {
                    let limit = v["limt"].as_u64().unwrap_or(10) as usize;
                    let skip = v["skip"].as_u64().unwrap_or(0) as usize;
                    s.invitations
                        .iter()
                        .rev()
                        .skip(skip)
                        .take(limit)
                        .map(Invitation::to_json)
                        .collect()
                };
                vec![json!({"Operator": "GetInvitationOK", "data": data, "serverTime": now_ms()})]
            }
            "CreateInvitationComment" => match find(s) {
                Some(i) => {
                    let comment = json!({"author": user, "text": v["text"], "time": now_ms()});
                    s.invitations[i].comments.push(comment.clone());
                    vec![json!({"Operator": "CreateInvitationCommentOK", "data": comment})]
                }
                None => vec![json!({
                    "Operator": "CreateInvitationCommentError",
                    "reason": format!("no invitation {}", v["id"]),
                })],
            },
            "LoveInvitation" => match find(s) {
                Some(i) => {
                    s.invitations[i].loves += 1;
                    let inv = &s.invitations[i];
                    vec![json!({"Operator": "LoveInvitationOK", "id": inv.id, "loves": inv.loves})]
                }
                None => vec![json!({
                    "Operator": "LoveInvitationError",
                    "reason": format!("no invitation {}", v["id"]),
                })],
            },
            _ => vec![json!({"Operator": format!("{op}Error"), "reason": "unknown operator"})],
        }
    }
}

/// Start the forum on `addr` (e.g. `127.0.0.1:0`), cutting connections idle
/// for `idle_cut` if given.
pub fn start(
    addr: impl ToSocketAddrs,
    idle_cut: Option<Duration>,
) -> std::io::Result<(Server, Arc<Forum>)> {
    let forum = Arc::new(Forum::default());
    let f = forum.clone();
    let server = Server::start_on(
        addr,
        ServerOpts {
            conn_handler: Some(Arc::new(move |conn, v: &Value| f.handle(conn, v))),
            idle_cut,
            ..ServerOpts::default()
        },
    )?;
    Ok((server, forum))
}
