//! Several brokers (nodes) over one simulated *shared* log (`LogMode::External { shared: true }`,
//! a cluster's stream): publishes appended by any node in any interleaving, every node reading
//! the log in order at its own pace (`LogReply::Committed`, `LogReply::Passed`), consumers that
//! repeat what they already handed over, retention evicting the log's front (sometimes before a
//! node read it: its next `Committed` jumps), subscribers resuming on one node with a cursor
//! handed out by another (possibly ahead of this node's head: it waits up to 5 s), catch-up pages
//! and the clock moving. Property: every subscriber receives, in increasing order and without
//! duplicates, exactly the stored events after its cursor that its pattern matches, except those
//! covered by a gap notice that came before anything later (an `epoch` gap, after a cursor that
//! never arrived, restarts it after the gap's end); and every publish is answered once, with the
//! position of the very event it published, the same on every node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tidings_core::log::{
    AppendId, Appended, LogEvent, LogMode, LogReply, LogRequest, LogState, Logged, Page, ReadId,
};
use tidings_core::typed::TypedCodec;
use tidings_core::{
    AppEvent, Broker, Command, Config, ConnId, Cursor, Delivery, ErrorCode, GapReason, Grants,
    Input, Output, Pattern, Payload, ProtocolError, Published, Subscribe, Timers, Topic,
};

const TOPICS: [&str; 3] = ["a.x", "a.y", "b.x"];
const PATTERNS: [&str; 3] = ["a.>", "b.x", "a.x"];
const EPOCH: u64 = 0xfeed;
/// How long a resume from a cursor ahead of a node waits (`AHEAD_WAIT` in the core).
const AHEAD_WAIT: Duration = Duration::from_secs(5);

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// Now (no cursor).
    Live,
    /// `back` positions behind the head of node `node` (possibly another node, further along).
    Node(usize, u64),
    /// The cursor some publisher got (by index among all answers so far).
    Answer(usize),
    /// `d` positions past the last one the log gave out: ahead of every node, for now.
    Future(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// Node `n` publishes on topic `t` (an append waits on that node).
    Publish(usize, usize),
    /// The log stores the oldest append waiting on node `n`, if any.
    Store(usize),
    /// Something that is not a tidings event lands in the log (a position with no event).
    Foreign,
    /// Node `n` reads the next `k` positions of the log (the oldest retained one after what it
    /// read: a jump when the log evicted them first).
    Deliver(usize, usize),
    /// Node `n`'s consumer was recreated and hands over its last `k` positions again.
    Repeat(usize, usize),
    /// The log's retention evicts `k` positions from its front; told to node `n` (or to all).
    Trim(usize, Option<usize>),
    /// A subscriber on node `n` with pattern `p`.
    Subscribe(usize, usize, Start),
    /// Answer a read waiting on node `n` (by index), optionally twice.
    Answer(usize, usize, bool),
    /// A subscriber's transport writes everything handed to it.
    Flush(usize),
    /// The clock moves by this many milliseconds.
    Advance(u64),
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        1 => Just(Start::Live),
        3 => (0..3usize, 0..6u64).prop_map(|(n, b)| Start::Node(n, b)),
        2 => (0..8usize).prop_map(Start::Answer),
        1 => (1..3u64).prop_map(Start::Future),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..TOPICS.len()).prop_map(|(n, t)| Op::Publish(n, t)),
        4 => (0..3usize).prop_map(Op::Store),
        1 => Just(Op::Foreign),
        5 => (0..3usize, 1..4usize).prop_map(|(n, k)| Op::Deliver(n, k)),
        1 => (0..3usize, 1..4usize).prop_map(|(n, k)| Op::Repeat(n, k)),
        1 => (1..4usize, proptest::option::of(0..3usize)).prop_map(|(k, n)| Op::Trim(k, n)),
        3 => (0..3usize, 0..PATTERNS.len(), start()).prop_map(|(n, p, f)| Op::Subscribe(n, p, f)),
        2 => (0..3usize, 0..4usize, any::<bool>()).prop_map(|(n, i, d)| Op::Answer(n, i, d)),
        2 => (0..8usize).prop_map(Op::Flush),
        1 => prop_oneof![Just(1_000u64), Just(4_999), Just(5_000), Just(6_000)].prop_map(Op::Advance),
    ]
}

