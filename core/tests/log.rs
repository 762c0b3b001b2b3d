//! The broker over a simulated external log (`LogMode::External`): appends answered late or
//! refused, pages answered late, twice or after the log evicted what they cover, retention moving
//! the log's first position, a restart from a recovered state. Property: every subscriber receives
//! exactly the stored events after its cursor that its pattern matches, in order, without
//! duplicates, except those covered by a gap notice that came before anything later; and every
//! publish is answered once, with the position the log gave it, or with the log's error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use tidings_core::log::{
    AppendId, Appended, LogEvent, LogMode, LogReply, LogRequest, LogState, Logged, Page, ReadId,
};
use tidings_core::typed::TypedCodec;
use tidings_core::{
    AppEvent, Broker, Command, Config, ConnId, Cursor, Delivery, ErrorCode, Grants, Input, Output,
    Pattern, Payload, ProtocolError, Published, Subscribe, Topic,
};

const TOPICS: [&str; 3] = ["a.x", "a.y", "b.x"];
const PATTERNS: [&str; 3] = ["a.>", "b.x", "a.x"];
const EPOCH: u64 = 0xfeed;

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    /// Store the oldest `n` appends waiting.
    Store(usize),
    /// Refuse the oldest append waiting (a full disk).
    Refuse,
    /// Answer a read waiting (by index), optionally twice.
    Answer(usize, bool),
    /// The log's retention evicts `n` events from its front.
    Trim(usize),
    /// A subscriber with pattern `p`, from a cursor `back` positions behind the head (or live).
    Subscribe(usize, Option<u64>),
    /// A subscriber's transport writes everything handed to it.
    Flush(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len()).prop_map(Op::Publish),
        3 => (1..4usize).prop_map(Op::Store),
        1 => Just(Op::Refuse),
        2 => (0..4usize, any::<bool>()).prop_map(|(i, d)| Op::Answer(i, d)),
        1 => (1..3usize).prop_map(Op::Trim),
        2 => (0..PATTERNS.len(), proptest::option::of(0..12u64)).prop_map(|(p, b)| Op::Subscribe(p, b)),
        2 => (0..6usize).prop_map(Op::Flush),
    ]
}

struct Subscriber {
    conn: ConnId,
    pattern: Pattern,
    /// Events after this position are owed to it.
    from: u64,
    received: Vec<Delivery>,
    queued: usize,
}

/// The broker with a simulated log and in-process subscribers.
struct Sim {
    broker: Broker,
    now: Instant,
    /// Every event the log stored, by position (retained or not).
    stored: Vec<Logged>,
    first: u64,
    appends: VecDeque<(AppendId, LogEvent)>,
    reads: Vec<(ReadId, u64, usize)>,
    subs: Vec<Subscriber>,
    next_conn: u64,
    /// Application publishes: id -> answer.
    answers: Vec<(AppendId, Result<Cursor, ProtocolError>)>,
    asked: Vec<AppendId>,
    /// The head the simulated log was recovered with.
    restored_head: u64,
}

impl Sim {
    fn new(hot_events: usize, state: Option<LogState>) -> Self {
        let config = Config {
            epoch: EPOCH,
            log: LogMode::External {
                hot_events,
                hot_bytes: 1 << 20,
                max_pending_appends: 6,
                shared: false,
            },
            ..Config::default()
        };
        let now = Instant::now(); // clock: test-only
        let mut broker = Broker::new(config, now);
        let (mut stored, mut first) = (Vec::new(), 1);
        if let Some(state) = state {
            stored.clone_from(&state.recent);
            first = state.first;
            broker.restore_log(state);
        }
        let mut sim = Self {
            broker,
            now,
            stored,
            first,
            appends: VecDeque::new(),
            reads: Vec::new(),
            subs: Vec::new(),
            next_conn: 1,
            answers: Vec::new(),
            asked: Vec::new(),
            restored_head: 0,
        };
        sim.restored_head = sim.head();
        sim.drain();
        sim
    }

    fn head(&self) -> u64 {
        self.broker.head().seq
    }

