//! Behaviour of the broker as a client and an application see it, one feature at a time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{EtpCodec, NativeCodec, Sim, SseCodec, publish};
use serde_json::{Value, json};
use tidings_core::{
    ApiError, AppEvent, ClientIds, Config, ConnId, Cursor, ErrorCode, Grants, Input, Name, Pattern,
    Payload, Recipient, SlowConsumerPolicy, Topic,
};

fn name(s: &str) -> Name {
    Name::parse("name", s, 128).unwrap()
}

fn topic(s: &str) -> Topic {
    Topic::parse(s, Default::default()).unwrap()
}

fn text(s: &str) -> Payload {
    Payload::text(s.to_owned()).unwrap()
}

#[test]
fn subscribe_publish_and_cursors() {
    let mut sim = Sim::new(Config {
        epoch: 0xabc,
        ..Config::default()
    });
    let a = sim.open(1, NativeCodec);
    let b = sim.open(2, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","id":1,"topic":"news.sport"}"#);
    assert_eq!(
        sim.take(a),
        vec![json!({"type":"ok","id":1,"cursor":"abc-0"})]
    );
    sim.send(
        b,
        r#"{"op":"publish","id":7,"topic":"news.sport","event":"goal","data":{"score":[1,0]}}"#,
    );
    assert_eq!(
        sim.take(b),
        vec![json!({"type":"ok","id":7,"cursor":"abc-1"})]
    );
    assert_eq!(
        sim.take(a),
        vec![
            json!({"type":"event","topic":"news.sport","cursor":"abc-1","event":"goal","data":{"score":[1,0]}})
        ]
    );
    // No echo unless subscribed, nothing for other topics.
    sim.send(
        b,
        r#"{"op":"publish","topic":"news.weather","data":"rain"}"#,
    );
    assert!(sim.take(a).is_empty());
    assert!(
        sim.take(b).is_empty(),
        "a publish without id gets no answer"
    );
    assert_eq!(sim.broker.head(), Cursor::new(0xabc, 2));
}

#[test]
fn wildcards_and_overlapping_patterns_deliver_once() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    sim.send(
        a,
        r#"{"op":"subscribe","topics":["chat.*","chat.>","chat.room1"]}"#,
    );
    let p = sim.open(2, NativeCodec);
    publish(&mut sim, p, "chat.room1", "x");
    publish(&mut sim, p, "chat.room1.typing", "y");
    publish(&mut sim, p, "chat", "z");
    assert_eq!(sim.event_data(a), vec!["x", "y"]);
    assert_eq!(
        sim.broker.conn(a).unwrap().subscriptions,
        vec!["chat.*", "chat.>", "chat.room1"]
    );
}