/// A gap notice as a subscriber saw it: from, to, reason, and how many events came before it.
type GapSeen = (u64, u64, GapReason, usize);

/// One broker of the cluster.
struct Node {
    broker: Broker,
    /// The last log position its consumer handed over.
    read: u64,
    appends: VecDeque<(AppendId, LogEvent)>,
    reads: Vec<(ReadId, u64, usize)>,
    /// Its application publishes, in order: id and payload.
    asked: Vec<(AppendId, Payload)>,
    /// Their answers, in the order they came.
    answers: Vec<(AppendId, Result<Cursor, ProtocolError>)>,
}

struct Subscriber {
    node: usize,
    conn: ConnId,
    pattern: Pattern,
    /// Events after this position are owed to it.
    from: u64,
    /// Its cursor was past the log's last event when it subscribed: with a cursor the log
    /// evicted before the node read it, the only cases for an `epoch` gap.
    beyond: bool,
    received: Vec<Delivery>,
    queued: usize,
}

/// A cluster of brokers over one simulated shared log, with in-process subscribers.
struct Sim {
    nodes: Vec<Node>,
    now: Instant,
    /// What the log holds at each position (index `seq - 1`), retained or not: `None` for a
    /// position that holds no event.
    log: Vec<Option<Logged>>,
    /// The log's first retained position.
    first: u64,
    subs: Vec<Subscriber>,
    next_conn: u64,
    /// Every cursor a publisher got, in order (for resumes on other nodes).
    cursors: Vec<Cursor>,
}

fn config(hot_events: usize) -> Config {
    Config {
        epoch: EPOCH,
        log: LogMode::External {
            hot_events,
            hot_bytes: 1 << 20,
            max_pending_appends: 6,
            shared: true,
        },
        timers: Timers {
            keepalive: None,
            idle_timeout: None,
            ..Timers::default()
        },
        ..Config::default()
    }
}

impl Sim {
    fn new(nodes: usize, hot_events: usize) -> Self {
        Self::restored(nodes, hot_events, Vec::new(), 1)
    }

    /// A cluster whose nodes start from the log's state: positions `1..=log.len()`, the first
    /// retained one `first`.
    fn restored(nodes: usize, hot_events: usize, log: Vec<Option<Logged>>, first: u64) -> Self {
        let now = Instant::now(); // clock: test-only
        let head = log.len() as u64;
        let nodes = (0..nodes)
            .map(|_| {
                let mut broker = Broker::new(config(hot_events), now);
                if !log.is_empty() {
                    let recent: Vec<Logged> = log
                        .iter()
                        .flatten()
                        .filter(|l| l.seq >= first)
                        .cloned()
                        .collect();
                    broker.restore_log(LogState {
                        epoch: EPOCH,
                        first,
                        head,
                        recovered: head,
                        recent,
                        now_ms: 0,
                    });
                }
                Node {
                    broker,
                    read: head,
                    appends: VecDeque::new(),
                    reads: Vec::new(),
                    asked: Vec::new(),
                    answers: Vec::new(),
                }
            })
            .collect();
        let mut sim = Self {
            nodes,
            now,
            log,
            first,
            subs: Vec::new(),
            next_conn: 1,
            cursors: Vec::new(),
        };
        for n in 0..sim.nodes.len() {
            sim.drain(n);
        }
        sim
    }

    fn head(&self, n: usize) -> u64 {
        self.nodes[n].broker.head().seq
    }

    fn last(&self) -> u64 {
        self.log.len() as u64
    }

    /// Whether the log retains a position node `n` did not read yet.
    fn unread(&self, n: usize) -> bool {
        (self.nodes[n].read + 1).max(self.first) <= self.last()
    }

