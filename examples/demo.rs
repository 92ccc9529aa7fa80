//! `cargo run --example demo`: the recipe's forum, end to end, with no setup.
//!
//! An embedded forum server on loopback; a client that logs in (caching its
//! `openId` and re-sending it on every re-login), posts, comments and likes
//! while the server cuts it in each way a network does: clean close, abrupt
//! reset, silent black hole, idle cut. The client keeps sending while
//! offline. At-least-once delivery plus the server's per-user dedup make it
//! effectively once. Ends with a verdict; exits non-zero if anything was
//! lost or reordered.

#[path = "forum/mod.rs"]
mod forum;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longlink::testkit::{Seen, Server, wait_until};
use longlink::{Client, Expect, LinkState};
use serde_json::{Value, json};

/// Prints `[  1.234 s] …` lines, relative to the start.
#[derive(Clone, Copy)]
struct Story(Instant);

impl Story {
    fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:>7.3} s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// When the client saw the link leave `Open`, for detection times.
type Drops = Arc<Mutex<Vec<Instant>>>;

/// The verdict of a run.
struct Verdict {
    sent: usize,
    delivered: usize,
    duplicates: u64,
    lost: usize,
    reordered: usize,
    reconnects: u64,
    detection: Vec<(&'static str, Duration)>,
    took: Duration,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.lost == 0 && self.reordered == 0 && self.delivered == self.sent
    }

    fn print(&self) {
        println!();
        println!("┌─ verdict ──────────────────────────────────────────┐");
        let row = |k: &str, v: String| println!("│ {k:<32} {v:>17} │");
        row("messages sent", self.sent.to_string());
        row("delivered (once each)", self.delivered.to_string());
        row(
            "duplicates suppressed by server",
            self.duplicates.to_string(),
        );
        row("lost", self.lost.to_string());
        row("reordered", self.reordered.to_string());
        row("reconnects", self.reconnects.to_string());
        for (kind, d) in &self.detection {
            row(
                &format!("detected {kind} in"),
                format!("{} ms", d.as_millis()),
            );
        }
        row("finished in", format!("{:.1} s", self.took.as_secs_f64()));
        println!("└────────────────────────────────────────────────────┘");
        println!(
            "{}",
            if self.ok() {
                "OK: every message delivered once, in order."
            } else {
                "FAILED: messages were lost or reordered."
            }
        );
    }
}

/// The client side: the app's actions, each stamped with a sequence number
/// so the server's record shows order.
struct App {
    client: Client,
    seq: u64,
    story: Story,
}

impl App {
    fn post(&mut self, text: &str) {
        let m = json!({"Operator": "CreateInvitation", "Table": "demo", "Image": "", "Text": text, "isRichText": false, "seq": self.seq});
        self.send(m);
    }

    fn comment(&mut self, id: u64, text: &str) {
        let m =
            json!({"Operator": "CreateInvitationComment", "id": id, "text": text, "seq": self.seq});
        self.send(m);
    }

    fn like(&mut self, id: u64) {
        let m = json!({"Operator": "LoveInvitation", "id": id, "seq": self.seq});
        self.send(m);
    }

    fn send(&mut self, m: Value) {
        self.client.send(m).expect("the outbox has room");
        self.seq += 1;
    }

    /// A burst of activity: 8 posts, a comment and a like.
    fn burst(&mut self, label: &str) {
        for i in 0..8 {
            self.post(&format!("{label} #{i}"));
        }
        self.comment(1, &format!("comment during {label}"));
        self.like(1);
    }

    /// Wait until the link is open and everything is acknowledged.
    fn settle(&self) -> bool {
        wait_until(Duration::from_secs(10), || {
            let s = self.client.stats();
            self.client.state() == LinkState::Open && s.outbox_depth == 0
        })
    }

    fn offline_report(&self) {
        let s = self.client.stats();
        self.story.say(format!(
            "  the app kept going: {} messages in the outbox ({} bytes), none refused",
            s.outbox_depth, s.outbox_bytes
        ));
    }
}

fn client(url: &str, story: Story, drops: Drops) -> Client {
    let open_id: Arc<Mutex<Option<String>>> = Arc::default();
    let client = Client::builder(url)
        .at_least_once(true)
        .heartbeat_interval(Duration::from_millis(400))
        .heartbeat_timeout(Duration::from_millis(400))
        .app_heartbeat(json!({"Operator": "Heart"}), "HeartOK")
        .reconnect_min_delay(Duration::from_millis(50))
        .reconnect_max_delay(Duration::from_millis(500))
        .on_open(move |link| {
            // Every (re)connect logs in again, re-sending the cached openId,
            // before anything buffered is written.
            let mut login = json!({"Operator": "userLogin", "userCode": "demo-code"});
            let cached = open_id.lock().unwrap().clone();
            if let Some(id) = &cached {
                login["userOpenId"] = json!(id);
            }
            let ok = link.request_expect(
                login,
                Expect::reply("LoginOK").or_fatal("BanLogin"),
                Duration::from_secs(2),
            )?;
            let id = ok.value()["openId"].as_str().unwrap_or_default().to_owned();
            match cached {
                Some(_) => story.say(format!("  re-login as {id} (cached openId re-sent)")),
                None => story.say(format!("  logged in as {id}")),
            }
            *open_id.lock().unwrap() = Some(id);
            Ok(())
        })
        .connect()
        .expect("connecting to the embedded forum");
    let mut was_open = true;
    client.on_state(move |s| {
        match s {
            LinkState::Open => story.say("  link open"),
            LinkState::Backoff {
                attempt,
                delay,
                cause,
            } => story.say(format!(
                "  link down ({cause}): reconnect attempt {attempt} in {} ms",
                delay.as_millis()
            )),
            LinkState::Connecting { .. } => story.say("  link connecting"),
            LinkState::LoggingIn => story.say("  link up, logging in"),
            LinkState::Closed(why) => story.say(format!("  link closed: {why:?}")),
            LinkState::Paused => story.say("  link paused"),
            _ => {}
        }
        let open = *s == LinkState::Open;
        if was_open && !open {
            drops.lock().unwrap().push(Instant::now());
        }
        was_open = open;
    });
    let story2 = story;
    client.on("CreateInvitationCommentError", move |m| {
        story2.say(format!(
            "  server refused a comment: {}",
            m.value()["reason"]
        ))
    });
    client
}

