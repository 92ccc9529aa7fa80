//! Verifies that an idle link costs nothing: the I/O thread does not wake up
//! between heartbeats, nor at all while paused (Linux: voluntary context
//! switches of its thread).
#![cfg(target_os = "linux")]
mod support;

use std::time::Duration;

use longlink::Client;
use support::{Server, init_log};

fn io_thread_switches() -> u64 {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "longlink-io" {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches"))
                .unwrap();
            found.push(
                line.split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected exactly one I/O thread in this test process"
    );
    found[0]
}

#[test]
fn idle_io_thread_wakes_only_for_heartbeats() {
    init_log();
    let server = Server::start();
    // Part 1: no heartbeat due within the window: no wake-up at all.
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_secs(25))
        .connect()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the connect settle (observation only)
    let before = io_thread_switches();
    std::thread::sleep(Duration::from_secs(2));
    let idle = io_thread_switches() - before;
    assert_eq!(idle, 0, "I/O thread woke {idle} times while idle");
    client.close(Duration::from_secs(1)).unwrap();

    // Part 2: a heartbeat every 400 ms: a wake for the ping, one for the pong.
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_millis(400))
        .connect()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = io_thread_switches();
    std::thread::sleep(Duration::from_secs(2));
    let woke = io_thread_switches() - before;
    let heartbeats = 2000 / 400 + 1;
    assert!(
        woke <= 2 * heartbeats,
        "I/O thread woke {woke} times for {heartbeats} heartbeats"
    );
    assert!(woke >= 2, "heartbeats did not run: {woke}");
    client.close(Duration::from_secs(1)).unwrap();

    // Part 3: paused, with a heartbeat every 100 ms when not: no wake-up.
    let client = Client::builder(server.url())
        .heartbeat_interval(Duration::from_millis(100))
        .connect()
        .unwrap();
    client.pause();
    assert!(support::wait_until(Duration::from_secs(5), || {
        client.state() == longlink::LinkState::Paused
    }));
    std::thread::sleep(Duration::from_millis(300));
    let before = io_thread_switches();
    std::thread::sleep(Duration::from_secs(2));
    let paused = io_thread_switches() - before;
    assert_eq!(paused, 0, "I/O thread woke {paused} times while paused");
    eprintln!(
        "idle wake-ups: {idle} with no heartbeat due; {woke} for ~{heartbeats} heartbeats; {paused} while paused"
    );
    client.close(Duration::from_secs(1)).unwrap();
}
