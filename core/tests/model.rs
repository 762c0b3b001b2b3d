//! Model-based property test: random sequences of everything clients, the application, the
//! transport and the clock can do, run against the broker, and checked against a plain model.
//!
//! The model keeps, per connection, what it asked for as *interests*: (pattern, wanted after
//! seq, until seq). From the full list of published events it derives what each connection must
//! get. After every step the harness drains the outputs and checks cheap invariants (queues
//! bounded, timers not in the past, every frame decodes, replies match requests); at the end it
//! drains all transports and checks every delivery, gap notice, message and reply.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;
use tidings_core::sse::{Decoder, Item};
use tidings_core::{
    Broker, Command, Config, ConnId, Cursor, Event, Grants, Input, Name, Output, Pattern, Payload,
    SlowConsumerPolicy, Subscribe, Topic, native,
};

const TOPICS: [&str; 5] = ["a", "b", "a.x", "a.y", "b.x.y"];
const PATTERNS: [&str; 7] = ["a", "b", "a.*", "a.>", "*.x", ">", "b.x.y"];
const ROOMS: [&str; 2] = ["r1", "r2"];
const EPOCH: u64 = 5;

#[derive(Debug, Clone)]
enum Op {
    Open {
        sse: bool,
    },
    Close(usize),
    Subscribe {
        conn: usize,
        patterns: Vec<usize>,
        from: Option<From>,
        named: bool,
    },
    Unsubscribe {
        conn: usize,
        pattern: usize,
    },
    Publish {
        conn: Option<usize>,
        topic: usize,
        big: bool,
    },
    SendDirect {
        conn: usize,
        to: usize,
    },
    SendNamed {
        conn: usize,
        topic: usize,
    },
    Join {
        conn: usize,
        room: usize,
    },
    Leave {
        conn: usize,
        room: usize,
    },
    EmitRoom {
        room: usize,
    },
    ClientRequest(usize),
    AppReply(usize),
    ServerRequest(usize),
    ClientReply(usize),
    Flush {
        conn: usize,
        all: bool,
    },
    Tick(u64),
    Garbage {
        conn: usize,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum From {
    /// This many events back from the head (clamped to 0).
    Back(u64),
    OtherEpoch,
    Ahead,
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..8usize;
    prop_oneof![
        3 => any::<bool>().prop_map(|sse| Op::Open { sse }),
        1 => conn.clone().prop_map(Op::Close),
        5 => (conn.clone(), prop::collection::vec(0..PATTERNS.len(), 1..3), prop::option::weighted(0.5, prop_oneof![
                6 => (0..12u64).prop_map(From::Back),
                1 => Just(From::OtherEpoch),
                1 => Just(From::Ahead),
            ]), any::<bool>())
            .prop_map(|(conn, patterns, from, named)| Op::Subscribe { conn, patterns, from, named }),
        2 => (conn.clone(), 0..PATTERNS.len()).prop_map(|(conn, pattern)| Op::Unsubscribe { conn, pattern }),
        8 => (prop::option::of(conn.clone()), 0..TOPICS.len(), prop::bool::weighted(0.3))
            .prop_map(|(conn, topic, big)| Op::Publish { conn, topic, big }),
        3 => (conn.clone(), conn.clone()).prop_map(|(conn, to)| Op::SendDirect { conn, to }),
        1 => (conn.clone(), 0..TOPICS.len()).prop_map(|(conn, topic)| Op::SendNamed { conn, topic }),
        2 => (conn.clone(), 0..ROOMS.len()).prop_map(|(conn, room)| Op::Join { conn, room }),
        1 => (conn.clone(), 0..ROOMS.len()).prop_map(|(conn, room)| Op::Leave { conn, room }),
        3 => (0..ROOMS.len()).prop_map(|room| Op::EmitRoom { room }),
        1 => conn.clone().prop_map(Op::ClientRequest),
        1 => conn.clone().prop_map(Op::AppReply),
        1 => conn.clone().prop_map(Op::ServerRequest),
        1 => conn.clone().prop_map(Op::ClientReply),
        4 => (conn.clone(), prop::bool::weighted(0.3)).prop_map(|(conn, all)| Op::Flush { conn, all }),
        2 => (0..3000u64).prop_map(Op::Tick),
        1 => (conn, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
    ]
}

/// One thing a connection wanted: events matching `pattern` with `after < seq <= until`.
#[derive(Debug, Clone)]
struct Interest {
    pattern: usize,
    after: u64,
    until: Option<u64>,
}

#[derive(Debug, Clone)]
struct GapSeen {
    from: Option<Cursor>,
    to: Cursor,
    reason: String,
    dropped: u64,
}

struct MConn {
    id: ConnId,
    sse: bool,
    open: bool,
    /// Closed by the broker (slow consumer, garbage over the limit): completeness is not owed.
    dropped_by_broker: bool,
    held: Vec<(usize, bool)>,
    interests: Vec<Interest>,
    resubscribe_allowed: bool,
    delivered: Vec<u64>,
    /// Indexes into `delivered` where a resume may restart the order.
    rewinds: Vec<usize>,
    gaps: Vec<GapSeen>,
    messages_expected: Vec<String>,
    messages_got: Vec<String>,
    unflushed: usize,
    decoder: Decoder,
    next_req: u64,
    replies_due: HashSet<u64>,
    replies: HashMap<u64, usize>,
    app_pending: Vec<u64>,
    server_pending: Vec<u64>,
    client_id: String,
}

struct Harness {
    broker: Broker,
    now: Instant,
    conns: Vec<MConn>,
    /// Published events: seq -> (topic index, payload).
    events: Vec<(usize, String)>,
    max_events: u64,
    max_queued: usize,
    next_conn: u64,
    next_msg: u64,
    acks_resolved: HashMap<(ConnId, u64), usize>,
    acks_sent: Vec<(ConnId, u64)>,
}

fn pattern(i: usize) -> Pattern {
    Pattern::parse(PATTERNS[i], Default::default()).unwrap()
}

fn topic(i: usize) -> Topic {
    Topic::parse(TOPICS[i], Default::default()).unwrap()
}

impl Harness {
    fn new(max_events: u64, max_queued: usize, disconnect_b: bool) -> Self {
        let mut config = Config {
            epoch: EPOCH,
            ..Config::default()
        };
        config.retention.max_events = max_events as usize;
        config.limits.max_queued_bytes = max_queued;
        config.timers.idle_timeout = None;
        config.timers.keepalive = Some(Duration::from_secs(7));
        config.timers.request_timeout = Duration::from_secs(5);
        if disconnect_b {
            config.slow_consumer.rules = vec![(
                Pattern::parse("b.>", Default::default()).unwrap(),
                SlowConsumerPolicy::Disconnect,
            )];
        }
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            conns: Vec::new(),
            events: vec![(0, String::new())], // seq 0 is not an event
            max_events,
            max_queued,
            next_conn: 1,
            next_msg: 0,
            acks_resolved: HashMap::new(),
            acks_sent: Vec::new(),
        }
    }

    fn head(&self) -> u64 {
        self.events.len() as u64 - 1
    }

    fn pick(&self, k: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|i| self.conns[*i].open)
            .collect();
        (!open.is_empty()).then(|| open[k % open.len()])
    }

    fn input(&mut self, input: Input) {
        self.broker
            .handle_input(self.now, input)
            .expect("the harness never misuses the API");
        self.drain();
    }

    fn index_of(&self, id: ConnId) -> usize {
        self.conns
            .iter()
            .position(|c| c.id == id)
            .expect("outputs name known connections")
    }

    fn drain(&mut self) {
        let mut to_close = Vec::new();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let i = self.index_of(conn);
                    assert!(self.conns[i].open, "nothing is sent to a closed connection");
                    self.conns[i].unflushed += payload.len();
                    self.frame(i, &payload);
                }
                Output::Close { conn, .. } => {
                    let i = self.index_of(conn);
                    self.conns[i].dropped_by_broker = true;
                    to_close.push(conn);
                }
                Output::Event(e) => self.event(*e),
                other => panic!("unknown output {other:?}"),
            }
        }
        for conn in to_close {
            let i = self.index_of(conn);
            if self.conns[i].open {
                self.conns[i].open = false;
                self.input(Input::Closed { conn });
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Request { conn, req, .. } => {
                let i = self.index_of(conn);
                self.conns[i].app_pending.push(req);
            }
            Event::AckResult { conn, ack, .. } => {
                *self.acks_resolved.entry((conn, ack)).or_default() += 1;
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    c.server_pending.retain(|a| *a != ack);
                }
            }
            _ => {}
        }
    }

    fn frame(&mut self, i: usize, payload: &Bytes) {
        let c = &mut self.conns[i];
        if c.sse {
            c.decoder.feed(payload).expect("SSE output decodes");
            while let Some(item) = c.decoder.next_item() {
                let Item::Event(ev) = item else { continue };
                match ev.event_type.as_str() {
                    "tidings-gap" => {
                        let v: Value = serde_json::from_str(&ev.data).unwrap();
                        c.gaps.push(gap(&v));
                    }
                    "tidings-error" => {}
                    _ if ev.data.starts_with('p') => {
                        let cursor: Cursor = ev.last_event_id.parse().unwrap();
                        assert_eq!(cursor.epoch, EPOCH);
                        c.delivered.push(cursor.seq);
                        assert_eq!(
                            self.events[cursor.seq as usize].1, ev.data,
                            "SSE data is the payload"
                        );
                    }
                    _ => c.messages_got.push(ev.data),
                }
            }
            return;
        }
        let v: Value = serde_json::from_slice(payload).expect("native frames are JSON");
        match v["type"].as_str().unwrap() {
            "event" => {
                let cursor: Cursor = v["cursor"].as_str().unwrap().parse().unwrap();
                let (t, data) = &self.events[cursor.seq as usize];
                assert_eq!(v["topic"], TOPICS[*t]);
                assert_eq!(v["data"], data.as_str());
                c.delivered.push(cursor.seq);
            }
            "message" => c.messages_got.push(v["data"].as_str().unwrap().to_owned()),
            "gap" => c.gaps.push(gap(&v)),
            "ok" | "error" | "pong" => {
                if let Some(id) = v["id"].as_u64() {
                    assert!(
                        c.replies_due.contains(&id),
                        "reply {v} answers a request that was made"
                    );
                    *c.replies.entry(id).or_default() += 1;
                }
            }
            "request" => c.server_pending.push(v["id"].as_u64().unwrap()),
            "welcome" | "ping" => {}
            other => panic!("unknown frame type {other}"),
        }
    }

    fn send_native(&mut self, i: usize, frame: String, with_id: Option<u64>) {
        if let Some(id) = with_id {
            self.conns[i].replies_due.insert(id);
        }
        let cmd = native::decode(&Bytes::from(frame), &self.broker.config().limits);
        let conn = self.conns[i].id;
        self.input(Input::Command { conn, cmd });
    }

    fn req_id(&mut self, i: usize) -> u64 {
        self.conns[i].next_req += 1;
        self.conns[i].next_req
    }

    fn step(&mut self, op: &Op) {
        match op.clone() {
            Op::Open { sse } => {
                let id = ConnId(self.next_conn);
                self.next_conn += 1;
                self.conns.push(MConn {
                    id,
                    sse,
                    open: true,
                    dropped_by_broker: false,
                    held: Vec::new(),
                    interests: Vec::new(),
                    resubscribe_allowed: true,
                    delivered: Vec::new(),
                    rewinds: Vec::new(),
                    gaps: Vec::new(),
                    messages_expected: Vec::new(),
                    messages_got: Vec::new(),
                    unflushed: 0,
                    decoder: Decoder::new(),
                    next_req: 0,
                    replies_due: HashSet::new(),
                    replies: HashMap::new(),
                    app_pending: Vec::new(),
                    server_pending: Vec::new(),
                    client_id: format!("c{}", id.0),
                });
                let codec: Box<dyn tidings_core::codec::Codec> = if sse {
                    Box::new(tidings_core::sse::SseCodec)
                } else {
                    Box::new(tidings_core::native::NativeCodec)
                };
                self.input(Input::Open {
                    conn: id,
                    codec,
                    grants: Arc::new(Grants::all()),
                });
                let i = self.conns.len() - 1;
                let name = Name::parse("client_id", &format!("c{}", id.0), 64).unwrap();
                self.input(Input::Command {
                    conn: id,
                    cmd: Command::Identify {
                        req: None,
                        client_id: name,
                        claim: tidings_core::Claim::Explicit,
                    },
                });
                let _ = i;
            }
            Op::Close(k) => {
                let Some(i) = self.pick(k) else { return };
                self.conns[i].open = false;
                let conn = self.conns[i].id;
                self.input(Input::Closed { conn });
            }
            Op::Subscribe {
                conn,
                patterns,
                from,
                named,
            } => {
                let Some(i) = self.pick(conn) else { return };
                let head = self.head();
                let c = &self.conns[i];
                let from = if c.resubscribe_allowed { from } else { None };
                let cursor = from.map(|f| match f {
                    From::Back(n) => Cursor::new(EPOCH, head.saturating_sub(n)),
                    From::OtherEpoch => Cursor::new(EPOCH + 1, 3),
                    From::Ahead => Cursor::new(EPOCH, head + 5),
                });
                let first_retained = if head == 0 {
                    1
                } else {
                    (head + 1).saturating_sub(self.max_events).max(1)
                };
                let after = match cursor {
                    None => head,
                    Some(c) if c.seq <= head && c.epoch == EPOCH => c.seq,
                    Some(_) => first_retained - 1,
                };
                let mut new: Vec<usize> = patterns
                    .iter()
                    .copied()
                    .filter(|p| !c.held.iter().any(|(h, _)| h == p))
                    .collect();
                new.sort_unstable();
                new.dedup();
                let c = &mut self.conns[i];
                if cursor.is_some() && !new.is_empty() {
                    c.rewinds.push(c.delivered.len());
                }
                for p in &new {
                    c.held.push((*p, named));
                    c.interests.push(Interest {
                        pattern: *p,
                        after,
                        until: None,
                    });
                }
                let req = (!c.sse).then(|| self.req_id(i));
                let sub = Subscribe {
                    req,
                    patterns: patterns.iter().map(|p| pattern(*p)).collect(),
                    from: cursor,
                    name: named.then(|| Name::parse("name", "worker", 64).unwrap()),
                };
                if let Some(id) = req {
                    self.conns[i].replies_due.insert(id);
                }
                let conn = self.conns[i].id;
                self.input(Input::Command {
                    conn,
                    cmd: Command::Subscribe(sub),
                });
            }
            Op::Unsubscribe { conn, pattern: p } => {
                let Some(i) = self.pick(conn) else { return };
                let head = self.head();
                let c = &mut self.conns[i];
                if let Some(j) = c.held.iter().position(|(h, _)| *h == p) {
                    c.held.remove(j);
                    c.resubscribe_allowed = false;
                    for interest in c
                        .interests
                        .iter_mut()
                        .filter(|x| x.pattern == p && x.until.is_none())
                    {
                        interest.until = Some(head);
                    }
                }
                let conn = c.id;
                self.input(Input::Command {
                    conn,
                    cmd: Command::Unsubscribe {
                        req: None,
                        patterns: vec![pattern(p)],
                    },
                });
            }
            Op::Publish {
                conn,
                topic: t,
                big,
            } => {
                let seq = self.head() + 1;
                let data = format!(
                    "p{seq}{}",
                    if big { "x".repeat(300) } else { String::new() }
                );
                self.events.push((t, data.clone()));
                let payload = Payload::text(data.clone()).unwrap();
                match conn
                    .and_then(|k| self.pick(k))
                    .filter(|i| !self.conns[*i].sse)
                {
                    Some(i) => {
                        let id = self.req_id(i);
                        let frame = format!(
                            r#"{{"op":"publish","id":{id},"topic":"{}","data":"{data}"}}"#,
                            TOPICS[t]
                        );
                        self.send_native(i, frame, Some(id));
                    }
                    None => {
                        let cursor = self.broker.publish(self.now, topic(t), None, payload);
                        assert_eq!(cursor, Cursor::new(EPOCH, seq));
                        self.drain();
                    }
                }
            }
            Op::SendDirect { conn, to } => {
                let (Some(i), Some(j)) = (self.pick(conn), self.pick(to)) else {
                    return;
                };
                if self.conns[i].sse {
                    return;
                }
                let data = self.message(&[j]);
                let id = self.req_id(i);
                let frame = format!(
                    r#"{{"op":"send","id":{id},"to":"{}","data":"{data}"}}"#,
                    self.conns[j].client_id
                );
                self.send_native(i, frame, Some(id));
            }
            Op::SendNamed { conn, topic: t } => {
                let Some(i) = self.pick(conn) else { return };
                if self.conns[i].sse {
                    return;
                }
                let targets: Vec<usize> = (0..self.conns.len())
                    .filter(|j| self.conns[*j].open)
                    .filter(|j| {
                        self.conns[*j]
                            .held
                            .iter()
                            .any(|(p, named)| *named && pattern(*p).matches(TOPICS[t]))
                    })
                    .collect();
                let data = self.message(&targets);
                let id = self.req_id(i);
                let frame = format!(
                    r#"{{"op":"send","id":{id},"topic":"{}","name":"worker","data":"{data}"}}"#,
                    TOPICS[t]
                );
                self.send_native(i, frame, Some(id));
            }
            Op::Join { conn, room } => {
                let Some(i) = self.pick(conn) else { return };
                let id = self.conns[i].id;
                self.broker
                    .join(id, Name::parse("room", ROOMS[room], 64).unwrap())
                    .unwrap();
            }
            Op::Leave { conn, room } => {
                let Some(i) = self.pick(conn) else { return };
                let id = self.conns[i].id;
                self.broker
                    .leave(id, &Name::parse("room", ROOMS[room], 64).unwrap())
                    .unwrap();
            }
            Op::EmitRoom { room } => {
                let name = Name::parse("room", ROOMS[room], 64).unwrap();
                let members: Vec<usize> = self
                    .broker
                    .room_members(&name)
                    .iter()
                    .map(|id| self.index_of(*id))
                    .collect();
                let data = self.message(&members);
                let n = self
                    .broker
                    .emit_room(self.now, &name, None, &Payload::text(data).unwrap());
                assert_eq!(n, members.len());
                self.drain();
            }
            Op::ClientRequest(k) => {
                let Some(i) = self.pick(k).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let id = self.req_id(i);
                self.send_native(
                    i,
                    format!(r#"{{"op":"request","id":{id},"event":"q","data":1}}"#),
                    Some(id),
                );
            }
            Op::AppReply(k) => {
                let Some(i) = self.pick(k) else { return };
                if let Some(req) = self.conns[i].app_pending.pop() {
                    let conn = self.conns[i].id;
                    self.broker
                        .reply(self.now, conn, req, Ok(Payload::json("2").unwrap()));
                    self.drain();
                }
            }
            Op::ServerRequest(k) => {
                let Some(i) = self.pick(k).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let conn = self.conns[i].id;
                let ack = self.broker.request(
                    self.now,
                    conn,
                    &Name::parse("e", "ask", 8).unwrap(),
                    &Payload::empty(),
                    Some(Duration::from_secs(4)),
                );
                if let Ok(ack) = ack {
                    self.acks_sent.push((conn, ack));
                }
                self.drain();
            }
            Op::ClientReply(k) => {
                let Some(i) = self.pick(k) else { return };
                if let Some(ack) = self.conns[i].server_pending.pop() {
                    // The ack may have timed out already: then the answer is an unknown_request error.
                    self.send_native(
                        i,
                        format!(r#"{{"op":"reply","id":{ack},"data":"yes"}}"#),
                        None,
                    );
                }
            }
            Op::Flush { conn, all } => {
                let targets: Vec<usize> = if all {
                    (0..self.conns.len()).collect()
                } else {
                    self.pick(conn).into_iter().collect()
                };
                for i in targets {
                    self.flush(i);
                }
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                self.broker.handle_timeout(self.now);
                self.drain();
            }
            Op::Garbage { conn, bytes } => {
                let Some(i) = self.pick(conn).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let conn = self.conns[i].id;
                let cmd = native::decode(&Bytes::from(bytes), &self.broker.config().limits);
                let had_id = matches!(&cmd, Command::Invalid { req: Some(_), .. })
                    || !matches!(cmd, Command::Invalid { .. });
                if had_id {
                    return; // random bytes that happen to be a valid frame or carry an id: skip
                }
                self.input(Input::Command { conn, cmd });
            }
        }
        self.check_step();
    }

    fn message(&mut self, targets: &[usize]) -> String {
        self.next_msg += 1;
        let data = format!("m{}", self.next_msg);
        for &j in targets {
            self.conns[j].messages_expected.push(data.clone());
        }
        data
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.open || c.unflushed == 0 {
            return;
        }
        let bytes = std::mem::take(&mut c.unflushed);
        let conn = c.id;
        self.input(Input::Flushed { conn, bytes });
    }

    fn check_step(&self) {
        if let Some(t) = self.broker.poll_timeout() {
            assert!(t >= self.now, "poll_timeout is never in the past");
        }
        for c in self.conns.iter().filter(|c| c.open) {
            let info = self.broker.conn(c.id).expect("open connections are known");
            assert!(
                info.queued_bytes <= 2 * self.max_queued,
                "queue bounded: {}",
                info.queued_bytes
            );
            assert_eq!(
                info.queued_bytes, c.unflushed,
                "the broker counts exactly what it handed out"
            );
        }
    }

    /// Drains every transport, lets every timer run out, then checks the whole run.
    fn finish(&mut self) {
        for _ in 0..1000 {
            if self.conns.iter().all(|c| !c.open || c.unflushed == 0) {
                break;
            }
            for i in 0..self.conns.len() {
                self.flush(i);
            }
        }
        for _ in 0..3 {
            self.now += Duration::from_secs(6);
            self.broker.handle_timeout(self.now);
            self.drain();
            for i in 0..self.conns.len() {
                self.flush(i);
            }
        }
        let head = self.head();
        for c in &self.conns {
            check_conn(c, &self.events, head, self.max_events);
        }
        for ack in &self.acks_sent {
            assert_eq!(
                self.acks_resolved.get(ack),
                Some(&1),
                "server request {ack:?} resolved exactly once"
            );
        }
    }
}

fn gap(v: &Value) -> GapSeen {
    GapSeen {
        from: v["from"].as_str().map(|s| s.parse().unwrap()),
        to: v["to"].as_str().unwrap().parse().unwrap(),
        reason: v["reason"].as_str().unwrap().to_owned(),
        dropped: v["dropped_messages"].as_u64().unwrap(),
    }
}

fn check_conn(c: &MConn, events: &[(usize, String)], head: u64, max_events: u64) {
    let wanted = |seq: u64, active_only: bool| {
        let topic = TOPICS[events[seq as usize].0];
        c.interests.iter().any(|x| {
            (!active_only || x.until.is_none())
                && pattern(x.pattern).matches(topic)
                && seq > x.after
                && x.until.is_none_or(|u| seq <= u)
        })
    };
    // Sound: only wanted events, each once, in order between resume points.
    let mut seen = HashSet::new();
    for (k, &seq) in c.delivered.iter().enumerate() {
        assert!(
            wanted(seq, false),
            "conn {} got unwanted event {seq}; interests {:?}",
            c.id,
            c.interests
        );
        assert!(
            seen.insert(seq),
            "conn {} got event {seq} twice: {:?}",
            c.id,
            c.delivered
        );
        if k > 0 && !c.rewinds.contains(&k) {
            assert!(
                seq > c.delivered[k - 1],
                "conn {} order: {:?} (rewinds {:?})",
                c.id,
                c.delivered,
                c.rewinds
            );
        }
    }
    // Gaps only where something was really lost.
    let evicted_up_to = head.saturating_sub(max_events);
    for g in &c.gaps {
        let plausible = g.dropped > 0
            || g.reason == "epoch"
            || g.from.is_some_and(|f| f.seq < evicted_up_to.min(g.to.seq));
        assert!(
            plausible,
            "conn {} got a gap {g:?} with nothing evicted (evicted up to {evicted_up_to})",
            c.id
        );
    }
    if !c.open || c.dropped_by_broker {
        return;
    }
    // Complete: every event of an active interest arrived, or a gap notice covers it.
    for seq in 1..=head {
        if wanted(seq, true) && !seen.contains(&seq) {
            let covered = c
                .gaps
                .iter()
                .any(|g| seq <= g.to.seq && g.from.is_none_or(|f| f.epoch != EPOCH || f.seq < seq));
            assert!(
                covered,
                "conn {} silently lost event {seq}: delivered {:?}, gaps {:?}",
                c.id, c.delivered, c.gaps
            );
        }
    }
    // Messages: what arrived was sent to it; what did not is counted in gap notices.
    let mut expected = c.messages_expected.clone();
    for m in &c.messages_got {
        let i = expected
            .iter()
            .position(|e| e == m)
            .unwrap_or_else(|| panic!("conn {} got message {m} not sent to it", c.id));
        expected.swap_remove(i);
    }
    let dropped: u64 = c.gaps.iter().map(|g| g.dropped).sum();
    assert_eq!(
        expected.len() as u64,
        dropped,
        "conn {}: lost messages are all announced",
        c.id
    );
    // Every request with an id got exactly one reply.
    for id in &c.replies_due {
        assert_eq!(
            c.replies.get(id),
            Some(&1),
            "conn {} request {id}: exactly one reply",
            c.id
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn broker_matches_model(
        ops in prop::collection::vec(op(), 1..120),
        max_events in 1..12u64,
        max_queued in 250..2500usize,
        disconnect_b in any::<bool>(),
    ) {
        let mut h = Harness::new(max_events, max_queued, disconnect_b);
        for op in &ops {
            h.step(op);
        }
        h.finish();
    }
}
