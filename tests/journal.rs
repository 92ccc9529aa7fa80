//! The durable outbox across process deaths: SIGKILL at random moments, a
//! torn journal, a full disk. Child processes are this test binary run again
//! with `LONGLINK_JOURNAL_CHILD` set (see `child_process_entry`).
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use longlink::{Client, Error, Failure, JournalSync, Overflow, SendOptions, Status};
use serde_json::{Value, json};
use support::{Dedup, dead_addr, dedup_server, init_log, wait_until};

const CHILD: &str = "LONGLINK_JOURNAL_CHILD";
const WAIT: Duration = Duration::from_secs(5);

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "longlink-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn sync_policy(s: &str) -> JournalSync {
    match s {
        "every" => JournalSync::EveryMessage,
        "never" => JournalSync::Never,
        ms => JournalSync::Interval(Duration::from_millis(ms.parse().unwrap())),
    }
}

/// Not a test of its own: the body of the child processes.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    init_log();
    match mode.as_str() {
        "sender" => child_sender(),
        "full-disk" => child_full_disk(),
        other => panic!("unknown child mode {other}"),
    }
}

/// Sends `n` = where the last process stopped .. `CHILD_N`, reporting
/// `ACCEPTED=k` on stdout after every 10 accepted, then waits until
/// everything is acknowledged.
fn child_sender() {
    let total: u64 = var("CHILD_N").parse().unwrap();
    let server_next: u64 = var("CHILD_SERVER_NEXT").parse().unwrap();
    let client = Client::builder(var("CHILD_URL"))
        .durable(var("CHILD_JOURNAL"))
        .journal_sync(sync_policy(&var("CHILD_SYNC")))
        .outbox_capacity(1_000_000)
        .outbox_max_bytes(1 << 30)
        .reconnect_min_delay(Duration::from_millis(5))
        .start()
        .unwrap();
    // What the earlier process accepted: acknowledged (the server has it)
    // or recovered from the journal (being re-sent now).
    let recovered = client.recovered();
    let next_recovered = recovered
        .last()
        .map_or(0, |m| m.get("n").and_then(Value::as_u64).unwrap() + 1);
    let start = server_next.max(next_recovered);
    println!("RECOVERED={} START={start}", recovered.len());
    for n in start..total {
        client.send(json!({"Operator": "Num", "n": n})).unwrap();
        let accepted = n - start + 1;
        if accepted.is_multiple_of(10) {
            println!("ACCEPTED={accepted}");
        }
    }
    assert!(wait_until(Duration::from_secs(60), || {
        client.stats().outbox_depth == 0
    }));
    client.close(WAIT).unwrap();
    println!("DONE");
}

/// Sends until the journal's file-size limit makes `send` fail, checks the
/// error, then lets everything accepted be delivered.
fn child_full_disk() {
    let client = Client::builder(var("CHILD_URL"))
        .durable(var("CHILD_JOURNAL"))
        .connect()
        .unwrap();
    let mut accepted = 0u64;
    let failed = loop {
        assert!(accepted < 100_000, "the journal never filled up");
        match client.send(json!({"Operator": "Num", "n": accepted, "pad": "x".repeat(40)})) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(failed, Error::Journal { .. }), "{failed:?}");
    assert!(failed.to_string().contains("journal"), "{failed}");
    let back = failed.into_message().unwrap();
    assert_eq!(back["n"], accepted, "the refused message is handed back");
    assert!(
        back.get("msgId").is_none(),
        "handed back as the caller wrote it"
    );
    // Still full: refused again, nothing accepted silently.
    let again = json!({"Operator": "Num", "n": accepted, "pad": "x".repeat(40)});
    assert!(client.send(again).is_err());
    assert!(wait_until(Duration::from_secs(30), || {
        client.stats().outbox_depth == 0
    }));
    println!("ACCEPTED={accepted}");
    client.close(WAIT).unwrap();
}

/// A sender child whose stdout comes line by line through the returned
/// channel (stderr goes to `err`), so the parent can act on its progress.
fn sender_child(err: &Path, envs: &[(&str, String)]) -> (Child, Receiver<String>) {
    let log = std::fs::File::create(err).unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "sender")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (c, rx)
}