    fn drain(&mut self) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Log(LogRequest::Append { id, event }) => {
                    self.appends.push_back((id, event));
                }
                Output::Log(LogRequest::Read {
                    read,
                    from,
                    max_events,
                }) => self.reads.push((read, from, max_events)),
                Output::Deliver { conn, item } => {
                    let sub = self.subs.iter_mut().find(|s| s.conn == conn).unwrap();
                    sub.queued += item.size();
                    sub.received.push((*item).clone());
                }
                Output::App(event) => {
                    if let AppEvent::Stored { id, result } = *event {
                        self.answers.push((id, result));
                    }
                }
                Output::Close { conn, reason } => {
                    panic!("{conn} closed: {reason:?}")
                }
                _ => {}
            }
        }
    }

    fn input(&mut self, input: Input) {
        self.broker.handle_input(self.now, input).unwrap();
        self.drain();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish(t) => {
                let topic = Topic::parse(TOPICS[t], Default::default()).unwrap();
                let payload = Payload::text(format!("{}", self.asked.len())).unwrap();
                match self.broker.publish(self.now, topic, None, payload) {
                    Published::Storing(id) => self.asked.push(id),
                    Published::Refused(e) => assert_eq!(e.code, ErrorCode::Unavailable),
                    other => panic!("the external log answers later, not {other:?}"),
                }
                self.drain();
            }
            Op::Store(n) => {
                for _ in 0..n {
                    let Some((id, event)) = self.appends.pop_front() else {
                        return;
                    };
                    let seq = self
                        .stored
                        .last()
                        .map_or(self.head(), |l| l.seq)
                        .max(self.head())
                        + 1;
                    self.stored.push(Logged {
                        seq,
                        time_ms: 0,
                        event,
                    });
                    let first = self.first;
                    let result = Ok(Appended { seq, first });
                    self.input(Input::Log(LogReply::Appended { id, result }));
                }
            }
            Op::Refuse => {
                if let Some((id, _)) = self.appends.pop_front() {
                    let result = Err(ProtocolError::new(ErrorCode::Unavailable, "disk full"));
                    self.input(Input::Log(LogReply::Appended { id, result }));
                }
            }
            Op::Answer(i, twice) => {
                if self.reads.is_empty() {
                    return;
                }
                let (read, from, max) = self.reads.remove(i % self.reads.len());
                let events: Vec<Logged> = self
                    .stored
                    .iter()
                    .filter(|l| l.seq >= from.max(self.first))
                    .take(max)
                    .cloned()
                    .collect();
                let done = events
                    .last()
                    .is_none_or(|l| Some(l.seq) == self.stored.last().map(|s| s.seq));
                let page = Page {
                    first: self.first,
                    events,
                    done,
                };
                for _ in 0..if twice { 2 } else { 1 } {
                    let result = Ok(page.clone());
                    self.input(Input::Log(LogReply::Page { read, result }));
                }
            }
            Op::Trim(n) => {
                let last = self.stored.last().map_or(0, |l| l.seq);
                self.first = (self.first + n as u64).min(last + 1);
                let first = self.first;
                self.input(Input::Log(LogReply::Trimmed { first }));
            }
            Op::Subscribe(p, back) => {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                let head = self.head();
                let from = back.map(|b| head.saturating_sub(b));
                self.subs.push(Subscriber {
                    conn,
                    pattern: Pattern::parse(PATTERNS[p], Default::default()).unwrap(),
                    from: from.unwrap_or(head),
                    received: Vec::new(),
                    queued: 0,
                });
                self.input(Input::Open {
                    conn,
                    codec: Box::new(TypedCodec),
                    grants: Arc::new(Grants::all()),
                });
                let sub = Subscribe {
                    req: None,
                    patterns: vec![Pattern::parse(PATTERNS[p], Default::default()).unwrap()],
                    from: from.map(|s| Cursor::new(EPOCH, s)),
                    name: None,
                };
                self.input(Input::Command {
                    conn,
                    cmd: Command::Subscribe(sub),
                });
            }
            Op::Flush(i) => {
                if self.subs.is_empty() {
                    return;
                }
                let n = self.subs.len();
                let sub = &mut self.subs[i % n];
                let (conn, bytes) = (sub.conn, std::mem::take(&mut sub.queued));
                self.input(Input::Flushed { conn, bytes });
            }
        }
    }

    /// Everything waiting is stored, read and written.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.appends.is_empty() {
                self.apply(&Op::Store(self.appends.len()));
            } else if !self.reads.is_empty() {
                self.apply(&Op::Answer(0, false));
            } else if let Some(i) = self.subs.iter().position(|s| s.queued > 0) {
                self.apply(&Op::Flush(i));
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    fn check(&self) {
        // Every publish answered once: stored ones with the position the log gave them.
        assert_eq!(
            self.answers.len(),
            self.asked.len(),
            "every publish is answered"
        );
        let mut stored = self
            .stored
            .iter()
            .skip_while(|l| l.seq <= self.restored_head);
        for (id, result) in &self.answers {
            assert!(self.asked.contains(id));
            if let Ok(cursor) = result {
                let logged = stored.next().expect("an answer per stored event");
                assert_eq!(*cursor, Cursor::new(EPOCH, logged.seq));
            }
        }
        for sub in &self.subs {
            let owed: Vec<&Logged> = self
                .stored
                .iter()
                .filter(|l| l.seq > sub.from && sub.pattern.matches(l.event.topic.as_str()))
                .collect();
            let mut got = Vec::new();
            let mut gaps: Vec<(u64, u64, usize)> = Vec::new();
            for d in &sub.received {
                match d {
                    Delivery::Event {
                        cursor, payload, ..
                    } => {
                        assert_eq!(cursor.epoch, EPOCH);
                        let logged = owed
                            .iter()
                            .find(|l| l.seq == cursor.seq)
                            .unwrap_or_else(|| panic!("{} got {cursor} it is not owed", sub.conn));
                        assert_eq!(payload, &logged.event.payload);
                        got.push(cursor.seq);
                    }
                    Delivery::Gap(gap) => {
                        gaps.push((gap.from.map_or(0, |c| c.seq), gap.to.seq, got.len()));
                    }
                    other => panic!("only events and gaps here, not {other:?}"),
                }
            }
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "in order, once: {got:?}"
            );
            for l in owed {
                if got.contains(&l.seq) {
                    continue;
                }
                // Missing: a gap covering it came before anything after it.
                let before = got.iter().filter(|s| **s < l.seq).count();
                assert!(
                    gaps.iter()
                        .any(|(from, to, at)| *from < l.seq && l.seq <= *to && *at <= before),
                    "{} misses {} without a gap notice (got {got:?}, gaps {gaps:?}, first {})",
                    sub.conn,
                    l.seq,
                    self.first
                );
                assert!(l.seq < self.first, "only evicted events may be missing");
            }
        }
    }
}

