//! How an application tests itself across disconnects with the `testkit`
//! feature, using only the public API (copy this into your own tests).
//!
//! The "application" here: a chat that sends messages (must arrive) and
//! typing indicators (volatile: only worth sending while connected).

use std::time::Duration;

use longlink::testkit::{Proxy, Server, wait_until};
use longlink::{Client, Failure, LinkState, SendOptions, Status};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

#[test]
fn a_chat_survives_a_dead_nat_and_does_not_replay_stale_typing_indicators() {
    let server = Server::start();
    let proxy = Proxy::start(server.addr);
    let chat = Client::builder(proxy.url())
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(100))
        // Long enough that the test acts while the link is down.
        .reconnect_min_delay(Duration::from_millis(300))
        .connect()
        .unwrap();

    // The NAT dies silently: no FIN, no RST. New connections work.
    proxy.blackhole();
    proxy.restore();
    assert!(
        wait_until(T, || chat.state() != LinkState::Open),
        "dead link noticed"
    );

    // While the link is down: the message waits, the indicator is dropped.
    let typing = chat
        .send_with(json!({"Operator": "FireTyping"}), SendOptions::volatile())
        .unwrap();
    let message = chat
        .send_with(json!({"Operator": "FireSay", "n": 1}), SendOptions::new())
        .unwrap();
    assert_eq!(typing.wait(T), Status::Failed(Failure::NotOpen));
    assert_eq!(message.wait(T), Status::Confirmed);
    assert_eq!(server.next_text(T).unwrap()["Operator"], "FireSay");
    assert_eq!(chat.stats().reconnects, 1);
}