    fn drain(&mut self, n: usize) {
        while let Some(out) = self.nodes[n].broker.poll_output() {
            match out {
                Output::Log(LogRequest::Append { id, event }) => {
                    self.nodes[n].appends.push_back((id, event));
                }
                Output::Log(LogRequest::Read {
                    read,
                    from,
                    max_events,
                }) => self.nodes[n].reads.push((read, from, max_events)),
                Output::Deliver { conn, item } => {
                    let sub = self.subs.iter_mut().find(|s| s.conn == conn).unwrap();
                    assert_eq!(sub.node, n, "delivered by the node it is connected to");
                    sub.queued += item.size();
                    sub.received.push((*item).clone());
                }
                Output::App(event) => {
                    if let AppEvent::Stored { id, result } = *event {
                        if let Ok(cursor) = &result {
                            self.cursors.push(*cursor);
                        }
                        self.nodes[n].answers.push((id, result));
                    }
                }
                Output::Close { conn, reason } => {
                    panic!("{conn} closed: {reason:?}")
                }
                _ => {}
            }
        }
    }

    fn input(&mut self, n: usize, input: Input) {
        self.nodes[n].broker.handle_input(self.now, input).unwrap();
        self.drain(n);
    }

    fn apply(&mut self, op: &Op) {
        let nodes = self.nodes.len();
        match *op {
            Op::Publish(n, t) => {
                let n = n % nodes;
                let topic = Topic::parse(TOPICS[t], Default::default()).unwrap();
                let count = self.nodes[n].asked.len();
                let payload = Payload::text(format!("node {n} publish {count}")).unwrap();
                let node = &mut self.nodes[n];
                match node.broker.publish(self.now, topic, None, payload.clone()) {
                    Published::Storing(id) => node.asked.push((id, payload)),
                    Published::Refused(e) => assert_eq!(e.code, ErrorCode::Unavailable),
                    other => panic!("the shared log answers later, not {other:?}"),
                }
                self.drain(n);
            }
            Op::Store(n) => {
                let n = n % nodes;
                let Some((id, event)) = self.nodes[n].appends.pop_front() else {
                    return;
                };
                let seq = self.last() + 1;
                self.log.push(Some(Logged {
                    seq,
                    time_ms: 0,
                    event,
                }));
                let result = Ok(Appended {
                    seq,
                    first: self.first,
                });
                self.input(n, Input::Log(LogReply::Appended { id, result }));
            }
            Op::Foreign => self.log.push(None),
            Op::Deliver(n, k) => {
                let n = n % nodes;
                for _ in 0..k {
                    let next = (self.nodes[n].read + 1).max(self.first);
                    if next > self.last() {
                        return;
                    }
                    self.nodes[n].read = next;
                    let reply = match &self.log[next as usize - 1] {
                        Some(logged) => LogReply::Committed(logged.clone()),
                        None => LogReply::Passed { seq: next },
                    };
                    self.input(n, Input::Log(reply));
                }
            }
            Op::Repeat(n, k) => {
                let n = n % nodes;
                let read = self.nodes[n].read;
                for seq in read.saturating_sub(k as u64) + 1..=read {
                    let reply = match &self.log[seq as usize - 1] {
                        Some(logged) => LogReply::Committed(logged.clone()),
                        None => LogReply::Passed { seq },
                    };
                    self.input(n, Input::Log(reply));
                }
            }
            Op::Trim(k, to) => {
                self.first = (self.first + k as u64).min(self.last() + 1);
                let first = self.first;
                let to: Vec<usize> = match to {
                    Some(n) => vec![n % nodes],
                    None => (0..nodes).collect(),
                };
                for n in to {
                    self.input(n, Input::Log(LogReply::Trimmed { first }));
                }
            }
            Op::Subscribe(n, p, from) => {
                let n = n % nodes;
                let cursor = match from {
                    Start::Live => None,
                    Start::Node(m, back) => Some(self.head(m % nodes).saturating_sub(back)),
                    Start::Answer(_) if self.cursors.is_empty() => Some(self.head(n)),
                    Start::Answer(i) => Some(self.cursors[i % self.cursors.len()].seq),
                    Start::Future(d) => Some(self.last() + d),
                };
                self.subscribe(n, p, cursor);
            }
            Op::Answer(n, i, twice) => {
                let n = n % nodes;
                if self.nodes[n].reads.is_empty() {
                    return;
                }
                let len = self.nodes[n].reads.len();
                let (read, from, max) = self.nodes[n].reads.remove(i % len);
                let events: Vec<Logged> = self
                    .log
                    .iter()
                    .flatten()
                    .filter(|l| l.seq >= from.max(self.first))
                    .take(max)
                    .cloned()
                    .collect();
                let done = events.last().is_none_or(|l| {
                    self.log
                        .iter()
                        .flatten()
                        .last()
                        .is_some_and(|last| last.seq == l.seq)
                });
                let page = Page {
                    first: self.first,
                    events,
                    done,
                };
                for _ in 0..if twice { 2 } else { 1 } {
                    let result = Ok(page.clone());
                    self.input(n, Input::Log(LogReply::Page { read, result }));
                }
            }
            Op::Flush(i) => {
                if self.subs.is_empty() {
                    return;
                }
                let len = self.subs.len();
                let sub = &mut self.subs[i % len];
                let (n, conn, bytes) = (sub.node, sub.conn, std::mem::take(&mut sub.queued));
                self.input(n, Input::Flushed { conn, bytes });
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                for n in 0..nodes {
                    self.nodes[n].broker.handle_timeout(self.now);
                    self.drain(n);
                }
            }
        }
    }