proptest! {
    #[test]
    fn subscribers_get_exactly_the_stored_events_after_their_cursor(
        hot in 0..4usize,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(hot, None);
        for op in &ops {
            sim.apply(op);
        }
        sim.settle();
        sim.check();
    }

    #[test]
    fn a_restart_keeps_the_epoch_and_positions(
        kept in 0..6u64,
        lost in 0..3u64,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        // A recovered log: events 3..=8 retained (events 1, 2 evicted), the newest `kept` of
        // them in memory, positions up to 8 + `lost` given out before the crash.
        let topic = |i: u64| Topic::parse(TOPICS[(i % 3) as usize], Default::default()).unwrap();
        let all: Vec<Logged> = (3..=8)
            .map(|seq| Logged {
                seq,
                time_ms: 0,
                event: LogEvent {
                    topic: topic(seq),
                    event: None,
                    from: None,
                    payload: Payload::text(format!("old {seq}")).unwrap(),
                },
            })
            .collect();
        let state = LogState {
            epoch: EPOCH,
            first: 3,
            head: 8 + lost,
            recovered: 8,
            recent: all.clone(),
            now_ms: 0,
        };
        let mut sim = Sim::new(kept as usize, Some(state));
        sim.stored = all;
        sim.first = 3;
        assert_eq!(sim.broker.head(), Cursor::new(EPOCH, 8 + lost));
        for op in &ops {
            sim.apply(op);
        }
        sim.settle();
        sim.check();
    }
}

#[test]
fn a_cursor_naming_a_lost_event_gets_a_gap_and_never_another_event() {
    let state = LogState {
        epoch: EPOCH,
        first: 1,
        head: 10,
        recovered: 4,
        recent: Vec::new(),
        now_ms: 0,
    };
    let mut sim = Sim::new(4, Some(state));
    sim.apply(&Op::Publish(0));
    sim.apply(&Op::Store(1));
    assert_eq!(
        sim.answers[0].1,
        Ok(Cursor::new(EPOCH, 11)),
        "numbering resumes after the reservation"
    );
    // Cursor 7 names an event lost in the crash.
    sim.apply(&Op::Subscribe(0, Some(4)));
    sim.settle();
    let got = &sim.subs[0].received;
    assert!(
        matches!(&got[0], Delivery::Gap(g) if g.from == Some(Cursor::new(EPOCH, 7)) && g.to == Cursor::new(EPOCH, 10)),
        "{got:?}"
    );
    assert!(matches!(&got[1], Delivery::Event { cursor, .. } if cursor.seq == 11));
}

