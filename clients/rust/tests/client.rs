//! The client against an in-process tidings server (`tidings-tokio`) over real loopback
//! sockets: resuming across a dropped connection and across a server restart, request
//! deadlines, authentication, wildcards, publishing, direct and named sends, server requests.
//!
//! Nothing sleeps to wait for something that can be awaited: every wait is on an event (an item,
//! a state change) with a deadline so that a failure fails fast.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::json;
use tidings_adapter::ServerConfig;
use tidings_adapter::auth::{Anonymous, JwtConfig, Secret};
use tidings_client::{
    Backoff, Client, ClientBuilder, Error, GapReason, Item, Reason, State, SubscribeOptions,
    Subscription, raw_json, text,
};
use tidings_core::{ConnId, ErrorCode, Name, Payload, ProtocolError, Topic};

const DEADLINE: Duration = Duration::from_secs(15);

fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    }
}

async fn server(config: ServerConfig) -> tidings_tokio::Server {
    tidings_tokio::serve(config)
        .await
        .expect("the server starts")
}

fn url(server: &tidings_tokio::Server) -> String {
    format!("ws://{}/ws", server.addr())
}

/// Quick reconnections for tests: 100 to 400 ms.
fn builder(url: &str) -> ClientBuilder {
    Client::builder(url).backoff(Backoff::new(
        Duration::from_millis(200),
        Duration::from_millis(400),
    ))
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn next(sub: &mut Subscription) -> Item {
    within("an item", sub.next())
        .await
        .unwrap_or_else(|| panic!("the subscription ended: {:?}", sub.end_reason()))
}

/// The next item, which must be an event; returns (topic, payload text, cursor text).
async fn next_event(sub: &mut Subscription) -> (String, String, String) {
    match next(sub).await {
        Item::Event(e) => (
            e.topic.to_string(),
            e.payload.as_str().to_owned(),
            e.cursor.to_string(),
        ),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn wait_state(client: &Client, what: &str, f: impl Fn(&State) -> bool) -> State {
    let mut state = client.state();
    within(what, state.wait_for(|s| f(s)))
        .await
        .expect("the client runs")
        .clone()
}

fn topic(s: &str) -> Topic {
    Topic::parse(s, Default::default()).unwrap()
}

/// Publishes from the application (in-process) and returns the cursor.
async fn hub_publish(server: &tidings_tokio::Server, t: &str, data: &str) -> tidings_core::Cursor {
    server
        .hub()
        .publish(topic(t), None, Payload::text(data.to_owned()).unwrap())
        .await
        .unwrap()
}

/// The HS256 secret of [`jwt_server`].
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// A server that accepts only tokens signed with [`SECRET`].
async fn jwt_server() -> tidings_tokio::Server {
    let mut cfg = config();
    cfg.auth.anonymous = Anonymous::Refused;
    cfg.auth.jwt = Some(JwtConfig {
        secret: Some(Secret::new(SECRET)),
        ..JwtConfig::default()
    });
    server(cfg).await
}

/// An `exp` claim ten minutes from now.
fn in_ten_minutes() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

/// The server closes `conn` (and keeps running).
async fn drop_connection(server: &tidings_tokio::Server, conn: ConnId) {
    server
        .hub()
        .close(
            conn,
            ProtocolError::new(ErrorCode::ShuttingDown, "test: dropped by the server"),
        )
        .await
        .unwrap();
}

/// Records the ids of connections as they open.
fn track_connections(server: &tidings_tokio::Server) -> Arc<Mutex<Vec<ConnId>>> {
    let conns = Arc::new(Mutex::new(Vec::new()));
    let seen = conns.clone();
    server.hub().on_connect(move |c| {
        seen.lock().unwrap().push(c.conn);
        Vec::new()
    });
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_exactly_once_and_in_order_after_the_server_drops_the_connection() {
    let server = server(config()).await;
    let conns = track_connections(&server);
    let client = builder(&url(&server)).connect().await.unwrap();
    let mut states = client.state();
    let mut sub = client.subscribe(["chat.*"]).await.unwrap();
    for i in 1..=3 {
        hub_publish(&server, "chat.lobby", &format!("m{i}")).await;
    }
    for i in 1..=3 {
        assert_eq!(next_event(&mut sub).await.1, format!("m{i}"));
    }
    // The server closes the connection (and keeps running).
    let first = conns.lock().unwrap()[0];
    drop_connection(&server, first).await;
    let state = wait_state(&client, "the drop", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    let State::Reconnecting { reason, delay, .. } = state else {
        unreachable!()
    };
    assert_eq!(
        reason,
        Reason::Server(tidings_client::ServerError::new(
            "shutting_down",
            "test: dropped by the server"
        ))
    );
    assert!(delay >= Duration::from_millis(100), "{delay:?}");
    // Published while the client is away (it waits at least 100 ms before reconnecting).
    let mut expected = Vec::new();
    for i in 4..=10 {
        let t = if i % 2 == 0 {
            "chat.lobby"
        } else {
            "chat.other"
        };
        hub_publish(&server, t, &format!("m{i}")).await;
        hub_publish(&server, "news.elsewhere", "not subscribed").await;
        expected.push(format!("m{i}"));
    }
    wait_state(&client, "the reconnection", |s| {
        matches!(s, State::Connected { .. })
    })
    .await;
    let mut got = Vec::new();
    for _ in 4..=10 {
        got.push(next_event(&mut sub).await.1);
    }
    assert_eq!(got, expected, "exactly the missed events, in order");
    // Then live, with nothing repeated in between.
    let live = hub_publish(&server, "chat.lobby", "live").await;
    let (_, data, cursor) = next_event(&mut sub).await;
    assert_eq!(data, "live");
    assert_eq!(cursor, live.to_string());
    assert_eq!(client.cursor(), Some(live));
    assert_eq!(conns.lock().unwrap().len(), 2, "one reconnection");
    // The state changes were observable: connected, reconnecting, connecting, connected.
    assert!(states.has_changed().unwrap());
    assert!(matches!(
        *states.borrow_and_update(),
        State::Connected { .. }
    ));
    client.close().await;
    assert!(matches!(
        *client.state().borrow(),
        State::Stopped { reason: None }
    ));
    assert_eq!(within("the end", sub.next()).await, None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_announced_by_an_epoch_gap() {
    let first = server(config()).await;
    let addr = first.addr();
    let client = builder(&url(&first)).connect().await.unwrap();
    let mut sub = client.subscribe(["orders.>"]).await.unwrap();
    let old = hub_publish(&first, "orders.eu.new", "before").await;
    assert_eq!(next_event(&mut sub).await.1, "before");
    // Stop the server; the client keeps trying.
    first.shutdown().await;
    first.wait().await;
    wait_state(&client, "the disconnection", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    // A new server on the same port: a new epoch, an empty history.
    let second = server(ServerConfig {
        listen: addr.to_string(),
        ..config()
    })
    .await;
    let new = hub_publish(&second, "orders.us.new", "after").await;
    assert_ne!(new.epoch, old.epoch);
    let Item::Gap(gap) = next(&mut sub).await else {
        panic!("a gap notice first")
    };
    assert_eq!(gap.reason, GapReason::Epoch);
    assert_eq!(gap.from, Some(old));
    assert_eq!(gap.to.epoch, new.epoch);
    assert_eq!(next_event(&mut sub).await.1, "after");
    assert_eq!(client.cursor(), Some(new));
    client.close().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_answers_errors_and_timeouts() {
    let mut cfg = config();
    cfg.timers.request_timeout = Duration::from_millis(300);
    let server = server(cfg).await;
    server
        .hub()
        .on("echo", |_conn, payload| async move { Ok(payload) });
    server.hub().on("slow", |_conn, payload| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(payload)
    });
    let client = builder(&url(&server)).connect().await.unwrap();
    let answer = client
        .request("echo", raw_json(r#"{"a": [1, 2]}"#).unwrap())
        .await
        .unwrap();
    assert_eq!(answer.as_str(), r#"{"a": [1, 2]}"#);
    // The client's own deadline.
    let err = client
        .request_timeout("slow", text("x"), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err, Error::Timeout);
    // The server's deadline (300 ms) comes before the client's default (300 ms + 2 s).
    let err = client.request("slow", text("x")).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(err.code(), Some("timeout"));
    let err = client.request("missing", text("x")).await.unwrap_err();
    assert_eq!(err.code(), Some("no_handler"));
    // The connection is fine afterwards.
    client.ping().await.unwrap();
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_client_and_a_valid_one_gets_its_grants() {
    let server = jwt_server().await;
    let url = url(&server);
    // No token.
    let err = builder(&url).connect().await.unwrap_err();
    let Error::Connect(Reason::Refused { status, message }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 401);
    // The body when it came in the same read as the response head (the WebSocket library
    // returns only those bytes), else the reason phrase: both happen on a loaded machine.
    assert!(
        message.contains("requires a token") || message == "Unauthorized",
        "{message}"
    );
    // A token signed with another secret.
    let exp = in_ten_minutes();
    let claims = json!({"sub": "alice", "exp": exp,
        "tidings": {"subscribe": ["chat.>"], "publish": ["chat.*"]}});
    let sign = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let err = builder(&url)
        .token(sign("another-secret-that-is-at-least-32-bytes"))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connect(Reason::Refused { status: 401, .. })),
        "{err:?}"
    );
    // A client started in the background stops for good on a refusal.
    let background = builder(&url).start().unwrap();
    let state = wait_state(&background, "the refusal", |s| {
        matches!(s, State::Stopped { .. })
    })
    .await;
    assert!(matches!(
        state,
        State::Stopped {
            reason: Some(Reason::Refused { status: 401, .. })
        }
    ));
    assert!(matches!(
        background.publish("chat.x", text("x")).await,
        Err(Error::Stopped(Some(Reason::Refused { .. })))
    ));
    // A valid token: its grants apply.
    let client = builder(&url).token(sign(SECRET)).connect().await.unwrap();
    let err = client.subscribe(["admin.>"]).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    let mut sub = client.subscribe(["chat.>"]).await.unwrap();
    let err = client.publish("news.x", text("no")).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    let cursor = client.publish("chat.lobby", text("yes")).await.unwrap();
    let (_, data, at) = next_event(&mut sub).await;
    assert_eq!((data.as_str(), at), ("yes", cursor.to_string()));
    client.close().await;
    server.shutdown().await;
}

/// Short-lived tokens: the source is asked before every connection attempt, a `401` (here: the
/// first token is signed with the wrong secret) is retried with a fresh token instead of
/// stopping, and a reconnection carries the grants of the token it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_is_asked_for_every_connection_and_a_401_is_retried() {
    let server = jwt_server().await;
    let conns = track_connections(&server);
    let exp = in_ten_minutes();
    let sign = |secret: &str, subscribe: &[&str]| {
        let claims = json!({"sub": "alice", "exp": exp,
            "tidings": {"subscribe": subscribe, "publish": ["chat.*"]}});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let tokens = [
        sign("another-secret-that-is-at-least-32-bytes", &["chat.>"]),
        sign(SECRET, &["chat.>"]),
        sign(SECRET, &["chat.>", "news.>"]),
    ];
    let asked = Arc::new(Mutex::new(0usize));
    let source = {
        let asked = asked.clone();
        move || {
            let n = {
                let mut asked = asked.lock().unwrap();
                *asked += 1;
                *asked
            };
            let token = tokens[(n - 1).min(2)].clone();
            async move { Ok(token) }
        }
    };
    let client = builder(&url(&server)).token_source(source).start().unwrap();
    let refused = wait_state(&client, "the refusal of the first token", |s| {
        matches!(s, State::Reconnecting { .. } | State::Stopped { .. })
    })
    .await;
    assert!(
        matches!(
            refused,
            State::Reconnecting {
                reason: Reason::Refused { status: 401, .. },
                ..
            }
        ),
        "a 401 is retried, not the end: {refused:?}"
    );
    wait_state(&client, "the second token's connection", |s| {
        matches!(s, State::Connected { .. })
    })
    .await;
    assert_eq!(*asked.lock().unwrap(), 2);
    let err = client.subscribe(["news.>"]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some("forbidden"),
        "the second token has no news.>"
    );
    let mut chat = client.subscribe(["chat.>"]).await.unwrap();

    // The server drops the connection: the reconnection asks for a token again, and gets the
    // grants of the third one.
    let last = *conns.lock().unwrap().last().unwrap();
    drop_connection(&server, last).await;
    wait_state(&client, "the drop", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    wait_state(&client, "the third token's connection", |s| {
        matches!(s, State::Connected { .. })
    })
    .await;
    assert_eq!(*asked.lock().unwrap(), 3);
    let mut news = client.subscribe(["news.>"]).await.unwrap();
    hub_publish(&server, "news.eu", "n1").await;
    hub_publish(&server, "chat.lobby", "c1").await;
    assert_eq!(next_event(&mut news).await.1, "n1");
    assert_eq!(
        next_event(&mut chat).await.1,
        "c1",
        "restored with the new token"
    );
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_event_names_and_payloads() {
    let server = server(config()).await;
    let client = builder(&url(&server)).connect().await.unwrap();
    let mut one = client.subscribe(["a.*"]).await.unwrap();
    let mut rest = client.subscribe(["a.>"]).await.unwrap();
    let mut both = client.subscribe(["x.y", "*.b.*"]).await.unwrap();
    let c1 = client.publish("a.b", text("one")).await.unwrap();
    let c2 = client
        .publish_event("a.b.c", "created", raw_json(r#"{ "n" : 1 }"#).unwrap())
        .await
        .unwrap();
    client.publish("b.x", text("nobody")).await.unwrap();
    let c3 = client.publish("x.y", text("exact")).await.unwrap();
    assert!(c1 < c2 && c2 < c3);
    assert_eq!(
        next_event(&mut one).await,
        ("a.b".into(), "one".into(), c1.to_string())
    );
    assert_eq!(next_event(&mut rest).await.1, "one");
    let Item::Event(e) = next(&mut rest).await else {
        panic!()
    };
    assert_eq!(e.topic.as_str(), "a.b.c");
    assert_eq!(e.event.as_ref().map(Name::as_str), Some("created"));
    assert!(e.payload.is_json());
    assert_eq!(e.payload.as_str(), r#"{ "n" : 1 }"#, "JSON kept verbatim");
    assert_eq!(e.cursor, c2);
    assert_eq!(next_event(&mut both).await.1, "{ \"n\" : 1 }");
    assert_eq!(next_event(&mut both).await.1, "exact");
    // Invalid input is refused locally with a clear message.
    let err = client.publish("a.*", text("x")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("a.*")),
        "{err}"
    );
    let err = client.subscribe(["a..b"]).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
    let err = client
        .publish_event("a.b", "tidings-gap", text("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
    // Dropping a subscription unsubscribes; the others keep receiving.
    drop(one);
    client.publish("a.z", text("after")).await.unwrap();
    assert_eq!(next_event(&mut rest).await.1, "after");
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_named_sends_and_server_requests() {
    let server = server(config()).await;
    let url = url(&server);
    let alice = builder(&url).client_id("alice").connect().await.unwrap();
    let bob = builder(&url).connect().await.unwrap();
    let mut inbox = alice.messages().await.unwrap();
    let mut jobs = alice
        .subscribe_with(SubscribeOptions::new(["jobs.*"]).name("worker"))
        .await
        .unwrap();
    // Wait until alice's identify went through: a ping is answered after it.
    alice.ping().await.unwrap();
    bob.send_to("alice", Some("dm"), text("psst"))
        .await
        .unwrap();
    let m = within("a direct message", inbox.next()).await.unwrap();
    assert_eq!(m.payload.as_str(), "psst");
    assert_eq!(m.event.as_ref().map(Name::as_str), Some("dm"));
    bob.send_named("jobs.eu", "worker", None, text("job 1"))
        .await
        .unwrap();
    let Item::Message(m) = next(&mut jobs).await else {
        panic!("a named message")
    };
    assert_eq!(m.payload.as_str(), "job 1");
    let err = bob.send_to("carol", None, text("?")).await.unwrap_err();
    assert_eq!(err.code(), Some("no_recipient"));
    // Who is on jobs.eu: alice's named subscription.
    let presence = bob.presence("jobs.eu").await.unwrap();
    assert_eq!((presence.connections, presence.anonymous), (1, 0));
    assert_eq!(presence.clients.len(), 1);
    assert_eq!(presence.clients[0].client_id, "alice");
    let err = bob.presence("jobs.*").await.unwrap_err();
    assert!(
        matches!(err, Error::Invalid(_)),
        "a pattern is refused locally: {err:?}"
    );
    // The application asks alice (emit-with-ack).
    alice.on_request("confirm", |payload| async move {
        Ok(Payload::json(format!(r#"{{"confirmed":{}}}"#, payload.as_str())).unwrap())
    });
    let State::Connected { conn } = *alice.state().borrow() else {
        panic!()
    };
    let answer = server
        .hub()
        .request(
            ConnId(conn),
            Name::parse("event", "confirm", 128).unwrap(),
            Payload::json("5").unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(answer.as_str(), r#"{"confirmed":5}"#);
    let err = server
        .hub()
        .request(
            ConnId(conn),
            Name::parse("event", "unknown", 128).unwrap(),
            Payload::empty(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Rejected);
    assert!(err.message.contains("no handler"), "{}", err.message);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_wait_for_the_connection_and_fail_clearly() {
    // Nobody listens on this port (bound, then closed).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("ws://{addr}/ws");
    let err = builder(&url).connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Connect(Reason::Transport(_))),
        "{err:?}"
    );
    assert!(matches!(
        Client::connect("http://example.com/ws").await,
        Err(Error::InvalidUrl(_))
    ));
    // In the background, a publish waits for the server to come up.
    let client = builder(&url)
        .op_timeout(Duration::from_secs(10))
        .start()
        .unwrap();
    let publish = tokio::spawn({
        let client = client.clone();
        async move { client.publish("late.topic", text("waited")).await }
    });
    wait_state(&client, "a failed attempt", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    let server = server(ServerConfig {
        listen: addr.to_string(),
        ..config()
    })
    .await;
    let cursor = within("the publish", publish).await.unwrap().unwrap();
    assert_eq!(cursor.seq, 1);
    // A short deadline passes while the server is gone again.
    server.shutdown().await;
    server.wait().await;
    wait_state(&client, "the disconnection", |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    let err = builder(&url)
        .op_timeout(Duration::from_millis(200))
        .start()
        .unwrap()
        .publish("x", text("x"))
        .await
        .unwrap_err();
    assert_eq!(err, Error::Timeout);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_watch_sees_joins_and_leaves_and_resyncs_after_a_reconnect() {
    use tidings_client::PresenceUpdate;
    use tidings_core::presence::{PresenceAction, PresenceNotice};
    let server = server(config()).await;
    let url = url(&server);
    let conns = track_connections(&server);
    let bob = builder(&url).connect().await.unwrap();
    let mut watch = bob.watch_presence("room.w").await.unwrap();
    assert_eq!(watch.presence().connections, 0);
    let bob_conn = *conns.lock().unwrap().last().unwrap();

    let carol = builder(&url).client_id("carol").connect().await.unwrap();
    let _sub = carol.subscribe(["room.*"]).await.unwrap();
    let notice = |action| {
        PresenceUpdate::Notice(PresenceNotice {
            topic: topic("room.w"),
            action,
            client_id: Some(Name::parse("client_id", "carol", 128).unwrap()),
            info: None,
        })
    };
    assert_eq!(
        within("carol's join", watch.recv()).await,
        Some(notice(PresenceAction::Join))
    );

    // bob's connection drops: the watch is asked again; its presence now has carol.
    drop_connection(&server, bob_conn).await;
    let Some(PresenceUpdate::Resync(presence)) = within("the resync", watch.recv()).await else {
        panic!("a resync after the reconnect");
    };
    assert_eq!(presence.clients[0].client_id, "carol");

    carol.close().await;
    assert_eq!(
        within("carol's leave", watch.recv()).await,
        Some(notice(PresenceAction::Leave))
    );
    let err = bob.watch_presence("room.*").await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    bob.close().await;
}