    /// A subscriber on node `n` with pattern `PATTERNS[p]`, from `cursor` (or live).
    fn subscribe(&mut self, n: usize, p: usize, cursor: Option<u64>) -> usize {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let pattern = Pattern::parse(PATTERNS[p], Default::default()).unwrap();
        self.subs.push(Subscriber {
            node: n,
            conn,
            pattern: pattern.clone(),
            from: cursor.unwrap_or(self.head(n)),
            beyond: cursor
                .is_some_and(|c| c > self.log.iter().flatten().last().map_or(0, |l| l.seq)),
            received: Vec::new(),
            queued: 0,
        });
        self.input(
            n,
            Input::Open {
                conn,
                codec: Box::new(TypedCodec),
                grants: Arc::new(Grants::all()),
            },
        );
        let sub = Subscribe {
            req: None,
            patterns: vec![pattern],
            from: cursor.map(|s| Cursor::new(EPOCH, s)),
            name: None,
        };
        self.input(
            n,
            Input::Command {
                conn,
                cmd: Command::Subscribe(sub),
            },
        );
        self.subs.len() - 1
    }

    /// Everything waiting is stored, read by every node, paged and written; then waits that
    /// cannot end expire.
    fn settle(&mut self) {
        // Every node learns where the log starts now (the NATS log tells every 2 s).
        self.apply(&Op::Trim(0, None));
        for round in 0..2 {
            self.settle_once();
            if round == 0 {
                self.apply(&Op::Advance(AHEAD_WAIT.as_millis() as u64 + 1));
            }
        }
    }