#[test]
fn a_refused_append_is_answered_and_delivered_to_nobody() {
    let mut sim = Sim::new(4, None);
    sim.apply(&Op::Subscribe(0, None));
    sim.apply(&Op::Publish(0));
    sim.apply(&Op::Publish(0));
    sim.apply(&Op::Refuse);
    sim.apply(&Op::Store(1));
    assert!(matches!(&sim.answers[0].1, Err(e) if e.code == ErrorCode::Unavailable));
    assert_eq!(
        sim.answers[1].1,
        Ok(Cursor::new(EPOCH, 1)),
        "the failed append took no position"
    );
    assert_eq!(sim.subs[0].received.len(), 1);
    // Past `max_pending_appends`, publishes are refused at once.
    for _ in 0..7 {
        sim.apply(&Op::Publish(1));
    }
    assert_eq!(sim.appends.len(), 6);
}

#[test]
fn answers_keep_the_order_of_commands_while_a_publish_is_stored() {
    use tidings_core::codec::Codec as _;
    use tidings_core::native::NativeCodec;

    let config = Config {
        epoch: EPOCH,
        log: LogMode::External {
            hot_events: 8,
            hot_bytes: 1 << 20,
            max_pending_appends: 8,
            shared: false,
        },
        ..Config::default()
    };
    let now = Instant::now(); // clock: test-only
    let mut broker = Broker::new(config, now);
    let conn = ConnId(1);
    let codec = NativeCodec;
    broker
        .handle_input(
            now,
            Input::Open {
                conn,
                codec: Box::new(codec),
                grants: Arc::new(Grants::all()),
            },
        )
        .unwrap();
    let mut answers = Vec::new();
    let mut appends = Vec::new();
    let drain = |broker: &mut Broker, answers: &mut Vec<String>, appends: &mut Vec<AppendId>| {
        while let Some(out) = broker.poll_output() {
            match out {
                Output::Transmit { payload, .. } => {
                    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    if v["type"] != "welcome" {
                        answers.push(format!("{} {}", v["type"].as_str().unwrap(), v["id"]));
                    }
                }
                Output::Log(LogRequest::Append { id, .. }) => appends.push(id),
                _ => {}
            }
        }
    };
    drain(&mut broker, &mut answers, &mut appends);
    let frames = [
        r#"{"op":"publish","id":1,"topic":"a.x","data":1}"#,
        r#"{"op":"publish","id":2,"topic":"a.x","data":2}"#,
        r#"{"op":"ping","id":3}"#,
        r#"{"op":"subscribe","id":4,"topic":"a.y"}"#,
        r#"{"op":"publish","id":5,"topic":"a.x","data":5}"#,
        r#"{"op":"ping","id":6}"#,
    ];
    for frame in frames {
        let mut cmds = Vec::new();
        codec.decode(&bytes::Bytes::from(frame), &Default::default(), &mut cmds);
        for cmd in cmds {
            broker
                .handle_input(now, Input::Command { conn, cmd })
                .unwrap();
        }
    }
    drain(&mut broker, &mut answers, &mut appends);
    assert!(
        answers.is_empty(),
        "nothing is answered before the log stores: {answers:?}"
    );
    assert_eq!(
        appends.len(),
        2,
        "publishes 1 and 2 go to the log at once; 5 waits behind 3 and 4"
    );
    let mut seq = 0;
    let mut store = |broker: &mut Broker, id: AppendId| {
        seq += 1;
        let result = Ok(Appended { seq, first: 1 });
        broker
            .handle_input(now, Input::Log(LogReply::Appended { id, result }))
            .unwrap();
    };
    store(&mut broker, appends[0]);
    drain(&mut broker, &mut answers, &mut appends);
    assert_eq!(answers, ["ok 1"]);
    store(&mut broker, appends[1]);
    drain(&mut broker, &mut answers, &mut appends);
    assert_eq!(answers, ["ok 1", "ok 2", "pong 3", "ok 4"]);
    assert_eq!(
        appends.len(),
        3,
        "publish 5 went to the log after the answers before it"
    );
    store(&mut broker, appends[2]);
    drain(&mut broker, &mut answers, &mut appends);
    assert_eq!(
        answers,
        ["ok 1", "ok 2", "pong 3", "ok 4", "ok 5", "pong 6"]
    );
}
