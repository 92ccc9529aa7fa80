//! The demo's forum server as a standalone program.
//!
//! ```text
//! cargo run --example forum_server -- --listen 127.0.0.1:9001 --idle-cut 60 --chaos 10
//! ```
//!
//! - `--listen ADDR`: where to listen (default `127.0.0.1:9001`).
//! - `--idle-cut SECS`: close connections silent for that long.
//! - `--chaos SECS`: every SECS, break every live connection, in turn by a
//!   clean close, an abrupt reset and a silent black hole.
//!
//! The protocol is in `examples/forum/mod.rs`. Prints connections, logins
//! and a line per handled message; runs until killed.

#[path = "forum/mod.rs"]
mod forum;

use std::process::ExitCode;
use std::time::Duration;

use longlink::testkit::Seen;

struct Args {
    listen: String,
    idle_cut: Option<Duration>,
    chaos: Option<Duration>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:9001".into(),
        idle_cut: None,
        chaos: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let secs = |v: String, name: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!(
                    "{name} takes a positive number of seconds, not {v:?}"
                ))
        };
        match a.as_str() {
            "--listen" => args.listen = value("--listen")?,
            "--idle-cut" => args.idle_cut = Some(secs(value("--idle-cut")?, "--idle-cut")?),
            "--chaos" => args.chaos = Some(secs(value("--chaos")?, "--chaos")?),
            "-h" | "--help" => {
                return Err(
                    "usage: forum_server [--listen ADDR] [--idle-cut SECS] [--chaos SECS]".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (server, forum) = match forum::start(args.listen.as_str(), args.idle_cut) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("forum server on {}", server.url());
    if let Some(d) = args.idle_cut {
        println!("idle connections are cut after {d:?}");
    }
    let server = std::sync::Arc::new(server);
    if let Some(every) = args.chaos {
        println!("chaos: every {every:?} all connections break (close, reset, black hole in turn)");
        let s = server.clone();
        std::thread::spawn(move || {
            for round in 0u64.. {
                std::thread::sleep(every);
                match round % 3 {
                    0 => {
                        println!("chaos: clean close");
                        s.kick_all()
                    }
                    1 => {
                        println!("chaos: reset");
                        s.reset_all()
                    }
                    _ => {
                        println!("chaos: black hole");
                        s.blackhole_all()
                    }
                }
            }
        });
    }
    while let Ok(seen) = server.seen.recv() {
        match seen {
            Seen::Open(c) => println!("#{c} connected"),
            Seen::Closed(c) => println!("#{c} gone"),
            Seen::Text(c, v) => {
                let op = v["Operator"].as_str().unwrap_or("(no operator)");
                let id = v
                    .get("msgId")
                    .map(|i| format!(" msgId={i}"))
                    .unwrap_or_default();
                println!(
                    "#{c} {op}{id}  (logins {}, invitations {}, duplicates dropped {})",
                    forum.logins(),
                    forum.invitations(),
                    forum.duplicates()
                );
            }
        }
    }
    ExitCode::SUCCESS
}