/// The next line with `key`, within `timeout`; every line read goes to `seen`.
fn next_field(
    rx: &Receiver<String>,
    key: &str,
    timeout: Duration,
    seen: &mut String,
) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while let Ok(line) = rx.recv_deadline(deadline) {
        seen.push_str(&line);
        seen.push('\n');
        if let Some(v) = field(&line, key) {
            return v.parse().ok();
        }
    }
    None
}

/// This binary, running only `child_process_entry`, in `mode`. With
/// `max_file_blocks`, under a file-size limit (`ulimit -f`, 512-byte blocks
/// in POSIX sh) with SIGXFSZ ignored, so a write past it fails with an
/// error instead of killing the process: a disk that is full for it.
fn child(mode: &str, out: &Path, envs: &[(&str, String)], max_file_blocks: Option<u32>) -> Child {
    let log = std::fs::File::create(out).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match max_file_blocks {
        Some(blocks) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""
                ))
                .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([
        "--exact",
        "child_process_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, mode)
    .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .unwrap()
}

/// Wait (bounded) for a child to exit by itself.
fn wait_exit(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The word after `key` in a child's output (the test harness may print
/// on the same line).
fn field<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    let at = log.find(key)? + key.len();
    log[at..].split_whitespace().next()
}

fn ns(d: &Dedup) -> Vec<u64> {
    d.accepted
        .iter()
        .map(|v| v["n"].as_u64().unwrap())
        .collect()
}

#[test]
fn killed_processes_lose_nothing_and_duplicate_nothing() {
    init_log();
    // (fsync policy, messages). Each round runs two processes killed after
    // a random number of accepted messages, then one that finishes.
    let rounds: [(&str, u64); 5] = [
        ("never", 3000),
        ("5", 3000),
        ("every", 400),
        ("never", 3000),
        ("never", 3000),
    ];
    let mut killed = 0;
    for (round, (sync, total)) in rounds.into_iter().enumerate() {
        let dir = temp_dir("kill");
        let journal = dir.join("outbox.journal");
        let (server, dedup) = dedup_server();
        let mut report = Vec::new();
        for (i, kill) in [true, true, false].into_iter().enumerate() {
            let server_next = dedup
                .lock()
                .unwrap()
                .accepted
                .last()
                .map_or(0, |v| v["n"].as_u64().unwrap() + 1);
            let err = dir.join(format!("child-{i}.log"));
            let (mut c, lines) = sender_child(
                &err,
                &[
                    ("CHILD_URL", server.url()),
                    ("CHILD_JOURNAL", journal.display().to_string()),
                    ("CHILD_N", total.to_string()),
                    ("CHILD_SERVER_NEXT", server_next.to_string()),
                    ("CHILD_SYNC", sync.to_string()),
                ],
            );
            let mut out = String::new();
            let start = next_field(&lines, "START=", Duration::from_secs(60), &mut out);
            // Kill after a random number of messages accepted by this
            // process: at most three quarters of what it has to send, so
            // the kill always comes while it is still at work.
            let left = start.map_or(0, |s| total.saturating_sub(s));
            let kill_at = (kill && left >= 40).then(|| 10 * fastrand::u64(1..=left * 3 / 40));
            let status = match kill_at {
                Some(k) => {
                    let mut reached = false;
                    while let Some(n) =
                        next_field(&lines, "ACCEPTED=", Duration::from_secs(60), &mut out)
                    {
                        if n >= k {
                            reached = true;
                            break;
                        }
                    }
                    assert!(
                        reached,
                        "round {round}: the child never reported {k} accepted\n{out}"
                    );
                    c.kill().unwrap(); // SIGKILL
                    c.wait().unwrap();
                    killed += 1;
                    None
                }
                None => wait_exit(&mut c, Duration::from_secs(120)),
            };
            // The rest of what it printed.
            while let Ok(line) = lines.recv_timeout(WAIT) {
                out.push_str(&line);
                out.push('\n');
            }
            let log = format!("{out}{}", std::fs::read_to_string(&err).unwrap_or_default());
            if !kill {
                assert!(
                    status.is_some_and(|s| s.success()),
                    "round {round}: the last process failed: {status:?}\n{log}"
                );
            }
            // Everything the dead process wrote has been read.
            assert!(wait_until(WAIT, || server.live() == 0));
            let recovered = field(&log, "RECOVERED=").unwrap_or("(none)").to_owned();
            let fate = match (kill_at, status) {
                (Some(k), None) => format!("killed after {k} accepted"),
                _ => "finished".to_owned(),
            };
            report.push(format!(
                "{fate} (accepted so far {}, recovered {recovered})",
                dedup.lock().unwrap().accepted.len()
            ));
        }
        let d = dedup.lock().unwrap();
        let got = ns(&d);
        assert_eq!(got.len() as u64, total, "round {round}: {report:?}");
        assert!(
            got.iter().copied().eq(0..total),
            "round {round}: not every number exactly once in order: {report:?}"
        );
        let ids: Vec<u64> = d
            .accepted
            .iter()
            .map(|v| v["msgId"].as_u64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are unique");
        eprintln!(
            "round {round} (sync {sync}, {total} messages): {}; server dropped {} duplicates",
            report.join(" → "),
            d.duplicates
        );
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(killed >= 5, "only {killed} processes were killed");
}

#[test]
fn a_full_disk_refuses_the_message_and_loses_nothing_accepted() {
    init_log();
    let dir = temp_dir("full");
    let (server, dedup) = dedup_server();
    let out = dir.join("child.log");
    // Writes past 32 KiB fail.
    let mut c = child(
        "full-disk",
        &out,
        &[
            ("CHILD_URL", server.url()),
            (
                "CHILD_JOURNAL",
                dir.join("outbox.journal").display().to_string(),
            ),
        ],
        Some(64),
    );
    let status = wait_exit(&mut c, Duration::from_secs(60));
    let log = std::fs::read_to_string(&out).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    let accepted: u64 = field(&log, "ACCEPTED=").unwrap().parse().unwrap();
    assert!(accepted > 10, "{accepted}");
    let d = dedup.lock().unwrap();
    assert!(
        ns(&d).into_iter().eq(0..accepted),
        "every accepted message delivered once, in order"
    );
    eprintln!(
        "journal full after {accepted} messages; all {accepted} delivered, the next one refused"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_journal_is_cut_and_the_rest_is_sent_in_order() {
    init_log();
    let dir = temp_dir("torn");
    let path = dir.join("outbox.journal");
    // Accept 10 messages while the server is unreachable, then stop.
    let offline = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    for n in 0..10 {
        offline.send(json!({"Operator": "Num", "n": n})).unwrap();
    }
    offline.close(Duration::from_millis(100)).unwrap();
    // A crash in the middle of the last append, then some garbage.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .durable(&path)
        .connect()
        .unwrap();
    let recovered: Vec<u64> = client
        .recovered()
        .iter()
        .map(|m| m.get("n").and_then(Value::as_u64).unwrap())
        .collect();
    assert_eq!(recovered, (0..9).collect::<Vec<_>>());
    assert_eq!(client.stats().recovered, 9);
    client.send(json!({"Operator": "Num", "n": 9})).unwrap();
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 10));
    let d = dedup.lock().unwrap();
    assert!(ns(&d).into_iter().eq(0..10));
    let ids: Vec<u64> = d
        .accepted
        .iter()
        .map(|v| v["msgId"].as_u64().unwrap())
        .collect();
    // Recovered messages keep their ids; new ones continue above them.
    assert_eq!(ids[..9], (ids[0]..ids[0] + 9).collect::<Vec<_>>());
    assert!(ids[9] > ids[8]);
    drop(d);
    client.close(WAIT).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_in_use_or_not_a_journal_is_refused_with_a_clear_error() {
    init_log();
    let dir = temp_dir("refuse");
    let path = dir.join("outbox.journal");
    let url = format!("ws://{}", dead_addr());
    let first = Client::builder(&url).durable(&path).start().unwrap();
    let err = Client::builder(&url).durable(&path).start().unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("in use"), "{cause}");
    drop(first);

    let foreign = dir.join("notes.txt");
    std::fs::write(&foreign, "precious").unwrap();
    let err = Client::builder(&url).durable(&foreign).start().unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "precious");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_journal_is_compacted_and_does_not_grow_without_bound() {
    init_log();
    let dir = temp_dir("bounded");
    let path = dir.join("outbox.journal");
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .durable(&path)
        // Unacknowledged messages are live in the journal: at most 2,000
        // of ~130 bytes, so however slowly the acknowledgements come the
        // file stays under max(1 MiB trigger, twice the live bytes) plus
        // what is appended between two acknowledgement records.
        .outbox_capacity(2_000)
        .outbox_overflow(Overflow::Block(Duration::from_secs(30)))
        .connect()
        .unwrap();
    const N: usize = 40_000;
    let mut largest = 0;
    for n in 0..N {
        client
            .send(json!({"Operator": "Num", "n": n, "pad": "x".repeat(60)}))
            .unwrap();
        if n % 1000 == 0 {
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
    }
    assert!(wait_until(Duration::from_secs(30), || {
        client.stats().outbox_depth == 0
    }));
    client.close(WAIT).unwrap();
    assert_eq!(dedup.lock().unwrap().accepted.len(), N);
    let end = std::fs::metadata(&path).unwrap().len();
    // About 5 MB was appended; compaction keeps it near its 1 MiB trigger
    // (plus what was unacknowledged at the time).
    assert!(largest < 3 << 20, "the journal reached {largest} bytes");
    assert!(
        end < 100,
        "all acknowledged: only the header is left ({end} bytes)"
    );
    eprintln!("journal: largest {largest} bytes, {end} at the end, for {N} messages");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn durable_clients_sharing_a_directory_never_touch_each_others_journal() {
    init_log();
    let dir = temp_dir("neighbours");
    // A journal whose name a compaction temp file once had, holding three
    // messages for a server that is down.
    let idle_path = dir.join("outbox.compacting");
    let idle = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&idle_path)
        .start()
        .unwrap();
    for n in 0..3 {
        idle.send(json!({"Operator": "Num", "n": n})).unwrap();
    }
    // A busy neighbour sharing the stem: its journal is compacted many times.
    let (server, dedup) = dedup_server();
    let busy_path = dir.join("outbox.1");
    let busy = Client::builder(server.url())
        .durable(&busy_path)
        .outbox_overflow(Overflow::Block(Duration::from_secs(30)))
        .connect()
        .unwrap();
    const N: usize = 6_000;
    for n in 0..N {
        busy.send(json!({"Operator": "Num", "n": n, "pad": "x".repeat(200)}))
            .unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || {
        busy.stats().outbox_depth == 0
    }));
    busy.close(WAIT).unwrap();
    assert_eq!(dedup.lock().unwrap().accepted.len(), N);
    let _ = idle.close(Duration::from_millis(50));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outbox.1", "outbox.compacting"],
        "no temp file left"
    );
    // Both journals reopen with exactly what they held.
    let again = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&idle_path)
        .start()
        .unwrap();
    let ns: Vec<u64> = again
        .recovered()
        .iter()
        .map(|m| m.get("n").and_then(Value::as_u64).unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2]);
    let _ = again.close(Duration::from_millis(50));
    let busy_again = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&busy_path)
        .start()
        .unwrap();
    assert!(busy_again.recovered().is_empty());
    let _ = busy_again.close(Duration::from_millis(50));
    let _ = std::fs::remove_dir_all(&dir);
}

