//! `cargo run --example demo`: a forum server on loopback, a client that logs
//! in and keeps posting while the link is cut three ways, and a report of
//! what arrived. Needs no setup and no network beyond 127.0.0.1.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::{Client, Expect, LinkState};
use serde_json::{Value, json};
use support::{Proxy, Seen, Server, ServerOpts, wait_until};

fn forum_handler() -> support::Handler {
    let next_id = Arc::new(AtomicU64::new(1));
    Arc::new(move |v: &Value| {
        let op = v["Operator"].as_str().unwrap_or_default();
        match op {
            "userLogin" => {
                let open_id = v["userOpenId"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| "oUser-42".into());
                vec![json!({"Operator": "LoginOK", "openId": open_id})]
            }
            "Heart" => vec![json!({"Operator": "HeartOK"})],
            "CreateInvitation" => {
                vec![
                    json!({"Operator": "CreateInvitationOK", "id": next_id.fetch_add(1, Ordering::SeqCst)}),
                ]
            }
            "GetInvitation" => {
                vec![json!({"Operator": "GetInvitationOK", "data": [], "serverTime": 0})]
            }
            _ => vec![],
        }
    })
}

fn main() {
    let started = Instant::now();
    let server = Server::start_with(ServerOpts {
        handler: Some(forum_handler()),
        ..Default::default()
    });
    let proxy = Proxy::start(server.addr);
    println!(
        "forum server on ws://{} (reached through a fault proxy at {})",
        server.addr,
        proxy.url()
    );

    let open_id: Arc<Mutex<Option<String>>> = Arc::default();
    let cached = open_id.clone();
    let client = Client::builder(proxy.url())
        .heartbeat_interval(Duration::from_millis(300))
        .heartbeat_timeout(Duration::from_millis(300))
        .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
        .connect_timeout(Duration::from_secs(1))
        .reconnect_min_delay(Duration::from_millis(100))
        .reconnect_max_delay(Duration::from_secs(1))
        .on_open(move |link| {
            // Log in again on every connect, re-sending the cached openId.
            let mut login = json!({"Operator": "userLogin", "userCode": "demo"});
            if let Some(id) = cached.lock().unwrap().clone() {
                login["userOpenId"] = json!(id);
            }
            let ok = link.request_expect(
                login,
                Expect::reply("LoginOK").or_error("LoginError"),
                Duration::from_secs(2),
            )?;
            let id = ok.value()["openId"].as_str().unwrap_or_default().to_owned();
            println!("  login ok as {id}");
            *cached.lock().unwrap() = Some(id);
            Ok(())
        })
        .connect()
        .expect("connect to the embedded server");
    let t0 = started;
    client.on_state(move |s| match s {
        LinkState::Backoff { attempt, delay } => {
            println!(
                "  [{:>5} ms] link down: retry #{attempt} in {delay:?}",
                t0.elapsed().as_millis()
            )
        }
        other => println!("  [{:>5} ms] link {other:?}", t0.elapsed().as_millis()),
    });

    let mut next = 0u64;
    let mut post = |n: usize, client: &Client| {
        for _ in 0..n {
            client.send(json!({"Operator": "CreateInvitation", "Table": "demo", "Text": format!("post #{next}"), "seq": next})).unwrap();
            next += 1;
        }
    };
    let posts_seen = |server: &Server, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = 0;
        while got < want && Instant::now() < deadline {
            if let Ok(Seen::Text(_, v)) = server.seen.recv_timeout(Duration::from_millis(50))
                && v["Operator"] == "CreateInvitation"
            {
                got += 1;
                SEQS.lock().unwrap().push(v["seq"].as_u64().unwrap());
            }
        }
        got
    };

    println!("\n1. online: 20 posts");
    post(20, &client);
    posts_seen(&server, 20);

    let mut detect = Vec::new();
    for (i, fault) in [
        "clean close (server sends Close 1000)",
        "abrupt reset (RST)",
        "silent black hole",
    ]
    .iter()
    .enumerate()
    {
        println!("\n{}. cut: {fault}; 20 more posts while it is down", i + 2);
        let before = client.stats().connects;
        let t = Instant::now();
        match i {
            0 => server.kick_all(),
            1 => proxy.reset(),
            _ => proxy.blackhole(),
        }
        wait_until(Duration::from_secs(5), || client.state() != LinkState::Open);
        detect.push((fault.to_string(), t.elapsed()));
        post(20, &client);
        println!("  buffered in the outbox: {}", client.stats().outbox_depth);
        proxy.restore();
        wait_until(Duration::from_secs(10), || {
            client.stats().connects > before && client.state() == LinkState::Open
        });
        posts_seen(&server, 20);
    }

    let reply = client.request(
        json!({"Operator": "GetInvitation", "limt": 10, "skip": 0}),
        Duration::from_secs(2),
    );
    println!(
        "\nGetInvitation → {}",
        reply
            .map(|m| m.operator().to_owned())
            .unwrap_or_else(|e| e.to_string())
    );
    let _ = client.close(Duration::from_secs(2));
    let stats = client.stats();
    let seqs = SEQS.lock().unwrap().clone();
    let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
    println!("\n── report ─────────────────────────────");
    println!("posts sent          {next}");
    println!("posts delivered     {}", seqs.len());
    println!(
        "in order, no dups   {}",
        if in_order { "yes" } else { "NO" }
    );
    println!(
        "possibly lost       {} (written just before a cut and not yet confirmed by a pong: counted, never silent)",
        stats.possibly_lost
    );
    println!("reconnects          {}", stats.reconnects);
    for (fault, took) in &detect {
        println!("detected {fault:<40} in {took:?}");
    }
    println!("finished in {:?}", started.elapsed());
    if seqs.len() as u64 != next || !in_order {
        std::process::exit(1);
    }
}

static SEQS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
