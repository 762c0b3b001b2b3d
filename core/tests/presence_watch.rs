//! Presence notices: joins and leaves for connections that watch a topic's presence.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NativeCodec, Sim, SseCodec};
use serde_json::{Value, json};
use tidings_core::sse::{Decoder, Item};
use tidings_core::{Config, ConnId, Grants, Pattern, Topic, Visibility};

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s, Default::default()).unwrap()
}

fn join(topic: &str, client_id: Option<&str>) -> Value {
    notice(topic, "join", client_id)
}

fn leave(topic: &str, client_id: Option<&str>) -> Value {
    notice(topic, "leave", client_id)
}

fn notice(topic: &str, action: &str, client_id: Option<&str>) -> Value {
    let mut v = json!({"type":"presence","topic":topic,"action":action});
    if let Some(id) = client_id {
        v["client_id"] = json!(id);
    }
    v
}

fn identify(sim: &mut Sim, conn: ConnId, id: &str) {
    sim.send(
        conn,
        &format!(r#"{{"op":"identify","id":99,"client_id":"{id}"}}"#),
    );
    sim.take(conn);
}

/// A watcher of `topic` on a new connection `id`, its snapshot answer checked and taken.
fn watcher(sim: &mut Sim, id: u64, topic: &str) -> ConnId {
    let w = sim.open(id, NativeCodec);
    sim.send(
        w,
        &format!(r#"{{"op":"presence","id":1,"topic":"{topic}","watch":true}}"#),
    );
    let got = sim.take(w);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((&got[0]["type"], &got[0]["id"]), (&json!("ok"), &json!(1)));
    w
}

#[test]
fn a_watch_starts_from_the_presence_then_gets_each_join_and_leave() {
    let mut sim = Sim::new(Config::default());
    let early = sim.open(1, NativeCodec);
    identify(&mut sim, early, "carol");
    sim.send(early, r#"{"op":"subscribe","topic":"chat.room1"}"#);
    sim.take(early);

    let w = sim.open(2, NativeCodec);
    sim.send(
        w,
        r#"{"op":"presence","id":4,"topic":"chat.room1","watch":true}"#,
    );
    assert_eq!(
        sim.take(w),
        [json!({"type":"ok","id":4,"data":{
            "topic":"chat.room1","connections":1,"anonymous":0,
            "clients":[{"client_id":"carol","connections":1}],"truncated":false,"nodes":1}})],
        "the answer is the presence the notices continue from"
    );

    // Two connections of one user, two joins (per connection, as Centrifugo); a client id is
    // held by one connection at a time, so alice's second tab is anonymous.
    let a1 = sim.open(3, NativeCodec);
    let a2 = sim.open(4, NativeCodec);
    identify(&mut sim, a1, "alice");
    sim.send(a1, r#"{"op":"subscribe","topic":"chat.*"}"#);
    assert_eq!(sim.take(w), [join("chat.room1", Some("alice"))]);
    sim.send(a2, r#"{"op":"subscribe","topic":"chat.room1"}"#);
    assert_eq!(sim.take(w), [join("chat.room1", None)]);

    // A second matching subscription of the same connection: no second join; removing one of
    // two: no leave; the last one: the leave.
    sim.send(a1, r#"{"op":"subscribe","topic":"chat.>"}"#);
    sim.send(a1, r#"{"op":"unsubscribe","topic":"chat.*"}"#);
    assert_eq!(sim.take(w), Vec::<Value>::new());
    sim.send(a1, r#"{"op":"unsubscribe","topic":"chat.>"}"#);
    assert_eq!(sim.take(w), [leave("chat.room1", Some("alice"))]);

    // Subscriptions not matching the topic: nothing.
    let anon = sim.open(5, NativeCodec);
    sim.send(
        anon,
        r#"{"op":"subscribe","topics":["chat.room2","news.>"]}"#,
    );
    assert_eq!(sim.take(w), Vec::<Value>::new());
    // An anonymous connection: no client id.
    sim.send(anon, r#"{"op":"subscribe","topic":">"}"#);
    assert_eq!(sim.take(w), [join("chat.room1", None)]);

    // Closing leaves, whatever the way: the peer went, or the server closed it.
    sim.close(anon);
    assert_eq!(sim.take(w), [leave("chat.room1", None)]);
    sim.close(a2);
    assert_eq!(sim.take(w), [leave("chat.room1", None)]);

    // The presence now agrees with the snapshot plus the notices: carol alone.
    sim.send(w, r#"{"op":"presence","id":5,"topic":"chat.room1"}"#);
    assert_eq!(sim.take(w)[0]["data"]["connections"], 1);

    // Watching again: answered, no duplicate watch. `watch: false` stops it.
    sim.send(
        w,
        r#"{"op":"presence","id":6,"topic":"chat.room1","watch":true}"#,
    );
    assert_eq!(sim.take(w)[0]["type"], "ok");
    sim.send(
        w,
        r#"{"op":"presence","id":7,"topic":"chat.room1","watch":false}"#,
    );
    assert_eq!(sim.take(w), [json!({"type":"ok","id":7})]);
    sim.send(a1, r#"{"op":"subscribe","topic":"chat.room1"}"#);
    assert_eq!(sim.take(w), Vec::<Value>::new(), "stopped watching");
}

#[test]
fn a_watcher_closing_ends_its_watch_and_its_own_subscriptions_leave() {
    let mut sim = Sim::new(Config::default());
    let w1 = watcher(&mut sim, 1, "chat.a");
    let w2 = watcher(&mut sim, 2, "chat.a");
    // The watcher subscribes too: every watcher sees its join, itself included.
    sim.send(w1, r#"{"op":"subscribe","id":2,"topic":"chat.a"}"#);
    assert_eq!(sim.take(w1)[1], join("chat.a", None));
    assert_eq!(sim.take(w2), [join("chat.a", None)]);
    sim.close(w1);
    assert_eq!(sim.take(w2), [leave("chat.a", None)]);
    let other = sim.open(3, NativeCodec);
    sim.send(other, r#"{"op":"subscribe","topic":"chat.a"}"#);
    assert_eq!(sim.take(w2), [join("chat.a", None)]);
    assert_eq!(sim.take(w1), Vec::<Value>::new());
}

#[test]
fn a_slow_consumer_closed_by_the_server_leaves() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 1000;
    config.slow_consumer.default = tidings_core::SlowConsumerPolicy::Disconnect;
    let mut sim = Sim::new(config);
    let w = watcher(&mut sim, 1, "t");
    let slow = sim.open(2, NativeCodec);
    sim.send(slow, r#"{"op":"subscribe","topic":"t"}"#);
    assert_eq!(sim.take(w), [join("t", None)]);
    sim.auto_flush = false;
    let publisher = sim.open(3, NativeCodec);
    for _ in 0..3 {
        common::publish(&mut sim, publisher, "t", &"x".repeat(600));
    }
    assert!(
        sim.closed.contains_key(&slow),
        "the slow consumer was closed"
    );
    let got: Vec<Value> = sim
        .take(w)
        .into_iter()
        .filter(|f| f["type"] == "presence")
        .collect();
    assert_eq!(got, [leave("t", None)]);
}

#[test]
fn an_identify_changes_who_is_there_and_a_parked_session_leaves_and_rejoins() {
    let mut config = Config::default();
    config.timers.reconnect_window = Some(Duration::from_secs(60));
    let mut sim = Sim::new(config);
    let w = watcher(&mut sim, 1, "room.x");
    let c = sim.open(2, NativeCodec);
    sim.send(c, r#"{"op":"subscribe","topic":"room.>"}"#);
    assert_eq!(sim.take(w), [join("room.x", None)]);
    identify(&mut sim, c, "dave");
    assert_eq!(
        sim.take(w),
        [leave("room.x", None), join("room.x", Some("dave"))]
    );
    // Its connection drops: a parked session is not present (as `presence` counts it).
    sim.close(c);
    assert_eq!(sim.take(w), [leave("room.x", Some("dave"))]);
    sim.send(w, r#"{"op":"presence","id":3,"topic":"room.x"}"#);
    assert_eq!(sim.take(w)[0]["data"]["connections"], 0);
    // Back within the window: the restored session joins again.
    let c2 = sim.open(3, NativeCodec);
    identify(&mut sim, c2, "dave");
    assert_eq!(sim.take(w), [join("room.x", Some("dave"))]);
    assert_eq!(
        sim.broker.conn(c2).unwrap().subscriptions,
        ["room.>"],
        "its subscription came back with the session"
    );
    // Expiry of a parked session sends nothing more: it left when its connection closed.
    sim.close(c2);
    assert_eq!(sim.take(w), [leave("room.x", Some("dave"))]);
    sim.advance(Duration::from_secs(61));
    let notices: Vec<Value> = sim
        .take(w)
        .into_iter()
        .filter(|f| f["type"] == "presence")
        .collect();
    assert_eq!(notices, Vec::<Value>::new());
}

#[test]
fn watching_needs_the_presence_grant_and_is_bounded() {
    let mut config = Config::default();
    config.limits.max_subscriptions = 2;
    let mut sim = Sim::new(config);
    let grants = Grants {
        subscribe: vec![pattern("public.>"), pattern("own.>")],
        ..Grants::none()
    };
    let limited = sim.open_with(1, NativeCodec, grants);
    sim.take(limited);
    sim.send(
        limited,
        r#"{"op":"presence","id":1,"topic":"secret.room","watch":true}"#,
    );
    let got = sim.take(limited);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{got:?}"
    );
    // Refused: no notices.
    let other = sim.open(2, NativeCodec);
    sim.send(other, r#"{"op":"subscribe","topic":"secret.room"}"#);
    assert_eq!(sim.take(limited), Vec::<Value>::new());

    // A declared private topic: its owner only.
    let private = Topic::parse("own.bob", Default::default()).unwrap();
    sim.broker.declare_topic(
        sim.now,
        private,
        Visibility::Private(tidings_core::Name::parse("client_id", "bob", 64).unwrap()),
    );
    sim.send(
        limited,
        r#"{"op":"presence","id":2,"topic":"own.bob","watch":true}"#,
    );
    assert_eq!(sim.take(limited)[0]["code"], "forbidden");

    // At most max_subscriptions watches; stopping one frees its place.
    for (id, t) in [(3, "public.a"), (4, "public.b")] {
        sim.send(
            limited,
            &format!(r#"{{"op":"presence","id":{id},"topic":"{t}","watch":true}}"#),
        );
        assert_eq!(sim.take(limited)[0]["type"], "ok");
    }
    sim.send(
        limited,
        r#"{"op":"presence","id":5,"topic":"public.c","watch":true}"#,
    );
    assert_eq!(sim.take(limited)[0]["code"], "limit_reached");
    sim.send(
        limited,
        r#"{"op":"presence","id":6,"topic":"public.a","watch":false}"#,
    );
    sim.send(
        limited,
        r#"{"op":"presence","id":7,"topic":"public.c","watch":true}"#,
    );
    let got = sim.take(limited);
    assert_eq!(got[1]["type"], "ok", "{got:?}");

    // A pattern is not a topic; `watch` must be a boolean; the op needs an id.
    sim.send(
        limited,
        r#"{"op":"presence","id":8,"topic":"public.*","watch":true}"#,
    );
    assert_eq!(sim.take(limited)[0]["code"], "invalid_topic");
    sim.send(
        limited,
        r#"{"op":"presence","id":9,"topic":"public.a","watch":"yes"}"#,
    );
    assert_eq!(sim.take(limited)[0]["code"], "bad_field");
    sim.send(
        limited,
        r#"{"op":"presence","topic":"public.a","watch":true}"#,
    );
    assert_eq!(sim.take(limited)[0]["code"], "bad_field");
}

#[test]
fn notices_carry_the_info_of_the_token() {
    let mut sim = Sim::new(Config::default());
    let w = watcher(&mut sim, 1, "chat.a");
    let grants = Grants {
        info: Some(Arc::from(r#"{"name":"Alice","avatar":"/a.png"}"#)),
        ..Grants::all()
    };
    let alice = sim.open_with(2, NativeCodec, grants);
    identify(&mut sim, alice, "alice");
    sim.send(alice, r#"{"op":"subscribe","topic":"chat.a"}"#);
    assert_eq!(
        sim.take(w),
        [
            json!({"type":"presence","topic":"chat.a","action":"join","client_id":"alice",
            "info":{"name":"Alice","avatar":"/a.png"}})
        ]
    );
}

#[test]
fn an_sse_stream_gets_notices_as_presence_events_without_an_id() {
    let mut sim = Sim::new(Config::default());
    let stream = sim.open(1, SseCodec);
    sim.command(
        stream,
        tidings_core::Command::WatchPresence {
            req: 1,
            topic: Topic::parse("chat.a", Default::default()).unwrap(),
            watch: true,
        },
    );
    sim.take_raw(stream);
    let c = sim.open(2, NativeCodec);
    sim.send(c, r#"{"op":"subscribe","topic":"chat.a"}"#);
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    for frame in sim.take_raw(stream) {
        decoder.feed(&frame).unwrap();
        while let Some(item) = decoder.next_item() {
            if let Item::Event(e) = item {
                events.push((
                    e.event_type.clone(),
                    e.data.clone(),
                    e.last_event_id.clone(),
                ));
            }
        }
    }
    assert_eq!(
        events,
        [(
            "presence".to_owned(),
            r#"{"topic":"chat.a","action":"join"}"#.to_owned(),
            String::new()
        )]
    );
}

#[test]
fn a_slow_watcher_is_told_how_many_notices_it_lost() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 200;
    let mut sim = Sim::new(config);
    let w = watcher(&mut sim, 1, "t");
    sim.auto_flush = false;
    // A first notice goes (nothing in flight); the next ones wait, then overflow the queue.
    for id in 0..20 {
        let c = sim.open(10 + id, NativeCodec);
        sim.send(c, r#"{"op":"subscribe","topic":"t"}"#);
    }
    let got = sim.take_raw(w);
    let sent: usize = got.iter().map(bytes::Bytes::len).sum();
    assert!(got.len() < 20, "some were dropped: {} sent", got.len());
    // Once its queue drains, a gap notice says how many notices (messages) it lost.
    sim.auto_flush = true;
    sim.broker
        .handle_input(
            sim.now,
            tidings_core::Input::Flushed {
                conn: w,
                bytes: sent,
            },
        )
        .unwrap();
    sim.drain();
    let after = sim.take(w);
    let gap = after
        .iter()
        .find(|f| f["type"] == "gap")
        .unwrap_or_else(|| panic!("a gap notice: {after:?}"));
    assert_eq!(
        gap["dropped_messages"].as_u64().unwrap() as usize + got.len(),
        20,
        "{gap}"
    );
}

/// A watcher's view: the presence it started from plus every notice since.
#[derive(Debug, Default, PartialEq)]
struct View {
    connections: i64,
    anonymous: i64,
    clients: std::collections::BTreeMap<String, i64>,
}

impl View {
    fn of(presence: &Value) -> Self {
        let mut view = Self {
            connections: presence["connections"].as_i64().unwrap(),
            anonymous: presence["anonymous"].as_i64().unwrap(),
            ..Self::default()
        };
        for c in presence["clients"].as_array().unwrap() {
            view.clients.insert(
                c["client_id"].as_str().unwrap().to_owned(),
                c["connections"].as_i64().unwrap(),
            );
        }
        view
    }

    fn apply(&mut self, notice: &Value) {
        let d = if notice["action"] == "join" { 1 } else { -1 };
        self.connections += d;
        match notice["client_id"].as_str() {
            Some(id) => {
                let n = self.clients.entry(id.to_owned()).or_default();
                *n += d;
                assert!(*n >= 0, "a leave without a join: {notice}");
                if *n == 0 {
                    self.clients.remove(id);
                }
            }
            None => self.anonymous += d,
        }
        assert!(self.connections >= 0 && self.anonymous >= 0, "{notice}");
    }
}

#[test]
fn the_starting_presence_plus_the_notices_is_always_the_presence() {
    const PATTERNS: [&str; 5] = ["room.a", "room.*", "room.>", ">", "other.x"];
    const IDS: [&str; 2] = ["alice", "bob"];
    let topic = Topic::parse("room.a", Default::default()).unwrap();
    for seed in 0..200u64 {
        let mut config = Config::default();
        config.timers.reconnect_window = Some(Duration::from_secs(60));
        let mut sim = Sim::new(config);
        let mut rng = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % n
        };
        let w = sim.open(1000, NativeCodec);
        let mut view: Option<View> = None;
        let mut open: Vec<u64> = Vec::new();
        let mut next_conn = 1;
        let mut log = Vec::new();
        for step in 0..60 {
            let i = next(8);
            let c = open.get(next(open.len().max(1) as u64) as usize).copied();
            let p = PATTERNS[next(5) as usize];
            let id = IDS[next(2) as usize];
            match (i, c) {
                (0, _) | (_, None) => {
                    sim.open(next_conn, NativeCodec);
                    open.push(next_conn);
                    log.push(format!("open {next_conn}"));
                    next_conn += 1;
                }
                (1, Some(c)) => {
                    sim.close(ConnId(c));
                    open.retain(|o| *o != c);
                    log.push(format!("close {c}"));
                }
                (2 | 3, Some(c)) => {
                    sim.send(ConnId(c), &format!(r#"{{"op":"subscribe","topic":"{p}"}}"#));
                    log.push(format!("{c} subscribe {p}"));
                }
                (4, Some(c)) => {
                    sim.send(
                        ConnId(c),
                        &format!(r#"{{"op":"unsubscribe","topic":"{p}"}}"#),
                    );
                    log.push(format!("{c} unsubscribe {p}"));
                }
                (5, Some(c)) => {
                    let claim = if next(2) == 0 {
                        tidings_core::Claim::Explicit
                    } else {
                        tidings_core::Claim::TakeOver
                    };
                    sim.command(
                        ConnId(c),
                        tidings_core::Command::Identify {
                            req: Some(1),
                            client_id: tidings_core::Name::parse("client_id", id, 64).unwrap(),
                            claim,
                        },
                    );
                    log.push(format!("{c} identify {id} {claim:?}"));
                }
                (6, _) => {
                    // Watch (again): a new starting point.
                    sim.send(
                        w,
                        &format!(
                            r#"{{"op":"presence","id":{step},"topic":"room.a","watch":true}}"#
                        ),
                    );
                    log.push("watch".into());
                }
                _ => {
                    sim.send(
                        w,
                        &format!(
                            r#"{{"op":"presence","id":{step},"topic":"room.a","watch":false}}"#
                        ),
                    );
                    log.push("unwatch".into());
                }
            }
            // Connections the broker closed (take-overs) are gone: report them closed.
            let closed: Vec<ConnId> = sim.closed.keys().copied().collect();
            for conn in closed {
                sim.closed.remove(&conn);
                if conn != w && sim.broker.conn(conn).is_some() {
                    sim.close(conn);
                    open.retain(|o| *o != conn.0);
                }
            }
            for c in &open {
                sim.take(ConnId(*c));
            }
            for frame in sim.take(w) {
                match frame["type"].as_str() {
                    Some("ok") if frame["data"].is_object() => {
                        view = Some(View::of(&frame["data"]))
                    }
                    Some("ok") if log.last().is_some_and(|l| l == "unwatch") => view = None,
                    Some("presence") => view
                        .as_mut()
                        .unwrap_or_else(|| panic!("seed {seed}: a notice unwatched: {log:?}"))
                        .apply(&frame),
                    _ => {}
                }
            }
            if let Some(view) = &view {
                let now = serde_json::to_value(sim.broker.presence(&topic)).unwrap();
                assert_eq!(view, &View::of(&now), "seed {seed}, after {log:?}");
            }
        }
    }
}
