//! Client ids that belong to someone: with anonymous clients allowed any free client id next to
//! users whose tokens are bound to theirs (a setup docs/AUTH.md presents as normal), an
//! anonymous client can neither take a user's id over (an SSE `client_id`), nor change her
//! subscriptions (`POST /subscriptions`); the user keeps her stream and her direct messages.
//! On both runtimes, against the real binary.

mod common;

use serde_json::{Value, json};

use common::*;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({
        "sub": sub,
        "exp": exp,
        "tidings": {"subscribe": [">"], "publish": [">"], "direct": true},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
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
        let server = Server::start(
            runtime,
            &[
                "--set",
                "auth.anonymous={ subscribe = [\">\"], publish = [\">\"], direct = true, any_client_id = true }",
                "--set",
                &format!("auth.jwt.secret=\"{SECRET}\""),
                "--set",
                "timers.reconnect_window=\"1m\"",
            ],
        );
        let bearer = format!("Bearer {}", token("alice"));

        // Alice's stream, with her token: it claims her client id.
        let mut alice = server.sse("/sse?topic=secret.alice", &[("Authorization", &bearer)]);
        let session = alice.next_event();
        assert_eq!(session.event_type, "tidings-session");
        assert!(
            session.data.contains(r#""client_id":"alice""#),
            "{}",
            session.data
        );

        // Somebody anonymous asks for her id on a stream of its own: refused, she keeps it.
        let mut mallory = server.sse("/sse?client_id=alice&topic=x", &[]);
        let refused = mallory.next_event();
        assert_eq!(refused.event_type, "tidings-error", "{}", refused.data);
        assert!(refused.data.contains("client_id_taken"), "{}", refused.data);

        // ... nor can it change her subscriptions (an anonymous request to remove hers).
        let resp = post_subscriptions(
            &server,
            &json!({"client_id": "alice", "remove": ["secret.alice"], "add": ["x"]}),
            None,
        );
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "forbidden"),
            "{}",
            resp.body
        );

        // Direct messages to alice still reach her stream, and her topic still does.
        let mut sender = server.ws();
        let answer = sender.ask(json!({"op":"send","id":1,"to":"alice","data":"for alice"}));
        assert_eq!(answer["type"], "ok", "{answer}");
        assert_eq!(alice.next_event().data, "for alice");
        server.publish("secret.alice", "still subscribed");
        assert_eq!(alice.next_event().data, "still subscribed");

        // Alice herself may change her subscriptions.
        let resp = post_subscriptions(
            &server,
            &json!({"client_id": "alice", "add": ["news"]}),
            Some(&bearer),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(alice.next_event().event_type, "tidings-subscribed");
    });
}