#[test]
fn unsubscribe_stops_delivery_and_unknown_patterns_are_errors() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    let p = sim.open(2, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topics":["a","b.*"]}"#);
    sim.send(a, r#"{"op":"unsubscribe","id":3,"topics":["b.*"]}"#);
    assert_eq!(sim.take(a), vec![json!({"type":"ok","id":3})]);
    publish(&mut sim, p, "b.x", "no");
    publish(&mut sim, p, "a", "yes");
    assert_eq!(sim.event_data(a), vec!["yes"]);
    sim.send(a, r#"{"op":"unsubscribe","id":4,"topics":["a","zzz"]}"#);
    let f = sim.take(a);
    assert_eq!(f[0]["code"], "not_subscribed");
    assert_eq!(f[0]["id"], 4);
    publish(&mut sim, p, "a", "still");
    assert_eq!(
        sim.event_data(a),
        vec!["still"],
        "a failed unsubscribe changes nothing"
    );
}

#[test]
fn resume_delivers_exactly_the_missing_suffix() {
    let mut sim = Sim::new(Config::default());
    let p = sim.open(1, NativeCodec);
    for i in 1..=5 {
        publish(
            &mut sim,
            p,
            if i % 2 == 0 { "even" } else { "odd" },
            &i.to_string(),
        );
    }
    let a = sim.open(2, NativeCodec);
    sim.send(
        a,
        r#"{"op":"subscribe","id":1,"topics":["odd","even"],"from":"1-2"}"#,
    );
    let frames = sim.take(a);
    assert_eq!(frames[0], json!({"type":"ok","id":1,"cursor":"1-5"}));
    let cursors: Vec<_> = frames[1..]
        .iter()
        .map(|f| f["cursor"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cursors, vec!["1-3", "1-4", "1-5"]);
    // Live delivery continues after the replay.
    publish(&mut sim, p, "odd", "6");
    assert_eq!(sim.event_data(a), vec!["6"]);
    // A wildcard resume gets only its topics.
    let b = sim.open(3, NativeCodec);
    sim.send(b, r#"{"op":"subscribe","topic":"ev*","from":"1-0"}"#);
    assert_eq!(sim.take(b)[0]["code"], "invalid_topic");
    sim.send(b, r#"{"op":"subscribe","topic":"*","from":"1-3"}"#);
    assert_eq!(sim.event_data(b), vec!["4", "5", "6"]);
}

#[test]
fn adding_a_resumed_subscription_never_duplicates() {
    let mut sim = Sim::new(Config::default());
    let p = sim.open(1, NativeCodec);
    let a = sim.open(2, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"x.*"}"#);
    publish(&mut sim, p, "x.a", "1");
    publish(&mut sim, p, "y", "2");
    publish(&mut sim, p, "x.b", "3");
    assert_eq!(sim.event_data(a), vec!["1", "3"]);
    // Now also `x.a` and `y` from the beginning: `y` events are new to it, `x.a` ones were seen.
    sim.send(a, r#"{"op":"subscribe","topics":["x.a","y"],"from":"1-0"}"#);
    assert_eq!(sim.event_data(a), vec!["2"]);
    publish(&mut sim, p, "x.a", "4");
    assert_eq!(sim.event_data(a), vec!["4"]);
}

#[test]
fn eviction_gives_a_gap_notice_only_for_lost_topics() {
    let mut config = Config::default();
    config.retention.max_events = 2;
    let mut sim = Sim::new(config);
    let p = sim.open(1, NativeCodec);
    publish(&mut sim, p, "a", "1");
    publish(&mut sim, p, "b", "2");
    publish(&mut sim, p, "b", "3");
    // `a`@1 was evicted.
    let x = sim.open(2, NativeCodec);
    sim.send(x, r#"{"op":"subscribe","topic":"a","from":"1-0"}"#);
    assert_eq!(
        sim.take(x),
        vec![json!({"type":"gap","from":"1-0","to":"1-1","reason":"evicted","dropped_messages":0})]
    );
    let y = sim.open(3, NativeCodec);
    sim.send(y, r#"{"op":"subscribe","topic":"b","from":"1-0"}"#);
    assert_eq!(sim.event_data(y), vec!["2", "3"], "b lost nothing: no gap");
}

#[test]
fn another_epoch_gets_a_gap_then_the_retained_history() {
    let mut sim = Sim::new(Config {
        epoch: 7,
        ..Config::default()
    });
    let p = sim.open(1, NativeCodec);
    publish(&mut sim, p, "a", "1");
    let x = sim.open(2, NativeCodec);
    sim.send(x, r#"{"op":"subscribe","topic":"a","from":"6-40"}"#);
    let f = sim.take(x);
    assert_eq!(
        f[0],
        json!({"type":"gap","from":"6-40","to":"7-0","reason":"epoch","dropped_messages":0})
    );
    assert_eq!(f[1]["data"], "1");
    assert_eq!(f.len(), 2);
    // A cursor ahead of the hub is treated the same way.
    let y = sim.open(3, NativeCodec);
    sim.send(y, r#"{"op":"subscribe","topic":"a","from":"7-99"}"#);
    let f = sim.take(y);
    assert_eq!(f[0]["reason"], "epoch");
    assert_eq!(f[1]["cursor"], "7-1");
}

#[test]
fn sse_frames_carry_cursors_and_gaps() {
    let mut config = Config {
        epoch: 1,
        ..Config::default()
    };
    config.retention.max_events = 1;
    let mut sim = Sim::new(config);
    let s = ConnId(9);
    sim.broker
        .handle_input(
            sim.now,
            Input::Open {
                conn: s,
                codec: Box::new(SseCodec),
                grants: Arc::new(Grants::all()),
            },
        )
        .unwrap();
    sim.drain();
    assert_eq!(sim.take_raw(s), vec![&b"retry: 2000\n\n"[..]]);
    let p = sim.open(1, NativeCodec);
    publish(&mut sim, p, "a", "x");
    publish(&mut sim, p, "a", "y");
    sim.command(
        s,
        tidings_core::Command::Subscribe(tidings_core::Subscribe {
            req: Some(1),
            patterns: vec![Pattern::parse("a", Default::default()).unwrap()],
            from: Some(Cursor::new(1, 0)),
            name: None,
        }),
    );
    sim.broker
        .publish(sim.now, topic("a"), Some(name("upd")), text("l1\nl2"));
    sim.drain();
    let stream: Vec<u8> = sim.take_raw(s).concat();
    assert_eq!(
        String::from_utf8(stream).unwrap(),
        "id: 1-1\nevent: tidings-gap\ndata: {\"from\":\"1-0\",\"to\":\"1-1\",\"reason\":\"evicted\",\"dropped_messages\":0}\n\n\
         id: 1-2\ndata: y\n\n\
         id: 1-3\nevent: upd\ndata: l1\ndata: l2\n\n"
    );
}

#[test]
fn one_encoding_is_shared_by_all_subscribers() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    let b = sim.open(2, NativeCodec);
    for c in [a, b] {
        sim.send(c, r#"{"op":"subscribe","topic":"t"}"#);
    }
    sim.broker
        .publish(sim.now, topic("t"), None, text("shared"));
    sim.drain();
    let (fa, fb) = (sim.take_raw(a), sim.take_raw(b));
    assert_eq!(fa, fb);
    assert_eq!(
        fa[0].as_ptr(),
        fb[0].as_ptr(),
        "the same buffer, not a copy"
    );
    // The history holds that same encoding: a resume replays it without encoding again.
    let c = sim.open(3, NativeCodec);
    sim.send(c, r#"{"op":"subscribe","topic":"t","from":"1-0"}"#);
    let fc = sim.take_raw(c);
    assert_eq!(fc[0].as_ptr(), fa[0].as_ptr());
}

#[test]
fn named_routing_and_direct_messages() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    let b = sim.open(2, NativeCodec);
    let s = sim.open(3, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"jobs","name":"worker"}"#);
    sim.send(b, r#"{"op":"subscribe","topic":"jobs"}"#);
    sim.send(s, r#"{"op":"identify","id":1,"client_id":"sender"}"#);
    assert_eq!(sim.take(s), vec![json!({"type":"ok","id":1})]);
    // Publishes of an identified client say who sent them.
    publish(&mut sim, s, "jobs", "j1");
    let expected =
        json!({"type":"event","topic":"jobs","cursor":"1-1","from":"sender","data":"j1"});
    assert_eq!(sim.take(a), vec![expected.clone()]);
    assert_eq!(sim.take(b), vec![expected]);
    sim.send(
        s,
        r#"{"op":"send","id":2,"topic":"jobs","name":"worker","data":{"n":1}}"#,
    );
    assert_eq!(sim.take(s), vec![json!({"type":"ok","id":2})]);
    assert_eq!(
        sim.take(a),
        vec![
            json!({"type":"message","from":"sender","topic":"jobs","name":"worker","data":{"n":1}})
        ]
    );
    assert!(
        sim.take(b).is_empty(),
        "only the named subscription gets it"
    );
    // Direct to a client id.
    sim.send(b, r#"{"op":"identify","client_id":"bee"}"#);
    sim.send(s, r#"{"op":"send","to":"bee","event":"hi","data":"psst"}"#);
    assert_eq!(
        sim.take(b),
        vec![json!({"type":"message","from":"sender","event":"hi","data":"psst"})]
    );
    // Nobody there, and a taken id.
    sim.send(s, r#"{"op":"send","id":3,"to":"nobody","data":1}"#);
    assert_eq!(sim.take(s)[0]["code"], "no_recipient");
    sim.send(a, r#"{"op":"identify","id":4,"client_id":"bee"}"#);
    assert_eq!(sim.take(a)[0]["code"], "client_id_taken");
    // The id is free again once its holder closes.
    sim.close(b);
    sim.send(a, r#"{"op":"identify","id":5,"client_id":"bee"}"#);
    assert_eq!(sim.take(a), vec![json!({"type":"ok","id":5})]);
    assert_eq!(
        sim.broker.send(
            sim.now,
            &Recipient::Client(name("bee")),
            None,
            &text("from app")
        ),
        1
    );
    sim.drain();
    assert_eq!(
        sim.take(a),
        vec![json!({"type":"message","data":"from app"})]
    );
}

#[test]
fn rooms_join_emit_list_and_auto_leave() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    let b = sim.open(2, NativeCodec);
    let room = name("lobby");
    assert!(sim.broker.join(a, room.clone()).unwrap());
    assert!(
        !sim.broker.join(a, room.clone()).unwrap(),
        "joining twice changes nothing"
    );
    assert!(sim.broker.join(b, room.clone()).unwrap());
    assert_eq!(sim.broker.room_members(&room), vec![a, b]);
    assert_eq!(
        sim.broker
            .emit_room(sim.now, &room, Some(&name("hello")), &text("all")),
        2
    );
    sim.drain();
    let frame = json!({"type":"message","room":"lobby","event":"hello","data":"all"});
    assert_eq!(sim.take(a), vec![frame.clone()]);
    assert_eq!(sim.take(b), vec![frame]);
    assert!(sim.broker.leave(b, &room).unwrap());
    sim.close(a);
    assert!(sim.broker.rooms().is_empty(), "empty rooms disappear");
    assert_eq!(sim.broker.emit_room(sim.now, &room, None, &text("x")), 0);
    assert_eq!(sim.broker.join(a, room), Err(ApiError::UnknownConn(a)));
}

#[test]
fn client_requests_get_exactly_one_answer() {
    let mut config = Config::default();
    config.timers.request_timeout = Duration::from_secs(2);
    config.limits.max_pending_requests = 2;
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"request","id":10,"event":"sum","data":[1,2]}"#);
    let Some(AppEvent::Request {
        conn,
        req,
        event,
        payload,
    }) = sim.take_events().pop()
    else {
        panic!()
    };
    assert_eq!(
        (conn, req, event.as_str(), payload.as_str()),
        (a, 10, "sum", "[1,2]")
    );
    assert!(
        sim.broker
            .reply(sim.now, a, 10, Ok(Payload::json("3").unwrap()))
    );
    assert!(
        !sim.broker
            .reply(sim.now, a, 10, Ok(Payload::json("4").unwrap())),
        "only one answer"
    );
    sim.drain();
    assert_eq!(sim.take(a), vec![json!({"type":"ok","id":10,"data":3})]);
    // Unanswered: the broker answers timeout, and a late answer is dropped.
    sim.send(a, r#"{"op":"request","id":11,"event":"slow"}"#);
    sim.send(a, r#"{"op":"request","id":11,"event":"slow"}"#);
    assert_eq!(sim.take(a)[0]["code"], "duplicate_request");
    sim.send(a, r#"{"op":"request","id":12,"event":"slow"}"#);
    sim.send(a, r#"{"op":"request","id":13,"event":"slow"}"#);
    assert_eq!(sim.take(a)[0]["code"], "limit_reached");
    sim.advance(Duration::from_secs(2));
    let mut answers = sim.take(a);
    answers.sort_by_key(|f| f["id"].as_u64());
    assert_eq!(answers.len(), 2);
    assert_eq!(
        (answers[0]["id"].clone(), answers[0]["code"].clone()),
        (json!(11), json!("timeout"))
    );
    assert!(!sim.broker.reply(sim.now, a, 11, Ok(text("late"))));
    // An application error is passed on.
    sim.send(a, r#"{"op":"request","id":14,"event":"x"}"#);
    sim.broker.reply(
        sim.now,
        a,
        14,
        Err(tidings_core::ProtocolError::new(
            ErrorCode::Rejected,
            "nope",
        )),
    );
    sim.drain();
    assert_eq!(
        sim.take(a),
        vec![json!({"type":"error","id":14,"code":"rejected","message":"nope"})]
    );
}

/// etp keeps an ack id as `uint64(strconv.Atoi(id))` but writes it back as the signed number, so
/// its clients match `x||-1` with `__ack_x||-1`; an unsigned echo (`18446744073709551615`) would
/// never be matched. Leading zeros and `+` are Atoi's and are not echoed.
#[test]
fn etp_ack_ids_are_answered_as_etp_writes_them() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, EtpCodec::go());
    for (sent, answer) in [
        ("x||-1", "__ack_x||-1"),
        (
            "x||-9223372036854775808||d",
            "__ack_x||-9223372036854775808",
        ),
        ("x||9223372036854775807", "__ack_x||9223372036854775807"),
        ("x||+5", "__ack_x||5"),
        ("x||-007||d", "__ack_x||-7"),
    ] {
        let cmd = tidings_core::etp::decode(sent.as_bytes(), &sim.broker.config().limits);
        sim.command(a, cmd);
        let Some(AppEvent::Request { req, .. }) = sim.take_events().pop() else {
            panic!("{sent}: no request reached the application")
        };
        assert!(sim.broker.reply(sim.now, a, req, Ok(Payload::empty())));
        sim.drain();
        assert_eq!(sim.take_raw(a), vec![answer], "{sent}");
    }
}

#[test]
fn server_requests_resolve_once_with_answer_timeout_or_close() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    let ev = name("confirm");
    let ack = sim
        .broker
        .request(sim.now, a, &ev, &text("ok?"), Some(Duration::from_secs(1)))
        .unwrap();
    sim.drain();
    assert_eq!(
        sim.take(a),
        vec![json!({"type":"request","id":ack,"event":"confirm","data":"ok?"})]
    );
    sim.send(a, &format!(r#"{{"op":"reply","id":{ack},"data":"yes"}}"#));
    assert_eq!(
        sim.take_events(),
        vec![AppEvent::AckResult {
            conn: a,
            ack,
            result: Ok(text("yes"))
        }]
    );
    sim.send(a, &format!(r#"{{"op":"reply","id":{ack},"data":"again"}}"#));
    assert_eq!(sim.take(a)[0]["code"], "unknown_request");
    sim.take_events();
    let ack2 = sim
        .broker
        .request(sim.now, a, &ev, &text("?"), Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(ack2, ack + 1);
    sim.advance(Duration::from_millis(999));
    assert!(sim.take_events().is_empty());
    sim.advance(Duration::from_millis(1));
    let Some(AppEvent::AckResult {
        ack: got,
        result: Err(e),
        ..
    }) = sim.take_events().pop()
    else {
        panic!()
    };
    assert_eq!((got, e.code), (ack2, ErrorCode::Timeout));
    let ack3 = sim
        .broker
        .request(sim.now, a, &ev, &text("?"), None)
        .unwrap();
    sim.close(a);
    let events = sim.take_events();
    assert!(
        matches!(&events[0], AppEvent::AckResult { ack, result: Err(e), .. } if *ack == ack3 && e.code == ErrorCode::NoRecipient)
    );
    assert_eq!(events[1], AppEvent::Disconnected { conn: a });
    // SSE connections cannot answer.
    let s = sim.open(2, SseCodec);
    assert!(matches!(
        sim.broker.request(sim.now, s, &ev, &text("?"), None),
        Err(ApiError::Unsupported { .. })
    ));
}

#[test]
fn slow_consumer_drop_and_gap_catches_up_from_history() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 1000;
    let mut sim = Sim::new(config);
    let p = sim.open(1, NativeCodec);
    let slow = sim.open(2, NativeCodec);
    sim.send(slow, r#"{"op":"subscribe","topic":"t"}"#);
    sim.auto_flush = false;
    let payload = "x".repeat(200);
    for _ in 0..10 {
        publish(&mut sim, p, "t", &payload);
    }
    let got = sim.take_raw(slow);
    let bytes: usize = got.iter().map(|b| b.len()).sum();
    assert!(
        bytes <= 1000,
        "never more than the limit is queued ({bytes})"
    );
    let n = got.len();
    assert_eq!(n, 3, "three 252-byte frames fit in 1000 bytes");
    assert!(matches!(
        sim.take_events().as_slice(),
        [AppEvent::SlowConsumer {
            policy: SlowConsumerPolicy::DropAndGap,
            ..
        }]
    ));
    assert!(sim.broker.conn(slow).unwrap().catching_up);
    // The transport drains: the rest arrives from history, in order, no gap (all retained).
    sim.broker
        .handle_input(sim.now, Input::Flushed { conn: slow, bytes })
        .unwrap();
    sim.auto_flush = true;
    sim.drain();
    let rest = sim.take(slow);
    let cursors: Vec<_> = rest
        .iter()
        .map(|f| f["cursor"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cursors,
        (n + 1..=10).map(|i| format!("1-{i}")).collect::<Vec<_>>()
    );
    assert!(!sim.broker.conn(slow).unwrap().catching_up);
}

#[test]
fn slow_consumer_loses_evicted_events_with_a_gap() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 1000;
    config.retention.max_events = 3;
    let mut sim = Sim::new(config);
    let p = sim.open(1, NativeCodec);
    let slow = sim.open(2, NativeCodec);
    sim.send(slow, r#"{"op":"subscribe","topic":"t"}"#);
    sim.auto_flush = false;
    for i in 1..=10 {
        publish(&mut sim, p, "t", &format!("{i:0>200}"));
    }
    let bytes: usize = sim.take_raw(slow).iter().map(|b| b.len()).sum();
    sim.auto_flush = true;
    sim.broker
        .handle_input(sim.now, Input::Flushed { conn: slow, bytes })
        .unwrap();
    sim.drain();
    let f = sim.take(slow);
    // Three frames fitted; 4..=7 were evicted before the transport drained.
    assert_eq!(
        f[0],
        json!({"type":"gap","from":"1-3","to":"1-7","reason":"slow_consumer","dropped_messages":0})
    );
    let cursors: Vec<_> = f[1..]
        .iter()
        .map(|f| f["cursor"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cursors, vec!["1-8", "1-9", "1-10"]);
}

#[test]
fn slow_consumer_disconnect_policy_per_topic() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 500;
    config.slow_consumer.rules = vec![(
        Pattern::parse("prices.>", Default::default()).unwrap(),
        SlowConsumerPolicy::Disconnect,
    )];
    let mut sim = Sim::new(config);
    let p = sim.open(1, NativeCodec);
    let c = sim.open(2, NativeCodec);
    sim.send(c, r#"{"op":"subscribe","topics":["prices.>","news"]}"#);
    sim.auto_flush = false;
    for _ in 0..5 {
        publish(&mut sim, p, "news", &"n".repeat(150));
    }
    assert!(
        !sim.closed.contains_key(&c),
        "news falls back to drop-and-gap"
    );
    publish(&mut sim, p, "prices.eur", "1.1");
    assert_eq!(
        sim.closed[&c].as_ref().unwrap().code,
        ErrorCode::SlowConsumer
    );
    assert_eq!(sim.broker.stats().slow_consumer_closes, 1);
    let last = sim.take(c).pop().unwrap();
    assert_eq!(last["code"], "slow_consumer", "the last frame says why");
    publish(&mut sim, p, "news", "after");
    assert!(
        sim.take(c).is_empty(),
        "a closing connection gets nothing more"
    );
    sim.close(c);
}

#[test]
fn grants_are_enforced() {
    let grants = Grants {
        subscribe: vec![Pattern::parse("public.>", Default::default()).unwrap()],
        publish: vec![Pattern::parse("public.chat", Default::default()).unwrap()],
        direct: false,
        client_ids: ClientIds::Only(name("me")),
        principal: None,
        info: None,
    };
    let mut sim = Sim::new(Config::default());
    let c = sim.open_with(1, NativeCodec, grants);
    for frame in [
        r#"{"op":"subscribe","id":1,"topic":">"}"#,
        r#"{"op":"subscribe","id":2,"topics":["public.a","private"]}"#,
        r#"{"op":"publish","id":3,"topic":"public.news","data":1}"#,
        r#"{"op":"send","id":4,"to":"x","data":1}"#,
        r#"{"op":"request","id":5,"event":"x"}"#,
        r#"{"op":"identify","id":6,"client_id":"admin"}"#,
    ] {
        sim.send(c, frame);
        let f = sim.take(c);
        assert_eq!(f[0]["code"], "forbidden", "{frame}");
    }
    assert!(
        sim.broker.conn(c).unwrap().subscriptions.is_empty(),
        "all or nothing"
    );
    sim.send(c, r#"{"op":"identify","id":8,"client_id":"me"}"#);
    assert_eq!(sim.take(c), vec![json!({"type":"ok","id":8})]);
    sim.send(c, r#"{"op":"subscribe","id":6,"topic":"public.*"}"#);
    sim.send(
        c,
        r#"{"op":"publish","id":7,"topic":"public.chat","data":1}"#,
    );
    let types: Vec<_> = sim
        .take(c)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        vec!["ok", "event", "ok"],
        "subscribed to its own publish"
    );
}

#[test]
fn bad_input_is_answered_and_isolated() {
    let mut config = Config::default();
    config.limits.max_frame_bytes = 100;
    config.limits.max_subscriptions = 2;
    let mut sim = Sim::new(config);
    let bad = sim.open(1, NativeCodec);
    let good = sim.open(2, NativeCodec);
    sim.send(good, r#"{"op":"subscribe","topic":"t"}"#);
    for (frame, code) in [
        ("{", "bad_frame"),
        ("42", "bad_frame"),
        (r#"{"op":"dance"}"#, "unknown_op"),
        (r#"{"op":"subscribe","topic":7}"#, "bad_field"),
        (
            r#"{"op":"publish","topic":"a b","data":1}"#,
            "invalid_topic",
        ),
        (
            r#"{"op":"subscribe","topics":["a","b","c"]}"#,
            "limit_reached",
        ),
        (r#"{"op":"reply","id":99,"data":1}"#, "unknown_request"),
    ] {
        sim.send(bad, frame);
        let f = sim.take(bad);
        assert_eq!(f.len(), 1, "{frame}");
        assert_eq!(f[0]["code"], code, "{frame}");
        assert!(
            f[0]["message"].as_str().unwrap().len() > 10,
            "messages explain: {}",
            f[0]
        );
    }
    sim.send(bad, r#"{"op":"subscribe","topics":["a","b"]}"#);
    sim.send(bad, r#"{"op":"subscribe","id":5,"topic":"c"}"#);
    assert_eq!(sim.take(bad)[0]["code"], "limit_reached");
    let violations = sim
        .take_events()
        .iter()
        .filter(|e| matches!(e, AppEvent::ProtocolViolation { conn, .. } if *conn == bad))
        .count();
    assert_eq!(violations, 8);
    sim.send(
        bad,
        &format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(100)),
    );
    assert_eq!(
        sim.closed[&bad].as_ref().unwrap().code,
        ErrorCode::FrameTooLarge
    );
    // The other connection saw nothing and still works.
    assert!(sim.take(good).is_empty());
    sim.broker.publish(sim.now, topic("t"), None, text("fine"));
    sim.drain();
    assert_eq!(sim.event_data(good), vec!["fine"]);
    let errors = sim.broker.stats().errors;
    assert!(errors.contains(&(ErrorCode::BadFrame, 2)), "{errors:?}");
}

#[test]
fn keepalive_idle_and_clock_clamping() {
    let mut config = Config::default();
    config.timers.keepalive = Some(Duration::from_secs(10));
    config.timers.idle_timeout = Some(Duration::from_secs(30));
    let mut sim = Sim::new(config);
    let ws = sim.open(1, NativeCodec);
    let sse = sim.open(2, SseCodec);
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.take(ws), vec![json!({"type":"ping"})]);
    assert_eq!(sim.take_raw(sse), vec![&b":\n\n"[..]]);
    // Traffic postpones the keep-alive.
    sim.advance(Duration::from_secs(5));
    sim.broker
        .send(sim.now, &Recipient::Conn(sse), None, &text("m"));
    sim.drain();
    sim.take_raw(sse);
    sim.advance(Duration::from_secs(5));
    assert!(sim.take_raw(sse).is_empty());
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.take_raw(sse), vec![&b":\n\n"[..]]);
    // The WebSocket client answers pings; then goes quiet and is closed. SSE never idles out.
    sim.send(ws, r#"{"op":"ping","id":1}"#);
    assert!(sim.take(ws).contains(&json!({"type":"pong","id":1})));
    sim.advance(Duration::from_secs(29));
    assert!(!sim.closed.contains_key(&ws));
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.closed[&ws].as_ref().unwrap().code, ErrorCode::Idle);
    assert!(!sim.closed.contains_key(&sse));
    // Time going backwards is clamped, not an error.
    let earlier = sim.now - Duration::from_secs(100);
    sim.broker.handle_timeout(earlier);
    sim.broker
        .handle_input(
            earlier,
            Input::Flushed {
                conn: sse,
                bytes: 0,
            },
        )
        .unwrap();
    assert!(sim.broker.poll_timeout().unwrap() > sim.now - Duration::from_secs(1));
}

#[test]
fn adapter_misuse_is_an_error_and_limits_hold() {
    let mut config = Config::default();
    config.limits.max_connections = 1;
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    let dup = sim.broker.handle_input(
        sim.now,
        Input::Open {
            conn: a,
            codec: Box::new(NativeCodec),
            grants: Arc::new(Grants::all()),
        },
    );
    assert_eq!(dup, Err(ApiError::DuplicateConn(a)));
    assert_eq!(
        sim.broker
            .handle_input(sim.now, Input::Closed { conn: ConnId(77) }),
        Err(ApiError::UnknownConn(ConnId(77)))
    );
    sim.broker
        .handle_input(
            sim.now,
            Input::Open {
                conn: ConnId(2),
                codec: Box::new(NativeCodec),
                grants: Arc::new(Grants::all()),
            },
        )
        .unwrap();
    sim.drain();
    assert_eq!(
        sim.closed[&ConnId(2)].as_ref().unwrap().code,
        ErrorCode::Overloaded
    );
    let f: Vec<Value> = sim.take(ConnId(2));
    assert_eq!(f[0]["code"], "overloaded");
    sim.close(ConnId(2));
    assert_eq!(sim.broker.stats().connections, 1);
}

#[test]
fn retention_by_age() {
    let mut config = Config::default();
    config.retention.max_age = Duration::from_secs(60);
    let mut sim = Sim::new(config);
    let p = sim.open(1, NativeCodec);
    publish(&mut sim, p, "a", "old");
    sim.advance(Duration::from_secs(30));
    publish(&mut sim, p, "a", "new");
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.broker.stats().retained_events, 1);
    let c = sim.open(2, NativeCodec);
    sim.send(c, r#"{"op":"subscribe","topic":"a","from":"1-0"}"#);
    let f = sim.take(c);
    assert_eq!(f[0]["type"], "gap");
    assert_eq!(f[1]["data"], "new");
    sim.advance(Duration::from_secs(30));
    assert_eq!(sim.broker.stats().retained_events, 0);
}

#[test]
fn null_data_pong_reserved_names_and_reply_errors() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"t"}"#);
    sim.send(a, r#"{"op":"publish","id":1,"topic":"t","data":null}"#);
    let f = sim.take(a);
    assert_eq!(
        f[0]["data"],
        Value::Null,
        "null is data, not a missing field"
    );
    assert_eq!(f[1], json!({"type":"ok","id":1,"cursor":"1-1"}));
    sim.send(a, r#"{"op":"pong"}"#);
    assert!(sim.take(a).is_empty(), "a pong is activity, with no answer");
    sim.send(
        a,
        r#"{"op":"publish","id":2,"topic":"t","event":"tidings-gap","data":1}"#,
    );
    let f = sim.take(a);
    assert_eq!(
        (f[0]["id"].clone(), f[0]["code"].clone()),
        (json!(2), json!("bad_field"))
    );
    // A reply's id is the server's, so errors about replies never carry it.
    sim.send(a, r#"{"op":"reply","id":3,"data":1,"error":5}"#);
    let f = sim.take(a);
    assert_eq!(f[0]["code"], "bad_field");
    assert!(f[0].get("id").is_none(), "{}", f[0]);
}

#[test]
fn fatal_errors_send_one_frame_and_resubscribing_held_patterns_sends_no_gap() {
    let mut config = Config::default();
    config.limits.max_frame_bytes = 64;
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"t"}"#);
    sim.send(a, r#"{"op":"subscribe","id":1,"topic":"t","from":"99-1"}"#);
    assert_eq!(
        sim.take(a),
        vec![json!({"type":"ok","id":1,"cursor":"1-0"})],
        "nothing new: no gap"
    );
    sim.send(a, &format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(64)));
    let f = sim.take(a);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["code"], "frame_too_large");
    assert_eq!(sim.closed[&a].as_ref().unwrap().code.ws_close_code(), 1009);
}

#[test]
fn receive_only_websocket_clients_are_pinged_before_the_idle_timeout() {
    let mut config = Config::default();
    config.timers.keepalive = Some(Duration::from_secs(15));
    config.timers.idle_timeout = Some(Duration::from_secs(60));
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"t"}"#);
    let mut pings = 0;
    for _ in 0..20 {
        // An event every 5 s: the server writes often, the client says nothing...
        sim.advance(Duration::from_secs(5));
        sim.broker.publish(sim.now, topic("t"), None, text("tick"));
        sim.drain();
        for f in sim.take(a) {
            if f["type"] == "ping" {
                pings += 1;
                // ...except to answer pings, as clients must.
                sim.send(a, r#"{"op":"pong"}"#);
            }
        }
    }
    assert!(
        pings >= 5,
        "pinged every 15 s of client silence, got {pings}"
    );
    assert!(
        !sim.closed.contains_key(&a),
        "a client that answers pings is never idle"
    );
}

#[test]
fn an_event_larger_than_the_credit_still_goes_to_an_idle_connection() {
    let mut config = Config::default();
    config.limits.max_queued_bytes = 300;
    let mut sim = Sim::new(config);
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"subscribe","topic":"t"}"#);
    let big = "x".repeat(1000);
    sim.broker.publish(sim.now, topic("t"), None, text(&big));
    sim.drain();
    assert_eq!(sim.event_data(a), vec![big.clone()]);
    assert!(!sim.closed.contains_key(&a), "nothing else was in flight");
    // A resume through it works the same way.
    let b = sim.open(2, NativeCodec);
    sim.send(b, r#"{"op":"subscribe","topic":"t","from":"1-0"}"#);
    assert_eq!(sim.event_data(b), vec![big]);
    assert!(!sim.closed.contains_key(&b));
}

#[test]
fn null_fields_are_absent_and_bad_utf8_anywhere_is_refused() {
    let mut sim = Sim::new(Config::default());
    let a = sim.open(1, NativeCodec);
    sim.send(a, r#"{"op":"ping","id":null,"event":null}"#);
    assert!(sim.take(a).is_empty(), "a null id is no id: no answer");
    let mut frame = br#"{"op":"ping","id":1,"x":""#.to_vec();
    frame.extend_from_slice(b"\xff\"}");
    let cmd = tidings_core::native::decode(&bytes::Bytes::from(frame), &sim.broker.config().limits);
    sim.command(a, cmd);
    assert_eq!(sim.take(a)[0]["code"], "not_utf8");
    assert_eq!(
        tidings_core::native::event_name("tidings-gap", 128)
            .unwrap_err()
            .code,
        ErrorCode::BadField
    );
    assert!(tidings_core::native::event_name("update", 128).is_ok());
}

#[test]
fn presence_lists_who_would_receive_an_event_on_the_topic() {
    let mut sim = Sim::new(Config::default());
    let alice1 = sim.open(1, NativeCodec);
    let alice2 = sim.open(2, NativeCodec);
    let bob = sim.open(3, NativeCodec);
    let anon = sim.open(4, NativeCodec);
    let other = sim.open(5, NativeCodec);
    for (conn, id) in [(alice1, "alice"), (bob, "bob")] {
        sim.send(
            conn,
            &format!(r#"{{"op":"identify","id":1,"client_id":"{id}"}}"#),
        );
    }
    // alice2 takes no id: a second tab of alice's without one is anonymous.
    sim.send(alice1, r#"{"op":"subscribe","topics":["chat.*","chat.>"]}"#);
    sim.send(alice2, r#"{"op":"subscribe","topic":"chat.room1"}"#);
    sim.send(bob, r#"{"op":"subscribe","topic":"chat.>"}"#);
    sim.send(anon, r#"{"op":"subscribe","topic":"chat.room1"}"#);
    sim.send(other, r#"{"op":"subscribe","topic":"news.>"}"#);
    for conn in [alice1, alice2, bob, anon, other] {
        sim.take(conn);
    }
    sim.send(other, r#"{"op":"presence","id":9,"topic":"chat.room1"}"#);
    assert_eq!(
        sim.take(other),
        [json!({"type":"ok","id":9,"data":{
            "topic":"chat.room1","connections":4,"anonymous":2,
            "clients":[{"client_id":"alice","connections":1},{"client_id":"bob","connections":1}],
            "truncated":false,"nodes":1}})],
        "alice's two overlapping patterns count her connection once"
    );
    sim.send(
        other,
        r#"{"op":"presence","id":10,"topic":"chat.room1.typing"}"#,
    );
    let got = sim.take(other);
    assert_eq!(got[0]["data"]["connections"], 2, "{got:?}");
    // Gone connections are gone from the presence.
    sim.close(bob);
    sim.send(other, r#"{"op":"presence","id":11,"topic":"chat.room1"}"#);
    assert_eq!(sim.take(other)[0]["data"]["connections"], 3);
    // Without an id, the op is refused (its answer has nowhere to go).
    sim.send(other, r#"{"op":"presence","topic":"chat.room1"}"#);
    assert_eq!(sim.take(other)[0]["code"], "bad_field");
}

#[test]
fn presence_needs_the_right_to_subscribe_to_the_topic() {
    let mut sim = Sim::new(Config::default());
    let grants = Grants {
        subscribe: vec![Pattern::parse("public.>", Default::default()).unwrap()],
        ..Grants::none()
    };
    let limited = sim.open_with(1, NativeCodec, grants);
    sim.take(limited);
    sim.send(limited, r#"{"op":"presence","id":1,"topic":"secret.room"}"#);
    let got = sim.take(limited);
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{got:?}"
    );
    sim.send(limited, r#"{"op":"presence","id":2,"topic":"public.room"}"#);
    assert_eq!(sim.take(limited)[0]["data"]["connections"], 0);
}