    fn settle_once(&mut self) {
        for _ in 0..100_000 {
            if let Some(n) = self.nodes.iter().position(|n| !n.appends.is_empty()) {
                self.apply(&Op::Store(n));
            } else if let Some(n) = (0..self.nodes.len()).find(|&n| self.unread(n)) {
                self.apply(&Op::Deliver(n, 8));
            } else if let Some(n) = self.nodes.iter().position(|n| !n.reads.is_empty()) {
                self.apply(&Op::Answer(n, 0, false));
            } else if let Some(i) = self.subs.iter().position(|s| s.queued > 0) {
                self.apply(&Op::Flush(i));
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    /// What subscriber `i` received: event positions in order, and gap notices as
    /// `(from, to, reason, events received before it)`.
    fn received(&self, i: usize) -> (Vec<u64>, Vec<GapSeen>) {
        let sub = &self.subs[i];
        let (mut got, mut gaps) = (Vec::new(), Vec::new());
        for d in &sub.received {
            match d {
                Delivery::Event {
                    cursor, payload, ..
                } => {
                    assert_eq!(cursor.epoch, EPOCH);
                    let logged = self
                        .log
                        .get(cursor.seq as usize - 1)
                        .and_then(Option::as_ref)
                        .unwrap_or_else(|| panic!("{} got {cursor}: no event there", sub.conn));
                    assert_eq!(
                        payload, &logged.event.payload,
                        "{cursor} names one event on every node"
                    );
                    got.push(cursor.seq);
                }
                Delivery::Gap(gap) => {
                    assert_eq!(gap.from.map_or(EPOCH, |c| c.epoch), EPOCH);
                    gaps.push((
                        gap.from.map_or(0, |c| c.seq),
                        gap.to.seq,
                        gap.reason,
                        got.len(),
                    ));
                }
                other => panic!("only events and gaps here, not {other:?}"),
            }
        }
        (got, gaps)
    }

    fn check(&self) {
        for (n, node) in self.nodes.iter().enumerate() {
            assert_eq!(node.appends.len(), 0);
            assert_eq!(
                node.answers.len(),
                node.asked.len(),
                "every publish on node {n} is answered"
            );
            for (id, result) in &node.answers {
                let (_, payload) = node.asked.iter().find(|(a, _)| a == id).unwrap();
                let cursor = result
                    .as_ref()
                    .expect("the simulated log stores every append");
                assert_eq!(cursor.epoch, EPOCH);
                let logged = self.log[cursor.seq as usize - 1].as_ref().unwrap();
                assert_eq!(
                    &logged.event.payload, payload,
                    "{cursor} is what node {n} published"
                );
            }
            assert!(!self.unread(n));
            assert_eq!(self.head(n), node.read, "node {n}'s head is what it read");
        }
        for (i, sub) in self.subs.iter().enumerate() {
            let (got, gaps) = self.received(i);
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{} in order, once: {got:?}",
                sub.conn
            );
            // A cursor ahead that never arrived: an `epoch` gap before anything else, then what
            // follows the gap's end.
            let mut from = sub.from;
            for &(gap_from, to, reason, at) in &gaps {
                if reason == GapReason::Epoch {
                    assert!(
                        sub.beyond || sub.from < self.first,
                        "{} epoch gap for a cursor the log holds",
                        sub.conn
                    );
                    assert_eq!(at, 0, "{} epoch gap before any event", sub.conn);
                    assert_eq!(gap_from, sub.from);
                    assert!(to < gap_from);
                    from = to;
                }
            }
            if sub.from > self.last() {
                assert!(
                    gaps.iter().any(|g| g.2 == GapReason::Epoch),
                    "{} resumed past the log's end and was never told",
                    sub.conn
                );
            }
            // Positions past the node's head were evicted before it read them and nothing came
            // after them yet: its subscribers hear of them with the next event (a jump).
            let head = self.head(sub.node);
            let owed: Vec<&Logged> = self
                .log
                .iter()
                .flatten()
                .filter(|l| {
                    l.seq > from && l.seq <= head && sub.pattern.matches(l.event.topic.as_str())
                })
                .collect();
            for s in &got {
                assert!(
                    owed.iter().any(|l| l.seq == *s),
                    "{} on node {} got {s}, not owed after {from} (gaps {gaps:?})",
                    sub.conn,
                    sub.node
                );
            }
            for l in owed {
                if got.contains(&l.seq) {
                    continue;
                }
                // Missing: a gap covering it came before anything after it.
                let before = got.iter().filter(|s| **s < l.seq).count();
                assert!(
                    gaps.iter()
                        .any(|&(from, to, reason, at)| reason == GapReason::Evicted
                            && from < l.seq
                            && l.seq <= to
                            && at <= before),
                    "{} on node {} misses {} without a gap notice (from {from}, got {got:?}, gaps {gaps:?}, first {})",
                    sub.conn,
                    sub.node,
                    l.seq,
                    self.first
                );
                assert!(l.seq < self.first, "only evicted events may be missing");
            }
        }
    }
}

fn run(sim: &mut Sim, ops: &[Op]) {
    for op in ops {
        sim.apply(op);
    }
    sim.settle();
    sim.check();
}

proptest! {
    #[test]
    fn every_node_delivers_exactly_the_stored_events_after_each_cursor(
        nodes in 2..=3usize,
        hot in 0..4usize,
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        run(&mut Sim::new(nodes, hot), &ops);
    }

    #[test]
    fn nodes_restored_from_the_log_agree(
        nodes in 2..=3usize,
        hot in 0..4usize,
        first in 1..5u64,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        // A log with positions 1..=6 (4 holds no event), the first `first - 1` evicted.
        let log: Vec<Option<Logged>> = (1..=6u64)
            .map(|seq| {
                (seq != 4).then(|| Logged {
                    seq,
                    time_ms: 0,
                    event: event(TOPICS[(seq % 3) as usize], format!("old {seq}")),
                })
            })
            .collect();
        let mut sim = Sim::restored(nodes, hot, log, first);
        for n in 0..nodes {
            assert_eq!(sim.nodes[n].broker.head(), Cursor::new(EPOCH, 6));
        }
        run(&mut sim, &ops);
    }
}

fn event(topic: &str, payload: String) -> LogEvent {
    LogEvent {
        topic: Topic::parse(topic, Default::default()).unwrap(),
        event: None,
        from: None,
        payload: Payload::text(payload).unwrap(),
    }
}

/// The events (positions) subscriber `i` received.
fn events(sim: &Sim, i: usize) -> Vec<u64> {
    sim.received(i).0
}

/// The gap notices subscriber `i` received.
fn gaps(sim: &Sim, i: usize) -> Vec<GapSeen> {
    sim.received(i).1
}

#[test]
fn a_cursor_from_a_node_further_along_waits_for_this_node_to_reach_it() {
    let mut sim = Sim::new(2, 4);
    for _ in 0..5 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    // Node 0 read 1..=5, node 1 only 1..=2.
    sim.apply(&Op::Deliver(0, 5));
    sim.apply(&Op::Deliver(1, 2));
    assert_eq!((sim.head(0), sim.head(1)), (5, 2));
    // A client saw up to 4 on node 0 and resumes on node 1.
    let s = sim.subscribe(1, 0, Some(4));
    sim.apply(&Op::Deliver(1, 1));
    assert_eq!(events(&sim, s), [] as [u64; 0], "3 is before its cursor");
    sim.apply(&Op::Advance(4_000));
    sim.apply(&Op::Deliver(1, 1));
    assert_eq!(events(&sim, s), [] as [u64; 0], "4 it saw already");
    sim.apply(&Op::Deliver(1, 1));
    assert_eq!(events(&sim, s), [5]);
    // Live from there, and its wait does not expire into a gap later.
    sim.apply(&Op::Publish(1, 1));
    sim.apply(&Op::Store(1));
    sim.apply(&Op::Deliver(1, 1));
    sim.apply(&Op::Advance(10_000));
    sim.settle();
    assert_eq!(events(&sim, s), [5, 6]);
    assert!(gaps(&sim, s).is_empty(), "{:?}", gaps(&sim, s));
    sim.check();
}

#[test]
fn a_log_that_does_not_answer_whether_it_holds_a_cursor_is_asked_again_after_five_seconds() {
    let mut sim = Sim::new(2, 4);
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Deliver(1, 1));
    let s = sim.subscribe(1, 0, Some(9));
    assert_eq!(sim.nodes[1].reads.len(), 1, "the log is asked at once");
    sim.nodes[1].reads.clear(); // that read is lost
    sim.apply(&Op::Advance(4_999));
    assert!(sim.nodes[1].reads.is_empty());
    sim.apply(&Op::Advance(1));
    assert_eq!(sim.nodes[1].reads.len(), 1, "asked again");
    assert!(sim.subs[s].received.is_empty(), "no gap without an answer");
    sim.apply(&Op::Answer(1, 0, false));
    assert_eq!(gaps(&sim, s), [(9, 0, GapReason::Epoch, 0)]);
    sim.apply(&Op::Publish(0, 2));
    sim.apply(&Op::Publish(0, 1));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Deliver(1, 2));
    assert_eq!(
        events(&sim, s),
        [1, 3],
        "what the log retains, then live (2 is b.x)"
    );
    sim.settle();
    sim.check();
}

