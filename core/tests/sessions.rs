//! Parity features of the SSE projects in the core: the reconnect window of identified clients
//! (gochan), subscription changes on behalf of a client, declared public/private/group topics
//! with their notices (pubsub-sse), and lifecycle events.

mod common;

use std::time::Duration;

use common::{NativeCodec, Sim, SseCodec, publish};
use serde_json::{Value, json};
use tidings_core::sse::{Decoder, Item};
use tidings_core::{
    AppEvent, Config, ConnId, ErrorCode, Lifecycle, Name, Pattern, Payload, Topic, Visibility,
};

fn name(s: &str) -> Name {
    Name::parse("name", s, 128).unwrap()
}

fn topic(s: &str) -> Topic {
    Topic::parse(s, Default::default()).unwrap()
}

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s, Default::default()).unwrap()
}

fn windowed() -> Config {
    let mut config = Config::default();
    config.timers.reconnect_window = Some(Duration::from_secs(60));
    config
}

/// Events an SSE connection received: (event name, data, id).
fn sse_events(sim: &mut Sim, conn: ConnId) -> Vec<(String, String, String)> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for frame in sim.take_raw(conn) {
        decoder.feed(&frame).unwrap();
        while let Some(item) = decoder.next_item() {
            if let Item::Event(e) = item {
                out.push((
                    e.event_type.clone(),
                    e.data.clone(),
                    e.last_event_id.clone(),
                ));
            }
        }
    }
    out
}

