//! An interactive client for any server speaking this style of protocol.
//!
//! ```text
//! cargo run --example forum_client -- ws://127.0.0.1:9001 --login my-code
//! ```
//!
//! Each line typed becomes a message: `Operator {"field": …}` (the JSON
//! object is optional) or a raw JSON object. A line starting with `?` is a
//! request and waits for its reply (`?GetInvitation {"limt": 5}`).
//! `:stats` prints the counters, `:quit` (or end of input) closes.
//! Inbound messages and link state changes are printed as they happen.
//!
//! - `--login CODE`: log in with `userLogin` on every (re)connect, re-sending
//!   the `openId` the server gave.
//! - `--at-least-once`: stamp messages with `msgId` and re-send until `Ack`.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::{Client, Expect};
use serde_json::{Map, Value, json};

/// `Operator {json}` or `{json}` → a message.
fn parse_line(line: &str) -> Result<Value, String> {
    let line = line.trim();
    if line.starts_with('{') {
        return serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"));
    }
    let (op, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let mut fields: Map<String, Value> = if rest.trim().is_empty() {
        Map::new()
    } else {
        serde_json::from_str(rest).map_err(|e| format!("fields must be a JSON object: {e}"))?
    };
    fields.insert("Operator".into(), Value::String(op.into()));
    Ok(Value::Object(fields))
}

fn main() -> ExitCode {
    let mut url = "ws://127.0.0.1:9001".to_owned();
    let mut login: Option<String> = None;
    let mut alo = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--login" => login = args.next(),
            "--at-least-once" => alo = true,
            "-h" | "--help" => {
                println!("usage: forum_client [URL] [--login CODE] [--at-least-once]");
                return ExitCode::SUCCESS;
            }
            u if u.starts_with("ws://") || u.starts_with("wss://") => url = u.to_owned(),
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let mut builder = Client::builder(&url)
        .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
        .at_least_once(alo);
    if let Some(code) = login {
        let open_id: Arc<Mutex<Option<String>>> = Arc::default();
        builder = builder.on_open(move |link| {
            let mut m = json!({"Operator": "userLogin", "userCode": code});
            if let Some(id) = open_id.lock().unwrap().clone() {
                m["userOpenId"] = json!(id);
            }
            let ok = link.request_expect(
                m,
                // A ban ends the link (no retry); a LoginError is retried.
                Expect::reply("LoginOK")
                    .or_fatal("BanLogin")
                    .or_error("LoginError"),
                Duration::from_secs(5),
            )?;
            let id = ok.value()["openId"].as_str().unwrap_or_default().to_owned();
            println!("~ logged in as {id}");
            *open_id.lock().unwrap() = Some(id);
            Ok(())
        });
    }
    let client = match builder.start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    client.on_state(|s| println!("~ link: {s:?}"));
    client.on_any(|m| println!("< {}", m.value()));
    client.on_invalid(|f| println!("< (not an operator message) {f:?}"));
    println!(
        "~ connecting to {url}; type `Operator {{json}}`, `?Operator {{json}}` to wait for the reply, :stats, :quit"
    );
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        match line {
            "" => continue,
            ":quit" => break,
            ":stats" => {
                println!("~ {:?}", client.stats());
                continue;
            }
            _ => {}
        }
        let (request, body) = match line.strip_prefix('?') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let msg = match parse_line(body) {
            Ok(m) => m,
            Err(e) => {
                println!("! {e}");
                continue;
            }
        };
        if request {
            match client.request(msg, Duration::from_secs(10)) {
                Ok(reply) => println!("= {}", reply.value()),
                Err(e) => println!("! {e}"),
            }
        } else if let Err(e) = client.send(msg) {
            println!("! {e}");
        }
    }
    match client.close(Duration::from_secs(2)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("~ {e}");
            ExitCode::FAILURE
        }
    }
}