#[test]
fn a_cursor_past_the_logs_end_gets_its_epoch_gap_as_soon_as_the_log_says_so() {
    let mut sim = Sim::new(2, 4);
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Deliver(1, 1));
    let s = sim.subscribe(1, 0, Some(9));
    assert!(sim.subs[s].received.is_empty());
    sim.apply(&Op::Answer(1, 0, false));
    assert_eq!(gaps(&sim, s), [(9, 0, GapReason::Epoch, 0)], "no 5 s wait");
    assert_eq!(events(&sim, s), [1], "then what the log retains");
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Deliver(1, 1));
    assert_eq!(events(&sim, s), [1, 2]);
    sim.settle();
    sim.check();
}

#[test]
fn a_cursor_the_log_holds_but_this_node_has_not_read_is_waited_for() {
    let mut sim = Sim::new(2, 4);
    for _ in 0..3 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Deliver(1, 1));
    let s = sim.subscribe(1, 0, Some(2));
    sim.apply(&Op::Answer(1, 0, false));
    sim.apply(&Op::Advance(60_000));
    assert!(sim.subs[s].received.is_empty(), "waits for 2, however long");
    sim.apply(&Op::Deliver(1, 2));
    assert_eq!(events(&sim, s), [3]);
    assert!(gaps(&sim, s).is_empty());
    sim.settle();
    sim.check();
}

