//! The example forum server speaks the recipe's protocol, deduplicates per
//! user and acknowledges; checked with the real client.
mod support;

#[path = "../examples/forum/mod.rs"]
mod forum;

use std::time::Duration;

use longlink::{Client, Error, Expect};
use serde_json::json;
use support::{init_log, wait_until};

const T: Duration = Duration::from_secs(5);

fn login() -> Expect {
    Expect::reply("LoginOK").or_error("BanLogin")
}

#[test]
fn the_forum_answers_every_operator_of_the_recipe() {
    init_log();
    let (server, forum) = forum::start("127.0.0.1:0", None).unwrap();
    let client = Client::builder(server.url())
        .correlation_field("reqId")
        .connect()
        .unwrap();
    let ok = client
        .request_expect(
            json!({"Operator": "userLogin", "userCode": "c1"}),
            login(),
            T,
        )
        .unwrap();
    let open_id = ok.value()["openId"].as_str().unwrap().to_owned();
    assert!(open_id.starts_with("oUser-"));
    for t in ["first", "second", "third"] {
        let r = client
            .request(
                json!({"Operator": "CreateInvitation", "Table": t, "Image": "", "Text": t, "isRichText": false}),
                T,
            )
            .unwrap();
        assert!(r.value()["id"].as_u64().unwrap() >= 1);
    }
    // Paging: newest first.
    let page = client
        .request(
            json!({"Operator": "GetInvitation", "limt": 2, "skip": 1}),
            T,
        )
        .unwrap();
    let tables: Vec<&str> = page.value()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["second", "first"]);
    assert!(page.value()["serverTime"].as_u64().unwrap() > 0);
    // By time: everything newer than long ago.
    let all = client
        .request(
            json!({"Operator": "GetInvitation", "mode": "time", "time": 0}),
            T,
        )
        .unwrap();
    assert_eq!(all.value()["data"].as_array().unwrap().len(), 3);
    let c = client
        .request(
            json!({"Operator": "CreateInvitationComment", "id": 1, "text": "nice"}),
            T,
        )
        .unwrap();
    assert_eq!(c.value()["data"]["text"], "nice");
    let err = client
        .request(
            json!({"Operator": "CreateInvitationComment", "id": 99, "text": "x"}),
            T,
        )
        .unwrap_err();
    assert_eq!(
        err.remote().unwrap().operator(),
        "CreateInvitationCommentError"
    );
    let love = client
        .request(json!({"Operator": "LoveInvitation", "id": 1}), T)
        .unwrap();
    assert_eq!(love.value()["loves"], 1);
    let one = client
        .request(json!({"Operator": "GetInvitation", "id": 1}), T)
        .unwrap();
    assert_eq!(one.value()["data"][0]["comments"][0]["text"], "nice");
    assert_eq!(one.value()["data"][0]["loves"], 1);
    assert_eq!(forum.invitations(), 3);

    // The openId is reused on a re-login; a banned code is refused.
    let again = client
        .request_expect(
            json!({"Operator": "userLogin", "userCode": "c1", "userOpenId": open_id}),
            login(),
            T,
        )
        .unwrap();
    assert_eq!(again.value()["openId"], open_id.as_str());
    let banned = client
        .request_expect(
            json!({"Operator": "userLogin", "userCode": "banned"}),
            login(),
            T,
        )
        .unwrap_err();
    assert!(matches!(banned, Error::Remote(m) if m.operator() == "BanLogin"));
}

#[test]
fn the_forum_drops_duplicates_per_user_and_acknowledges() {
    init_log();
    let (server, forum) = forum::start("127.0.0.1:0", None).unwrap();
    let client = Client::builder(server.url())
        .at_least_once(true)
        .reconnect_min_delay(Duration::from_millis(5))
        .on_open(|link| {
            link.request_expect(
                json!({"Operator": "userLogin", "userCode": "c"}),
                login(),
                T,
            )
            .map(drop)
        })
        .connect()
        .unwrap();
    for n in 0..20 {
        client
            .send(json!({"Operator": "CreateInvitation", "Table": n, "seq": n}))
            .unwrap();
    }
    assert!(wait_until(T, || client.stats().acknowledged == 20));
    let accepted = forum.accepted("oUser-1");
    assert_eq!(accepted.len(), 20);
    assert_eq!(forum.duplicates(), 0);
    // Unauthenticated messages are refused, not handled.
    let raw = Client::builder(server.url()).connect().unwrap();
    let err = raw
        .request(json!({"Operator": "LoveInvitation", "id": 1}), T)
        .unwrap_err();
    assert_eq!(err.remote().unwrap().value()["reason"], "not logged in");
}
