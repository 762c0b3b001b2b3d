//! Client ids that belong to someone: with anonymous clients allowed any free client id next to
//! users whose tokens are bound to theirs (a setup docs/AUTH.md presents as normal), an
//! anonymous client can neither take a user's id over (an SSE `client_id`, `identify` on `/ws`,
//! `tidings.identify` on `/etp`, a ksbus id on `/ws/bus`), nor change her subscriptions (`POST
//! /subscriptions`), nor get her parked session or her id while it is parked; the user keeps her
//! stream and her direct messages, takes her id over from her own older stream, and claims it
//! back from whoever held it while she was away. On both runtimes, against the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use common::*;

/// Anonymous clients may do anything and claim any free client id; tokens are accepted.
fn start(runtime: &'static str) -> Server {
    Server::start(
        runtime,
        &[
            "--set",
            "auth.anonymous={ subscribe = [\">\"], publish = [\">\"], direct = true, any_client_id = true }",
            "--set",
            &format!("auth.jwt.secret=\"{JWT_SECRET}\""),
            "--set",
            "timers.reconnect_window=\"1m\"",
        ],
    )
}

/// A native WebSocket with these headers.
fn ws_with(server: &Server, headers: &[(&'static str, &str)]) -> Ws {
    Ws::open(server.connect(), server.addr, headers)
}

/// A WebSocket on another endpoint (`/etp`, `/ws/bus`), anonymous.
fn raw_ws(server: &Server, path: &str) -> WebSocket<TcpStream> {
    let url = format!("ws://{}{path}", server.addr);
    let (ws, _) = tungstenite::client(url, server.connect()).expect("the handshake succeeds");
    ws
}

/// The next text message of a raw WebSocket.
fn text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().expect("a message arrives") {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next frame of `ws` that is not a notice (`tidings-*` message).
fn next_non_notice(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.recv();
        let notice = frame["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("tidings-"));
        if !notice {
            return frame;
        }
    }
}

/// Sends a direct message to `to` from a fresh anonymous connection, answered `ok`.
fn send_to(server: &Server, to: &str, data: &str) {
    let mut sender = server.ws();
    let answer = sender.ask(json!({"op":"send","id":1,"to":to,"data":data}));
    assert_eq!(answer["type"], "ok", "{answer}");
}

/// Waits until the server has parked `client_id`'s session (its connection's close is noticed
/// asynchronously; nothing tells a client outside): asks `POST /subscriptions` with the
/// owner's token, changing nothing, until it answers `connected: false`.
fn wait_until_parked(server: &Server, client_id: &str, bearer: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = post_subscriptions(server, &json!({ "client_id": client_id }), Some(bearer));
        assert_eq!(resp.status, 200, "{}", resp.body);
        let body: Value = serde_json::from_str(&resp.body).unwrap();
        if body["connected"] == false {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "[{}] {client_id}'s session was not parked: {body}",
            server.runtime
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next event of a stream within [`READ_TIMEOUT`] (keep-alive comments do not count), so
/// that a stream left open when it should have ended fails the test rather than hanging it.
fn next_event(sse: &mut Sse) -> tidings_core::sse::DecodedEvent {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        if let Some(event) = sse.decoder.next_event() {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "no event within {READ_TIMEOUT:?}"
        );
        assert!(sse.fill(), "the SSE stream ended");
    }
}

/// Reads a stream until its `tidings-error` (what came before is returned with it), then checks
/// that the stream ends.
fn until_error(sse: &mut Sse) -> (tidings_core::sse::DecodedEvent, Vec<String>) {
    let mut before = Vec::new();
    loop {
        let event = next_event(sse);
        if event.event_type == "tidings-error" {
            let deadline = Instant::now() + READ_TIMEOUT;
            while sse.fill() {
                assert!(Instant::now() < deadline, "the stream did not end");
            }
            return (event, before);
        }
        before.push(event.data);
    }
}

/// The refusal of an anonymous claim of a user's id says why and who may.
fn assert_owned_refusal(what: &str, error: &str) {
    assert!(error.contains("client_id_taken"), "{what}: {error}");
    assert!(
        error.contains("only a connection whose token is bound to exactly this id"),
        "{what}: {error}"
    );
}

fn post_subscriptions(server: &Server, body: &Value, bearer: Option<&str>) -> Resp {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = bearer {
        headers.push(("Authorization", bearer));
    }
    server.request(
        "POST",
        "/subscriptions",
        &headers,
        body.to_string().as_bytes(),
    )
}

#[test]
fn an_anonymous_client_cannot_take_over_or_edit_a_users_client_id() {
    for_each_runtime(|runtime| {
        let server = start(runtime);
        let bearer = format!("Bearer {}", token_for("alice"));

        // Alice's stream, with her token: it claims her client id.
        let mut alice = server.sse("/sse?topic=secret.alice", &[("Authorization", &bearer)]);
        let session = next_event(&mut alice);
        assert_eq!(session.event_type, "tidings-session");
        assert!(
            session.data.contains(r#""client_id":"alice""#),
            "{}",
            session.data
        );

        // Somebody anonymous asks for her id on a stream of its own: refused, she keeps it.
        let mut mallory = server.sse("/sse?client_id=alice&topic=x", &[]);
        let refused = next_event(&mut mallory);
        assert_eq!(refused.event_type, "tidings-error", "{}", refused.data);
        assert_owned_refusal("an anonymous SSE client_id", &refused.data);

        // ... nor can it change her subscriptions (an anonymous request to remove hers).
        let resp = post_subscriptions(
            &server,
            &json!({"client_id": "alice", "remove": ["secret.alice"], "add": ["x"]}),
            None,
        );
        assert_eq!(resp.status, 403, "{}", resp.body);
        assert_eq!(resp.error_code(), "forbidden", "{}", resp.body);

        // Direct messages to alice still reach her stream, and her topic still does.
        let mut sender = server.ws();
        let answer = sender.ask(json!({"op":"send","id":1,"to":"alice","data":"for alice"}));
        assert_eq!(answer["type"], "ok", "{answer}");
        assert_eq!(next_event(&mut alice).data, "for alice");
        server.publish("secret.alice", "still subscribed");
        assert_eq!(next_event(&mut alice).data, "still subscribed");

        // Alice herself may change her subscriptions.
        let resp = post_subscriptions(
            &server,
            &json!({"client_id": "alice", "add": ["news"]}),
            Some(&bearer),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(next_event(&mut alice).event_type, "tidings-subscribed");
    });
}

/// `POST /subscriptions` naming in its query a client id the request may not use is refused
/// before its body is read (the client never sends it here, and still gets its answer).
#[test]
fn a_subscription_change_for_a_client_id_not_granted_is_refused_before_the_body() {
    for_each_runtime(|runtime| {
        let server = Server::start(
            runtime,
            &[
                "--set",
                "auth.anonymous=false",
                "--set",
                &format!("auth.jwt.secret=\"{JWT_SECRET}\""),
            ],
        );
        let mut stream = server.connect();
        let head = format!(
            "POST /subscriptions?client_id=bob HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
            server.addr,
            token_for("alice")
        );
        stream.write_all(head.as_bytes()).unwrap();
        // No body follows: the answer comes from the head alone.
        let mut raw = read_response_head(&mut stream);
        let resp = Resp::parse(&raw);
        assert_eq!(resp.status, 403);
        let _ = stream.read_to_end(&mut raw);
        let resp = Resp::parse(&raw);
        assert_eq!(resp.error_code(), "forbidden", "{}", resp.body);
        assert!(resp.body.contains(r#"client id \"bob\""#), "{}", resp.body);

        // A body naming another id than the query is refused too (so the early check is exact).
        let resp = server.request(
            "POST",
            "/subscriptions?client_id=alice",
            &[
                ("Authorization", &format!("Bearer {}", token_for("alice"))),
                ("Content-Type", "application/json"),
            ],
            br#"{"client_id":"bob"}"#,
        );
        assert_eq!(resp.status, 400, "{}", resp.body);
        assert_eq!(resp.error_code(), "bad_field", "{}", resp.body);
    });
}

/// `identify` on `/ws`, `tidings.identify` on `/etp` and a ksbus id on `/ws/bus`, asked by
/// anonymous clients for the id alice's WebSocket holds with her token: each refused with
/// `client_id_taken`; her direct messages keep reaching her and nobody else.
#[test]
fn no_anonymous_identify_takes_a_users_id_on_any_websocket_protocol() {
    for_each_runtime(|runtime| {
        let server = start(runtime);
        let bearer = format!("Bearer {}", token_for("alice"));
        let mut alice = ws_with(&server, &[("Authorization", &bearer)]);
        // Her token's id is claimed when she opens, before anything she sends.
        assert_eq!(alice.ask(json!({"op":"ping","id":1}))["type"], "pong");

        let mut mallory = server.ws();
        let answer = mallory.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
        assert_eq!(answer["type"], "error", "{answer}");
        assert_owned_refusal("identify on /ws", &answer.to_string());

        let mut etp = raw_ws(&server, "/etp");
        etp.send(Message::text("tidings.identify||1||alice"))
            .unwrap();
        let answer = text(&mut etp);
        assert!(
            answer.starts_with("__ack_tidings.identify||1||"),
            "{answer}"
        );
        assert_owned_refusal("tidings.identify on /etp", &answer);

        let mut ksbus = raw_ws(&server, "/ws/bus");
        ksbus
            .send(Message::text(r#"{"action":"ping","from":"alice"}"#))
            .unwrap();
        assert_eq!(
            text(&mut ksbus),
            r#"{"error":"ID already exist, should be unique"}"#
        );
        assert_eq!(text(&mut ksbus), r#"{"data":"pong"}"#);

        send_to(&server, "alice", "for alice");
        let got = next_non_notice(&mut alice);
        assert_eq!(
            (&got["type"], &got["data"]),
            (&json!("message"), &json!("for alice"))
        );
        // Nothing reached mallory: her next frame is the answer to her ping.
        mallory.send(json!({"op":"ping","id":2}));
        let pong = mallory.recv();
        assert_eq!(pong["type"], "pong", "{pong}");
    });
}

/// Alice's own token takes her id over from her older stream (the same principal), and claims
/// it back from an anonymous client that got it while she was away, whose session she does
/// not get.
#[test]
fn a_user_takes_her_id_over_from_her_own_stream_and_back_from_anyone_else() {
    for_each_runtime(|runtime| {
        let server = start(runtime);
        let bearer = format!("Bearer {}", token_for("alice"));

        // Her reconnecting stream (the old one not yet noticed gone) takes her id over.
        let mut old = server.sse("/sse?topic=secret.alice", &[("Authorization", &bearer)]);
        assert_eq!(next_event(&mut old).event_type, "tidings-session");
        let mut new = server.sse("/sse?client_id=alice", &[("Authorization", &bearer)]);
        let session = next_event(&mut new);
        assert_eq!(session.event_type, "tidings-session", "{}", session.data);
        let session: Value = serde_json::from_str(&session.data).unwrap();
        assert_eq!(session["resumed"], true, "{session}");
        assert_eq!(
            session["subscriptions"],
            json!(["secret.alice"]),
            "{session}"
        );
        let (taken, _) = until_error(&mut old);
        assert!(taken.data.contains("client_id_taken"), "{}", taken.data);
        send_to(&server, "alice", "to the new stream");
        assert_eq!(next_event(&mut new).data, "to the new stream");

        // While carol is away (nothing of hers parked), an anonymous stream gets her free id,
        // subscribed to a topic of its choosing, and her direct messages.
        let mut squatter = server.sse("/sse?client_id=carol&topic=bait", &[]);
        assert_eq!(next_event(&mut squatter).event_type, "tidings-session");
        send_to(&server, "carol", "to whoever holds carol");
        assert_eq!(next_event(&mut squatter).data, "to whoever holds carol");
        // Carol comes back with her token: her id is hers again, with no error for her.
        let carol_bearer = format!("Bearer {}", token_for("carol"));
        let mut carol = ws_with(&server, &[("Authorization", &carol_bearer)]);
        let (taken, _) = until_error(&mut squatter);
        assert!(taken.data.contains("client_id_taken"), "{}", taken.data);
        assert!(
            taken.data.contains("claimed back by its owner"),
            "{}",
            taken.data
        );
        // ... without the squatter's session (its subscription to `bait`).
        server.publish("bait", "not for carol");
        send_to(&server, "carol", "for carol");
        let got = next_non_notice(&mut carol);
        assert_eq!(
            (&got["type"], &got["data"]),
            (&json!("message"), &json!("for carol"))
        );
    });
}

/// Alice's session parked within the reconnect window is hers: while it is parked, anonymous
/// clients get neither her id (SSE `client_id`, `identify`) nor her session, nor change it
/// (`POST /subscriptions`); she gets it back, with what was published meanwhile.
#[test]
fn a_parked_session_and_its_id_are_kept_for_their_user() {
    for_each_runtime(|runtime| {
        let server = start(runtime);
        let bearer = format!("Bearer {}", token_for("alice"));
        let mut alice = ws_with(&server, &[("Authorization", &bearer)]);
        let ok = alice.ask(json!({"op":"subscribe","id":1,"topic":"secret.alice"}));
        assert_eq!(ok["type"], "ok", "{ok}");
        alice.ws.close(None).unwrap();
        let _ = alice.until_close();
        wait_until_parked(&server, "alice", &bearer);
        server.publish("secret.alice", "while away");

        let mut mallory = server.sse("/sse?client_id=alice&topic=x", &[]);
        let refused = next_event(&mut mallory);
        assert_eq!(refused.event_type, "tidings-error", "{}", refused.data);
        assert_owned_refusal("an SSE client_id while parked", &refused.data);
        assert!(
            refused.data.contains("reconnect window"),
            "{}",
            refused.data
        );
        let mut other = server.ws();
        let answer = other.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
        assert_owned_refusal("identify while parked", &answer.to_string());
        let resp = post_subscriptions(
            &server,
            &json!({"client_id": "alice", "remove": ["secret.alice"]}),
            None,
        );
        assert_eq!(resp.status, 403, "{}", resp.body);
        assert_eq!(resp.error_code(), "forbidden", "{}", resp.body);
        // The refused stream got nothing of hers: its next event is its own topic's.
        server.publish("secret.alice", "still away");
        server.publish("x", "mallory's own");
        assert_eq!(next_event(&mut mallory).data, "mallory's own");

        // Alice comes back with her token: her session, and what she missed.
        let mut alice = ws_with(&server, &[("Authorization", &bearer)]);
        let mut data = Vec::new();
        while data.len() < 2 {
            let frame = next_non_notice(&mut alice);
            assert_eq!(frame["type"], "event", "{frame}");
            data.push(frame["data"].clone());
        }
        assert_eq!(data, [json!("while away"), json!("still away")]);
    });
}