#[test]
fn a_jump_in_committed_gives_live_subscribers_an_evicted_gap() {
    let mut sim = Sim::new(2, 4);
    let live = sim.subscribe(1, 0, None);
    for _ in 0..5 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Deliver(1, 1));
    // The log evicts 1..=3 before node 1 reads 2 and 3: its next position is 4.
    sim.apply(&Op::Trim(3, Some(0)));
    sim.apply(&Op::Deliver(1, 2));
    assert_eq!(events(&sim, live), [1, 4, 5]);
    assert_eq!(gaps(&sim, live), [(1, 3, GapReason::Evicted, 1)]);
    // A subscriber catching up on node 1 from before the hole gets the gap when it crosses it.
    let late = sim.subscribe(1, 0, Some(0));
    sim.settle();
    assert_eq!(events(&sim, late), [1, 4, 5]);
    assert!(
        gaps(&sim, late)
            .iter()
            .any(|&(from, to, _, at)| from <= 1 && to >= 3 && at == 1),
        "{:?}",
        gaps(&sim, late)
    );
    sim.check();
}

#[test]
fn a_position_with_no_event_is_not_a_gap() {
    let mut sim = Sim::new(2, 4);
    let live = sim.subscribe(1, 0, None);
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Foreign);
    sim.apply(&Op::Foreign);
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Deliver(1, 4));
    assert_eq!(events(&sim, live), [1, 4]);
    assert!(gaps(&sim, live).is_empty(), "{:?}", gaps(&sim, live));
    // Resuming between them, and a subscriber that waited for position 3 (a Passed one).
    let resumed = sim.subscribe(1, 0, Some(1));
    let s = sim.subscribe(0, 0, Some(3));
    sim.settle();
    assert_eq!(events(&sim, resumed), [4]);
    assert_eq!(events(&sim, s), [4]);
    assert!(gaps(&sim, resumed).is_empty() && gaps(&sim, s).is_empty());
    sim.check();
}

#[test]
fn a_consumer_repeating_committed_events_delivers_nothing_twice() {
    let mut sim = Sim::new(2, 4);
    let live = sim.subscribe(1, 0, None);
    for _ in 0..4 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Deliver(1, 3));
    sim.apply(&Op::Repeat(1, 3));
    sim.apply(&Op::Repeat(1, 1));
    sim.apply(&Op::Deliver(1, 1));
    sim.apply(&Op::Repeat(1, 2));
    assert_eq!(events(&sim, live), [1, 2, 3, 4]);
    assert!(gaps(&sim, live).is_empty());
    assert_eq!(sim.head(1), 4);
    sim.settle();
    sim.check();
}