fn identify(sim: &mut Sim, conn: ConnId, id: &str) {
    sim.send(
        conn,
        &format!(r#"{{"op":"identify","id":99,"client_id":"{id}"}}"#),
    );
}

#[test]
fn a_client_reconnecting_within_the_window_keeps_its_subscriptions_and_loses_nothing() {
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let a = sim.open(2, NativeCodec);
    identify(&mut sim, a, "alice");
    sim.send(a, r#"{"op":"subscribe","id":1,"topic":"news.*"}"#);
    sim.take(a);
    publish(&mut sim, publisher, "news.eu", "one");
    assert_eq!(sim.event_data(a), ["one"]);
    sim.close(a);
    assert_eq!(sim.broker.parked_sessions(), vec![&name("alice")]);
    // Published while alice is away.
    publish(&mut sim, publisher, "news.eu", "two");
    publish(&mut sim, publisher, "other", "not for alice");
    publish(&mut sim, publisher, "news.us", "three");
    sim.advance(Duration::from_secs(59));

    let b = sim.open(3, NativeCodec);
    identify(&mut sim, b, "alice");
    let frames = sim.take(b);
    assert_eq!(frames[0], json!({"type":"ok","id":99}));
    assert_eq!(frames[1]["type"], "message");
    assert_eq!(frames[1]["event"], "tidings-session");
    assert_eq!(frames[1]["data"]["resumed"], true);
    assert_eq!(frames[1]["data"]["subscriptions"], json!(["news.*"]));
    let data: Vec<_> = frames[2..].iter().map(|f| f["data"].clone()).collect();
    assert_eq!(
        data,
        [json!("two"), json!("three")],
        "exactly what it missed"
    );
    assert_eq!(
        sim.broker.conn(b).unwrap().subscriptions,
        vec!["news.*".to_owned()]
    );
    assert!(sim.broker.parked_sessions().is_empty());
    // And live from there on, once.
    publish(&mut sim, publisher, "news.eu", "four");
    assert_eq!(sim.event_data(b), ["four"]);
}

#[test]
fn after_the_window_the_session_is_gone_and_reported() {
    let mut sim = Sim::new(windowed());
    let a = sim.open(1, NativeCodec);
    identify(&mut sim, a, "bob");
    sim.send(a, r#"{"op":"subscribe","topic":"x"}"#);
    sim.close(a);
    sim.take_events();
    sim.advance(Duration::from_secs(61));
    assert!(sim.broker.parked_sessions().is_empty());
    assert!(sim.take_events().contains(&AppEvent::SessionExpired {
        client_id: name("bob")
    }));
    let b = sim.open(2, NativeCodec);
    identify(&mut sim, b, "bob");
    assert_eq!(sim.take(b), vec![json!({"type":"ok","id":99})]);
    assert!(sim.broker.conn(b).unwrap().subscriptions.is_empty());
    assert_eq!(sim.broker.stats().parked_sessions, 0);
}

#[test]
fn without_a_window_or_anything_to_keep_nothing_is_parked() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    identify(&mut sim, a, "carol");
    sim.send(a, r#"{"op":"subscribe","topic":"x"}"#);
    sim.close(a);
    assert!(sim.broker.parked_sessions().is_empty());

    let mut sim = Sim::new(windowed());
    let a = sim.open(1, NativeCodec);
    identify(&mut sim, a, "carol");
    sim.close(a);
    assert!(
        sim.broker.parked_sessions().is_empty(),
        "no subscriptions or rooms: nothing to park"
    );
}

#[test]
fn parked_sessions_are_bounded_oldest_first() {
    let mut config = windowed();
    config.limits.max_parked_sessions = 2;
    let mut sim = Sim::new(config);
    for (i, id) in ["c1", "c2", "c3"].iter().enumerate() {
        let c = sim.open(i as u64 + 1, NativeCodec);
        identify(&mut sim, c, id);
        sim.send(c, r#"{"op":"subscribe","topic":"x"}"#);
        sim.close(c);
    }
    assert_eq!(sim.broker.parked_sessions(), vec![&name("c2"), &name("c3")]);
    assert!(sim.take_events().contains(&AppEvent::SessionExpired {
        client_id: name("c1")
    }));
    // Reconnecting and leaving again many times within the window keeps the bookkeeping small.
    for i in 0..100 {
        let c = sim.open(100 + i, NativeCodec);
        identify(&mut sim, c, "c3");
        sim.close(c);
    }
    assert_eq!(sim.broker.parked_sessions().len(), 2);
}

#[test]
fn a_restored_session_is_limited_by_the_new_connections_grants() {
    let mut sim = Sim::new(windowed());
    // Dave's token granted more when he parked than when he comes back.
    let a = sim.open_with(1, NativeCodec, grants(Some("dave")));
    identify(&mut sim, a, "dave");
    sim.send(a, r#"{"op":"subscribe","topics":["public.a","secret.b"]}"#);
    sim.close(a);
    let grants = tidings_core::Grants {
        subscribe: vec![pattern("public.>")],
        client_ids: tidings_core::ClientIds::Only(name("dave")),
        ..Default::default()
    };
    let b = sim.open_with(2, NativeCodec, grants);
    identify(&mut sim, b, "dave");
    assert_eq!(
        sim.broker.conn(b).unwrap().subscriptions,
        vec!["public.a".to_owned()]
    );
}

#[test]
fn an_sse_stream_resuming_a_session_with_an_older_cursor_gets_what_was_in_flight() {
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let s = sim.open(2, SseCodec);
    // The stream's own topic (from its URL), then its client id.
    sim.command(s, subscribe(&["a"], None));
    identify(&mut sim, s, "erin");
    let session = sse_events(&mut sim, s);
    assert_eq!(session[0].0, "tidings-session");
    let data: Value = serde_json::from_str(&session[0].1).unwrap();
    assert_eq!(data["resumed"], false);
    assert_eq!(data["reconnect_window_ms"], 60000);
    // An extra topic added over HTTP while the stream is open.
    let change = sim
        .broker
        .update_subscriptions(sim.now, &name("erin"), vec![pattern("b")], vec![])
        .unwrap();
    sim.drain();
    assert_eq!(change.added, vec![pattern("b")]);
    assert!(change.connected);
    let notice = sse_events(&mut sim, s);
    assert_eq!(notice[0].0, "tidings-subscribed");
    assert_eq!(notice[0].1, r#"{"topics":["b"]}"#);
    publish(&mut sim, publisher, "a", "a1");
    publish(&mut sim, publisher, "b", "b1");
    let got = sse_events(&mut sim, s);
    let first = got[0].2.clone();
    assert_eq!(got.len(), 2);
    // The stream dies after both were handed out, but the browser only saw a1.
    sim.close(s);
    publish(&mut sim, publisher, "b", "b2");
    let s2 = sim.open(3, SseCodec);
    sim.command(s2, subscribe(&["a"], Some(first.parse().unwrap())));
    identify(&mut sim, s2, "erin");
    let got: Vec<_> = sse_events(&mut sim, s2)
        .into_iter()
        .map(|(e, d, _)| (e, d))
        .collect();
    assert_eq!(got[0].0, "tidings-session");
    let rest: Vec<_> = got[1..].iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        rest,
        ["b1", "b2"],
        "in-flight b1 again, then b2, no a1 twice"
    );
}

fn subscribe(patterns: &[&str], from: Option<tidings_core::Cursor>) -> tidings_core::Command {
    tidings_core::Command::Subscribe(tidings_core::Subscribe {
        req: None,
        patterns: patterns.iter().map(|p| pattern(p)).collect(),
        from,
        name: None,
    })
}

#[test]
fn subscription_changes_for_a_parked_or_unknown_client() {
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let a = sim.open(2, NativeCodec);
    identify(&mut sim, a, "frank");
    sim.send(a, r#"{"op":"subscribe","topic":"x"}"#);
    sim.close(a);
    publish(&mut sim, publisher, "y", "before the change");
    let change = sim
        .broker
        .update_subscriptions(
            sim.now,
            &name("frank"),
            vec![pattern("y")],
            vec![pattern("x"), pattern("never")],
        )
        .unwrap();
    assert!(!change.connected);
    assert_eq!(change.removed, vec![pattern("x")]);
    assert_eq!(change.subscriptions, vec![pattern("y")]);
    publish(&mut sim, publisher, "y", "after the change");
    publish(&mut sim, publisher, "x", "unsubscribed");
    let b = sim.open(3, NativeCodec);
    identify(&mut sim, b, "frank");
    let data: Vec<_> = sim
        .take(b)
        .into_iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(data, [json!("after the change")]);

    let e = sim
        .broker
        .update_subscriptions(sim.now, &name("nobody"), vec![pattern("y")], vec![])
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NoRecipient);
    let mut config = windowed();
    config.limits.max_subscriptions = 1;
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    identify(&mut sim, a, "gina");
    let e = sim
        .broker
        .update_subscriptions(
            sim.now,
            &name("gina"),
            vec![pattern("a"), pattern("b")],
            vec![],
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached);
    assert!(sim.broker.conn(a).unwrap().subscriptions.is_empty());
}

#[test]
fn private_and_group_topics_are_seen_only_by_their_owner_and_members() {
    let mut sim = Sim::new(Config {
        lifecycle_events: true,
        ..Config::default()
    });
    let publisher = sim.open(1, NativeCodec);
    let alice = sim.open(2, NativeCodec);
    identify(&mut sim, alice, "alice");
    let bob = sim.open(3, NativeCodec);
    identify(&mut sim, bob, "bob");
    sim.take(alice);
    sim.take(bob);
    let now = sim.now;
    sim.broker.declare_topic(
        now,
        topic("inbox.alice"),
        Visibility::Private(name("alice")),
    );
    sim.broker
        .declare_topic(now, topic("team.chat"), Visibility::Group(name("team")));
    sim.broker
        .declare_topic(now, topic("news"), Visibility::Public);
    sim.drain();
    // Everyone identified hears about the public topic; alice about her private one too.
    let notices: Vec<_> = sim
        .take(alice)
        .into_iter()
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(
        notices.last().unwrap(),
        &json!({"topics":[{"name":"inbox.alice","type":"private"},{"name":"news","type":"public"}]})
    );
    let notices: Vec<_> = sim
        .take(bob)
        .into_iter()
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(
        notices,
        [json!({"topics":[{"name":"news","type":"public"}]})]
    );
    // Bob cannot subscribe to alice's inbox or the team's chat, not even by a wildcard.
    sim.send(bob, r#"{"op":"subscribe","id":1,"topic":"inbox.alice"}"#);
    assert_eq!(sim.take(bob)[0]["code"], "forbidden");
    sim.send(bob, r#"{"op":"subscribe","id":2,"topic":">"}"#);
    sim.send(alice, r#"{"op":"subscribe","id":3,"topic":"inbox.alice"}"#);
    sim.take(bob);
    sim.take(alice);
    publish(&mut sim, publisher, "inbox.alice", "for alice");
    publish(&mut sim, publisher, "team.chat", "for the team");
    assert!(sim.take(bob).is_empty());
    assert_eq!(sim.event_data(alice), ["for alice"]);
    // Joining the room makes the group topic visible (with a notice), and delivered.
    sim.broker.join(bob, name("team")).unwrap();
    sim.drain();
    let notice = sim.take(bob);
    assert_eq!(notice[0]["event"], "tidings-topics");
    assert_eq!(
        notice[0]["data"]["topics"][1],
        json!({"name":"team.chat","type":"group","group":"team"})
    );
    publish(&mut sim, publisher, "team.chat", "welcome");
    assert_eq!(sim.event_data(bob), ["welcome"]);
    // Removing a topic unsubscribes its exact subscribers, with notices.
    let now = sim.now;
    assert!(sim.broker.remove_topic(now, &topic("inbox.alice")));
    sim.drain();
    let frames = sim.take(alice);
    assert_eq!(frames[0]["event"], "tidings-unsubscribed");
    assert_eq!(frames[0]["data"], json!({"topics":["inbox.alice"]}));
    assert_eq!(frames[1]["event"], "tidings-topics");
    // The lifecycle: clients, topics, group, subscriptions, publishes.
    let events = sim.take_events();
    let has = |f: &dyn Fn(&Lifecycle) -> bool| {
        events
            .iter()
            .any(|e| matches!(e, AppEvent::Lifecycle(l) if f(l)))
    };
    assert!(has(
        &|l| matches!(l, Lifecycle::ClientNew { client_id, .. } if client_id.as_str() == "bob")
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::TopicNew { topic, .. } if topic.as_str() == "team.chat")
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::TopicRemoved { topic } if topic.as_str() == "inbox.alice")
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::GroupNew { room } if room.as_str() == "team")
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::Subscribed { conn, .. } if *conn == alice)
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::Unsubscribed { conn, .. } if *conn == alice)
    ));
    assert!(has(
        &|l| matches!(l, Lifecycle::Published { topic, .. } if topic.as_str() == "team.chat")
    ));
    sim.close(bob);
    let events = sim.take_events();
    assert!(
        events.contains(&AppEvent::Lifecycle(Lifecycle::GroupRemoved {
            room: name("team")
        }))
    );
    assert!(
        events.contains(&AppEvent::Lifecycle(Lifecycle::ClientRemoved {
            client_id: name("bob")
        }))
    );
    // Publishing to a declared topic is the ordinary publish.
    let now = sim.now;
    let payload = Payload::text("x").unwrap();
    sim.broker.publish(now, topic("news"), None, payload);
}

/// A connection whose grants are bound to `id` (its principal), or that may claim any free id.
fn grants(bound: Option<&str>) -> tidings_core::Grants {
    let mut g = tidings_core::Grants::all();
    if let Some(id) = bound {
        g.client_ids = tidings_core::ClientIds::Only(name(id));
    }
    g
}

fn claim(sim: &mut Sim, conn: ConnId, id: &str, claim: tidings_core::Claim) {
    sim.command(
        conn,
        tidings_core::Command::Identify {
            req: None,
            client_id: name(id),
            claim,
        },
    );
}

#[test]
fn only_the_principal_takes_a_client_id_over_and_gets_the_session() {
    use tidings_core::Claim;
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let alice = sim.open_with(2, NativeCodec, grants(Some("alice")));
    claim(&mut sim, alice, "alice", Claim::IfFree);
    sim.send(alice, r#"{"op":"subscribe","topic":"secret.alice"}"#);
    sim.take(alice);

    // Someone allowed any free id asks for alice's, even asking to take it over: refused.
    let mallory = sim.open_with(3, SseCodec, grants(None));
    claim(&mut sim, mallory, "alice", Claim::TakeOver);
    let errors = sse_events(&mut sim, mallory);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "tidings-error");
    assert!(errors[0].1.contains("client_id_taken"), "{errors:?}");
    assert!(
        !sim.closed.contains_key(&alice),
        "alice keeps her connection"
    );
    publish(&mut sim, publisher, "secret.alice", "for alice");
    assert_eq!(sim.event_data(alice), ["for alice"]);

    // Authentication's id for a second tab of alice: no error, no id.
    let tab = sim.open_with(4, NativeCodec, grants(Some("alice")));
    claim(&mut sim, tab, "alice", Claim::IfFree);
    assert!(
        sim.take(tab).is_empty(),
        "no error for an id it never asked for"
    );
    assert_eq!(sim.broker.conn(tab).unwrap().client_id, None);

    // Alice's own reconnecting stream takes it over: the old connection is closed and its
    // session (subscription and position) moves to the new one.
    let stream = sim.open_with(5, SseCodec, grants(Some("alice")));
    claim(&mut sim, stream, "alice", Claim::TakeOver);
    assert_eq!(
        sim.closed[&alice].as_ref().unwrap().code,
        ErrorCode::ClientIdTaken
    );
    sim.close(alice);
    assert_eq!(
        sim.broker.conn(stream).unwrap().client_id.as_deref(),
        Some("alice")
    );
    assert_eq!(
        sim.broker.conn(stream).unwrap().subscriptions,
        vec!["secret.alice".to_owned()]
    );
    publish(&mut sim, publisher, "secret.alice", "again");
    let got: Vec<_> = sse_events(&mut sim, stream)
        .into_iter()
        .filter(|e| e.0 == "message")
        .map(|e| e.1)
        .collect();
    assert_eq!(got, ["again"]);
}

#[test]
fn a_principals_parked_session_goes_back_to_the_principal_only() {
    use tidings_core::Claim;
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let alice = sim.open_with(2, NativeCodec, grants(Some("alice")));
    claim(&mut sim, alice, "alice", Claim::IfFree);
    sim.send(alice, r#"{"op":"subscribe","topic":"secret.alice"}"#);
    sim.close(alice);
    publish(&mut sim, publisher, "secret.alice", "while away");

    // A wildcard claimer gets neither the id (kept for alice within her window) nor her
    // session, whatever the claim's mode; a claim from authentication goes on without it.
    for (conn, mode) in [
        (3, Claim::Explicit),
        (4, Claim::TakeOver),
        (5, Claim::IfFree),
    ] {
        let other = sim.open_with(conn, NativeCodec, grants(None));
        claim(&mut sim, other, "alice", mode);
        let info = sim.broker.conn(other).unwrap();
        assert_eq!((info.client_id, info.subscriptions), (None, vec![]));
        let frames = sim.take(other);
        if mode == Claim::IfFree {
            assert!(frames.is_empty(), "{frames:?}");
        } else {
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert_eq!(frames[0]["code"], "client_id_taken", "{frames:?}");
            let message = frames[0]["message"].as_str().unwrap();
            assert!(
                message.contains("only a connection whose token"),
                "{message}"
            );
        }
        assert_eq!(sim.broker.parked_sessions(), vec![&name("alice")]);
        sim.close(other);
    }

    let back = sim.open_with(4, NativeCodec, grants(Some("alice")));
    claim(&mut sim, back, "alice", Claim::Explicit);
    assert_eq!(
        sim.broker.conn(back).unwrap().subscriptions,
        vec!["secret.alice".to_owned()]
    );
    let data: Vec<_> = sim
        .take(back)
        .into_iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["data"].clone())
        .collect();
    assert_eq!(data, [json!("while away")]);
}

#[test]
fn an_id_held_through_a_wildcard_grant_is_taken_over_by_a_reconnecting_stream() {
    use tidings_core::Claim;
    let mut sim = Sim::new(windowed());
    let publisher = sim.open(1, NativeCodec);
    let first = sim.open_with(2, SseCodec, grants(None));
    claim(&mut sim, first, "u1", Claim::TakeOver);
    sim.command(
        first,
        tidings_core::Command::Subscribe(tidings_core::Subscribe {
            req: None,
            patterns: vec![pattern("a")],
            from: None,
            name: None,
        }),
    );
    sim.take_raw(first);
    // Its reconnection, before the server noticed the first stream gone.
    let second = sim.open_with(3, SseCodec, grants(None));
    claim(&mut sim, second, "u1", Claim::TakeOver);
    assert_eq!(
        sim.closed[&first].as_ref().unwrap().code,
        ErrorCode::ClientIdTaken
    );
    sim.close(first);
    publish(&mut sim, publisher, "a", "x");
    let got: Vec<_> = sse_events(&mut sim, second)
        .into_iter()
        .filter(|e| e.0 == "message")
        .map(|e| e.1)
        .collect();
    assert_eq!(got, ["x"], "the session moved to the new stream");
}

#[test]
fn the_principal_claims_its_id_back_from_a_wildcard_holder_without_its_session() {
    use tidings_core::Claim;
    // Whatever the mode of the principal's claim (authentication's, or `identify`).
    for mode in [Claim::IfFree, Claim::Explicit, Claim::TakeOver] {
        let mut sim = Sim::new(windowed());
        let publisher = sim.open(1, NativeCodec);
        // While alice is away (nothing parked), a wildcard claimer takes her free id and
        // subscribes and joins on it.
        let squatter = sim.open_with(2, NativeCodec, grants(None));
        claim(&mut sim, squatter, "alice", Claim::Explicit);
        sim.send(squatter, r#"{"op":"subscribe","topic":"bait"}"#);
        sim.take(squatter);

        let alice = sim.open_with(3, NativeCodec, grants(Some("alice")));
        claim(&mut sim, alice, "alice", mode);
        let reason = sim.closed[&squatter].as_ref().unwrap();
        assert_eq!(reason.code, ErrorCode::ClientIdTaken, "{mode:?}");
        assert!(
            reason.message.contains("claimed back by its owner"),
            "{reason}"
        );
        sim.close(squatter);
        let info = sim.broker.conn(alice).unwrap();
        assert_eq!(info.client_id.as_deref(), Some("alice"), "{mode:?}");
        assert!(
            info.subscriptions.is_empty(),
            "{mode:?}: the squatter's session is not hers: {:?}",
            info.subscriptions
        );
        sim.take(alice);
        sim.send(publisher, r#"{"op":"send","to":"alice","data":"hi"}"#);
        let messages: Vec<_> = sim
            .take(alice)
            .into_iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["data"].clone())
            .collect();
        assert_eq!(messages, [json!("hi")], "{mode:?}");
    }
}

#[test]
fn only_the_principal_changes_its_subscriptions_live_or_parked() {
    use tidings_core::Claim;
    let mut sim = Sim::new(windowed());
    let alice = sim.open_with(1, NativeCodec, grants(Some("alice")));
    claim(&mut sim, alice, "alice", Claim::IfFree);
    sim.send(alice, r#"{"op":"subscribe","topic":"secret.alice"}"#);
    sim.take(alice);
    let stranger = grants(None);
    let owner = grants(Some("alice"));
    for parked in [false, true] {
        if parked {
            sim.close(alice);
        }
        let now = sim.now;
        let e = sim
            .broker
            .update_subscriptions_as(
                now,
                Some(&stranger),
                &name("alice"),
                vec![pattern("x")],
                vec![pattern("secret.alice")],
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "parked: {parked}");
        assert!(e.message.contains("only that owner"), "{e}");
        let change = sim
            .broker
            .update_subscriptions_as(now, Some(&owner), &name("alice"), vec![], vec![])
            .unwrap();
        assert_eq!(change.subscriptions, vec![pattern("secret.alice")]);
        assert_eq!(change.connected, !parked);
    }
}