fn recovered_ns(c: &Client) -> Vec<u64> {
    c.recovered()
        .iter()
        .map(|m| m.get("n").and_then(Value::as_u64).unwrap())
        .collect()
}

#[test]
fn a_ttl_message_whose_deadline_passes_between_processes_is_expired_not_sent() {
    init_log();
    let dir = temp_dir("ttl-expired");
    let path = dir.join("outbox.journal");
    let ttl = Duration::from_millis(150);
    let down = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    let sent_at = Instant::now();
    let short = down
        .send_with(
            json!({"Operator": "Num", "n": 0}),
            SendOptions::new().ttl(ttl),
        )
        .unwrap();
    down.send(json!({"Operator": "Num", "n": 1})).unwrap();
    let long = SendOptions::new().ttl(Duration::from_secs(60));
    down.send_with(json!({"Operator": "Num", "n": 2}), long)
        .unwrap();
    // Durable: all three stay in the journal, none is handed back.
    down.close(Duration::from_millis(50)).unwrap();
    assert_eq!(short.status(), Status::Failed(Failure::Closed));
    // Time passes while no process runs.
    std::thread::sleep(ttl.saturating_sub(sent_at.elapsed()));
    let (server, dedup) = dedup_server();
    let client = Client::builder(server.url())
        .durable(&path)
        .connect()
        .unwrap();
    assert_eq!(recovered_ns(&client), [1, 2]);
    assert_eq!(client.stats().expired, 1);
    assert_eq!(client.stats().recovered, 2);
    assert!(wait_until(WAIT, || dedup.lock().unwrap().accepted.len() == 2));
    assert!(wait_until(WAIT, || client.stats().outbox_depth == 0));
    assert_eq!(
        ns(&dedup.lock().unwrap()),
        [1, 2],
        "the expired one never left"
    );
    client.close(WAIT).unwrap();
    // Its drop was recorded: the next start has nothing left.
    let again = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    assert!(again.recovered().is_empty());
    assert_eq!(again.stats().expired, 0);
    let _ = again.close(Duration::from_millis(50));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recovered_ttl_message_keeps_only_the_time_it_had_left() {
    init_log();
    let dir = temp_dir("ttl-left");
    let path = dir.join("outbox.journal");
    let ttl = Duration::from_millis(1500);
    let down = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    let sent_at = Instant::now();
    down.send_with(
        json!({"Operator": "Num", "n": 0}),
        SendOptions::new().ttl(ttl),
    )
    .unwrap();
    down.close(Duration::from_millis(50)).unwrap();
    // Two thirds of its time to live pass before the next start.
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(sent_at.elapsed()));
    let restarted_at = Instant::now();
    let client = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    assert_eq!(recovered_ns(&client), [0]);
    assert!(wait_until(Duration::from_secs(10), || client
        .stats()
        .expired
        == 1));
    let after = restarted_at.elapsed();
    // It expires when what was left runs out, not a whole TTL after the restart.
    assert!(sent_at.elapsed() >= ttl, "expired early");
    assert!(
        after < ttl - Duration::from_millis(100),
        "expired {after:?} after the restart, with about 500 ms of its TTL left"
    );
    let _ = client.close(Duration::from_millis(50));
    let again = Client::builder(format!("ws://{}", dead_addr()))
        .durable(&path)
        .start()
        .unwrap();
    assert!(again.recovered().is_empty(), "its drop was recorded");
    let _ = again.close(Duration::from_millis(50));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restarted_durable_client_continues_its_run_and_its_ids() {
    init_log();
    let dir = temp_dir("run");
    let path = dir.join("outbox.journal");
    let (server, dedup) = dedup_server();
    for round in 0..2 {
        let client = Client::builder(server.url())
            .durable(&path)
            .connect()
            .unwrap();
        for n in 0..2 {
            client
                .send(json!({"Operator": "Num", "n": round * 2 + n}))
                .unwrap();
        }
        assert!(wait_until(WAIT, || client.stats().acknowledged == 2));
        client.close(WAIT).unwrap();
    }
    let d = dedup.lock().unwrap();
    assert_eq!(ns(&d), [0, 1, 2, 3]);
    let run = d.accepted[0]["msgRun"].clone();
    assert!(run.as_u64().is_some_and(|r| r > 0 && r < 1 << 53), "{run}");
    assert!(d.accepted.iter().all(|v| v["msgRun"] == run), "one run");
    let ids: Vec<u64> = d
        .accepted
        .iter()
        .map(|v| v["msgId"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    drop(d);
    // Without its journal, the next client is a new run.
    let other = Client::builder(server.url())
        .at_least_once(true)
        .connect()
        .unwrap();
    other.send(json!({"Operator": "Num", "n": 4})).unwrap();
    assert!(wait_until(WAIT, || other.stats().acknowledged == 1));
    assert_ne!(dedup.lock().unwrap().accepted[4]["msgRun"], run);
    other.close(WAIT).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