#[test]
fn a_page_serves_only_what_this_node_received() {
    // Nothing in memory: catch-up is read from the log, which already holds events node 1 has
    // not received (appended through node 0).
    // Position 2 holds no event, so a page asked for 1..=2 brings 3 too.
    let mut sim = Sim::new(2, 0);
    sim.apply(&Op::Publish(0, 0));
    sim.apply(&Op::Store(0));
    sim.apply(&Op::Foreign);
    for _ in 0..3 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Deliver(1, 2));
    let s = sim.subscribe(1, 0, Some(0));
    while !sim.nodes[1].reads.is_empty() {
        sim.apply(&Op::Answer(1, 0, false));
    }
    assert_eq!(events(&sim, s), [1]);
    sim.apply(&Op::Deliver(1, 3));
    assert_eq!(
        events(&sim, s),
        [1, 3, 4, 5],
        "3 to 5 once, when node 1 receives them"
    );
    sim.settle();
    sim.check();
}

#[test]
fn a_resume_waiting_across_a_hole_gets_its_gap() {
    let mut sim = Sim::new(2, 1);
    for _ in 0..4 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Foreign);
    sim.apply(&Op::Deliver(0, 5));
    sim.apply(&Op::Deliver(1, 1));
    // The log evicts 1..=4; node 1 read only 1. A client that saw up to 3 on node 0 resumes on
    // node 1: it waits, then node 1's next position is 5 (no event), past the hole 2..=4.
    sim.apply(&Op::Trim(4, Some(0)));
    let s = sim.subscribe(1, 0, Some(3));
    sim.apply(&Op::Deliver(1, 1));
    assert_eq!(gaps(&sim, s).len(), 1, "4 was lost: {:?}", gaps(&sim, s));
    let (from, to, reason, _) = gaps(&sim, s)[0];
    assert!(from < 4 && to >= 4 && reason == GapReason::Evicted);
    sim.apply(&Op::Publish(1, 0));
    sim.settle();
    assert_eq!(events(&sim, s), [6]);
    sim.check();
}

#[test]
fn answers_waiting_for_delivery_are_bounded_like_appends() {
    let mut sim = Sim::new(2, 4);
    // Six publishes stored by the log, none delivered back to node 0 yet (its consumer is
    // behind): their answers wait, up to max_pending_appends (6).
    for _ in 0..6 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    assert!(
        sim.nodes[0].answers.is_empty(),
        "answered only once delivered"
    );
    let topic = Topic::parse(TOPICS[0], Default::default()).unwrap();
    let payload = Payload::text("one too many".to_owned()).unwrap();
    let now = sim.now;
    match sim.nodes[0]
        .broker
        .publish(now, topic.clone(), None, payload.clone())
    {
        Published::Refused(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        other => panic!("refused while six answers wait, not {other:?}"),
    }
    sim.drain(0);
    // Delivered: answered, and publishes are taken again.
    sim.apply(&Op::Deliver(0, 6));
    assert_eq!(sim.nodes[0].answers.len(), 6);
    assert!(matches!(
        sim.nodes[0].broker.publish(now, topic, None, payload),
        Published::Storing(_)
    ));
    sim.drain(0);
}

#[test]
fn subscribers_catching_up_from_one_position_share_one_read() {
    // Nothing in memory: a mass reconnect from one cursor reads the range once, not once per
    // subscriber, and every subscriber gets every event.
    let mut sim = Sim::new(1, 0);
    for _ in 0..5 {
        sim.apply(&Op::Publish(0, 0));
        sim.apply(&Op::Store(0));
    }
    sim.apply(&Op::Deliver(0, 5));
    let subs: Vec<usize> = (0..3).map(|_| sim.subscribe(0, 0, Some(0))).collect();
    assert_eq!(
        sim.nodes[0].reads.len(),
        1,
        "one read for three subscribers from one position"
    );
    let late = sim.subscribe(0, 0, Some(2));
    assert_eq!(
        sim.nodes[0].reads.len(),
        2,
        "another position, another read"
    );
    while !sim.nodes[0].reads.is_empty() {
        sim.apply(&Op::Answer(0, 0, false));
    }
    for s in subs {
        assert_eq!(events(&sim, s), [1, 2, 3, 4, 5]);
    }
    assert_eq!(events(&sim, late), [3, 4, 5]);
    sim.settle();
    sim.check();
}