/// The whole story; returns the verdict (the test runs it too).
fn run() -> Verdict {
    let story = Story(Instant::now());
    let (server, forum) = forum::start("127.0.0.1:0", None).expect("binding loopback");
    story.say(format!("forum server listening on {}", server.url()));
    let drops: Drops = Arc::default();
    let mut app = App {
        client: client(&server.url(), story, drops.clone()),
        seq: 0,
        story,
    };

    story.say("1. online: posting, commenting, liking");
    app.burst("online");
    app.settle();
    let page = app.client.request(
        json!({"Operator": "GetInvitation", "limt": 2, "skip": 0}),
        Duration::from_secs(2),
    );
    if let Ok(page) = page {
        let n = page.value()["data"].as_array().map_or(0, Vec::len);
        story.say(format!(
            "  GetInvitation → {n} invitations on the first page"
        ));
    }

    let mut detection = Vec::new();
    let faults: [(&'static str, &str); 4] = [
        (
            "clean close",
            "the server closes the link cleanly (Close 1000)",
        ),
        ("reset", "the server aborts the link (TCP RST)"),
        (
            "black hole",
            "the link goes silent: no FIN, no RST, nothing",
        ),
        (
            "idle cut",
            "the client goes quiet; the server cuts idle links",
        ),
    ];
    for (i, (kind, what)) in faults.iter().enumerate() {
        story.say(format!("{}. {what}", i + 2));
        let drops_before = drops.lock().unwrap().len();
        let connects = app.client.stats().connects;
        let cut_at = match *kind {
            "clean close" => {
                let t = Instant::now();
                server.kick_all();
                t
            }
            "reset" => {
                let t = Instant::now();
                server.reset_all();
                t
            }
            "black hole" => {
                let t = Instant::now();
                server.blackhole_all();
                t
            }
            _ => {
                // Quieter than the heartbeat: the server cuts first.
                while server.seen.try_recv().is_ok() {}
                server.set_idle_cut(Some(Duration::from_millis(250)));
                let t = idle_cut_seen(&server);
                server.set_idle_cut(None);
                t
            }
        };
        // Keep using the app while the link is down (or not yet known dead).
        app.burst(kind);
        app.offline_report();
        wait_until(Duration::from_secs(5), || {
            drops.lock().unwrap().len() > drops_before
        });
        if let Some(noticed) = drops.lock().unwrap().get(drops_before) {
            detection.push((*kind, noticed.saturating_duration_since(cut_at)));
        }
        let settled = app.settle();
        let s = app.client.stats();
        story.say(format!(
            "  back: {} reconnect(s); outbox flushed ({}), {} acknowledged so far, {} re-sent",
            s.connects - connects,
            if settled { "empty" } else { "NOT empty" },
            s.acknowledged,
            s.resent
        ));
    }

    story.say(format!(
        "{}. the app goes to the background (pause), keeps posting, comes back (resume)",
        faults.len() + 2
    ));
    let connects = app.client.stats().connects;
    app.client.pause();
    wait_until(Duration::from_secs(5), || {
        app.client.state() == LinkState::Paused
    });
    story.say("  paused: the socket closed with 1001; no heartbeat, no reconnect");
    app.burst("background");
    app.offline_report();
    // A while in the background: nothing happens on the network.
    std::thread::sleep(Duration::from_millis(500));
    app.client.resume();
    let settled = app.settle();
    story.say(format!(
        "  resumed: {} reconnect, re-login, outbox flushed ({})",
        app.client.stats().connects - connects,
        if settled { "empty" } else { "NOT empty" }
    ));

    let _ = app.client.close(Duration::from_secs(2));
    let stats = app.client.stats();
    let accepted = forum.accepted("oUser-1");
    let seqs: Vec<u64> = accepted.iter().filter_map(|v| v["seq"].as_u64()).collect();
    let sent = app.seq as usize;
    let lost = (0..app.seq).filter(|n| !seqs.contains(n)).count();
    let reordered = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
    Verdict {
        sent,
        delivered: seqs.len(),
        duplicates: forum.duplicates(),
        lost,
        reordered,
        reconnects: stats.reconnects,
        detection,
        took: story.0.elapsed(),
    }
}

/// Wait for the server to cut a connection; when it did.
fn idle_cut_seen(server: &Server) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(seen) = server.seen.recv_deadline(deadline) {
        if let Seen::Closed(_) = seen {
            return Instant::now();
        }
    }
    Instant::now()
}

fn main() -> ExitCode {
    let verdict = run();
    verdict.print();
    if verdict.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_delivers_everything_once_in_order() {
        let v = super::run();
        v.print();
        assert!(v.ok());
        assert_eq!(v.detection.len(), 4, "every fault was noticed");
        assert!(v.reconnects >= 4);
    }
}
